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

``flush_delay`` (``cluster.raft.flush.delayTime``) > 0 stretches the group
commit over turns: the journal is fsynced at most once per delay, and what
promises durability (acks, votes, the leader counting itself) waits for the
fsync that covers it. 0 flushes in every turn that wrote entries.

The inbox is bounded (items and payload bytes): when it is full, Raft messages
are dropped (Raft tolerates loss) and proposals are refused with
RESOURCE_EXHAUSTED, so memory stays bounded whatever the partition does.

Below ``data.freeSpace.replication`` (the broker's DiskSpaceMonitor) the
partition persists nothing replicated: appends are handled as heartbeats, so
the follower answers with what it holds and the leader retries later.

No error ends the thread. An exception while driving the core (a full disk, an
I/O error, a bug) stops the partition: whatever waited is answered, the journal
is closed, the partition reports unhealthy, drops Raft traffic and refuses
proposals. After a backoff, and once the disk has room, it is rebuilt from disk
as a restart of this partition alone would: journal reopened with any torn tail
cut, hard state and snapshot reloaded. Only fsynced entries are ever
acknowledged, so no acknowledged entry is lost.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from broker import batching
from broker.batching import PROPOSALS
from broker.fsutil import CorruptFileError, StorageError, fsync_dir, make_private_dirs
from broker.partition import CHECKPOINT_PREFIX, PartitionState, check_snapshot
from broker.raft.core import NotLeader, ProposalRejected, RaftConfig, RaftNode, Role
from broker.raft.journal import Journal, NewerFormatError
from broker.raft.messages import (
    AppendRequest,
    Configuration,
    Entry,
    EntryKind,
    InstallSnapshot,
)
from broker.raft.metastore import MetaStore
from broker.raft.snapshots import SnapshotStore
from broker.records import RecordLog

log = logging.getLogger(__name__)

# The core keeps the newest entries' data in memory up to this; older ones, on disk and
# applied, are read back from the journal when a follower needs them.
LOG_CACHE_BYTES = 16 * 1024 * 1024
MAX_BATCH_BYTES = 512 * 1024  # per entry; keeps AppendRequests well under the frame limit
# The inbox bound: a stalled or slow partition holds at most this much.
MAX_INBOX_ITEMS = 20_000
MAX_INBOX_BYTES = 128 * 1024 * 1024  # payload of entries, snapshot chunks and proposals
# Rebuild from disk after an error: first after RESTART_BACKOFF_MIN, doubling up to MAX.
RESTART_BACKOFF_MIN = 0.25
RESTART_BACKOFF_MAX = 5.0
STABLE_AFTER = 30.0  # a partition running this long after a restart resets the backoff
# errnos that mean "no room" (disk space, file descriptors, memory): the partition
# answers RESOURCE_EXHAUSTED while stopped and rebuilds itself from disk once the
# resource returns. Any other error (EIO...) stops it the same way, answering
# UNAVAILABLE (the outcome of a failing disk is not a question of load).
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
NO_RESOURCE = NO_SPACE | {errno.EMFILE, errno.ENFILE, errno.ENOMEM}
# A follower reports unhealthy until it has applied the commit index its leader told
# it (catching up after a start, a restart or a wipe); once caught up, only while it
# is more than this many entries behind (a follower under load lags by a batch or two).
CATCHUP_SLACK = 1000

# atomix_role's values (broker.metrics): 1 follower, 2 candidate, 3 leader; 0 inactive
_ROLE_VALUE = {Role.FOLLOWER: 1, Role.PRE_CANDIDATE: 2, Role.CANDIDATE: 2, Role.LEADER: 3}
_ROLE_INACTIVE = 0
_NO_ENTRIES: tuple = ()


def _payload(item) -> int:
    """Bytes an inbox item holds beyond its fixed size (what the byte bound counts)."""
    t = type(item)
    if t is AppendRequest:
        return sum(len(e.data) + 32 for e in item.entries) if item.entries else 0
    if t is InstallSnapshot:
        return len(item.data)
    if t is tuple and item and item[0] == "propose":
        return len(item[1])
    if t is tuple and item and item[0] == "proposals":
        return sum(len(p[1]) for p in item[1])
    return 0


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
        snapshot_bytes: int = 32 * 1024 * 1024,
        flush_delay: float = 0.0,
        on_checkpoint: Callable | None = None,
        disk=None,
        clock: Callable[[], float] = time.monotonic,
    ):
        """``disk`` is the broker's DiskSpaceMonitor (None: no free-space checks);
        ``clock`` is injectable for tests that drive ``run_once`` themselves.

        A snapshot is taken after ``snapshot_entries`` entries, ``snapshot_bytes`` of
        entries or ``snapshot_period`` seconds, whichever comes first; it is the
        state only, so it bounds the log the core keeps in memory."""
        self.partition_id = partition_id
        self.node_id = node_id
        self.directory = directory
        self.tick_interval = tick_interval
        self._send = send
        self.metrics = metrics
        self.snapshot_entries = snapshot_entries
        self.snapshot_period = snapshot_period
        self.snapshot_bytes = snapshot_bytes
        # on_checkpoint(runner, backup_id, index, position): called on the partition
        # thread when this replica, leading, applies a new backup checkpoint
        self.on_checkpoint = on_checkpoint
        # Which exporters hold the log (enabled for this partition): the server sets it.
        self.log_holders: Callable[[], list[str]] = list
        self.flush_delay = flush_delay
        self.disk = disk
        self._clock = clock
        self._bootstrap = bootstrap
        self._raft_config = raft_config
        self._flush = flush
        self._segment_size = segment_size
        self._label = str(partition_id)
        self.state = self._new_state()
        self.journal: Journal | None = None
        self.node: RaftNode | None = None
        make_private_dirs(directory)  # 0700, whatever the umask (so are those below it)
        opened: OSError | None = None
        try:
            self._open()
        except OSError as exc:  # a full or failing disk: start stopped, retry by itself
            opened = exc

        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._inbox_lock = threading.Lock()
        self._inbox_bytes = 0
        # entry index -> (term, [(done callback, t0, count) per proposal in the entry])
        self._pending: dict[int, tuple[int, list[tuple[Callable, float, int | None]]]] = {}
        # proposals of this turn: (command bytes, done, t0, count: None for one command)
        self._batch: list[tuple[bytes, Callable, float, int | None]] = []
        # Delayed flush: written but not yet fsynced, with what waits for the fsync.
        self._unflushed_entries = 0
        self._held: list = []  # messages_after_persist waiting for the fsync
        self._held_persist: tuple[int, int] | None = None  # (index, term) to report
        self._flush_due: float | None = None
        self._last_flush = float("-inf")
        # After an error: why (None while running), when to try to rebuild, backoff.
        self.failure: str | None = None
        self._failure_code = "UNAVAILABLE"
        self._restart_at = 0.0
        self._backoff = 0.0
        self._started_at = self._clock()
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"raft-{node_id}-p{partition_id}", daemon=True
        )
        self._last_role = Role.FOLLOWER
        self._last_snapshot_time = self._clock()
        self._bytes_since_snapshot = 0
        # (index, last position, state) taken, waiting until every exporter that
        # holds the log has acknowledged the records up to it (Zeebe's rule)
        self._pending_snapshot: tuple[int, int, bytes] | None = None
        self._next_tick = self._clock() + tick_interval
        self._last_healthy: bool | None = None
        # (term, highest commit index) the leader of that term told us: health
        # compares what this replica applied with it
        self._leader_commit: tuple[int, int] = (0, 0)
        self._caught_up = False  # applied what a leader said was committed, since start
        self._refused_snapshot: tuple[int, int, int] | None = None  # last one logged
        self.status: dict = {"partition": partition_id}  # a copy for other threads
        if opened is not None:
            self._fail(opened)
        self._refresh_status()

    def _open(self) -> None:
        """Load the partition from disk: journal (torn tail cut), hard state, snapshot.

        Damaged data that cannot be used safely raises CorruptFileError naming the
        file and the repair (the daemon prints it and exits; a rebuild retries)."""
        try:
            self._open_files()
        except CorruptFileError as exc:
            raise CorruptFileError(exc.path, exc.reason, self._repair()) from None
        except NewerFormatError as exc:
            raise StorageError(
                os.path.join(self.directory, "journal"), str(exc), "nothing was changed"
            ) from None

    def _repair(self) -> str:
        return (
            f"stop the broker and remove {self.directory} so that partition "
            f"{self.partition_id} is copied again from its peers (or run `broker "
            "wipe-data` to rebuild the whole broker from them); with a single replica "
            "that loses the partition's data: restore it from a backup instead"
        )

    def _open_files(self) -> None:
        pid = self.partition_id
        self.meta = MetaStore(self.directory)
        self.snapshots = SnapshotStore(os.path.join(self.directory, "snapshots"))
        hard_state = self.meta.load()  # before the journal: a damaged file changes nothing
        journal = Journal(
            os.path.join(self.directory, "journal"), self._segment_size, flush=self._flush
        )
        try:
            if journal.recovery.truncated_records or journal.recovery.truncated_bytes:
                log.warning("partition %d: journal recovery: %s", pid, journal.recovery)
            self.journal = journal
            snapshot, state = self._usable_snapshot()
            entries = self._entries_after(snapshot[0].index if snapshot else 0)
            if snapshot:
                self._index_retained(state, snapshot[0])
            node = RaftNode(
                self.node_id,
                self._bootstrap,
                self._raft_config,
                hard_state=hard_state,
                snapshot=snapshot,
                entries=entries,
            )
        except BaseException:
            journal.close()
            raise
        node.log.loader = self._load_entries
        self.state, self.node = state, node

    def _usable_snapshot(self):
        """(newest snapshot whose file and state are intact, the state restored from it),
        or (None, empty state). Without a usable snapshot the log must start at 1 (the
        state is then replayed from it); otherwise the data is refused."""
        for meta, data in self.snapshots.readable():
            state = self._new_state()
            try:
                check_snapshot(data, meta.index)
                state.restore(data)
            except ValueError as exc:
                log.warning(
                    "partition %d: skipping snapshot %d/%d: %s",
                    self.partition_id,
                    meta.index,
                    meta.term,
                    exc,
                )
                continue
            return (meta, data), state
        paths, j = self.snapshots.paths(), self.journal
        if paths and j.first_index > 1:
            raise CorruptFileError(
                paths[-1],
                f"no usable snapshot among {len(paths)} (see the warnings above) and the "
                f"journal starts at index {j.first_index}, so the state cannot be rebuilt",
            )
        if paths:
            log.warning(
                "partition %d: no usable snapshot; the journal holds the whole log, "
                "the state is rebuilt from it",
                self.partition_id,
            )
        return None, self._new_state()

    def _load_entries(self, lo: int, hi: int, max_bytes: int | None):
        return self.journal.read(lo, hi, max_bytes)

    def _new_state(self) -> PartitionState:
        # the record log reads the journal this runner has open (reopened on a rebuild)
        return PartitionState(
            self.partition_id, RecordLog(lambda lo, hi: self.journal.read(lo, hi))
        )

    def _index_retained(self, state: PartitionState, meta) -> None:
        """Index the records the journal still holds below the snapshot (compaction
        deletes whole segments only), so they stay readable after a restart."""
        j = self.journal
        if not j.first_index <= meta.index <= j.last_index or j.term_at(meta.index) != meta.term:
            return  # nothing of it here: the record log starts after the snapshot

        def below():
            lo = j.first_index
            while lo <= meta.index:
                batch = j.read(lo, min(lo + 256, meta.index + 1))
                yield from batch
                lo += len(batch)

        if not state.records.rebuild(below(), state.last_position):
            log.warning(
                "partition %d: the journal below snapshot %d does not match it; "
                "records up to position %d are not readable here",
                self.partition_id,
                meta.index,
                state.last_position,
            )

    def read_records(self, start: int, max_records: int, max_bytes: int, timeout: float = 5.0):
        """Records from ``start`` on, read on the partition thread (which owns the
        journal); raises records.OutOfRange below the first retained position."""
        return self.call(
            lambda _node: self.state.records.read(start, max_records, max_bytes)
        ).result(timeout)

    def _entries_after(self, snapshot_index: int):
        j = self.journal
        if j.last_index < snapshot_index or j.first_index > snapshot_index + 1:
            # The journal does not continue the snapshot (a crash during a
            # snapshot install): start the log right after the snapshot.
            if j.last_index or snapshot_index:
                j.reset(snapshot_index + 1)
            return []
        # index, term and kind only (configurations whole): the core reads the rest
        # back when it needs it, so a long log is not loaded into memory
        entries, lo = [], snapshot_index + 1
        while lo <= j.last_index:
            chunk = j.read(lo, min(lo + 1024, j.last_index + 1))
            entries += [e if e.kind is EntryKind.CONFIG else _released(e) for e in chunk]
            lo += len(chunk)
        return entries

    # --- used by other threads ----------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._inbox.put(None)
        if self._thread.is_alive():  # it may never have been started
            self._thread.join(timeout)
        try:
            self._answer_pending(_unavailable("the broker is shutting down; outcome unknown"))
        finally:
            _close_quietly(self.journal)  # releases the directory lock, whatever happened

    def deliver(self, msg) -> None:
        """A Raft message for this partition; dropped when the inbox is full."""
        size = _payload(msg)
        if not self._admit(size, "raft"):
            return
        self._inbox.put(msg)

    def propose(
        self, command: bytes, done: Callable[[dict], None], count: int | None = None
    ) -> None:
        """Propose ``command``: one command, or with ``count`` that many back to back
        (appends of many records, answered once with the first position and the
        count); ``done(result)`` is called once, on the partition thread (on the
        caller's thread, at once, when the inbox is full). Inside a
        ``PROPOSALS.turn()`` the caller's proposals reach the inbox together when the
        turn ends."""
        item = ("propose", command, done, time.perf_counter(), count)
        if not PROPOSALS.add(self, item):
            self.take([item])

    def take(self, items: list) -> None:
        """Queue proposals as one inbox item (one lock and one wake-up for the lot)."""
        if not self._admit(sum(len(item[1]) for item in items), "proposal"):
            refusal = _error(
                "RESOURCE_EXHAUSTED",
                f"partition {self.partition_id}: too many requests queued "
                f"({MAX_INBOX_ITEMS} items or {MAX_INBOX_BYTES >> 20} MB); try again later",
            )
            for item in items:
                item[2](refusal)
            return
        self._inbox.put(items[0] if len(items) == 1 else ("proposals", items))

    def call(self, fn: Callable[[RaftNode], object]) -> Future:
        """Run ``fn(core)`` on the partition thread (rebalance, force reconfigure...)."""
        fut: Future = Future()
        self._inbox.put(("call", fn, fut))
        return fut

    def refusal(self, write: bool) -> dict | None:
        """Why a client request must be refused at once (None: go ahead). Reads and
        exports go on below data.freeSpace.processing; nothing does below replication."""
        if self.failure is not None:
            return _error(self._failure_code, self._stopped_message())
        disk = self.disk
        if disk is None:
            return None
        if not disk.replication_ok or (write and not disk.processing_ok):
            return _error("RESOURCE_EXHAUSTED", f"partition {self.partition_id}: {disk.why()}")
        return None

    @property
    def is_leader(self) -> bool:
        return self.status.get("role") == "leader"

    @property
    def died(self) -> bool:
        """The partition's thread ended without being stopped (a bug, logged where it
        happened): its last status would otherwise read as healthy forever."""
        return (
            self._thread.ident is not None
            and not self._thread.is_alive()
            and not self._stop.is_set()
        )

    def _admit(self, size: int, kind: str) -> bool:
        if self._inbox.qsize() < MAX_INBOX_ITEMS:
            if not size:
                return True
            with self._inbox_lock:
                if self._inbox_bytes + size <= MAX_INBOX_BYTES:
                    self._inbox_bytes += size
                    return True
        if self.metrics:
            self.metrics.inbox_dropped.labels(self._label, kind).inc()
        return False

    # --- the partition thread -------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with batching.turn():  # answers leave once per turn, per connection
                    self.run_once()
            except Exception as exc:
                try:
                    self._fail(exc)
                except Exception:
                    log.exception("partition %d: handling a failure failed", self.partition_id)
            if self.failure is not None:
                self._refresh_status()

    def run_once(self, block: bool = True) -> None:
        """One turn: wait for the inbox (or the next tick or flush), drain it, drive the
        core once. The thread calls it in a loop; tests may call it directly."""
        now = self._clock()
        try:
            item = (
                self._inbox.get(timeout=max(0.0, self._wake_at() - now)) if block else self._get()
            )
        except queue.Empty:
            item = ()
        self._drain(item)
        if self.failure is not None:
            if self._clock() >= self._restart_at:
                self._try_restart()
            return
        if self._batch:
            self._propose_batch()
        now = self._clock()
        if now >= self._next_tick:
            self.node.tick()
            self._next_tick += self.tick_interval
            if self._next_tick < now:  # we fell far behind (paused): do not burst ticks
                self._next_tick = now + self.tick_interval
            self._maybe_snapshot()
            self._update_log_metrics()
        if self._flush_due is not None and now >= self._flush_due:
            self._flush_held()
        self._process_ready()
        self._refresh_status()

    def _wake_at(self) -> float:
        """When the next turn is due without input: a tick or a delayed flush; while
        stopped after an error, only the next restart attempt."""
        if self.failure is not None:
            return self._restart_at
        if self._flush_due is not None:
            return min(self._next_tick, self._flush_due)
        return self._next_tick

    def _get(self):
        return self._inbox.get_nowait()

    def _drain(self, item) -> None:
        """Handle ``item`` and everything queued behind it (it all joins this turn's
        batch); the inbox's byte budget is given back once for the lot."""
        handle = self._refuse if self.failure is not None else self._handle
        get, freed = self._inbox.get_nowait, 0
        try:
            while True:
                if item:
                    freed += _payload(item)
                    handle(item)
                try:
                    item = get()
                except queue.Empty:
                    return
        finally:
            if freed:
                with self._inbox_lock:
                    self._inbox_bytes -= freed

    def _handle(self, item) -> None:
        if not item:
            return
        if type(item) is not tuple:
            disk = self.disk
            if disk is not None and not disk.replication_ok:
                item = self._without_entries(item)
                if item is None:
                    return
            t = type(item)
            if t is InstallSnapshot and item.done and not self._snapshot_acceptable(item):
                return
            self.node.step(item)
            if t is AppendRequest or t is InstallSnapshot:
                self._heard_commit(item)
            return
        if item[0] == "propose":
            self._batch.append(item[1:])
        elif item[0] == "proposals":
            self._batch.extend(p[1:] for p in item[1])
        else:
            _, fn, fut = item
            try:
                fut.set_result(fn(self.node))
            except Exception as exc:
                fut.set_exception(exc)

    def _heard_commit(self, msg) -> None:
        """Remember the highest commit index the current leader told us (a heartbeat
        tells at most what it knows we hold; entries and snapshots tell the truth)."""
        node = self.node
        if msg.term != node.term or node.leader_id != msg.src:
            return
        told = msg.meta.index if type(msg) is InstallSnapshot else msg.commit
        term, seen = self._leader_commit
        self._leader_commit = (node.term, told if term != node.term else max(seen, told))

    def _snapshot_acceptable(self, msg: InstallSnapshot) -> bool:
        """Verify the last chunk of a snapshot from a peer before the core installs it:
        the whole of it must decode as this partition's state at its index. A bad one
        is dropped with the transfer (the core's buffer is cleared) and logged with the
        sender; nothing on disk and nothing in memory changes."""
        node, meta = self.node, msg.meta
        if meta.index <= node.commit:
            return True  # the core ignores it
        data = node.incoming_snapshot(msg)
        if data is None:
            return True  # out of order: the core asks for the right chunk
        try:
            if meta.index < 1 or meta.term < 1 or not meta.config.voters:
                raise ValueError(f"bad snapshot metadata {meta}")
            check_snapshot(data, meta.index)
        except ValueError as exc:
            node.drop_incoming_snapshot()
            key = (msg.src, meta.index, meta.term)
            if self._refused_snapshot != key:
                self._refused_snapshot = key
                log.warning(
                    "partition %d: refused snapshot %d/%d (%d bytes) from broker %d: %s; "
                    "keeping snapshot %d and the current state",
                    self.partition_id,
                    meta.index,
                    meta.term,
                    len(data),
                    msg.src,
                    exc,
                    node.log.snapshot_index,
                )
            if self.metrics:
                self.metrics.inbox_dropped.labels(self._label, "bad_snapshot").inc()
            return False
        return True

    def _without_entries(self, msg):
        """Below data.freeSpace.replication: persist nothing replicated. An append keeps
        its place in the protocol as a heartbeat (the follower answers what it holds,
        so the leader keeps it and retries later); a snapshot chunk is dropped."""
        t = type(msg)
        if t is AppendRequest and msg.entries:
            return AppendRequest(
                msg.term,
                msg.src,
                msg.dst,
                msg.prev_index,
                msg.prev_term,
                _NO_ENTRIES,
                msg.commit,
            )
        if t is InstallSnapshot:
            return None
        return msg

    def _propose_batch(self) -> None:
        batch, self._batch = self._batch, []
        chunks, size = [[]], 0
        for item in batch:
            alone = item[0].startswith(CHECKPOINT_PREFIX)  # a backup's cut: an entry of its own
            if chunks[-1] and (alone or size + len(item[0]) > MAX_BATCH_BYTES):
                chunks.append([])
                size = 0
            chunks[-1].append(item)
            size += MAX_BATCH_BYTES if alone else len(item[0])
        for chunk in chunks:
            try:
                index = self.node.propose(b"".join([item[0] for item in chunk]))
            except NotLeader as exc:
                refusal = {"ok": False, "code": "NOT_LEADER", "leader": exc.leader}
                for item in chunk:
                    item[1](refusal)
                continue
            except ProposalRejected as exc:
                for item in chunk:
                    item[1](_not_committed(str(exc)))
                continue
            self._pending[index] = (self.node.term, [item[1:] for item in chunk])

    def _process_ready(self) -> None:
        node = self.node
        while True:
            rd = node.ready()
            if rd.empty():
                return
            for m in rd.messages:
                self._send(m.dst, self.partition_id, m)
            if self._held_persist is not None and (
                rd.hard_state is not None or rd.truncate_from is not None or rd.snapshot
            ):
                # What waits for the delayed fsync must not outlive the log it speaks
                # about (a truncation, a snapshot) nor follow a newer term or vote.
                self._flush_held()
            if rd.hard_state is not None:
                self.meta.save(rd.hard_state)
            if rd.truncate_from is not None:
                self.journal.truncate_from(rd.truncate_from)
            if rd.snapshot is not None:
                # never let a state that does not decode replace the one on disk (a
                # ValueError stops the partition, which rebuilds from the files kept)
                check_snapshot(rd.snapshot[1], rd.snapshot[0].index)
                self._store_snapshot(*rd.snapshot)
            if rd.entries:
                self.journal.append(rd.entries)
                self._unflushed_entries += len(rd.entries)
                last = rd.entries[-1]
                self._held_persist = (last.index, last.term)
            if self._held_persist is not None or self._held:
                self._held.extend(rd.messages_after_persist)
                due = self._last_flush + self.flush_delay
                if self.flush_delay <= 0 or self._clock() >= due:
                    self._flush_held()
                elif self._flush_due is None:
                    self._flush_due = due
            else:
                for m in rd.messages_after_persist:
                    self._send(m.dst, self.partition_id, m)
            if rd.snapshot is not None:
                self.state.restore(rd.snapshot[1])
            if rd.committed:
                self._apply(rd.committed)

    def _flush_held(self) -> None:
        """fsync the journal, then release what waited for it (acks, votes, the
        leader counting itself)."""
        self._flush_due = None
        if self._unflushed_entries:
            t0 = time.perf_counter()
            self.journal.flush()
            if self.metrics:
                self.metrics.fsync_duration.labels(self._label).observe(time.perf_counter() - t0)
                self.metrics.fsync_batch.labels(self._label).observe(self._unflushed_entries)
            self._unflushed_entries = 0
            self._last_flush = self._clock()
        held, self._held = self._held, []
        persist, self._held_persist = self._held_persist, None
        for m in held:
            self._send(m.dst, self.partition_id, m)
        if persist is not None:
            self.node.persisted(*persist)

    def _store_snapshot(self, meta, data: bytes) -> None:
        """Keep the snapshot, then delete the journal segments it covers. The
        snapshot is never past what an enabled exporter still needs (see
        ``_maybe_snapshot``), so this is Zeebe's rule: below min(snapshot position,
        lowest exporter position)."""
        self.snapshots.save(meta, data)
        j = self.journal
        if j.term_at(meta.index) == meta.term:
            j.compact(meta.index)
        else:
            j.reset(meta.index + 1)
        self.state.records.trim(j.first_index)

    def _apply(self, entries) -> None:
        state, pending, now = self.state, self._pending, time.perf_counter()
        applied = 0
        latency = self.metrics.commit_latency.labels(self._label) if self.metrics else None
        for e in entries:
            self._bytes_since_snapshot += len(e.data)
            if e.kind is EntryKind.NORMAL:
                results = state.apply(e.index, e.data)
                applied += len(results)
                if state.new_checkpoint is not None:
                    self._checkpointed(e.index)
            else:
                state.applied_index = e.index
                results = []
            waiting = pending.pop(e.index, None) if pending else None
            if waiting is None:
                continue
            term, futures = waiting
            if e.term != term:
                lost = _not_committed("leadership changed before the entry committed")
                for done, _, _ in futures:
                    done(lost)
                continue
            at = 0  # the first result of each proposal
            for done, t0, count in futures:
                if latency is not None:
                    latency.observe(now - t0)
                if count is None and at < len(results):
                    done(results[at])
                    at += 1
                else:
                    n = count or 1
                    done(_combined(results[at : at + n], n))
                    at += n
        if applied and self.metrics:
            self.metrics.records_committed.labels(self._label).inc(applied)
        self.node.log.release(min(self.journal.durable_index, state.applied_index), LOG_CACHE_BYTES)

    def _checkpointed(self, index: int) -> None:
        """A new backup checkpoint was applied at entry ``index`` (alone in it): the
        leader of the moment takes the partition's backup."""
        backup_id, position = self.state.new_checkpoint
        self.state.new_checkpoint = None
        if self.on_checkpoint is not None and self.node.is_leader:
            try:
                self.on_checkpoint(self, backup_id, index, position)
            except Exception:  # the backup fails, never the partition
                log.exception("partition %d: backup %d failed", self.partition_id, backup_id)

    def _maybe_snapshot(self) -> None:
        """Take the state when a snapshot is due; use it once every exporter that
        holds the log has acknowledged the records it covers. Until then the log
        below it is kept, in the journal and in the core (a follower that needs a
        snapshot then misses only records every exporter already has)."""
        node, state = self.node, self.state
        if self._pending_snapshot is None:
            behind = state.applied_index - node.log.snapshot_index
            if behind <= 0:
                return
            due = self._clock() - self._last_snapshot_time >= self.snapshot_period
            big = self._bytes_since_snapshot >= self.snapshot_bytes
            if behind < self.snapshot_entries and not due and not big:
                return
            if self.disk is not None and not self.disk.replication_ok:
                return  # a snapshot writes a file: not now
            self._pending_snapshot = (state.applied_index, state.last_position, state.snapshot())
            self._bytes_since_snapshot = 0
            self._last_snapshot_time = self._clock()
        index, position, data = self._pending_snapshot
        if index <= node.log.snapshot_index:  # a newer snapshot was installed meanwhile
            self._pending_snapshot = None
            return
        holders = self.log_holders()
        if holders and min(state.exported.get(ex, 0) for ex in holders) < position:
            return  # an exporter still needs records it covers
        if self.disk is not None and not self.disk.replication_ok:
            return
        if self._held_persist is not None:
            self._flush_held()  # compaction flushes the journal; release what waited
        self._pending_snapshot = None
        meta = node.compact(index, data)
        self._store_snapshot(meta, data)

    # --- errors: stop, answer, rebuild from disk ------------------------------

    def _fail(self, exc: BaseException) -> None:
        """Stop driving the core after ``exc``; a rebuild from disk follows later."""
        pid = self.partition_id
        no_space = isinstance(exc, OSError) and exc.errno in NO_RESOURCE
        if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
            log.error(
                "partition %d: out of file descriptors: %s; partition stopped, it restarts "
                "from disk by itself once descriptors are free (raise the broker's limit: "
                "LimitNOFILE in its systemd unit, ulimit -n)",
                pid,
                exc,
            )
        elif isinstance(exc, OSError):
            log.error(
                "partition %d: disk error: %s; partition stopped, it restarts from disk "
                "by itself once the disk accepts writes again",
                pid,
                exc,
            )
        else:
            log.exception("partition %d: raft thread failed; restarting it from disk", pid)
        self.failure = f"{type(exc).__name__}: {exc}"
        self._failure_code = "RESOURCE_EXHAUSTED" if no_space else "UNAVAILABLE"
        now = self._clock()
        stable = now - self._started_at >= STABLE_AFTER
        self._backoff = (
            RESTART_BACKOFF_MIN
            if stable or not self._backoff
            else min(RESTART_BACKOFF_MAX, self._backoff * 2)
        )
        self._restart_at = now + self._backoff
        # Entries that were proposed may still commit elsewhere: outcome unknown.
        self._answer_pending(_unavailable(f"partition {pid} stopped: {self.failure}"))
        batch, self._batch = self._batch, []
        for _, done, _, _ in batch:  # never proposed
            done(_error(self._failure_code, self._stopped_message()))
        # Unflushed entries are not acknowledged and never will be by this instance.
        self._held, self._held_persist, self._flush_due = [], None, None
        self._unflushed_entries = 0
        _close_quietly(self.journal)
        if self.disk is not None:
            self.disk.check()
        if self.metrics:
            self.metrics.role.labels(self._label).set(_ROLE_INACTIVE)
            self.metrics.clear_leader_view(self._label)

    def _try_restart(self) -> None:
        pid = self.partition_id
        disk = self.disk
        if disk is not None:
            free = disk.check()
            if free is not None and free <= disk.replication:
                self._restart_at = self._clock() + self._backoff
                return  # not yet: the disk has no room
        try:
            self._sync_from_disk()
            self._open()
            self._pending_snapshot = None  # taken from the state that was dropped
        except Exception as exc:
            self._backoff = min(RESTART_BACKOFF_MAX, max(RESTART_BACKOFF_MIN, self._backoff * 2))
            self._restart_at = self._clock() + self._backoff
            log.warning(
                "partition %d: restart from disk failed (%s: %s); next try in %.1fs",
                pid,
                type(exc).__name__,
                exc,
                self._backoff,
            )
            return
        self._leader_commit, self._caught_up = (0, 0), False  # health waits for a leader
        log.info(
            "partition %d: restarted from disk after %s (log up to %d, term %d)",
            pid,
            self.failure,
            self.node.log.last_index,
            self.node.term,
        )
        self.failure = None
        self.restarts += 1
        self._started_at = self._clock()
        self._last_role = Role.FOLLOWER
        self._next_tick = self._clock() + self.tick_interval
        if self.metrics:
            self.metrics.partition_restarts.labels(self._label).inc()
        self._refresh_status()

    def _sync_from_disk(self) -> None:
        """Make sure what the journal files hold is on disk, and read them from the disk
        next, not from a page cache that an earlier failed fsync may have left behind."""
        directory = os.path.join(self.directory, "journal")
        if not os.path.isdir(directory):
            return
        for name in sorted(os.listdir(directory)):
            if not name.endswith(".seg"):
                continue
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                if self._flush:
                    os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        if self._flush:
            fsync_dir(directory)

    def _refuse(self, item) -> None:
        """While stopped: drop Raft traffic, refuse proposals and calls at once."""
        if not item or type(item) is not tuple:
            return
        if item[0] in ("propose", "proposals"):
            refusal = _error(self._failure_code, self._stopped_message())
            for p in item[1] if item[0] == "proposals" else [item]:
                p[2](refusal)
        else:
            item[2].set_exception(RuntimeError(self._stopped_message()))

    def _stopped_message(self) -> str:
        return (
            f"partition {self.partition_id} is stopped after an error ({self.failure}); "
            "it restarts from disk by itself"
        )

    def _answer_pending(self, result: dict) -> None:
        pending, self._pending = self._pending, {}
        for _, waiting in pending.values():
            for done, _, _ in waiting:
                done(result)

    def _refresh_status(self) -> None:
        node = self.node
        if self.failure is not None:
            self.status = {
                **self.status,
                "role": "inactive",
                "leader": None,
                "health": "unhealthy",
                "unhealthyReason": self._stopped_message(),
            }
            self._set_healthy(False)
            return
        if node.role is not self._last_role:
            if self.metrics:
                self.metrics.role.labels(self._label).set(_ROLE_VALUE[node.role])
                if node.role is Role.LEADER:
                    self.metrics.leader_changes.labels(self._label).inc()
            log.info("partition %d: %s in term %d", self.partition_id, node.role.value, node.term)
            self._last_role = node.role
        role = "leader" if node.role is Role.LEADER else "follower"
        reason = None
        disk = self.disk
        if disk is not None and not (disk.processing_ok and disk.replication_ok):
            reason = disk.why()
        elif node.role is not Role.LEADER:
            reason = self._behind()
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
            "firstPosition": self.state.records.first_position,
            "exported": dict(self.state.exported),
            "health": "healthy" if reason is None else "unhealthy",
            "restarts": self.restarts,
        }
        if reason is not None:
            self.status["unhealthyReason"] = reason
        self._set_healthy(reason is None)

    def _behind(self) -> str | None:
        """Why this replica, not the leader, does not serve the partition's data yet."""
        node, pid = self.node, self.partition_id
        if node.config.voters == {self.node_id}:
            return None  # the only replica: nobody has data it lacks, it leads itself
        if node.leader_id is None:
            return f"partition {pid}: no leader known (term {node.term})"
        if node.log.last_index == 0:
            return f"partition {pid}: holds no log yet; waiting for leader {node.leader_id}"
        term, commit = self._leader_commit
        if term != node.term:
            return f"partition {pid}: has not heard from leader {node.leader_id} yet"
        applied = self.state.applied_index
        if not self._caught_up and commit <= applied:
            # A new leader's commit index lags until the first entry of its term
            # commits: reaching an older one proves nothing. One of its own term covers
            # everything committed before it (in term 1 there is no before).
            if node.term == 1 or (commit and node.log.term_at(commit) == node.term):
                self._caught_up = True  # for good: within CATCHUP_SLACK from now on
            else:
                return (
                    f"partition {pid}: waiting for leader {node.leader_id} to commit an "
                    f"entry of term {node.term} (applied index {applied})"
                )
        if self._caught_up and commit - applied <= CATCHUP_SLACK:
            return None
        return (
            f"partition {pid}: catching up: applied index {applied}, "
            f"leader {node.leader_id} has committed {commit}"
        )

    def _update_log_metrics(self) -> None:
        if self.metrics:
            m, label, j = self.metrics, self._label, self.journal
            m.log_first_position.labels(label).set(self.state.records.first_position)
            m.log_last_position.labels(label).set(self.state.last_position)
            m.log_segments.labels(label).set(j.segment_count)
            m.log_bytes.labels(label).set(j.size_bytes)
            node = self.node
            m.role.labels(label).set(_ROLE_VALUE[node.role])  # also before any change
            if node.role is Role.LEADER:
                exported = self.state.exported
                last = node.log.last_index
                m.set_leader_view(
                    label,
                    self.state.last_position,
                    {ex: exported.get(ex, 0) for ex in self.log_holders()},
                    {f: max(0, last - p.match) for f, p in node.progress.items()},
                )
            else:
                m.clear_leader_view(label)

    def _set_healthy(self, healthy: bool) -> None:
        if healthy is not self._last_healthy:
            self._last_healthy = healthy
            if self.metrics:
                self.metrics.partition_healthy.labels(self._label).set(1 if healthy else 0)


