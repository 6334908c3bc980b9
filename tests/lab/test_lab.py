"""The namespace lab: SSH into every host, per-host mounts, region cut/heal, region loss,
the generated inventory, and teardown (also after a crash)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from broker.lab import Lab, LabHost, layout, network, unavailable_reason
from broker.lab import inventory as lab_inventory
from broker.lab.__main__ import main as lab_main
from tests import labutil
from tests.helpers import wait_until

REASON = unavailable_reason()
if REASON:
    print(f"tests/lab skipped: {REASON}")
    pytest.skip(REASON, allow_module_level=True)

paramiko = pytest.importorskip("paramiko")

# the lab is machine-wide: with `pytest -n --dist loadgroup` all of it runs on one worker
pytestmark = pytest.mark.xdist_group("brk-lab")

VENV_BIN = Path(sys.executable).parent
REGION_NAMES = ("region0", "region1")
CONNECT = "import socket, sys; socket.create_connection((sys.argv[1], 22), timeout=1)"
# a UDP listener that says when it is ready and exits 0 once one datagram arrives (1 on timeout)
LISTEN = (
    "import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
    "s.bind((sys.argv[1], 9999)); s.settimeout(3); print('ready', flush=True); "
    "s.recvfrom(64)"
)
SEND = (
    "import socket, sys, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "for _ in range(20): s.sendto(b'x', (sys.argv[1], 9999)); time.sleep(0.1)"
)


def region(lab: Lab, name: str) -> list[LabHost]:
    return [h for h in lab.hosts if h.region == name]


def tcp_ok(lab: Lab, src: LabHost, dst: LabHost) -> bool:
    """A TCP connect from inside ``src`` to the sshd of ``dst``."""
    return lab.exec(src, ["python3", "-c", CONNECT, dst.address], timeout=10).returncode == 0


@contextlib.contextmanager
def paramiko_session(lab: Lab, host: LabHost):
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(
        host.address,
        username="root",
        pkey=paramiko.Ed25519Key.from_private_key_file(str(lab.key)),
        look_for_keys=False,
        allow_agent=False,
        timeout=5,
    )
    try:
        yield client
    finally:
        client.close()


def remote(client, command: str) -> str:
    _, out, err = client.exec_command(command, timeout=10)
    text = out.read().decode()
    assert out.channel.recv_exit_status() == 0, err.read().decode()
    return text


def pids_with(lab: Lab, host: LabHost, token: str) -> list[int]:
    """Processes in the host's namespace whose command line contains ``token``."""
    found = []
    for pid in network.netns_pids(host.name):
        with contextlib.suppress(OSError):
            if token.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return found


def start_detached(lab: Lab, host: LabHost, argv: str) -> int:
    """Start a daemon over SSH (as `broker start` does) and return its pid."""
    token = uuid.uuid4().hex
    res = lab.ssh(host, f"setsid -f {argv} --token {token} </dev/null >/dev/null 2>&1")
    assert res.returncode == 0, res.stderr
    return wait_until(lambda: pids_with(lab, host, token), timeout=5)[0]


def live_processes_named_brk() -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            # zombies are dead (this VM's pid 1 does not reap orphans); skip them
            if entry.name.isdigit() and stat.rsplit(")", 1)[1].split()[0] != "Z":
                comm = (entry / "comm").read_text().strip()
                if comm.startswith(network.PREFIX):
                    found.append(f"{entry.name} {comm}")
    return found


def assert_nothing_left() -> None:
    assert network.netns_list() == []
    assert network.links() == []
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    assert "198.18." not in routes
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert network.NFT_TABLE not in tables
    assert live_processes_named_brk() == []
    assert "brk" not in Path("/proc/self/mountinfo").read_text()


# --- the inventory ----------------------------------------------------------------------------


def expected_inventory(lab: Lab) -> dict:
    def hosts(rid):
        return {
            f"brk-r{rid}-h{o}": {"ansible_host": f"198.18.{rid + 1}.{10 + o}", "broker_ordinal": o}
            for o in range(2)
        }

    return {
        "all": {
            "vars": {
                "broker_cluster_name": "dual-region",
                "broker_partitions_count": 4,
                "broker_replication_factor": 4,
                "broker_export_dir": str(lab.dir / "export"),
                "broker_export_sinks": {r: str(lab.dir / "export" / r) for r in REGION_NAMES},
            },
            "children": {
                "brokers": {
                    "vars": {
                        "ansible_user": "root",
                        "ansible_ssh_private_key_file": str(lab.key),
                        "ansible_ssh_common_args": lab_inventory.SSH_ARGS,
                        "ansible_python_interpreter": "/usr/bin/python3",
                        "broker_service_manager": "process",
                    },
                    "children": {
                        f"region{r}": {
                            "vars": {"broker_region": f"region{r}", "broker_region_id": r},
                            "hosts": hosts(r),
                        }
                        for r in (0, 1)
                    },
                }
            },
        }
    }


