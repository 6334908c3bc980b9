"""PartitionRunner: delayed group flush, free-space refusals, errors that never end the
partition thread, and the bounded inbox.

Real journals in a temp directory, real partition threads where the behaviour is about
the thread; a fake clock and ``run_once`` where the behaviour is about time (the flush
delay), so that nothing depends on how fast this machine is.
"""

from __future__ import annotations

import errno
import threading

import pytest

from broker import partition as sm
from broker.diskspace import DiskSpaceMonitor
from broker.metrics import BrokerMetrics
from broker.node import partitions as runner_mod
from broker.node.partitions import PartitionRunner
from broker.raft.core import RaftConfig
from broker.raft.messages import AppendRequest, AppendResponse, Configuration, Entry, EntryKind
from tests.helpers import wait_until

TICK = 0.01


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Space:
    """A statvfs stand-in: the free bytes a test sets."""

    def __init__(self, free: int) -> None:
        self.free = free

    def __call__(self, path: str) -> int:
        return self.free


class Results:
    """Collects proposal results; ``done(i)`` is the callback of proposal i."""

    def __init__(self) -> None:
        self.got: dict[int, dict] = {}
        self.lock = threading.Lock()

    def done(self, i: int):
        def cb(result: dict) -> None:
            with self.lock:
                self.got[i] = result

        return cb


def make_runner(tmp_path, voters=(0,), sent=None, **kw) -> PartitionRunner:
    sent = [] if sent is None else sent
    return PartitionRunner(
        1,
        0,
        str(tmp_path / "p1"),
        Configuration.of(voters, {v: 1 for v in voters}),
        RaftConfig(election_ticks=3, heartbeat_ticks=1),
        TICK,
        lambda dst, pid, msg: sent.append(msg),
        **kw,
    )


def count_flushes(runner: PartitionRunner) -> list[int]:
    """Wrap the journal's flush; returns a list that grows by one per flush."""
    calls: list[int] = []
    journal = runner.journal
    real = journal.flush

    def flush() -> int:
        calls.append(journal.last_index)
        return real()

    journal.flush = flush
    return calls


def lead(runner: PartitionRunner, clock: FakeClock) -> None:
    """Drive a single-voter group with the fake clock until it leads and has committed."""
    for _ in range(200):
        clock.advance(TICK)
        runner.run_once(block=False)
        s = runner.status
        if s["role"] == "leader" and s["commit"] == s["lastIndex"]:
            return
    raise AssertionError(f"no leadership: {runner.status}")


# --- raft.flush.delayTime -------------------------------------------------------------------


@pytest.mark.parametrize("delay", [0.0, 0.05])
def test_flush_delay_sets_how_many_fsyncs_cover_the_same_records(tmp_path, delay):
    clock = FakeClock()
    r = make_runner(tmp_path, flush_delay=delay, clock=clock)
    try:
        lead(r, clock)
        flushes = count_flushes(r)
        results = Results()
        clock.advance(1.0)  # the last flush is long past: the first record flushes at once
        for i in range(10):  # ten records, each in a turn of its own, no time passing
            r.propose(sm.encode(sm.APPEND, f"r{i}".encode()), results.done(i))
            r.run_once(block=False)
        if delay == 0:
            assert len(flushes) == 10  # one fsync per turn that wrote
            assert sorted(results.got) == list(range(10))
        else:
            assert len(flushes) == 1  # r0 at once; r1..r9 wait for the delay
            assert sorted(results.got) == [0]  # nothing acknowledged before its fsync
            assert r.status["commit"] == r.journal.durable_index
            clock.advance(delay)
            r.run_once(block=False)
            assert len(flushes) == 2  # one fsync covers r1..r9
            assert sorted(results.got) == list(range(10))
        assert [results.got[i]["position"] for i in range(10)] == list(range(1, 11))
        assert r.journal.durable_index == r.journal.last_index
    finally:
        r.stop()


def test_a_delayed_follower_acks_only_after_the_fsync_that_covers_the_entries(tmp_path):
    clock, sent = FakeClock(), []
    r = make_runner(tmp_path, voters=(0, 1), sent=sent, flush_delay=0.05, clock=clock)
    try:
        flushes = count_flushes(r)

        def append(index: int) -> None:
            entry = Entry(index, 1, EntryKind.NORMAL, sm.encode(sm.APPEND, b"x"))
            r.deliver(AppendRequest(1, 1, 0, index - 1, 1 if index > 1 else 0, (entry,), 0))
            r.run_once(block=False)

        append(1)  # first write after a long idle: flushed and acked at once
        acks = [m for m in sent if isinstance(m, AppendResponse)]
        assert [(a.success, a.match_index) for a in acks] == [(True, 1)]
        append(2)
        append(3)
        acks = [m for m in sent if isinstance(m, AppendResponse)]
        assert len(acks) == 1 and len(flushes) == 1  # 2 and 3 written, not yet durable
        clock.advance(0.05)
        r.run_once(block=False)
        acks = [m for m in sent if isinstance(m, AppendResponse)]
        assert [a.match_index for a in acks] == [1, 2, 3]
        assert len(flushes) == 2
    finally:
        r.stop()


