"""The ops library and fab on lab hosts that boot systemd, logged into as the non-root
``deploy`` with ``ansible_become: true``: the operator's real path (issue 10).

One systemd lab per module (2 hosts per region). Every check on a host (unit state, main
pid, nftables) is made the way the ops library makes it: over SSH as ``deploy``, with sudo.

Always (``make test``, about a minute): the login and become rules on a real host; the
``InventoryControl`` that every fab task uses starts, stops and SIGKILLs a systemd unit
through sudo (a stand-in unit: no deploy needed); ``fab isolate-region``/``heal-region``
cut and restore the network with nft under sudo.

With ``BROKER_LONG_TESTS=1`` (minutes: ``BROKER_LONG_TESTS=1 .venv/bin/pytest -q
tests/lab/test_lab_ops_systemd.py``): the cluster is deployed with the real playbook
(``broker_service_manager: systemd``, 4 partitions, RF 4, TLS on every channel as `lab up`
writes it by default), then ``fab stop-region`` / ``start-region``, ``fab rolling-restart``
under a write load, ``playbooks/rotate-certs.yml`` under a write load, and ``fab drill
--region region1`` with no acknowledged record lost, each as an operator runs it
(``fab --inventory <lab> <task> --yes`` or ``ansible-playbook``) in a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509

from broker.lab import Lab, unavailable_reason
from broker.lab import systemd as lab_systemd
from broker.ops import InventoryControl, load_inventory
from broker.ops.control import run_on
from broker.ops.load import WriteLoad, read_back
from broker.ops.steps import StepFailed
from broker.ops.view import first_answering, replica_sets
from tests.ansible.conftest import ansible_playbook
from tests.helpers import wait_until
from tests.labutil import longest_stall, machine_lock, owned_lab, skip_for_foreign_lab

REASON = unavailable_reason() or lab_systemd.unavailable_reason()
if REASON:
    print(f"tests/lab/test_lab_ops_systemd.py skipped: {REASON}")
    pytest.skip(REASON, allow_module_level=True)

pytestmark = pytest.mark.xdist_group("brk-lab")

PROJECT = Path(__file__).resolve().parents[2]
FAB = str(Path(sys.executable).with_name("fab"))
HOSTS_PER_REGION = 2
LONG = os.environ.get("BROKER_LONG_TESTS") == "1"
long_only = pytest.mark.skipif(not LONG, reason="minutes long: set BROKER_LONG_TESTS=1 to run it")


def fab(inventory: Path, *args: str, audit: Path, timeout: float = 300):
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


def output(run: subprocess.CompletedProcess) -> str:
    return " ".join((run.stdout + run.stderr).split())


def figure(out: str, label: str) -> str:
    """A value from the drill's figures table (a row "│ label │ value │")."""
    match = re.search(rf"│\s*{re.escape(label)}\s*│\s*([^│]+?)\s*│", out)
    assert match, f"no {label!r} in:\n{out[-3000:]}"
    return match.group(1)


@pytest.fixture(scope="module")
def systemd_lab(tmp_path_factory):
    with machine_lock():
        skip_for_foreign_lab()
        root = tmp_path_factory.mktemp("lab-systemd")
        lab = Lab(
            root / "var-lab", inventory=root / "inventories" / "lab" / "hosts.yml", init="systemd"
        )
        with owned_lab(lab.dir):
            try:
                lab.up(HOSTS_PER_REGION)
                yield lab
            finally:
                lab.down(purge=True)


@pytest.fixture(scope="module")
def deployed(systemd_lab):
    """The cluster on the module's lab, deployed once, by the first test that needs it."""
    run = ansible_playbook(systemd_lab.inventory, "playbooks/deploy.yml")
    assert run.returncode == 0, str(run)
    print(f"\nsystemd lab: deploy of {2 * HOSTS_PER_REGION} hosts {run.seconds:.1f}s")
    return systemd_lab


@pytest.fixture
def cluster(systemd_lab):
    return load_inventory(systemd_lab.inventory)


def unit(broker, prop: str, name: str = "broker") -> str:
    """A property of a unit (the broker's), read on its host as deploy with become."""
    return run_on(broker, f"systemctl show -p {prop} --value {name}").strip()


def states(brokers) -> dict[int, str]:
    return {b.node_id: unit(b, "ActiveState") for b in brokers}


def main_pids(brokers) -> dict[int, int]:
    return {b.node_id: int(unit(b, "MainPID")) for b in brokers}


def verified(inventory: Path, audit: Path) -> bool:
    """``fab verify`` passes: every partition led, placed and writable."""
    return fab(inventory, "verify", audit=audit, timeout=120).returncode == 0


