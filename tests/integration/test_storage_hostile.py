"""Hostile storage with real broker processes on loopback (issue 12).

- under umask 0o022 every directory the broker creates in its data directory is 0700
  and every file 0600;
- a damaged ``meta`` file (54 bytes of junk) or a snapshot whose file is damaged while
  the journal no longer holds the log: ``broker run`` exits 2 (EXIT_STORAGE, the
  code systemd does not restart) naming the file and the repair, with no traceback;
- a forged InstallSnapshot sent by a peer over the internal port is refused and
  logged with the sender; snapshots, records and leadership stay as they were;
- a broker wiped with ``broker wipe-data`` and restarted does not report its
  partition healthy while no leader is known, nor before it has caught up.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import stat
import subprocess
import sys

from broker.daemon import EXIT_STORAGE
from broker.demo.localcluster import LocalCluster, wait_for
from broker.raft.messages import Configuration, InstallSnapshot, SnapshotMeta
from broker.transport import Transport
from tests.integration.test_cluster import FAST, write

SNAPSHOTTING = {**FAST, "data": {"snapshotEntries": 5, "logSegmentSize": "64KB"}}


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def single(tmp_path, **kw) -> LocalCluster:
    return LocalCluster(
        str(tmp_path / "c"), size=1, replication_factor=1, overrides=SNAPSHOTTING, **kw
    )


def partition_status(c: LocalCluster, node: int, pid: int = 1) -> dict:
    doc = c.get_json(node, "/actuator/partitions") or {}
    return doc.get(str(pid)) or {}


def snapshots_of(c: LocalCluster, node: int, pid: int = 1) -> list[str]:
    d = os.path.join(c.data_dir(node), "partitions", str(pid), "snapshots")
    return sorted(n for n in os.listdir(d) if n.endswith(".snap")) if os.path.isdir(d) else []


def run_broker(c: LocalCluster, node: int, timeout: float = 20) -> subprocess.CompletedProcess:
    """``broker run`` in the foreground, as systemd starts it; returns when it exits."""
    return subprocess.run(
        [sys.executable, "-m", "broker", "run", "--config", c.config_path(node)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_everything_in_the_data_directory_is_private_whatever_the_umask(tmp_path):
    with umask(0o022), single(tmp_path) as c:
        c.start()
        client = c.client()
        for i in range(12):  # one entry each: a snapshot every 5
            client.append(f"m-{i}", 1)
        client.put("k", "v")
        wait_for(lambda: snapshots_of(c, 0), 15, "a snapshot")
        c.stop(0)
        data = c.data_dir(0)
        checked, loose = 0, []
        for root, dirs, files in os.walk(data):
            for name in dirs:
                path = os.path.join(root, name)
                mode = stat.S_IMODE(os.stat(path).st_mode)
                checked += 1
                if mode != 0o700:
                    loose.append(f"{path}: {mode:o}")
            for name in files:
                path = os.path.join(root, name)
                mode = stat.S_IMODE(os.stat(path).st_mode)
                checked += 1
                if mode != 0o600:
                    loose.append(f"{path}: {mode:o}")
        assert not loose, loose
        assert stat.S_IMODE(os.stat(data).st_mode) == 0o700  # the data directory itself
        # the partition, its journal (segments), snapshots and meta were all looked at
        part = os.path.join(data, "partitions", "1")
        for sub in ("journal", "snapshots", "meta"):
            assert os.path.exists(os.path.join(part, sub)), sub
        assert any(n.endswith(".seg") for n in os.listdir(os.path.join(part, "journal")))
        assert checked >= 6


def _assert_storage_exit(proc: subprocess.CompletedProcess, path: str) -> None:
    assert proc.returncode == EXIT_STORAGE == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"damaged data in {path}" in proc.stderr, proc.stderr[-3000:]
    part = os.path.dirname(path) if os.path.basename(path) == "meta" else None
    assert "to repair: stop the broker and remove" in proc.stderr, proc.stderr[-3000:]
    if part is not None:
        assert f"remove {part} " in proc.stderr
    assert "broker wipe-data" in proc.stderr


def test_a_corrupt_meta_file_exits_2_naming_the_file_and_the_repair(tmp_path):
    with single(tmp_path) as c:
        c.start()
        assert write(c.client(), 3, "a")
        c.stop(0)
        meta = os.path.join(c.data_dir(0), "partitions", "1", "meta")
        with open(meta, "r+b") as f:  # the incident: 54 bytes, not an envelope of ours
            f.write(b"\x07" * 54)
            f.truncate(54)
        before = pathlib.Path(meta).read_bytes()
        proc = run_broker(c, 0)
        _assert_storage_exit(proc, meta)
        assert pathlib.Path(meta).read_bytes() == before  # nothing was "repaired" behind our back


def test_a_damaged_snapshot_with_a_compacted_journal_exits_2(tmp_path):
    with single(tmp_path) as c:
        c.start()
        client = c.client()
        # enough 64 KB segments for compaction to delete the first one
        payload = "x" * 4000
        for i in range(60):
            client.append(f"{i}-{payload}", 1)
        journal = os.path.join(c.data_dir(0), "partitions", "1", "journal")
        wait_for(lambda: "00000000000000000001.seg" not in os.listdir(journal), 20, "compaction")
        c.stop(0)
        snaps = os.path.join(c.data_dir(0), "partitions", "1", "snapshots")
        names = snapshots_of(c, 0)
        assert names
        for name in names:  # flip one byte in each: the checksum no longer matches
            path = os.path.join(snaps, name)
            blob = bytearray(pathlib.Path(path).read_bytes())
            blob[-1] ^= 0xFF
            pathlib.Path(path).write_bytes(bytes(blob))
        segments_before = sorted(os.listdir(journal))
        proc = run_broker(c, 0)
        _assert_storage_exit(proc, os.path.join(snaps, names[-1]))
        assert "checksum mismatch" in proc.stderr
        assert sorted(os.listdir(journal)) == segments_before  # the journal was not reset


def test_a_forged_snapshot_from_a_peer_is_refused_by_a_real_broker(tmp_path):
    with single(tmp_path) as c:
        c.start()
        client = c.client()
        for i in range(12):
            client.append(f"r-{i}", 1)

        def settled() -> bool:
            """Every entry applied and the last snapshot taken (one every 5 entries): no
            snapshot of its own can come after ``before`` and be mistaken for the forged one."""
            st = partition_status(c, 0)
            return bool(
                st.get("snapshotId")
                and st["processedIndex"] == st["commitIndex"]
                and st["processedIndex"] - int(st["snapshotId"]) < 5
            )

        wait_for(settled, 15, "the last snapshot")
        before = partition_status(c, 0)
        snaps = snapshots_of(c, 0)
        rogue = Transport(7, c.cluster_name, "127.0.0.1", 0, on_raft=lambda src, items: None)
        rogue.start()
        try:
            rogue.set_peer(0, "127.0.0.1", c.ports[0]["internal"])
            term = before["term"] + 5
            meta = SnapshotMeta(10_000, term, Configuration.of((0, 7), {0: 1, 7: 1}))
            garbage = b"\x93garbage that is no partition state" * 10
            assert rogue.send_raft(0, 1, InstallSnapshot(term, 7, 0, meta, 0, garbage, True))
            wait_for(
                lambda: "refused snapshot 10000/" in c.log_tail(0, 200),
                15,
                "the refusal in the log",
            )
        finally:
            rogue.stop()
        line = next(x for x in c.log_tail(0, 200).splitlines() if "refused snapshot" in x)
        assert "from broker 7" in line, line
        assert f"keeping snapshot {before['snapshotId']}" in line, line
        after = partition_status(c, 0)
        assert after["role"] == "LEADER" and after["term"] == before["term"], after
        assert after["snapshotId"] == before["snapshotId"]
        assert snapshots_of(c, 0) == snaps
        assert client.append("after", 1).position == 13
        assert [r for _, r in client.read(1, 1, 100).records][-1] == b"after"
        assert "Traceback" not in c.log_tail(0, 400)


def test_a_wiped_broker_is_not_healthy_until_it_has_caught_up(tmp_path):
    with LocalCluster(str(tmp_path / "c"), size=3, overrides=FAST) as c:
        c.start()
        c.wait_leaders()
        client = c.client()
        acked = write(client, 300, "w")
        assert len(acked) == 300
        leader = c.wait_leaders()[1]
        wiped = next(i for i in (1, 2) if i != leader)  # not broker 0, which starts clusters
        others = [i for i in range(3) if i != wiped]
        commit = partition_status(c, leader)["commitIndex"]
        assert commit > 0
        c.stop(wiped)
        out = subprocess.run(
            [sys.executable, "-m", "broker", "wipe-data", "--config", c.config_path(wiped)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        # Alone (the others stopped), the wiped broker has not even the cluster's
        # configuration (no topology on disk, and only broker 0 starts a new
        # cluster): it hosts nothing and must not claim to be ready.
        for i in others:
            c.stop(i)
        c.start([wiped])
        alone = c.get_json(wiped, "/actuator/health/readiness")
        assert alone["status"] == "DOWN" and alone["details"]["partitions"] == [], alone
        assert "waiting for the cluster configuration" in alone["details"]["configuration"]
        assert partition_status(c, wiped) == {}

        # Peers back: whenever it says healthy, it has applied what was committed.
        c.start(others, wait=False)
        seen_unhealthy = []

        def caught_up():
            s = partition_status(c, wiped)
            if s.get("health") == "healthy":
                assert s["processedIndex"] >= commit, s
                return s
            if s:
                seen_unhealthy.append(s)
            return None

        st = wait_for(caught_up, 30, "the wiped broker to catch up")
        assert st["leader"] is not None
        reasons = {s.get("unhealthyReason", "")[:40] for s in seen_unhealthy}
        assert all(r.startswith("partition 1") for r in reasons), reasons
