"""Real broker processes on loopback: elections, crashes, restarts, catch-up, quorum loss.

Every test that kills processes reads back everything it was told was
committed: an acknowledged write that cannot be read is a failure.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import urllib.request

import pytest

from broker.client import BrokerClient, BrokerError, OutOfRange, Unavailable
from broker.demo.localcluster import LocalCluster, wait_for
from broker.transport import FramedClient

FAST = {
    "cluster": {
        "raft": {"electionTimeout": "500ms", "heartbeatInterval": "50ms"},
        "membership": {
            "gossipInterval": "100ms",
            "probeInterval": "200ms",
            "probeTimeout": "100ms",
            "failureTimeout": "1s",
            "syncInterval": "2s",
        },
    }
}


def write(client: BrokerClient, n: int, prefix: str, partition: int | None = None) -> dict:
    """Append n records; returns {record: (partition, position)} for the acknowledged ones."""
    futures = {f"{prefix}-{i}": client.append_async(f"{prefix}-{i}", partition) for i in range(n)}
    acked = {}
    for rec, fut in futures.items():
        try:
            p = fut.result()
        except Unavailable:
            continue
        acked[rec] = (p.partition, p.position)
    return acked


def read_all(client: BrokerClient, partition: int, start: int = 1) -> list[tuple[int, bytes]]:
    out, pos = [], start
    while True:
        r = client.read(partition, pos, 1000)
        if not r.records:
            return out
        out.extend(r.records)
        pos = r.next


def assert_all_readable(client: BrokerClient, acked: dict, start: int = 1) -> None:
    by_partition: dict[int, dict[int, bytes]] = {}
    for p in {p for p, _ in acked.values()}:
        by_partition[p] = dict(read_all(client, p, start))
    missing = [rec for rec, (p, pos) in acked.items() if by_partition[p].get(pos) != rec.encode()]
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {missing[:5]}"


@pytest.fixture
def cluster(tmp_path):
    clusters = []

    def make(**kw) -> LocalCluster:
        kw.setdefault("overrides", FAST)
        c = LocalCluster(str(tmp_path / f"c{len(clusters)}"), **kw)
        clusters.append(c)
        return c

    yield make
    for c in clusters:
        c.stop_all()


def test_election_and_reelection_after_kill_9_loses_no_acknowledged_write(cluster):
    c = cluster(size=3, partitions=1, replication_factor=3)
    c.start()
    leader = c.wait_leaders()[1]
    with BrokerClient(c.gateways(), timeout=10) as client:
        acked = write(client, 200, "before")
        assert len(acked) == 200
        c.kill(leader)
        new = c.wait_leaders(exclude=[leader])[1]
        assert new != leader
        acked.update(write(client, 200, "after"))
        assert len(acked) == 400
        c.start([leader])
        assert_all_readable(client, acked)
    positions = sorted(pos for _, pos in acked.values())
    assert positions == list(range(1, 401))  # no gaps, no duplicates


def test_a_write_forwarded_to_a_killed_leader_is_answered_at_once(cluster):
    """kill -9 of the leader while the client talks to the followers only: each write a
    follower's gateway forwards to the dead leader fails at once ("may still commit",
    the connection ended) instead of waiting out its 30 s deadline, so the client writes
    again as soon as a new leader is elected (before: the whole client timeout)."""
    c = cluster(size=3, partitions=1, replication_factor=3)
    c.start()
    leader = c.wait_leaders()[1]
    others = [i for i in range(3) if i != leader]
    with BrokerClient(c.gateways(others), timeout=30) as client:
        client.append("before", 1)
        c.kill(leader)
        errors = []
        while True:
            try:
                acked = client.append("after", 1)
                break
            except BrokerError as exc:
                errors.append(exc)
                assert len(errors) < 500, errors[-3:]
        assert acked.position == 2
        # none waited out its deadline: each was answered when the connection ended
        assert not [e for e in errors if "not committed in time" in str(e)], errors
        assert [r for _, r in client.read(1, 1, 10).records] == [b"before", b"after"]


def test_restart_of_all_brokers_keeps_the_data(cluster):
    c = cluster(size=3, partitions=2, replication_factor=3)
    c.start()
    c.wait_leaders()
    with BrokerClient(c.gateways(), timeout=10) as client:
        acked = write(client, 100, "r")
        client.put("config", "v1")
    for i in range(3):
        c.kill(i)
    c.start()
    c.wait_leaders()
    with BrokerClient(c.gateways(), timeout=10) as client:
        assert_all_readable(client, acked)
        assert client.get("config") == b"v1"
        assert client.append("more").position > 0


def test_lagging_followers_catch_up_by_append_and_by_snapshot(cluster):
    c = cluster(
        size=3,
        partitions=1,
        replication_factor=3,
        overrides={**FAST, "data": {"snapshotEntries": 50}},
    )
    c.start()
    leader = c.wait_leaders()[1]
    follower = next(i for i in range(3) if i != leader)
    with BrokerClient(c.gateways([leader]), timeout=10) as client:
        c.kill(follower)
        # one at a time, so that each record is its own Raft entry: with a
        # snapshot every 50 entries the log is compacted past the follower
        acked = {}
        for i in range(400):
            p = client.append(f"lag-{i}")
            acked[f"lag-{i}"] = (p.partition, p.position)
        c.start([follower])

        def caught_up():
            parts = c.get_json(follower, "/actuator/partitions") or {}
            return parts.get("1", {}).get("processedPosition") == 400

        wait_for(caught_up, 30, f"broker {follower} to catch up")
        status = c.get_json(follower, "/actuator/partitions")["1"]
        assert status["snapshotId"] is not None  # it was sent a snapshot
        other = next(i for i in range(3) if i not in (leader, follower))
        c.kill(leader)
        c.kill(other)
        c.start([other])  # the caught-up follower and `other` form a quorum
        c.wait_leaders(exclude=[leader])
    with BrokerClient(c.gateways([follower, other]), timeout=10) as client:
        # no exporter holds the log: what the snapshot covers was compacted (Zeebe's
        # rule); reading it answers OUT_OF_RANGE naming the first record still kept
        with pytest.raises(OutOfRange) as compacted:
            client.read(1, 1, 10)
        first = compacted.value.first
        assert 1 < first <= 401  # 401: the installed snapshot covered every record
        kept = {rec: pp for rec, pp in acked.items() if pp[1] >= first}
        assert len(kept) == 400 - first + 1
        more = write(client, 20, "after", partition=1)  # positions go on after 400
        assert sorted(pos for _, pos in more.values()) == list(range(401, 421))
        assert_all_readable(client, {**kept, **more}, start=first)


def test_rf4_cluster_without_quorum_refuses_writes_then_recovers(cluster):
    c = cluster(size=4, partitions=4, replication_factor=4)
    c.start()
    c.wait_leaders()
    with BrokerClient(c.gateways(), timeout=10) as client:
        acked = write(client, 40, "q")
        assert len(acked) == 40
    c.kill(1)
    c.kill(3)  # region1 is gone: 2 of 4 replicas, no quorum anywhere
    # leaders in region0 step down once they miss their quorum for an election timeout
    wait_for(lambda: not c.leaders(via=0), 10, "every leader to step down")
    with BrokerClient(c.gateways([0, 2]), timeout=3) as client, pytest.raises(Unavailable):
        client.append("nope", partition=1)
    c.start([1])
    c.wait_leaders(exclude=[3])
    with BrokerClient(c.gateways([0, 1, 2]), timeout=10) as client:
        assert client.append("yes", partition=1).position > 0
        assert_all_readable(client, acked)


def test_bad_frames_close_only_that_connection(cluster):
    c = cluster(size=1, partitions=1, replication_factor=1)
    c.start()
    c.wait_leaders()
    port = c.ports[0]["gateway"]
    internal = c.ports[0]["internal"]
    payloads = [
        b"GET / HTTP/1.1\r\n\r\n",  # garbage
        b"BK\x01\x05" + struct.pack(">I", 1 << 30),  # oversized length
        b"BK\x01\x01" + struct.pack(">I", 100) + b"short",  # truncated, then closed
    ]
    with BrokerClient(c.gateway(0), timeout=10) as client:
        assert client.append("first").position == 1
        for target in (port, internal):
            for payload in payloads:
                with socket.create_connection(("127.0.0.1", target), timeout=5) as s:
                    s.sendall(payload)
                    s.shutdown(socket.SHUT_WR)
                    s.settimeout(5)
                    while s.recv(4096):  # the broker closes it (possibly after a reject)
                        pass
        assert client.append("second").position == 2  # the good connection still works
    assert c.procs[0].poll() is None
    assert "closing" in c.log_tail(0, 200).lower() or "protocol" in c.log_tail(0, 200).lower()
    counted = {}  # broker_transport_bad_frames_total, by reason: both ports, each payload
    with urllib.request.urlopen(c.management(0).rstrip("/") + "/actuator/prometheus") as r:
        for line in r.read().decode().splitlines():
            if line.startswith("broker_transport_bad_frames_total{"):
                counted[line.split('"')[1]] = float(line.split()[-1])
    # garbage: no magic; a frame type other than HELLO first; a frame cut short
    assert counted == {"bad_magic": 2.0, "unexpected": 2.0, "truncated": 2.0}


def test_bad_config_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster:\n  nodeId: 9\n  clusterSize: 8\n")
    r = subprocess.run(
        [sys.executable, "-m", "broker", "run", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cluster.nodeId" in lines[0] and "9" in lines[0]


def broker_cli(config: str, *args: str) -> subprocess.CompletedProcess:
    """``broker ARGS --config CONFIG`` as an operator types it."""
    return subprocess.run(
        [sys.executable, "-m", "broker", *args, "--config", config],
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_daemon_start_status_stop_are_idempotent(cluster):
    c = cluster(size=1, partitions=1, replication_factor=1)
    cfg = c.config_path(0)

    def broker(*args):
        return broker_cli(cfg, *args)

    assert broker("status").returncode == 3  # not running
    started = broker("start")
    assert started.returncode == 0, started.stdout + started.stderr
    assert "started" in started.stdout
    again = broker("start")
    assert again.returncode == 0 and "already running" in again.stdout
    status = broker("status")
    assert status.returncode == 0 and "running" in status.stdout
    with BrokerClient(c.gateway(0), timeout=10) as client:
        assert client.append("via daemon").position == 1
    stopped = broker("stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert broker("status").returncode == 3
    assert broker("stop").returncode == 0  # stopping a stopped broker is fine
    assert not os.path.exists(os.path.join(c.data_dir(0), "broker.pid"))


def test_daemon_log_rotates_by_size_and_keeps_the_configured_count(cluster):
    """Weeks of uptime in process mode must not fill the disk with log: broker.log rotates."""
    c = cluster(size=1, partitions=1, replication_factor=1)
    cfg, data = c.config_path(0), c.data_dir(0)

    def broker(*args):
        return broker_cli(cfg, *args)

    bad = broker("start", "--log-max-size", "12 parsecs")
    assert bad.returncode == 2 and "--log-max-size" in bad.stderr
    started = broker("start", "--log-max-size", "4KB", "--log-keep", "2")
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        # every malformed frame is logged with its reason: enough of them fill several files
        for _ in range(150):
            with socket.create_connection(("127.0.0.1", c.ports[0]["gateway"]), timeout=5) as s:
                s.sendall(b"GET / HTTP/1.1\r\n\r\n")
                s.shutdown(socket.SHUT_WR)
                s.settimeout(5)
                while s.recv(4096):
                    pass

        def logs():
            return sorted(n for n in os.listdir(data) if n.startswith("broker.log"))

        wait_for(lambda: "broker.log.2" in logs(), 30, "two rotated log files")
        assert logs() == ["broker.log", "broker.log.1", "broker.log.2"]  # keep 2, no more
        for name in logs():
            assert os.path.getsize(os.path.join(data, name)) <= 4096 + 1024
        with BrokerClient(c.gateway(0), timeout=10) as client:
            assert client.append("still serving").position >= 1
    finally:
        assert broker("stop").returncode == 0


def test_forwarding_uses_the_internal_link_and_clients_cannot_send_control_commands(cluster):
    c = cluster(size=3, partitions=1, replication_factor=3)
    c.start()
    leader = c.wait_leaders()[1]
    other = next(i for i in range(3) if i != leader)
    before = c.get_json(leader, "/actuator/partitions")["1"]
    client = FramedClient("127.0.0.1", c.ports[other]["gateway"], "dual-region", timeout=10)
    try:
        # a non-leader forwards to the leader (over the internal port) and answers
        r = client.request({"op": "append", "data": b"via-other", "partition": 1})
        assert r["ok"] and r["position"] == 1, r
        # control commands of topology changes are not a client's to send, also
        # not dressed as a forwarded request
        for body in (
            {"op": "_reconfigure", "partition": 1, "replicas": {str(leader): 1}},
            {"op": "_rebalance", "partition": 1},
            {"op": "_export_init", "partition": 1, "exporter": "x", "from": "y"},
            {"op": "_reconfigure", "partition": 1, "replicas": {"0": 1}, "forwarded": True},
        ):
            r = client.request(body)
            assert r["ok"] is False and r["code"] == "INVALID_ARGUMENT", r
            assert "unknown op" in r["message"]
        # "forwarded" from a client is ignored: the request is still routed
        r = client.request({"op": "append", "data": b"x", "partition": 1, "forwarded": True})
        assert r["ok"], r
    finally:
        client.close()
    after = c.get_json(leader, "/actuator/partitions")["1"]
    assert after["voters"] == before["voters"] == [0, 1, 2]
    assert after["term"] == before["term"]


def test_appends_of_many_records_commit_at_consecutive_positions_and_survive_a_restart(cluster):
    """``records``: one request, one answer, every record at its own position, read back
    in order, through the leader or forwarded by a follower, and still there (same
    positions) after every broker was killed and restarted."""
    c = cluster(size=3, partitions=2, replication_factor=3)
    c.start()
    leaders = c.wait_leaders()
    follower = next(i for i in range(3) if i != leaders[1])
    expected: dict[int, list[bytes]] = {1: [], 2: []}
    with BrokerClient(c.gateways(), timeout=10) as client:
        one = client.append(b"single", 1)
        expected[1].append(b"single")
        batch = [b"r%d" % i for i in range(500)]
        many = client.append_many(batch, 1)
        assert (many.partition, many.first, many.count) == (1, one.position + 1, 500)
        expected[1] += batch
        futures = [
            client.append_many_async([b"p2-%d-%d" % (k, i) for i in range(7)], 2) for k in range(20)
        ]
        firsts = sorted(f.result().first for f in futures)
        assert firsts == list(range(1, 141, 7))  # no overlap, no gap
        expected[2] = [r for _, r in read_all(client, 2)]
        assert sorted(expected[2]) == sorted(
            b"p2-%d-%d" % (k, i) for k in range(20) for i in range(7)
        )
    with BrokerClient(c.gateway(follower), timeout=10, route=False) as client:
        forwarded = client.append_many([b"via-follower", b"too"], 1)  # forwarded to the leader
        assert forwarded.positions == range(502, 504)
        expected[1] += [b"via-follower", b"too"]
    for i in range(3):
        c.kill(i)
    c.start()
    c.wait_leaders()
    with BrokerClient(c.gateways(), timeout=10) as client:
        for p in (1, 2):
            records = read_all(client, p)
            assert [r for _, r in records] == expected[p]
            assert [pos for pos, _ in records] == list(range(1, len(expected[p]) + 1))
        assert client.append_many([b"after"], 1) == (1, 504, 1)
