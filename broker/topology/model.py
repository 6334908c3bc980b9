"""The cluster configuration (topology) and its changes, as pure data and functions.

Modelled on Zeebe's ClusterConfiguration: members with a state and the
partitions they host (state, priority, exporter states), a version that every
applied operation increments, the last completed change and the pending one
with its completed and pending operations. A change is a list of operations
applied in order, each by the broker it names (the coordinator for brokers
that are gone). Everything here is deterministic and free of I/O; the
``TopologyManager`` persists, gossips and executes.

Plans:
* scaling (add/remove brokers, change the replication factor) redistributes
  partitions round-robin over the requested brokers and orders the steps so
  that no partition drops below its quorum: broker adds, then joins, then
  priority changes, then leaves, then broker removes;
* a forced removal moves no data: each partition's replica set shrinks to
  its retained members, then the removed brokers are marked LEFT. It is
  refused when a partition would keep no replica.
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass, field

from broker.topology.distribution import distribute

# operation names (Zeebe's)
BROKER_ADD = "BROKER_ADD"
BROKER_REMOVE = "BROKER_REMOVE"
BROKER_FORCE_REMOVE = "BROKER_FORCE_REMOVE"
PARTITION_JOIN = "PARTITION_JOIN"
PARTITION_LEAVE = "PARTITION_LEAVE"
PARTITION_RECONFIGURE_PRIORITY = "PARTITION_RECONFIGURE_PRIORITY"
PARTITION_FORCE_RECONFIGURE = "PARTITION_FORCE_RECONFIGURE"
PARTITION_ENABLE_EXPORTER = "PARTITION_ENABLE_EXPORTER"
PARTITION_DISABLE_EXPORTER = "PARTITION_DISABLE_EXPORTER"

ENABLED, DISABLED = "ENABLED", "DISABLED"


class PlanError(ValueError):
    """The request cannot be planned (answered 400)."""


class ChangeInProgress(Exception):
    """Another change is pending (answered 409)."""


@dataclass(frozen=True)
class Operation:
    operation: str
    broker_id: int
    partition_id: int | None = None
    priority: int | None = None
    brokers: tuple[int, ...] | None = None  # the retained replicas (force reconfigure)
    exporter_id: str | None = None
    initialize_from: str | None = None

    def to_api(self) -> dict:
        out = {"operation": self.operation, "brokerId": self.broker_id}
        if self.partition_id is not None:
            out["partitionId"] = self.partition_id
        if self.priority is not None:
            out["priority"] = self.priority
        if self.brokers is not None:
            out["brokers"] = list(self.brokers)
        if self.exporter_id is not None:
            out["exporterId"] = self.exporter_id
        if self.initialize_from is not None:
            out["initializeFrom"] = self.initialize_from
        return out

    @staticmethod
    def from_api(d: dict) -> Operation:
        brokers = d.get("brokers")
        return Operation(
            d["operation"],
            int(d["brokerId"]),
            d.get("partitionId"),
            d.get("priority"),
            tuple(brokers) if brokers is not None else None,
            d.get("exporterId"),
            d.get("initializeFrom"),
        )


@dataclass
class PartitionState:
    state: str  # JOINING, ACTIVE, LEAVING
    priority: int
    exporters: dict[str, str] = field(default_factory=dict)  # exporter id -> ENABLED/DISABLED


@dataclass
class MemberState:
    state: str  # JOINING, ACTIVE, LEAVING, LEFT
    version: int = 1
    last_updated: str = ""
    partitions: dict[int, PartitionState] = field(default_factory=dict)


@dataclass
class Change:
    id: int
    status: str  # IN_PROGRESS, COMPLETED, FAILED, CANCELLED
    started_at: str
    completed_at: str | None = None
    completed: list[Operation] = field(default_factory=list)
    pending: list[Operation] = field(default_factory=list)
    force: bool = False
    request: str = ""  # what was asked, canonical, to recognise an identical retry


@dataclass
class ClusterConfig:
    version: int
    members: dict[int, MemberState]
    partitions_count: int
    cluster_id: str
    last_change: Change | None = None
    pending_change: Change | None = None
    exporting_paused: bool = False

    # --- views -----------------------------------------------------------------

    def active_members(self) -> list[int]:
        return sorted(m for m, s in self.members.items() if s.state != "LEFT")

    def replicas(self, partition_id: int) -> dict[int, int]:
        """broker -> priority for the partition's current replica set."""
        return {
            m: s.partitions[partition_id].priority
            for m, s in sorted(self.members.items())
            if s.state != "LEFT" and partition_id in s.partitions
        }

    def replication_factor(self) -> int:
        sizes = [len(self.replicas(p)) for p in range(1, self.partitions_count + 1)]
        return max(sizes, default=0)

    @property
    def initialized(self) -> bool:
        return self.version > 0

    def coordinator(self) -> int:
        """Non-forced changes are coordinated by the lowest active member."""
        return self.active_members()[0]

    def exporters(self) -> dict[str, str]:
        """Exporter id -> cluster-wide state (DISABLED if any replica has it disabled)."""
        out: dict[str, str] = {}
        for s in self.members.values():
            if s.state == "LEFT":
                continue
            for p in s.partitions.values():
                for ex, st in p.exporters.items():
                    if out.get(ex) != DISABLED:
                        out[ex] = st
        return out

    # --- API documents (GET /actuator/cluster) -------------------------------------

    def to_api(self) -> dict:
        return {
            "version": self.version,
            "clusterId": self.cluster_id,
            "brokers": [
                {
                    "id": m,
                    "state": s.state,
                    "version": s.version,
                    "lastUpdatedAt": s.last_updated,
                    "partitions": [
                        {
                            "id": p,
                            "state": ps.state,
                            "priority": ps.priority,
                            "config": {
                                "exporting": {
                                    "exporters": [
                                        {"id": ex, "state": st}
                                        for ex, st in sorted(ps.exporters.items())
                                    ]
                                }
                            },
                        }
                        for p, ps in sorted(s.partitions.items())
                    ],
                }
                for m, s in sorted(self.members.items())
            ],
            "lastChange": _change_summary(self.last_change),
            "pendingChange": _pending_doc(self.pending_change),
            "partitionsCount": self.partitions_count,
            "exportingPaused": self.exporting_paused,
        }

    # --- persistence (a superset of the API document) -----------------------------

    def to_json(self) -> dict:
        doc = self.to_api()
        doc["lastChange"] = _change_full(self.last_change)
        doc["pendingChange"] = _change_full(self.pending_change)
        return doc

    @staticmethod
    def from_json(doc: dict) -> ClusterConfig:
        members = {}
        for b in doc["brokers"]:
            members[int(b["id"])] = MemberState(
                b["state"],
                b["version"],
                b["lastUpdatedAt"],
                {
                    int(p["id"]): PartitionState(
                        p["state"],
                        p["priority"],
                        {e["id"]: e["state"] for e in p["config"]["exporting"]["exporters"]},
                    )
                    for p in b["partitions"]
                },
            )
        return ClusterConfig(
            doc["version"],
            members,
            doc["partitionsCount"],
            doc["clusterId"],
            _change_parse(doc.get("lastChange")),
            _change_parse(doc.get("pendingChange")),
            doc.get("exportingPaused", False),
        )


