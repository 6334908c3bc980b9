import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.placement import check_layout, check_runtime, format_report, parity_layout

PLACEMENT_CODES = {"QUORUM_IN_ONE_REGION", "REPLICAS_UNBALANCED"}


def codes(report):
    return [f.code for f in report.findings]


def placement_partitions(report):
    return {f.partition for f in report.findings if f.code in PLACEMENT_CODES}


def contiguous_layout(size):
    return {i: "region0" if i < size // 2 else "region1" for i in range(size)}


# -- layout -------------------------------------------------------------------------------


def test_reference_layout_passes():
    report = check_layout(parity_layout(8), 8, 4)

    assert report.ok, format_report(report)
    assert report.regions == ("region0", "region1")
    assert [row.partition for row in report.partitions] == list(range(1, 9))
    for row in report.partitions:
        assert row.counts == {"region0": 2, "region1": 2}
        assert row.quorum == 3
        assert row.leader == row.members[0]
    assert report.partitions[0].by_region == {"region0": (0, 2), "region1": (1, 3)}


def test_contiguous_layout_is_refused_naming_the_partitions():
    report = check_layout(contiguous_layout(8), 8, 4)

    assert not report.ok
    # partition 1 = brokers 0-3 (all region0), 5 = 4-7 (all region1); 3 and 7 split 2+2
    assert placement_partitions(report) == {1, 2, 4, 5, 6, 8}
    by_partition = {f.partition: f for f in report.findings if f.partition}
    assert by_partition[1].code == "QUORUM_IN_ONE_REGION"
    assert by_partition[1].brokers == (0, 1, 2, 3)
    assert "partition 1:" in by_partition[1].message
    assert "region0: 0,1,2,3" in by_partition[1].message
    assert "region1: 4,5,6,7" in by_partition[5].message
    parity = next(f for f in report.findings if f.code == "PARITY_MISMATCH")
    assert parity.brokers == (1, 3, 4, 6)
    assert [row.ok for row in report.partitions] == [False, False, True, False] * 2


def test_odd_replication_factor_is_refused_naming_the_partitions():
    report = check_layout(parity_layout(8), 8, 3)

    assert "RF_ODD" in codes(report)
    assert placement_partitions(report) == set(range(1, 9))
    messages = [f.message for f in report.findings if f.partition]
    assert "partition 1: region0 alone holds 2 of 3 replicas" in messages[0]
    assert "(region0: 0,2; region1: 1)" in messages[0]


def test_odd_cluster_size_is_refused():
    report = check_layout(parity_layout(7), 7, 4)

    assert "CLUSTER_SIZE_ODD" in codes(report)
    size = next(f for f in report.findings if f.code == "REGION_SIZE_MISMATCH")
    assert "region0 has 4 (0,2,4,6)" in size.message
    assert "region1 has 3 (1,3,5)" in size.message


def test_cluster_smaller_than_four_is_refused():
    report = check_layout(parity_layout(2), 2, 2)
    assert codes(report) == ["CLUSTER_SIZE_SMALL"]


def test_uneven_regions_are_refused():
    brokers = parity_layout(8) | {1: "region0"}
    report = check_layout(brokers, 8, 4)

    assert "REGION_SIZE_MISMATCH" in codes(report)
    assert "PARITY_MISMATCH" in codes(report)
    assert placement_partitions(report)  # broker 1 tips some partitions to region0


def test_duplicate_and_missing_ids_are_reported():
    hosts = [(0, "region0"), (1, "region1"), (2, "region0"), (3, "region1")]
    hosts += [(4, "region0"), (5, "region1"), (4, "region0"), (7, "region1")]
    report = check_layout(hosts, 8, 4)

    duplicate = next(f for f in report.findings if f.code == "DUPLICATE_ID")
    assert duplicate.brokers == (4,)
    assert "broker id 4 is used 2 times" in duplicate.message
    gaps = next(f for f in report.findings if f.code == "IDS_NOT_CONTIGUOUS")
    assert "missing [6]" in gaps.message


def test_ids_outside_the_range_are_reported():
    brokers = parity_layout(7) | {9: "region1"}
    report = check_layout(brokers, 8, 4)

    gaps = next(f for f in report.findings if f.code == "IDS_NOT_CONTIGUOUS")
    assert gaps.brokers == (9,)
    assert "missing [7], unexpected [9]" in gaps.message


@pytest.mark.parametrize(
    "brokers",
    [
        {i: "only" for i in range(4)},
        {i: f"r{i % 3}" for i in range(6)},
    ],
)
def test_anything_but_two_regions_is_refused(brokers):
    report = check_layout(brokers, 4, 2)
    assert "REGION_COUNT" in codes(report)


def test_declared_regions_fix_the_parity_order():
    report = check_layout(parity_layout(8), 8, 4, regions=["region1", "region0"])

    parity = next(f for f in report.findings if f.code == "PARITY_MISMATCH")
    assert parity.brokers == tuple(range(8))
    assert not placement_partitions(report)  # the split itself is still balanced


def test_broker_in_an_undeclared_region_is_reported():
    brokers = parity_layout(8) | {7: "elsewhere"}
    report = check_layout(brokers, 8, 4, regions=["region0", "region1"])

    unknown = next(f for f in report.findings if f.code == "UNKNOWN_REGION")
    assert unknown.brokers == (7,)
    assert report.regions == ("region0", "region1", "elsewhere")
    assert placement_partitions(report) == {5, 6, 7, 8}  # those holding broker 7


@pytest.mark.parametrize("rf", [0, 10])
def test_replication_factor_out_of_range(rf):
    report = check_layout(parity_layout(8), 8, rf)
    assert "RF_RANGE" in codes(report)


def test_invalid_counts_are_findings_not_crashes():
    report = check_layout({}, 0, 0)

    assert {"CLUSTER_SIZE_SMALL", "REGION_COUNT", "PARTITIONS_COUNT", "RF_RANGE"} <= set(
        codes(report)
    )
    assert report.partitions == ()


def test_format_report_shows_table_and_findings():
    text = format_report(check_layout(contiguous_layout(8), 8, 4))
    lines = text.splitlines()

    assert lines[0].split() == ["PARTITION", "region0", "region1", "QUORUM", "PRIMARY", "STATUS"]
    assert lines[1].split() == ["1", "0,1,2,3", "-", "3", "0", "QUORUM_IN_ONE_REGION"]
    assert lines[3].split() == ["3", "2,3", "4,5", "3", "2", "ok"]
    assert "placement NOT ok" in text
    assert "  PARITY_MISMATCH: parity rule broken by brokers 1,3,4,6" in text

    ok = format_report(check_layout(parity_layout(8), 8, 4))
    assert ok.splitlines()[-1] == "placement ok (layout): 8 partitions"


def test_report_to_dict_is_json():
    report = check_layout(contiguous_layout(8), 8, 4)
    data = json.loads(json.dumps(report.to_dict()))

    assert data["ok"] is False
    assert data["partitions"][0]["counts"] == {"region0": 4, "region1": 0}
    assert data["findings"][0]["code"] == "PARITY_MISMATCH"


@given(
    st.integers(2, 8)
    .map(lambda k: 2 * k)
    .flatmap(
        lambda size: st.tuples(
            st.just(size), st.integers(1, size // 2).map(lambda k: 2 * k), st.integers(1, 16)
        )
    )
)
def test_parity_layout_with_even_rf_is_always_ok(params):
    size, rf, partitions = params
    report = check_layout(parity_layout(size), partitions, rf)
    assert report.ok, format_report(report)


@given(
    st.integers(2, 8)
    .map(lambda k: 2 * k)
    .flatmap(lambda size: st.tuples(st.just(size), st.integers(2, size), st.integers(1, 16)))
)
def test_contiguous_layout_is_refused_exactly_where_a_split_is_unbalanced(params):
    size, rf, partitions = params
    # Independent expectation: partition i holds ids (i + j) % size for j < rf, and
    # region0 is the lower half of the ids.
    unbalanced = set()
    for i in range(partitions):
        in_region0 = sum(1 for j in range(rf) if (i + j) % size < size // 2)
        if 2 * in_region0 != rf:
            unbalanced.add(i + 1)

    report = check_layout(contiguous_layout(size), partitions, rf)

    assert placement_partitions(report) == unbalanced
    if unbalanced:
        assert not report.ok


# -- runtime ------------------------------------------------------------------------------

REGIONS_OF = parity_layout(8)
# partition -> replicas of the reference layout (8 brokers, 8 partitions, RF 4)
REFERENCE = {p: [(p - 1 + j) % 8 for j in range(4)] for p in range(1, 9)}


def cluster_doc(replicas, left=(), joining=()):
    brokers = {}
    for partition, members in replicas.items():
        for rank, member in enumerate(members):
            state = "JOINING" if (member, partition) in joining else "ACTIVE"
            entry = {"id": partition, "state": state, "priority": len(members) - rank}
            brokers.setdefault(member, []).append(entry)
    return {
        "version": 5,
        "brokers": [
            {"id": b, "state": "LEFT" if b in left else "ACTIVE", "version": 1, "partitions": ps}
            for b, ps in sorted(brokers.items())
        ],
        "lastChange": {"id": 1, "status": "COMPLETED"},
    }


def topology_doc(replicas, leaders=None, unhealthy=(), rf=4):
    """leaders: partition -> leader id(s); default the first replica. unhealthy: (node, p)."""
    leaders = leaders or {}
    nodes = {}
    for partition, members in replicas.items():
        lead = leaders.get(partition, members[0] if members else None)
        lead = set(lead) if isinstance(lead, tuple) else {lead}
        for member in members:
            nodes.setdefault(member, []).append(
                {
                    "partitionId": partition,
                    "role": "leader" if member in lead else "follower",
                    "health": "unhealthy" if (member, partition) in unhealthy else "healthy",
                }
            )
    return {
        "brokers": [
            {"nodeId": n, "host": f"host-{n}", "port": 26500, "partitions": ps}
            for n, ps in sorted(nodes.items())
        ],
        "clusterSize": 8,
        "partitionsCount": 8,
        "replicationFactor": rf,
    }


def test_runtime_healthy_cluster_passes():
    report = check_runtime(cluster_doc(REFERENCE), topology_doc(REFERENCE), REGIONS_OF, 4)

    assert report.ok, format_report(report)
    assert [row.leader for row in report.partitions] == list(range(8))
    assert all(row.healthy == 4 and row.quorum == 3 for row in report.partitions)
    assert all(row.counts == {"region0": 2, "region1": 2} for row in report.partitions)


def test_runtime_missing_leader():
    topology = topology_doc(REFERENCE, leaders={3: None})
    report = check_runtime(cluster_doc(REFERENCE), topology, REGIONS_OF, 4)

    assert [(f.code, f.partition) for f in report.findings] == [("NO_LEADER", 3)]
    assert "partition 3: no leader (replicas 2,3,4,5)" in report.findings[0].message
    assert report.partitions[2].leader is None


def test_runtime_two_leaders():
    topology = topology_doc(REFERENCE, leaders={2: (1, 2)})
    report = check_runtime(cluster_doc(REFERENCE), topology, REGIONS_OF, 4)
    assert [(f.code, f.partition, f.brokers) for f in report.findings] == [
        ("MULTIPLE_LEADERS", 2, (1, 2))
    ]


def test_runtime_unhealthy_quorum():
    topology = topology_doc(REFERENCE, unhealthy={(5, 4), (6, 4)})
    report = check_runtime(cluster_doc(REFERENCE), topology, REGIONS_OF, 4)

    assert [(f.code, f.partition) for f in report.findings] == [("NO_HEALTHY_QUORUM", 4)]
    assert "2 of 4 replicas healthy (3,4), quorum needs 3" in report.findings[0].message


def test_runtime_partition_with_all_replicas_in_one_region():
    replicas = REFERENCE | {5: [4, 6, 0, 2]}  # as after a bad reconfiguration
    report = check_runtime(cluster_doc(replicas), topology_doc(replicas), REGIONS_OF, 4)

    assert [(f.code, f.partition) for f in report.findings] == [("QUORUM_IN_ONE_REGION", 5)]
    assert "region0: 0,2,4,6; region1: -" in report.findings[0].message


def test_runtime_after_failover_replication_factor_shrunk_to_two():
    # region1 force-removed: every partition keeps only its region0 replicas
    survivors = {p: [m for m in ms if m % 2 == 0] for p, ms in REFERENCE.items()}
    cluster = cluster_doc(survivors)
    cluster["brokers"] += [{"id": b, "state": "LEFT", "partitions": []} for b in (1, 3, 5, 7)]
    report = check_runtime(cluster, topology_doc(survivors, rf=4), REGIONS_OF, 4)

    mismatches = [f for f in report.findings if f.code == "RF_MISMATCH"]
    assert [f.partition for f in mismatches] == list(range(1, 9))
    assert "partition 1: 2 replicas (0,2), configured replicationFactor is 4" in (
        mismatches[0].message
    )
    assert {f.code for f in report.findings} == {"RF_MISMATCH", "QUORUM_IN_ONE_REGION"}
    assert all(row.healthy == 2 and row.quorum == 2 for row in report.partitions)


def test_runtime_ignores_left_brokers_and_non_active_partitions():
    cluster = cluster_doc(REFERENCE, left={7}, joining={(6, 4)})
    report = check_runtime(cluster, topology_doc(REFERENCE), REGIONS_OF, 4)

    assert report.partitions[3].members == (3, 4, 5)  # 6 is only JOINING partition 4
    assert report.partitions[4].members == (4, 5, 6)  # 7 has LEFT
    assert {(f.code, f.partition) for f in report.findings if f.code == "RF_MISMATCH"} == {
        ("RF_MISMATCH", p) for p in (4, 5, 6, 7, 8)
    }


def test_runtime_partition_without_replicas_is_reported():
    replicas = {p: ms for p, ms in REFERENCE.items() if p != 8}
    report = check_runtime(cluster_doc(replicas), topology_doc(replicas), REGIONS_OF, 4)

    assert sorted(f.code for f in report.findings if f.partition == 8) == [
        "NO_HEALTHY_QUORUM",
        "NO_LEADER",
        "RF_MISMATCH",
    ]


def test_runtime_broker_with_unknown_region():
    regions_of = {n: r for n, r in REGIONS_OF.items() if n != 7}
    report = check_runtime(cluster_doc(REFERENCE), topology_doc(REFERENCE), regions_of, 4)

    assert "UNKNOWN_REGION" in codes(report)
    assert placement_partitions(report) == {5, 6, 7, 8}


def test_runtime_report_format_has_leader_and_health_columns():
    text = format_report(
        check_runtime(cluster_doc(REFERENCE), topology_doc(REFERENCE), REGIONS_OF, 4)
    )
    header, first = text.splitlines()[:2]
    assert header.split() == [
        "PARTITION",
        "region0",
        "region1",
        "QUORUM",
        "LEADER",
        "HEALTHY",
        "STATUS",
    ]
    assert first.split() == ["1", "0,2", "1,3", "3", "0", "4", "ok"]


def test_runtime_replica_outside_the_known_regions_unbalances_the_split():
    replicas = {1: [0, 1, 9]}  # broker 9 is in neither region
    regions_of = {0: "region0", 1: "region1"}
    topology = topology_doc(replicas) | {"partitionsCount": 1}
    report = check_runtime(cluster_doc(replicas), topology, regions_of, 3)

    assert [(f.code, f.partition) for f in report.findings] == [
        ("UNKNOWN_REGION", None),
        ("REPLICAS_UNBALANCED", 1),
    ]
    assert report.partitions[0].by_region == {
        "region0": (0,),
        "region1": (1,),
        "<unknown>": (9,),
    }
