"""Drives one partition's ``RaftNode`` with a thread, a clock, a disk and a network.

One thread per hosted partition owns the core, the journal and the state
machine, so none of them needs a lock. Everything else talks to it through
its inbox: Raft messages from the transport, proposals from the gateway,
calls from the management API. Each turn of the loop drains the whole inbox,
then processes the core's Ready once: whatever arrived together is written
with a single fsync (group commit).

Proposals drained in one turn become one Raft entry (a batch of commands),
so replication, journal and fsync costs are paid per batch, not per record.
A proposal's future resolves when its entry is applied: with the state
machine's result if the entry committed at that index is ours, or with
UNAVAILABLE if another leader's entry took the index (it was never
committed). A leader that loses leadership keeps its pending futures: if the
new leader commits the entry after all, the result still arrives.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from broker.partition import PartitionState
from broker.raft.core import NotLeader, ProposalRejected, RaftConfig, RaftNode, Role
from broker.raft.journal import Journal
from broker.raft.messages import Configuration, EntryKind
from broker.raft.metastore import MetaStore
from broker.raft.snapshots import SnapshotStore

log = logging.getLogger(__name__)

MAX_BATCH_BYTES = 512 * 1024  # per entry; keeps AppendRequests well under the frame limit

_ROLE_VALUE = {Role.FOLLOWER: 0, Role.PRE_CANDIDATE: 1, Role.CANDIDATE: 1, Role.LEADER: 2}


class PartitionRunner:
    def __init__(
        self,
        partition_id: int,
        node_id: int,
        directory: str,
        bootstrap: Configuration,
        raft_config: RaftConfig,
        tick_interval: float,
        send: Callable[[int, int, object], object],
        metrics=None,
        flush: bool = True,
        segment_size: int = 64 * 1024 * 1024,
        snapshot_entries: int = 100_000,
        snapshot_period: float = 300.0,
    ):
        self.partition_id = partition_id
        self.node_id = node_id
        self.directory = directory
        self.tick_interval = tick_interval
        self._send = send
        self.metrics = metrics
        self.snapshot_entries = snapshot_entries
        self.snapshot_period = snapshot_period
        self._label = str(partition_id)
        os.makedirs(directory, exist_ok=True)

        self.meta = MetaStore(directory)
        self.snapshots = SnapshotStore(os.path.join(directory, "snapshots"))
        self.journal = Journal(os.path.join(directory, "journal"), segment_size, flush=flush)
        if self.journal.recovery.truncated_records or self.journal.recovery.truncated_bytes:
            log.warning("partition %d: journal recovery: %s", partition_id, self.journal.recovery)
        snapshot = self.snapshots.latest()
        entries = self._entries_after(snapshot[0].index if snapshot else 0)
        self.state = PartitionState(partition_id)
        if snapshot:
            self.state.restore(snapshot[1])
        self.node = RaftNode(
            node_id,
            bootstrap,
            raft_config,
            hard_state=self.meta.load(),
            snapshot=snapshot,
            entries=entries,
        )
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        # entry index -> (term, [(done callback, t0) per command in the batch])
        self._pending: dict[int, tuple[int, list[tuple[Callable, float]]]] = {}
        self._batch: list[tuple[bytes, Callable, float]] = []  # proposals of this turn
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"raft-{node_id}-p{partition_id}", daemon=True
        )
        self._last_role = Role.FOLLOWER
        self._last_snapshot_time = time.monotonic()
        self.status: dict = {}  # a copy for other threads, refreshed every turn
        self._refresh_status()

    def _entries_after(self, snapshot_index: int):
        j = self.journal
        if j.last_index < snapshot_index or j.first_index > snapshot_index + 1:
            # The journal does not continue the snapshot (a crash during a
            # snapshot install): start the log right after the snapshot.
            if j.last_index or snapshot_index:
                j.reset(snapshot_index + 1)
            return []
        return j.read(snapshot_index + 1, j.last_index + 1)

    # --- used by other threads ----------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._inbox.put(None)
        if self._thread.is_alive():  # it may never have been started
            self._thread.join(timeout)
        try:
            for _, waiting in self._pending.values():
                for done, _ in waiting:
                    done(_unavailable("the broker is shutting down; outcome unknown"))
            self._pending.clear()
        finally:
            self.journal.close()  # releases the directory lock, whatever happened

    def deliver(self, msg) -> None:
        self._inbox.put(msg)

    def propose(self, command: bytes, done: Callable[[dict], None]) -> None:
        """Propose ``command``; ``done(result)`` is called once, on the partition thread."""
        self._inbox.put(("propose", command, done, time.perf_counter()))

    def call(self, fn: Callable[[RaftNode], object]) -> Future:
        """Run ``fn(core)`` on the partition thread (rebalance, force reconfigure...)."""
        fut: Future = Future()
        self._inbox.put(("call", fn, fut))
        return fut

    @property
    def is_leader(self) -> bool:
        return self.status.get("role") == "leader"

    # --- the partition thread -------------------------------------------------

    def _run(self) -> None:
        next_tick = time.monotonic() + self.tick_interval
        try:
            while not self._stop.is_set():
                try:
                    item = self._inbox.get(timeout=max(0.0, next_tick - time.monotonic()))
                except queue.Empty:
                    item = ()
                self._handle(item)
                while True:  # drain: everything that arrived meanwhile joins this batch
                    try:
                        self._handle(self._inbox.get_nowait())
                    except queue.Empty:
                        break
                if self._batch:
                    self._propose_batch()
                now = time.monotonic()
                if now >= next_tick:
                    self.node.tick()
                    next_tick += self.tick_interval
                    if next_tick < now:  # we fell far behind (paused): do not burst ticks
                        next_tick = now + self.tick_interval
                    self._maybe_snapshot()
                self._process_ready()
                self._refresh_status()
        except Exception:
            log.exception("partition %d: raft thread failed; stopping it", self.partition_id)
            self.status = {**self.status, "role": "inactive", "health": "dead"}

    def _handle(self, item) -> None:
        if not item:
            return
        if type(item) is not tuple:
            self.node.step(item)
            return
        if item[0] == "propose":
            self._batch.append(item[1:])
        else:
            _, fn, fut = item
            try:
                fut.set_result(fn(self.node))
            except Exception as exc:
                fut.set_exception(exc)

    def _propose_batch(self) -> None:
        batch, self._batch = self._batch, []
        chunks, size = [[]], 0
        for item in batch:
            if chunks[-1] and size + len(item[0]) > MAX_BATCH_BYTES:
                chunks.append([])
                size = 0
            chunks[-1].append(item)
            size += len(item[0])
        for chunk in chunks:
            try:
                index = self.node.propose(b"".join(command for command, _, _ in chunk))
            except NotLeader as exc:
                refusal = {"ok": False, "code": "NOT_LEADER", "leader": exc.leader}
                for _, done, _ in chunk:
                    done(refusal)
                continue
            except ProposalRejected as exc:
                for _, done, _ in chunk:
                    done(_not_committed(str(exc)))
                continue
            self._pending[index] = (self.node.term, [(done, t0) for _, done, t0 in chunk])

    def _process_ready(self) -> None:
        node = self.node
        while True:
            rd = node.ready()
            if rd.empty():
                return
            for m in rd.messages:
                self._send(m.dst, self.partition_id, m)
            if rd.hard_state is not None:
                self.meta.save(rd.hard_state)
            if rd.truncate_from is not None:
                self.journal.truncate_from(rd.truncate_from)
            if rd.snapshot is not None:
                self._store_snapshot(*rd.snapshot)
            if rd.entries:
                self.journal.append(rd.entries)
                t0 = time.perf_counter()
                self.journal.flush()
                if self.metrics:
                    self.metrics.fsync_duration.labels(self._label).observe(
                        time.perf_counter() - t0
                    )
                    self.metrics.fsync_batch.labels(self._label).observe(len(rd.entries))
            for m in rd.messages_after_persist:
                self._send(m.dst, self.partition_id, m)
            if rd.entries:
                last = rd.entries[-1]
                node.persisted(last.index, last.term)
            if rd.snapshot is not None:
                self.state.restore(rd.snapshot[1])
            if rd.committed:
                self._apply(rd.committed)

    def _store_snapshot(self, meta, data: bytes) -> None:
        self.snapshots.save(meta, data)
        j = self.journal
        if j.term_at(meta.index) == meta.term:
            j.compact(meta.index)
        else:
            j.reset(meta.index + 1)

    def _apply(self, entries) -> None:
        state, pending, now = self.state, self._pending, time.perf_counter()
        applied = 0
        latency = self.metrics.commit_latency.labels(self._label) if self.metrics else None
        for e in entries:
            if e.kind is EntryKind.NORMAL:
                results = state.apply(e.index, e.data)
                applied += len(results)
            else:
                state.applied_index = e.index
                results = []
            waiting = pending.pop(e.index, None) if pending else None
            if waiting is None:
                continue
            term, futures = waiting
            if e.term != term:
                lost = _not_committed("leadership changed before the entry committed")
                for done, _ in futures:
                    done(lost)
                continue
            for (done, t0), result in zip(futures, results, strict=False):
                if latency is not None:
                    latency.observe(now - t0)
                done(result)
        if applied and self.metrics:
            self.metrics.records_committed.labels(self._label).inc(applied)

    def _maybe_snapshot(self) -> None:
        node = self.node
        behind = self.state.applied_index - node.log.snapshot_index
        if behind <= 0:
            return
        due = time.monotonic() - self._last_snapshot_time >= self.snapshot_period
        if behind < self.snapshot_entries and not due:
            return
        meta = node.compact(self.state.applied_index, self.state.snapshot())
        self._store_snapshot(meta, node.snapshot[1])
        self._last_snapshot_time = time.monotonic()

    def _refresh_status(self) -> None:
        node = self.node
        if node.role is not self._last_role:
            if self.metrics:
                self.metrics.role.labels(self._label).set(_ROLE_VALUE[node.role])
                if node.role is Role.LEADER:
                    self.metrics.leader_changes.labels(self._label).inc()
            log.info("partition %d: %s in term %d", self.partition_id, node.role.value, node.term)
            self._last_role = node.role
        role = "leader" if node.role is Role.LEADER else "follower"
        self.status = {
            "partition": self.partition_id,
            "role": role,
            "term": node.term,
            "leader": node.leader_id,
            "voters": sorted(node.config.voters),
            "commit": node.commit,
            "lastIndex": node.log.last_index,
            "snapshotIndex": node.log.snapshot_index,
            "appliedIndex": self.state.applied_index,
            "lastPosition": self.state.last_position,
            "exported": dict(self.state.exported),
            "health": "healthy",
        }


def _unavailable(message: str) -> dict:
    """The outcome is unknown: the entry may still commit."""
    return {"ok": False, "code": "UNAVAILABLE", "message": message}


def _not_committed(message: str) -> dict:
    """Known not to have committed: the gateway may safely try again."""
    return {"ok": False, "code": "UNAVAILABLE", "message": message, "retry": True}
