"""Region failover through the management API, default Raft and membership timing.

Each round: a 4-broker two-region cluster (RF 4, 4 partitions) takes writes,
region1 is killed (SIGKILL), and once the survivors see it gone the forced
removal is requested; measured from the request: the change COMPLETED, and
an acknowledged write on every partition. Also: kill to "not alive" in the
survivors' topology (failure detection). Medians of 5 rounds.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
import urllib.request

from broker.client import BrokerClient, BrokerError
from broker.demo.localcluster import LocalCluster, wait_for

ROUNDS = 5
ROOT = os.path.join("var", "bench-tmp")

TITLE = "Region failover via POST /actuator/cluster/brokers?force=true (medians of 5)"
COLUMNS = [
    ("case", "measured", "{}"),
    ("median_s", "median s", "{:.2f}"),
    ("max_s", "max s", "{:.2f}"),
    ("rounds", "rounds (s)", "{}"),
]


def _post(url: str, body) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _alive(c: LocalCluster, via: int, node: int) -> bool:
    topo = c.get_json(via, "/v2/topology") or {"brokers": []}
    return any(b["nodeId"] == node and b.get("alive") for b in topo["brokers"])


def _round(root: str) -> dict[str, float]:
    with LocalCluster(root, size=4, partitions=4, replication_factor=4) as c:
        c.start()
        c.wait_leaders()
        with BrokerClient(c.gateways(), timeout=10) as client:
            for p in range(1, 5):
                client.append("before", partition=p)
        t_kill = time.monotonic()
        c.kill(1)
        c.kill(3)
        wait_for(lambda: not _alive(c, 0, 1) and not _alive(c, 0, 3), 60, "failure detection")
        detected = time.monotonic() - t_kill
        t0 = time.monotonic()
        change = _post(c.management(0) + "/actuator/cluster/brokers?force=true", [0, 2])
        done = {}

        def finished():
            doc = c.get_json(0, "/actuator/cluster") or {}
            last = doc.get("lastChange") or {}
            return doc.get("pendingChange") is None and last.get("id", 0) >= change["changeId"]

        with BrokerClient(c.gateways([0, 2]), timeout=15) as client:
            pending = set(range(1, 5))
            while pending:
                for p in sorted(pending):
                    try:
                        client.append("after", partition=p)
                        pending.discard(p)
                    except BrokerError:
                        pass
                if "completed" not in done and finished():
                    done["completed"] = time.monotonic() - t0
            done["writable"] = time.monotonic() - t0
        wait_for(finished, 60, "the change to complete")
        done.setdefault("completed", time.monotonic() - t0)
        done["detected"] = detected
    return done


def run() -> list[dict]:
    base = os.path.join(ROOT, f"failover-{os.getpid()}")
    results = []
    try:
        for i in range(ROUNDS):
            results.append(_round(os.path.join(base, str(i))))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    rows = []
    for key, label in (
        ("detected", "kill -9 of region1 to 'not alive' on the survivors"),
        ("completed", "force request to lastChange COMPLETED"),
        ("writable", "force request to an acknowledged write on every partition"),
    ):
        values = [r[key] for r in results]
        rows.append(
            {
                "case": label,
                "median_s": statistics.median(values),
                "max_s": max(values),
                "rounds": ", ".join(f"{v:.2f}" for v in values),
            }
        )
    return rows


def summary(rows: list[dict]) -> list[str]:
    return [f"{r['case']}: median {r['median_s']:.2f} s" for r in rows]
