"""The record log on disk: positions read back from a real journal through the index,
compaction by Zeebe's rule (snapshot and enabled exporters), OUT_OF_RANGE below the
first retained record, and a restart that indexes what the journal still holds."""

from __future__ import annotations

import msgpack
import pytest

from broker import partition as sm
from broker.node import partitions as runner_mod
from broker.raft.journal import Journal
from broker.raft.messages import Entry, EntryKind
from broker.records import OutOfRange, RecordLog, appends
from tests.unit.test_runner import FakeClock, Results, lead, make_runner

MB = 1024 * 1024


def _batch(*commands) -> bytes:
    return b"".join(commands)


def test_appends_is_the_rule_apply_uses():
    batch = _batch(
        sm.encode(sm.APPEND, b"a"),
        sm.encode(sm.PUT, "k", b"v"),
        msgpack.packb({"append": 1, "x": 2}),  # not a list: not an append
        sm.encode(sm.APPEND, b"b"),
        b"\xc1",  # a corrupt tail ends the batch
        sm.encode(sm.APPEND, b"never"),
    )
    state = sm.PartitionState(1)
    results = state.apply(1, batch)
    assert [r.get("position") for r in results if r.get("ok")] == [1, None, 2]
    assert appends(batch) == [b"a", b"b"]


def _journal_log(tmp_path, cache_bytes):
    """A journal and a record log over it, filled the way a partition fills them."""
    journal = Journal(tmp_path / "j", segment_size=16 * 1024)
    records = RecordLog(lambda lo, hi: journal.read(lo, hi), cache_bytes=cache_bytes)
    state = sm.PartitionState(1, records)
    return journal, records, state


def _commit(journal, state, index, batch, kind=EntryKind.NORMAL):
    journal.append([Entry(index, 1, kind, batch)])
    if kind is EntryKind.NORMAL:
        state.apply(index, batch)


def test_records_are_read_back_from_the_journal_not_from_memory(tmp_path):
    journal, records, state = _journal_log(tmp_path, cache_bytes=1024)
    payload = [f"record-{p:05d}".encode() * 20 for p in range(1, 401)]
    index, p = 0, 0
    while p < len(payload):  # entries of 1 to 3 appends, and entries with none
        index += 1
        n = index % 4
        _commit(
            journal, state, index, _batch(*(sm.encode(sm.APPEND, r) for r in payload[p : p + n]))
        )
        p += n
    journal.flush()
    assert journal.segment_count > 3
    assert records._cached_bytes <= 1024 + 400  # only the newest few are in memory
    for start in (1, 2, 57, 199, 398):
        got = records.read(start, 50, 1 * MB)
        want = list(range(start, min(400, start + 49) + 1))
        assert [pos for pos, _ in got] == want
        assert [rec for _, rec in got] == [payload[q - 1] for q in want]
    # the byte bound: at least one record, then no more than max_bytes
    assert len(records.read(1, 400, 1)) == 1
    assert len(records.read(1, 400, 5 * (len(payload[0]) + 16))) == 5
    assert records.read(401, 10, MB) == []
    journal.close()


def test_compaction_trims_the_index_and_reads_below_are_out_of_range(tmp_path):
    journal, records, state = _journal_log(tmp_path, cache_bytes=0)
    for i in range(1, 301):
        _commit(journal, state, i, sm.encode(sm.APPEND, b"x" * 600))
    journal.flush()
    before = journal.segment_count
    journal.compact(200)
    records.trim(journal.first_index)
    assert journal.segment_count < before
    first = records.first_position
    assert 1 < first <= 201 and first == journal.first_index  # one record per entry here
    with pytest.raises(OutOfRange, match=f"records below position {first} were compacted"):
        records.read(first - 1, 10, MB)
    assert records.read(first, 1, MB)[0][0] == first
    [r] = state.apply(301, sm.encode(sm.READ, 1, 5))
    assert (r["code"], r["first"]) == ("OUT_OF_RANGE", first)
    journal.close()


def test_a_restart_indexes_the_journal_below_the_snapshot(tmp_path):
    journal, records, state = _journal_log(tmp_path, cache_bytes=0)
    for i in range(1, 101):
        _commit(
            journal, state, i, _batch(*(sm.encode(sm.APPEND, b"r%d" % i) for _ in range(i % 3)))
        )
    journal.flush()
    snapshot = state.snapshot()
    last = state.last_position
    journal.compact(60)
    records.trim(journal.first_index)
    first_index = journal.first_index
    expect = records.read(records.first_position, 1000, 10 * MB)
    journal.close()

    journal = Journal(tmp_path / "j", segment_size=16 * 1024)
    restored = sm.PartitionState(1, RecordLog(lambda lo, hi: journal.read(lo, hi), cache_bytes=0))
    restored.restore(snapshot)
    assert restored.records.rebuild(journal.read(first_index, 101), last)
    assert restored.records.read(restored.records.first_position, 1000, 10 * MB) == expect
    assert expect and expect[-1][0] == last
    # a journal that cannot have produced the snapshot: nothing below it is readable
    assert not restored.records.rebuild(journal.read(first_index, 101), 3)
    assert restored.records.first_position == 4
    journal.close()


