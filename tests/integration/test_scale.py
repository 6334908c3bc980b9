"""Scale-out and scale-in with brokers the cluster has never seen, real processes.

Brokers 0-3 form a 2-region cluster (8 partitions, RF 4). Brokers 4-7 are configured
for the 8-broker cluster, as a scale-out deploys them: started, they must wait for the
cluster's configuration instead of building one from their own static config (where
they would host partitions nobody agreed to), then join through the management API.
A write load runs through it all and every acknowledged record is read back.
"""

from __future__ import annotations

import pytest

from broker.demo.localcluster import LocalCluster, wait_for
from broker.ops.load import WriteLoad, read_back
from tests.integration.test_cluster import FAST
from tests.integration.test_failover_api import cluster_doc, everywhere, http, replicas

PARTITIONS = 8  # every broker of 8 hosts some (round-robin, RF 4)


@pytest.fixture
def growing(tmp_path):
    c = LocalCluster(
        str(tmp_path / "scale"),
        size=8,
        members=4,
        partitions=PARTITIONS,
        replication_factor=4,
        overrides=FAST,
    )
    try:
        c.start(range(4))
        c.wait_leaders()
        yield c
    finally:
        c.stop_all()


def hosted(c: LocalCluster, node: int) -> list:
    return (
        (c.get_json(node, "/actuator/health/readiness") or {}).get("details", {}).get("partitions")
    )


def test_new_brokers_wait_for_the_configuration_then_scale_out_and_back_in(growing):
    c = growing
    load = WriteLoad(c.gateways(range(4)), prefix="scale", rate=150, timeout=5)
    load.start()
    try:
        wait_for(lambda: len(load.snapshot()) >= 50, 20, "the load to be acknowledged")
        c.start(range(4, 8))
        for n in range(4, 8):
            # a peer's configuration, where broker n is no member: it hosts nothing
            wait_for(lambda n=n: c.health(n) == "UP", 20, f"broker {n} to be ready")
            assert hosted(c, n) == []
            assert cluster_doc(c, n)["version"] == cluster_doc(c, 0)["version"]
        before = cluster_doc(c, 0)
        assert sorted(b["id"] for b in before["brokers"]) == [0, 1, 2, 3]

        status, answer = http(c, 6, "POST", "/actuator/cluster/brokers", list(range(8)))
        assert status == 202, answer  # forwarded to the coordinator, broker 0
        ops = {op["operation"] for op in answer["plannedChanges"]}
        assert {"BROKER_ADD", "PARTITION_JOIN", "PARTITION_LEAVE"} <= ops
        wait_for(lambda: _done(c, answer["changeId"]), 120, "the scale-out to complete")
        everywhere(c, answer["changeId"])
        grown = replicas(cluster_doc(c, 5))
        assert set().union(*grown.values()) == set(range(8))
        for members in grown.values():  # RF 4, two replicas in each region
            assert len(members) == 4 and len({m % 2 for m in members}) == 2
            assert sum(m % 2 for m in members) == 2
        c.wait_leaders()

        status, answer = http(c, 1, "POST", "/actuator/cluster/brokers", list(range(4)))
        assert status == 202, answer
        wait_for(lambda: _done(c, answer["changeId"]), 120, "the scale-in to complete")
        everywhere(c, answer["changeId"])
        shrunk = cluster_doc(c, 0)
        assert {b["id"]: b["state"] for b in shrunk["brokers"] if b["state"] != "LEFT"} == {
            n: "ACTIVE" for n in range(4)
        }
        assert all(r == {0, 1, 2, 3} for r in replicas(shrunk).values())
        for n in range(4, 8):
            wait_for(lambda n=n: hosted(c, n) == [], 30, f"broker {n} to drop its partitions")
    finally:
        load.stop()
    acked = load.snapshot()
    for n in range(4, 8):
        c.stop(n)
    rb = read_back(c.gateways(range(4)), acked, PARTITIONS, load.prefix)
    print(f"scale 4 -> 8 -> 4: {len(acked)} acknowledged, {len(rb.lost)} lost")
    assert len(acked) >= 100
    assert not rb.lost, rb.lost[:5]


def test_a_new_broker_refuses_changes_until_it_has_the_configuration(tmp_path):
    c = LocalCluster(
        str(tmp_path / "alone"), size=4, partitions=1, replication_factor=2, overrides=FAST
    )
    try:
        c.start([1])  # broker 0, which initialises a new cluster, is not there
        status = c.health(1)
        assert status == "DOWN"
        details = c.get_json(1, "/actuator/health/readiness")["details"]
        assert "waiting for the cluster configuration" in details["configuration"]
        code, doc = http(c, 1, "POST", "/actuator/cluster/brokers", [1, 2])
        assert code == 503 and "no cluster configuration yet" in doc["message"]
        c.start([0, 2, 3])
        wait_for(lambda: c.health(1) == "UP", 20, "broker 1 to get broker 0's configuration")
        c.wait_leaders()
    finally:
        c.stop_all()


def _done(c: LocalCluster, change_id: int) -> bool:
    doc = cluster_doc(c, 0)
    last = doc["lastChange"]
    return doc["pendingChange"] is None and last is not None and last["id"] >= change_id
