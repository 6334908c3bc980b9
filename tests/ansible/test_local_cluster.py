"""The playbooks against 8 real brokers on 127.0.0.1 (a temporary copy of inventories/local).

One test walks the whole lifecycle, because every step needs the cluster the
previous one left (and pytest-xdist may otherwise split the steps across
workers): deploy, an unchanged re-run, verify in check mode, the README's
region-loss path with fab (stop region1, failover, rebuild, failback, on the
inventory's own export-sink layout), deploy in check mode, a rolling restart,
backup and restore, scale in and out, remove without and with confirmation. The
finalizer stops every broker by its pid file whatever happens.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from broker.client import BrokerClient
from broker.demo.localcluster import wait_for
from broker.ops.load import WriteLoad, read_back
from tests.integration.test_cluster import assert_all_readable, write
from tests.integration.test_exporters import complete_in_order
from tests.ops.conftest import sink_records

from .conftest import (
    ROOT,
    LocalInventory,
    Run,
    ansible_env,
    ansible_playbook,
    make_local_inventory,
    pid_alive,
    tool,
)

pytestmark = pytest.mark.slow

PARTITIONS = 8


@pytest.fixture
def local_inventory(tmp_path, broker_sources):
    inv = make_local_inventory(tmp_path, broker_sources)
    yield inv
    inv.stop_all()


def topology(inv: LocalInventory, host: str) -> dict:
    with inv.open(host, "/v2/topology") as resp:
        return json.loads(resp.read())


def leaders(topo: dict) -> dict[int, int]:
    best: dict[int, tuple[int, int]] = {}
    for broker in topo["brokers"]:
        for part in broker["partitions"]:
            term = part.get("term", 0)
            live_leader = part["role"] == "leader" and broker.get("alive", True)
            if live_leader and term >= best.get(part["partitionId"], (-1, -1))[0]:
                best[part["partitionId"]] = (term, broker["nodeId"])
    return {pid: node for pid, (_, node) in best.items()}


@pytest.mark.timeout(1800)
def test_local_inventory_lifecycle(local_inventory, record_property, capsys, tmp_path):
    inv = local_inventory
    times = {}

    # --- first deploy --------------------------------------------------------------
    run = ansible_playbook(inv.path, "playbooks/deploy.yml")
    times["first deploy"] = run.seconds
    assert run.returncode == 0, str(run)
    assert "placement ok (layout): 8 partitions" in run.output, str(run)
    assert "placement ok (runtime): 8 partitions" in run.output, str(run)
    assert set(run.recap) == set(inv.hosts), str(run)
    assert all(h["failed"] == 0 and h["unreachable"] == 0 for h in run.recap.values())

    # the configs: ids by parity, every broker a contact point, one exporter per region
    internal = sorted(f"127.0.0.1:{v['broker_internal_port']}" for v in inv.hosts.values())
    for host, host_vars in inv.hosts.items():
        cfg = yaml.safe_load(inv.config(host).read_text())
        region_id = 0 if host.startswith("brk-r0") else 1
        assert cfg["cluster"]["nodeId"] == host_vars["broker_ordinal"] * 2 + region_id
        assert cfg["cluster"]["region"] == f"region{region_id}"
        assert cfg["cluster"]["clusterSize"] == 8
        assert sorted(cfg["cluster"]["initialContactPoints"]) == internal
        assert cfg["network"]["gateway"]["port"] == host_vars["broker_gateway_port"]
        export = inv.var / "export"  # one shared sink per exporter (region)
        assert cfg["exporters"] == {
            f"region{i}": {"type": "file", "args": {"path": f"{export}/region{i}"}} for i in (0, 1)
        }
    pids = inv.pids()
    assert set(pids) == set(inv.hosts) and all(pid_alive(p) for p in pids.values()), pids

    # every partition has a leader, as any broker sees it
    topo = topology(inv, "brk-r1-h3")
    assert sorted(leaders(topo)) == list(range(1, PARTITIONS + 1)), topo

    # --- an immediate re-run changes nothing ---------------------------------------
    run = ansible_playbook(inv.path, "playbooks/deploy.yml")
    times["re-run"] = run.seconds
    assert run.returncode == 0, str(run)
    assert run.changed == 0, f"re-run changed {run.recap}\n{run}"
    assert inv.pids() == pids, "the re-run restarted brokers"

    # --- verify is read-only and passes in check mode ------------------------------
    run = ansible_playbook(inv.path, "playbooks/verify.yml", "--check")
    times["verify --check"] = run.seconds
    assert run.returncode == 0, str(run)
    assert run.changed == 0, str(run)
    assert "placement ok (runtime): 8 partitions" in run.output, str(run)

    # --- the README's default path: lose region1, fab failover, rebuild, fab failback --
    times.update(fail_over_and_back(inv, tmp_path))
    pids = inv.pids()  # region1 runs new processes now
    assert set(pids) == set(inv.hosts) and all(pid_alive(p) for p in pids.values()), pids

    # --- deploy in check mode with a changed setting: reports, touches nothing -----
    before = {host: inv.config(host).read_text() for host in inv.hosts}
    run = ansible_playbook(
        inv.path, "playbooks/deploy.yml", "--check", "--diff", "-e", "broker_snapshot_period=4m"
    )
    times["deploy --check --diff (changed setting)"] = run.seconds
    assert run.returncode == 0, str(run)
    # the config task reports the change on every host; its diff is never shown (token)
    config_task = run.output.split("TASK [broker : Write the broker configuration]")[1]
    config_task = config_task.split("TASK [")[0]
    assert all(f"changed: [{host}]" in config_task for host in inv.hosts), str(run)
    assert "snapshotPeriod" not in run.output, str(run)
    assert "would restart, one at a time: brk-r0-h0, brk-r0-h1," in run.output, str(run)
    assert {host: inv.config(host).read_text() for host in inv.hosts} == before
    assert inv.pids() == pids, "check mode restarted brokers"

    # --- a rolling restart: every broker gets a new process, the cluster stays whole --
    run = ansible_playbook(inv.path, "playbooks/restart.yml")
    times["rolling restart"] = run.seconds
    assert run.returncode == 0, str(run)
    order = re.findall(
        r"^included: \S+/restart_one\.yml for \S+ => \(item=(\S+)\)$", run.output, re.M
    )
    assert order == [f"brk-r0-h{i}" for i in range(4)] + [f"brk-r1-h{i}" for i in range(4)], (
        f"not region by region: {order}\n{run}"
    )
    new_pids = inv.pids()
    assert all(new_pids[h] != pids[h] and pid_alive(new_pids[h]) for h in inv.hosts), new_pids
    topo = topology(inv, "brk-r0-h0")
    assert sorted(leaders(topo)) == list(range(1, PARTITIONS + 1)), topo

    # --- backup.yml while writes go on, then restore.yml: back to the backup ----------
    times.update(back_up_and_restore(inv))
    new_pids = inv.pids()

    # --- scale.yml: in to 4 brokers and out to 8 again, under a write load -----------
    times.update(scale_in_and_out(inv))
    new_pids = inv.pids()

    # --- remove refuses without confirmation ---------------------------------------
    run = ansible_playbook(inv.path, "playbooks/remove.yml")
    assert run.returncode != 0, str(run)
    assert "-e broker_remove_confirm=true" in run.flat(), str(run)
    assert all(pid_alive(p) for p in new_pids.values()), "remove without confirmation stopped"
    assert all((inv.host_dir(h) / "data").is_dir() for h in inv.hosts)

    # --- and with it stops everything and deletes the data -------------------------
    new_pids = inv.pids()
    run = ansible_playbook(inv.path, "playbooks/remove.yml", "-e", "broker_remove_confirm=true")
    times["remove"] = run.seconds
    assert run.returncode == 0, str(run)
    assert not (inv.var / "export").exists(), "remove left the shared export sinks"
    alive = {h: p for h, p in new_pids.items() if pid_alive(p)}
    assert not alive, f"still running after remove: {alive}\n{run}"
    for host in inv.hosts:
        left = [p.name for p in inv.host_dir(host).iterdir()] if inv.host_dir(host).exists() else []
        assert left == [], f"{host}: remove left {left}"

    summary = ", ".join(f"{step} {seconds:.1f}s" for step, seconds in times.items())
    for step, seconds in times.items():
        record_property(step, round(seconds, 1))
    with capsys.disabled():
        print(f"\nansible on the local inventory: {summary}")


def back_up_and_restore(inv: LocalInventory) -> dict[str, float]:
    """backup.yml under load, more writes, then restore.yml: exactly the records up to each
    partition's checkpoint come back, at their positions; restore refuses unconfirmed."""
    times = {}
    gateways = ",".join(f"127.0.0.1:{v['broker_gateway_port']}" for v in inv.hosts.values())
    with BrokerClient(gateways, timeout=15, ssl_context=inv.ssl_context()) as client:
        before = write(client, 400, "before-backup")
        run = ansible_playbook(inv.path, "playbooks/backup.yml", "-e", "broker_backup_id=1")
        times["backup.yml"] = run.seconds
        assert run.returncode == 0, str(run)
        assert "backup 1 COMPLETED" in run.output, str(run)
        state = json.loads(inv.open("brk-r0-h0", "/actuator/backups/1").read())
        cuts = {d["partitionId"]: d["checkpointPosition"] for d in state["details"]}
        assert sorted(cuts) == list(range(1, PARTITIONS + 1)) and state["state"] == "COMPLETED"
        after = write(client, 200, "after-backup")
    run = ansible_playbook(inv.path, "playbooks/restore.yml", "-e", "broker_backup_id=1")
    assert run.returncode != 0 and "broker_restore_confirm=true" in run.flat(), str(run)
    run = ansible_playbook(
        inv.path,
        "playbooks/restore.yml",
        "-e",
        "broker_backup_id=1",
        "-e",
        "broker_restore_confirm=true",
    )
    times["restore.yml"] = run.seconds
    assert run.returncode == 0, str(run)
    with BrokerClient(gateways, timeout=15, ssl_context=inv.ssl_context()) as client:
        assert_all_readable(client, before)  # all before the backup: before the checkpoints
        kept = {r: v for r, v in after.items() if v[1] <= cuts[v[0]]}
        assert_all_readable(client, kept)
        for p in range(1, PARTITIONS + 1):
            last = client.read(p, cuts[p] + 1, 10)
            assert last.records == [], f"partition {p} kept records after its checkpoint"
    return times


