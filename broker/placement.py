"""Quorum-placement rules for a dual-region cluster, shared by the broker, Ansible and fab.

With parity node ids (region = node id % 2) and an even replication factor R, Zeebe's
round-robin distribution puts exactly R/2 replicas of every partition in each region, so
no region can commit alone: RPO 0 on region loss. These checks verify that promise, before
deployment from the inventory (`check_layout`) and on a running cluster from its management
API documents (`check_runtime`). Pure functions over plain data; no I/O.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from broker.topology.distribution import distribute

REGIONS = 2
MIN_CLUSTER_SIZE = 4
UNKNOWN_REGION = "<unknown>"


@dataclass(frozen=True)
class Finding:
    code: str
    message: str
    partition: int | None = None
    brokers: tuple[int, ...] = ()


@dataclass(frozen=True)
class PartitionRow:
    partition: int
    members: tuple[int, ...]
    by_region: Mapping[str, tuple[int, ...]] = field(hash=False)  # region -> its replicas
    quorum: int
    leader: int | None  # layout: the primary, i.e. the expected leader
    healthy: int | None = None  # runtime only: healthy replicas
    codes: tuple[str, ...] = ()  # codes of this partition's findings

    @property
    def counts(self) -> dict[str, int]:
        return {region: len(ids) for region, ids in self.by_region.items()}

    @property
    def ok(self) -> bool:
        return not self.codes


@dataclass(frozen=True)
class PlacementReport:
    findings: tuple[Finding, ...]
    partitions: tuple[PartitionRow, ...]
    regions: tuple[str, ...] = ()
    source: str = "layout"  # "layout" (inventory) or "runtime" (live cluster)

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form, for `brokerctl placement --json` and Ansible."""
        return {
            "ok": self.ok,
            "source": self.source,
            "regions": list(self.regions),
            "findings": [
                {
                    "code": f.code,
                    "message": f.message,
                    "partition": f.partition,
                    "brokers": list(f.brokers),
                }
                for f in self.findings
            ],
            "partitions": [
                {
                    "partition": row.partition,
                    "members": list(row.members),
                    "byRegion": {region: list(ids) for region, ids in row.by_region.items()},
                    "counts": row.counts,
                    "quorum": row.quorum,
                    "leader": row.leader,
                    "healthy": row.healthy,
                    "codes": list(row.codes),
                }
                for row in self.partitions
            ],
        }


def quorum(replicas: int) -> int:
    return replicas // 2 + 1


def parity_layout(
    cluster_size: int, regions: Sequence[str] = ("region0", "region1")
) -> dict[int, str]:
    """The documented layout: node id -> region name by parity."""
    return {node_id: regions[node_id % len(regions)] for node_id in range(cluster_size)}


