"""Deterministic simulation harness for the Raft core.

Every node runs the real ``RaftNode``. Around it the harness simulates:

* a disk that distinguishes what was written from what was fsynced: a
  Ready is written at once, and becomes durable only when a later fsync
  event fires (group commit). Messages that promise durability
  (``messages_after_persist``) leave only then. A crash keeps the durable
  state plus a random prefix of the unsynced writes (a torn tail);
* a network with per-schedule loss, duplication and random delay (hence
  reordering), and partitions, including a clean split into two regions;
* crashes, restarts, membership changes and force reconfigure.

Time is an integer clock; all randomness comes from one seeded
``random.Random``. After every step the ``Checker`` verifies Raft's safety
properties; a violation raises ``SafetyViolation`` immediately.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import msgpack

from broker.raft.core import NotLeader, ProposalRejected, RaftConfig, RaftNode, Role
from broker.raft.messages import Configuration, Entry, EntryKind, HardState, SnapshotMeta

TICK = 10  # clock units per Raft tick


class SafetyViolation(AssertionError):
    pass


# --- disk -----------------------------------------------------------------


@dataclass
class DiskState:
    hard_state: HardState = field(default_factory=HardState)
    snapshot: tuple[SnapshotMeta, bytes] | None = None
    entries: list[Entry] = field(default_factory=list)  # after the snapshot point

    def copy(self) -> DiskState:
        return DiskState(self.hard_state, self.snapshot, list(self.entries))

    @property
    def base(self) -> int:
        return self.snapshot[0].index if self.snapshot else 0

    def apply(self, op) -> None:
        kind, arg = op
        if kind == "hs":
            self.hard_state = arg
        elif kind == "truncate":
            del self.entries[max(0, arg - self.base - 1) :]
        elif kind == "snapshot":
            meta, _ = arg
            k = meta.index - self.base
            keep = 0 < k <= len(self.entries) and self.entries[k - 1].term == meta.term
            self.entries = self.entries[k:] if keep else []
            self.snapshot = arg
        elif kind == "entry":
            if arg.index != self.base + len(self.entries) + 1:
                raise SafetyViolation(f"disk append out of order: {arg.index}")
            self.entries.append(arg)


class SimDisk:
    """Durable state, plus the ops written since the last fsync."""

    def __init__(self):
        self.durable = DiskState()
        self.written = DiskState()
        self.unsynced: list = []

    def write(self, rd) -> None:
        ops = []
        if rd.hard_state is not None:
            ops.append(("hs", rd.hard_state))
        if rd.truncate_from is not None:
            ops.append(("truncate", rd.truncate_from))
        if rd.snapshot is not None:
            ops.append(("snapshot", rd.snapshot))
        ops.extend(("entry", e) for e in rd.entries)
        for op in ops:
            self.written.apply(op)
        self.unsynced.extend(ops)

    def fsync(self) -> None:
        self.durable = self.written.copy()
        self.unsynced.clear()

    def crash(self, rng: random.Random) -> None:
        """Lose what was not fsynced, except a random prefix that reached the disk."""
        survivors = self.unsynced[: rng.randint(0, len(self.unsynced))]
        state = self.durable.copy()
        for op in survivors:
            state.apply(op)
        self.durable = state
        self.written = state.copy()
        self.unsynced.clear()


# --- nodes ------------------------------------------------------------------


def _released(e: Entry) -> Entry:
    return Entry(e.index, e.term, e.kind, None)


def encode_state(applied: list[tuple[int, int, bytes]]) -> bytes:
    return msgpack.packb(applied)


def decode_state(data: bytes) -> list[tuple[int, int, bytes]]:
    return [tuple(x) for x in msgpack.unpackb(data)]


class SimNode:
    def __init__(
        self,
        node_id: int,
        bootstrap: Configuration,
        cfg: RaftConfig,
        seed: int,
        release_log: bool = False,
    ):
        self.id = node_id
        self.release_log = release_log
        self.bootstrap = bootstrap
        self.cfg = cfg
        self.seed = seed
        self.disk = SimDisk()
        self.alive = True
        self.incarnation = 0
        self.pending: list = []  # Readies written, waiting for fsync
        self.fsync_scheduled = False
        self.core: RaftNode | None = None
        self.start()

    def start(self) -> None:
        d = self.disk.durable
        self.incarnation += 1
        rng = random.Random(self.seed * 1000 + self.id * 31 + self.incarnation)
        self.core = RaftNode(
            self.id,
            self.bootstrap,
            self.cfg,
            rng,
            hard_state=d.hard_state,
            snapshot=d.snapshot,
            # like the runner: what is on disk starts released (configurations whole)
            entries=[
                e if not self.release_log or e.kind == EntryKind.CONFIG else _released(e)
                for e in d.entries
            ],
        )
        if self.release_log:  # the core reads released entries back from the "disk"
            self.core.log.loader = self.load
        # The state machine restarts from the snapshot; the log is re-applied
        # as the commit index is learnt again.
        if d.snapshot:
            self.applied = decode_state(d.snapshot[1])
            self.applied_index = d.snapshot[0].index
        else:
            self.applied, self.applied_index = [], 0
        self.pending.clear()
        self.fsync_scheduled = False
        self.alive = True

    def load(self, lo: int, hi: int, max_bytes: int | None) -> list[Entry]:
        """What the journal's read does: entries lo..hi-1 written to the disk, stopping
        at ``max_bytes`` (at least one)."""
        w = self.disk.written
        out, size = [], 0
        for e in w.entries[lo - w.base - 1 : hi - w.base - 1]:
            size += len(e.data) + 25
            if out and max_bytes is not None and size > max_bytes:
                break
            out.append(e)
        if not out or out[0].index != lo:
            raise SafetyViolation(f"node {self.id}: entries {lo}..{hi - 1} are not on disk")
        return out

    def release(self) -> None:
        """Drop the data of what is durable and applied (the runner keeps 16 MB; the
        simulator keeps nothing, so every read-back path runs)."""
        if self.release_log:
            d = self.disk.durable
            self.core.log.release(min(d.base + len(d.entries), self.applied_index), 0)


# --- the cluster ------------------------------------------------------------


class SimCluster:
    """N nodes, a network and a clock; deterministic for a given seed."""

    def __init__(
        self,
        n: int = 3,
        seed: int = 0,
        voters=None,
        cfg: RaftConfig | None = None,
        loss: float = 0.0,
        duplicate: float = 0.0,
        delay: tuple[int, int] = (1, 5),
        fsync_delay: tuple[int, int] = (1, 3),
        priorities: dict[int, int] | None = None,
        snapshot_every: int = 0,
        release_log: bool = False,
    ):
        self.seed = seed
        self.rng = random.Random(seed)
        self.cfg = cfg or RaftConfig(election_ticks=10, heartbeat_ticks=1)
        voters = sorted(voters if voters is not None else range(n))
        self.bootstrap = Configuration.of(voters, priorities)
        self.nodes = {i: SimNode(i, self.bootstrap, self.cfg, seed, release_log) for i in range(n)}
        self.loss, self.duplicate, self.delay = loss, duplicate, delay
        self.fsync_delay = fsync_delay
        self.snapshot_every = snapshot_every
        self.now = 0
        self._events: list = []  # (time, seq, kind, payload)
        self._seq = 0
        self.blocked: set[tuple[int, int]] = set()  # directed links that drop everything
        self.checker = Checker(self)
        self.acked: dict[bytes, int] = {}  # payload -> index, acknowledged to a client
        self.proposals = 0
        self.messages_sent = 0
        self._tick_offsets = {i: self.rng.randrange(TICK) for i in self.nodes}

    # --- network --------------------------------------------------------------

    def _push(self, at: int, kind: str, payload) -> None:
        self._seq += 1
        heapq.heappush(self._events, (at, self._seq, kind, payload))

    def _send(self, m) -> None:
        self.messages_sent += 1
        if (m.src, m.dst) in self.blocked or self.rng.random() < self.loss:
            return
        copies = 2 if self.rng.random() < self.duplicate else 1
        for _ in range(copies):
            self._push(self.now + self.rng.randint(*self.delay), "msg", m)

    def disconnect(self, node: int) -> None:
        for other in self.nodes:
            if other != node:
                self.blocked.add((node, other))
                self.blocked.add((other, node))

    def connect(self, node: int) -> None:
        self.blocked = {(a, b) for a, b in self.blocked if node not in (a, b)}

    def partition(self, *groups) -> None:
        """Only nodes in the same group can talk; nodes in no group are cut off."""
        where = {n: gi for gi, g in enumerate(groups) for n in g}
        self.blocked = {
            (a, b)
            for a in self.nodes
            for b in self.nodes
            if a != b and (a not in where or b not in where or where[a] != where[b])
        }

    def heal(self) -> None:
        self.blocked.clear()

    # --- faults ---------------------------------------------------------------

    def crash(self, node: int) -> None:
        n = self.nodes[node]
        if not n.alive:
            return
        n.alive = False
        n.disk.crash(self.rng)
        n.pending.clear()
        self.checker.on_crash(n)

    def restart(self, node: int) -> None:
        n = self.nodes[node]
        if n.alive:
            return
        n.start()

    # --- client ---------------------------------------------------------------

    def leaders(self) -> list[int]:
        return [i for i, n in self.nodes.items() if n.alive and n.core.role is Role.LEADER]

    def propose(self, data: bytes, node: int | None = None) -> int | None:
        """Propose at ``node`` (default: any leader); returns the index or None."""
        targets = [node] if node is not None else self.leaders()
        for t in targets:
            n = self.nodes[t]
            if not n.alive:
                continue
            try:
                index = n.core.propose(data)
            except (NotLeader, ProposalRejected):
                continue
            self.proposals += 1
            self._drain(n)
            return index
        return None

    def call(self, node: int, fn: Callable[[RaftNode], object]):
        """Run ``fn`` on a live node's core and process its output."""
        n = self.nodes[node]
        result = fn(n.core)
        self._drain(n)
        return result

    # --- driving --------------------------------------------------------------

    def _drain(self, n: SimNode) -> None:
        core = n.core
        rd = core.ready()
        if rd.empty():
            return
        for m in rd.messages:
            self._send(m)
        n.disk.write(rd)
        n.pending.append(rd)
        if not n.fsync_scheduled:
            n.fsync_scheduled = True
            self._push(
                self.now + self.rng.randint(*self.fsync_delay), "fsync", (n.id, n.incarnation)
            )
        self.checker.after_step(n)

    def _fsync(self, n: SimNode) -> None:
        n.disk.fsync()
        n.fsync_scheduled = False
        pending, n.pending = n.pending, []
        last = None
        for rd in pending:
            for m in rd.messages_after_persist:
                self._send(m)
            if rd.entries:
                last = rd.entries[-1]
        if last is not None:
            n.core.persisted(last.index, last.term)
        for rd in pending:
            self._apply(n, rd)
        n.release()
        self._maybe_snapshot(n)
        self._drain(n)

    def _apply(self, n: SimNode, rd) -> None:
        if rd.snapshot is not None:
            meta, data = rd.snapshot
            if meta.index > n.applied_index:
                n.applied = decode_state(data)
                n.applied_index = meta.index
        for e in rd.committed:
            if e.index <= n.applied_index:
                continue
            if e.index != n.applied_index + 1:
                raise SafetyViolation(f"node {n.id} applies {e.index} after {n.applied_index}: gap")
            n.applied_index = e.index
            if e.kind == EntryKind.NORMAL:
                n.applied.append((e.index, e.term, e.data))
            self.checker.on_apply(n, e)
            if n.core.role is Role.LEADER and e.kind == EntryKind.NORMAL:
                self.acked.setdefault(e.data, e.index)

    def _maybe_snapshot(self, n: SimNode) -> None:
        if not self.snapshot_every:
            return
        core = n.core
        if n.applied_index - core.log.snapshot_index >= self.snapshot_every:
            meta = core.compact(n.applied_index, encode_state(n.applied))
            # the sim's "storage" persists the snapshot at once (atomic file)
            d = n.disk
            d.fsync()
            d.durable.apply(("snapshot", (meta, core.snapshot[1])))
            d.written = d.durable.copy()

    def step(self) -> None:
        """Advance the clock by one unit: ticks, then deliveries and fsyncs due."""
        self.now += 1
        for i, n in self.nodes.items():
            if n.alive and (self.now + self._tick_offsets[i]) % TICK == 0:
                n.core.tick()
                self._drain(n)
        while self._events and self._events[0][0] <= self.now:
            _, _, kind, payload = heapq.heappop(self._events)
            if kind == "msg":
                n = self.nodes.get(payload.dst)
                if n is None or not n.alive or (payload.src, payload.dst) in self.blocked:
                    continue
                n.core.step(payload)
                self._drain(n)
            elif kind == "fsync":
                node_id, incarnation = payload
                n = self.nodes[node_id]
                if n.alive and n.incarnation == incarnation and n.fsync_scheduled:
                    self._fsync(n)
        self.checker.after_tick()

    def run(self, units: int) -> None:
        for _ in range(units):
            self.step()

    def run_until(self, predicate: Callable[[], bool], limit: int = 5000) -> bool:
        for _ in range(limit):
            if predicate():
                return True
            self.step()
        return predicate()

    # --- questions tests ask ----------------------------------------------------

    def one_leader(self, limit: int = 3000) -> int | None:
        """Wait for exactly one leader among the connected majority; return it."""

        def settled():
            ls = self.leaders()
            if not ls:
                return False
            top = max(self.nodes[i].core.term for i in ls)
            return sum(1 for i in ls if self.nodes[i].core.term == top) == 1

        if not self.run_until(settled, limit):
            return None
        ls = self.leaders()
        return max(ls, key=lambda i: self.nodes[i].core.term)

    def committed_count(self, index: int) -> tuple[int, bytes | None]:
        """How many live nodes applied ``index``, and the value they agree on."""
        count, value = 0, None
        for n in self.nodes.values():
            if n.alive and n.applied_index >= index:
                v = self.checker.applied.get(index)
                count += 1
                value = v[1] if v else None
        return count, value

    def wait_committed(self, data: bytes, expected: int, limit: int = 3000) -> int | None:
        """Propose ``data`` until ``expected`` nodes applied it (MIT lab's one())."""
        deadline = self.now + limit
        while self.now < deadline:
            index = self.propose(data)
            if index is not None:
                stop = self.now + 30 * TICK
                while self.now < stop:
                    self.step()
                    v = self.checker.applied.get(index)
                    if v and v[1] == data and self.committed_count(index)[0] >= expected:
                        return index
            else:
                self.run(TICK)
        return None

    def converged(self) -> bool:
        """Every live voter applied everything the leader committed, and all agree."""
        ls = self.leaders()
        if len(ls) != 1:
            return False
        leader = self.nodes[ls[0]].core
        if leader.log.term_at(leader.commit) != leader.term:
            return False
        return all(
            self.nodes[v].alive and self.nodes[v].applied_index >= leader.commit
            for v in leader.config.voters
        )