def members(inv: LocalInventory) -> list[int]:
    doc = json.loads(inv.open("brk-r0-h0", "/actuator/cluster").read())
    return sorted(b["id"] for b in doc["brokers"] if b["state"] != "LEFT")


def scale_in_and_out(inv: LocalInventory) -> dict[str, float]:
    """scale.yml -e broker_scale_size=4, then scale.yml (the whole inventory) again,
    while a load writes: the brokers that leave are stopped, those that join host
    partitions 2+2 per region again, and every acknowledged record is read back."""
    times = {}
    gateways = ",".join(
        f"127.0.0.1:{inv.hosts[h]['broker_gateway_port']}" for h in ("brk-r0-h0", "brk-r1-h0")
    )
    load = WriteLoad(gateways, prefix="scale", rate=50, ssl_context=inv.ssl_context())
    leaving = [f"brk-r{r}-h{o}" for r in (0, 1) for o in (2, 3)]
    pids = inv.pids()
    load.start()
    try:
        wait_for(lambda: len(load.snapshot()) >= 20, 30, "the load to be acknowledged")
        run = ansible_playbook(inv.path, "playbooks/scale.yml", "-e", "broker_scale_size=2")
        assert run.returncode != 0 and "the target must be brokers 0..N-1" not in run.flat()
        assert "Preflight refused scaling to 2 brokers" in run.flat(), str(run)
        run = ansible_playbook(
            inv.path, "playbooks/scale.yml", "--check", "-e", "broker_scale_size=4"
        )
        assert run.returncode == 0, str(run)
        assert "8 -> 4 brokers" in run.output and members(inv) == list(range(8)), str(run)
        run = ansible_playbook(inv.path, "playbooks/scale.yml", "-e", "broker_scale_size=4")
        times["scale.yml 8 -> 4"] = run.seconds
        assert run.returncode == 0, str(run)
        assert "placement ok (runtime): 8 partitions" in run.output, str(run)
        assert members(inv) == [0, 1, 2, 3]
        assert not any(pid_alive(pids[h]) for h in leaving), "the brokers that left still run"
        run = ansible_playbook(inv.path, "playbooks/scale.yml")
        times["scale.yml 4 -> 8"] = run.seconds
        assert run.returncode == 0, str(run)
        assert "4 -> 8 brokers" in run.output, str(run)
        assert "placement ok (runtime): 8 partitions" in run.output, str(run)
        assert members(inv) == list(range(8))
        again = inv.pids()
        kept = [h for h in inv.hosts if h not in leaving]
        assert all(again[h] == pids[h] for h in kept), "scale.yml restarted running brokers"
    finally:
        load.stop()
    acked = load.snapshot()
    rb = read_back(gateways, acked, PARTITIONS, load.prefix, ssl_context=inv.ssl_context())
    assert len(acked) >= 20 and not rb.lost, rb.lost[:5]
    return times