def _released(e: Entry) -> Entry:
    return Entry(e.index, e.term, e.kind, None)


def _close_quietly(journal: Journal | None) -> None:
    if journal is None:
        return
    try:
        journal.close()
    except OSError as exc:
        log.warning("closing journal %s: %s", journal.directory, exc)


def _error(code: str, message: str) -> dict:
    return {"ok": False, "code": code, "message": message}


def _unavailable(message: str) -> dict:
    """The outcome is unknown: the entry may still commit."""
    return {"ok": False, "code": "UNAVAILABLE", "message": message}


def _combined(results: list[dict], count: int) -> dict:
    """The answer to a proposal of ``count`` commands (appends of many records): the
    first position and the count, their positions being consecutive (they were
    applied together); or the first failure."""
    if len(results) < count:  # the entry's tail did not decode (never for our own)
        return results[-1] if results else _bad_entry()
    for result in results:
        if not result.get("ok"):
            return result
    first = results[0]
    return {**first, "count": len(results)}


def _bad_entry() -> dict:
    return {"ok": False, "code": "INVALID_ARGUMENT", "message": "bad command: not applied"}


def _not_committed(message: str) -> dict:
    """Known not to have committed: the gateway may safely try again."""
    return {"ok": False, "code": "UNAVAILABLE", "message": message, "retry": True}