def test_reset_after_a_snapshot_install_makes_everything_below_unreadable():
    records = RecordLog()
    for i in range(1, 6):
        records.add(i, b"r")
    records.reset(42)
    assert (records.first_position, records.last_position) == (43, 42)
    with pytest.raises(OutOfRange):
        records.read(1, 1, MB)
    assert records.add(43, b"n") == 43


# --- the partition runner: snapshots by bytes, compaction held by exporters -----------------


def _fill(r, clock, results, count, size, start=0):
    for i in range(start, start + count):
        r.propose(sm.encode(sm.APPEND, bytes([i % 251]) * size), results.done(i))
        clock.advance(0.01)
        r.run_once(block=False)


def test_snapshots_by_bytes_compact_the_journal_and_bound_the_core_log(tmp_path):
    clock = FakeClock()
    r = make_runner(
        tmp_path, clock=clock, segment_size=64 * 1024, snapshot_bytes=256 * 1024,
        snapshot_entries=10**9, snapshot_period=10**9,
    )  # fmt: skip
    try:
        lead(r, clock)
        results = Results()
        _fill(r, clock, results, 400, 4096)  # 1.6 MB in 400 entries
        assert len(results.got) == 400
        assert r.node.log.snapshot_index > 0
        in_memory = sum(len(e.data) for e in r.node.log.entries)
        assert in_memory <= 256 * 1024 + 4096 * 20  # the core keeps what follows the snapshot
        assert r.journal.first_index > 1 and r.journal.size_bytes < 600 * 1024
        assert r.status["firstPosition"] > 1
        got = r.state.records.read(r.status["lastPosition"] - 9, 100, MB)
        assert [p for p, _ in got] == list(range(391, 401))
        with pytest.raises(OutOfRange):
            r.state.records.read(1, 1, MB)
    finally:
        r.stop()


def test_an_enabled_exporter_holds_the_log_until_it_acknowledges(tmp_path):
    clock = FakeClock()
    r = make_runner(
        tmp_path, clock=clock, segment_size=64 * 1024, snapshot_bytes=128 * 1024,
        snapshot_entries=10**9, snapshot_period=10**9,
    )  # fmt: skip
    holders = ["region0"]
    r.log_holders = lambda: list(holders)
    try:
        lead(r, clock)
        results = Results()
        _fill(r, clock, results, 200, 4096)
        assert r.journal.first_index == 1  # nothing exported: nothing deleted
        assert r.state.records.read(1, 1, MB)[0][0] == 1
        # the exporter acknowledges up to 150: only segments below it may go
        r.propose(sm.encode(sm.EXPORTED, "region0", 150), results.done(1000))
        _fill(r, clock, results, 60, 4096, start=200)
        assert r.journal.first_index > 1
        assert r.state.records.first_position <= 151  # what it has not acknowledged is kept
        assert r.state.records.read(151, 1, MB)[0][0] == 151
        # disabled (no holders): the log no longer waits for it
        holders.clear()
        _fill(r, clock, results, 60, 4096, start=260)
        assert r.state.records.first_position > 151
    finally:
        r.stop()


def test_the_core_keeps_only_the_newest_entries_in_memory(tmp_path, monkeypatch):
    """With an exporter holding the log (no snapshot can compact it), the core still
    holds at most LOG_CACHE_BYTES of entry data; the rest is read back from the journal,
    also after a restart, which does not load the log into memory."""
    monkeypatch.setattr(runner_mod, "LOG_CACHE_BYTES", 64 * 1024)
    clock = FakeClock()
    r = make_runner(tmp_path, clock=clock, segment_size=64 * 1024)
    r.log_holders = lambda: ["region0"]  # never acknowledges: nothing is compacted
    try:
        lead(r, clock)
        results = Results()
        _fill(r, clock, results, 200, 4096)  # 800 KB
        assert r.node.log.snapshot_index == 0 and r.journal.first_index == 1
        assert r.node.log.held_bytes <= 64 * 1024 + 4096
        whole = r.node.log.slice(1, r.node.log.last_index + 1)  # read back from disk
        assert sum(len(e.data) for e in whole) >= 200 * 4096
    finally:
        r.stop()
    again = make_runner(tmp_path, clock=clock, segment_size=64 * 1024)
    try:
        assert again.node.log.held_bytes < 4096  # the log stayed on disk
        lead(again, clock)  # commits and applies the whole log again, read back in parts
        assert again.state.last_position == 200
        assert again.state.records.read(1, 1, MB)[0] == (1, bytes([0]) * 4096)
    finally:
        again.stop()
