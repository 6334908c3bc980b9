"""Region loss and recovery through the Zeebe-compatible management API, real processes.

4 brokers in two regions (0,2: region0; 1,3: region1), 4 partitions, RF 4.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request

import pytest

from broker.client import BrokerClient, Unavailable
from broker.demo.localcluster import LocalCluster, wait_for
from tests.integration.test_cluster import FAST, assert_all_readable, write


def http(c: LocalCluster, node: int, method: str, path: str, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(c.management(node) + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def cluster_doc(c: LocalCluster, node: int) -> dict:
    status, doc = http(c, node, "GET", "/actuator/cluster")
    assert status == 200
    return doc


def completed(c: LocalCluster, node: int, change_id: int) -> bool:
    doc = cluster_doc(c, node)
    last = doc["lastChange"]
    return doc["pendingChange"] is None and last is not None and last["id"] >= change_id


def everywhere(c: LocalCluster, change_id: int, timeout: float = 20) -> None:
    """Wait until every running broker holds the completed change (gossip takes ~1 s)."""
    for n in c.running():
        wait_for(lambda n=n: completed(c, n, change_id), timeout, f"broker {n} to have it")


def replicas(doc: dict) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for b in doc["brokers"]:
        if b["state"] != "LEFT":
            for p in b["partitions"]:
                out.setdefault(p["id"], set()).add(b["id"])
    return out


@pytest.fixture
def dual(tmp_path):
    c = LocalCluster(
        str(tmp_path / "dr"), size=4, partitions=4, replication_factor=4, overrides=FAST
    )
    yield c
    c.stop_all()


def force_remove(c: LocalCluster, node: int, api: str, extra: str = ""):
    """Force region1 (brokers 1 and 3) out, in the 8.6/8.7 or the 8.8+ form."""
    if api == "post":
        return http(c, node, "POST", f"/actuator/cluster/brokers?force=true{extra}", ["0", "2"])
    body = {"brokers": {"remove": [1, 3]}}
    return http(c, node, "PATCH", f"/actuator/cluster?force=true{extra}", body)


def add_back(c: LocalCluster, node: int, api: str):
    if api == "post":
        return http(c, node, "POST", "/actuator/cluster/brokers?replicationFactor=4", [0, 1, 2, 3])
    body = {"brokers": {"add": [1, 3]}, "partitions": {"replicationFactor": 4}}
    return http(c, node, "PATCH", "/actuator/cluster", body)


@pytest.mark.parametrize("api", ["post", "patch"])
def test_region_loss_force_remove_then_add_back(dual, api):
    c = dual
    c.start()
    c.wait_leaders()
    with BrokerClient(c.gateways(), timeout=10) as client:
        acked = write(client, 200, "before")
    assert len(acked) == 200

    # a healthy region cannot be forced out by mistake
    status, doc = force_remove(c, 0, api)
    assert status == 400 and "reachable" in doc["message"]
    assert cluster_doc(c, 0)["pendingChange"] is None

    # region1 is lost
    c.kill(1)
    c.kill(3)
    wait_for(lambda: not c.leaders(via=0), 15, "leaders to step down without quorum")
    with BrokerClient(c.gateways([0, 2]), timeout=2) as client, pytest.raises(Unavailable):
        client.append("no quorum", partition=1)

    # force-remove it (8.6/8.7 form: ids as numeric strings)
    wait_for(
        lambda: force_remove(c, 0, api, "&dryRun=true")[0] == 200,
        15,
        "region1 to be seen as unreachable",
    )
    status, doc = force_remove(c, 0, api)
    assert status == 202, doc
    ops = [op["operation"] for op in doc["plannedChanges"]]
    assert ops.count("PARTITION_FORCE_RECONFIGURE") == 4
    assert ops.count("BROKER_FORCE_REMOVE") == 2
    change = doc["changeId"]
    retry_status, retry = force_remove(c, 2, api)
    assert retry_status == 202 and retry["changeId"] == change  # idempotent, not a 409
    wait_for(lambda: completed(c, 0, change), 30, "the forced change to complete")
    everywhere(c, change)
    doc = cluster_doc(c, 2)
    assert doc["lastChange"]["status"] == "COMPLETED"
    assert all(r == {0, 2} for r in replicas(doc).values())
    again_status, again = force_remove(c, 0, api)
    assert again_status == 202 and again["plannedChanges"] == []
    assert cluster_doc(c, 0)["version"] == doc["version"]  # nothing applied twice

    with BrokerClient(c.gateways([0, 2]), timeout=10) as client:
        acked.update(write(client, 100, "during"))
        assert len(acked) == 300
        assert_all_readable(client, acked)

    # the region comes back empty; add its brokers back with RF 4
    for n in (1, 3):
        shutil.rmtree(c.data_dir(n))
    c.start([1, 3])
    status, doc = add_back(c, 0, api)
    assert status == 202, doc
    assert {op["operation"] for op in doc["plannedChanges"]} == {"BROKER_ADD", "PARTITION_JOIN"}
    # broker 1 carries out some of these steps; restarted mid-change, it resumes them
    c.stop(1)
    c.start([1])
    wait_for(lambda: completed(c, 0, doc["changeId"]), 60, "the scale-up to complete")
    everywhere(c, doc["changeId"])
    final = cluster_doc(c, 0)
    assert all(r == {0, 1, 2, 3} for r in replicas(final).values())

    def position(node: int, p: int):
        return (
            (c.get_json(node, "/actuator/partitions") or {})
            .get(str(p), {})
            .get("processedPosition")
        )

    def caught_up() -> bool:
        leaders = c.leaders()
        return len(leaders) == 4 and all(
            position(n, p) == position(leaders[p], p) for n in (1, 3) for p in range(1, 5)
        )

    wait_for(caught_up, 60, "brokers 1 and 3 to catch up")

    # the configuration survives a restart, from disk; a corrupt copy is replaced by a peer's
    version = final["version"]
    c.stop(2)
    c.start([2])
    assert cluster_doc(c, 2)["version"] >= version
    c.stop(2)
    with open(f"{c.data_dir(2)}/topology.json", "r+b") as f:
        f.seek(40)
        f.write(b"garbage")
    c.start([2])
    wait_for(lambda: cluster_doc(c, 2)["version"] >= version, 15, "broker 2 to recover it")
    assert "unusable topology file" in c.log_tail(2, 400)
    c.kill(0)  # region0 down to one broker: with RF 4 restored, quorum needs region1 too
    with BrokerClient(c.gateways([1, 2, 3]), timeout=10) as client:
        c.wait_leaders(exclude=[0])
        assert_all_readable(client, acked)
