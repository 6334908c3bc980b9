"""The filter plugin (plugins/filter/placement.py) on plain data, without Ansible runs."""

from __future__ import annotations

import importlib.util

import pytest
from ansible.errors import AnsibleFilterError

from .conftest import ROOT

spec = importlib.util.spec_from_file_location(
    "broker_filter_placement", ROOT / "plugins" / "filter" / "placement.py"
)
placement = importlib.util.module_from_spec(spec)
spec.loader.exec_module(placement)


def node(host, node_id, ordinal, region_id, port_base=26000):
    return {
        "host": host,
        "node_id": node_id,
        "ordinal": ordinal,
        "region": f"region{region_id}",
        "region_id": region_id,
        "address": "127.0.0.1",
        "gateway_port": port_base + node_id,
        "internal_port": port_base + 100 + node_id,
        "management_port": port_base + 200 + node_id,
    }


def parity_nodes(size=8):
    return [node(f"h{i}", i, i // 2, i % 2) for i in range(size)]


def test_filters_are_registered():
    assert set(placement.FilterModule().filters()) == {
        "node_id",
        "broker_placement",
        "broker_runtime_placement",
        "broker_leaders",
        "broker_replica_lag",
    }


def test_replica_lag_reads_uri_results_as_the_upgrade_gate_registers_them():
    mine = {"1": {"role": "FOLLOWER", "leader": 2, "commitIndex": 1, "processedIndex": 1}}
    leader = {"json": {"1": {"role": "LEADER", "commitIndex": 900, "processedIndex": 900}}}
    assert placement.broker_replica_lag(mine, [leader, {"skipped": True}]) == {"1": 899}


@pytest.mark.parametrize(("ordinal", "region_id", "expected"), [(0, 0, 0), (0, 1, 1), (3, 1, 7)])
def test_node_id_is_ordinal_times_two_plus_region(ordinal, region_id, expected):
    assert placement.node_id(ordinal, region_id) == expected
    assert placement.node_id(str(ordinal), str(region_id)) == expected


@pytest.mark.parametrize(("ordinal", "region_id"), [(-1, 0), (0, 2), ("x", 0), (0, True)])
def test_node_id_rejects_bad_input(ordinal, region_id):
    with pytest.raises(AnsibleFilterError):
        placement.node_id(ordinal, region_id)


def test_parity_layout_passes():
    report = placement.broker_placement(parity_nodes(), 8, 4)
    assert report["ok"], report["text"]
    assert report["text"].endswith("placement ok (layout): 8 partitions")
    assert [row["counts"] for row in report["partitions"]] == [{"region0": 2, "region1": 2}] * 8


def test_explicit_id_off_the_parity_rule_is_named():
    nodes = parity_nodes()
    nodes[2]["node_id"], nodes[4]["node_id"] = 4, 2  # swapped within region0: still parity
    report = placement.broker_placement(nodes, 8, 4)
    codes = [f["code"] for f in report["findings"]]
    assert codes == ["NODE_ID_MISMATCH", "NODE_ID_MISMATCH"], report["text"]
    assert (
        "h2: broker_node_id 4 is not broker_ordinal 1 * 2 + broker_region_id 0 = 2"
        in (report["text"])
    )


def test_address_clash_is_named():
    nodes = parity_nodes()
    nodes[5]["management_port"] = nodes[3]["management_port"]
    report = placement.broker_placement(nodes, 8, 4)
    assert [f["code"] for f in report["findings"]] == ["ADDRESS_CLASH"]
    assert report["findings"][0]["brokers"] == [3, 5]
    assert "(hosts h3, h5)" in report["messages"][0]


def test_region_ids_must_match_region_names():
    nodes = parity_nodes()
    nodes[7]["region"] = "region0"  # id 1, name region0
    codes = {f["code"] for f in placement.broker_placement(nodes, 8, 4)["findings"]}
    assert {"REGION_ID_SHARED", "REGION_IDS_DIFFER"} <= codes


def test_placement_needs_hosts():
    with pytest.raises(AnsibleFilterError):
        placement.broker_placement([], 8, 4)


def topology(leaders, terms=None, dead=(), brokers=8, partitions=8, rf=4):
    """A /v2/topology document of the parity layout with the given leaders."""
    from broker.topology.distribution import distribute

    terms = terms or {}
    docs = {b: {"nodeId": b, "alive": b not in dead, "partitions": []} for b in range(brokers)}
    for a in distribute(range(brokers), partitions, rf):
        for member in a.members:
            role = "leader" if leaders.get(a.partition_id) == member else "follower"
            docs[member]["partitions"].append(
                {
                    "partitionId": a.partition_id,
                    "role": role if member not in dead else "inactive",
                    "health": "healthy" if member not in dead else "dead",
                    "term": terms.get((a.partition_id, member), 1),
                }
            )
    return {"brokers": list(docs.values()), "partitionsCount": partitions}


PRIMARIES = {p: p - 1 for p in range(1, 9)}


def test_leaders_take_the_highest_term_among_live_brokers():
    topo = topology(PRIMARIES)
    # broker 2 still claims partition 1 at an older term; broker 0 leads at term 5
    topo["brokers"][2]["partitions"][0].update(role="leader", term=1)
    topo["brokers"][0]["partitions"][0].update(term=5)
    assert placement.broker_leaders(topo)["1"] == 0
    topo["brokers"][0]["alive"] = False
    assert placement.broker_leaders(topo)["1"] == 2


def test_runtime_placement_of_a_healthy_cluster():
    report = placement.broker_runtime_placement(topology(PRIMARIES), parity_nodes(), 4)
    assert report["ok"], report["text"]
    assert report["text"].endswith("placement ok (runtime): 8 partitions")


def test_runtime_placement_ignores_a_stale_leader_claim():
    topo = topology(PRIMARIES)
    topo["brokers"][2]["partitions"][0].update(role="leader", term=0)  # deposed, not yet gossiped
    report = placement.broker_runtime_placement(topo, parity_nodes(), 4)
    assert report["ok"], report["text"]


def test_runtime_placement_names_leaderless_and_quorumless_partitions():
    leaders = dict(PRIMARIES)
    del leaders[3]
    topo = topology(leaders, dead=(4, 5))
    report = placement.broker_runtime_placement(topo, parity_nodes(), 4)
    assert not report["ok"]
    messages = report["messages"]
    assert "NO_LEADER: partition 3: no leader (replicas 2,3,4,5)" in messages, messages
    assert any(m.startswith("NO_HEALTHY_QUORUM: partition 4: 2 of 4") for m in messages), messages


def test_runtime_placement_prefers_the_cluster_document():
    topo = topology(PRIMARIES)
    cluster = {
        "brokers": [
            {"id": b, "state": "ACTIVE", "partitions": [{"id": 1, "state": "ACTIVE"}]}
            for b in (0, 2, 4, 6)  # partition 1 entirely in region0
        ]
    }
    report = placement.broker_runtime_placement(topo, parity_nodes(), 4, cluster)
    codes = {f["code"] for f in report["findings"] if f["partition"] == 1}
    assert "QUORUM_IN_ONE_REGION" in codes, report["text"]


def test_runtime_placement_rejects_a_non_topology():
    with pytest.raises(AnsibleFilterError):
        placement.broker_runtime_placement({"message": "unauthorized"}, parity_nodes(), 4)
