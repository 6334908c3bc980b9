"""The failover and failback runbooks as code, against real broker processes.

Every test starts its own 4-broker dual-region cluster (see conftest.py) and
drives it only through broker.ops (or fab), as an operator would.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.console import Console

from broker.client import BrokerClient
from broker.demo.localcluster import wait_for
from broker.ops import ManagementApi, load_inventory, run_failback, run_failover
from broker.ops import failover as failover_module
from broker.ops.failover import failover_seconds, force_remove
from broker.ops.report import ConsoleProgress, audit_record, steps_table
from broker.ops.view import replica_sets
from broker.placement import check_runtime
from tests.integration.test_cluster import assert_all_readable, write
from tests.integration.test_exporters import complete_in_order
from tests.ops.conftest import sink_records

PROJECT = Path(__file__).resolve().parents[2]
FAILOVER_STEPS = [
    "confirm_region_lost",
    "check_survivors_healthy",
    "fence_region",
    "force_remove",
    "wait_for_change_completed",
    "wait_for_leaders",
    "disable_exporter",
    "verify_writes",
]
FAILBACK_STEPS = [
    "start_region_brokers",
    "pause_exporting",
    "restore_export_sink",
    "enable_exporter",
    "resume_exporting",
    "add_brokers_back",
    "wait_for_change_completed",
    "wait_caught_up",
    "verify_placement",
]


def statuses(results) -> dict[str, str]:
    return {r.name: r.status for r in results}


def explain(results) -> str:
    """The steps as the operator would see them, for assertion messages."""
    buf = io.StringIO()
    Console(file=buf, width=200).print(steps_table(results, "steps"))
    return buf.getvalue()


def writes_everywhere(d, n: int, prefix: str, brokers=None) -> dict:
    """n records on each partition, all acknowledged."""
    acked = {}
    with BrokerClient(d.c.gateways(brokers), timeout=10) as client:
        for p in range(1, d.c.partitions + 1):
            acked.update(write(client, n, f"{prefix}-p{p}", partition=p))
    assert len(acked) == n * d.c.partitions
    return acked


# --- inventory -------------------------------------------------------------------------


def test_inventory_in_the_local_format_is_read_without_ansible(dual):
    cluster = dual.cluster
    assert cluster.regions == ("region0", "region1")
    assert (cluster.replication_factor, cluster.partitions) == (4, 4)
    assert [(b.node_id, b.region) for b in cluster.brokers] == [
        (0, "region0"),
        (1, "region1"),
        (2, "region0"),
        (3, "region1"),
    ]
    for b in cluster.brokers:
        assert b.management_url == dual.c.management(b.node_id)
        assert b.gateway == dual.c.gateway(b.node_id)
        assert b.config_path == dual.c.config_path(b.node_id)
    assert dict(cluster.sinks) == dual.sinks


def test_the_projects_local_inventory_renders_its_templated_ports():
    path = PROJECT / "inventories" / "local" / "hosts.yml"
    if not path.exists():
        pytest.skip("inventories/local/hosts.yml is not there yet")
    cluster = load_inventory(path)
    assert len(cluster.brokers) == 8
    assert [b.node_id % 2 for b in cluster.brokers] == [
        cluster.regions.index(b.region) for b in cluster.brokers
    ]
    ports = {b.node_id: b.management_port for b in cluster.brokers}
    assert len(set(ports.values())) == 8, ports  # per-host ports, not the 9600 default


# --- failover guards ---------------------------------------------------------------------


def test_failover_of_a_healthy_region_is_refused_and_changes_nothing(dual):
    version = dual.api_doc()["version"]
    results = run_failover(dual.cluster, "region1", yes=True)
    assert [r.name for r in results] == ["confirm_region_lost"], explain(results)
    assert results[0].status == "failed"
    assert "region1 is UP" in results[0].saw
    # the step that would act refuses on its own too, even when asked directly and told yes
    direct = force_remove(dual.cluster, "region1", approve=lambda q: True)
    assert direct.status == "failed" and "it answers" in direct.saw, direct
    doc = dual.api_doc()
    assert doc["version"] == version and doc["pendingChange"] is None


def test_a_network_cut_is_not_a_region_loss_unless_overridden(dual):
    dual.pause("region1")  # answers this controller, silent to its peers
    dual.wait_seen_dead([1, 3])
    version = dual.api_doc()["version"]
    results = run_failover(dual.cluster, "region1", yes=True)
    assert results[-1].status == "failed", explain(results)
    assert "network cut, not a region loss" in results[-1].saw
    assert dual.api_doc()["version"] == version

    # the loudly named override, with a way to fence: the region's processes are stopped
    results = run_failover(
        dual.cluster, "region1", yes=True, override_reachable=True, control=dual.control
    )
    assert [r.name for r in results] == FAILOVER_STEPS, explain(results)
    assert statuses(results)["fence_region"] == "done", explain(results)
    assert "killed broker 1" in results[2].did
    assert all(r.status != "failed" for r in results), explain(results)
    assert dual.c.running() == [0, 2]


def test_naming_the_surviving_region_as_lost_is_refused(dual):
    """The field failure: a failover that removed the surviving region's brokers."""
    dual.lose("region1")
    version = dual.api_doc()["version"]
    results = run_failover(dual.cluster, "region0", yes=True)
    assert [(r.name, r.status) for r in results] == [("confirm_region_lost", "failed")]
    assert "Is region0 really the lost region, and not region1?" in results[0].saw
    assert dual.api_doc()["version"] == version


