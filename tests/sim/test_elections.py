"""Elections beyond plain Raft: Zeebe-style priorities, pre-vote, check quorum
(leader lease), leadership transfer and rebalancing to the primary."""

from __future__ import annotations

import pytest

from broker.raft.core import NotLeader, ProposalRejected, RaftConfig, Role

from .cluster import TICK, SimCluster
from .helpers import (
    applied_data,
    caught_up,
    check_no_leader,
    check_one_leader,
    one,
    role,
    settle,
    terms,
    timeout_units,
)

SEEDS = [1, 2, 3]
PRIORITIES = {0: 3, 1: 2, 2: 1}


def elect_after_crash(c: SimCluster, victim: int) -> tuple[int, int]:
    """Crash ``victim``; return the next leader and the clock units it took."""
    start = c.now
    c.crash(victim)
    leader = check_one_leader(c, [i for i in c.nodes if c.nodes[i].alive])
    return leader, c.now - start


def assert_timeouts(elapsed: int, c: SimCluster, k: int) -> None:
    """``elapsed`` is about ``k`` election timeouts: each is 10-11 ticks with
    priority election on, the last heartbeat may be a tick old, and the votes
    take a round trip. (Without priorities a failover takes 1.2-1.8 timeouts.)"""
    t = timeout_units(c)
    low, high = k * t - TICK, k * (t + TICK) + t // 2
    assert low <= elapsed <= high, f"{elapsed} units is not ~{k} timeouts"


# --- priority election ------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_primary_wins_the_first_election(seed):
    c = SimCluster(3, seed=seed, priorities=PRIORITIES)
    assert check_one_leader(c) == 0
    # one timeout, and only the primary campaigned: a single election, term 1
    assert_timeouts(c.now, c, 1)
    assert terms(c) == {0: 1, 1: 1, 2: 1}
    one(c, b"x", 3)
    settle(c)


@pytest.mark.parametrize("seed", SEEDS)
def test_failover_follows_priorities(seed):
    c = SimCluster(3, seed=seed, priorities=PRIORITIES)
    assert check_one_leader(c) == 0
    one(c, b"before", 3)
    c.run(3 * TICK)
    leader, elapsed = elect_after_crash(c, 0)
    assert leader == 1
    # priority 2 of max 3: one extra timeout for the primary to come back
    assert_timeouts(elapsed, c, 2)
    assert c.nodes[1].core.term == 2  # node 2 (priority 1) never campaigned
    one(c, b"after", 2)
    c.restart(0)
    settle(c)
    assert applied_data(c, 0) == [b"before", b"after"]


@pytest.mark.parametrize("seed", SEEDS)
def test_each_priority_step_costs_one_election_timeout(seed):
    c = SimCluster(5, seed=seed, priorities={0: 5, 1: 4, 2: 3, 3: 2, 4: 1})
    assert check_one_leader(c) == 0
    assert_timeouts(c.now, c, 1)
    c.run(3 * TICK)
    leader, elapsed = elect_after_crash(c, 0)
    assert leader == 1
    assert_timeouts(elapsed, c, 2)  # 5 -> 4
    c.run(3 * TICK)
    # the target restarts at the group's highest priority (5, the dead primary)
    leader, elapsed = elect_after_crash(c, 1)
    assert leader == 2
    assert_timeouts(elapsed, c, 3)  # 5 -> 4 -> 3
    one(c, b"x", 3)
    c.restart(0)
    c.restart(1)
    settle(c)


@pytest.mark.parametrize("seed", SEEDS)
def test_without_priority_election_any_node_wins_quickly(seed):
    c = SimCluster(3, seed=seed, priorities=PRIORITIES, cfg=RaftConfig(priority_election=False))
    first = check_one_leader(c)
    # timeouts of 10-19 ticks: usually one round, at most a split vote or two
    assert c.now < 3 * timeout_units(c)
    one(c, b"x", 3)
    c.run(3 * TICK)
    leader, elapsed = elect_after_crash(c, first)
    assert leader != first
    assert elapsed <= 6 * timeout_units(c)
    one(c, b"y", 2)
    c.restart(first)
    settle(c)


def test_without_priority_election_the_primary_is_not_favoured():
    winners = set()
    for seed in range(1, 7):
        c = SimCluster(3, seed=seed, priorities=PRIORITIES, cfg=RaftConfig(priority_election=False))
        winners.add(check_one_leader(c))
        settle(c)
    assert winners == {0, 1, 2}