def test_a_truncation_first_flushes_what_waits_so_no_ack_outlives_its_entries(tmp_path):
    clock, sent = FakeClock(), []
    r = make_runner(tmp_path, voters=(0, 1, 2), sent=sent, flush_delay=0.05, clock=clock)
    try:
        data = sm.encode(sm.APPEND, b"x")
        r.deliver(AppendRequest(1, 1, 0, 0, 0, (Entry(1, 1, EntryKind.NORMAL, data),), 0))
        r.run_once(block=False)
        r.deliver(AppendRequest(1, 1, 0, 1, 1, (Entry(2, 1, EntryKind.NORMAL, data),), 0))
        r.run_once(block=False)  # entry 2 (term 1) waits for the delayed fsync
        # A new leader (term 2) replaces entry 2.
        r.deliver(AppendRequest(2, 2, 0, 1, 1, (Entry(2, 2, EntryKind.NORMAL, data),), 0))
        r.run_once(block=False)

        def acks():
            return [(m.term, m.match_index) for m in sent if isinstance(m, AppendResponse)]

        # The term-1 ack of entry 2 went out fsynced, before the truncation: no ack
        # speaks of an entry that is gone (or was never durable).
        assert acks() == [(1, 1), (1, 2)]
        clock.advance(0.05)
        r.run_once(block=False)
        assert acks() == [(1, 1), (1, 2), (2, 2)]
        assert r.journal.term_at(2) == 2
    finally:
        r.stop()


# --- free space -----------------------------------------------------------------------------


def test_below_processing_writes_are_refused_reads_are_not(tmp_path):
    space = Space(100 << 20)
    disk = DiskSpaceMonitor(str(tmp_path), 50 << 20, 10 << 20, statvfs_free=space)
    r = make_runner(tmp_path, disk=disk)
    try:
        assert r.refusal(write=True) is None
        space.free = 40 << 20
        disk.check()
        refusal = r.refusal(write=True)
        assert refusal["code"] == "RESOURCE_EXHAUSTED"
        assert "40.0 MB (41943040 bytes) free" in refusal["message"]
        assert "below data.freeSpace.processing (50MB)" in refusal["message"]
        assert r.refusal(write=False) is None  # reads and exports go on
        r.run_once(block=False)
        assert r.status["health"] == "unhealthy"
        space.free = 5 << 20  # below replication: nothing goes through this leader
        disk.check()
        assert "data.freeSpace.replication (10MB)" in r.refusal(write=False)["message"]
        space.free = 60 << 20
        disk.check()
        r.run_once(block=False)
        assert r.refusal(write=True) is None
        assert r.status["health"] == "healthy"
    finally:
        r.stop()


def test_below_replication_a_follower_persists_nothing_and_recovers(tmp_path):
    space, sent, metrics = Space(5 << 20), [], BrokerMetrics()
    disk = DiskSpaceMonitor(str(tmp_path), 20 << 20, 10 << 20, statvfs_free=space, metrics=metrics)
    clock = FakeClock()
    r = make_runner(tmp_path, voters=(0, 1), sent=sent, clock=clock, disk=disk, metrics=metrics)
    try:
        data = sm.encode(sm.APPEND, b"x")
        msg = AppendRequest(1, 1, 0, 0, 0, (Entry(1, 1, EntryKind.NORMAL, data),), 0)
        r.deliver(msg)
        r.run_once(block=False)
        acks = [(m.success, m.match_index) for m in sent if isinstance(m, AppendResponse)]
        assert acks == [(True, 0)]  # answered as a heartbeat: it holds nothing new
        assert r.journal.last_index == 0
        assert r.status["health"] == "unhealthy"
        assert "data.freeSpace.replication" in r.status["unhealthyReason"]
        text = metrics.render().decode()
        assert "broker_disk_replication_paused 1.0" in text
        assert 'zeebe_health{partition="1"} 0.0' in text
        space.free = 30 << 20
        disk.check()
        r.deliver(msg)  # the leader retries
        r.run_once(block=False)
        acks = [(m.success, m.match_index) for m in sent if isinstance(m, AppendResponse)]
        assert acks[-1] == (True, 1)
        assert r.journal.last_index == 1 and r.journal.durable_index == 1
        assert r.status["health"] == "healthy"
        text = metrics.render().decode()
        assert "broker_disk_replication_paused 0.0" in text
        assert 'zeebe_health{partition="1"} 1.0' in text
    finally:
        r.stop()