def test_an_incomplete_surviving_side_is_refused(dual):
    dual.lose("region1")
    dual.c.kill(2)  # and one broker of the surviving region
    version = dual.api_doc()["version"]
    results = run_failover(dual.cluster, "region1", yes=True)
    assert results[-1].name == "check_survivors_healthy", explain(results)
    assert results[-1].status == "failed"
    assert "the surviving side is incomplete: broker 2" in results[-1].saw
    assert dual.api_doc()["version"] == version


def test_a_pending_change_that_blocks_the_removal_is_named(dual):
    dual.lose("region1")
    # a change started after the loss can never finish: brokers 1 and 3 must do their part
    blocked = dual.c.get_json(0, "/actuator/cluster")
    api = ManagementApi(dual.c.management(0))
    change = api.disable_exporter("region1")["changeId"]
    wait_for(lambda: dual.api_doc()["pendingChange"], 10, "the change to be pending")
    results = run_failover(dual.cluster, "region1", yes=True)
    assert results[-1].name == "check_survivors_healthy", explain(results)
    assert results[-1].status == "failed"
    assert f"change {change} is IN_PROGRESS" in results[-1].saw
    assert "blocks the forced removal" in results[-1].saw
    assert dual.api_doc()["lastChange"] == blocked["lastChange"]


def test_a_destructive_step_needs_a_confirmation(dual):
    dual.lose("region1")
    asked = []
    results = run_failover(dual.cluster, "region1", confirm=lambda q: asked.append(q) or False)
    assert results[-1].name == "force_remove" and results[-1].status == "failed"
    assert "did not confirm" in results[-1].saw
    assert len(asked) == 1 and "Force-remove brokers 1,3 of region1" in asked[0]
    assert dual.api_doc()["pendingChange"] is None


# --- failover ------------------------------------------------------------------------------


def test_dry_run_changes_nothing_and_prints_the_apis_plan(dual):
    dual.lose("region1")
    before = dual.api_doc()
    out = io.StringIO()
    results = run_failover(
        dual.cluster, "region1", dry_run=True, progress=ConsoleProgress(Console(file=out))
    )
    assert [r.name for r in results] == FAILOVER_STEPS, explain(results)
    assert statuses(results)["force_remove"] == "skipped"
    assert all(r.status != "failed" for r in results), explain(results)
    printed = out.getvalue()
    assert printed.count("PARTITION_FORCE_RECONFIGURE") == 4, printed
    assert printed.count("BROKER_FORCE_REMOVE") == 2, printed
    assert "dry run" in printed
    after = dual.api_doc()
    assert after["version"] == before["version"] and after["pendingChange"] is None
    assert dual.c.get_json(0, "/actuator/exporters") == [
        {"exporterId": "region0", "status": "ENABLED"},
        {"exporterId": "region1", "status": "ENABLED"},
    ]