def fab(inv: LocalInventory, audit: Path, *args: str) -> Run:
    cmd = [tool("fab"), "--inventory", str(inv.path), *args]
    start = time.monotonic()
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        env=ansible_env(BROKER_OPS_AUDIT_DIR=str(audit), COLUMNS="200"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
        check=False,
    )
    return Run(cmd, proc.returncode, proc.stdout, time.monotonic() - start)


def audit_records(audit: Path) -> dict[str, dict]:
    """procedure-region -> its audit record (the latest of each)."""
    out = {}
    for path in sorted(audit.glob("*.json")):
        record = json.loads(path.read_text())
        out[f"{record['procedure']}-{record['region']}"] = record
    return out


def fail_over_and_back(inv: LocalInventory, tmp_path: Path) -> dict[str, float]:
    """On the deployed copy of inventories/local, as is (its export-sink layout
    included): stop region1, `fab failover`, wipe region1's disks, `fab start-region`,
    `fab failback`. Every acknowledged record survives, both regions' sinks hold the
    same records, and the placement is 2 of 4 replicas per region again."""
    audit = tmp_path / "audit"
    times = {}
    gateways = ",".join(f"127.0.0.1:{v['broker_gateway_port']}" for v in inv.hosts.values())
    with BrokerClient(gateways, timeout=20, ssl_context=inv.ssl_context()) as client:
        acked = {}
        for p in range(1, PARTITIONS + 1):
            acked.update(write(client, 5, f"before-p{p}", partition=p))
    assert len(acked) == 5 * PARTITIONS
    region1 = [h for h in inv.hosts if h.startswith("brk-r1")]

    run = fab(inv, audit, "stop-region", "--region", "region1", "--yes")
    assert run.returncode == 0, str(run)
    stopped = lambda: not any(pid_alive(p) for h, p in inv.pids().items() if h in region1)  # noqa: E731
    wait_for(stopped, 30, "region1's brokers to exit")

    run = fab(inv, audit, "failover", "--lost-region", "region1", "--yes")
    times["fab failover"] = run.seconds
    assert run.returncode == 0, str(run)
    assert "failover of region1: completed" in run.output, str(run)

    # region1 is rebuilt: empty data disks (its export sink stays, stale)
    for host in region1:
        shutil.rmtree(inv.host_dir(host) / "data")
    run = fab(inv, audit, "start-region", "--region", "region1", "--yes")
    assert run.returncode == 0, str(run)

    run = fab(inv, audit, "failback", "--region", "region1", "--yes")
    times["fab failback"] = run.seconds
    assert run.returncode == 0, str(run)
    assert "failback of region1: completed" in run.output, str(run)
    records = audit_records(audit)
    for name in ("stop-region", "failover", "start-region", "failback"):
        assert records[f"{name}-region1"]["outcome"] == "completed", records[f"{name}-region1"]
    steps = {s["name"]: s for s in records["failback-region1"]["steps"]}
    sink = inv.var / "export"
    assert steps["restore_export_sink"]["status"] == "done", steps["restore_export_sink"]
    assert f"copied it to {sink / 'region1'}" in steps["restore_export_sink"]["did"]

    # placement restored: every partition has 4 replicas, 2 in each region
    run = fab(inv, audit, "verify")
    assert run.returncode == 0, str(run)
    assert "8 partitions, 4 replicas each (2+2 per region), one healthy leader each" in (
        run.output
    ), str(run)
    assert "verify dual-region: completed" in run.output, str(run)
    with BrokerClient(gateways, timeout=20, ssl_context=inv.ssl_context()) as client:
        for p in range(1, PARTITIONS + 1):
            acked.update(write(client, 5, f"after-p{p}", partition=p))
        assert_all_readable(client, acked)
    for region in ("region0", "region1"):
        wait_for(lambda r=region: complete_in_order(str(sink / r), acked), 30, f"{region}'s sink")
    assert sink_records(str(sink / "region1")) == sink_records(str(sink / "region0"))
    return times


def test_check_mode_on_fresh_hosts_reports_and_touches_nothing(tmp_path, broker_sources):
    inv = make_local_inventory(tmp_path, broker_sources)

    run = ansible_playbook(inv.path, "playbooks/deploy.yml", "--check", "--diff")

    assert run.returncode == 0, str(run)
    assert run.changed > 0, f"check mode reported nothing to do on fresh hosts\n{run}"
    # the config task reports the change, but never diffs the file: it holds the token
    config_task = run.output.split("TASK [broker : Write the broker configuration]", 1)[1]
    assert "changed: [brk-r1-h3]" in config_task.split("TASK [", 1)[0], str(run)
    assert "nodeId: 7" not in run.output, str(run)
    assert not inv.var.exists(), f"check mode created {sorted(inv.var.rglob('*'))[:5]}"
    assert not inv.pids()
