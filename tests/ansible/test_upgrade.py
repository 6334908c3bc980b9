"""Rolling upgrade and rollback on 4 real brokers (a temporary copy of inventories/local).

Two builds of the project that differ in version share one wheelhouse: the checkout
(0.1.0) and a copy bumped to 0.1.1. Under a steady write load: deploy 0.1.0, upgrade.yml
in check mode (touches nothing), upgrade to 0.1.1 with playbooks/upgrade.yml, roll back
to 0.1.0 with `fab upgrade` (the release is still on the hosts: a switch and a restart;
a version that is not staged is refused), then read back every acknowledged record.
Last, one broker's data is marked as written by a newer build: a switch is refused by
the pre-check of fab and of the playbook, before any broker is stopped. (The newer
build itself, 0.2.0 with data format 2, runs in make test-long: tests/lab/test_lab_upgrade.py.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from broker.ops.load import WriteLoad, read_back
from tests.labutil import longest_stall

from .conftest import ROOT, LocalInventory, ansible_playbook, make_local_inventory
from .test_wheelhouse import _run_module

pytestmark = pytest.mark.slow

PARTITIONS = 4
# 2 brokers per region (of inventories/local's 4), RF 4: every broker restarts 4-5 times
KEEP = ("brk-r0-h0", "brk-r0-h1", "brk-r1-h0", "brk-r1-h1")
FAB = Path(sys.executable).with_name("fab")


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory, broker_sources) -> Path:
    """One wheelhouse with 0.1.1 built from a copy of the sources; the deploy adds the
    checkout's 0.1.0 itself."""
    base = tmp_path_factory.mktemp("builds")
    wheels = base / "wheels"
    build_copy(broker_sources, "0.1.1", 1, base, wheels)
    return wheels


def build_copy(sources: Path, version: str, data_format: int, base: Path, wheels: Path) -> None:
    """A copy of ``sources`` whose version (and data format) differ, built into ``wheels``."""
    src = base / f"src-{version}"
    shutil.copytree(sources, src)
    for name, old, new in (
        ("pyproject.toml", 'version = "0.1.0"', f'version = "{version}"'),
        ("broker/__init__.py", '__version__ = "0.1.0"', f'__version__ = "{version}"'),
        ("broker/dataformat.py", "DATA_FORMAT = 1", f"DATA_FORMAT = {data_format}"),
    ):
        text = (src / name).read_text()
        assert old in text, (name, old)
        (src / name).write_text(text.replace(old, new, 1))
    built = _run_module({"project_dir": src, "dest": wheels}, base)
    assert built["version"] == version, built


@pytest.fixture
def inventory(tmp_path, broker_sources, wheelhouse):
    # no snapshot (and so no compaction) during the test: every record reads back from 1
    inv = make_local_inventory(
        tmp_path,
        broker_sources,
        cluster_vars={"broker_partitions_count": PARTITIONS, "broker_snapshot_period": "60m"},
    )
    group_vars = inv.path / "group_vars" / "brokers.yml"
    doc = yaml.safe_load(group_vars.read_text())
    doc["broker_wheelhouse_dir"] = str(wheelhouse)
    group_vars.write_text(yaml.safe_dump(doc, sort_keys=False))
    hosts_file = inv.path / "hosts.yml"
    hosts = yaml.safe_load(hosts_file.read_text())
    for region in hosts["all"]["children"]["brokers"]["children"].values():
        region["hosts"] = {h: v for h, v in region["hosts"].items() if h in KEEP}
    hosts_file.write_text(yaml.safe_dump(hosts, sort_keys=False))
    inv.hosts = {h: v for h, v in inv.hosts.items() if h in KEEP}
    yield inv
    inv.stop_all()


def versions(inv: LocalInventory) -> dict[int, str]:
    """Each broker's version as it reports itself in /v2/topology."""
    out = {}
    for host, host_vars in inv.hosts.items():
        node_id = host_vars["broker_ordinal"] * 2 + (0 if host.startswith("brk-r0") else 1)
        with inv.open(host, "/v2/topology") as resp:
            doc = json.loads(resp.read())
        (me,) = [b for b in doc["brokers"] if b["nodeId"] == node_id]
        out[node_id] = me["version"]
    return out


def task_output(run, name: str) -> str:
    """What the play printed for the task ``name`` (its first run)."""
    return run.output.split(f"{name}]", 1)[1].split("TASK [", 1)[0]


def links(inv: LocalInventory) -> dict[str, str]:
    return {h: os.readlink(inv.host_dir(h) / "install" / "venv") for h in inv.hosts}


def releases(inv: LocalInventory, host: str) -> list[str]:
    return sorted(os.listdir(inv.host_dir(host) / "install" / "releases"))


def fab(inv: LocalInventory, audit: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(FAB), "upgrade", "--inventory", str(inv.path / "hosts.yml"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "200", "BROKER_OPS_AUDIT_DIR": str(audit)},
    )


def longest_gap(acks) -> float:
    """The largest interval between consecutive acknowledgements."""
    times = sorted(a.acked for a in acks)
    return longest_stall(acks, times[0], times[-1]) if len(times) > 1 else 0.0