# --- pre-vote ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_pre_vote_keeps_a_partitioned_node_from_raising_its_term(seed):
    c = SimCluster(3, seed=seed)
    leader = check_one_leader(c)
    term = c.nodes[leader].core.term
    loner = (leader + 1) % 3
    c.disconnect(loner)
    for k in range(5):
        one(c, b"w%d" % k, 2, group=[i for i in c.nodes if i != loner])
    c.run(20 * timeout_units(c))
    assert c.nodes[loner].core.term == term  # twenty timeouts, no term bump
    assert role(c, loner) in (Role.FOLLOWER, Role.PRE_CANDIDATE)

    c.connect(loner)
    c.run(3 * timeout_units(c))
    assert c.leaders() == [leader]
    assert terms(c) == {0: term, 1: term, 2: term}
    assert c.run_until(lambda: caught_up(c, leader, c.nodes), 500)
    settle(c)
    assert applied_data(c, loner) == [b"w%d" % k for k in range(5)]


@pytest.mark.parametrize("seed", SEEDS)
def test_without_pre_vote_a_rejoining_node_disrupts_the_leader(seed):
    """The contrast that shows the test above can fail."""
    c = SimCluster(3, seed=seed, cfg=RaftConfig(pre_vote=False))
    leader = check_one_leader(c)
    term = c.nodes[leader].core.term
    loner = (leader + 1) % 3
    c.disconnect(loner)
    c.run(5 * timeout_units(c))
    assert c.nodes[loner].core.term > term + 2
    c.connect(loner)
    c.run(3 * timeout_units(c))
    assert c.nodes[check_one_leader(c)].core.term > term + 2
    settle(c)


# --- check quorum (leader lease) ---------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_leader_cut_off_from_the_majority_steps_down(seed):
    c = SimCluster(5, seed=seed)
    leader = check_one_leader(c)
    term = c.nodes[leader].core.term
    one(c, b"x", 5)
    buddy = (leader + 1) % 5
    start = c.now
    # the leader keeps one follower: not a quorum of five
    c.partition([leader, buddy], [i for i in c.nodes if i not in (leader, buddy)])
    assert c.run_until(lambda: role(c, leader) is not Role.LEADER, 3 * timeout_units(c))
    elapsed = c.now - start
    assert timeout_units(c) <= elapsed <= 2 * timeout_units(c) + TICK
    assert c.nodes[leader].core.term == term  # stepping down does not bump the term
    majority = [i for i in c.nodes if i not in (leader, buddy)]
    new = check_one_leader(c, majority)
    c.run(3 * timeout_units(c))
    check_no_leader(c, [leader, buddy])
    c.heal()
    one(c, b"y", 5)
    assert check_one_leader(c) == new
    settle(c)


@pytest.mark.parametrize("seed", SEEDS)
def test_without_check_quorum_a_cut_off_leader_stays(seed):
    """The contrast: the lease is what makes the leader step down."""
    c = SimCluster(3, seed=seed, cfg=RaftConfig(check_quorum=False))
    leader = check_one_leader(c)
    c.disconnect(leader)
    c.run(10 * timeout_units(c))
    assert role(c, leader) is Role.LEADER
    c.heal()
    one(c, b"x", 3)
    settle(c)


# --- leadership transfer ----------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_transfer_leadership(seed):
    c = SimCluster(3, seed=seed)
    leader = check_one_leader(c)
    one(c, b"x", 3)
    term = c.nodes[leader].core.term
    for target in [(leader + 1) % 3, (leader + 2) % 3, leader]:
        old = c.leaders()[0]
        c.call(old, lambda core, t=target: core.transfer_leadership(t))
        with pytest.raises(ProposalRejected):
            c.call(old, lambda core: core.propose(b"during"))
        start = c.now
        assert c.run_until(lambda t=target: c.leaders() == [t], timeout_units(c))
        assert c.now - start <= 3 * TICK  # no election timeout involved
        term += 1
        assert c.nodes[target].core.term == term
        assert check_one_leader(c) == target
        one(c, b"at-%d" % target, 3)
    settle(c)
    for i in c.nodes:
        assert applied_data(c, i) == [b"x"] + [
            b"at-%d" % t for t in ((leader + 1) % 3, (leader + 2) % 3, leader)
        ]


