"""Hostile input on a real broker's gateway port (issue 12): a few hundred random
and mutated frames on fresh connections, then the broker still serves a normal
client, its partitions still commit, and its metrics did not grow."""

from __future__ import annotations

import errno
import math
import random
import socket
import struct
import urllib.request

import pytest

from broker import wire
from broker.client import BrokerClient
from broker.demo.localcluster import LocalCluster
from broker.raft.messages import AppendRequest, Entry, TimeoutNow, VoteRequest
from broker.transport import FramedClient
from broker.wire import (
    FrameType,
    Gossip,
    Hello,
    RaftBatch,
    Request,
    encode_frame,
)
from tests.integration.test_cluster import FAST

CLUSTER = "dual-region"


def raw_frame(frame_type: int, body: bytes) -> bytes:
    return struct.pack(">2sBBI", b"BK", 1, frame_type, len(body)) + body


def hello(role: str = "client", node_id: int = -1) -> bytes:
    return encode_frame(Hello(CLUSTER, node_id, 1, role))


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(buf)) if buf else 0
        action = rng.choice(["flip", "insert", "delete", "cut"])
        if action == "flip" and buf:
            buf[at] ^= rng.randint(1, 255)
        elif action == "insert":
            buf[at:at] = rng.randbytes(rng.randint(1, 8))
        elif action == "delete":
            del buf[at : at + rng.randint(1, 8)]
        elif action == "cut" and at > 8:
            del buf[at:]
    return bytes(buf)


def hostile_payloads(rng: random.Random, n: int) -> list[bytes]:
    bomb = b"\xdd" + (1 << 20).to_bytes(4, "big") + b"\x90" * (1 << 20)
    requests = [
        {"op": "append", "data": b"x", "timeout": math.nan},
        {"op": "append", "data": b"x", "timeout": math.inf},
        {"op": "append", "data": b"x", "timeout": -1},
        {"op": "read", "partition": 2**64 - 1},
        {"op": "read", "partition": 1, "from": -5, "max": 2**63},
        {"op": "put", "key": "k", "value": b"v" * 4_194_267},  # the finding's put
        {"op": "_reconfigure", "partition": 1, "replicas": {9: 1}},  # control: clients may not
        {"op": True},
    ]
    fixed = [
        rng.randbytes(64),
        hello()[:-2] + b"\xff\xff",
        raw_frame(FrameType.HELLO, bomb),  # 1 MiB HELLO of empty arrays
        raw_frame(FrameType.HELLO, b"\x94" + b"\x90" * 4),
        hello() + raw_frame(FrameType.REQUEST, b"\x92\x01\x81\xa1a" + bomb),
        hello() + raw_frame(FrameType.GOSSIP, bomb),
        hello() + raw_frame(FrameType.REQUEST, b"\x92\x01\x81\xa1a" + b"\x91" * 2000 + b"\x90"),
        hello("peer", 7) + encode_frame(RaftBatch([(1, TimeoutNow(2**64 - 1, 7, 0))])),
        hello("peer", 7) + encode_frame(RaftBatch([(1, VoteRequest(2**62 + 1, 7, 0, 1, 1))])),
        hello("peer", 2**31) + encode_frame(Gossip({"x": 1})),
        hello() + encode_frame(Request(1, {f"op{i}": i for i in range(100)})),
        *[hello() + encode_frame(Request(i, body)) for i, body in enumerate(requests)],
        *[hello() + encode_frame(Request(9, {"op": f"op-{i}"})) for i in range(50)],
    ]
    valid = [
        hello(),
        encode_frame(Request(3, {"op": "append", "data": b"hostile", "partition": 1})),
        encode_frame(Request(4, {"op": "read", "partition": 1, "from": 1, "max": 10})),
        encode_frame(RaftBatch([(1, AppendRequest(1, 7, 0, 0, 0, (Entry(1, 1, data=b"z"),), 0))])),
    ]
    out = list(fixed)
    while len(out) < n:
        kind = rng.random()
        if kind < 0.2:
            out.append(rng.randbytes(rng.randint(1, 300)))
        elif kind < 0.4:
            out.append(mutate(rng, hello()))
        else:
            stream = hello() + b"".join(rng.choices(valid[1:], k=rng.randint(1, 3)))
            out.append(mutate(rng, stream))
    return out


def send(port: int, payload: bytes) -> None:
    """Send ``payload`` on a fresh connection and read until the broker closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
        except (ConnectionResetError, BrokenPipeError):
            pass  # closed on us mid-send: a refusal
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise  # ENOTCONN: closed (reset) before our shutdown, a refusal too


@pytest.fixture
def cluster(tmp_path):
    c = LocalCluster(str(tmp_path / "c"), size=3, partitions=2, replication_factor=3,
                     overrides=FAST, cluster_name=CLUSTER)  # fmt: skip
    try:
        yield c
    finally:
        c.stop_all()


def metrics_size(c: LocalCluster, i: int) -> int:
    with urllib.request.urlopen(c.management(i) + "/actuator/prometheus", timeout=5) as r:
        return len(r.read())


def test_hostile_frames_leave_the_broker_serving(cluster):
    c = cluster
    c.start()
    c.wait_leaders()
    target = 0
    with BrokerClient(c.gateways(), timeout=10) as client:
        before = [client.append(f"before-{p}", partition=p) for p in (1, 2)]
    size_before = metrics_size(c, target)

    rng = random.Random(12)
    for payload in hostile_payloads(rng, 300):
        send(c.ports[target]["gateway"], payload)

    # The finding's put, answered (not dropped) with the limit named.
    raw = FramedClient("127.0.0.1", c.ports[target]["gateway"], CLUSTER, timeout=10)
    try:
        answer = raw.request({"op": "put", "key": "k", "value": b"v" * 4_194_267})
        assert answer["code"] == "INVALID_ARGUMENT" and "exceeds" in answer["message"]
        answer = raw.request({"op": "append", "data": b"x", "timeout": math.nan})
        assert answer["code"] == "INVALID_ARGUMENT" and "timeout" in answer["message"]
    finally:
        raw.close()

    assert all(c.procs[i].poll() is None for i in range(c.size))
    # A normal client on the attacked gateway alone: every partition still commits.
    with BrokerClient(c.gateway(target), timeout=10, route=False) as client:
        for p, first in zip((1, 2), before, strict=True):
            after = client.append(f"after-{p}", partition=p)
            assert after.partition == p and after.position > first.position
            records = dict(client.read(p, first.position, 1000).records)
            assert records[first.position] == f"before-{p}".encode()
            assert records[after.position] == f"after-{p}".encode()
        largest = wire.max_command_size() - 64
        assert client.put("big", b"b" * largest) in (1, 2)  # the largest put commits
        assert len(client.get("big")) == largest
    # 50 unknown op names and the rest did not add a series each.
    with urllib.request.urlopen(c.management(target) + "/actuator/prometheus", timeout=5) as r:
        text = r.read().decode()
    assert 'op="op-' not in text and 'op="_reconfigure"' not in text
    assert 'broker_gateway_requests_total{code="INVALID_ARGUMENT",op="unknown"}' in text
    assert len(text) < size_before + 5_000  # a few new known series at most
    log = c.log_tail(target, 2000)
    assert "closing connection" in log  # the hostile connections were seen and closed
    assert "Traceback" not in log and "handler failed" not in log