@pytest.mark.parametrize("api", ["8.6", "8.8"])
def test_failover_completes_loses_no_acknowledged_write_and_reruns_as_a_no_op(dual, api, capsys):
    acked = writes_everywhere(dual, 50, "before")
    dual.lose("region1")

    results = run_failover(dual.cluster, "region1", yes=True, api=api)
    assert [r.name for r in results] == FAILOVER_STEPS, explain(results)
    assert statuses(results) == {
        **dict.fromkeys(FAILOVER_STEPS, "done"),
        "fence_region": "skipped",  # nothing of region1 runs
    }, explain(results)
    seconds = failover_seconds(results)
    with capsys.disabled():
        print(
            f"\nfailover ({api} form): first acknowledged write on every partition "
            f"{seconds:.2f}s after the start"
        )

    doc = dual.api_doc()
    assert all(r == {0, 2} for r in replica_sets(doc).values())
    assert dual.c.get_json(2, "/actuator/exporters")[1] == {
        "exporterId": "region1",
        "status": "DISABLED",
    }
    acked.update(writes_everywhere(dual, 20, "after", brokers=[0, 2]))
    with BrokerClient(dual.c.gateways([0, 2]), timeout=10) as client:
        assert_all_readable(client, acked)

    # a second run is a no-op: nothing acts, nothing changes
    again = run_failover(dual.cluster, "region1", yes=True, api=api)
    assert [r.name for r in again] == FAILOVER_STEPS, explain(again)
    assert statuses(again)["force_remove"] == "skipped"
    assert statuses(again)["disable_exporter"] == "skipped"
    assert all(r.status != "failed" for r in again), explain(again)
    assert dual.api_doc()["version"] == doc["version"]

    record = audit_record("failover", "region1", results, 8, started_at=datetime.now(UTC))
    assert record["outcome"] == "completed" and len(record["steps"]) == 8


def test_an_interrupted_failover_resumes_to_completion(dual, monkeypatch):
    acked = writes_everywhere(dual, 20, "before")
    dual.lose("region1")

    first = run_failover(dual.cluster, "region1", yes=True, until="force_remove")
    assert [r.name for r in first] == FAILOVER_STEPS[:4], explain(first)
    assert first[-1].status == "done"
    # a retry of the step while (or after) the change runs sends nothing twice
    retried = force_remove(dual.cluster, "region1", approve=lambda q: True)
    assert retried.status == "skipped", retried
    assert "under way" in retried.saw or "not members any more" in retried.saw

    def controller_lost_power(*args, **kwargs):
        raise RuntimeError("the controller lost power")

    controller_lost_power.__name__ = "disable_exporter"
    monkeypatch.setattr(failover_module, "disable_exporter", controller_lost_power)
    with pytest.raises(RuntimeError):
        run_failover(dual.cluster, "region1", yes=True)
    monkeypatch.undo()

    resumed = run_failover(dual.cluster, "region1", yes=True)
    assert [r.name for r in resumed] == FAILOVER_STEPS, explain(resumed)
    s = statuses(resumed)
    assert s["force_remove"] == "skipped" and "not members any more" in resumed[3].saw
    assert s["disable_exporter"] == "done" and s["verify_writes"] == "done", explain(resumed)
    with BrokerClient(dual.c.gateways([0, 2]), timeout=10) as client:
        assert_all_readable(client, acked)


# --- failback -------------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["8.6", "8.8"])
def test_failback_restores_rf_placement_and_the_regions_sink(dual, api):
    acked = writes_everywhere(dual, 30, "before")
    dual.lose("region1")
    failover = run_failover(dual.cluster, "region1", yes=True, api=api)
    assert all(r.status != "failed" for r in failover), explain(failover)
    acked.update(writes_everywhere(dual, 30, "during", brokers=[0, 2]))
    version = dual.api_doc()["version"]
    out = io.StringIO()
    rehearsal = run_failback(
        dual.cluster, "region1", dry_run=True, api=api, progress=ConsoleProgress(Console(file=out))
    )
    assert [r.name for r in rehearsal] == FAILBACK_STEPS, explain(rehearsal)
    assert all(r.status == "skipped" for r in rehearsal), explain(rehearsal)
    assert out.getvalue().count("PARTITION_JOIN") == 8, out.getvalue()  # 2 per partition
    assert dual.api_doc()["version"] == version and dual.c.running() == [0, 2]

    # region1 is recreated: empty disks (its old sink is stale, not empty)
    for n in (1, 3):
        shutil.rmtree(dual.c.data_dir(n))
    results = run_failback(dual.cluster, "region1", yes=True, api=api, control=dual.control)
    assert [r.name for r in results] == FAILBACK_STEPS, explain(results)
    assert all(r.status == "done" for r in results), explain(results)

    doc = dual.api_doc(1)
    assert all(r == {0, 1, 2, 3} for r in replica_sets(doc).values())
    report = check_runtime(doc, dual.c.get_json(1, "/v2/topology"), dual.cluster.regions_of(), 4)
    assert report.ok, report.findings
    assert all(row.counts == {"region0": 2, "region1": 2} for row in report.partitions)

    acked.update(writes_everywhere(dual, 10, "after"))
    wait_for(lambda: complete_in_order(dual.sinks["region1"], acked), 20, "region1's sink")
    wait_for(lambda: complete_in_order(dual.sinks["region0"], acked), 20, "region0's sink")
    assert sink_records(dual.sinks["region1"]) == sink_records(dual.sinks["region0"])
    kept = [p for p in os.listdir(Path(dual.sinks["region1"]).parent) if "before-restore" in p]
    assert len(kept) == 1  # the stale sink was moved aside, not deleted

    # a second run is a no-op
    version = dual.api_doc()["version"]
    again = run_failback(dual.cluster, "region1", yes=True, api=api, control=dual.control)
    assert all(r.status != "failed" for r in again), explain(again)
    assert statuses(again)["pause_exporting"] == "skipped"
    assert statuses(again)["add_brokers_back"] == "skipped"
    assert dual.api_doc()["version"] == version
    assert dual.api_doc()["exportingPaused"] is False


