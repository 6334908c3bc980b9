"""Gossip cannot destroy membership state (issue 12): the pure SWIM core, then the
threaded runner over real transports on 127.0.0.1.

* a live member hearing of its own death (at any incarnation) refutes it, and
  everyone sees it ALIVE again within a few protocol periods;
* records are range-checked; a claim its member could not refute is dropped;
* ``reachable`` answers from a direct probe only;
* ``leader_of`` trusts only members of the cluster, at a term not below ours.
"""

from __future__ import annotations

import logging
import random

import pytest

from broker.membership.swim import (
    ALIVE,
    DEAD,
    MAX_COUNTER,
    MAX_NODE_ID,
    META_MAX_BYTES,
    META_MAX_KEYS,
    SUSPECT,
    MalformedMessage,
    Swim,
    SwimConfig,
)
from tests.helpers import wait_until
from tests.unit.test_swim_runner import FAST, agreed, cluster  # noqa: F401 (fixture)

CFG = SwimConfig(
    gossip_interval=0.1,
    probe_interval=0.2,
    probe_timeout=0.05,
    failure_timeout=2.0,
    sync_interval=2.0,
)
STEP = 0.01


class Net:
    """Deterministic lossless delivery between Swim cores; messages to unknown
    ids (the forger) are dropped."""

    def __init__(self, n: int, seed: int = 7):
        self.now = 0.0
        self.nodes = {
            i: Swim(i, {"id": i}, CFG, random.Random(seed * 100 + i), self.now) for i in range(n)
        }
        for i, node in self.nodes.items():
            node.join([j for j in self.nodes if j != i])

    def step(self) -> None:
        self.now += STEP
        pending = []
        for i, node in self.nodes.items():
            node.tick(self.now)
            out, _ = node.drain()
            pending.extend((i, dst, m) for dst, m in out)
        while pending:
            src, dst, message = pending.pop(0)
            node = self.nodes.get(dst)
            if node is None:
                continue
            node.receive(src, message)
            out, _ = node.drain()
            pending.extend((dst, d, m) for d, m in out)

    def run_until(self, predicate, seconds: float) -> float:
        """Step until ``predicate()``; returns the simulated time it took."""
        start = self.now
        while not predicate():
            assert self.now - start < seconds, f"not within {seconds} s (simulated)"
            self.step()
        return self.now - start

    def views_of(self, nid: int) -> dict[int, tuple[str, int]]:
        return {
            i: (n.members[nid].state, n.members[nid].incarnation)
            for i, n in self.nodes.items()
            if nid in n.members
        }


def everyone_sees_alive(net: Net, nid: int) -> bool:
    views = net.views_of(nid)
    return len(views) == len(net.nodes) and all(s == ALIVE for s, _ in views.values())


@pytest.mark.parametrize("state", [DEAD, SUSPECT])
@pytest.mark.parametrize("incarnation", [0, 5, 10**6, MAX_COUNTER - 1])
def test_forged_death_of_a_live_member_is_refuted_everywhere(state, incarnation):
    net = Net(3)
    net.run_until(lambda: all(len(n.members) == 3 for n in net.nodes.values()), 5)
    net.run_until(lambda: everyone_sees_alive(net, 2), 5)
    # A forger (node 99, a peer of the cluster) tells node 0 that node 2 is dead.
    net.nodes[0].receive(99, {"t": "gossip", "u": [[2, incarnation, state, 0, {}]]})
    assert net.nodes[0].members[2].state == state
    assert not net.nodes[0].take_dropped()
    # Node 2 hears of it (the ack of its next ping to node 0 carries the record),
    # refutes above the claimed incarnation, and everyone believes it again.
    took = net.run_until(lambda: everyone_sees_alive(net, 2), 6 * CFG.probe_interval)
    assert took <= 6 * CFG.probe_interval
    assert all(inc == incarnation + 1 for _, inc in net.views_of(2).values())
    assert net.nodes[2].me.incarnation == incarnation + 1


