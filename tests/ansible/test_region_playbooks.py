"""playbooks/failover.yml and playbooks/failback.yml against a real dual-region cluster.

Each test starts the 4-broker cluster of tests/ops (brokers 0,2 in region0 and 1,3
in region1, RF 4, a file exporter per region) and drives it only through real
``ansible-playbook`` runs with the cluster's inventory file, as an operator would.
The playbooks run broker.ops through the broker_region action plugin, so these
tests check the Ansible layer (variables, confirmation, check mode, changed,
failed, output, audit), not the procedures again (tests/ops does).
"""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from broker.client import BrokerClient
from broker.demo.localcluster import wait_for
from broker.ops.view import replica_sets
from broker.placement import check_runtime
from tests.integration.test_cluster import assert_all_readable
from tests.integration.test_exporters import complete_in_order
from tests.ops import conftest as ops_conftest
from tests.ops.conftest import sink_records
from tests.ops.test_procedures import writes_everywhere

from .conftest import ROOT, Run, ansible_env, tool

dual = ops_conftest.dual  # the real cluster fixture of tests/ops, reused as it is

ACTION_PLUGINS = ROOT / "plugins" / "action"


def action_plugins_configured() -> bool:
    """Does ansible.cfg point Ansible at plugins/action?"""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "ansible.cfg")
    paths = cfg.get("defaults", "action_plugins", fallback="")
    return any(Path(p.strip()) == Path("plugins/action") for p in paths.split(":"))


def playbook(inventory: Path, name: str, *args: str, audit: Path, **env: str) -> Run:
    """ansible-playbook -i INVENTORY playbooks/NAME ARGS, from the repository root."""
    extra = {"BROKER_OPS_AUDIT_DIR": str(audit), "COLUMNS": "200", **env}
    cmd = [tool("ansible-playbook"), "-i", str(inventory), str(ROOT / "playbooks" / name), *args]
    start = time.monotonic()
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        env=ansible_env(**extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
        check=False,
    )
    return Run(cmd, proc.returncode, proc.stdout, time.monotonic() - start)


def failover(d, tmp_path: Path, *args: str, **env: str) -> Run:
    return playbook(d.inventory, "failover.yml", *args, audit=tmp_path / "audit", **env)


def failback(d, tmp_path: Path, *args: str, **env: str) -> Run:
    return playbook(d.inventory, "failback.yml", *args, audit=tmp_path / "audit", **env)


def audits(tmp_path: Path) -> list[dict]:
    directory = tmp_path / "audit"
    if not directory.is_dir():
        return []
    records = [json.loads(p.read_text()) for p in directory.glob("*.json")]
    return sorted(records, key=lambda r: r["startedAt"])


def refused(run: Run, *words: str) -> None:
    assert run.returncode != 0, str(run)
    for w in words:
        assert w in run.flat(), f"{w!r} not in the output:\n{run}"


@pytest.fixture
def stop_region1_daemons(dual):
    """Brokers the failback starts run as `broker start` daemons (pid file in their data
    directory), not as the fixture's children: stop them by their config afterwards."""
    yield
    for b in dual.cluster.in_region("region1"):
        subprocess.run(
            [sys.executable, "-m", "broker", "stop", "--config", b.config_path],
            capture_output=True,
            timeout=60,
            check=False,
        )


# --- refusals -------------------------------------------------------------------------------