# --- safety checks ----------------------------------------------------------


class Checker:
    """Raft's safety properties, checked as the simulation runs.

    * election safety: at most one leader per term;
    * leader append-only: a leader never removes or rewrites its own entries;
    * log matching: same index and term => same entry and same prefix;
    * leader completeness: a leader of term T holds every entry committed in a
      term below T;
    * state machine safety: no two nodes apply different entries at an index;
    * durability: acknowledged entries survive (checked by ``check_final``).
    """

    def __init__(self, cluster: SimCluster):
        self.c = cluster
        self.leader_of_term: dict[int, int] = {}
        self.leader_logs: dict[int, tuple[int, list]] = {}  # node -> (term, [(idx, term)])
        self.applied: dict[int, tuple[int, bytes, int]] = {}  # index -> (term, data, kind)
        self.committed_in: dict[int, tuple[int, int]] = {}  # index -> (entry term, commit term)
        self.checks = 0

    def fail(self, what: str) -> None:
        raise SafetyViolation(f"t={self.c.now}: {what}")

    def on_crash(self, n: SimNode) -> None:
        self.leader_logs.pop(n.id, None)

    def after_step(self, n: SimNode) -> None:
        core = n.core
        if core.role is not Role.LEADER:
            self.leader_logs.pop(n.id, None)
            return
        owner = self.leader_of_term.setdefault(core.term, n.id)
        if owner != n.id:
            self.fail(f"election safety: nodes {owner} and {n.id} both lead term {core.term}")
        log = core.log
        prev = self.leader_logs.get(n.id)
        if prev is None or prev[0] != core.term:
            self._check_completeness(n)
            prev = (core.term, [])
        # leader append-only: everything we saw before is still there, unchanged
        seen = prev[1]
        for idx, term in seen[-4:]:  # the tail is what a rewrite would touch
            if idx > log.snapshot_index and log.term_at(idx) != term:
                self.fail(f"leader append-only: leader {n.id} rewrote index {idx}")
        if seen and seen[-1][0] > log.last_index:
            self.fail(f"leader append-only: leader {n.id} shrank its log below {seen[-1][0]}")
        start = seen[-1][0] + 1 if seen else log.snapshot_index + 1
        seen.extend((i, log.term_at(i)) for i in range(start, log.last_index + 1))
        self.leader_logs[n.id] = (core.term, seen[-64:])
        # commits by this leader, remembered with the term they were committed in
        for idx in range(max(log.snapshot_index + 1, core.commit - 64), core.commit + 1):
            if idx not in self.committed_in:
                self.committed_in[idx] = (log.term_at(idx), core.term)

    def _check_completeness(self, n: SimNode) -> None:
        core = n.core
        log = core.log
        for idx, (term, commit_term) in self.committed_in.items():
            if commit_term >= core.term or idx <= log.snapshot_index:
                continue
            if log.term_at(idx) != term:
                self.fail(
                    f"leader completeness: leader {n.id} of term {core.term} lacks "
                    f"index {idx} (term {term}) committed in term {commit_term}"
                )

    def on_apply(self, n: SimNode, e: Entry) -> None:
        prior = self.applied.setdefault(e.index, (e.term, e.data, int(e.kind)))
        if prior != (e.term, e.data, int(e.kind)):
            self.fail(
                f"state machine safety: node {n.id} applied {e.index}/{e.term} "
                f"but another node applied {e.index}/{prior[0]}"
            )

    def after_tick(self) -> None:
        self.checks += 1
        if self.checks % 50 == 0:
            self.check_log_matching()

    def check_log_matching(self) -> None:
        logs = []
        for n in self.c.nodes.values():
            if n.alive:
                log = n.core.log
                # through slice: released entries are read back, so what the core would
                # send or apply is what is compared
                entries = log.slice(log.snapshot_index + 1, log.last_index + 1)
                logs.append((n.id, log.snapshot_index, {e.index: e for e in entries}))
        for a in range(len(logs)):
            for b in range(a + 1, len(logs)):
                ida, _, la = logs[a]
                idb, _, lb = logs[b]
                common = sorted(set(la) & set(lb), reverse=True)
                matched = False
                for idx in common:
                    ea, eb = la[idx], lb[idx]
                    if ea.term == eb.term:
                        matched = True
                    if matched and ea != eb:
                        self.fail(
                            f"log matching: nodes {ida} and {idb} differ at {idx} below a "
                            f"common entry"
                        )

    def check_final(self) -> None:
        """After convergence: every acknowledged write is applied on every live voter."""
        self.check_log_matching()
        ls = self.c.leaders()
        voters = self.c.nodes[ls[0]].core.config.voters
        for v in voters:
            n = self.c.nodes[v]
            have = {data for _, _, data in n.applied}
            lost = [d for d in self.c.acked if d not in have]
            if lost:
                self.fail(f"durability: node {v} lacks {len(lost)} acknowledged writes")