def test_inventory_matches_the_contract(live):
    assert yaml.safe_load(live.inventory.read_text()) == expected_inventory(live)
    res = subprocess.run(
        [str(VENV_BIN / "ansible-inventory"), "-i", str(live.inventory), "--list"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    listed = json.loads(res.stdout)
    assert sorted(listed["region1"]["hosts"]) == ["brk-r1-h0", "brk-r1-h1"]
    hv = listed["_meta"]["hostvars"]["brk-r1-h1"]
    assert hv["ansible_host"] == "198.18.2.11"
    assert (hv["broker_region"], hv["broker_region_id"], hv["broker_ordinal"]) == ("region1", 1, 1)


@pytest.mark.parametrize(("per_region", "partitions", "rf"), [(4, 8, 4), (2, 4, 4), (1, 2, 2)])
def test_inventory_shape_follows_the_host_count(per_region, partitions, rf):
    text = lab_inventory.render(layout(per_region), "/lab/id_ed25519", per_region)
    data = yaml.safe_load(text)["all"]
    assert data["vars"]["broker_partitions_count"] == partitions
    assert data["vars"]["broker_replication_factor"] == rf
    region1 = data["children"]["brokers"]["children"]["region1"]["hosts"]
    assert len(region1) == per_region


def test_inventory_turns_tls_on_with_the_labs_ca_directory():
    plain = yaml.safe_load(lab_inventory.render(layout(1), "/lab/id_ed25519", 1))["all"]["vars"]
    assert not any(k.startswith("broker_tls_") for k in plain)
    text = lab_inventory.render(layout(1), "/lab/id_ed25519", 1, tls_dir="/lab/tls")
    tls = yaml.safe_load(text)["all"]["vars"]
    assert (tls["broker_tls_enabled"], tls["broker_tls_ca_dir"]) == (True, "/lab/tls")


# --- hosts ------------------------------------------------------------------------------------


def test_every_host_answers_ssh_with_its_own_address_and_directories(live):
    marked = live.hosts[0]
    token = uuid.uuid4().hex
    (live.host_dir(marked) / "etc-broker" / "marker").write_text(token)
    for h in live.hosts:
        with paramiko_session(live, h) as ssh:
            out = remote(
                ssh,
                "hostname; ip -4 -o addr show dev eth0; cat /etc/broker/marker 2>/dev/null; "
                "for d in /etc/broker /var/lib/broker /opt/broker /var/lib/broker-export; "
                f"do echo {h.name} > $d/whoami; done",
            )
        assert out.splitlines()[0] == h.name
        assert f"inet {h.address}/24" in out
        assert (token in out) == (h == marked), "only the marked host sees its /etc/broker"
        for sub in ("etc-broker", "var-lib-broker", "opt-broker", "var-lib-broker-export"):
            assert (live.host_dir(h) / sub / "whoami").read_text().strip() == h.name
    assert not Path("/etc/broker/marker").exists(), "the real root is untouched"


def test_lab_stays_inside_its_range_with_no_default_route(live):
    for ns in network.netns_list():
        routes = network.ip("-4", "route", ns=ns).stdout
        assert "default" not in routes, ns
        addrs = network.ip("-o", "addr", ns=ns).stdout.splitlines()
        for line in addrs:
            if " lo " not in line:
                family, cidr = line.split()[2:4]
                assert family == "inet" and cidr.startswith("198.18."), (ns, line)
    for h in live.hosts:
        routes = network.ip("-4", "route", ns=h.name).stdout
        assert f"198.18.0.0/15 via 198.18.{h.region_id + 1}.1 dev eth0" in routes
    root = network.ip("-4", "route", "show", "dev", network.UPLINK).stdout
    assert "198.18.1.0/24 via 198.18.0.2" in root and "198.18.2.0/24 via 198.18.0.2" in root


def test_status_reports_every_host(live):
    rows = live.status()
    assert [(r["name"], r["region"], r["address"]) for r in rows] == [
        (h.name, h.region, h.address) for h in live.hosts
    ]
    assert all(r["netns"] and r["sshd"] and r["ssh"] and not r["cut"] for r in rows)


# --- faults -----------------------------------------------------------------------------------


def test_cut_drops_inter_region_traffic_but_not_controller_ssh(live):
    (a0, a1), (b0, b1) = region(live, "region0"), region(live, "region1")
    assert tcp_ok(live, b0, a0) and tcp_ok(live, a1, b1)
    live.cut("region1")
    try:
        live.cut("region1")  # idempotent
        assert not tcp_ok(live, b0, a0) and not tcp_ok(live, a1, b1)
        assert tcp_ok(live, b0, b1), "traffic inside a region is not affected"
        assert all(live.ssh(h, "true").returncode == 0 for h in live.hosts)
        assert [r["cut"] for r in live.status()] == [h.region == "region1" for h in live.hosts]
    finally:
        live.heal()
    assert tcp_ok(live, b0, a0) and tcp_ok(live, a1, b1)
    live.heal()  # idempotent


def udp_arrives(lab: Lab, src: LabHost, dst: LabHost) -> bool:
    """Whether datagrams sent from ``src`` reach ``dst`` (one direction only, no replies)."""
    listener = lab.spawn(
        dst, ["python3", "-c", LISTEN, dst.address], stdout=subprocess.PIPE, text=True
    )
    try:
        assert listener.stdout.readline().strip() == "ready"
        lab.exec(src, ["python3", "-c", SEND, dst.address], timeout=10)
        return listener.wait(10) == 0
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait(5)


def test_a_one_way_cut_drops_one_direction_only(live):
    (a0, _), (b0, _) = region(live, "region0"), region(live, "region1")
    live.cut_oneway("region0", "region1")
    try:
        assert network.oneway_cuts() == {(0, 1)} and not network.cut_regions()
        assert not udp_arrives(live, a0, b0), "region0 -> region1 is dropped"
        assert udp_arrives(live, b0, a0), "region1 -> region0 still passes"
    finally:
        live.heal()
    assert not network.oneway_cuts()
    assert udp_arrives(live, a0, b0)


def test_kill_region_kills_its_processes_but_keeps_sshd(live):
    r0, r1 = region(live, "region0")[0], region(live, "region1")[0]
    fake_broker = "python3 -c 'import time; time.sleep(600)' -m broker run"
    victim = start_detached(live, r1, fake_broker)
    bystander = start_detached(live, r0, fake_broker)
    try:
        before = {r["name"]: r for r in live.status()}
        assert before[r1.name]["brokers"] == 1
        assert live.kill("region1") >= 1
        assert victim not in network.netns_pids(r1.name)
        after = {r["name"]: r for r in live.status()}
        assert after[r1.name]["brokers"] == 0
        assert after[r1.name]["sshd_pid"] == before[r1.name]["sshd_pid"]
        assert all(after[h.name]["ssh"] for h in live.hosts), "hosts stay reachable"
        assert bystander in network.netns_pids(r0.name), "the other region is untouched"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(bystander, signal.SIGKILL)


def test_hard_kill_removes_the_region_and_up_brings_it_back(live):
    live.kill("region1", hard=True)
    for h in region(live, "region1"):
        assert live.ssh(h, "true", connect_timeout=2).returncode == 255
        assert network.netns_pids(h.name) == []
    assert all(live.ssh(h, "true").returncode == 0 for h in region(live, "region0"))
    assert [r["sshd"] for r in live.status()] == [h.region == "region0" for h in live.hosts]
    live.up(2)
    assert all(r["sshd"] and r["ssh"] for r in live.status())


# --- CLI --------------------------------------------------------------------------------------


def cli(lab: Lab, *args: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "broker.lab", *args]
    if args and args[0] in ("up", "down", "status", "cut", "heal", "kill"):
        argv += ["--dir", str(lab.dir), "--inventory", str(lab.inventory)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_cli_runbook_commands_and_usage_errors(live, monkeypatch, capsys):
    res = cli(live, "status")
    assert res.returncode == 0, res.stderr
    assert all(h.name in res.stdout for h in live.hosts)
    res = cli(live, "up", "--hosts-per-region", "2")
    assert res.returncode == 0 and "already up" in res.stdout, res.stdout + res.stderr
    assert cli(live, "cut", "region7").returncode == 2
    assert cli(live, "kill").returncode == 2
    assert cli(live).returncode == 2
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert lab_main(["up", "--dir", str(live.dir)]) == 1
    assert "not root: the lab needs root" in capsys.readouterr().err


# --- teardown ---------------------------------------------------------------------------------


def test_down_cleans_up_a_crashed_lab_without_its_state(live, tmp_path):
    h0, h1 = region(live, "region0")
    os.kill(live.status()[0]["sshd_pid"], signal.SIGKILL)  # a host crashed
    stray = live.spawn(h1, ["sleep", "600"])  # a process left inside a host
    live.cut("region1")
    try:
        # a Lab that knows nothing of this one (other directory, no state file)
        Lab(tmp_path / "elsewhere", inventory=tmp_path / "hosts.yml").down()
        assert stray.wait(timeout=5) is not None
    finally:
        if stray.poll() is None:
            stray.kill()
            stray.wait()
    assert_nothing_left()
    assert (live.host_dir(h0) / "etc-broker").is_dir(), "data is kept without --purge"
    live.down(purge=True)
    assert not live.dir.exists() and not live.inventory.exists()
    assert_nothing_left()


def test_a_lab_left_up_by_a_killed_test_run_is_taken_down_by_the_next(live):
    # the module's lab, noted as this run's (tests/labutil.py): another run leaves it alone
    assert json.loads(labutil.OWNER.read_text())["pid"] == os.getpid()
    assert "a lab is already up" in (labutil.foreign_lab() or "")
    assert network.netns_list()

    # the same lab, noted by a run that was killed: the next one takes it down
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    labutil.OWNER.write_text(json.dumps({"dir": str(live.dir), "pid": int(gone.stdout)}))
    assert labutil.foreign_lab() is None
    assert_nothing_left()
    assert not live.dir.exists(), "the left-over lab's data is purged"
    assert not labutil.OWNER.exists()

    # a lab nobody noted (brought up by hand) is never touched
    live.up(1, tls=False)
    try:
        assert "a lab is already up" in (labutil.foreign_lab() or "")
        assert network.netns_list()
    finally:
        live.down(purge=True)