@pytest.mark.timeout(1200)
def test_upgrade_rollback_and_refused_downgrade(inventory, tmp_path, record_property, capsys):
    inv = inventory
    figures: dict[str, float] = {}

    run = ansible_playbook(inv.path, "playbooks/deploy.yml")
    assert run.returncode == 0, str(run)
    figures["deploy_s"] = run.seconds
    assert set(versions(inv).values()) == {"0.1.0"}
    first = links(inv)
    assert all(t.startswith("releases/0.1.0-") and t.endswith("/venv") for t in first.values())

    gateways = ",".join(f"127.0.0.1:{v['broker_gateway_port']}" for v in inv.hosts.values())
    load = WriteLoad(gateways, prefix="upgrade", rate=100, ssl_context=inv.ssl_context())
    load.start()
    try:
        # --- check mode: says what it would switch, touches nothing ---------------------
        pids = inv.pids()
        run = ansible_playbook(
            inv.path, "playbooks/upgrade.yml", "--check", "-e", "broker_version=0.1.1"
        )
        assert run.returncode == 0, str(run)
        assert "would switch to release 0.1.1-" in run.flat(), str(run)
        assert "one at a time: brk-r0-h0, brk-r0-h1, brk-r1-h0, brk-r1-h1" in run.flat(), str(run)
        assert inv.pids() == pids and links(inv) == first
        assert all(len(releases(inv, h)) == 1 for h in inv.hosts)

        # --- upgrade with the playbook ----------------------------------------------------
        run = ansible_playbook(inv.path, "playbooks/upgrade.yml", "-e", "broker_version=0.1.1")
        assert run.returncode == 0, str(run)
        figures["upgrade_s"] = run.seconds
        assert set(versions(inv).values()) == {"0.1.1"}, versions(inv)
        upgraded = links(inv)
        assert all(t.startswith("releases/0.1.1-") for t in upgraded.values()), upgraded

        # --- fab upgrade: a version not staged is refused; the rollback to 0.1.0, whose
        # release is still on every host, is only a switch and a restart per broker ------
        refused = fab(inv, tmp_path / "audit", "--version", "9.9.9", "--yes")
        assert refused.returncode == 1, refused.stdout + refused.stderr
        text = " ".join(refused.stdout.split())
        assert "broker 9.9.9 is not staged on brk-r0-h0 (broker 0)" in text, text[-3000:]
        assert "broker_upgrade_stage_only=true" in text, text[-3000:]

        switched = fab(inv, tmp_path / "audit", "--version", "0.1.0", "--yes", "--json")
        assert switched.returncode == 0, (switched.stdout + switched.stderr)[-5000:]
        record = json.loads(switched.stdout)
        figures["fab_rollback_s"] = sum(s["seconds"] for s in record["steps"])
        assert record["outcome"] == "completed"
        done = [s["name"] for s in record["steps"] if s["status"] == "done"]
        assert done[:3] == ["check_staged", "check_data", "verify_placement"], done
        assert done[3:] == [f"upgrade_broker_{n}" for n in (0, 2, 1, 3)], done
        assert set(versions(inv).values()) == {"0.1.0"}, versions(inv)
        assert links(inv) == first, "the rollback did not switch back to the first release"
        assert all(len(releases(inv, h)) == 2 for h in inv.hosts)
    finally:
        load.stop()
    acks = load.snapshot()
    rb = read_back(gateways, acks, PARTITIONS, load.prefix, ssl_context=inv.ssl_context())
    figures["acknowledged"] = rb.acknowledged
    figures["lost"] = len(rb.lost)
    figures["longest_ack_gap_s"] = longest_gap(acks)
    assert rb.acknowledged > 0 and not rb.lost, f"{len(rb.lost)} acknowledged records lost"

    # --- data a newer build wrote: a switch back to 0.1.0 is refused before any stop ------
    # (the real newer build, 0.2.0 with data format 2, writes it in make test-long:
    # tests/lab/test_lab_upgrade.py; here its marker is written on one broker)
    newer = inv.host_dir("brk-r1-h1") / "data" / "format.json"
    newer.write_text(json.dumps({"format": 2, "brokerVersion": "0.2.0"}))
    run = ansible_playbook(
        inv.path,
        "playbooks/upgrade.yml",
        "-e",
        "broker_upgrade_stage_only=true",
        "-e",
        "broker_version=0.1.1",
    )
    assert run.returncode == 0 and "staged on every host" in run.flat(), str(run)
    pids = inv.pids()
    refused = fab(inv, tmp_path / "audit", "--version", "0.1.1", "--yes")
    assert refused.returncode == 1
    text = " ".join(refused.stdout.split())
    assert "broker 0.1.1 cannot run the data of" in text, text[-3000:]
    assert "it is in format 2, written by broker 0.2.0" in text, text[-3000:]
    assert "install broker 0.2.0 or newer" in text, text[-3000:]
    assert inv.pids() == pids and links(inv) == first, "a broker was restarted or switched"
    run = ansible_playbook(inv.path, "playbooks/upgrade.yml", "-e", "broker_version=0.1.1")
    figures["refused_s"] = run.seconds
    assert run.returncode != 0, str(run)
    flat = run.flat()
    assert "broker 0.1.1 cannot run the data of brk-r1-h1" in flat, str(run)
    assert "so no broker was stopped or switched" in flat, str(run)
    assert "install broker 0.2.0 or newer" in flat, str(run)
    assert inv.pids() == pids, "a broker was restarted"
    assert links(inv) == first, "a broker was switched"
    assert set(versions(inv).values()) == {"0.1.0"}
    for host in inv.hosts:
        with inv.open(host, "/actuator/health/readiness") as resp:
            assert resp.status == 200

    for key, value in figures.items():
        record_property(key, value)
    with capsys.disabled():
        print(
            "\nupgrade figures: "
            + ", ".join(
                f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()
            )
        )
