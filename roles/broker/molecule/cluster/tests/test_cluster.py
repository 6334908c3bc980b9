"""Testinfra checks of the `cluster` scenario (4 brokers, 2 per region, 4 partitions, RF 4),
run by `molecule verify`: quorum placement on the running cluster as every broker sees it,
the replica sets the distribution planned (`brokerctl placement`, run with the installed
broker), and a committed write on every partition.

Regions come from the inventory (node id = ordinal * 2 + region id), not from the cluster.
"""

from __future__ import annotations

import json
import os
import shlex
import time
import uuid

import pytest
import testinfra.utils.ansible_runner

from broker.client import BrokerClient
from broker.placement import check_runtime, format_report

RUNNER = testinfra.utils.ansible_runner.AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"])
testinfra_hosts = RUNNER.get_hosts("brokers")

PARTITIONS, REPLICATION_FACTOR = 4, 4
REGIONS = ("region0", "region1")
MANAGEMENT_PORT, GATEWAY_PORT = 9600, 26500
VENV = "/opt/broker/venv"


def describe(name: str) -> dict:
    hv = RUNNER.get_variables(name)
    region_id = int(hv["broker_region_id"])
    return {
        "name": name,
        "address": hv["ansible_host"],
        "node_id": int(hv["broker_ordinal"]) * 2 + region_id,
        "region": REGIONS[region_id],
    }


BROKERS = {name: describe(name) for name in testinfra_hosts}
REGION_OF = {b["node_id"]: b["region"] for b in BROKERS.values()}


def http_get(host, url: str):
    """GET ``url`` from the broker's own host, as JSON."""
    script = (
        "import sys, urllib.request\n"
        "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())\n"
    )
    return json.loads(host.check_output(f"python3 -c {shlex.quote(script)} {shlex.quote(url)}"))


def runtime_report(host):
    base = f"http://127.0.0.1:{MANAGEMENT_PORT}"
    cluster = http_get(host, f"{base}/actuator/cluster")
    topology = http_get(host, f"{base}/v2/topology")
    return check_runtime(cluster, topology, REGION_OF, REPLICATION_FACTOR)


def test_every_partition_keeps_rf_half_replicas_in_each_region(host):
    # leaders and health may move for a moment after a start; misplacement does not
    deadline = time.monotonic() + 30
    report = runtime_report(host)
    while not report.ok and time.monotonic() < deadline:
        time.sleep(0.5)
        report = runtime_report(host)
    assert report.ok, format_report(report)
    assert [row.partition for row in report.partitions] == list(range(1, PARTITIONS + 1))
    half = REPLICATION_FACTOR // 2
    for row in report.partitions:
        assert row.counts == {region: half for region in REGIONS}, format_report(report)
        assert row.leader in REGION_OF, format_report(report)
        assert row.healthy == REPLICATION_FACTOR, format_report(report)


def test_replica_sets_are_the_planned_distribution(host):
    planned = json.loads(
        host.check_output(
            f"{VENV}/bin/brokerctl placement --cluster-size {len(BROKERS)} "
            f"--partitions {PARTITIONS} --replication-factor {REPLICATION_FACTOR} --json"
        )
    )
    assert planned["ok"], planned
    report = runtime_report(host)
    running = {row.partition: sorted(row.members) for row in report.partitions}
    assert running == {p["partition"]: sorted(p["members"]) for p in planned["partitions"]}


@pytest.fixture(scope="module")
def client():
    gateways = [f"{b['address']}:{GATEWAY_PORT}" for b in BROKERS.values()]
    with BrokerClient(gateways, timeout=10) as c:
        yield c


def test_every_partition_commits_a_write_and_reads_it_back(client):
    token = uuid.uuid4().hex
    for partition in range(1, PARTITIONS + 1):
        data = f"molecule-{token}-{partition}".encode()
        appended = client.append(data, partition=partition)
        assert appended.partition == partition
        records = client.read(partition, from_position=appended.position, max_records=1)
        assert records.records[0] == (appended.position, data)