def initial(
    cluster_size: int,
    partitions_count: int,
    replication_factor: int,
    exporters: list[str],
    now: str,
    cluster_id: str | None = None,
) -> ClusterConfig:
    """The configuration a new cluster starts with: the static round-robin layout."""
    members = {m: MemberState("ACTIVE", 1, now) for m in range(cluster_size)}
    for a in distribute(range(cluster_size), partitions_count, replication_factor):
        for m in a.members:
            members[m].partitions[a.partition_id] = PartitionState(
                "ACTIVE", a.priorities[m], dict.fromkeys(exporters, ENABLED)
            )
    return ClusterConfig(1, members, partitions_count, cluster_id or str(uuid.uuid4()))


def uninitialized(partitions_count: int, cluster_id: str) -> ClusterConfig:
    """What a new broker holds until a peer gossips the cluster's configuration:
    version 0 (any real configuration is newer), no members, so it hosts nothing."""
    return ClusterConfig(0, {}, partitions_count, cluster_id)


# --- plans ------------------------------------------------------------------------


def plan_scale(
    cfg: ClusterConfig, brokers: list[int], replication_factor: int | None = None
) -> list[Operation]:
    """Redistribute every partition over ``brokers`` with the replication factor."""
    target = sorted(set(brokers))
    if not target:
        raise PlanError("the request names no brokers")
    if any(b < 0 for b in target):
        raise PlanError(f"broker ids must not be negative: {target}")
    rf = replication_factor if replication_factor is not None else cfg.replication_factor()
    if not 1 <= rf <= len(target):
        raise PlanError(f"replication factor {rf} must be between 1 and {len(target)} brokers")
    current = set(cfg.active_members())
    adds = [Operation(BROKER_ADD, b) for b in target if b not in current]
    joins, priorities, leaves = [], [], []
    for a in distribute(target, cfg.partitions_count, rf):
        have = cfg.replicas(a.partition_id)
        for m in a.members:
            if m not in have:
                joins.append(Operation(PARTITION_JOIN, m, a.partition_id, a.priorities[m]))
            elif have[m] != a.priorities[m]:
                priorities.append(
                    Operation(PARTITION_RECONFIGURE_PRIORITY, m, a.partition_id, a.priorities[m])
                )
        for m in have:
            if m not in a.members:
                leaves.append(Operation(PARTITION_LEAVE, m, a.partition_id))
    removes = [Operation(BROKER_REMOVE, b) for b in sorted(current - set(target))]
    return adds + joins + priorities + leaves + removes