# --- fab ---------------------------------------------------------------------------------


def fab(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).with_name("fab")), *args],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def test_fab_lists_the_tasks_and_runs_them_against_the_cluster(dual, tmp_path):
    listed = fab("-l")
    assert listed.returncode == 0, listed.stderr
    for name, words in {
        "status": "Show brokers",
        "verify": "Verify leaders",
        "failover": "Fail over from a lost region",
        "failback": "Bring a recreated region back",
        "stop-region": "Stop every broker",
        "start-region": "Start every broker",
        "drill": "Drill a region loss under load",
        "isolate-region": "Cut a region off from the other",
        "heal-region": "Remove the isolate-region cut",
        "rolling-restart": "Restart brokers one at a time",
        "backup": "Back up every partition at a checkpoint",
        "scale": "Move the cluster to the first N brokers",
        "upgrade": "Switch brokers one at a time to a release",
    }.items():
        assert any(
            line.split()[:1] == [name] and words in line for line in listed.stdout.splitlines()
        ), listed.stdout

    shown = fab("--inventory", str(dual.inventory), "status")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "placement ok (runtime): 4 partitions" in shown.stdout
    for b in dual.cluster.brokers:
        assert b.name in shown.stdout

    env = {"BROKER_OPS_AUDIT_DIR": str(tmp_path / "audit")}
    refused = fab(
        "failover", "--lost-region", "region1", "--inventory", str(dual.inventory), env=env
    )
    assert refused.returncode == 1
    assert "region1 is UP" in refused.stdout
    assert len(os.listdir(tmp_path / "audit")) == 1


def test_fab_backup_takes_the_next_id_and_every_task_speaks_json(dual, tmp_path):
    """fab backup: a checkpoint on every partition, waited until COMPLETED, the next free
    id by default; a stale id is refused naming the fix; --json prints one document."""
    env = {"BROKER_OPS_AUDIT_DIR": str(tmp_path / "audit")}
    inv = ("--inventory", str(dual.inventory))
    with dual.c.client() as client:
        for i in range(40):
            client.append(f"r{i}")
    first = fab("backup", *inv, "--json", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    doc = json.loads(first.stdout)  # stdout is the document alone
    assert doc["procedure"] == "backup" and doc["outcome"] == "completed"
    assert doc["backupId"] == 1 and sorted(doc["checkpoints"]) == ["1", "2", "3", "4"]
    assert sum(doc["checkpoints"].values()) == 40  # every record before the cut
    assert [s["name"] for s in doc["steps"]] == [
        "wait_for_leaders",
        "request_backup",
        "wait_completed",
    ]
    assert len(os.listdir(tmp_path / "audit")) == 1
    state = dual.c.get_json(0, "/actuator/backups/1")
    assert state["state"] == "COMPLETED"

    second = fab("backup", *inv, env=env)  # no id: the next one
    assert second.returncode == 0, second.stdout + second.stderr
    assert "backup of all: completed" in second.stdout
    assert dual.c.get_json(1, "/actuator/backups/2")["state"] == "COMPLETED"

    stale = fab("backup", *inv, "--backup-id", "2", "--json", env=env)
    assert stale.returncode == 1
    failed = json.loads(stale.stdout)
    assert failed["outcome"].startswith("failed")
    assert "pick a larger --backup-id" in failed["steps"][-1]["did"]

    dry = fab("backup", *inv, "--dry-run", "--json", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "would take backup 3" in json.loads(dry.stdout)["steps"][1]["did"]
    assert dual.c.get_json(0, "/actuator/backups/3")["state"] == "DOES_NOT_EXIST"

    verified = fab("verify", *inv, "--json")
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["outcome"] == "completed"
    shown = fab("status", *inv, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["answering"]