def test_the_lab_is_the_operators_path_deploy_with_become(cluster):
    for b in cluster.brokers:
        assert b.vars["ansible_user"] == "deploy"
        assert str(b.vars["ansible_become"]).lower() in ("true", "yes")
        assert b.vars["broker_service_manager"] == "systemd"
        assert not b.is_local
    b = cluster.brokers[0]
    assert run_on(b, "id -un; cat /proc/1/comm") == "root\nsystemd\n"  # via sudo, on systemd
    plain = replace(b, vars={**b.vars, "ansible_become": False})
    assert run_on(plain, "id -un") == "deploy\n"
    # without become: a root command is refused before it runs, and a denied one says why
    with pytest.raises(StepFailed, match="set ansible_become: true"):
        run_on(plain, "systemctl stop ssh", root=True)
    with pytest.raises(StepFailed) as exc:
        run_on(plain, "/usr/sbin/nft list tables")
    assert "Operation not permitted" in exc.value.saw
    assert "without become" in exc.value.saw and "set ansible_become: true" in exc.value.saw
    # another become method is refused, not run without privileges
    with pytest.raises(StepFailed, match="ansible_become_method 'su' is not supported"):
        run_on(replace(b, vars={**b.vars, "ansible_become_method": "su"}), "id -un")


STANDIN = "brk-standin"


def test_inventory_control_drives_a_systemd_unit_through_sudo(cluster):
    """start, stop and kill as every fab task does them (InventoryControl), on a unit that
    stands in for the broker's, so no deploy is needed."""
    b = cluster.in_region("region1")[0]
    run_on(
        b,
        f"printf '%s\\n' '[Service]' 'ExecStart=/bin/sleep infinity' "
        f"> /etc/systemd/system/{STANDIN}.service && systemctl daemon-reload",
        root=True,
    )
    standin = replace(b, vars={**b.vars, "broker_service_name": STANDIN})
    control = InventoryControl()
    try:
        assert control.start(standin) == f"started broker {b.node_id} over SSH"
        assert unit(b, "ActiveState", STANDIN) == "active"
        first = int(unit(b, "MainPID", STANDIN))
        assert first > 0
        assert control.kill(standin) == f"killed broker {b.node_id} over SSH"
        assert unit(b, "ActiveState", STANDIN) in ("failed", "inactive")
        assert unit(b, "Result", STANDIN) == "signal"  # SIGKILLed, not stopped
        assert int(unit(b, "MainPID", STANDIN)) == 0
        control.start(standin)
        second = int(unit(b, "MainPID", STANDIN))
        assert second > 0 and second != first
        assert control.stop(standin) == f"stopped broker {b.node_id} over SSH"
        assert unit(b, "ActiveState", STANDIN) == "inactive"
        assert unit(b, "Result", STANDIN) == "success"
        control.stop(standin)  # idempotent
        # the same call without become: refused, and the unit is left as it was
        plain = replace(standin, vars={**standin.vars, "ansible_become": False})
        with pytest.raises(StepFailed, match="set ansible_become: true"):
            control.start(plain)
        assert unit(b, "ActiveState", STANDIN) == "inactive"
    finally:
        run_on(
            b,
            f"systemctl stop {STANDIN}; rm -f /etc/systemd/system/{STANDIN}.service; "
            "systemctl daemon-reload",
            root=True,
        )


@long_only
def test_stop_and_start_region_with_systemctl_under_sudo(deployed, cluster, tmp_path):
    region, other = cluster.in_region("region1"), cluster.in_region("region0")
    stop = fab(deployed.inventory, "stop-region", "--region", "region1", "--yes", audit=tmp_path)
    assert stop.returncode == 0, output(stop)[-3000:]
    try:
        assert set(states(region).values()) == {"inactive"}, output(stop)[-2000:]
        assert set(states(other).values()) == {"active"}
    finally:
        start = fab(
            deployed.inventory, "start-region", "--region", "region1", "--yes", audit=tmp_path
        )
    assert start.returncode == 0, output(start)[-3000:]
    assert set(states(region).values()) == {"active"}
    assert all(pid > 0 for pid in main_pids(region).values())
    records = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*-region-*.json"))]
    assert sorted((r["procedure"], r["outcome"]) for r in records) == [
        ("start-region", "completed"),
        ("stop-region", "completed"),
    ]
    wait_until(lambda: verified(deployed.inventory, tmp_path), 120, interval=1)


def test_isolate_and_heal_region_with_nft_under_sudo(systemd_lab, cluster, tmp_path):
    region = cluster.in_region("region1")
    table = "table inet brk_isolate"
    isolate = ("isolate-region", "--region", "region1", "--yes")
    cut = fab(systemd_lab.inventory, *isolate, audit=tmp_path)
    try:
        assert cut.returncode == 0, output(cut)[-3000:]
        assert "no longer reaches" in output(cut)
        assert all(table in run_on(b, "nft list tables", root=True) for b in region)
    finally:
        heal = fab(systemd_lab.inventory, "heal-region", "--region", "region1", audit=tmp_path)
    assert heal.returncode == 0, output(heal)[-3000:]
    assert "reaches" in output(heal) and "again" in output(heal)
    assert not any(table in run_on(b, "nft list tables", root=True) for b in region)
    if LONG:  # the cluster is deployed (long tests before this one): whole again
        wait_until(lambda: verified(systemd_lab.inventory, tmp_path), 120, interval=1)