def plan_force_remove(cfg: ClusterConfig, retained: list[int]) -> list[Operation]:
    """Shrink every replica set to its retained members; then mark the rest LEFT."""
    keep = set(retained)
    unknown = sorted(keep - set(cfg.active_members()))
    if unknown:
        raise PlanError(f"brokers {unknown} are not members of the cluster")
    if not keep:
        raise PlanError("a forced change must retain at least one broker")
    removed = [m for m in cfg.active_members() if m not in keep]
    ops = []
    for p in range(1, cfg.partitions_count + 1):
        have = cfg.replicas(p)
        if not set(have) - keep:
            continue
        survivors = tuple(sorted(set(have) & keep))
        if not survivors:
            raise PlanError(
                f"partition {p} would keep no replica: all of {sorted(have)} would be removed"
            )
        ops.append(Operation(PARTITION_FORCE_RECONFIGURE, survivors[0], p, brokers=survivors))
    ops += [Operation(BROKER_FORCE_REMOVE, b) for b in removed]
    return ops


def plan_exporter(
    cfg: ClusterConfig, exporter_id: str, enable: bool, initialize_from: str | None = None
) -> list[Operation]:
    known = cfg.exporters()
    if exporter_id not in known:
        raise PlanError(f"no exporter {exporter_id!r} (known: {sorted(known)})")
    if initialize_from is not None and initialize_from not in known:
        raise PlanError(f"cannot initialize from unknown exporter {initialize_from!r}")
    want = ENABLED if enable else DISABLED
    name = PARTITION_ENABLE_EXPORTER if enable else PARTITION_DISABLE_EXPORTER
    ops = []
    for m, s in sorted(cfg.members.items()):
        if s.state == "LEFT":
            continue
        for p, ps in sorted(s.partitions.items()):
            if ps.exporters.get(exporter_id) != want:
                init = initialize_from if enable else None
                ops.append(Operation(name, m, p, exporter_id=exporter_id, initialize_from=init))
    return ops


# --- applying ---------------------------------------------------------------------