# --- errors never end the thread ------------------------------------------------------------


def fail_once(obj, name: str, exc: BaseException) -> list[int]:
    """Make ``obj.name`` raise ``exc`` on its next call only; returns a call counter."""
    real, calls = getattr(obj, name), []

    def wrapper(*a, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise exc
        return real(*a, **kw)

    setattr(obj, name, wrapper)
    return calls


def write_and_wait(r: PartitionRunner, payload: bytes, timeout: float = 10.0) -> dict:
    box: list[dict] = []
    r.propose(sm.encode(sm.APPEND, payload), box.append)
    wait_until(lambda: box, timeout)
    return box[0]


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "RESOURCE_EXHAUSTED"),
        (OSError(errno.EIO, "Input/output error"), "UNAVAILABLE"),
    ],
    ids=["ENOSPC", "EIO"],
)
def test_a_disk_error_stops_the_partition_which_restarts_from_disk(tmp_path, exc, code):
    metrics = BrokerMetrics()
    r = make_runner(tmp_path, metrics=metrics)
    r.start()
    try:
        wait_until(lambda: r.status["role"] == "leader", 10)
        acked = [write_and_wait(r, f"ok{i}".encode())["position"] for i in range(3)]
        assert acked == [1, 2, 3]
        fail_once(r.journal, "append", exc)
        result = write_and_wait(r, b"lost")
        assert result["ok"] is False and result["code"] == "UNAVAILABLE"  # outcome unknown
        assert r.failure is not None and r._thread.is_alive()
        assert r.status["health"] == "unhealthy" and r.status["role"] == "inactive"
        refused = r.refusal(write=True)
        assert refused is not None and refused["code"] == code
        # By itself, after the backoff: rebuilt from disk, leader again, writable.
        wait_until(lambda: r.status.get("role") == "leader", 15)
        assert r.status["health"] == "healthy" and r.restarts == 1
        after = write_and_wait(r, b"after")
        assert after["ok"], after
        assert 'broker_partition_restarts_total{partition="1"} 1.0' in metrics.render().decode()
        records = [data for _, data in r.read_records(1, 100, 1 << 20)]  # from the journal
        assert records[:3] == [b"ok0", b"ok1", b"ok2"]  # every acknowledged record
        assert records[-1] == b"after" and b"lost" not in records
    finally:
        r.stop()


def test_a_stopped_partition_sleeps_until_its_restart_attempt(tmp_path):
    """No busy loop while stopped: the next wake-up is the restart attempt, not the
    ticks it no longer takes."""
    clock = FakeClock()
    r = make_runner(tmp_path, clock=clock)
    try:
        r._fail(OSError(errno.ENOSPC, "No space left on device"))
        clock.advance(10 * TICK)  # ticks are long overdue
        r.run_once(block=False)
        assert r.failure is not None
        assert r._wake_at() - clock() == pytest.approx(runner_mod.RESTART_BACKOFF_MIN - 10 * TICK)
        clock.advance(runner_mod.RESTART_BACKOFF_MIN)
        r.run_once(block=False)  # the attempt: the disk is fine, so it restarts
        assert r.failure is None and r.restarts == 1
    finally:
        r.stop()


def test_a_failed_fsync_acknowledges_nothing_and_the_partition_recovers(tmp_path):
    r = make_runner(tmp_path)
    r.start()
    try:
        wait_until(lambda: r.status["role"] == "leader", 10)
        fail_once(r.journal, "flush", OSError(errno.EIO, "Input/output error"))
        result = write_and_wait(r, b"unsynced")
        assert result["ok"] is False
        wait_until(lambda: r.status.get("role") == "leader" and r.restarts == 1, 15)
        assert write_and_wait(r, b"next")["ok"]
    finally:
        r.stop()


