"""Region-loss drills on a deployed cluster (the lab over SSH): `python -m bench drill`.

Not in the default `make bench` run: it needs a deployed cluster and kills regions.
Bring up the lab and deploy first (as root):

    python -m broker.lab up --hosts-per-region 4
    .venv/bin/ansible-playbook -i inventories/lab/hosts.yml playbooks/deploy.yml
    python -m bench drill          # BENCH_DRILL_INVENTORY, BENCH_DRILL_ROUNDS (5 per region)

Each round is `fab drill` (broker.ops.drill.run_drill) for one region, alternating
region1 / region0, under a 200 records/s load: acknowledged records lost (must be 0),
failover RTO (failover start to an acknowledged write on every partition), failback
duration, catch-up rate (bytes the rebuilt region's disks received while its replicas
caught up, per second; BENCH_DRILL_PRELOAD_MB, default 64, of 16 KiB records are written
during each outage so the rebuilt region has a real log to catch up with), and failure
detection (kill to "dead" on every survivor).
"""

from __future__ import annotations

import os
import statistics

from broker.ops import InventoryControl, load_inventory
from broker.ops.drill import run_drill

INVENTORY = os.environ.get("BENCH_DRILL_INVENTORY", "inventories/lab/hosts.yml")
ROUNDS = int(os.environ.get("BENCH_DRILL_ROUNDS", "5"))
PRELOAD_MB = float(os.environ.get("BENCH_DRILL_PRELOAD_MB", "64"))

TITLE = f"Region-loss drills over SSH ({INVENTORY}), {ROUNDS} per region, {PRELOAD_MB:g} MB grown"
COLUMNS = [
    ("region", "region", "{}"),
    ("lost", "acked lost", "{}"),
    ("acked", "acked (sum)", "{}"),
    ("rto", "RTO median s", "{:.2f}"),
    ("rto_max", "RTO max s", "{:.2f}"),
    ("failback", "failback median s", "{:.2f}"),
    ("catch_up", "catch-up median MB/s", "{:.2f}"),
    ("detect", "detection median s", "{:.2f}"),
    ("rounds", "RTO per round (s)", "{}"),
]


def run() -> list[dict]:
    cluster = load_inventory(INVENTORY)
    per_region: dict[str, list] = {r: [] for r in ("region1", "region0")}
    for _ in range(ROUNDS):
        for region in per_region:
            results, figures = run_drill(
                cluster, region, control=InventoryControl(), yes=True, preload_mb=PRELOAD_MB
            )
            if results[-1].failed:
                raise SystemExit(
                    f"drill of {region} failed at {results[-1].name}: {results[-1].saw}"
                )
            per_region[region].append(figures)
    rows = []
    for region, runs in per_region.items():
        rto = [f.failover_rto_seconds for f in runs]
        rows.append(
            {
                "region": region,
                "lost": sum(f.lost for f in runs),
                "acked": sum(f.acknowledged for f in runs),
                "rto": statistics.median(rto),
                "rto_max": max(rto),
                "failback": statistics.median(f.failback_seconds for f in runs),
                "catch_up": statistics.median(f.catch_up_mb_per_s for f in runs),
                "detect": statistics.median(f.detection_seconds for f in runs),
                "rounds": " ".join(f"{x:.2f}" for x in rto),
            }
        )
    return rows


def summary(rows: list[dict]) -> list[str]:
    lost = sum(r["lost"] for r in rows)
    worst = max(r["rto"] for r in rows)
    return [
        f"acknowledged records lost over {2 * ROUNDS} drills: {lost} "
        f"({'MET' if lost == 0 else 'MISS'}: must be 0)",
        f"failover RTO median, worst region: {worst:.2f}s "
        f"({'MET' if worst < 5 else 'MISS'}: < 5 s)",
    ]
