"""The upgrade's catch-up rule: lag against the leader's commit index, never the follower's."""

from broker.catchup import replica_lag


def part(role: str, leader, commit: int, applied: int) -> dict:
    return {"role": role, "leader": leader, "commitIndex": commit, "processedIndex": applied}


def test_a_follower_far_behind_is_measured_against_its_leader_not_itself():
    mine = {"1": part("FOLLOWER", 2, 10, 10), "2": part("LEADER", 1, 50, 50)}
    leader = {"1": part("LEADER", 2, 5000, 5000)}
    stale = {"1": part("FOLLOWER", 2, 4000, 4000)}
    assert replica_lag(mine, [stale, leader]) == {"1": 4990, "2": 0}
    # without a leadership claim, the highest commit index any broker reports
    assert replica_lag(mine, [stale]) == {"1": 3990, "2": 0}


def test_no_leader_known_or_no_document_is_not_caught_up():
    mine = {"1": part("FOLLOWER", None, 10, 10), "2": part("FOLLOWER", 3, 10, 10)}
    assert replica_lag(mine, [{"1": part("LEADER", 3, 10, 10)}, "not a document"]) == {
        "1": None,
        "2": None,
    }
