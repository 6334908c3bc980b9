"""Cluster benchmarks with real broker processes, beside PySyncObj in the same run.

* durable commits/s: 3 brokers, RF 3, 1 partition, 100 B records, fsync on,
  a pipelined load process (``brokerctl bench``) against the leader's gateway,
  putting the records due for the partition in one request (up to ``BATCH``),
  and the same with one record per request;
* PySyncObj: 3 nodes, file journal (no fsync), with its default append period
  and tuned to 5 ms (see bench/pysyncobj_peer.py for how it is driven);
* commit latency p50/p99 at half of the measured maximum (paced load);
* the same 3 brokers with TLS on every channel (mutual TLS between brokers,
  the load process presenting a client certificate);
* the dual-region layout: 8 brokers, 8 partitions, RF 4, one load process sending
  each partition's appends to its leader;
* leader kill -9 to the first acknowledged write, default timing, median of 5;
* the 3-broker case and tuned PySyncObj again with a CPU hog on one core (a busy
  loop, bench/hog.py): how much of its idle throughput each keeps.

Each row has an ``id``; rows that compare carry ``ratios`` ({name: value}), which
``python -m bench cluster --json`` prints with every other figure.

Throughputs are medians of rounds; everything runs on this machine, in one
invocation, so the ratios compare like with like.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from bench import pysyncobj_peer
from bench.hog import cpu_hog
from broker.client import BrokerClient, BrokerError
from broker.demo.localcluster import LocalCluster

ROUNDS = 3
DURATION = 5.0
# Records the load process keeps in flight per partition: the gateway's default cap
# (network.gateway.maxInflight), and the window PySyncObj's load keeps (see
# bench/pysyncobj_peer.py), so that both sides run with the same pipeline depth.
WINDOW = 1000
# Records per request at most: the load process puts the records due for a
# partition in one request (``brokerctl bench --batch``), never waiting to fill
# one, as a producer client batches. Each record is still committed, fsynced and
# answered with its own position. The "rf3_single" row sends one per request.
BATCH = 128
DUAL_REGION_WINDOW = 256  # per partition: 2,048 in flight over the 8 partitions
ROOT = os.path.join("var", "bench-tmp")

TITLE = "Cluster: durable commits with real processes (medians), PySyncObj beside it"
COLUMNS = [
    ("case", "case", "{}"),
    ("records_s", "records/s", "{:,.0f}"),
    ("p50_ms", "p50 ms", "{:.2f}"),
    ("p99_ms", "p99 ms", "{:.2f}"),
    ("note", "note", "{}"),
]


def _load_cmd(
    addresses: str,
    duration: float,
    inflight: int,
    partition=None,
    rate=None,
    tls=None,
    batch=BATCH,
):
    cmd = [sys.executable, "-m", "broker.cli", "--address", addresses]
    if tls:
        cmd += ["--tls-ca", tls["ca"], "--tls-cert", tls["cert"], "--tls-key", tls["key"]]
    cmd += ["bench", "--json"]
    cmd += ["--records", "100000000", "--size", "100", "--inflight", str(inflight)]
    cmd += ["--duration", str(duration)]
    if partition is not None:
        cmd += ["--partition", str(partition)]
    if rate is not None:
        cmd += ["--rate", str(rate)]
    cmd += ["--batch", str(batch)]
    return cmd


def _median_round(rounds: list[dict]) -> tuple[float, dict]:
    """The median records/s of ``rounds`` (an odd number) and the round that made it."""
    best = statistics.median(r["records_per_s"] for r in rounds)
    return best, rounds[[r["records_per_s"] for r in rounds].index(best)]


def _result(out: str, err: str) -> dict:
    if not out.strip():
        raise RuntimeError(f"load process failed: {err.strip()[-500:]}")
    return json.loads(out)


def _load(addresses: str, duration: float, inflight: int, **options) -> dict:
    """Run one load process (``_load_cmd``'s options) and return its report."""
    cmd = _load_cmd(addresses, duration, inflight, **options)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    return _result(out.stdout, out.stderr)


def _broker_rf3(root: str) -> tuple[list[dict], float]:
    rows = []
    with LocalCluster(os.path.join(root, "rf3"), size=3, partitions=1, replication_factor=3) as c:
        c.start()
        leader = c.wait_leaders()[1]
        _load(c.gateway(leader), 1.0, WINDOW, partition=1)  # warm-up
        cpu0 = _cpu_seconds(c.procs[leader].pid)
        rounds = [_load(c.gateway(leader), DURATION, WINDOW, partition=1) for _ in range(ROUNDS)]
        per_record = (_cpu_seconds(c.procs[leader].pid) - cpu0) / sum(
            r["committed"] for r in rounds
        )
        best, mid = _median_round(rounds)
        rows.append(
            {
                "id": "rf3",
                "case": "broker: 3 brokers, RF 3, 1 partition, fsync on",
                "records_s": best,
                "p50_ms": mid["p50_ms"],
                "p99_ms": mid["p99_ms"],
                "leader_cpu_us_per_record": per_record * 1e6,
                "note": f"{WINDOW} in flight, up to {BATCH} per request; leader "
                f"{per_record * 1e6:.1f} us of CPU per record; load process "
                f"{mid['client_cpu_share']:.0%} of a core; rounds "
                + ", ".join(f"{r['records_per_s']:,.0f}" for r in rounds),
            }
        )
        rows.append(_single(c, leader))
        half = _load(c.gateway(leader), DURATION, WINDOW, partition=1, rate=best / 2)
        rows.append(
            {
                "id": "rf3_half",
                "case": "broker: same, paced at half of that",
                "records_s": half["records_per_s"],
                "p50_ms": half["p50_ms"],
                "p99_ms": half["p99_ms"],
                "note": "target p99 < 25 ms",
            }
        )
        rows.append(_threads(c, leader))
        kill = _leader_kill_times(c, repeats=5)
        rows.append(
            {
                "id": "leader_kill",
                "case": "broker: leader kill -9 to first acknowledged write",
                "records_s": None,
                "p50_ms": statistics.median(kill) * 1000,
                "p99_ms": max(kill) * 1000,
                "note": f"median and max of {len(kill)} (s: "
                + ", ".join(f"{t:.2f}" for t in kill)
                + "); default timing",
            }
        )
    return rows, best


def _single(c: LocalCluster, leader: int) -> dict:
    """The same load with one record per request: what a client that does not batch
    gets (every record pays a request's decoding, routing and answer)."""
    cpu0 = _cpu_seconds(c.procs[leader].pid)
    rounds = [
        _load(c.gateway(leader), DURATION, WINDOW, partition=1, batch=1) for _ in range(ROUNDS)
    ]
    per_record = (_cpu_seconds(c.procs[leader].pid) - cpu0) / sum(r["committed"] for r in rounds)
    best, mid = _median_round(rounds)
    return {
        "id": "rf3_single",
        "case": "broker: same, one record per request",
        "records_s": best,
        "p50_ms": mid["p50_ms"],
        "p99_ms": mid["p99_ms"],
        "leader_cpu_us_per_record": per_record * 1e6,
        "note": f"{WINDOW} in flight; leader {per_record * 1e6:.1f} us of CPU per record; rounds "
        + ", ".join(f"{r['records_per_s']:,.0f}" for r in rounds),
    }


def _broker_rf3_tls(root: str, plain: float) -> list[dict]:
    with LocalCluster(
        os.path.join(root, "rf3-tls"), size=3, partitions=1, replication_factor=3, tls=True
    ) as c:
        c.start()
        leader = c.wait_leaders()[1]
        tls, gateway = c.tls_files, c.gateway(leader)
        _load(gateway, 1.0, WINDOW, partition=1, tls=tls)  # warm-up
        rounds = [_load(gateway, DURATION, WINDOW, partition=1, tls=tls) for _ in range(ROUNDS)]
        best, mid = _median_round(rounds)
        half = _load(gateway, DURATION, WINDOW, partition=1, rate=best / 2, tls=tls)
    return [
        {
            "id": "rf3_tls",
            "case": "broker: 3 brokers, RF 3, TLS on every channel",
            "records_s": best,
            "p50_ms": mid["p50_ms"],
            "p99_ms": mid["p99_ms"],
            "ratios": {"tls_vs_plain": best / plain},
            "note": f"TLS/plain = {best / plain:.2f}x (target >= 0.75x); rounds "
            + ", ".join(f"{r['records_per_s']:,.0f}" for r in rounds),
        },
        {
            "id": "rf3_tls_half",
            "case": "broker: TLS, paced at half of that",
            "records_s": half["records_per_s"],
            "p50_ms": half["p50_ms"],
            "p99_ms": half["p99_ms"],
            "note": "target p99 < 25 ms",
        },
    ]


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _threads(c: LocalCluster, leader: int, clients: int = 20) -> dict:
    """The leader's thread count, idle and with ``clients`` client connections open:
    the I/O model keeps it from growing with connections."""

    def count() -> int:
        return len(os.listdir(f"/proc/{c.procs[leader].pid}/task"))

    idle = count()
    opened = [BrokerClient(c.gateway(leader), route=False) for _ in range(clients)]
    try:
        for client in opened:
            client.append("thread-count", partition=1)  # connected and served
        busy = count()
    finally:
        for client in opened:
            client.close()
    return {
        "id": "threads",
        "case": "broker: threads of the leader",
        "records_s": None,
        "p50_ms": None,
        "p99_ms": None,
        "threads": {"idle": idle, f"with_{clients}_clients": busy},
        "note": f"{idle} idle, {busy} with {clients} client connections open",
    }


def _leader_kill_times(c: LocalCluster, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        leader = c.wait_leaders()[1]
        others = [i for i in range(c.size) if i != leader]
        with BrokerClient(c.gateways(others), timeout=15) as client:
            client.append("warm", partition=1)
            t0 = time.monotonic()
            c.kill(leader)
            while True:
                try:
                    client.append("probe", partition=1)
                    break
                except BrokerError:
                    if time.monotonic() - t0 > 30:
                        raise
            times.append(time.monotonic() - t0)
        c.start([leader])
    return times


def _dual_region(root: str) -> dict:
    """One load process routes every partition's appends to its leader (8 gateways)."""
    with LocalCluster(os.path.join(root, "dr"), size=8, partitions=8, replication_factor=4) as c:
        c.start()
        c.wait_leaders(timeout=60)
        gateways, window = c.gateways(), DUAL_REGION_WINDOW * 8
        _load(gateways, 1.0, window)  # warm-up
        rounds = [_load(gateways, DURATION, window) for _ in range(ROUNDS)]
    best, mid = _median_round(rounds)
    return {
        "id": "dual_region",
        "case": "broker: 8 brokers, 8 partitions, RF 4 (two regions)",
        "records_s": best,
        "p50_ms": mid["p50_ms"],
        "p99_ms": mid["p99_ms"],
        "note": f"1 load process ({mid['client_cpu_share']:.0%} of a core), {window} in "
        "flight; target >= 20,000; rounds "
        + ", ".join(f"{r['records_per_s']:,.0f}" for r in rounds),
    }


def _pysyncobj(period: float, label: str, id: str) -> dict:
    r = pysyncobj_peer.run(duration=DURATION, append_entries_period=period)
    return {
        "id": id,
        "case": f"PySyncObj: 3 nodes, file journal (no fsync), {label}",
        "records_s": r["commits_per_s"],
        "p50_ms": None,
        "p99_ms": None,
        "note": "rounds " + ", ".join(f"{x:,.0f}" for x in r["rounds"]),
    }


def run() -> list[dict]:
    root = os.path.join(ROOT, f"cluster-{os.getpid()}")
    os.makedirs(root, exist_ok=True)
    try:
        rows, ours = _broker_rf3(root)
        single = next(r["records_s"] for r in rows if r["id"] == "rf3_single")
        rows += _broker_rf3_tls(root, ours)
        default = _pysyncobj(0.1, "default appendEntriesPeriod 100 ms", "pysyncobj_default")
        tuned = _pysyncobj(0.005, "appendEntriesPeriod tuned to 5 ms", "pysyncobj_tuned")
        rows += [default, tuned]
        for row in (default, tuned):
            row["ratios"] = {
                "broker_vs_pysyncobj": ours / row["records_s"],
                "broker_single_vs_pysyncobj": single / row["records_s"],
            }
            row["note"] += (
                f"; broker/PySyncObj = {ours / row['records_s']:.2f}x"
                f" ({single / row['records_s']:.2f}x one record per request)"
            )
        rows.append(_dual_region(root))
        rows += _with_hog(root, ours, tuned["records_s"])
        return rows
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _with_hog(root: str, broker_idle: float, pysyncobj_idle: float) -> list[dict]:
    """The 3-broker case and tuned PySyncObj again, each while a busy loop holds one
    core; the share of its idle throughput each keeps (target: the broker >= 60%)."""
    with cpu_hog() as pid:
        with LocalCluster(
            os.path.join(root, "rf3-hog"), size=3, partitions=1, replication_factor=3
        ) as c:
            c.start()
            gateway = c.gateway(c.wait_leaders()[1])
            _load(gateway, 1.0, WINDOW, partition=1)  # warm-up
            rounds = [_load(gateway, DURATION, WINDOW, partition=1) for _ in range(ROUNDS)]
        pso = _pysyncobj(0.005, "tuned to 5 ms, with a CPU hog on one core", "pysyncobj_hog")
    best, mid = _median_round(rounds)
    kept, pso_kept = best / broker_idle, pso["records_s"] / pysyncobj_idle
    pso["ratios"] = {"kept_of_idle": pso_kept}
    pso["note"] += f"; keeps {pso_kept:.0%} of its idle throughput"
    return [
        {
            "id": "rf3_hog",
            "case": "broker: 3 brokers, RF 3, with a CPU hog on one core",
            "records_s": best,
            "p50_ms": mid["p50_ms"],
            "p99_ms": mid["p99_ms"],
            "ratios": {"kept_of_idle": kept},
            "note": f"keeps {kept:.0%} of its idle throughput (target >= 60%; busy loop pid "
            f"{pid}); rounds " + ", ".join(f"{r['records_per_s']:,.0f}" for r in rounds),
        },
        pso,
    ]


# The keys of ``python -m bench cluster --json`` that DESIGN section 5 names -> row ids
FIGURES = {
    "broker3": "rf3",
    "broker3_single": "rf3_single",
    "broker3_half": "rf3_half",
    "broker3_tls": "rf3_tls",
    "broker3_tls_half": "rf3_tls_half",
    "broker3_hog": "rf3_hog",
    "pysyncobj_default": "pysyncobj_default",
    "pysyncobj_tuned": "pysyncobj_tuned",
    "pysyncobj_tuned_hog": "pysyncobj_hog",
    "broker8_rf4": "dual_region",
}


def figures(rows: list[dict]) -> dict:
    """The rows as the named figures: ``{records_per_s, p50_ms, p99_ms, ...ratios}``
    each, ``leader_kill_s`` ``{median, max}`` and the leader's ``threads``."""
    by_id = {r["id"]: r for r in rows}
    out: dict = {}
    for key, row_id in FIGURES.items():
        row = by_id.get(row_id)
        if row is None:
            continue
        figure = {"records_per_s": row["records_s"]}
        figure.update({k: row[k] for k in ("p50_ms", "p99_ms") if row.get(k) is not None})
        figure.update(row.get("ratios") or {})
        out[key] = figure
    if "leader_kill" in by_id:
        kill = by_id["leader_kill"]
        out["leader_kill_s"] = {"median": kill["p50_ms"] / 1000, "max": kill["p99_ms"] / 1000}
    if "threads" in by_id:
        out["threads"] = by_id["threads"]["threads"]
    return out


def summary(rows: list[dict]) -> list[str]:
    return [f"{r['case']}: {r['note']}" for r in rows if "x" in r["note"] or "target" in r["note"]]