def check_layout(
    brokers: Mapping[int, str] | Iterable[tuple[int, str]],
    partitions_count: int,
    replication_factor: int,
    regions: Sequence[str] | None = None,
) -> PlacementReport:
    """Preflight from the inventory alone: node id -> region name.

    `brokers` may also be (id, region) pairs, so that an inventory giving two hosts the
    same id can be reported rather than silently merged. `regions` fixes the region order
    (region index = position); without it regions are ordered by their lowest node id.
    """
    items = brokers.items() if isinstance(brokers, Mapping) else brokers
    entries = [(int(node_id), str(region)) for node_id, region in items]
    size = len(entries)
    rf = replication_factor
    findings: list[Finding] = []

    members_of: dict[str, list[int]] = defaultdict(list)
    for node_id, region in sorted(entries):
        members_of[region].append(node_id)
    declared = list(dict.fromkeys(regions)) if regions is not None else list(members_of)
    undeclared = [region for region in members_of if region not in declared]
    order = declared + undeclared

    if size < MIN_CLUSTER_SIZE:
        findings.append(
            Finding(
                "CLUSTER_SIZE_SMALL",
                f"clusterSize is {size}; a dual-region cluster needs at least "
                f"{MIN_CLUSTER_SIZE} brokers",
            )
        )
    if size % 2:
        findings.append(
            Finding(
                "CLUSTER_SIZE_ODD",
                f"clusterSize is {size}; a dual-region cluster needs an even number of brokers",
            )
        )
    if len(declared) != REGIONS:
        findings.append(
            Finding(
                "REGION_COUNT",
                f"found {len(declared)} region(s) {declared}; a dual-region cluster needs "
                f"exactly {REGIONS}",
            )
        )
    for region in undeclared:
        ids = tuple(members_of[region])
        findings.append(
            Finding(
                "UNKNOWN_REGION",
                f"{_brokers(ids)} in region {region!r}, which is not one of {declared}",
                brokers=ids,
            )
        )
    if len({len(members_of[region]) for region in order}) > 1:
        sizes = "; ".join(
            f"{region} has {len(members_of[region])} ({_ids(members_of[region])})"
            for region in order
        )
        findings.append(
            Finding(
                "REGION_SIZE_MISMATCH",
                f"regions differ in size: {sizes}; every region needs the same number of brokers",
                brokers=tuple(sorted(node_id for node_id, _ in entries)),
            )
        )

    for node_id, count in sorted(Counter(node_id for node_id, _ in entries).items()):
        if count > 1:
            where = sorted(region for other, region in entries if other == node_id)
            findings.append(
                Finding(
                    "DUPLICATE_ID",
                    f"broker id {node_id} is used {count} times (regions {', '.join(where)})",
                    brokers=(node_id,),
                )
            )
    ids = {node_id for node_id, _ in entries}
    missing, unexpected = sorted(set(range(size)) - ids), sorted(ids - set(range(size)))
    if missing or unexpected:
        findings.append(
            Finding(
                "IDS_NOT_CONTIGUOUS",
                f"broker ids must cover 0..{size - 1}: missing {missing}, unexpected {unexpected}",
                brokers=tuple(unexpected),
            )
        )

    if declared:
        index = {region: i for i, region in enumerate(declared)}
        off = tuple(
            sorted(
                node_id
                for node_id, region in entries
                if region in index and node_id % len(declared) != index[region]
            )
        )
        if off:
            rule = ", ".join(f"{region} -> {i}" for region, i in index.items())
            findings.append(
                Finding(
                    "PARITY_MISMATCH",
                    f"parity rule broken by {_brokers(off)}: node id % {len(declared)} must be "
                    f"the region index ({rule}), on which balanced placement relies",
                    brokers=off,
                )
            )

    if partitions_count < 1:
        findings.append(
            Finding("PARTITIONS_COUNT", f"partitionsCount is {partitions_count}; needs >= 1")
        )
    if rf % 2:
        findings.append(
            Finding(
                "RF_ODD",
                f"replicationFactor {rf} is odd; dual-region needs an even one so that each "
                "region holds half of every partition's replicas",
            )
        )
    if not 2 <= rf <= size:
        findings.append(
            Finding(
                "RF_RANGE",
                f"replicationFactor {rf} must be between 2 and clusterSize {size}",
            )
        )

    rows: list[PartitionRow] = []
    if entries and partitions_count >= 1 and rf >= 1:
        region_of_id = {}
        for node_id, region in entries:
            region_of_id.setdefault(node_id, region)  # a duplicate id counts in its first region
        for assignment in distribute(region_of_id, partitions_count, rf):
            q = quorum(len(assignment.members))
            by_region = _split(assignment.members, region_of_id, order)
            finding = _placement_finding(assignment.partition_id, by_region, q, declared)
            if finding:
                findings.append(finding)
            rows.append(
                PartitionRow(
                    partition=assignment.partition_id,
                    members=assignment.members,
                    by_region=by_region,
                    quorum=q,
                    leader=assignment.primary,
                    codes=(finding.code,) if finding else (),
                )
            )
    return PlacementReport(tuple(findings), tuple(rows), tuple(order), "layout")


def check_runtime(
    cluster: Mapping[str, Any],
    topology: Mapping[str, Any],
    regions_of: Mapping[int, str],
    replication_factor: int,
) -> PlacementReport:
    """Check a live cluster: `cluster` is GET /actuator/cluster, `topology` GET /v2/topology.

    Replica sets come from the cluster configuration (ACTIVE partitions of brokers that have
    not LEFT); leaders and health from the topology, counting only healthy leaders and
    followers that belong to the replica set.
    """
    regions_of = {int(node_id): region for node_id, region in regions_of.items()}
    findings: list[Finding] = []

    replicas: dict[int, list[int]] = defaultdict(list)
    for broker in cluster.get("brokers", []):
        if broker.get("state") == "LEFT":
            continue
        for partition in broker.get("partitions", []):
            if partition.get("state") == "ACTIVE":
                replicas[int(partition["id"])].append(int(broker["id"]))

    leaders: dict[int, list[int]] = defaultdict(list)
    healthy: dict[int, set[int]] = defaultdict(set)
    for broker in topology.get("brokers", []):
        node_id = int(broker["nodeId"])
        for partition in broker.get("partitions", []):
            partition_id, role = int(partition["partitionId"]), partition.get("role")
            if role == "leader":
                leaders[partition_id].append(node_id)
            if role in ("leader", "follower") and partition.get("health") == "healthy":
                healthy[partition_id].add(node_id)

    lowest: dict[str, int] = {}
    for node_id, region in sorted(regions_of.items()):
        lowest.setdefault(region, node_id)
    known = list(lowest)
    order = list(known)
    if len(order) != REGIONS:
        findings.append(
            Finding(
                "REGION_COUNT",
                f"found {len(order)} region(s) {order}; a dual-region cluster needs exactly "
                f"{REGIONS}",
            )
        )
    strays = tuple(sorted({m for ids in replicas.values() for m in ids} - set(regions_of)))
    if strays:
        order.append(UNKNOWN_REGION)
        findings.append(
            Finding(
                "UNKNOWN_REGION",
                f"no known region for {_brokers(strays)}, which hold replicas",
                brokers=strays,
            )
        )

    partition_ids = set(replicas) | set(leaders) | set(healthy)
    partition_ids |= set(range(1, int(topology.get("partitionsCount") or 0) + 1))
    rows: list[PartitionRow] = []
    for partition_id in sorted(partition_ids):
        members = tuple(sorted(replicas.get(partition_id, ())))
        q = quorum(len(members))
        by_region = _split(members, regions_of, order)
        up = healthy.get(partition_id, set()) & set(members)
        leader_ids = sorted(leaders.get(partition_id, ()))
        own: list[Finding] = []
        if len(members) != replication_factor:
            own.append(
                Finding(
                    "RF_MISMATCH",
                    f"partition {partition_id}: {len(members)} replicas ({_ids(members)}), "
                    f"configured replicationFactor is {replication_factor}",
                    partition_id,
                    members,
                )
            )
        if not leader_ids:
            own.append(
                Finding(
                    "NO_LEADER",
                    f"partition {partition_id}: no leader (replicas {_ids(members)})",
                    partition_id,
                    members,
                )
            )
        elif len(leader_ids) > 1:
            own.append(
                Finding(
                    "MULTIPLE_LEADERS",
                    f"partition {partition_id}: brokers {_ids(leader_ids)} all report leader",
                    partition_id,
                    tuple(leader_ids),
                )
            )
        if len(up) < q:
            own.append(
                Finding(
                    "NO_HEALTHY_QUORUM",
                    f"partition {partition_id}: {len(up)} of {len(members)} replicas healthy "
                    f"({_ids(sorted(up))}), quorum needs {q} (replicas {_ids(members)})",
                    partition_id,
                    members,
                )
            )
        placement = _placement_finding(partition_id, by_region, q, known)
        if placement:
            own.append(placement)
        findings.extend(own)
        rows.append(
            PartitionRow(
                partition=partition_id,
                members=members,
                by_region=by_region,
                quorum=q,
                leader=leader_ids[0] if len(leader_ids) == 1 else None,
                healthy=len(up),
                codes=tuple(f.code for f in own),
            )
        )
    return PlacementReport(tuple(findings), tuple(rows), tuple(order), "runtime")


