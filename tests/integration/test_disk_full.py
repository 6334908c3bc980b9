"""A broker whose disk fills up: real broker processes, each data directory on its own
20 MB tmpfs, filled by a filler file as another process on the host would.

- the leader below data.freeSpace.processing refuses writes with RESOURCE_EXHAUSTED
  (naming the free space and the threshold) before the disk is full, serves reads,
  stays up with its memory bounded, and takes writes again by itself once space returns;
- a follower below data.freeSpace.replication persists nothing, reports unhealthy, and
  catches up by itself once space returns;
- with both thresholds at 0, the disk really fills (ENOSPC in the journal): the partition
  thread survives, reports unhealthy, another broker leads, and once space returns the
  partition rebuilds itself from disk and catches up, without a broker restart.

Every acknowledged record and key is read back at the end. Needs root (mount); skips,
saying why, without it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time

import pytest

from broker.client import BrokerClient, BrokerError, ResourceExhausted
from broker.demo.localcluster import LocalCluster, wait_for
from tests.integration.test_cluster import FAST, assert_all_readable

MB = 1024 * 1024
TMPFS_SIZE = 20 * MB
PROCESSING = 8 * MB  # data.freeSpace.processing in the first two tests
REPLICATION = 4 * MB  # data.freeSpace.replication
RSS_LIMIT = 400 * MB  # a broker idles at well under 100 MB; the 13 GB of the bug is far off


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to mount a tmpfs (run as root to test the disk-full path)"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


def free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@contextlib.contextmanager
def tmpfs(path: str, size: int):
    os.makedirs(path, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", path],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        reason = f"cannot mount a tmpfs on {path}: {result.stderr.strip()}"
        print(reason)
        pytest.skip(reason)
    try:
        yield path
    finally:
        if subprocess.run(["umount", path], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", path], capture_output=True)


def fill(directory: str, leave: int = 0) -> str:
    """Write a filler file until ``leave`` bytes are free (0: until ENOSPC)."""
    path = os.path.join(directory, "filler")
    size = MB
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        while True:
            room = free_bytes(directory) - leave
            if leave and room <= 0:
                break
            try:
                os.write(fd, b"\0" * (size if not leave else min(size, room)))
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if size <= 4096:
                    break
                size //= 2  # top it up in smaller pieces
    finally:
        os.close(fd)
    return path


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def partition(c: LocalCluster, node: int) -> dict:
    doc = c.get_json(node, "/actuator/partitions") or {}
    return doc.get("1") or {}


def write_some(client: BrokerClient, prefix: str, n: int, acked: dict, kv: dict) -> None:
    """Appends and puts; only acknowledged ones are remembered."""
    for i in range(n):
        rec = f"{prefix}-{i}"
        try:
            p = client.append(rec, 1)
        except BrokerError:
            continue
        acked[rec] = (p.partition, p.position)
        try:
            client.put(f"k-{rec}", rec)
        except BrokerError:
            continue
        kv[f"k-{rec}"] = rec.encode()


def assert_everything_readable(client: BrokerClient, acked: dict, kv: dict) -> None:
    assert_all_readable(client, acked)
    lost = [k for k, v in kv.items() if client.get(k) != v]
    assert not lost, f"{len(lost)} acknowledged keys lost, e.g. {lost[:5]}"


class Watch:
    """Samples a broker's RSS and liveness while a test waits on something else."""

    def __init__(self, c: LocalCluster, node: int):
        self.c, self.node, self.pid = c, node, c.procs[node].pid
        self.max_rss = 0

    def __call__(self) -> None:
        assert self.c.procs[self.node].poll() is None, self.c.log_tail(self.node)
        self.max_rss = max(self.max_rss, rss(self.pid))
        assert self.max_rss < RSS_LIMIT, f"broker {self.node} RSS {self.max_rss >> 20} MB"


def until(predicate, timeout: float, what: str, watch: Watch | None = None):
    def check():
        if watch is not None:
            watch()
        return predicate()

    return wait_for(check, timeout, what, interval=0.1)


@pytest.fixture
def cluster_on_tmpfs(tmp_path):
    started: list[LocalCluster] = []

    @contextlib.contextmanager
    def make(processing: int, replication: int):
        overrides = {
            **FAST,
            "data": {
                "freeSpace": {"processing": processing, "replication": replication},
                "logSegmentSize": "1MB",
            },
        }
        c = LocalCluster(
            str(tmp_path / "c"), size=3, partitions=1, replication_factor=3, overrides=overrides
        )
        with contextlib.ExitStack() as mounts:
            for i in range(3):
                mounts.enter_context(tmpfs(c.data_dir(i), TMPFS_SIZE))
            started.append(c)
            try:
                c.start()
                yield c
            finally:
                c.stop_all()

    yield make
    for c in started:
        c.stop_all()


