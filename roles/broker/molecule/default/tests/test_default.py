"""Testinfra checks of the `default` scenario, run by `molecule verify` on every broker
instance (4 brokers, 2 per lab host): its ports listen, its configuration file says who it
is (node id, region, contact points) with the right mode, it runs as the SSH user (process
mode), and its management API reports it UP.

The expected values are worked out here from the inventory (ordinal, region id, ports),
not read back from what the role rendered.
"""

from __future__ import annotations

import json
import os
import shlex

import pytest
import testinfra.utils.ansible_runner
import yaml

RUNNER = testinfra.utils.ansible_runner.AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"])
testinfra_hosts = RUNNER.get_hosts("brokers")

USER = "root"  # process mode: the broker runs as the account Ansible connects as
DEFAULT_PORTS = {"gateway": 26500, "internal": 26502, "management": 9600}
PARTITIONS, REPLICATION_FACTOR = 2, 2


def describe(name: str) -> dict:
    hv = RUNNER.get_variables(name)
    ports = {kind: int(hv.get(f"broker_{kind}_port", port)) for kind, port in DEFAULT_PORTS.items()}
    return {
        "name": name,
        "address": hv["ansible_host"],
        "region": f"region{hv['broker_region_id']}",
        "node_id": int(hv["broker_ordinal"]) * 2 + int(hv["broker_region_id"]),
        **ports,
        "config": f"/etc/broker/{name}/broker.yaml",
        "data": f"/var/lib/broker/{name}",
        "export": f"/var/lib/broker-export/{name}",
        "venv": f"/opt/broker/{name}/venv",
    }


BROKERS = {name: describe(name) for name in testinfra_hosts}


@pytest.fixture(scope="module")
def me(host) -> dict:
    return BROKERS[host.ansible.get_variables()["inventory_hostname"]]


def http_get(host, url: str) -> tuple[int, dict]:
    """GET ``url`` from the broker's own host; (status, JSON body), also for 4xx/5xx."""
    script = (
        "import sys, urllib.error, urllib.request\n"
        "try:\n"
        "    r = urllib.request.urlopen(sys.argv[1], timeout=5)\n"
        "except urllib.error.HTTPError as e:\n"
        "    r = e\n"
        "print(r.status)\n"
        "print(r.read().decode())\n"
    )
    out = host.check_output(f"python3 -c {shlex.quote(script)} {shlex.quote(url)}")
    status, body = out.split("\n", 1)
    return int(status), json.loads(body)


def test_gateway_internal_and_management_ports_listen(host, me):
    for kind in ("gateway", "internal", "management"):
        assert host.socket(f"tcp://0.0.0.0:{me[kind]}").is_listening, (me["name"], kind)


def test_configuration_file_names_this_broker_and_every_contact_point(host, me):
    f = host.file(me["config"])
    assert f.is_file
    assert (f.mode, f.user, f.group) == (0o640, USER, USER)
    cfg = yaml.safe_load(f.content_string)
    cluster = cfg["cluster"]
    assert cluster["nodeId"] == me["node_id"]
    assert cluster["region"] == me["region"]
    assert cluster["clusterSize"] == len(BROKERS)
    assert (cluster["partitionsCount"], cluster["replicationFactor"]) == (
        PARTITIONS,
        REPLICATION_FACTOR,
    )
    assert sorted(cluster["initialContactPoints"]) == sorted(
        f"{b['address']}:{b['internal']}" for b in BROKERS.values()
    )
    assert cfg["network"]["advertisedHost"] == me["address"]
    assert cfg["network"]["gateway"]["port"] == me["gateway"]
    assert cfg["network"]["internal"]["port"] == me["internal"]
    assert cfg["management"]["port"] == me["management"]
    assert cfg["data"]["directory"] == me["data"]
    assert cfg["exporters"] == {
        r: {"type": "file", "args": {"path": f"{me['export']}/{r}"}} for r in ("region0", "region1")
    }
    check = host.run(f"{me['venv']}/bin/broker config check --config {me['config']}")
    assert check.rc == 0, check.stdout + check.stderr


def test_broker_process_runs_as_the_service_user_with_this_config(host, me):
    pid = int(host.file(f"{me['data']}/broker.pid").content_string.strip())
    proc = host.process.get(pid=pid)
    assert proc.user == USER
    assert f"--config {me['config']}" in proc.args and " run " in f" {proc.args} ", proc.args
    status = host.run(f"{me['venv']}/bin/broker status --config {me['config']}")
    assert status.rc == 0, status.stdout + status.stderr


def test_health_endpoint_answers_up(host, me):
    base = f"http://127.0.0.1:{me['management']}"
    for path in ("/actuator/health", "/actuator/health/readiness"):
        status, body = http_get(host, base + path)
        assert (status, body["status"]) == (200, "UP"), (path, body)


def test_broker_sees_the_whole_cluster(host, me):
    status, topo = http_get(host, f"http://127.0.0.1:{me['management']}/v2/topology")
    assert status == 200
    assert topo["clusterSize"] == len(BROKERS)
    assert sorted(b["nodeId"] for b in topo["brokers"]) == sorted(
        b["node_id"] for b in BROKERS.values()
    )
    assert all(b.get("alive", True) for b in topo["brokers"]), topo
