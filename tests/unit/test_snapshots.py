import logging
import os

import pytest

from broker.raft.messages import Configuration, SnapshotMeta
from broker.raft.snapshots import SnapshotStore

CONFIG = Configuration.of({1, 2, 3}, {1: 2})


def meta(index, term=1):
    return SnapshotMeta(index, term, CONFIG, config_term=term)


def snapshot_files(directory):
    return sorted(n for n in os.listdir(directory) if n.endswith(".snap"))


def corrupt(path):
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x40
    path.write_bytes(bytes(blob))


def test_empty_store_has_no_snapshot(tmp_path):
    assert SnapshotStore(tmp_path / "snaps").latest() is None


def test_save_and_latest_round_trip_across_reopen(tmp_path):
    m = SnapshotMeta(42, 3, Configuration.of({1, 5}, {5: 3}), config_term=2)
    SnapshotStore(tmp_path).save(m, b"state" * 1000)

    assert SnapshotStore(tmp_path).latest() == (m, b"state" * 1000)


def test_keeps_the_newest_two(tmp_path):
    store = SnapshotStore(tmp_path)
    for index in (9, 10, 100, 1000):  # numeric order, not lexical
        store.save(meta(index), f"s{index}".encode())

    assert store.latest() == (meta(1000), b"s1000")
    assert len(snapshot_files(tmp_path)) == 2
    assert [int(n.split("-")[1]) for n in snapshot_files(tmp_path)] == [100, 1000]


def test_falls_back_to_previous_when_newest_is_corrupt(tmp_path, caplog):
    store = SnapshotStore(tmp_path)
    store.save(meta(10, 1), b"older" * 100)
    store.save(meta(20, 2), b"newer" * 100)
    newest = tmp_path / snapshot_files(tmp_path)[-1]
    corrupt(newest)

    with caplog.at_level(logging.WARNING, logger="broker.raft.snapshots"):
        assert store.latest() == (meta(10, 1), b"older" * 100)

    assert newest.name in caplog.text
    assert "checksum" in caplog.text


def test_all_corrupt_gives_none(tmp_path):
    store = SnapshotStore(tmp_path)
    store.save(meta(10), b"a" * 100)
    store.save(meta(20), b"b" * 100)
    for name in snapshot_files(tmp_path):
        corrupt(tmp_path / name)

    assert store.latest() is None


def test_renamed_file_is_not_trusted(tmp_path):
    store = SnapshotStore(tmp_path)
    store.save(meta(10), b"ten")
    store.save(meta(20), b"twenty")
    # A snapshot file whose name disagrees with its content is not what it claims.
    os.replace(tmp_path / snapshot_files(tmp_path)[0], tmp_path / snapshot_files(tmp_path)[1])
    (tmp_path / "snapshot-00000000000000000005-00000000000000000001.snap").write_bytes(b"")

    assert store.latest() is None


def test_stale_temp_files_are_removed_and_ignored(tmp_path):
    SnapshotStore(tmp_path).save(meta(10), b"ten")
    stale = tmp_path / "snapshot-00000000000000000099-00000000000000000009.snap.x1y2.tmp"
    stale.write_bytes(b"partial")

    store = SnapshotStore(tmp_path)

    assert not stale.exists()
    assert store.latest() == (meta(10), b"ten")


def test_failed_save_keeps_older_snapshots(tmp_path, monkeypatch):
    store = SnapshotStore(tmp_path)
    store.save(meta(10), b"ten")
    store.save(meta(20), b"twenty")

    def crash(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        store.save(meta(30), b"thirty")
    monkeypatch.undo()

    assert store.latest() == (meta(20), b"twenty")
    assert len(snapshot_files(tmp_path)) == 2