@pytest.mark.parametrize("seed", SEEDS)
def test_transfer_to_a_lagging_follower_catches_it_up_first(seed):
    c = SimCluster(3, seed=seed)
    leader = check_one_leader(c)
    target = (leader + 1) % 3
    c.disconnect(target)
    for k in range(20):
        one(c, b"w%d" % k, 2, group=[leader, (leader + 2) % 3])
    c.connect(target)
    c.call(leader, lambda core: core.transfer_leadership(target))
    assert c.run_until(lambda: c.leaders() == [target], timeout_units(c))
    # it could only win holding every committed entry
    assert c.nodes[target].core.log.last_index >= c.nodes[leader].core.commit
    one(c, b"after", 3)
    settle(c)
    assert applied_data(c, target) == [b"w%d" % k for k in range(20)] + [b"after"]


@pytest.mark.parametrize("seed", SEEDS)
def test_transfer_to_an_unreachable_node_is_abandoned(seed):
    c = SimCluster(3, seed=seed)
    leader = check_one_leader(c)
    target = (leader + 1) % 3
    one(c, b"x", 3)
    c.disconnect(target)
    one(c, b"y", 2, group=[leader, (leader + 2) % 3])  # the target lags now
    c.call(leader, lambda core: core.transfer_leadership(target))
    c.run(timeout_units(c) // 2)
    assert c.propose(b"refused", node=leader) is None  # ProposalRejected
    with pytest.raises(ProposalRejected):
        c.call(leader, lambda core: core.propose(b"refused"))
    # after an election timeout the leader gives up and serves again
    assert c.run_until(lambda: c.nodes[leader].core.transferee is None, timeout_units(c) + TICK)
    assert c.leaders() == [leader]
    assert c.propose(b"accepted", node=leader) is not None
    c.connect(target)
    settle(c)
    assert applied_data(c, target) == [b"x", b"y", b"accepted"]


def test_transfer_argument_checks():
    c = SimCluster(3, seed=1)
    leader = check_one_leader(c)
    follower = (leader + 1) % 3
    with pytest.raises(NotLeader) as err:
        c.call(follower, lambda core: core.transfer_leadership(leader))
    assert err.value.leader == leader
    with pytest.raises(ValueError):
        c.call(leader, lambda core: core.transfer_leadership(leader))
    with pytest.raises(ValueError):
        c.call(leader, lambda core: core.transfer_leadership(7))
    assert c.nodes[leader].core.transferee is None
    one(c, b"x", 3)
    settle(c)


# --- rebalancing to the primary -------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_step_down_if_not_primary_hands_leadership_back(seed):
    c = SimCluster(3, seed=seed, priorities=PRIORITIES)
    assert check_one_leader(c) == 0
    assert c.call(0, lambda core: core.step_down_if_not_primary()) is False  # already primary
    leader, _ = elect_after_crash(c, 0)
    assert leader == 1
    one(c, b"while-away", 2)
    c.restart(0)
    assert c.run_until(lambda: caught_up(c, 1, [0]), 1000)
    # the restarted primary does not take over by itself
    c.run(3 * timeout_units(c))
    assert c.leaders() == [1]
    assert c.call(2, lambda core: core.step_down_if_not_primary()) is False  # a follower
    term = c.nodes[1].core.term
    assert c.call(1, lambda core: core.step_down_if_not_primary()) is True
    assert c.run_until(lambda: c.leaders() == [0], 5 * TICK)
    assert c.nodes[0].core.term == term + 1
    one(c, b"back", 3)
    settle(c)
    assert applied_data(c, 0) == [b"while-away", b"back"]


@pytest.mark.parametrize("seed", SEEDS)
def test_step_down_goes_to_the_highest_priority_voter(seed):
    c = SimCluster(5, seed=seed, priorities={0: 5, 1: 4, 2: 3, 3: 2, 4: 1})
    assert check_one_leader(c) == 0
    c.call(0, lambda core: core.transfer_leadership(4))
    assert c.run_until(lambda: c.leaders() == [4], 5 * TICK)
    one(c, b"x", 5)
    assert c.call(4, lambda core: core.step_down_if_not_primary()) is True
    assert c.run_until(lambda: c.leaders() == [0], 5 * TICK)
    settle(c)
