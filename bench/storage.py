"""Storage: memory and disk while a partition takes gigabytes, restart and catch-up time.

3 brokers, RF 3, one partition, no exporter, real processes on loopback. The
client writes ``BENCH_STORAGE_MB`` (default 2048) MB of 16 KiB records, keeping
a window of requests in flight. Measured: each broker's RSS idle and after the
writes, the data directories (compaction keeps them bounded), a kill -9 and
restart of a follower to "ready", and a wiped follower's catch-up (snapshot, then
the retained log) in MB/s of distinct log, beside the disk's own sequential write
rate with fdatasync, measured in the same run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
import urllib.request

from broker.client import BrokerClient
from broker.demo.localcluster import LocalCluster, wait_for

ROOT = os.path.join("var", "bench-tmp")
RECORD = 16 * 1024
WINDOW = 64  # appends in flight
MB = 1024 * 1024

TITLE = "Storage: 3 brokers RF 3, one partition, 16 KiB records"
COLUMNS = [
    ("case", "measured", "{}"),
    ("value", "value", "{}"),
]


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _du_mb(path: str) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(root, name))
    return total / MB


def _disk_rate(root: str, total_mb: int = 256, chunk_mb: int = 4) -> float:
    """Sequential writes of ``chunk_mb`` with an fdatasync each: MB/s."""
    path = os.path.join(root, "disk-rate")
    buf = os.urandom(chunk_mb * MB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        t0 = time.perf_counter()
        for _ in range(total_mb // chunk_mb):
            os.write(fd, buf)
            os.fdatasync(fd)
        return total_mb / (time.perf_counter() - t0)
    finally:
        os.close(fd)
        os.unlink(path)


def _write(client: BrokerClient, total_mb: int) -> tuple[int, float]:
    payload = os.urandom(RECORD // 2).hex().encode()  # 16 KiB, not compressible
    count = total_mb * MB // RECORD
    t0 = time.perf_counter()
    window = []
    for _ in range(count):
        window.append(client.append_async(payload, 1))
        if len(window) >= WINDOW:
            window.pop(0).result()
    for fut in window:
        fut.result()
    return count, time.perf_counter() - t0


def _partition(c: LocalCluster, i: int) -> dict:
    return (c.get_json(i, "/actuator/partitions") or {}).get("1", {})


def run() -> list[dict]:
    total_mb = int(os.environ.get("BENCH_STORAGE_MB", "2048"))
    base = os.path.abspath(os.path.join(ROOT, f"storage-{os.getpid()}"))
    os.makedirs(base, exist_ok=True)
    rows = []
    try:
        disk = _disk_rate(base)
        with LocalCluster(base, size=3, partitions=1, replication_factor=3) as c:
            c.start()
            leader = c.wait_leaders()[1]
            follower = next(i for i in range(3) if i != leader)
            idle = {i: _rss_mb(c.procs[i].pid) for i in range(3)}
            with BrokerClient(c.gateways([leader]), timeout=30) as client:
                count, seconds = _write(client, total_mb)
            last = count
            wait_for(
                lambda: all(_partition(c, i).get("processedPosition") == last for i in range(3)),
                120,
                "every replica to apply the writes",
            )
            after = {i: _rss_mb(c.procs[i].pid) for i in range(3)}
            data = {i: _du_mb(c.data_dir(i)) for i in range(3)}
            rows += [
                {"case": "written", "value": f"{count * RECORD / MB:,.0f} MB in {count:,} records"},
                {"case": "write throughput", "value": f"{count * RECORD / MB / seconds:,.1f} MB/s"},
                {
                    "case": "RSS idle -> after, per broker",
                    "value": ", ".join(f"{idle[i]:.0f}->{after[i]:.0f} MB" for i in range(3)),
                },
                {
                    "case": "RSS growth, largest",
                    "value": f"{max(after[i] - idle[i] for i in range(3)):.0f} MB",
                },
                {
                    "case": "data directory per broker",
                    "value": ", ".join(f"{data[i]:,.0f} MB" for i in range(3)),
                },
            ]

            # kill -9 and restart of a follower: time to ready
            c.kill(follower)
            t0 = time.perf_counter()
            c.start([follower], wait=False)
            wait_for(lambda: c.health(follower) == "UP", 60, "the restarted broker to be ready")
            ready = time.perf_counter() - t0
            wait_for(
                lambda: _partition(c, follower).get("processedPosition") == last,
                60,
                "the restarted broker to apply the log again",
            )
            applied = time.perf_counter() - t0
            rows.append(
                {
                    "case": "restart to ready (kill -9)",
                    "value": f"{ready:.2f} s (every record applied again: {applied:.2f} s)",
                }
            )

            # a wiped follower: snapshot (state only), then the retained log
            c.kill(follower)
            shutil.rmtree(c.data_dir(follower))
            retained = _du_mb(os.path.join(c.data_dir(leader), "partitions", "1", "journal"))
            t0 = time.perf_counter()
            c.start([follower], wait=False)
            wait_for(
                lambda: _partition(c, follower).get("processedPosition") == last,
                300,
                "the wiped follower to catch up",
            )
            took = time.perf_counter() - t0
            rows += [
                {
                    "case": "wiped follower catch-up, compacted (snapshot + retained log)",
                    "value": f"{retained:,.0f} MB of log in {took:.2f} s "
                    f"= {retained / took:,.1f} MB/s (from start, incl. process start)",
                },
                {"case": "disk sequential write + fdatasync", "value": f"{disk:,.1f} MB/s"},
            ]
        rows += _catch_up(
            os.path.join(base, "held"), int(os.environ.get("BENCH_CATCHUP_MB", "1024"))
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return rows


def _catch_up(root: str, total_mb: int) -> list[dict]:
    """A file exporter paused: nothing is compacted, so a wiped follower must receive
    the whole log (distinct entries, streamed from the leader's journal)."""
    export = os.path.join(root, "export")
    overrides = {"exporters": {"region0": {"type": "file", "args": {"path": export}}}}
    with LocalCluster(root, size=3, partitions=1, replication_factor=3, overrides=overrides) as c:
        c.start()
        leader = c.wait_leaders()[1]
        follower = next(i for i in range(3) if i != leader)
        _post(c.management(leader) + "/actuator/exporting/pause")
        idle = _rss_mb(c.procs[leader].pid)
        with BrokerClient(c.gateways([leader]), timeout=30) as client:
            count, _ = _write(client, total_mb)
        wait_for(
            lambda: all(_partition(c, i).get("processedPosition") == count for i in range(3)),
            120,
            "every replica to apply the writes",
        )
        held = _rss_mb(c.procs[leader].pid)
        journal = os.path.join(c.data_dir(leader), "partitions", "1", "journal")
        log_mb = _du_mb(journal)
        with BrokerClient(c.gateways([leader]), timeout=30) as client:
            before = _probe(client, lambda: False, seconds=2.0)
            c.kill(follower)
            shutil.rmtree(c.data_dir(follower))
            c.start([follower])  # to "started": the process is up before the clock starts
            t0 = time.perf_counter()
            caught_up = threading.Event()
            during: list[float] = []
            prober = threading.Thread(
                target=lambda: during.extend(_probe(client, caught_up.is_set, seconds=600))
            )
            prober.start()
            try:
                wait_for(
                    lambda: (_partition(c, follower).get("processedPosition") or 0) >= count,
                    600,
                    "the wiped follower to catch up",
                    interval=0.02,
                )
            finally:
                took = time.perf_counter() - t0
                caught_up.set()
                prober.join()
        return [
            {
                "case": "exporter paused: log kept, leader RSS idle -> after",
                "value": f"{log_mb:,.0f} MB of log; {idle:.0f}->{held:.0f} MB",
            },
            {
                "case": "wiped follower catch-up, whole log",
                "value": f"{log_mb:,.0f} MB in {took:.2f} s = {log_mb / took:,.1f} MB/s",
            },
            {
                "case": "append latency before -> during that catch-up",
                "value": f"median {_ms(before, 50)} -> {_ms(during, 50)}, "
                f"p99 {_ms(before, 99)} -> {_ms(during, 99)} ({len(during)} appends during)",
            },
        ]


def _probe(client: BrokerClient, stop, seconds: float) -> list[float]:
    """One small append at a time until ``stop()`` or ``seconds``: the latencies."""
    out, end = [], time.perf_counter() + seconds
    while not stop() and time.perf_counter() < end:
        t = time.perf_counter()
        client.append(b"probe", 1)
        out.append(time.perf_counter() - t)
    return out


def _ms(values: list[float], pct: int) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, len(ordered) * pct // 100)] * 1000:.1f} ms"


def _post(url: str) -> None:
    req = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=10):
        pass


def summary(rows: list[dict]) -> list[str]:
    return [
        f"{r['case']}: {r['value']}" for r in rows if "growth" in r["case"] or "ready" in r["case"]
    ]