def start_change(
    cfg: ClusterConfig, ops: list[Operation], now: str, force: bool = False, request: str = ""
) -> ClusterConfig:
    """A new configuration with ``ops`` pending; raises ChangeInProgress."""
    if cfg.pending_change is not None:
        raise ChangeInProgress(f"change {cfg.pending_change.id} is still in progress")
    new = copy.deepcopy(cfg)
    last_id = cfg.last_change.id if cfg.last_change else 0
    new.pending_change = Change(
        last_id + 1, "IN_PROGRESS", now, pending=list(ops), force=force, request=request
    )
    new.version += 1
    if not ops:
        _finish(new, now)
    return new


def complete_next(cfg: ClusterConfig, now: str) -> ClusterConfig:
    """The next pending operation was carried out: apply it, move it to completed."""
    new = copy.deepcopy(cfg)
    change = new.pending_change
    op = change.pending.pop(0)
    apply_operation(new, op, now)
    change.completed.append(op)
    new.version += 1
    if not change.pending:
        _finish(new, now)
    return new


def _finish(cfg: ClusterConfig, now: str) -> None:
    change = cfg.pending_change
    change.status, change.completed_at = "COMPLETED", now
    cfg.last_change, cfg.pending_change = change, None


def apply_operation(cfg: ClusterConfig, op: Operation, now: str) -> None:
    """The state change one completed operation makes (in place)."""
    m = op.broker_id
    member = cfg.members.get(m)
    if op.operation == BROKER_ADD:
        cfg.members[m] = MemberState("ACTIVE", (member.version + 1) if member else 1, now)
        return
    if member is None:
        raise PlanError(f"operation {op.operation} names unknown broker {m}")
    member.version += 1
    member.last_updated = now
    if op.operation in (BROKER_REMOVE, BROKER_FORCE_REMOVE):
        member.state = "LEFT"
        member.partitions.clear()
    elif op.operation == PARTITION_JOIN:
        exporters = {ex: ENABLED for ex in cfg.exporters()}
        member.partitions[op.partition_id] = PartitionState("ACTIVE", op.priority, exporters)
    elif op.operation == PARTITION_LEAVE:
        member.partitions.pop(op.partition_id, None)
    elif op.operation == PARTITION_RECONFIGURE_PRIORITY:
        member.partitions[op.partition_id].priority = op.priority
    elif op.operation == PARTITION_FORCE_RECONFIGURE:
        for other_id, other in cfg.members.items():
            if other_id not in op.brokers:
                other.partitions.pop(op.partition_id, None)
    elif op.operation in (PARTITION_ENABLE_EXPORTER, PARTITION_DISABLE_EXPORTER):
        state = ENABLED if op.operation == PARTITION_ENABLE_EXPORTER else DISABLED
        member.partitions[op.partition_id].exporters[op.exporter_id] = state
    else:
        raise PlanError(f"unknown operation {op.operation}")


def expected(cfg: ClusterConfig, ops: list[Operation], now: str) -> ClusterConfig:
    """The configuration after ``ops`` (for the API's expectedTopology)."""
    new = copy.deepcopy(cfg)
    for op in ops:
        apply_operation(new, op, now)
    return new


# --- change documents ---------------------------------------------------------------


def _change_summary(c: Change | None) -> dict | None:
    if c is None:
        return None
    return {
        "id": c.id,
        "status": c.status,
        "startedAt": c.started_at,
        "completedAt": c.completed_at,
    }


def _pending_doc(c: Change | None) -> dict | None:
    if c is None:
        return None
    return {
        **_change_summary(c),
        "internalVersion": len(c.completed),
        "completed": [op.to_api() for op in c.completed],
        "pending": [op.to_api() for op in c.pending],
    }


def _change_full(c: Change | None) -> dict | None:
    if c is None:
        return None
    return {**_pending_doc(c), "force": c.force, "request": c.request}


def _change_parse(d: dict | None) -> Change | None:
    if d is None:
        return None
    return Change(
        d["id"],
        d["status"],
        d["startedAt"],
        d.get("completedAt"),
        [Operation.from_api(o) for o in d.get("completed", [])],
        [Operation.from_api(o) for o in d.get("pending", [])],
        d.get("force", False),
        d.get("request", ""),
    )
