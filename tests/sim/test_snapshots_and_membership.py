"""Snapshots (compaction, chunked InstallSnapshot), single-server membership
changes, and force reconfigure after the loss of a region."""

from __future__ import annotations

import pytest

from broker.raft.core import ProposalRejected, RaftConfig, Role
from broker.raft.messages import Configuration, InstallSnapshot

from .cluster import SimCluster, SimDisk
from .helpers import (
    applied_data,
    check_no_leader,
    check_one_leader,
    one,
    record_sends,
    role,
    same_state,
    set_connected,
    settle,
    terms,
    timeout_units,
)

SEEDS = [1, 2, 3]


def commit_all(c: SimCluster, payloads: list[bytes], expected: int, group=None) -> None:
    for data in payloads:
        one(c, data, expected, group=group)


def payloads(prefix: str, n: int) -> list[bytes]:
    return [f"{prefix}{k}".encode() for k in range(n)]


# --- snapshots --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seed", "loss"), [(1, 0.0), (2, 0.0), (3, 0.0), (1, 0.05), (2, 0.05), (3, 0.05)]
)
def test_lagging_follower_catches_up_by_snapshot(seed, loss):
    c = SimCluster(
        3, seed=seed, loss=loss, snapshot_every=10, cfg=RaftConfig(snapshot_chunk_size=64)
    )
    sent = record_sends(c)
    leader = check_one_leader(c)
    one(c, b"first", 3)
    lagger = (leader + 1) % 3
    c.disconnect(lagger)
    rest = [i for i in c.nodes if i != lagger]
    commit_all(c, payloads("w", 100), 2, group=rest)
    assert c.nodes[leader].core.log.snapshot_index > c.nodes[lagger].core.log.last_index

    mark = len(sent)
    c.connect(lagger)
    assert c.run_until(lambda: same_state(c, c.nodes) and c.converged(), 3000)
    chunks = [m for m in sent[mark:] if isinstance(m, InstallSnapshot) and m.dst == lagger]
    assert len({m.offset for m in chunks}) > 1  # 64-byte chunks: several of them
    assert any(m.done for m in chunks)
    assert all(len(m.data) <= 64 for m in chunks)
    assert c.nodes[lagger].core.snapshot is not None
    assert c.nodes[lagger].core.log.snapshot_index >= chunks[0].meta.index
    assert c.nodes[lagger].applied == c.nodes[leader].applied
    assert applied_data(c, lagger) == [b"first", *payloads("w", 100)]
    one(c, b"after", 3)
    settle(c)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_wiped_follower_is_caught_up_from_a_snapshot(seed):
    """Its log now ends before what it acknowledged: the leader must notice (the refused
    heartbeat), forget the old match and send a snapshot, not wait forever."""
    c = SimCluster(3, seed=seed, snapshot_every=10)
    leader = check_one_leader(c)
    commit_all(c, payloads("w", 40), 3)
    wiped = (leader + 1) % 3
    assert c.run_until(lambda: c.nodes[leader].core.progress[wiped].match >= 40, 1000)
    c.crash(wiped)
    c.nodes[wiped].disk = SimDisk()  # a new, empty disk
    c.restart(wiped)
    assert c.run_until(lambda: same_state(c, c.nodes) and c.converged(), 3000)
    assert c.nodes[wiped].core.snapshot is not None
    assert c.nodes[wiped].applied == c.nodes[leader].applied
    one(c, b"after", 3)
    settle(c)


@pytest.mark.parametrize("seed", SEEDS)
def test_compaction_keeps_logs_short(seed):
    c = SimCluster(3, seed=seed, snapshot_every=10)
    check_one_leader(c)
    commit_all(c, payloads("w", 120), 3)
    assert c.run_until(lambda: same_state(c, c.nodes), 500)
    for i, n in c.nodes.items():
        log = n.core.log
        assert log.snapshot_index >= 100, i
        assert len(log.entries) <= 2 * c.snapshot_every, i
        assert len(n.disk.durable.entries) <= 2 * c.snapshot_every, i
        assert n.disk.durable.snapshot is not None
    settle(c)


@pytest.mark.parametrize("seed", SEEDS)
def test_restart_from_snapshot(seed):
    c = SimCluster(3, seed=seed, snapshot_every=10)
    check_one_leader(c)
    commit_all(c, payloads("w", 45), 3)
    assert c.run_until(lambda: same_state(c, c.nodes), 500)
    for i in c.nodes:
        c.crash(i)
    for i in c.nodes:
        c.restart(i)
        # the state machine starts from the snapshot, not from scratch
        assert c.nodes[i].applied_index == c.nodes[i].core.log.snapshot_index > 0
    one(c, b"after", 3)
    settle(c)
    assert c.run_until(lambda: same_state(c, c.nodes), 500)
    assert applied_data(c, 0) == [*payloads("w", 45), b"after"]


