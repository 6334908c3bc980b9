"""Backups, the parts below the HTTP API: the checkpoint in the state machine and the
runner, what the journal hands a backup, and the store's states."""

from __future__ import annotations

import os

import pytest

from broker import partition as sm
from broker.backup import store as st
from broker.raft.journal import Journal
from broker.raft.messages import Entry, EntryKind
from tests.unit.test_runner import FakeClock, Results, lead, make_runner


def test_a_checkpoint_is_taken_once_per_id_and_ids_only_grow():
    s = sm.PartitionState(1)
    s.apply(1, sm.encode(sm.APPEND, b"a") + sm.encode(sm.APPEND, b"b"))
    (first,) = s.apply(2, sm.encode(sm.CHECKPOINT, 5))
    assert first == {"ok": True, "partition": 1, "backupId": 5, "position": 2}
    assert s.new_checkpoint == (5, 2)
    s.new_checkpoint = None
    s.apply(3, sm.encode(sm.APPEND, b"c"))
    (again,) = s.apply(4, sm.encode(sm.CHECKPOINT, 5))  # a retry: the same cut
    assert again["position"] == 2 and s.new_checkpoint is None
    (older,) = s.apply(5, sm.encode(sm.CHECKPOINT, 4))
    assert older["code"] == "FAILED_PRECONDITION" and "only grow" in older["message"]
    (bad,) = s.apply(6, sm.encode(sm.CHECKPOINT, "x"))
    assert bad["code"] == "INVALID_ARGUMENT"
    restored = sm.PartitionState(1)
    restored.restore(s.snapshot())
    assert restored.checkpoint == (5, 2)
    old = {"v": 2, "applied": 3, "last_position": 1, "kv": {}, "exported": {}}
    import msgpack

    restored.restore(msgpack.packb(old))  # a snapshot from before backups existed
    assert restored.checkpoint == (0, 0)


def test_the_runner_puts_a_checkpoint_alone_in_its_entry_and_calls_the_taker(tmp_path):
    clock = FakeClock()
    taken = []
    r = make_runner(tmp_path, clock=clock, on_checkpoint=lambda *a: taken.append(a[1:]))
    try:
        lead(r, clock)
        results = Results()
        r.propose(sm.encode(sm.APPEND, b"a"), results.done(0))
        r.propose(sm.encode(sm.CHECKPOINT, 9), results.done(1))
        r.propose(sm.encode(sm.APPEND, b"b"), results.done(2))
        for _ in range(100):
            clock.advance(0.01)
            r.run_once(block=False)
            if len(results.got) == 3:
                break
        assert results.got[1] == {"ok": True, "partition": 1, "backupId": 9, "position": 1}
        ((backup_id, index, position),) = taken
        assert (backup_id, position) == (9, 1)
        (entry,) = r.journal.read(index, index + 1)
        assert entry.data == sm.encode(sm.CHECKPOINT, 9)  # nothing else in its entry
        assert results.got[2]["position"] == 2  # after the cut
    finally:
        r.stop()


def test_the_journal_hands_a_backup_its_files_cut_after_the_checkpoint(tmp_path):
    with Journal(tmp_path, segment_size=300) as j:
        j.append([Entry(i, 1, EntryKind.NORMAL, b"x" * 40) for i in range(1, 30)])
        j.flush()
        files = j.files_through(17)
        assert [os.path.basename(p) for p, _ in files] == sorted(
            os.path.basename(p) for p, _ in files
        )
        last, cut = files[-1]
        assert 0 < cut < os.path.getsize(last)
        assert all(length == os.path.getsize(p) for p, length in files[:-1])
        with pytest.raises(IndexError):
            j.files_through(30)
    # the files, cut there, hold entries 1..17 and nothing after
    copy = tmp_path / "copy"
    copy.mkdir()
    for path, length in files:
        with open(path, "rb") as f:
            (copy / os.path.basename(path)).write_bytes(f.read(length))
    with Journal(copy, segment_size=300) as j:
        assert (j.first_index, j.last_index) == (1, 17)


def test_the_store_reports_each_state(tmp_path):
    store = st.FilesystemStore(str(tmp_path / "store"))
    assert st.status(store, 1)["state"] == st.DOES_NOT_EXIST
    store.create(1, {"partitionsCount": 2, "requestedAtEpoch": 1000.0})
    with pytest.raises(st.BackupExists):
        store.create(1, {})
    assert st.status(store, 1, now=1001.0)["state"] == st.IN_PROGRESS
    assert st.status(store, 1, now=1000.0 + st.STALE_AFTER + 1)["state"] == st.INCOMPLETE
    source = tmp_path / "seg"
    source.write_bytes(b"0123456789")
    store.put_partition(1, 1, [("seg", str(source), 4)], {"checkpointPosition": 3})
    assert (tmp_path / "store" / "1" / "partition-1" / "seg").read_bytes() == b"0123"
    doc = st.status(store, 1, now=1001.0)
    assert doc["state"] == st.IN_PROGRESS and doc["details"][0]["state"] == st.COMPLETED
    store.fail_partition(1, 2, "disk full")
    doc = st.status(store, 1, now=1001.0)
    assert doc["state"] == st.FAILED and doc["failureReason"] == "disk full"
    store.create(2, {"partitionsCount": 1, "requestedAtEpoch": 1000.0})
    store.put_partition(2, 1, [("seg", str(source), 10)], {"files": ["seg"]})
    assert st.status(store, 2)["state"] == st.COMPLETED
    with pytest.raises(st.BackupExists):
        store.create(2, {})  # taken
    with pytest.raises(st.BackupExists):
        store.create(1, {})  # not above the newest
    assert store.ids() == [1, 2]
    assert store.delete(1) and not store.delete(1)
    assert store.ids() == [2]
    out = tmp_path / "out"
    assert store.get_partition(2, 1, str(out)) == {"files": ["seg"]}
    assert (out / "seg").read_bytes() == b"0123456789"


def test_a_backup_waits_for_the_one_in_progress(tmp_path):
    """One backup at a time: while the newest is still being copied, another is
    refused (409) and no checkpoint is proposed."""
    from broker.backup.api import Backups

    store = st.FilesystemStore(str(tmp_path / "store"))
    proposed = []
    backups = Backups(store, lambda body, timeout: proposed.append(body), 2, lambda: {})
    store.create(1, {"partitionsCount": 2, "requestedAtEpoch": 1e12})  # not copied yet
    with pytest.raises(st.BackupExists, match="backup 1 is still in progress"):
        backups.take(2)
    assert proposed == [] and store.ids() == [1]