def test_refusals_change_nothing_and_say_what_to_do(dual, tmp_path):
    before = dual.api_doc()

    missing = failover(dual, tmp_path)
    refused(missing, "Name the lost region: -e broker_lost_region=REGION")

    unknown = failover(dual, tmp_path, "-e", "broker_lost_region=region9")
    unknown_too = failover(
        dual, tmp_path, "-e", "broker_lost_region=region9", "-e", "broker_failover_confirm=region9"
    )
    refused(unknown, "Confirm it with -e broker_failover_confirm=region9", "--check")
    refused(unknown_too, "no region 'region9' in the inventory (regions: region0, region1)")

    unconfirmed = failback(dual, tmp_path, "-e", "broker_failback_region=region1")
    refused(unconfirmed, "Confirm it with -e broker_failback_confirm=region1")
    assert audits(tmp_path) == []  # nothing ran

    # confirmed, but region1 is up: the procedure's first step refuses
    healthy = failover(
        dual, tmp_path, "-e", "broker_lost_region=region1", "-e", "broker_failover_confirm=region1"
    )
    refused(healthy, "region1 is UP", "failover of region1: failed at confirm_region_lost")
    assert healthy.recap["localhost"]["failed"] == 1 and healthy.changed == 0, str(healthy)
    after = dual.api_doc()
    assert after["version"] == before["version"] and after["pendingChange"] is None
    assert dual.c.running() == [0, 1, 2, 3]
    [record] = audits(tmp_path)
    assert record["outcome"] == "failed at confirm_region_lost"
    assert record["options"]["dryRun"] is False and record["options"]["via"] == "ansible"


def test_without_the_action_plugin_the_stub_module_fails_saying_so(dual, tmp_path):
    empty = tmp_path / "no-action-plugins"
    empty.mkdir()
    run = failover(
        dual,
        tmp_path,
        "-e",
        "broker_lost_region=region1",
        "--check",
        ANSIBLE_ACTION_PLUGINS=str(empty),
    )
    refused(run, "the action plugin was not loaded", "action_plugins = plugins/action")
    assert audits(tmp_path) == []


def test_ansible_cfg_loads_the_action_plugin():
    assert action_plugins_configured(), "ansible.cfg needs `action_plugins = plugins/action`"


# --- failover -------------------------------------------------------------------------------


def test_check_mode_shows_the_apis_plan_and_changes_nothing(dual, tmp_path):
    dual.lose("region1")
    before = dual.api_doc()
    run = failover(dual, tmp_path, "-e", "broker_lost_region=region1", "--check")
    assert run.returncode == 0, str(run)
    assert run.changed == 0, str(run)
    out = run.output
    assert "failover of region1 (DRY RUN: nothing was changed): completed" in out, str(run)
    for n in (1, 3):
        assert re.search(rf"BROKER_FORCE_REMOVE\s+broker {n}\b", out), str(run)
    for p in range(1, 5):
        planned = rf"PARTITION_FORCE_RECONFIGURE\s+broker \d partition {p} -> replicas 0,2\b"
        assert re.search(planned, out), str(run)
    after = dual.api_doc()
    assert after["version"] == before["version"] and after["pendingChange"] is None
    assert dual.c.get_json(0, "/actuator/exporters") == [
        {"exporterId": "region0", "status": "ENABLED"},
        {"exporterId": "region1", "status": "ENABLED"},
    ]
    [record] = audits(tmp_path)
    assert record["options"]["dryRun"] is True and record["outcome"] == "completed"


def test_failover_completes_keeps_every_acknowledged_write_and_reruns_as_a_no_op(dual, tmp_path):
    acked = writes_everywhere(dual, 30, "before")
    dual.lose("region1")
    confirm = ("-e", "broker_lost_region=region1", "-e", "broker_failover_confirm=region1")

    run = failover(dual, tmp_path, *confirm)
    assert run.returncode == 0, str(run)
    assert run.recap["localhost"] == {"ok": 2, "changed": 1, "unreachable": 0, "failed": 0}
    flat = run.flat()
    assert "failover of region1: completed" in flat, str(run)
    assert "acted: force_remove, disable_exporter" in flat, str(run)
    assert "[4/8] force-remove the lost region's brokers (force_remove) ..." in run.output
    assert all(r == {0, 2} for r in replica_sets(dual.api_doc()).values())
    assert dual.c.get_json(0, "/actuator/exporters")[1] == {
        "exporterId": "region1",
        "status": "DISABLED",
    }
    # every partition takes writes on the surviving region, and nothing acknowledged is lost
    acked.update(writes_everywhere(dual, 10, "after", brokers=[0, 2]))
    with BrokerClient(dual.c.gateways([0, 2]), timeout=10) as client:
        assert_all_readable(client, acked)

    version = dual.api_doc()["version"]
    again = failover(dual, tmp_path, *confirm, "-v")  # -v: the task's result is shown too
    assert again.returncode == 0, str(again)
    assert again.changed == 0, str(again)
    assert "nothing to do: no step acted" in again.flat(), str(again)
    for returned in ("acted: []", "outcome: completed", "name: force_remove", "status: skipped"):
        assert returned in again.output, str(again)
    assert dual.api_doc()["version"] == version
    outcomes = [(r["outcome"], r["steps"][3]["status"]) for r in audits(tmp_path)]
    assert outcomes == [("completed", "done"), ("completed", "skipped")]