# --- membership ------------------------------------------------------------------------------


def change(c: SimCluster, leader: int, voters, priorities=None) -> int:
    new = Configuration.of(voters, priorities)
    index = c.call(leader, lambda core: core.propose_config(new))
    assert c.run_until(lambda: c.nodes[leader].core.commit >= index, 2000)
    return index


@pytest.mark.parametrize("seed", SEEDS)
def test_add_a_voter(seed):
    c = SimCluster(4, seed=seed, voters=[0, 1, 2])
    leader = check_one_leader(c, [0, 1, 2])
    one(c, b"a", 3)
    assert c.nodes[3].core.term == 0  # not a member: nobody talks to it
    assert c.nodes[3].applied == []

    change(c, leader, [0, 1, 2, 3])
    assert c.run_until(lambda: c.nodes[3].core.config.voters == {0, 1, 2, 3}, 1000)
    one(c, b"b", 4)
    assert applied_data(c, 3) == [b"a", b"b"]

    # quorum is 3 of 4 now: two originals down means no progress
    down = [i for i in (0, 1, 2) if i != leader][:2]
    for i in down:
        c.crash(i)
    stuck = c.propose(b"stuck", node=leader)
    assert stuck is not None
    c.run(3 * timeout_units(c))
    assert c.checker.applied.get(stuck) is None
    check_no_leader(c)  # the leader stepped down, node 3 cannot win either

    c.restart(down[0])
    one(c, b"c", 3)
    c.restart(down[1])
    settle(c)
    assert applied_data(c, 3)[:2] == [b"a", b"b"]
    assert applied_data(c, 3)[-1] == b"c"


@pytest.mark.parametrize("seed", SEEDS)
def test_remove_a_voter(seed):
    c = SimCluster(3, seed=seed)
    leader = check_one_leader(c)
    one(c, b"a", 3)
    removed, other = (leader + 1) % 3, (leader + 2) % 3
    change(c, leader, [leader, other])
    assert set(c.nodes[leader].core.progress) == {other}
    pair = [leader, other]
    one(c, b"b", 2, group=pair)

    # the removed node is not counted: with the other member down, the
    # leader and the removed node together cannot commit
    c.crash(other)
    stuck = c.propose(b"stuck", node=leader)
    assert stuck is not None
    c.run(4 * timeout_units(c))
    assert c.checker.applied.get(stuck) is None
    check_no_leader(c)
    assert c.nodes[removed].core.term == c.nodes[leader].core.term  # no disruption

    c.restart(other)
    assert check_one_leader(c, pair) in pair
    one(c, b"c", 2, group=pair)
    settle(c)
    assert applied_data(c, leader)[-1] == b"c"
    assert b"c" not in applied_data(c, removed)


@pytest.mark.parametrize("seed", SEEDS)
def test_remove_the_leader(seed):
    c = SimCluster(3, seed=seed)
    leader = check_one_leader(c)
    term = c.nodes[leader].core.term
    one(c, b"a", 3)
    rest = [i for i in c.nodes if i != leader]
    index = c.call(leader, lambda core: core.propose_config(Configuration.of(rest)))
    # it leads until the change commits, then steps down
    assert role(c, leader) is Role.LEADER
    assert c.run_until(lambda: role(c, leader) is not Role.LEADER, 1000)
    assert c.nodes[leader].core.commit >= index
    new = check_one_leader(c, rest)
    assert c.nodes[new].core.term > term
    assert c.nodes[new].core.config.voters == set(rest)
    one(c, b"b", 2, group=rest)
    c.run(5 * timeout_units(c))
    assert role(c, leader) is Role.FOLLOWER  # a non-member never campaigns
    assert c.leaders() == [new]
    settle(c)
    assert applied_data(c, new) == [b"a", b"b"]


