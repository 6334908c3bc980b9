"""The SWIM core: rules on a single node, then seeded simulations of 8 nodes.

Every simulation runs with the default (Zeebe) settings unless it says
otherwise, over a network with loss and a random delay of 1-30 ms (50 ms in
the long runs), which reorders messages.
"""

from __future__ import annotations

import statistics

import pytest

from broker.membership.swim import (
    ALIVE,
    DEAD,
    SUSPECT,
    MalformedMessage,
    Swim,
    SwimConfig,
)

from .swim_harness import SwimSim, initial_meta

CFG = SwimConfig()
LOSSES = [0.0, 0.05, 0.1]
JOIN_LIMIT = 15.0  # s for 8 nodes to find each other and converge (measured: under 8 s)

# Detection (kill -> DEAD on all 7 others) takes: the wait until some member's
# round-robin turn reaches the victim, one probe period for that probe to
# fail, failure_timeout, and the spread of DEAD. The first part is the min of
# 7 waits spread over a cycle of 7 periods: under one period on average, over
# 4 periods with probability about (3/7)^7 = 0.3%; the spread takes at most a
# few gossip rounds (measured under 1 s). Hence 4 + 1 s of margin; the
# median must be within 1.5 s (measured about 0.8 s).
DETECTION_MARGIN = 5.0
DETECTION_BOUND = CFG.probe_interval + CFG.failure_timeout + DETECTION_MARGIN
DETECTION_MEDIAN_BOUND = CFG.probe_interval + CFG.failure_timeout + 1.5


def converged_sim(seed: int, loss: float = 0.0, **kw) -> SwimSim:
    s = SwimSim(8, seed, loss, **kw)
    s.wait_for(s.converged, JOIN_LIMIT)
    return s


def gossip(*records) -> dict:
    return {"t": "gossip", "u": [list(r) for r in records]}


# --- rules on one node ------------------------------------------------------------


def test_incarnation_ordering():
    n = Swim(0, {})
    steps = [
        ((1, 0, ALIVE), ALIVE, 0),
        ((1, 0, SUSPECT), SUSPECT, 0),  # suspect overrides alive of the same incarnation
        ((1, 0, ALIVE), SUSPECT, 0),  # only a higher incarnation refutes
        ((1, 1, ALIVE), ALIVE, 1),
        ((1, 0, SUSPECT), ALIVE, 1),  # stale suspicion
        ((1, 1, DEAD), DEAD, 1),
        ((1, 1, ALIVE), DEAD, 1),  # dead is final for its incarnation
        ((1, 1, SUSPECT), DEAD, 1),
        ((1, 2, ALIVE), ALIVE, 2),  # a restarted member back with a higher one
    ]
    for (nid, inc, state), want_state, want_inc in steps:
        n.receive(1, gossip([nid, inc, state, 0, {}]))
        m = n.members[1]
        assert (m.state, m.incarnation) == (want_state, want_inc), (inc, state)


def test_member_refutes_suspicion_and_death_of_itself():
    n = Swim(0, {"region": "r0"})
    n.receive(1, gossip([0, 0, SUSPECT, 0, {}]))
    assert n.me.incarnation == 1
    n.receive(1, gossip([0, 4, DEAD, 0, {}]))
    assert n.me.incarnation == 5
    assert n.me.state == ALIVE
    n.drain()
    n.tick(CFG.gossip_interval)
    (dst, message), *_ = n.drain()[0]
    assert (dst, message["t"]) == (1, "gossip")
    assert [0, 5, ALIVE, n.me.version, {"region": "r0"}] in message["u"]


def test_newest_metadata_wins_and_owner_republishes_above_what_others_saw():
    n = Swim(0, {"v": 0})
    n.receive(1, gossip([1, 0, ALIVE, 3, {"v": 3}]))
    n.receive(1, gossip([1, 0, ALIVE, 2, {"v": 2}]))
    assert n.members[1].meta == {"v": 3}
    # A restarted owner's counter starts again at 0: when it hears of its
    # older self's version 7 it publishes its metadata as version 8.
    n.receive(1, gossip([0, 0, ALIVE, 7, {"v": "old"}]))
    assert (n.me.version, n.me.meta) == (8, {"v": 0})


def test_ping_req_pings_the_target_and_relays_its_ack():
    n = Swim(0, {})
    n.receive(1, {"t": "ping-req", "seq": 41, "target": 2, "u": [[2, 0, ALIVE, 0, {}]]})
    (dst, ping), *_ = [m for m in n.drain()[0] if m[1]["t"] == "ping"]
    assert dst == 2
    n.receive(2, {"t": "ack", "seq": ping["seq"], "u": []})
    assert [(dst, m["seq"]) for dst, m in n.drain()[0] if m["t"] == "ack"] == [(1, 41)]


@pytest.mark.parametrize(
    "message",
    [
        None,
        [],
        {"t": "ping"},
        {"t": "nope", "u": []},
        {"t": "ping", "seq": "1", "u": []},
        {"t": "ping-req", "seq": 1, "u": []},
        {"t": "sync", "u": []},
        {"t": "gossip", "u": {}},
        {"t": "gossip", "u": [[1, 0, ALIVE, 0]]},
        {"t": "gossip", "u": [[1, -1, ALIVE, 0, {}]]},
        {"t": "gossip", "u": [[1, 0, "ZOMBIE", 0, {}]]},
        {"t": "gossip", "u": [[1, 0, ALIVE, 0, []]]},
        {"t": "gossip", "u": [[2, 0, ALIVE, 0, {}], ["x", 0, ALIVE, 0, {}]]},
    ],
)
def test_malformed_messages_are_rejected_without_effect(message):
    n = Swim(0, {})
    with pytest.raises(MalformedMessage):
        n.receive(1, message)
    assert list(n.members) == [0]
    assert n.drain() == ([], [])


