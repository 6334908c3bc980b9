"""A hostile or confused peer cannot destroy state (issue 12), real processes.

Three brokers on 127.0.0.1, three partitions with two replicas each (so every
broker routes some partition through the membership's ``leader_of``), and a
rogue process-alike in the test speaking the wire protocol with the cluster's
name: a real ``Transport`` (and for one test a real ``SwimMembership``) as node
90-99. Each test leaves the cluster healthy for the next; the forged topology
test runs last.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request

import pytest

from broker.client import BrokerClient
from broker.demo.localcluster import LocalCluster, wait_for
from broker.fsutil import read_checked
from broker.node.membership import SwimMembership
from broker.peers import Member
from broker.transport import Transport
from tests.integration.test_cluster import FAST

HOST = "127.0.0.1"
PARTITIONS = 3


@pytest.fixture(scope="module")
def c(tmp_path_factory):
    cluster = LocalCluster(
        str(tmp_path_factory.mktemp("hostile")),
        size=3,
        partitions=PARTITIONS,
        replication_factor=2,
        overrides=FAST,
    )
    try:
        cluster.start()
        cluster.wait_leaders()
        yield cluster
    finally:
        cluster.stop_all()


class Rogue:
    """A peer speaking our protocol: a transport that records what it is sent."""

    def __init__(self, c: LocalCluster, node_id: int):
        self.received: list = []
        self.membership: SwimMembership | None = None
        self.transport = Transport(
            node_id, c.cluster_name, HOST, 0, on_raft=lambda src, items: None, on_gossip=self._on
        )
        self.transport.start()
        for i in range(c.size):
            self.transport.set_peer(i, HOST, c.ports[i]["internal"])

    def _on(self, src, payload) -> None:
        self.received.append((src, payload))
        if self.membership is not None:
            self.membership.on_gossip(src, payload)

    def gossip(self, node: int, payload) -> None:
        assert self.transport.send_gossip(node, payload)

    def stop(self) -> None:
        if self.membership is not None:
            self.membership.stop()
        self.transport.stop()


def log_of(c: LocalCluster, i: int) -> str:
    with open(os.path.join(c.root, f"broker-{i}.log"), errors="replace") as f:
        return f.read()


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


def alive_in(c: LocalCluster, viewer: int, node: int) -> bool | None:
    topo = c.get_json(viewer, "/v2/topology") or {}
    for b in topo.get("brokers", []):
        if b["nodeId"] == node:
            return b["alive"]
    return None


def writes_everywhere(c: LocalCluster, prefix: str, timeout: float = 5) -> None:
    """Every gateway (without client-side routing) appends to every partition."""
    for i in range(c.size):
        with BrokerClient(c.gateway(i), c.cluster_name, timeout=timeout, route=False) as client:
            for p in range(1, PARTITIONS + 1):
                client.append(f"{prefix}-{i}-{p}", partition=p)


def test_stranger_claiming_leadership_is_not_routed_to(c):
    rogue = Rogue(c, 97)
    claims = {
        p: {"role": "leader", "term": 10**6, "leader": 97, "health": "healthy"}
        for p in range(1, PARTITIONS + 1)
    }
    port = rogue.transport.port
    me = Member(97, region="region0", host=HOST, internal_port=port, gateway_port=port)
    try:
        rogue.membership = SwimMembership(
            me,
            [f"{HOST}:{c.ports[0]['internal']}"],
            rogue.transport,
            c.cluster_name,
            lambda: claims,
            interval=0.1,
            failure_timeout=1.0,
            probe_interval=0.2,
            probe_timeout=0.1,
            sync_interval=2.0,
        )
        rogue.membership.start()
        # Every broker knows the stranger, ALIVE, with its claims at a huge term...
        wait_for(lambda: all(alive_in(c, i, 97) for i in range(c.size)), 10, "97 to be known")
        # ...and still routes every partition to its real leader.
        writes_everywhere(c, "stranger")
        # (the topology is gossiped to every SWIM member, a stranger too: not a request)
        links = [p for _, p in rogue.received if isinstance(p, dict) and p.get("rpc") == "req"]
        assert links == [], f"requests were routed to the stranger: {links[:3]}"
    finally:
        rogue.stop()
    wait_for(lambda: not any(alive_in(c, i, 97) for i in range(c.size)), 10, "97 to be dead")


@pytest.mark.parametrize("incarnation", [1000, 2**62 - 1, 2**64 - 1])
def test_forged_death_is_refuted_and_force_remove_still_refused(c, incarnation):
    """1000: believed, then refuted. 2**62 - 1: refuted at the cap (2**62), which the
    others take from broker 2 itself. 2**64 - 1: out of range, dropped (before, its
    refutation 2**64 made every message of broker 2 unencodable: DEAD for good)."""
    rogue = Rogue(c, 98)
    try:
        for i in (0, 1):
            rogue.gossip(i, {"t": "gossip", "u": [[2, incarnation, "DEAD", 0, {}]]})
        if incarnation < 2**62:
            believed = f"node 2 is DEAD (incarnation {incarnation})"
            wait_for(lambda: believed in log_of(c, 0), 5, "the forged record to be believed")
        else:
            wait_for(lambda: "malformed gossip from 98" in log_of(c, 0), 5, "the record dropped")
        # Broker 2 hears of it and refutes: ALIVE again everywhere, soon.
        wait_for(
            lambda: all(alive_in(c, i, 2) for i in range(c.size)),
            5,
            "broker 2 to be ALIVE again everywhere",
        )
        if incarnation < 2**62:
            assert f"node 2 is ALIVE (incarnation {incarnation + 1})" in log_of(c, 0)
        status, doc = http(c, 0, "POST", "/actuator/cluster/brokers?force=true", [0, 1])
        assert status == 400 and "reachable" in doc["message"], doc
        assert http(c, 0, "GET", "/actuator/cluster")[1]["pendingChange"] is None
        writes_everywhere(c, f"after-death-{incarnation}")
    finally:
        rogue.stop()


def test_out_of_range_records_are_dropped_and_logged(c):
    rogue = Rogue(c, 96)
    try:
        rogue.gossip(0, {"t": "gossip", "u": [[2**40, 0, "ALIVE", 0, {}]]})
        rogue.gossip(0, {"t": "gossip", "u": [[1, 2**62, "DEAD", 0, {}]]})
        rogue.gossip(0, {"t": "gossip", "u": [[1, 0, "ALIVE", 2**70, {}]]})
        wait_for(
            lambda: (
                "malformed gossip from 96" in log_of(c, 0)
                and "dropped a record gossiped by node 96" in log_of(c, 0)
            ),
            5,
            "the bad records to be logged",
        )
        text = log_of(c, 0)
        assert "WARNING" in next(ln for ln in text.splitlines() if "malformed gossip from 96" in ln)
        assert all(alive_in(c, 0, n) for n in range(c.size))
        assert c.health(0) == "UP"
        writes_everywhere(c, "bad-records")
    finally:
        rogue.stop()


def partition_dirs(c: LocalCluster, i: int) -> set[str]:
    path = os.path.join(c.data_dir(i), "partitions")
    return set(os.listdir(path)) if os.path.isdir(path) else set()


def forged_topology(c: LocalCluster) -> dict:
    """The current configuration with every broker LEFT, at a much higher version."""
    doc = json.loads(read_checked(os.path.join(c.data_dir(0), "topology.json")))
    doc["version"] += 1000
    for b in doc["brokers"]:
        b["state"] = "LEFT"
    return doc


def cluster_version(c: LocalCluster, i: int) -> int | None:
    return (http(c, i, "GET", "/actuator/cluster")[1] or {}).get("version")


def test_topology_from_a_stranger_is_ignored(c):
    doc = forged_topology(c)
    versions = [cluster_version(c, i) for i in range(c.size)]
    rogue = Rogue(c, 95)
    try:
        for i in range(c.size):
            rogue.gossip(i, {"topology": doc})
        wait_for(
            lambda: all("ignored topology version" in log_of(c, i) for i in range(c.size)),
            5,
            "every broker to ignore it",
        )
    finally:
        rogue.stop()
    line = next(ln for ln in log_of(c, 0).splitlines() if "ignored topology version" in ln)
    assert "WARNING" in line and "from node 95" in line
    assert [cluster_version(c, i) for i in range(c.size)] == versions


def test_forged_topology_with_every_broker_left_deletes_nothing(c):
    """Sent by a peer impersonating broker 1 (what mutual TLS will stop)."""
    before = {i: partition_dirs(c, i) for i in range(c.size)}
    assert all(len(d) == 2 for d in before.values()), before  # RF 2 of 3 partitions each
    doc = forged_topology(c)
    rogue = Rogue(c, 1)
    try:
        for i in (0, 2):
            rogue.gossip(i, {"topology": doc})
        # Adopted as the configuration (a peer may say so), and spread...
        wait_for(
            lambda: all(cluster_version(c, i) == doc["version"] for i in range(c.size)),
            10,
            "the forged topology to be adopted",
        )
        # ...but contradicting every partition's Raft configuration: nothing stops.
        wait_for(
            lambda: all(log_of(c, i).count("claim ignored") >= 2 for i in range(c.size)),
            10,
            "every broker to refuse the claim",
        )
    finally:
        rogue.stop()
    for i in range(c.size):
        line = next(ln for ln in log_of(c, i).splitlines() if "claim ignored" in ln)
        assert "WARNING" in line and "still contains this broker" in line
        assert ": deleting " not in log_of(c, i)
        assert partition_dirs(c, i) == before[i]
        assert c.health(i) == "UP"
    writes_everywhere(c, "after-forged-topology")
    assert {i: partition_dirs(c, i) for i in range(c.size)} == before


def test_scale_down_still_deletes_the_leaving_replicas_data(tmp_path):
    """The legitimate path: a broker removed by a committed change (its replicas
    leave through Raft, confirmed by each partition's leader) deletes their data,
    logged at WARNING with the reason; the data lives on in the other replicas."""
    c = LocalCluster(
        str(tmp_path / "scale"), size=3, partitions=2, replication_factor=2, overrides=FAST
    )
    try:
        c.start()
        c.wait_leaders()
        with BrokerClient(c.gateways(), c.cluster_name, timeout=10) as client:
            for p in (1, 2):
                client.append(f"kept-{p}", partition=p)
        hosted = partition_dirs(c, 2)
        assert hosted
        status, doc = http(c, 0, "DELETE", "/actuator/cluster/brokers/2")
        assert status == 202, doc
        change = doc["changeId"]

        def done() -> bool:
            d = http(c, 0, "GET", "/actuator/cluster")[1] or {}
            last = d.get("lastChange") or {}
            return d.get("pendingChange") is None and last.get("id", -1) >= change

        wait_for(done, 20, "the scale-down to complete")
        wait_for(lambda: not partition_dirs(c, 2), 10, "broker 2 to delete what it left")
        lines = [ln for ln in log_of(c, 2).splitlines() if ": deleting " in ln]
        assert {re.search(r"partition (\d+): deleting", ln)[1] for ln in lines} == hosted
        assert all("WARNING" in ln and "removal verified" in ln for ln in lines), lines
        with BrokerClient(c.gateways([0, 1]), c.cluster_name, timeout=10) as client:
            for p in (1, 2):
                assert client.read(p, 1, 10).records[0][1] == f"kept-{p}".encode()
    finally:
        c.stop_all()
