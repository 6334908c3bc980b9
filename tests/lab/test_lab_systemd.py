"""Lab hosts that boot systemd (``lab up --init systemd``), and the broker role on them.

One module lab of 2 hosts per region (tests/lab/conftest.py ``systemd_lab``), always torn
down. The lab tests (boot, identity, login as deploy with sudo, the inventory, region loss,
hard kill and boot again, teardown after a crash) always run. The role's lifecycle on those
hosts over SSH as deploy with become (deploy, unchanged re-run, restart.yml, kill -9 of the
broker and systemd's restart, systemd-analyze security, remove.yml) takes minutes on a busy
machine: it runs with ``BROKER_LONG_TESTS=1``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from broker.lab import Lab, LabHost, network, systemd, unavailable_reason
from broker.lab import inventory as lab_inventory
from tests.helpers import wait_until

REASON = unavailable_reason() or systemd.unavailable_reason()
if REASON:
    print(f"tests/lab/test_lab_systemd.py skipped: {REASON}")
    pytest.skip(REASON, allow_module_level=True)

# the lab is machine-wide: with `pytest -n --dist loadgroup` all of it runs on one worker
pytestmark = pytest.mark.xdist_group("brk-lab")

FULL = os.environ.get("BROKER_LONG_TESTS") == "1"
VENV_BIN = Path(sys.executable).parent
FAKE_UNIT = "brk-fake-broker"
FAKE_UNIT_FILE = f"/run/systemd/system/{FAKE_UNIT}.service"
# a process the lab counts as a broker (`python -m broker run`), sleeping
FAKE_BROKER = '/usr/bin/python3 -c "import time; time.sleep(900)" -m broker run'


def region(lab: Lab, name: str) -> list[LabHost]:
    return [h for h in lab.hosts if h.region == name]


def ssh_ok(lab: Lab, host: LabHost, command: str, **kw) -> str:
    res = lab.ssh(host, command, **kw)
    assert res.returncode == 0, f"{host.name}: {command}: {res.stderr}{res.stdout}"
    return res.stdout


def unit_state(lab: Lab, host: LabHost, unit: str) -> dict[str, str]:
    out = ssh_ok(
        lab, host, f"systemctl show -p ActiveState -p SubState -p MainPID -p NRestarts {unit}"
    )
    return dict(line.split("=", 1) for line in out.split())


def machine_enabled_units() -> set[str]:
    """Units the machine itself enables (what a lab host must not start), sshd aside."""
    system = Path("/etc/systemd/system")
    return {
        link.name
        for pattern in ("*.wants/*", "*.requires/*")
        for link in system.glob(pattern)
        if link.is_symlink()
    } - systemd.KEEP_ENABLED


# --- hosts ------------------------------------------------------------------------------------


def check_identity(lab: Lab, h: LabHost, masked: list[str], probe: Path) -> tuple[str, str]:
    """One host's name, login, sudo, state, private /tmp, hidden lab key, masked units;
    returns (machine id, host key fingerprint)."""
    out = ssh_ok(
        lab,
        h,
        "hostname; cat /etc/machine-id; id -un; sudo -n id -u; "
        "sudo -n ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub; "
        "systemctl is-system-running; systemctl is-active ssh; "
        f"test -e {probe} && echo tmp-shared || echo tmp-private; "
        f"echo host > {probe}.host; "
        f"test -e {shlex.quote(str(lab.key))} && echo key-visible || echo key-hidden; "
        f"systemctl is-enabled {' '.join(masked)} console-getty.service || true",
    )
    lines = out.splitlines()
    name, machine_id, user, uid, fingerprint = lines[:5]
    system, ssh_state, tmp, key = lines[5:9]
    assert (name, user, uid, ssh_state) == (h.name, "deploy", "0", "active"), out
    assert system in systemd.READY_STATES, out
    assert tmp == "tmp-private", "the host sees the machine's /tmp"
    assert key == "key-hidden", "the controller's lab key is readable in the host"
    assert set(lines[9:]) == {"masked"}, f"units the machine enables run in {h.name}: {out}"
    return machine_id, fingerprint.split()[1]


def test_hosts_boot_systemd_with_their_own_identity_and_a_deploy_login(systemd_lab):
    lab = systemd_lab
    rows = lab.status()
    assert [r["name"] for r in rows] == [h.name for h in lab.hosts]
    for r in rows:
        assert r["init"] == "systemd" and r["system"] in systemd.READY_STATES, r
        assert r["netns"] and r["sshd"] and r["ssh"] and r["brokers"] == 0, r

    masked = sorted(machine_enabled_units())
    seen = {}
    probe = Path("/tmp") / f"lab-tmp-probe-{uuid.uuid4().hex}"  # on the machine's /tmp
    probe.write_text("machine")
    try:
        for h in lab.hosts:
            seen[h.name] = check_identity(lab, h, masked, probe)
    finally:
        probe.unlink()
    assert not probe.with_suffix(".host").exists(), "a host's /tmp is the machine's"
    machine_ids = [m for m, _ in seen.values()]
    fingerprints = [f for _, f in seen.values()]
    assert len(set(machine_ids)) == len(machine_ids), seen
    assert Path("/etc/machine-id").read_text().strip() not in machine_ids
    assert len(set(fingerprints)) == len(fingerprints), seen
    # no root login over SSH; the host key the client sees is the host's own
    h = lab.hosts[0]
    assert lab.ssh(h, "true", user="root").returncode == 255
    res = subprocess.run(
        ["ssh-keyscan", "-t", "ed25519", h.address], capture_output=True, text=True, timeout=30
    )
    scanned = subprocess.run(
        ["ssh-keygen", "-lf", "-"], input=res.stdout, capture_output=True, text=True, timeout=30
    )
    assert seen[h.name][1] in scanned.stdout

    # the CLI names the init kind
    res = subprocess.run(
        [sys.executable, "-m", "broker.lab", "status", "--dir", str(lab.dir)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("systemd (running)") + res.stdout.count("systemd (degraded)") == 4


def test_inventory_logs_in_as_deploy_and_becomes_root(systemd_lab):
    lab = systemd_lab
    doc = yaml.safe_load(lab.inventory.read_text())["all"]
    assert doc["vars"]["broker_export_dir"] == f"{systemd.SHARED_MOUNT}/export"
    assert doc["vars"]["broker_export_sinks"] == {
        r: str(lab.shared_dir / "export" / r) for r in ("region0", "region1")
    }
    assert doc["children"]["brokers"]["vars"] == {
        "ansible_user": "deploy",
        "ansible_become": True,
        "ansible_ssh_private_key_file": str(lab.key),
        "ansible_ssh_common_args": lab_inventory.SSH_ARGS,
        "ansible_python_interpreter": "/usr/bin/python3",
        "broker_service_manager": "systemd",
    }
    res = subprocess.run(
        [str(VENV_BIN / "ansible"), "brokers", "-i", str(lab.inventory), "-o",
         "-m", "ansible.builtin.command", "-a", "id -un"],
        capture_output=True, text=True, timeout=180,
        env={**os.environ, "ANSIBLE_CONFIG": str(Path(__file__).parents[2] / "ansible.cfg")},
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    for h in lab.hosts:
        assert re.search(rf"^{h.name} \| CHANGED \| rc=0 \| \(stdout\) root$", res.stdout, re.M)
    # the shared export directory: what a host writes there, the controller sees
    token = uuid.uuid4().hex
    h = lab.hosts[-1]
    ssh_ok(lab, h, f"echo {token} | sudo -n tee {systemd.SHARED_MOUNT}/export/{token}")
    assert (lab.shared_dir / "export" / token).read_text().strip() == token
    assert lab.host_path(h, "/etc/hostname").read_text().strip() == h.name


# --- faults -----------------------------------------------------------------------------------


def start_fake_brokers(lab: Lab) -> None:
    """A unit on every host whose process the lab counts as a broker, restarted on failure
    like broker.service."""
    unit = f"[Service]\nExecStart={FAKE_BROKER}\nRestart=on-failure\nRestartSec=1\n"
    for h in lab.hosts:
        ssh_ok(
            lab, h,
            f"printf {shlex.quote(unit)} | sudo -n tee {FAKE_UNIT_FILE} >/dev/null && "
            f"sudo -n systemctl daemon-reload && sudo -n systemctl start {FAKE_UNIT}",
        )  # fmt: skip
    wait_until(lambda: all(r["brokers"] == 1 for r in lab.status()), 30, interval=0.2)


def stop_fake_brokers(lab: Lab) -> None:
    for h in lab.hosts:
        lab.ssh(
            h,
            f"sudo -n systemctl stop {FAKE_UNIT}; sudo -n rm {FAKE_UNIT_FILE}; "
            "sudo -n systemctl daemon-reload; sudo -n systemctl reset-failed",
        )


def test_kill_region_kills_the_brokers_and_keeps_them_down_but_not_the_hosts(systemd_lab):
    lab = systemd_lab
    start_fake_brokers(lab)
    try:
        before = {h.name: unit_state(lab, h, FAKE_UNIT) for h in lab.hosts}
        rows = {r["name"]: r for r in lab.status()}
        assert lab.kill("region1") == 2
        after = {r["name"]: r for r in lab.status()}
        for h in region(lab, "region1"):
            state = unit_state(lab, h, FAKE_UNIT)
            # stopped, not waiting to be restarted (no auto-restart, no job queued)
            assert state["ActiveState"] in ("inactive", "failed"), state
            assert state["SubState"] in ("dead", "failed") and state["MainPID"] == "0", state
            jobs = ssh_ok(lab, h, "systemctl list-jobs --no-legend --plain")
            assert FAKE_UNIT not in jobs, jobs
            assert after[h.name]["brokers"] == 0
        for h in lab.hosts:  # systemd and sshd untouched, every host reachable
            assert after[h.name]["system"] in systemd.READY_STATES, after[h.name]
            assert after[h.name]["sshd_pid"] == rows[h.name]["sshd_pid"]
            assert after[h.name]["ssh"]
        for h in region(lab, "region0"):  # the other region keeps its brokers
            assert unit_state(lab, h, FAKE_UNIT)["MainPID"] == before[h.name]["MainPID"]
            assert after[h.name]["brokers"] == 1
        # the operator's way back: start the unit again
        for h in region(lab, "region1"):
            ssh_ok(lab, h, f"sudo -n systemctl start {FAKE_UNIT}")
            assert unit_state(lab, h, FAKE_UNIT)["ActiveState"] == "active"
    finally:
        stop_fake_brokers(lab)


def test_cut_and_heal_on_systemd_hosts(systemd_lab):
    lab = systemd_lab
    (a0, _), (b0, _) = region(lab, "region0"), region(lab, "region1")
    probe = "import socket, sys; socket.create_connection((sys.argv[1], 22), timeout=1)"

    def tcp_ok(src, dst) -> bool:
        return lab.exec(src, ["python3", "-c", probe, dst.address], timeout=10).returncode == 0

    assert tcp_ok(b0, a0)
    lab.cut("region1")
    try:
        assert not tcp_ok(b0, a0)
        assert all(lab.ssh(h, "true").returncode == 0 for h in lab.hosts)
    finally:
        lab.heal()
    assert tcp_ok(b0, a0)


def test_hard_kill_takes_the_hosts_down_and_up_boots_them_again(systemd_lab):
    lab = systemd_lab
    ids = {h.name: ssh_ok(lab, h, "cat /etc/machine-id /proc/sys/kernel/random/boot_id")
           for h in lab.hosts}  # fmt: skip
    lab.kill("region1", hard=True)
    for h in region(lab, "region1"):
        assert systemd.cgroup_pids(h.name) == [] and network.netns_pids(h.name) == []
        assert lab.ssh(h, "true", connect_timeout=2).returncode == 255
    rows = {r["name"]: r for r in lab.status()}
    for h in lab.hosts:
        assert (rows[h.name]["system"] is None) == (h.region == "region1"), rows[h.name]
        assert rows[h.name]["ssh"] == (h.region == "region0"), rows[h.name]
    lab.up(2, timeout=120)
    for h in lab.hosts:
        machine_id, boot_id = ssh_ok(lab, h, "cat /etc/machine-id /proc/sys/kernel/random/boot_id")\
            .split()  # fmt: skip
        old_machine_id, old_boot_id = ids[h.name].split()
        assert machine_id == old_machine_id, "a host keeps its identity across a boot"
        assert (boot_id != old_boot_id) == (h.region == "region1"), h.name


# --- the role on systemd hosts (BROKER_LONG_TESTS=1) ------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.skipif(not FULL, reason="the role on systemd hosts: BROKER_LONG_TESTS=1")
def test_role_on_systemd_hosts_deploy_rerun_restart_kill9_security_remove(
    systemd_lab, broker_sources, tmp_path, capsys
):
    from tests.ansible.conftest import ansible_playbook

    lab = systemd_lab
    times: dict[str, float] = {}
    names = sorted(h.name for h in lab.hosts)
    build = [
        "-e", f"broker_project_dir={broker_sources}",
        "-e", f"broker_wheelhouse_dir={tmp_path / 'wheels'}",
    ]  # fmt: skip

    def check(run) -> None:
        assert run.returncode == 0, str(run)
        assert sorted(run.recap) == names, str(run)
        assert all(r["failed"] == 0 and r["unreachable"] == 0 for r in run.recap.values()), str(run)

    def main_pids() -> dict[str, int]:
        return {h.name: int(unit_state(lab, h, "broker")["MainPID"]) for h in lab.hosts}

    # --- deploy from scratch over SSH as deploy with become --------------------------------
    run = ansible_playbook(lab.inventory, "playbooks/deploy.yml", *build)
    times["deploy"] = run.seconds
    check(run)
    assert "placement ok (runtime): 4 partitions" in run.output, str(run)
    for h in lab.hosts:
        pid = "$(systemctl show -p MainPID --value broker)"
        out = ssh_ok(
            lab, h, f"systemctl is-active broker; systemctl is-enabled broker; ps -o user= -p {pid}"
        )
        assert out.split() == ["active", "enabled", "broker"], out
    pids = main_pids()
    assert all(pids.values()), pids

    # --- unchanged re-run: changed=0, nothing restarted -------------------------------------
    run = ansible_playbook(lab.inventory, "playbooks/deploy.yml", *build)
    times["re-run"] = run.seconds
    check(run)
    assert {h: r["changed"] for h, r in run.recap.items()} == dict.fromkeys(names, 0), str(run)
    assert main_pids() == pids, "the re-run restarted brokers"

    # --- rolling restart ----------------------------------------------------------------
    run = ansible_playbook(lab.inventory, "playbooks/restart.yml")
    times["restart.yml"] = run.seconds
    check(run)
    restarted = main_pids()
    assert all(restarted[n] and restarted[n] != pids[n] for n in names), (pids, restarted)

    # --- kill -9 of the main process: systemd restarts it (Restart=on-failure) -------------
    victim = lab.hosts[-1]
    old = restarted[victim.name]
    ssh_ok(lab, victim, f"sudo -n kill -9 {old}")
    start = time.monotonic()

    def restarted_by_systemd():
        state = unit_state(lab, victim, "broker")
        return state if state["ActiveState"] == "active" and int(state["MainPID"]) not in (
            0, old) else None  # fmt: skip

    state = wait_until(restarted_by_systemd, 60, interval=0.5)
    assert int(state["NRestarts"]) >= 1, state
    times["restart after kill -9"] = time.monotonic() - start
    run = ansible_playbook(lab.inventory, "playbooks/verify.yml", "--check")
    check(run)
    assert "placement ok (runtime): 4 partitions" in run.output, str(run)

    # --- the unit's sandbox, as systemd rates it ------------------------------------------
    out = ssh_ok(lab, victim, "systemd-analyze security broker --no-pager")
    score = float(re.search(r"Overall exposure level for broker\.service: ([\d.]+)", out)[1])
    assert score < 3.0, out
    for setting in (
        "NoNewPrivileges=",
        "ProtectSystem=",
        "PrivateTmp=",
        "PrivateDevices=",
        "ProtectHome=",
        "RestrictAddressFamilies=~AF_PACKET",
        "SystemCallFilter=",
    ):
        assert re.search(rf"^✓ {re.escape(setting)}", out, re.M), (setting, out)  # fmt: skip

    # --- remove -----------------------------------------------------------------------------
    run = ansible_playbook(
        lab.inventory, "playbooks/remove.yml", "-e", "broker_remove_confirm=true"
    )
    times["remove.yml"] = run.seconds
    check(run)
    for h in lab.hosts:
        files = "/etc/systemd/system/broker.service /var/lib/broker"
        out = ssh_ok(lab, h, f"systemctl is-active broker || true; ls {files} 2>&1 || true")
        assert out.splitlines()[0] in ("inactive", "unknown"), out
        assert "No such file or directory" in out, out
    assert lab.status()[0]["brokers"] == 0

    with capsys.disabled():
        print(
            "\nsystemd lab (4 hosts, deploy+become): "
            + ", ".join(f"{k} {v:.1f}s" for k, v in times.items())
            + f"; systemd-analyze security broker: {score}"
        )


# --- teardown (last: it takes the module's lab down) ------------------------------------------


def test_down_cleans_up_a_crashed_systemd_lab_without_its_state(systemd_lab, tmp_path):
    lab = systemd_lab
    procs = {p: _start_time(p) for p in systemd.cgroup_pids()}
    assert procs and systemd.overlay_mounts() and systemd.cgroup_dirs()
    stray = lab.spawn(lab.hosts[0], ["sleep", "600"])  # a process left inside a host
    lab.cut("region1")
    try:
        # a Lab that knows nothing of this one (other directory, no state file)
        Lab(tmp_path / "elsewhere", inventory=tmp_path / "hosts.yml").down()
        assert stray.wait(timeout=30) is not None
    finally:
        if stray.poll() is None:
            stray.kill()
            stray.wait()
    assert systemd.cgroup_dirs() == []
    assert systemd.overlay_mounts() == []
    # the same pid and start time: the same process (pids are reused in a busy full suite)
    survivors = [p for p, t in procs.items() if _start_time(p) == t and _not_zombie(p)]
    assert not survivors, [_cmdline(p) for p in survivors]
    assert not list(systemd.PROPAGATE.glob("brk-*")) if systemd.PROPAGATE.is_dir() else True
    assert network.netns_list() == [] and network.links() == []
    assert "brk" not in Path("/proc/self/mountinfo").read_text()
    assert (lab.host_dir(lab.hosts[0]) / "upper" / "etc" / "machine-id").is_file(), "data kept"
    lab.down(purge=True)
    assert not lab.dir.exists() and not lab.inventory.exists()


def _start_time(pid: int) -> int | None:
    """Clock ticks after boot when the process started (field 22 of /proc/PID/stat)."""
    with contextlib.suppress(OSError):
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    return None


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    return "?"


def _not_zombie(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False