@pytest.mark.parametrize("seed", SEEDS)
def test_membership_survives_compaction_and_restart(seed):
    """Once the configuration entry is compacted away, the configuration comes
    from the snapshot (not from the bootstrap topology), also after a restart."""
    c = SimCluster(4, seed=seed, snapshot_every=10)
    leader = check_one_leader(c)
    one(c, b"a", 4)
    removed = next(i for i in c.nodes if i != leader)
    rest = [i for i in c.nodes if i != removed]
    index = change(c, leader, rest)
    c.crash(removed)
    commit_all(c, payloads("w", 30), 3, group=rest)
    assert c.run_until(lambda: same_state(c, rest), 500)
    for i in rest:
        assert c.nodes[i].core.log.snapshot_index > index
        assert c.nodes[i].core.snapshot[0].config.voters == set(rest)
    for i in rest:
        c.crash(i)
    for i in rest:
        c.restart(i)
        assert c.nodes[i].core.config.voters == set(rest), i
    check_one_leader(c, rest)
    one(c, b"b", 3, group=rest)
    settle(c)
    assert applied_data(c, rest[0]) == [b"a", *payloads("w", 30), b"b"]


@pytest.mark.parametrize("seed", SEEDS)
def test_new_voter_joins_from_a_snapshot(seed):
    c = SimCluster(4, seed=seed, voters=[0, 1, 2], snapshot_every=10)
    sent = record_sends(c)
    leader = check_one_leader(c, [0, 1, 2])
    commit_all(c, payloads("w", 30), 3)
    assert c.nodes[leader].core.log.snapshot_index >= 20
    change(c, leader, [0, 1, 2, 3])
    assert c.run_until(lambda: c.nodes[3].core.config.voters == {0, 1, 2, 3}, 2000)
    one(c, b"x", 4)
    assert any(isinstance(m, InstallSnapshot) and m.dst == 3 for m in sent)
    settle(c)
    assert c.run_until(lambda: same_state(c, c.nodes), 500)
    assert applied_data(c, 3) == [*payloads("w", 30), b"x"]
    # the new voter counts towards the quorum of three
    down = next(i for i in (0, 1, 2) if i != leader)
    c.crash(down)
    one(c, b"y", 3)
    c.restart(down)
    settle(c)
    assert c.run_until(lambda: same_state(c, c.nodes), 500)


def test_one_change_at_a_time():
    c = SimCluster(4, seed=1, voters=[0, 1, 2])
    leader = check_one_leader(c, [0, 1, 2])
    one(c, b"a", 3)
    c.call(leader, lambda core: core.propose_config(Configuration.of([0, 1, 2, 3])))
    with pytest.raises(ProposalRejected):
        c.call(leader, lambda core: core.propose_config(Configuration.of([0, 1, 2])))
    core = c.nodes[leader].core
    assert c.run_until(lambda: core.commit >= core.config_index, 1000)
    # once the first change committed, the next one is accepted
    other = next(i for i in (0, 1, 2) if i != leader)
    change(c, leader, [i for i in (0, 1, 2, 3) if i != other])
    settle(c)


def test_no_change_before_the_leader_committed_in_its_term():
    c = SimCluster(3, seed=1)
    assert c.run_until(lambda: bool(c.leaders()), 1000)
    (leader,) = c.leaders()
    with pytest.raises(ProposalRejected):  # its no-op is not committed yet
        c.call(leader, lambda core: core.propose_config(Configuration.of([0, 1])))
    one(c, b"a", 3)
    change(c, leader, [0, 1, 2], {leader: 5})  # a priorities-only change is fine
    settle(c)
    assert all(c.nodes[i].core.config.priority(leader) == 5 for i in c.nodes)


def test_invalid_changes_raise_value_error():
    c = SimCluster(5, seed=1, voters=[0, 1, 2])
    leader = check_one_leader(c, [0, 1, 2])
    one(c, b"a", 3)
    before = c.nodes[leader].core.log.last_index
    with pytest.raises(ValueError):  # two voters added at once
        c.call(leader, lambda core: core.propose_config(Configuration.of([0, 1, 2, 3, 4])))
    with pytest.raises(ValueError):  # one removed and one added
        c.call(leader, lambda core: core.propose_config(Configuration.of([0, 1, 3])))
    with pytest.raises(ValueError):
        c.call(leader, lambda core: core.propose_config(Configuration.of([])))
    assert c.nodes[leader].core.log.last_index == before
    settle(c)


# --- force reconfigure ------------------------------------------------------------------------


def force(c: SimCluster, nodes, config: Configuration) -> None:
    for i in nodes:
        c.call(i, lambda core: core.force_reconfigure(config))


def assert_no_progress(c: SimCluster) -> None:
    """A proposal at whatever leader there is does not commit."""
    index = None
    for leader in c.leaders():
        index = c.propose(b"no-quorum", node=leader)
    c.run(3 * timeout_units(c))
    check_no_leader(c)
    assert index is None or c.checker.applied.get(index) is None
    assert b"no-quorum" not in c.acked


