"""SwimMembership over real transports on 127.0.0.1, with fast SWIM settings."""

from __future__ import annotations

import logging

import pytest

from broker.node.membership import SwimMembership
from broker.peers import Member
from broker.transport import Transport
from tests.helpers import wait_until

HOST = "127.0.0.1"
CLUSTER = "swim-test"
FAST = {
    "interval": 0.05,
    "failure_timeout": 1.0,
    "probe_interval": 0.1,
    "probe_timeout": 0.05,
    "sync_interval": 0.5,
}


class Node:
    def __init__(self, node_id: int):
        self.node_id = node_id
        self.partitions: dict[int, dict] = {}
        self.membership: SwimMembership | None = None
        self.transport = Transport(
            node_id, CLUSTER, HOST, 0, on_raft=lambda src, items: None, on_gossip=self._gossip
        )

    def _gossip(self, src, payload):
        if self.membership is not None:
            self.membership.on_gossip(src, payload)

    def claim(self, partition_id: int, role: str, term: int) -> None:
        info = {"role": role, "term": term, "leader": None, "health": "healthy"}
        self.partitions = {**self.partitions, partition_id: info}

    def stop(self) -> None:
        if self.membership is not None:
            self.membership.stop()
        self.transport.stop()


@pytest.fixture
def cluster():
    """Three nodes; every one knows only node 0's address."""
    nodes = [Node(i) for i in range(3)]
    try:
        for n in nodes:
            n.transport.start()
        contact = f"{HOST}:{nodes[0].transport.port}"
        for n in nodes:
            me = Member(
                n.node_id,
                region=f"region{n.node_id % 2}",
                host=HOST,
                internal_port=n.transport.port,
                gateway_port=26500 + n.node_id,
                management_port=9600 + n.node_id,
                version=f"1.{n.node_id}.0",  # a rolling upgrade: each on its own version
            )
            n.membership = SwimMembership(
                me, [contact], n.transport, CLUSTER, lambda n=n: n.partitions, **FAST
            )
        for n in nodes:
            n.membership.start()
        yield nodes
    finally:
        for n in nodes:
            n.stop()


def agreed(nodes: list[Node]) -> bool:
    """Everyone sees everyone ALIVE with its current region, ports and partitions."""
    for viewer in nodes:
        states = viewer.membership.states()
        for n in nodes:
            m = viewer.membership.members.get(n.node_id)
            if states.get(n.node_id) != "ALIVE" or m is None:
                return False
            own = n.membership.me
            if (
                m.region,
                m.host,
                m.internal_port,
                m.gateway_port,
                m.management_port,
                m.version,
            ) != (
                own.region,
                own.host,
                own.internal_port,
                own.gateway_port,
                own.management_port,
                own.version,
            ) or m.partitions != n.partitions:
                return False
    return True


def test_members_meet_through_one_contact_point_and_agree_on_metadata(cluster):
    a, b, c = cluster
    a.claim(1, "follower", 2)
    b.claim(1, "leader", 2)
    c.claim(2, "leader", 1)
    wait_until(lambda: agreed(cluster), timeout=10)
    for n in cluster:
        assert n.membership.leader_of(1) == 1
        assert n.membership.leader_of(2) == 2
        assert n.membership.leader_of(3) is None
        assert n.membership.members[1].region == "region1"
        assert n.membership.members[2].version == "1.2.0"
    # A new leader in a higher term wins everywhere once its metadata spreads.
    a.claim(1, "leader", 3)
    wait_until(lambda: all(n.membership.leader_of(1) == 0 for n in cluster), timeout=5)


def test_stopped_member_is_declared_dead(cluster):
    a, b, c = cluster
    c.claim(2, "leader", 1)
    wait_until(lambda: agreed(cluster), timeout=10)
    c.stop()
    # Detection takes about probe_interval + failure_timeout (1.1 s) here.
    wait_until(lambda: all(n.membership.states()[2] == "DEAD" for n in (a, b)), timeout=5)
    for n in (a, b):
        assert not n.membership.alive(2)
        assert n.membership.alive(0) and n.membership.alive(1)
        assert n.membership.leader_of(2) is None
    assert a.membership.states() == {0: "ALIVE", 1: "ALIVE", 2: "DEAD"}


def test_malformed_gossip_is_logged_and_dropped(cluster, caplog):
    caplog.set_level(logging.WARNING, logger="broker.node.membership")
    a, _, c = cluster
    wait_until(lambda: agreed(cluster), timeout=10)
    for payload in (None, "junk", {"t": "ping"}, {"t": "gossip", "u": [[1, "x"]]}):
        a.membership.on_gossip(1, payload)  # never raises
    assert caplog.text.count("malformed gossip from 1") == 4
    # The same through the wire (the transport does not look into GOSSIP
    # payloads), from an old broker's PeerDirectory, say.
    c.transport.send_gossip(0, {"me": {"id": 2}, "known": {}})
    wait_until(lambda: "malformed gossip from 2: unknown kind None" in caplog.text, timeout=5)
    assert agreed(cluster)


def test_a_gossiped_version_is_a_short_string_or_unknown():
    from broker.node.membership import MAX_VERSION_CHARS, _version

    assert _version("8.8.1") == "8.8.1"
    assert _version(None) == _version(7) == _version("x" * (MAX_VERSION_CHARS + 1)) == ""