def test_unrefutable_claims_are_dropped_unless_the_member_makes_them():
    n = Swim(0, {}, CFG)
    n.receive(1, {"t": "gossip", "u": [[1, 0, ALIVE, 0, {}], [2, 0, ALIVE, 0, {}]]})
    n.drain()
    for record in (
        [2, MAX_COUNTER, DEAD, 0, {}],
        [2, MAX_COUNTER, SUSPECT, 0, {}],
        [2, MAX_COUNTER, ALIVE, 0, {}],
        [2, 1, ALIVE, MAX_COUNTER, {"x": 1}],
        [0, MAX_COUNTER, DEAD, 0, {}],  # about us: we could not outbid it
    ):
        n.receive(1, {"t": "gossip", "u": [record]})
    assert (n.members[2].state, n.members[2].incarnation, n.members[2].version) == (ALIVE, 0, 0)
    assert n.me.state == ALIVE and n.me.incarnation == 0
    dropped = n.take_dropped()
    assert len(dropped) == 5 and all(src == 1 for src, _ in dropped)
    assert "maximum incarnation" in dropped[0][1]
    assert n.take_dropped() == []
    # The member itself may publish its own record at the cap.
    n.receive(2, {"t": "gossip", "u": [[2, MAX_COUNTER, ALIVE, MAX_COUNTER, {"y": 2}]]})
    assert (n.members[2].incarnation, n.members[2].meta) == (MAX_COUNTER, {"y": 2})
    assert n.take_dropped() == []


def test_refutation_at_the_cap_stays_in_range():
    n = Swim(0, {}, CFG)
    n.receive(1, {"t": "gossip", "u": [[0, MAX_COUNTER - 1, DEAD, MAX_COUNTER - 1, {}]]})
    assert n.me.state == ALIVE
    assert n.me.incarnation == MAX_COUNTER and n.me.version == MAX_COUNTER


@pytest.mark.parametrize(
    "record",
    [
        [-1, 0, ALIVE, 0, {}],
        [MAX_NODE_ID + 1, 0, ALIVE, 0, {}],
        [2**63, 0, ALIVE, 0, {}],
        [1, MAX_COUNTER + 1, ALIVE, 0, {}],
        [1, 0, ALIVE, MAX_COUNTER + 1, {}],
        [1, 0, ALIVE, -2, {}],
        [1, True, ALIVE, 0, {}],
        [1, 0, "alive", 0, {}],
        [1, 0, ALIVE, 0, {str(k): k for k in range(META_MAX_KEYS + 1)}],
        [1, 0, ALIVE, 0, {"k" * 65: 1}],
        [1, 0, ALIVE, 0, {1: 1}],
        [1, 0, ALIVE, 0, {"blob": b"x" * (META_MAX_BYTES + 1)}],
    ],
)
def test_out_of_range_records_are_rejected_without_effect(record):
    n = Swim(0, {}, CFG)
    with pytest.raises(MalformedMessage):
        n.receive(1, {"t": "gossip", "u": [record]})
    assert list(n.members) == [0]
    assert n.drain() == ([], [])


def test_out_of_range_sender_or_target_is_rejected():
    n = Swim(0, {}, CFG)
    with pytest.raises(MalformedMessage):
        n.receive(MAX_NODE_ID + 1, {"t": "gossip", "u": []})
    with pytest.raises(MalformedMessage):
        n.receive(1, {"t": "ping-req", "seq": 1, "target": -5, "u": []})
    assert list(n.members) == [0]


def test_direct_ack_counts_a_relayed_one_does_not():
    n = Swim(0, {}, CFG)
    n.receive(1, {"t": "gossip", "u": [[1, 0, ALIVE, 0, {}], [2, 0, ALIVE, 0, {}]]})
    n.drain()
    seq = n.probe_direct(2, timeout=1.0)
    assert [(dst, m["t"], m["seq"]) for dst, m in n.drain()[0]] == [(2, "ping", seq)]
    n.receive(1, {"t": "ack", "seq": seq, "u": []})  # from someone else: no proof
    assert n.last_direct_ack(2) is None
    n.tick(0.5)
    n.receive(2, {"t": "ack", "seq": seq, "u": []})
    assert n.last_direct_ack(2) == 0.5
    # Believed DEAD by gossip: a direct probe is still sent, and answers.
    n.receive(1, {"t": "gossip", "u": [[2, 3, DEAD, 0, {}]]})
    n.drain()
    seq = n.probe_direct(2)
    (dst, ping), *_ = n.drain()[0]
    assert dst == 2 and ping["t"] == "ping"
    assert [2, 3, DEAD, 0, {}] in ping["u"]  # lets it refute at once
    n.tick(0.6)  # within the probe period
    n.receive(2, {"t": "ack", "seq": seq, "u": [[2, 4, ALIVE, 0, {}]]})
    assert n.last_direct_ack(2) == 0.6 and n.members[2].state == ALIVE
    # An ack after the probe's timeout proves nothing about now.
    seq = n.probe_direct(2)
    n.tick(1.0)
    n.receive(2, {"t": "ack", "seq": seq, "u": []})
    assert n.last_direct_ack(2) == 0.6