@pytest.mark.parametrize("seed", SEEDS)
def test_force_reconfigure_after_losing_half_of_four(seed):
    """Regions by parity: {0, 2} and {1, 3}. The latest entries were committed
    by 1, 2, 3 while 0 (the primary of the forced group) lagged; then the odd
    region is lost. Only 2 holds them, so 2 must lead the forced group."""
    c = SimCluster(4, seed=seed, priorities={0: 4, 1: 3, 2: 2, 3: 1})
    check_one_leader(c)
    commit_all(c, payloads("w", 10), 4)
    set_connected(c, [1, 2, 3])
    commit_all(c, payloads("x", 10), 3, group=[1, 2, 3])
    acked = dict(c.acked)
    assert len(acked) == 20
    assert b"x0" not in applied_data(c, 0)

    for i in (1, 3):  # the odd region is gone for good
        c.crash(i)
    assert_no_progress(c)

    forced = Configuration.of([0, 2], {0: 2, 2: 1})
    force(c, [0, 2], forced)
    c.heal()
    assert check_one_leader(c, [0, 2]) == 2
    term = c.nodes[2].core.term
    one(c, b"new", 2, group=[0, 2])
    for i in (0, 2):
        assert c.nodes[i].core.config.voters == {0, 2}
        assert applied_data(c, i) == [*payloads("w", 10), *payloads("x", 10), b"new"]
    # repeating the operation changes nothing
    force(c, [0, 2], forced)
    assert terms(c, [0, 2]) == {0: term, 2: term}
    c.run(3 * timeout_units(c))
    assert c.leaders() == [2]
    assert terms(c, [0, 2]) == {0: term, 2: term}
    one(c, b"newer", 2, group=[0, 2])
    settle(c)
    assert set(acked) <= set(applied_data(c, 0))


@pytest.mark.parametrize("seed", SEEDS)
def test_repeated_force_before_the_election_is_a_no_op(seed):
    c = SimCluster(4, seed=seed)
    check_one_leader(c)
    one(c, b"a", 4)
    c.crash(1)
    c.crash(3)
    forced = Configuration.of([0, 2])
    force(c, [0, 2], forced)
    before = terms(c, [0, 2])
    force(c, [0, 2], forced)
    force(c, [0], forced)
    assert terms(c, [0, 2]) == before
    check_one_leader(c, [0, 2])
    one(c, b"b", 2, group=[0, 2])
    settle(c)


@pytest.mark.parametrize("seed", SEEDS)
def test_force_reconfigure_keeps_entries_held_by_a_single_survivor(seed):
    """Six nodes in two regions; 0 is the only survivor holding the latest
    committed entries (they sit on 0, 1, 3, 5). The forced group's first
    election is unanimous, so neither lagger can win, even with the higher
    priorities: a 2-of-3 majority of laggers would have dropped them."""
    c = SimCluster(6, seed=seed)
    check_one_leader(c)
    commit_all(c, payloads("base", 3), 6)
    set_connected(c, [0, 1, 3, 5])
    check_one_leader(c, [0, 1, 3, 5])
    commit_all(c, payloads("late", 10), 4, group=[0, 1, 3, 5])
    acked = dict(c.acked)
    for i in (2, 4):
        assert b"late0" not in applied_data(c, i)
        assert c.nodes[i].core.log.last_index < c.nodes[0].core.log.last_index

    for i in (1, 3, 5):
        c.crash(i)
    assert_no_progress(c)
    # the laggers still lag when the survivors are forced into one group
    force(c, [0, 2, 4], Configuration.of([0, 2, 4], {2: 3, 4: 2, 0: 1}))
    c.heal()
    assert check_one_leader(c, [0, 2, 4]) == 0
    one(c, b"new", 3, group=[0, 2, 4])
    settle(c)
    assert c.run_until(lambda: same_state(c, [0, 2, 4]), 500)
    for i in (0, 2, 4):
        have = set(applied_data(c, i))
        assert all(d in have for d in acked), f"node {i} lost acknowledged writes"
        # (0 may also hold the proposal made without a quorum: the forced
        # group is free to commit it, it was never acknowledged)
        data = [d for d in applied_data(c, i) if d != b"no-quorum"]
        assert data == [*payloads("base", 3), *payloads("late", 10), b"new"]


def test_force_on_a_node_outside_the_new_config_raises():
    c = SimCluster(4, seed=1)
    check_one_leader(c)
    term = c.nodes[1].core.term
    with pytest.raises(ValueError):
        c.call(1, lambda core: core.force_reconfigure(Configuration.of([0, 2])))
    assert c.nodes[1].core.term == term
    assert c.nodes[1].core.config.voters == {0, 1, 2, 3}
    one(c, b"x", 4)
    settle(c)
