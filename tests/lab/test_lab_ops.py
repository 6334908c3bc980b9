"""The fab tasks over real SSH on lab hosts: a drill for the loss of either region, an
inter-region cut diagnosed as a cut (nothing forced), and a rolling restart.

The cluster is deployed once per module with the real playbook (2 hosts per region,
4 partitions, RF 4, default timing), and every task runs as an operator runs it:
`fab --inventory <lab inventory> <task>` in a subprocess, over SSH with the lab's key.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from broker.lab import unavailable_reason
from broker.ops import load_inventory
from broker.ops.load import WriteLoad, read_back
from broker.ops.view import api_of, first_answering, replica_sets
from tests.ansible.conftest import ansible_playbook
from tests.helpers import wait_until

REASON = unavailable_reason()
if REASON:
    print(f"tests/lab/test_lab_ops.py skipped: {REASON}")
    pytest.skip(REASON, allow_module_level=True)

pytestmark = pytest.mark.xdist_group("brk-lab")

PROJECT = Path(__file__).resolve().parents[2]
FAB = str(Path(sys.executable).with_name("fab"))


def fab(
    inventory: Path, *args: str, audit: Path, timeout: float = 300
) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "220", "BROKER_OPS_AUDIT_DIR": str(audit)}
    return subprocess.run(
        [FAB, "--inventory", str(inventory), *args],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def figure(output: str, label: str) -> str:
    """A value from the drill's figures table (a row "│ label │ value │")."""
    match = re.search(rf"│\s*{re.escape(label)}\s*│\s*([^│]+?)\s*│", output)
    assert match, f"no {label!r} in:\n{output[-3000:]}"
    return match.group(1)


@pytest.fixture(scope="module")
def deployed(lab):
    lab.up(2)
    run = ansible_playbook(lab.inventory, "playbooks/deploy.yml")
    assert run.returncode == 0, run
    return lab


@pytest.fixture
def cluster(deployed):
    return load_inventory(deployed.inventory)


def config_version(cluster) -> int:
    return first_answering(cluster, cluster.brokers)[2]["version"]


@pytest.mark.parametrize("region", ["region1", "region0"])
def test_fab_drill_over_ssh_loses_nothing(deployed, cluster, region, tmp_path, record_property):
    run = fab(deployed.inventory, "drill", "--region", region, "--yes", audit=tmp_path)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-5000:]
    acked = int(figure(out, "records acknowledged"))
    assert acked > 0
    assert int(figure(out, "records found afterwards")) == acked
    assert figure(out, "acknowledged records LOST") == "0"
    for label in ("failover RTO (start to a write on every partition)", "failback duration"):
        record_property(label, figure(out, label))
    print(
        f"\ndrill {region} over SSH: "
        + ", ".join(
            f"{k} {figure(out, k)}"
            for k in (
                "records acknowledged",
                "failover RTO (start to a write on every partition)",
                "failback duration",
                "catch-up",
            )
        )
    )
    doc = first_answering(cluster, cluster.brokers)[2]
    assert all(r == set(cluster.ids()) for r in replica_sets(doc).values())
    assert len(list(tmp_path.glob("*-drill-*.json"))) == 1


def test_a_cut_between_the_regions_is_not_failed_over(deployed, cluster, tmp_path):
    version = config_version(cluster)
    cut = fab(deployed.inventory, "isolate-region", "--region", "region1", "--yes", audit=tmp_path)
    try:
        assert cut.returncode == 0, cut.stdout + cut.stderr
        assert "no longer reaches" in " ".join(cut.stdout.split())
        # the survivors lose sight of region1, while region1 still answers the controller
        survivor = api_of(cluster, cluster.in_region("region0")[0])
        lost = set(cluster.ids(cluster.in_region("region1")))
        wait_until(
            lambda: (
                not any(b["alive"] for b in survivor.topology()["brokers"] if b["nodeId"] in lost)
            ),
            60,
            interval=0.2,
        )
        refused = fab(
            deployed.inventory, "failover", "--lost-region", "region1", "--yes", audit=tmp_path
        )
        text = " ".join(refused.stdout.split())
        assert refused.returncode == 1
        assert "network cut, not a region loss" in text, text[-3000:]
        assert config_version(cluster) == version  # nothing forced
    finally:
        healed = fab(deployed.inventory, "heal-region", "--region", "region1", audit=tmp_path)
        assert healed.returncode == 0, healed.stdout + healed.stderr
    # healed: every partition led again and writable (fab verify writes and reads)
    wait_until(
        lambda: fab(deployed.inventory, "verify", audit=tmp_path, timeout=120).returncode == 0,
        120,
        interval=1,
    )


def test_fab_rolling_restart_over_ssh_keeps_writing(deployed, cluster, tmp_path):
    gateways = ",".join(b.gateway for b in cluster.brokers)
    load = WriteLoad(gateways, prefix="lab-rolling", rate=100)
    load.start()
    try:
        run = fab(deployed.inventory, "rolling-restart", "--yes", audit=tmp_path, timeout=600)
    finally:
        load.stop()
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
    (record,) = [json.loads(p.read_text()) for p in tmp_path.glob("*-rolling-restart-*.json")]
    assert record["outcome"] == "completed"
    restarted = [s["name"] for s in record["steps"] if s["status"] == "done"]
    assert restarted == ["verify_placement", *(f"restart_broker_{n}" for n in (0, 2, 1, 3))]
    assert all("over SSH" in s["did"] for s in record["steps"][1:])
    rb = read_back(gateways, load.snapshot(), cluster.partitions, load.prefix)
    assert not rb.lost and rb.found == rb.acknowledged > 0