# --- the threaded runner over real transports ----------------------------------------


def test_forged_death_over_real_transports_is_refuted_and_reachable(cluster):  # noqa: F811
    a, b, c = cluster
    wait_until(lambda: agreed(cluster), timeout=10)
    a.membership.on_gossip(1, {"t": "gossip", "u": [[2, 500, DEAD, 0, {}]]})
    wait_until(
        lambda: (
            all(n.membership.states().get(2) == ALIVE for n in cluster)
            and a.membership._core.members[2].incarnation == 501
        ),
        timeout=5,
    )
    assert a.membership.reachable(2) and b.membership.reachable(2)
    c.stop()
    # An ack is evidence for one probe period; after that only a new one counts.
    wait_until(lambda: not a.membership.reachable(2, timeout=0.2), timeout=3)


def test_reachable_among_probes_every_lost_broker_at_once(cluster):  # noqa: F811
    """A forced removal of a lost region probes its brokers in one batch (one timeout for
    all of them, not one each: 4 lost brokers cost the failover 8 s before)."""
    a, b, c = cluster
    wait_until(lambda: agreed(cluster), timeout=10)
    assert a.membership.reachable_among([0, 1, 2]) == {0, 1, 2}
    b.stop()
    c.stop()
    batches = []
    send = a.membership._send

    def recording(out):
        batches.append({dst for dst, message in out if message.get("t") == "ping"})
        send(out)

    a.membership._send = recording
    wait_until(lambda: a.membership.reachable_among([0, 1, 2], timeout=0.2) == {0}, timeout=5)
    assert {1, 2} in batches, batches


def test_bad_record_is_logged_with_sender(cluster, caplog):  # noqa: F811
    caplog.set_level(logging.WARNING, logger="broker.node.membership")
    a, _, _ = cluster
    wait_until(lambda: agreed(cluster), timeout=10)
    a.membership.on_gossip(1, {"t": "gossip", "u": [[2**40, 0, ALIVE, 0, {}]]})
    a.membership.on_gossip(1, {"t": "gossip", "u": [[2, MAX_COUNTER, DEAD, 0, {}]]})
    assert "malformed gossip from 1" in caplog.text and "node id out of range" in caplog.text
    assert "dropped a record gossiped by node 1" in caplog.text
    assert a.membership.states() == {0: ALIVE, 1: ALIVE, 2: ALIVE}


def test_leader_claims_only_from_cluster_members_at_our_term(cluster):  # noqa: F811
    a, b, c = cluster
    wait_until(lambda: agreed(cluster), timeout=10)
    b.claim(1, "leader", 5)
    c.claim(1, "leader", 9)  # c is not in the topology below: a stranger
    wait_until(lambda: agreed(cluster), timeout=5)  # both claims are known everywhere
    assert a.membership.leader_of(1) == 2
    a.membership.topology_members = lambda: [0, 1]
    assert a.membership.leader_of(1) == 1
    a.partitions = {1: {"role": "follower", "term": 7, "leader": None, "health": "healthy"}}
    wait_until(lambda: a.membership.me.partitions.get(1, {}).get("term") == 7, timeout=5)
    assert a.membership.leader_of(1) is None  # b's claim is older than what we know
    b.claim(1, "leader", 7)
    wait_until(lambda: a.membership.leader_of(1) == 1, timeout=5)