# --- simulations ------------------------------------------------------------------


@pytest.mark.parametrize("loss", LOSSES)
def test_converges_to_alive_and_newest_metadata(loss):
    for seed in range(5):
        s = converged_sim(seed, loss)
        # Partition roles and terms change under way; everyone ends with each
        # member's newest metadata.
        for term in range(2, 22):
            i = s.rng.randrange(8)
            meta = initial_meta(i)
            meta["partitions"]["1"] = {"role": "leader", "term": term}
            s.set_meta(i, meta)
            s.run_for(0.5)
        s.wait_for(s.converged, CFG.sync_interval)
        assert s.dead_events() == []


@pytest.mark.parametrize("loss", LOSSES)
def test_dead_node_is_detected_by_every_other_node(loss):
    times = []
    for seed in range(20):
        s = converged_sim(seed, loss)
        s.run_for(s.rng.uniform(0, CFG.probe_interval))  # any phase of the probe cycle
        victim, killed = 1 + seed % 7, s.now
        s.kill(victim)
        s.wait_for(lambda: s.detection_time(victim, killed) is not None, DETECTION_BOUND)  # noqa: B023
        times.append(s.detection_time(victim, killed))
        assert s.dead_events(since=0) == s.dead_events(victim), "someone else declared DEAD"
    assert max(times) <= DETECTION_BOUND, times
    assert statistics.median(times) <= DETECTION_MEDIAN_BOUND, times


@pytest.mark.parametrize("loss", [0.0, 0.05, 0.1, 0.2])
def test_no_false_dead_in_ten_minutes(loss):
    s = converged_sim(int(loss * 100), loss, delay=(0.001, 0.05))
    for _ in range(60):
        s.run_for(10)
        i = s.rng.randrange(8)
        meta = initial_meta(i)
        meta["tick"] = s.now
        s.set_meta(i, meta)
    assert s.dead_events() == []
    suspicions = sum(1 for _, _, e in s.trace if e.kind == SUSPECT)
    if loss >= 0.1:
        assert suspicions > 0  # the detector did fire, and every suspicion was refuted
    s.wait_for(s.converged, CFG.sync_interval)


def test_suspected_node_refutes_once_its_messages_flow_again():
    for seed in range(5):
        s = converged_sim(seed)
        victim, others = 5, [i for i in range(8) if i != 5]
        before = s.nodes[victim].me.incarnation
        s.muted.add(victim)  # everything it sends is lost; it still hears
        s.wait_for(lambda: any(s.state(i, victim) == SUSPECT for i in others), 8)  # noqa: B023
        s.run_for(3.0)
        assert all(s.state(i, victim) == SUSPECT for i in others)
        s.heal()
        # Its pings carry its refutation, and so do its acks to any prober
        # (whose pings carry the suspicion); gossip spreads it from there.
        me = s.nodes[victim].me
        s.wait_for(lambda: all(s.nodes[i].members[victim].wire() == me.wire() for i in others), 3)  # noqa: B023
        assert me.incarnation > before
        # It suspected everyone while deaf to them; they all refute in turn.
        s.wait_for(s.converged, CFG.sync_interval)
        assert s.dead_events() == []


def test_restarted_node_rejoins_with_a_higher_incarnation():
    for seed in range(5):
        s = converged_sim(seed, 0.05)
        victim = 4
        killed = s.now
        s.kill(victim)
        s.wait_for(lambda: s.detection_time(victim, killed) is not None, DETECTION_BOUND)  # noqa: B023
        dead_incarnation = s.nodes[0].members[victim].incarnation
        s.start(victim, [0])  # fresh state: incarnation 0, metadata version 0
        s.wait_for(s.converged, 5.0)
        assert s.nodes[victim].me.incarnation > dead_incarnation


def test_node_restarted_before_detection_gets_its_new_metadata_across():
    s = converged_sim(3, 0.05)
    s.kill(6)
    meta = initial_meta(6)
    meta["internal"] = 40000  # came back on another port, as version 0 again
    s.start(6, [0], meta=meta)
    s.wait_for(s.converged, 5.0)
    assert all(s.nodes[i].members[6].meta["internal"] == 40000 for i in range(8))
    assert s.dead_events() == []


def test_indirect_probes_prevent_suspicion_over_a_broken_link():
    s = converged_sim(1)
    mark = len(s.trace)
    s.cut({1}, {2})
    s.run_for(60)
    assert [e for _, _, e in s.trace[mark:] if e.kind in (SUSPECT, DEAD)] == []


def test_sides_of_a_healed_partition_find_each_other_again():
    s = converged_sim(2, 0.05)
    s.cut({0, 1, 2, 3}, {4, 5, 6, 7})
    s.run_for(CFG.failure_timeout + 10)
    assert all(s.state(i, j) == DEAD for i in range(4) for j in range(4, 8))
    s.heal()
    # Members that declared each other DEAD meet again by the sync every
    # sync_interval also sent to one DEAD member.
    s.wait_for(s.converged, CFG.sync_interval + 5)


def test_same_seed_same_trace():
    def run(seed):
        s = SwimSim(8, seed, 0.1)
        s.run_for(15)
        s.kill(3)
        s.run_for(15)
        s.start(3, [1])
        s.run_for(5)
        return s.trace

    assert run(7) == run(7)
    assert run(7) != run(8)
