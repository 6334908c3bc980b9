"""The playbooks against 8 real brokers on 127.0.0.1 (a temporary copy of inventories/local).

One test walks the whole lifecycle, because every step needs the cluster the
previous one left (and pytest-xdist may otherwise split the steps across
workers): deploy, an unchanged re-run, verify in check mode, a rolling
restart, remove without and with confirmation. The finalizer stops every
broker by its pid file whatever happens.
"""

from __future__ import annotations

import json
import re
import urllib.request

import pytest
import yaml

from .conftest import LocalInventory, ansible_playbook, make_local_inventory, pid_alive

pytestmark = pytest.mark.slow

PARTITIONS = 8


@pytest.fixture
def local_inventory(tmp_path, broker_sources):
    inv = make_local_inventory(tmp_path, broker_sources)
    yield inv
    inv.stop_all()


def topology(inv: LocalInventory, host: str) -> dict:
    port = inv.hosts[host]["broker_management_port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/topology", timeout=5) as resp:
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
def test_local_inventory_lifecycle(local_inventory, record_property, capsys):
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
        export = inv.host_dir(host) / "export"
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

    # --- deploy in check mode with a changed setting: reports, touches nothing -----
    before = {host: inv.config(host).read_text() for host in inv.hosts}
    run = ansible_playbook(
        inv.path, "playbooks/deploy.yml", "--check", "--diff", "-e", "broker_snapshot_period=4m"
    )
    times["deploy --check --diff (changed setting)"] = run.seconds
    assert run.returncode == 0, str(run)
    assert "+  snapshotPeriod: 4m" in run.output, str(run)
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

    # --- remove refuses without confirmation ---------------------------------------
    run = ansible_playbook(inv.path, "playbooks/remove.yml")
    assert run.returncode != 0, str(run)
    assert "-e broker_remove_confirm=true" in run.flat(), str(run)
    assert all(pid_alive(p) for p in new_pids.values()), "remove without confirmation stopped"
    assert all((inv.host_dir(h) / "data").is_dir() for h in inv.hosts)

    # --- and with it stops everything and deletes the data -------------------------
    run = ansible_playbook(inv.path, "playbooks/remove.yml", "-e", "broker_remove_confirm=true")
    times["remove"] = run.seconds
    assert run.returncode == 0, str(run)
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


def test_check_mode_on_fresh_hosts_reports_and_touches_nothing(tmp_path, broker_sources):
    inv = make_local_inventory(tmp_path, broker_sources)

    run = ansible_playbook(inv.path, "playbooks/deploy.yml", "--check", "--diff")

    assert run.returncode == 0, str(run)
    assert run.changed > 0, f"check mode reported nothing to do on fresh hosts\n{run}"
    assert "+  nodeId: 7" in run.output, str(run)  # the diff of brk-r1-h3's broker.yaml
    assert not inv.var.exists(), f"check mode created {sorted(inv.var.rglob('*'))[:5]}"
    assert not inv.pids()