def test_an_unexpected_exception_restarts_the_partition_instead_of_killing_it(tmp_path):
    r = make_runner(tmp_path)
    r.start()
    try:
        wait_until(lambda: r.status["role"] == "leader", 10)
        assert write_and_wait(r, b"before")["ok"]
        fail_once(r.node, "tick", RuntimeError("a bug"))
        wait_until(lambda: r.restarts == 1 and r.status.get("role") == "leader", 15)
        assert r._thread.is_alive()
        assert write_and_wait(r, b"after")["ok"]
        assert [d for _, d in r.read_records(1, 10, 1 << 20)] == [b"before", b"after"]
    finally:
        r.stop()


def test_a_partition_that_cannot_open_its_disk_starts_stopped_and_retries(tmp_path):
    # The journal directory is a file: opening fails until it is removed.
    (tmp_path / "p1").mkdir()
    (tmp_path / "p1" / "journal").write_text("not a directory")
    r = make_runner(tmp_path)
    r.start()
    try:
        assert r.failure is not None and r.status["health"] == "unhealthy"
        (tmp_path / "p1" / "journal").unlink()
        wait_until(lambda: r.status.get("role") == "leader", 15)
        assert write_and_wait(r, b"x")["ok"]
    finally:
        r.stop()


# --- bounded inbox --------------------------------------------------------------------------


def test_a_full_inbox_drops_raft_messages_and_refuses_proposals(tmp_path, monkeypatch):
    monkeypatch.setattr(runner_mod, "MAX_INBOX_ITEMS", 50)
    monkeypatch.setattr(runner_mod, "MAX_INBOX_BYTES", 1 << 20)
    metrics = BrokerMetrics()
    r = make_runner(tmp_path, voters=(0, 1), metrics=metrics)  # not started: nothing drains
    try:
        heartbeat = AppendRequest(1, 1, 0, 0, 0, (), 0)
        for _ in range(80):
            r.deliver(heartbeat)
        assert r._inbox.qsize() == 50
        results = Results()
        r.propose(b"x", results.done(0))
        assert results.got[0]["code"] == "RESOURCE_EXHAUSTED"
        text = metrics.render().decode()
        assert 'broker_partition_inbox_dropped_total{kind="raft",partition="1"} 30.0' in text
        # Bytes are bounded too: a few big appends fill it long before the item count.
        r._drain(())
        big = Entry(1, 1, EntryKind.NORMAL, b"x" * (300 << 10))
        for _ in range(10):
            r.deliver(AppendRequest(1, 1, 0, 0, 0, (big,), 0))
        assert r._inbox.qsize() == 3
        assert r._inbox_bytes <= 1 << 20
        r._drain(())  # draining gives the budget back
        assert r._inbox.qsize() == 0 and r._inbox_bytes == 0
    finally:
        r.stop()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_partition_thread_that_ended_unasked_is_reported_as_died(tmp_path):
    # Nothing ordinary ends the thread (see above); something that escapes every
    # handler must still not leave the last "healthy" status standing.
    r = make_runner(tmp_path)
    r.start()
    try:
        wait_until(lambda: r.status["role"] == "leader", 10)
        assert not r.died
        fail_once(r.node, "tick", SystemExit("escapes every handler"))
        wait_until(lambda: r.died, 10)
    finally:
        r.stop()
    stopped = make_runner(tmp_path / "other")
    stopped.start()
    stopped.stop()
    assert not stopped.died  # stopped on purpose: not a death


def test_proposals_of_one_turn_reach_the_inbox_as_one_item_and_commit(tmp_path):
    from broker import batching

    r = make_runner(tmp_path)  # one voter: it elects itself
    r.start()
    try:
        wait_until(lambda: r.is_leader, 10)
        results = Results()
        with batching.turn():
            for i in range(20):
                r.propose(sm.encode(sm.APPEND, b"r%d" % i), results.done(i))
            assert r._inbox.qsize() == 0  # gathered, not queued yet
        wait_until(lambda: len(results.got) == 20, 10)
        positions = [results.got[i]["position"] for i in range(20)]
        assert positions == list(range(positions[0], positions[0] + 20))
    finally:
        r.stop()


def test_a_full_inbox_refuses_every_proposal_of_a_turn(tmp_path, monkeypatch):
    from broker import batching

    monkeypatch.setattr(runner_mod, "MAX_INBOX_BYTES", 100)
    r = make_runner(tmp_path)  # not started: nothing drains
    try:
        results = Results()
        with batching.turn():
            for i in range(3):
                r.propose(b"x" * 40, results.done(i))
        assert [results.got[i]["code"] for i in range(3)] == ["RESOURCE_EXHAUSTED"] * 3
        assert r._inbox.qsize() == 0 and r._inbox_bytes == 0
    finally:
        r.stop()
