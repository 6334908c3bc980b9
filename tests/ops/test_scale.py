"""fab scale on a real cluster: brokers 0-3 run, brokers 4-7 are installed (configured
for the 8-broker cluster) but stopped, as an operator has them after deploying new
hosts. Out to 8 under a write load, back in to 4, nothing acknowledged lost."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from broker.demo.localcluster import LocalCluster, wait_for
from broker.ops.load import WriteLoad, read_back
from tests.integration.test_cluster import FAST
from tests.ops.conftest import REGIONS, write_inventory
from tests.ops.test_procedures import fab

PARTITIONS = 8


@pytest.fixture
def growing(tmp_path):
    c = LocalCluster(
        str(tmp_path / "c"),
        size=8,
        members=4,
        partitions=PARTITIONS,
        replication_factor=4,
        overrides=FAST,
    )
    sinks = {r: str(tmp_path / "export" / r) for r in REGIONS}
    inventory = write_inventory(c, tmp_path / "hosts.yml", sinks)
    try:
        c.start(range(4))
        c.wait_leaders()
        yield c, inventory
    finally:
        for n in range(4, 8):  # fab starts these as daemons (`broker start`)
            subprocess.run(
                [sys.executable, "-m", "broker", "stop", "--config", c.config_path(n)],
                capture_output=True,
                timeout=60,
                check=False,
            )
        c.stop_all()


def members(c: LocalCluster) -> list[int]:
    doc = c.get_json(0, "/actuator/cluster")
    return sorted(b["id"] for b in doc["brokers"] if b["state"] != "LEFT")


def test_fab_scale_out_and_in_under_load(growing, tmp_path):
    c, inventory = growing
    env = {"BROKER_OPS_AUDIT_DIR": str(tmp_path / "audit")}
    inv = ("--inventory", str(inventory))

    for bad in ("3", "10", "x"):
        refused = fab("scale", *inv, "--size", bad, "--yes", env=env)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "N even" in refused.stderr or "positive even integer" in refused.stderr
    unasked = fab("scale", *inv, env=env)  # no terminal, no --yes: refused, nothing changed
    assert unasked.returncode == 1 and members(c) == [0, 1, 2, 3], unasked.stdout

    dry = fab("scale", *inv, "--dry-run", "--json", env=env)
    assert dry.returncode == 0, dry.stderr
    doc = json.loads(dry.stdout)
    assert doc["outcome"] == "completed" and doc["options"]["dryRun"] is True
    assert "4 -> 8 brokers; joining: 4,5,6,7; leaving: none" in doc["steps"][0]["saw"], doc
    assert "BROKER_ADD" in doc["steps"][2]["saw"] and members(c) == [0, 1, 2, 3]

    load = WriteLoad(c.gateways(range(4)), prefix="fab-scale", rate=100, timeout=5)
    load.start()
    try:
        wait_for(lambda: len(load.snapshot()) >= 30, 20, "the load to be acknowledged")
        out = fab("scale", *inv, "--yes", "--json", env=env)
        assert out.returncode == 0, out.stdout + out.stderr
        doc = json.loads(out.stdout)
        assert doc["outcome"] == "completed" and doc["changeId"], doc
        assert [s["name"] for s in doc["steps"]] == [
            "check_target",
            "start_joining",
            "request_scale",
            "wait_for_change_completed",
            "stop_leaving",
            "verify_placement",
        ]
        assert "(2+2 per region)" in doc["steps"][-1]["saw"], doc["steps"][-1]
        assert members(c) == list(range(8))

        out = fab("scale", *inv, "--size", "4", "--yes", env=env)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "scale of all: completed" in out.stdout, out.stdout
        assert members(c) == [0, 1, 2, 3]
        for n in range(4, 8):
            assert c.health(n, "startup") is None, f"broker {n} still answers"
    finally:
        load.stop()
    acked = load.snapshot()
    rb = read_back(c.gateways(range(4)), acked, PARTITIONS, load.prefix)
    assert len(acked) >= 30 and not rb.lost, rb.lost[:5]
