"""Keeps this broker's copy of the cluster configuration and carries out its changes.

* Persisted in ``<data>/topology.json`` (checksummed, atomically replaced)
  before it is acted on, so a restart resumes a change where it stopped; on
  restart it is loaded from disk, never regenerated from the static config.
  A corrupt file is reported and replaced by the newest copy a peer gossips.
* Gossiped to every known member every second and merged by version: the
  higher version wins. Only a broker of the configuration (or a configured
  contact point) is listened to; a stranger's copy is ignored (WARNING).
  Only one broker changes the configuration at a time (the one the next
  pending operation names), so versions never fork.
* Executes the operations that name this broker, one at a time, and
  reconciles the partitions it hosts with the configuration.

Gossip alone never destroys a partition (issue 12). The configuration is
only a claim made by whoever gossiped the highest version; the partition's
own Raft group is what the cluster committed. So:

* a partition the configuration no longer gives us keeps running while our
  replica's Raft configuration still contains this broker (the claim is
  inconsistent with Raft: ignored, logged at WARNING);
* its data is deleted only when the removal is verified (``_refusal``):
  either our replica has committed and applied a configuration without us,
  or the partition's leader answered our own reconfiguration request that it
  committed it (PARTITION_LEAVE); and it is never the last copy we know of:
  the partition is led, by another voter reachable by direct probe, and
  everything in our log is committed (so a quorum of the remaining voters
  holds it), or the leader committed our removal (Raft's leader completeness
  gives the same). Otherwise the data stays on disk. Both outcomes are
  logged at WARNING with the reason.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from broker.fsutil import CorruptFileError, read_checked, write_checked
from broker.node.seams import TopologyHost
from broker.raft.messages import Configuration
from broker.topology import model as t

log = logging.getLogger(__name__)

GOSSIP_INTERVAL = 1.0
STEP_INTERVAL = 0.1
RAFT_QUERY_TIMEOUT = 2.0  # reading our replica's Raft state before acting on a claim
DELETE_RETRY = 60.0  # how long a refused deletion is checked again
WAITING_LOG_INTERVAL = 30.0  # how often a broker without a configuration says so
ASK_INTERVAL = 0.25  # how often it asks its peers for theirs


@dataclass
class _Deletion:
    """A partition directory we stopped hosting and would delete once verified."""

    directory: str
    why: str
    raft: dict | None  # our replica's Raft state when it stopped
    leader_confirmed: bool
    until: float
    next_try: float = 0.0
    warned: bool = False


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TopologyManager:
    def __init__(
        self,
        host: TopologyHost,
        static_initial: Callable[[], t.ClusterConfig],
        *,
        initializer: bool = True,
    ):
        self.host = host
        # Only the initializer (broker 0) builds a new cluster's configuration from
        # the static config; every other new broker waits for a peer's copy. A broker
        # added by a scale-out (its config already names the larger cluster) must not
        # start partitions from a layout the cluster never agreed to.
        self._initializer = initializer
        self._waiting_since = time.monotonic()
        self._waiting_logged = 0.0
        self.node_id = host.node_id
        self.path = os.path.join(host.data_directory, "topology.json")
        self._lock = threading.RLock()
        # Starting and stopping partitions happens from the step thread and from
        # gossip; one at a time, or a partition being joined can be dropped midway.
        self._hosting = threading.RLock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"topology-{self.node_id}", daemon=True
        )
        self.config = self._load(static_initial)
        self._warned: set[tuple[int, int, str]] = set()  # (partition, version, what)
        self._deletions: dict[int, _Deletion] = {}  # refused for now; step thread retries
        self._strangers: set[int] = set()  # nodes whose topology gossip we ignored
        self._gossiped: tuple[t.ClusterConfig, int] | None = None  # newest heard, to adopt
        self._gossip_lock = threading.Lock()  # _gossiped, _asked: never held for long
        self._asked: set[int] = set()  # peers that asked for our configuration
        self._last_ask = 0.0
        peers = host.peers
        if peers is not None and hasattr(peers, "topology_members"):
            # Leadership claims are believed only from brokers of the configuration.
            peers.topology_members = self.members

    def members(self) -> list[int]:
        """The brokers of the configuration that have not left."""
        return self.config.active_members()

    # --- persistence -------------------------------------------------------------

    def _load(self, static_initial) -> t.ClusterConfig:
        try:
            doc = json.loads(read_checked(self.path))
            cfg = t.ClusterConfig.from_json(doc)
            log.info("topology version %d loaded from %s", cfg.version, self.path)
            return cfg
        except FileNotFoundError:
            if not self._initializer:
                log.info(
                    "no cluster configuration on disk: waiting for a peer's "
                    "(broker 0 initialises a new cluster; a broker added by scaling "
                    "hosts partitions once a change adds it)"
                )
                return self._uninitialized(static_initial)
            cfg = static_initial()
            self._save(cfg)
            log.info("topology initialised from the static configuration (version 1)")
            return cfg
        except (CorruptFileError, ValueError, KeyError) as exc:
            # Not regenerated: that would forget a failover. Peers gossip theirs.
            log.error("unusable topology file %s (%s); a peer's copy replaces it", self.path, exc)
            return static_initial() if self._initializer else self._uninitialized(static_initial)

    @staticmethod
    def _uninitialized(static_initial) -> t.ClusterConfig:
        static = static_initial()
        return t.uninitialized(static.partitions_count, static.cluster_id)

    def _save(self, cfg: t.ClusterConfig) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        write_checked(self.path, json.dumps(cfg.to_json(), sort_keys=True).encode())

    def _adopt(self, cfg: t.ClusterConfig, why: str) -> None:
        with self._lock:
            if cfg.version <= self.config.version and why != "local":
                return
            self._install(cfg)
        self._act_on(cfg, why)

    def _install(self, cfg: t.ClusterConfig) -> None:
        """Persist, then make current (caller holds _lock)."""
        self._save(cfg)
        self.config = cfg

    def _act_on(self, cfg: t.ClusterConfig, why: str) -> None:
        # Never called with _lock held: reconcile takes _hosting, then _lock.
        log.info("topology version %d (%s)", cfg.version, why)
        self.reconcile()
        self.broadcast()

    # --- gossip ------------------------------------------------------------------------

    def on_gossip(self, src: int, doc: dict | None) -> None:
        if doc is None:  # a broker without a configuration asks for ours
            with self._gossip_lock:
                self._asked.add(src)
            self._wake.set()
            return
        try:
            cfg = t.ClusterConfig.from_json(doc)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("malformed topology from node %d: %s", src, exc)
            return
        if cfg.version <= self.config.version:
            return
        if not self._may_gossip_topology(src):
            if src not in self._strangers:
                self._strangers.add(src)
                log.warning(
                    "ignored topology version %d from node %d: not a broker of the cluster "
                    "(neither in our topology nor a contact point)",
                    cfg.version,
                    src,
                )
            return
        # Adopting may start or stop partitions and wait for them: that is the step
        # thread's work, never the transport's I/O loop's (it serves every peer).
        with self._gossip_lock:
            newest = self._gossiped
            if newest is None or cfg.version > newest[0].version:
                self._gossiped = (cfg, src)
        self._wake.set()

    def _adopt_gossiped(self) -> None:
        with self._gossip_lock:
            gossiped, self._gossiped = self._gossiped, None
        if gossiped is not None:
            cfg, src = gossiped
            self._adopt(cfg, f"gossip from node {src}")

    def _may_gossip_topology(self, src: int) -> bool:
        """Only brokers of our configuration (any state), brokers our pending change
        adds (each applies its own BROKER_ADD, then gossips it) or contact points may."""
        cfg = self.config
        if src in cfg.members:
            return True
        change = cfg.pending_change
        if change is not None and any(
            op.operation == t.BROKER_ADD and op.broker_id == src for op in change.pending
        ):
            return True
        trusted = getattr(self.host.peers, "trusted", None)
        allowed = trusted() if trusted is not None else None
        return allowed is None or src in allowed

    def broadcast(self) -> None:
        peers = self.host.peers
        if peers is None or not self.config.initialized:
            return
        payload = {"topology": self.config.to_json()}
        for node_id in list(peers.members):
            if node_id != self.node_id:
                self.host.send_gossip(node_id, payload)

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self.reconcile()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(5)

    def _run(self) -> None:
        last_gossip = 0.0
        while True:
            self._wake.wait(STEP_INTERVAL)  # a step, or at once a gossiped topology
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._adopt_gossiped()
                if not self.config.initialized:
                    self._ask_peers()
                    self._log_waiting()
                    continue
                self._answer_asks()
                self._step()
                if time.monotonic() - last_gossip >= GOSSIP_INTERVAL:
                    self.broadcast()
                    last_gossip = time.monotonic()
            except Exception:
                log.exception("topology step failed; retrying")

    def _ask_peers(self) -> None:
        """Ask every known peer for its configuration (rather than wait up to a
        GOSSIP_INTERVAL for the next broadcast)."""
        peers = self.host.peers
        now = time.monotonic()
        if peers is None or now - self._last_ask < ASK_INTERVAL:
            return
        self._last_ask = now
        for node_id in list(peers.members):
            if node_id != self.node_id:
                self.host.send_gossip(node_id, {"topology": None})

    def _answer_asks(self) -> None:
        with self._gossip_lock:
            asked, self._asked = self._asked, set()
        if asked:
            payload = {"topology": self.config.to_json()}
            for node_id in asked:
                self.host.send_gossip(node_id, payload)

    def _log_waiting(self) -> None:
        now = time.monotonic()
        if now - self._waiting_logged >= WAITING_LOG_INTERVAL:
            if self._waiting_logged:
                log.warning(
                    "still no cluster configuration after %.0f s: is a broker of the "
                    "cluster among the contact points and reachable?",
                    now - self._waiting_since,
                )
            self._waiting_logged = now

    # --- changes ---------------------------------------------------------------------------

    def begin(self, ops: list[t.Operation], force: bool, request: str) -> t.ClusterConfig:
        """Start a change (on the coordinator); raises ChangeInProgress."""
        with self._lock:
            cfg = t.start_change(self.config, ops, now_iso(), force=force, request=request)
            self._install(cfg)
        self._act_on(cfg, "local")
        return cfg

    def update(self, fn: Callable[[t.ClusterConfig], None]) -> t.ClusterConfig:
        """A direct configuration update without operations (e.g. exporting paused)."""
        import copy

        with self._lock:
            cfg = copy.deepcopy(self.config)
            fn(cfg)
            cfg.version += 1
            self._install(cfg)
        self._act_on(cfg, "local")
        return cfg

    def executor_of(self, cfg: t.ClusterConfig, op: t.Operation) -> int:
        """Who carries out ``op``: the broker it names, unless that broker is being
        force-removed (it is gone): then the lowest retained broker does."""
        if op.operation == t.BROKER_FORCE_REMOVE:
            change = cfg.pending_change
            removed = {
                o.broker_id
                for o in change.completed + change.pending
                if o.operation == t.BROKER_FORCE_REMOVE
            }
            return min(m for m in cfg.active_members() if m not in removed)
        return op.broker_id

    def _step(self) -> None:
        if self._deletions:
            self._retry_deletions()
        with self._lock:
            cfg = self.config
            if cfg.pending_change is None or not cfg.pending_change.pending:
                return
            op = cfg.pending_change.pending[0]
        self._help_force(cfg)
        if self.executor_of(cfg, op) != self.node_id:
            return
        if self._execute(cfg, op):
            with self._lock:
                if self.config is not cfg:
                    return  # replaced meanwhile (gossip); the loop looks again
                new = t.complete_next(cfg, now_iso())
            log.info("completed %s", op.to_api())
            self._adopt(new, "local")

    def _help_force(self, cfg: t.ClusterConfig) -> None:
        """Every retained replica applies a pending forced reconfiguration itself."""
        for op in cfg.pending_change.pending:
            if op.operation != t.PARTITION_FORCE_RECONFIGURE or self.node_id not in op.brokers:
                continue
            runner = self.host.runners.get(op.partition_id)
            if runner is None or sorted(runner.status.get("voters", [])) == list(op.brokers):
                continue
            prio = cfg.replicas(op.partition_id)
            target = Configuration.of(op.brokers, {b: prio.get(b, 1) for b in op.brokers})
            runner.call(lambda core, target=target: core.force_reconfigure(target))

    # --- executing one operation (returns True when it is done) ---------------------------

    def _execute(self, cfg: t.ClusterConfig, op: t.Operation) -> bool:
        name = op.operation
        if name in (t.BROKER_ADD, t.BROKER_REMOVE, t.BROKER_FORCE_REMOVE):
            return True
        if name == t.PARTITION_ENABLE_EXPORTER and op.initialize_from:
            return self.host.init_exporter(op.partition_id, op.exporter_id, op.initialize_from)
        if name in (t.PARTITION_ENABLE_EXPORTER, t.PARTITION_DISABLE_EXPORTER):
            return True  # the exporters follow the configuration once it is applied
        if name == t.PARTITION_FORCE_RECONFIGURE:
            return self._all_replicas_forced(op)
        replicas = cfg.replicas(op.partition_id)
        if name == t.PARTITION_JOIN:
            replicas[op.broker_id] = op.priority
            self.reconcile(extra={op.partition_id: replicas})
        elif name == t.PARTITION_LEAVE:
            replicas.pop(op.broker_id, None)
        elif name == t.PARTITION_RECONFIGURE_PRIORITY:
            replicas[op.broker_id] = op.priority
        committed = self.host.reconfigure_partition(op.partition_id, replicas)
        if committed and name == t.PARTITION_LEAVE:
            self._drop_partition(
                op.partition_id, delete=True, why="left it (PARTITION_LEAVE)", leader_confirmed=True
            )
        return committed

    def _all_replicas_forced(self, op: t.Operation) -> bool:
        want = list(op.brokers)
        for b in op.brokers:
            if b == self.node_id:
                runner = self.host.runners.get(op.partition_id)
                voters = runner.status.get("voters") if runner else None
            else:
                member = self.host.peers.members.get(b)
                info = member.partitions.get(op.partition_id) if member else None
                voters = info.get("voters") if info else None
            if sorted(voters or []) != want:
                return False
        return True

    # --- hosting the partitions the configuration gives us -------------------------------

    def reconcile(self, extra: dict[int, dict[int, int]] | None = None) -> None:
        """Start runners for our partitions; stop those we no longer host."""
        with self._hosting:
            self._reconcile(extra)

    def _reconcile(self, extra: dict[int, dict[int, int]] | None) -> None:
        with self._lock:
            cfg = self.config
            me = cfg.members.get(self.node_id)
            wanted = {}
            if me is not None and me.state != "LEFT":
                wanted = {p: cfg.replicas(p) for p in me.partitions}
            wanted.update(extra or {})
            # partitions a pending operation of ours is moving in or out: leave them be
            in_motion = set()
            if cfg.pending_change:
                in_motion = {
                    op.partition_id
                    for op in cfg.pending_change.pending
                    if op.operation in (t.PARTITION_LEAVE, t.PARTITION_JOIN)
                    and op.broker_id == self.node_id
                }
        for pid, replicas in sorted(wanted.items()):
            self.host.ensure_partition(pid, replicas)
        left = me is not None and me.state == "LEFT"
        for pid in list(self.host.runners):
            if pid not in wanted and pid not in in_motion:
                why = f"topology version {cfg.version} says broker {self.node_id} " + (
                    "LEFT" if left else "no longer hosts it"
                )
                self._drop_partition(pid, delete=left, why=why, version=cfg.version)

    def _drop_partition(
        self,
        pid: int,
        delete: bool,
        why: str,
        leader_confirmed: bool = False,
        version: int | None = None,
    ) -> None:
        """Stop hosting ``pid``; delete its data only when verified (module doc).

        ``leader_confirmed``: the partition's leader has just answered our own
        request that a configuration without us is committed. Otherwise (a
        topology claim, ``version``) the runner is left running while our
        replica's committed Raft configuration still contains us."""
        with self._hosting:
            runner = self.host.runners.get(pid)
            if runner is None:
                return
            raft = self._raft_state(runner)
            if not leader_confirmed:
                if raft is None:
                    self._warn_once(
                        pid,
                        version,
                        "unknown",
                        "partition %d: kept running: %s, but its Raft state cannot be read",
                        pid,
                        why,
                    )
                    return
                if self.node_id in raft["voters"]:
                    self._warn_once(
                        pid,
                        version,
                        "voter",
                        "partition %d: kept running: %s, but its Raft configuration %s "
                        "still contains this broker (claim ignored)",
                        pid,
                        why,
                        raft["voters"],
                    )
                    return
            self.host.runners.pop(pid, None)
            runner.stop()
            if not delete:
                log.info("partition %d no longer hosted here (%s); its data is kept", pid, why)
                return
            deletion = _Deletion(
                runner.directory, why, raft, leader_confirmed, time.monotonic() + DELETE_RETRY
            )
            if not self._try_delete(pid, deletion):
                # Maybe only for now (no leader elected yet): retried by the step thread.
                self._deletions[pid] = deletion

    def _try_delete(self, pid: int, d: _Deletion) -> bool:
        """Delete ``d`` if verified (True); else log why it is kept (once)."""
        refusal = self._refusal(pid, d.raft, d.leader_confirmed)
        if refusal is not None:
            if not d.warned:
                d.warned = True
                log.warning(
                    "partition %d: stopped here (%s) but NOT deleting %s: %s (checked again "
                    "for %g s)",
                    pid,
                    d.why,
                    d.directory,
                    refusal,
                    DELETE_RETRY,
                )
            return False
        log.warning(
            "partition %d: deleting %s: %s; removal verified (%s)",
            pid,
            d.directory,
            d.why,
            "its leader committed it" if d.leader_confirmed else "committed in our Raft log",
        )
        shutil.rmtree(d.directory, ignore_errors=True)
        return True

    def _retry_deletions(self) -> None:
        """Deletions refused for now are checked again, at most each second, for a while."""
        now = time.monotonic()
        for pid, d in list(self._deletions.items()):
            if pid in self.host.runners or now >= d.until:
                if pid not in self.host.runners:
                    log.warning("partition %d: its data stays in %s", pid, d.directory)
                del self._deletions[pid]
            elif now >= d.next_try:
                d.next_try = now + 1.0
                with self._hosting:
                    if pid not in self.host.runners and self._try_delete(pid, d):
                        del self._deletions[pid]

    def _raft_state(self, runner) -> dict | None:
        """Our replica's Raft configuration and log positions, read on its thread."""

        def read(core) -> dict:
            return {
                "voters": sorted(core.config.voters),
                "configIndex": core.config_index,
                "commit": core.commit,
                "lastIndex": core.log.last_index,
                "applied": runner.state.applied_index,
                "term": core.term,
                "leader": core.leader_id,
            }

        try:
            return runner.call(read).result(RAFT_QUERY_TIMEOUT)
        except Exception as exc:
            log.debug("partition %d: Raft state unreadable: %s", runner.partition_id, exc)
            return None

    def _refusal(self, pid: int, raft: dict | None, leader_confirmed: bool) -> str | None:
        """Why ``pid``'s data must not be deleted here, or None (see the module doc)."""
        others = [v for v in raft["voters"] if v != self.node_id] if raft else []
        if not leader_confirmed:
            if raft is None:
                return "its Raft state cannot be read"
            if self.node_id in raft["voters"]:
                return f"this broker is still a voter of {raft['voters']} in its Raft log"
            if raft["configIndex"] > raft["commit"] or raft["applied"] < raft["configIndex"]:
                return (
                    f"the configuration without this broker (index {raft['configIndex']}) is "
                    f"not committed and applied here (commit {raft['commit']}, applied "
                    f"{raft['applied']})"
                )
            if raft["lastIndex"] > raft["commit"]:
                return (
                    f"our log reaches {raft['lastIndex']} but only {raft['commit']} is known "
                    "committed: the other replicas may not hold it"
                )
        peers = self.host.peers
        leader = peers.leader_of(pid) if peers is not None else None
        if leader is None or leader == self.node_id:
            return "no other broker is seen leading the partition (this may be the last copy)"
        if not leader_confirmed and leader not in others:
            return f"its leader, broker {leader}, is not one of the voters {others}"
        reachable = getattr(peers, "reachable", None)
        if reachable is None or not reachable(leader):
            return f"its leader, broker {leader}, does not answer a direct probe"
        return None

    def _warn_once(self, pid: int, version: int | None, what: str, msg: str, *args) -> None:
        key = (pid, -1 if version is None else version, what)
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg, *args)