# --- failback -------------------------------------------------------------------------------


def test_failback_restores_rf_and_placement_and_reruns_as_a_no_op(
    dual, tmp_path, stop_region1_daemons
):
    acked = writes_everywhere(dual, 20, "before")
    dual.lose("region1")
    api = ("-e", "broker_ops_api=8.8")
    over = failover(
        dual,
        tmp_path,
        "-e",
        "broker_lost_region=region1",
        "-e",
        "broker_failover_confirm=region1",
        *api,
    )
    assert over.returncode == 0 and over.changed == 1, str(over)
    acked.update(writes_everywhere(dual, 20, "during", brokers=[0, 2]))

    # region1 is recreated: empty disks (its old export sink is stale, not empty)
    for n in (1, 3):
        shutil.rmtree(dual.c.data_dir(n))
    back = ("-e", "broker_failback_region=region1", *api)
    version = dual.api_doc()["version"]
    plan = failback(dual, tmp_path, *back, "--check")
    assert plan.returncode == 0 and plan.changed == 0, str(plan)
    for p in range(1, 5):
        for n in (1, 3):
            assert re.search(rf"PARTITION_JOIN\s+broker {n} partition {p}\b", plan.output), str(
                plan
            )
    assert dual.api_doc()["version"] == version
    assert dual.c.health(1, "startup") is None and dual.c.health(3, "startup") is None

    # the brokers start from the inventory (`broker start --config`), as on a real host
    run = failback(dual, tmp_path, *back, "-e", "broker_failback_confirm=region1")
    assert run.returncode == 0, str(run)
    assert run.changed == 1, str(run)
    flat = run.flat()
    assert "failback of region1: completed" in flat, str(run)
    assert "started broker 1 locally" in flat and "started broker 3 locally" in flat, str(run)

    doc = dual.api_doc(1)
    assert all(r == {0, 1, 2, 3} for r in replica_sets(doc).values()), doc
    report = check_runtime(doc, dual.c.get_json(1, "/v2/topology"), dual.cluster.regions_of(), 4)
    assert report.ok, report.findings
    assert all(row.counts == {"region0": 2, "region1": 2} for row in report.partitions)
    acked.update(writes_everywhere(dual, 10, "after"))
    with BrokerClient(dual.c.gateways(), timeout=10) as client:
        assert_all_readable(client, acked)
    wait_for(lambda: complete_in_order(dual.sinks["region1"], acked), 20, "region1's sink")
    wait_for(lambda: complete_in_order(dual.sinks["region0"], acked), 20, "region0's sink")
    assert sink_records(dual.sinks["region1"]) == sink_records(dual.sinks["region0"])

    version = dual.api_doc()["version"]
    again = failback(dual, tmp_path, *back, "-e", "broker_failback_confirm=region1")
    assert again.returncode == 0 and again.changed == 0, str(again)
    assert "nothing to do: no step acted" in again.flat(), str(again)
    assert dual.api_doc()["version"] == version
    records = [(r["procedure"], r["options"]["dryRun"], r["outcome"]) for r in audits(tmp_path)]
    assert records == [
        ("failover", False, "completed"),
        ("failback", True, "completed"),
        ("failback", False, "completed"),
        ("failback", False, "completed"),
    ]
