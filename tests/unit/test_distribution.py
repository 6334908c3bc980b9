import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.topology.distribution import distribute, node_id_for, region_of

# The vectors live beside the repository (DESIGN section 2); a copy in tests/data wins.
_NAME = "round-robin-distribution.json"
_CANDIDATES = [
    Path(__file__).resolve().parents[1] / "data" / _NAME,
    Path(__file__).resolve().parents[3] / "shared" / "reference" / _NAME,
]
REFERENCE = next((p for p in _CANDIDATES if p.exists()), _CANDIDATES[-1])
CASES = json.loads(REFERENCE.read_text())["cases"]


def case_id(case):
    return f"n{case['clusterSize']}-p{case['partitionsCount']}-rf{case['replicationFactor']}"


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_reference_vectors(case):
    got = distribute(range(case["clusterSize"]), case["partitionsCount"], case["replicationFactor"])

    assert [a.partition_id for a in got] == list(range(1, case["partitionsCount"] + 1))
    for assignment in got:
        expected = case["partitions"][str(assignment.partition_id)]
        assert list(assignment.members) == expected["members"]
        assert assignment.primary == expected["primary"]
        assert dict(assignment.priorities) == {int(m): p for m, p in expected["priorities"].items()}


def test_reference_file_has_the_documented_examples():
    shapes = {(c["clusterSize"], c["partitionsCount"], c["replicationFactor"]) for c in CASES}
    assert {(4, 5, 3), (3, 4, 3), (8, 8, 4)} <= shapes


def test_priority_direction_flips_after_each_round_over_the_members():
    first, second, third = (distribute(range(4), 12, 4)[i] for i in (0, 4, 8))  # partitions 1, 5, 9
    assert [first.priorities[m] for m in first.members] == [4, 3, 2, 1]
    assert [second.priorities[m] for m in second.members] == [4, 1, 2, 3]
    assert [third.priorities[m] for m in third.members] == [4, 3, 2, 1]


def test_members_are_sorted_by_id_whatever_the_input_order():
    assert distribute([7, 3, 5, 1], 4, 2) == distribute([1, 3, 5, 7], 4, 2)
    assert distribute([7, 3, 5, 1], 1, 2)[0].members == (1, 3)


def test_dual_region_reference_layout_puts_two_replicas_in_each_region():
    for assignment in distribute(range(8), 8, 4):
        per_region = Counter(region_of(m, 2) for m in assignment.members)
        assert per_region == {0: 2, 1: 2}, assignment


def test_replication_factor_above_member_count_is_clamped():
    got = distribute([10, 20, 30], 3, 5)
    assert [a.members for a in got] == [(10, 20, 30), (20, 30, 10), (30, 10, 20)]
    assert sorted(got[0].priorities.values()) == [1, 2, 3]
    assert got[0].priorities[10] == 3


@pytest.mark.parametrize(
    ("members", "partitions", "rf", "match"),
    [
        ([], 1, 1, "no members"),
        ([0, 1], 0, 1, "partitions count"),
        ([0, 1], 1, 0, "replication factor"),
        ([0, 1, 1], 1, 1, "duplicate member ids"),
    ],
)
def test_invalid_arguments(members, partitions, rf, match):
    with pytest.raises(ValueError, match=match):
        distribute(members, partitions, rf)


def test_assignment_is_immutable():
    assignment = distribute(range(3), 1, 3)[0]
    with pytest.raises(TypeError):
        assignment.priorities[0] = 1  # type: ignore[index]
    assert hash(assignment) == hash(distribute(range(3), 1, 3)[0])


def test_region_and_node_id_rules():
    assert [region_of(n, 2) for n in range(8)] == [0, 1] * 4
    assert [node_id_for(o, 0, 2) for o in range(4)] == [0, 2, 4, 6]
    assert [node_id_for(o, 1, 2) for o in range(4)] == [1, 3, 5, 7]
    assert node_id_for(2, 1, 3) == 7 and region_of(7, 3) == 1
    with pytest.raises(ValueError):
        node_id_for(0, 2, 2)
    with pytest.raises(ValueError):
        region_of(1, 0)


members_strategy = st.sets(st.integers(0, 1000), min_size=1, max_size=16)


@given(members_strategy, st.integers(1, 40), st.integers(1, 20))
def test_every_partition_gets_distinct_members_and_ranked_priorities(members, partitions, rf):
    r = min(rf, len(members))
    for assignment in distribute(members, partitions, rf):
        assert len(assignment.members) == r
        assert len(set(assignment.members)) == r
        assert set(assignment.members) <= members
        assert set(assignment.priorities) == set(assignment.members)
        assert sorted(assignment.priorities.values()) == list(range(1, r + 1))
        assert assignment.primary == assignment.members[0]
        assert assignment.priorities[assignment.primary] == max(assignment.priorities.values())


@given(members_strategy, st.integers(1, 40), st.integers(1, 20))
def test_each_member_is_primary_of_a_fair_share(members, partitions, rf):
    primaries = Counter(a.primary for a in distribute(members, partitions, rf))
    shares = [primaries.get(m, 0) for m in members]
    assert sum(shares) == partitions
    assert max(shares) - min(shares) <= 1


@given(st.integers(1, 8), st.integers(1, 8).map(lambda k: 2 * k), st.integers(1, 32))
def test_parity_ids_with_even_rf_split_every_partition_evenly(ordinals, rf, partitions):
    members = [node_id_for(o, region, 2) for o in range(ordinals) for region in (0, 1)]
    for assignment in distribute(members, partitions, rf):
        per_region = Counter(region_of(m, 2) for m in assignment.members)
        half = len(assignment.members) // 2
        assert per_region == {0: half, 1: half}