def test_a_leader_low_on_disk_refuses_writes_then_resumes_by_itself(cluster_on_tmpfs):
    with cluster_on_tmpfs(PROCESSING, REPLICATION) as c:
        leader = c.wait_leaders()[1]
        watch = Watch(c, leader)
        acked, kv = {}, {}
        with BrokerClient(c.gateways(), timeout=10) as client:
            write_some(client, "before", 50, acked, kv)
            assert len(acked) == 50 and len(kv) == 50
            data = c.data_dir(leader)
            filler = fill(data, leave=PROCESSING - 2 * MB)  # 6 MB free: 8 > 6 > 4
            until(
                lambda: (
                    (c.get_json(leader, "/actuator/health") or {})
                    .get("details", {})
                    .get("diskSpace", {})
                    .get("processing")
                    == "paused"
                ),
                10,
                "the leader to see its disk below data.freeSpace.processing",
                watch,
            )
            for op in (lambda: client.append("refused", 1), lambda: client.put("k", "v")):
                with pytest.raises(ResourceExhausted) as info:
                    op()
                assert "below data.freeSpace.processing (8MB)" in info.value.message
                assert " free" in info.value.message and "bytes" in info.value.message
            assert free_bytes(data) > REPLICATION  # refused long before the disk is full
            # Reads go on.
            assert client.read(1, 1, 10).records[0] == (1, b"before-0")
            assert client.get("k-before-7") == b"before-7"
            assert c.health(leader, "liveness") == "UP"
            watch()
            os.unlink(filler)
            until(lambda: _writable(client), 20, "writes to resume by themselves", watch)
            write_some(client, "after", 20, acked, kv)
            assert len(acked) == 70
            assert_everything_readable(client, acked, kv)
        assert c.leaders()[1] == leader  # the same leader throughout: no restart, no failover
        print(f"leader low on disk: max RSS {watch.max_rss >> 20} MB")


def _writable(client: BrokerClient) -> bool:
    try:
        client.append("probe", 1)
        return True
    except BrokerError:
        return False


def test_a_follower_low_on_disk_refuses_appends_reports_unhealthy_and_recovers(
    cluster_on_tmpfs,
):
    with cluster_on_tmpfs(PROCESSING, REPLICATION) as c:
        leader = c.wait_leaders()[1]
        follower = next(i for i in range(3) if i != leader)
        watch = Watch(c, follower)
        acked, kv = {}, {}
        with BrokerClient(c.gateways(), timeout=10) as client:
            write_some(client, "before", 20, acked, kv)
            filler = fill(c.data_dir(follower), leave=REPLICATION - 2 * MB)  # 2 MB free
            until(
                lambda: partition(c, follower).get("health") == "unhealthy",
                10,
                "the follower to report its partition unhealthy",
                watch,
            )
            assert "data.freeSpace.replication" in partition(c, follower)["unhealthyReason"]
            stuck = partition(c, follower)["processedIndex"]
            doc = c.get_json(follower, "/actuator/health")
            assert doc["status"] == "DOWN" and "1" in doc["details"]["unhealthy"]
            # The other two replicas carry on; the follower persists nothing.
            write_some(client, "during", 50, acked, kv)
            assert len(acked) == 70
            watch()
            leader_index = partition(c, leader)["processedIndex"]
            assert leader_index > stuck
            assert partition(c, follower)["processedIndex"] == stuck
            assert partition(c, follower)["health"] == "unhealthy"
            os.unlink(filler)
            until(
                lambda: (
                    partition(c, follower).get("health") == "healthy"
                    and partition(c, follower)["processedIndex"] >= leader_index
                ),
                20,
                "the follower to catch up by itself",
                watch,
            )
            assert c.health(follower, "status") == "UP"
            assert_everything_readable(client, acked, kv)
        print(f"follower low on disk: max RSS {watch.max_rss >> 20} MB")


def test_enospc_never_kills_the_partition_it_rebuilds_from_disk_when_space_returns(
    cluster_on_tmpfs,
):
    with cluster_on_tmpfs(0, 0) as c:  # no thresholds: the disk really fills up
        old = c.wait_leaders()[1]
        watch = Watch(c, old)
        acked, kv = {}, {}
        with BrokerClient(c.gateways(), timeout=5) as client:
            write_some(client, "before", 20, acked, kv)
            filler = fill(c.data_dir(old))
            assert free_bytes(c.data_dir(old)) < 64 * 1024
            # Writes hit ENOSPC in the leader's journal; they are answered (never
            # acknowledged), and another broker takes over.
            deadline = time.monotonic() + 30
            while partition(c, old).get("health") != "unhealthy":
                assert time.monotonic() < deadline, c.log_tail(old)
                write_some(client, "full", 5, acked, kv)
                watch()
            reason = partition(c, old)["unhealthyReason"]
            assert "No space left on device" in reason, reason
            assert partition(c, old)["role"] == "INACTIVE"
            new = c.wait_leaders(exclude=[old])[1]
            write_some(client, "during", 30, acked, kv)
            assert sum(1 for r in acked if r.startswith("during")) == 30
            watch()
            assert c.get_json(old, "/actuator/health/liveness")["status"] == "UP"
            target = partition(c, new)["processedIndex"]
            os.unlink(filler)
            until(
                lambda: (
                    partition(c, old).get("health") == "healthy"
                    and partition(c, old)["processedIndex"] >= target
                ),
                30,
                "the stopped partition to rebuild itself from disk and catch up",
                watch,
            )
            assert partition(c, old)["restarts"] >= 1
            assert c.procs[old].poll() is None  # the same process: no broker restart
            write_some(client, "after", 10, acked, kv)
            assert_everything_readable(client, acked, kv)
        with open(os.path.join(c.root, f"broker-{old}.log")) as f:
            assert "restarted from disk" in f.read()
        print(f"ENOSPC: max RSS {watch.max_rss >> 20} MB, {len(acked)} records acknowledged")