def format_report(report: PlacementReport) -> str:
    """A plain-text table of the partitions followed by the findings."""
    runtime = report.source == "runtime"
    headers = ["PARTITION", *report.regions, "QUORUM", "LEADER" if runtime else "PRIMARY"]
    if runtime:
        headers.append("HEALTHY")
    headers.append("STATUS")
    table = [headers]
    for row in report.partitions:
        cells = [str(row.partition)]
        cells += [_ids(row.by_region.get(region, ())) or "-" for region in report.regions]
        cells += [str(row.quorum), "-" if row.leader is None else str(row.leader)]
        if runtime:
            cells.append(str(row.healthy))
        cells.append(",".join(row.codes) or "ok")
        table.append(cells)
    widths = [max(len(line[i]) for line in table) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in table
    ]
    if report.ok:
        lines.append(f"placement ok ({report.source}): {len(report.partitions)} partitions")
    else:
        lines.append(f"placement NOT ok ({report.source}): {len(report.findings)} finding(s)")
        lines += [f"  {f.code}: {f.message}" for f in report.findings]
    return "\n".join(lines)


def _ids(ids: Iterable[int]) -> str:
    return ",".join(str(i) for i in ids)


def _brokers(ids: Sequence[int]) -> str:
    return f"broker{'s' if len(ids) > 1 else ''} {_ids(ids)}"


def _split(
    members: Iterable[int], region_of_id: Mapping[int, str], order: Sequence[str]
) -> dict[str, tuple[int, ...]]:
    split: dict[str, list[int]] = {region: [] for region in order}
    for member in sorted(members):
        split.setdefault(region_of_id.get(member, UNKNOWN_REGION), []).append(member)
    return {region: tuple(ids) for region, ids in split.items()}


def _placement_finding(
    partition_id: int,
    by_region: Mapping[str, tuple[int, ...]],
    q: int,
    expected: Sequence[str],
) -> Finding | None:
    """One finding when a region could commit alone or the expected regions do not each
    hold an equal share of the replicas (replicas elsewhere spoil the share too)."""
    members = tuple(sorted(m for ids in by_region.values() for m in ids))
    where = "; ".join(f"{region}: {_ids(ids) or '-'}" for region, ids in by_region.items())
    alone = [r for r, ids in by_region.items() if r != UNKNOWN_REGION and len(ids) >= q]
    if alone:
        region = alone[0]
        return Finding(
            "QUORUM_IN_ONE_REGION",
            f"partition {partition_id}: {region} alone holds {len(by_region[region])} of "
            f"{len(members)} replicas, enough for the quorum of {q} ({where})",
            partition_id,
            members,
        )
    share, rest = divmod(len(members), len(expected) or 1)
    if rest or any(len(by_region.get(region, ())) != share for region in expected):
        return Finding(
            "REPLICAS_UNBALANCED",
            f"partition {partition_id}: replicas split unevenly across regions ({where})",
            partition_id,
            members,
        )
    return None
