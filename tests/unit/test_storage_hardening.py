"""Storage hardening (issue 12), at the storage and partition-runner level.

- files and directories the broker creates are 0600/0700 whatever the umask;
- a damaged meta file, or no usable snapshot with a compacted journal, stops the
  partition from opening with an error naming the file and the repair; without a
  usable snapshot but with the whole log the state is replayed; a snapshot whose
  state does not decode is skipped for an older one;
- a snapshot from a peer is verified before the core installs it: a forged one (one
  chunk or several) is refused, logged with the sender, and nothing changes, on disk
  or in memory; a good one is installed;
- a partition thread that runs out of file descriptors while creating a segment
  survives, refuses writes with RESOURCE_EXHAUSTED, and writes again by itself once
  descriptors are free.

Real files in a temp directory and real partition threads; no mocks.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import resource
import stat

import msgpack
import pytest

from broker import partition as sm
from broker.fsutil import CorruptFileError, make_private_dirs
from broker.node.partitions import PartitionRunner
from broker.partition import PartitionState, check_snapshot
from broker.raft.core import RaftConfig
from broker.raft.journal import Journal
from broker.raft.messages import Configuration, Entry, EntryKind, InstallSnapshot, SnapshotMeta
from broker.raft.metastore import MetaStore
from broker.raft.snapshots import SnapshotStore
from tests.helpers import wait_until

TICK = 0.01
PEERS = Configuration.of((0, 1), {0: 1, 1: 1})


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def make_runner(tmp_path, voters=(0,), **kw) -> PartitionRunner:
    return PartitionRunner(
        1,
        0,
        str(tmp_path / "p1"),
        Configuration.of(voters, {v: 1 for v in voters}),
        RaftConfig(election_ticks=3, heartbeat_ticks=1),
        TICK,
        lambda dst, pid, msg: None,
        **kw,
    )


def propose_and_wait(r: PartitionRunner, payload: bytes, timeout: float = 10.0) -> dict:
    box: list[dict] = []
    r.propose(sm.encode(sm.APPEND, payload), box.append)
    wait_until(lambda: box, timeout)
    return box[0]


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# --- modes ----------------------------------------------------------------------------


def test_private_dirs_and_files_whatever_the_umask(tmp_path):
    with umask(0o022):
        make_private_dirs(tmp_path / "a" / "b" / "c")
        for d in ("a", "a/b", "a/b/c"):
            assert mode(tmp_path / d) == 0o700, d
        (tmp_path / "open").mkdir(mode=0o755)
        make_private_dirs(tmp_path / "open")  # an existing directory is left alone
        assert mode(tmp_path / "open") == 0o755

        with Journal(tmp_path / "j", segment_size=256) as j:
            j.append([Entry(i, 1, EntryKind.NORMAL, b"x" * 100) for i in range(1, 10)])
            j.flush()
            assert j.segment_count > 1
        assert mode(tmp_path / "j") == 0o700
        for name in os.listdir(tmp_path / "j"):
            assert mode(tmp_path / "j" / name) == 0o600, name

        store = SnapshotStore(tmp_path / "s")
        store.save(SnapshotMeta(3, 1, PEERS), PartitionState(1).snapshot())
        meta = MetaStore(tmp_path / "m")
        meta.save(meta.load())
        assert mode(tmp_path / "s") == mode(tmp_path / "m") == 0o700
        assert [mode(p) for p in store.paths()] == [0o600]
        assert mode(meta.path) == 0o600


def test_a_segment_file_left_0644_is_made_0600_when_reused(tmp_path):
    with Journal(tmp_path) as j:
        path = tmp_path / "00000000000000000001.seg"
        os.chmod(path, 0o644)
        j.reset(1)  # recreates the segment at the same path
        assert mode(path) == 0o600


# --- damaged files at open --------------------------------------------------------------


def test_a_corrupt_meta_file_names_the_file_and_the_repair(tmp_path):
    r = make_runner(tmp_path)
    r.stop()
    meta = tmp_path / "p1" / "meta"
    meta.write_bytes(b"\x07" * 54)
    with pytest.raises(CorruptFileError) as info:
        make_runner(tmp_path)
    assert info.value.path == str(meta)
    assert "bad magic" in info.value.reason
    assert f"remove {tmp_path / 'p1'} " in info.value.repair
    assert "broker wipe-data" in info.value.repair
    assert meta.read_bytes() == b"\x07" * 54


def _snapshot_of(kv: dict, index: int) -> bytes:
    state = PartitionState(1)
    for n, (k, v) in enumerate(kv.items()):
        state.apply(index - len(kv) + n + 1, sm.encode(sm.PUT, k, v))
    state.applied_index = index
    return state.snapshot()


def test_a_snapshot_whose_state_does_not_decode_is_skipped_for_an_older_one(tmp_path, caplog):
    r = make_runner(tmp_path)
    r.stop()
    store = SnapshotStore(tmp_path / "p1" / "snapshots")
    store.save(SnapshotMeta(1, 1, Configuration.of((0,), {0: 1})), _snapshot_of({"k": b"1"}, 1))
    # intact file (checksum fine) holding garbage state: written by a buggy peer
    store.save(SnapshotMeta(2, 1, Configuration.of((0,), {0: 1})), b"\xc1garbage")
    with caplog.at_level(logging.WARNING):
        r = make_runner(tmp_path)
    try:
        assert r.state.kv == {"k": b"1"}
        assert r.node.log.snapshot_index == 1
        assert "skipping snapshot 2/1" in caplog.text
    finally:
        r.stop()


def test_no_usable_snapshot_and_a_compacted_journal_is_refused_not_reset(tmp_path):
    r = make_runner(tmp_path)
    r.stop()
    part = tmp_path / "p1"
    with Journal(part / "journal") as j:
        j.reset(40)  # compacted: the log starts after a snapshot
        j.append([Entry(40, 1, EntryKind.NORMAL, b"")])
        j.flush()
    store = SnapshotStore(part / "snapshots")
    store.save(SnapshotMeta(39, 1, Configuration.of((0,), {0: 1})), _snapshot_of({}, 39))
    (path,) = store.paths()
    with open(path, "rb") as f:
        blob = bytearray(f.read())
    blob[-1] ^= 0xFF
    with open(path, "wb") as f:
        f.write(blob)
    with pytest.raises(CorruptFileError) as info:
        make_runner(tmp_path)
    assert info.value.path == path
    assert "journal starts at index 40" in info.value.reason
    assert "remove" in info.value.repair
    with Journal(part / "journal") as j:  # untouched
        assert (j.first_index, j.last_index) == (40, 40)


def test_no_usable_snapshot_but_the_whole_log_replays_the_state(tmp_path):
    r = make_runner(tmp_path)
    r.start()
    try:
        wait_until(lambda: r.is_leader, 10)
        assert propose_and_wait(r, b"kept")["ok"]
    finally:
        r.stop()
    store = SnapshotStore(tmp_path / "p1" / "snapshots")
    store.save(SnapshotMeta(1, 1, Configuration.of((0,), {0: 1})), b"not a state")
    r = make_runner(tmp_path)
    r.start()
    try:
        wait_until(lambda: r.is_leader, 10)
        assert r.read_records(1, 10, 1 << 20) == [(1, b"kept")]
    finally:
        r.stop()


def test_check_snapshot_refuses_what_restore_cannot_use():
    good = _snapshot_of({"k": b"v"}, 7)
    check_snapshot(good, 7)
    bad = [
        b"",
        b"\xc1",
        msgpack.packb([1, 2]),
        msgpack.packb({"v": 99, "applied": 7, "last_position": 0, "kv": {}}),
        msgpack.packb({"v": 2, "applied": -1, "last_position": 0, "kv": {}}),
        msgpack.packb({"v": 2, "applied": 7, "last_position": "x", "kv": {}}),
        msgpack.packb({"v": 2, "applied": 7, "last_position": 0, "kv": [1]}),
    ]
    for data in bad:
        with pytest.raises(ValueError):
            check_snapshot(data)
    with pytest.raises(ValueError, match="not 8"):
        check_snapshot(good, 8)
    state = PartitionState(1)
    state.apply(1, sm.encode(sm.PUT, "a", b"1"))
    with pytest.raises(ValueError):
        state.restore(bad[-1])
    assert state.kv == {"a": b"1"} and state.applied_index == 1  # unchanged


# --- snapshots from peers ---------------------------------------------------------------


def _install(r: PartitionRunner, meta: SnapshotMeta, data: bytes, chunk: int | None = None):
    chunk = chunk or max(1, len(data))
    offset = 0
    while True:
        part = data[offset : offset + chunk]
        done = offset + len(part) >= len(data)
        r.deliver(InstallSnapshot(1, 1, 0, meta, offset, part, done))
        r.run_once(block=False)
        offset += len(part)
        if done:
            return


@pytest.mark.parametrize("chunk", [None, 7])
def test_a_forged_snapshot_from_a_peer_changes_nothing(tmp_path, caplog, chunk):
    r = make_runner(tmp_path, voters=(0, 1))
    snaps = tmp_path / "p1" / "snapshots"
    try:
        forged = msgpack.packb({"v": 2, "applied": 50, "last_position": 3, "kv": "junk"})
        with caplog.at_level(logging.WARNING):
            _install(r, SnapshotMeta(50, 1, PEERS), forged, chunk)
        assert "refused snapshot 50/1" in caplog.text
        assert "from broker 1" in caplog.text
        assert os.listdir(snaps) == []
        assert r.node.log.snapshot_index == 0 and r.node.commit == 0
        assert r.state.applied_index == 0 and r.state.kv == {}
        assert r.failure is None
        # a snapshot claiming another index than the state it holds is refused too
        _install(r, SnapshotMeta(60, 1, PEERS), _snapshot_of({"k": b"v"}, 59), chunk)
        assert os.listdir(snaps) == [] and r.node.log.snapshot_index == 0

        # the real one is installed
        _install(r, SnapshotMeta(60, 1, PEERS), _snapshot_of({"k": b"v"}, 60), chunk)
        assert r.node.log.snapshot_index == 60
        assert r.state.kv == {"k": b"v"} and r.state.applied_index == 60
        assert len(os.listdir(snaps)) == 1
    finally:
        r.stop()


# --- file descriptors run out --------------------------------------------------------------


@contextlib.contextmanager
def few_fds(limit: int = 256):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, soft), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def exhaust_fds() -> list[int]:
    gc.collect()  # files nobody holds any more are closed now, not while we wait
    held = []
    try:
        while True:
            held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as exc:
        assert exc.errno == errno.EMFILE
    return held


@pytest.mark.parametrize(
    "where",
    [
        {"segment_size": 1024},  # a new journal segment
        {"snapshot_entries": 1, "segment_size": 1 << 20},  # a snapshot file
    ],
    ids=["segment", "snapshot"],
)
def test_running_out_of_fds_never_ends_the_partition_thread(tmp_path, where):
    r = make_runner(tmp_path, **where)
    r.start()
    held: list[int] = []
    try:
        wait_until(lambda: r.is_leader, 10)
        assert propose_and_wait(r, b"before")["ok"]
        with few_fds():
            held = exhaust_fds()

            def failed() -> bool:
                held.extend(exhaust_fds())  # whatever another thread closed meanwhile
                return r.failure is not None

            for i in range(50):  # 600 bytes each: soon a new segment or a snapshot file
                result = propose_and_wait(r, b"%d" % i * 300)
                assert result["ok"] or result["code"] in ("UNAVAILABLE", "RESOURCE_EXHAUSTED")
                with contextlib.suppress(AssertionError):  # a snapshot: on the next tick
                    wait_until(failed, 0.2 if "snapshot_entries" in where else 0)
                if r.failure is not None:
                    break
            assert r.failure is not None, "no write ever needed a new file"
            assert "Too many open files" in r.failure
            held += exhaust_fds()  # the descriptors the stopped partition closed
            assert r._thread.is_alive()
            assert r.status["health"] == "unhealthy"
            refused = propose_and_wait(r, b"while out of fds")
            assert refused["code"] == "RESOURCE_EXHAUSTED", refused
            assert "Too many open files" in refused["message"]
            assert r.refusal(write=True)["code"] == "RESOURCE_EXHAUSTED"
            for fd in held:
                os.close(fd)
            held = []
        wait_until(lambda: r.failure is None and r.is_leader, 15)
        assert r._thread.is_alive()
        assert propose_and_wait(r, b"after")["ok"]
        records = [rec for _, rec in r.read_records(1, 1000, 1 << 30)]
        assert records[0] == b"before" and records[-1] == b"after"
    finally:
        for fd in held:
            os.close(fd)
        r.stop()