@long_only
def test_rolling_restart_restarts_every_unit_and_keeps_writing(deployed, cluster, tmp_path):
    before = main_pids(cluster.brokers)
    gateways = ",".join(b.gateway for b in cluster.brokers)
    load = WriteLoad(
        gateways, prefix="lab-systemd-rolling", rate=100, ssl_context=cluster.ssl_context()
    )
    load.start()
    try:
        run = fab(deployed.inventory, "rolling-restart", "--yes", audit=tmp_path, timeout=600)
    finally:
        load.stop()
    assert run.returncode == 0, output(run)[-5000:]
    (record,) = [json.loads(p.read_text()) for p in tmp_path.glob("*-rolling-restart-*.json")]
    assert record["outcome"] == "completed"
    restarted = [s["name"] for s in record["steps"] if s["status"] == "done"]
    assert restarted == ["verify_placement", *(f"restart_broker_{n}" for n in (0, 2, 1, 3))]
    after = main_pids(cluster.brokers)
    assert all(after[n] > 0 and after[n] != before[n] for n in before), (before, after)
    rb = read_back(
        gateways,
        load.snapshot(),
        cluster.partitions,
        load.prefix,
        ssl_context=cluster.ssl_context(),
    )
    assert not rb.lost and rb.found == rb.acknowledged > 0


def serials(brokers) -> dict[int, str]:
    """node id -> serial number of the certificate the broker's TLS directory holds."""
    out = {}
    for b in brokers:
        pem = run_on(b, "cat /etc/broker/tls/broker.crt", root=True)
        out[b.node_id] = str(x509.load_pem_x509_certificate(pem.encode()).serial_number)
    return out


@long_only
def test_rotate_certs_under_load_loses_nothing(deployed, cluster, tmp_path, capsys):
    """The TLS lab (the default of `lab up`): playbooks/rotate-certs.yml in its default
    mode (every broker a new key and certificate of the same CA, one broker at a time,
    each restarted) while a write load runs; nothing acknowledged is lost."""
    assert cluster.tls is not None, "the lab's inventory turns TLS on by default"
    before = serials(cluster.brokers)
    gateways = ",".join(b.gateway for b in cluster.brokers)
    ctx = cluster.ssl_context()
    load = WriteLoad(gateways, prefix="lab-rotate", rate=100, ssl_context=ctx, max_seconds=900)
    load.start()
    try:
        start = time.monotonic()
        run = ansible_playbook(deployed.inventory, "playbooks/rotate-certs.yml")
        end = time.monotonic()
    finally:
        load.stop()
    assert run.returncode == 0, str(run)
    after = serials(cluster.brokers)
    assert all(after[n] != before[n] for n in before), (before, after)
    acks = load.snapshot()
    rb = read_back(gateways, acks, cluster.partitions, load.prefix, ssl_context=ctx)
    assert not rb.lost and rb.found == rb.acknowledged > 0, rb.lost[:5]
    gap = longest_stall(acks, start, end)
    assert gap < 15.0, f"no acknowledgement for {gap:.1f}s during the rotation"
    with capsys.disabled():
        print(
            f"\nrotate-certs.yml under load (TLS lab, {len(cluster.brokers)} systemd hosts): "
            f"{end - start:.1f}s, {rb.acknowledged} acknowledged, {len(rb.lost)} lost, "
            f"longest acknowledgement gap {gap:.2f}s, failed appends {load.failed}"
        )


@long_only
def test_drill_of_region1_loses_no_acknowledged_record(deployed, cluster, tmp_path):
    run = fab(deployed.inventory, "drill", "--region", "region1", "--yes", audit=tmp_path)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-5000:]
    acked = int(figure(out, "records acknowledged"))
    assert acked > 0
    assert int(figure(out, "records found afterwards")) == acked
    assert figure(out, "acknowledged records LOST") == "0"
    print(
        "\nsystemd drill of region1 (deploy + become): "
        + ", ".join(
            f"{k} {figure(out, k)}"
            for k in (
                "records acknowledged",
                "loss detected by the survivors after",
                "failover RTO (start to a write on every partition)",
                "failback duration",
                "catch-up",
            )
        )
    )
    doc = first_answering(cluster, cluster.brokers)[2]
    assert all(r == set(cluster.ids()) for r in replica_sets(doc).values())
    assert set(states(cluster.brokers).values()) == {"active"}
