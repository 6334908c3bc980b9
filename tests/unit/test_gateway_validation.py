"""Gateway request validation (issue 12): sizes that can be replicated, numbers
that are finite and in range, metric labels from a fixed set."""

from __future__ import annotations

import math
import threading
from concurrent.futures import Future

import msgpack
import pytest

from broker import partition as sm
from broker import wire
from broker.client import BrokerClient, InvalidArgument
from broker.metrics import BrokerMetrics
from broker.node.gateway import (
    ERROR_CODES,
    MAX_TIMEOUT,
    Gateway,
    RequestError,
    parse_request,
)
from broker.node.link import InternalLink
from broker.raft.messages import (
    MAX_INDEX,
    MAX_NODE_ID,
    MAX_PARTITION_ID,
    MAX_TERM,
    AppendRequest,
    Entry,
)
from broker.wire import FrameDecoder, Gossip, RaftBatch, encode_frame
from tests.helpers import wait_until

P = 3  # partitions


def refused(body: dict, match: str, **kw) -> str:
    with pytest.raises(RequestError, match=match) as e:
        parse_request(body, P, **kw)
    assert e.value.code == "INVALID_ARGUMENT"
    return e.value.message


# --- finding 4: numbers ------------------------------------------------------------


@pytest.mark.parametrize(
    "timeout", [math.nan, math.inf, -math.inf, -1, -0.001, 1e300, 2**64, True, "5", [1]]
)
def test_bad_timeouts_are_refused(timeout):
    refused({"op": "append", "data": b"x", "timeout": timeout}, "'timeout'")
    refused({"op": "topology", "timeout": timeout}, "'timeout'")


@pytest.mark.parametrize("timeout", [0, 0.0, 0.5, 10, MAX_TIMEOUT])
def test_good_timeouts_are_accepted(timeout):
    assert parse_request({"op": "append", "data": b"x", "timeout": timeout}, P).timeout == timeout


@pytest.mark.parametrize("pid", [0, -1, P + 1, 2**31, 2**64 - 1, -(2**63), True, 1.0, "1"])
def test_bad_partitions_are_refused(pid):
    refused({"op": "read", "partition": pid}, "partition")
    refused({"op": "append", "data": b"x", "partition": pid}, "partition")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        *[("from", v) for v in (-1, 2**62, 2**64 - 1, 1.5, False)],
        *[("max", v) for v in (-1, 2**31, 2**63, math.inf, True)],
    ],
)
def test_bad_positions_and_counts_are_refused(field, value):
    refused({"op": "read", "partition": 1, field: value}, repr(field))


def test_read_bounds_are_kept():
    req = parse_request({"op": "read", "partition": 2, "from": 2**62 - 1, "max": 2**31 - 1}, P)
    assert req.partition == 2
    assert msgpack.unpackb(req.command) == ["read", 2**62 - 1, 10_000]


def test_unknown_and_control_ops_from_clients_are_refused():
    refused({"op": "x" * 10_000}, "unknown op")
    assert len(refused({"op": "x" * 10_000}, "unknown op")) < 100  # not echoed in full
    refused({"op": ["append"]}, "unknown op")  # unhashable: no TypeError
    refused({"op": "_reconfigure", "partition": 1, "replicas": {1: 1}}, "unknown op")
    refused({}, "unknown op")
    req = parse_request(
        {"op": "_reconfigure", "partition": 1, "replicas": {1: 1}}, P, internal=True
    )
    assert callable(req.command)
    for replicas in ({"a": 1}, {1: math.inf}, {-1: 1}, {1: 2**40}, [1]):
        refused(
            {"op": "_reconfigure", "partition": 1, "replicas": replicas}, "replicas", internal=True
        )


def test_strings_must_be_utf8():
    refused({"op": "put", "key": "\ud800", "value": b"v"}, "UTF-8")
    refused({"op": "append", "data": "\udfff"}, "UTF-8")


# --- finding 3: what is accepted can be replicated ---------------------------------


def largest(op: str, limit: int) -> dict:
    """The largest ``op`` request a gateway with frame limit ``limit`` accepts."""
    room = wire.max_command_size(limit)
    if op == "append":
        fixed = len(sm.encode(sm.APPEND, b""))
        body = {"op": "append", "data": b"d" * (room - fixed - 4)}
    elif op == "put":
        fixed = len(sm.encode(sm.PUT, "k" * 40, b""))
        body = {"op": "put", "key": "k" * 40, "value": b"v" * (room - fixed - 4)}
    else:
        fixed = len(sm.encode(sm.CAS, "k" * 40, b"e" * 100, b""))
        body = {"op": "cas", "key": "k" * 40, "expected": b"e" * 100}
        body["value"] = b"v" * (room - fixed - 4)
    # The bin headers grow by 2 bytes past 64 KiB: take exactly what is left.
    while len(parse_request(body, P, limit).command) < room:
        key = "data" if op == "append" else "value"
        body[key] += b"z" * (room - len(parse_request(body, P, limit).command))
    assert len(parse_request(body, P, limit).command) == room
    return body


@pytest.mark.parametrize("limit", [1 << 16, wire.MAX_FRAME_SIZE])
@pytest.mark.parametrize("op", ["append", "put", "cas"])
def test_one_byte_over_the_largest_command_is_refused_naming_the_limit(op, limit):
    body = largest(op, limit)
    key = "data" if op == "append" else "value"
    message = refused({**body, key: body[key] + b"+"}, "exceeds", max_frame_size=limit)
    assert str(wire.max_command_size(limit)) in message
    assert str(limit) in message


def test_the_put_of_the_finding_is_refused():
    # 4,194,267 bytes passed the client's check but made a replication message
    # over the 4 MiB frame limit, dropped forever.
    refused({"op": "put", "key": "k", "value": b"v" * 4_194_267}, "exceeds")


class Leader:
    """A partition handle that leads and commits every command at once (the Raft
    side is covered by the replication frame check below)."""

    def __init__(self):
        self.status = {"role": "leader", "leader": None}
        self.commands: list[bytes] = []

    def is_leader(self) -> bool:
        return True

    def propose(self, command: bytes, done, count: int = 1) -> None:
        self.commands.append(command)
        done({"ok": True, "partition": 1, "position": len(self.commands)})

    def call(self, fn) -> Future:
        fut: Future = Future()
        fut.set_exception(RuntimeError("not used"))
        return fut

    def refusal(self, write: bool) -> dict | None:
        return None

    def read_records(self, *args):
        raise AssertionError("not used")


class Conn:
    def __init__(self):
        self.responses: dict[int, dict] = {}
        self.lock = threading.Lock()

    def send_response(self, req_id: int, body: dict) -> bool:
        with self.lock:
            self.responses[req_id] = body
        return True


@pytest.fixture
def two_gateways():
    """Gateway 1 hosts nothing and forwards to gateway 2, which leads partition 1;
    the brokers' link messages travel as real GOSSIP frames under the limit."""
    made = []

    def make(limit: int, metrics=None):
        leader = Leader()
        gws: dict[int, Gateway] = {}
        links: dict[int, InternalLink] = {}
        sizes: list[int] = []

        def sender(src: int):
            def send(dst: int, payload) -> bool:
                data = encode_frame(Gossip(payload))
                sizes.append(len(data) - wire.HEADER_SIZE)
                (frame,) = FrameDecoder(limit).feed(data)  # FrameTooLarge if over
                links[dst].on_message(src, frame.payload)
                return True

            return send

        for node in (1, 2):
            links[node] = InternalLink(node, sender(node))
            gws[node] = Gateway(
                node,
                1,
                {2: {1: leader}}.get(node, {}),
                lambda pid: 2,
                links[node],
                lambda: {"brokers": []},
                request_timeout=5.0,
                max_inflight=100,
                metrics=metrics,
                max_frame_size=limit,
            )
            links[node].serve = lambda conn, rid, body, g=gws[node]: g.handle(
                conn, rid, body, internal=True
            )
        made.extend(gws.values())
        return gws[1], leader, sizes

    yield make
    for g in made:
        g.stop()


@pytest.mark.parametrize("limit", [1 << 16, wire.MAX_FRAME_SIZE])
@pytest.mark.parametrize("op", ["append", "put", "cas"])
def test_the_largest_accepted_request_is_forwarded_and_replicated_within_the_limit(
    two_gateways, op, limit
):
    gateway, leader, sizes = two_gateways(limit)
    body = largest(op, limit)
    if op == "append":
        body["partition"] = 1
    body["junk"] = b"j" * (limit // 2)  # extra fields are not forwarded
    conn = Conn()
    gateway.handle(conn, 7, body)
    result = wait_until(lambda: conn.responses.get(7))
    assert result.get("ok") is True, result
    (command,) = leader.commands
    assert len(command) == wire.max_command_size(limit)
    assert max(sizes) <= limit
    # The command as the leader replicates it: one entry of an AppendRequest,
    # every number at its largest, in a RAFT frame within the limit.
    entry = Entry(MAX_INDEX, MAX_TERM, data=command)
    msg = AppendRequest(
        MAX_TERM, MAX_NODE_ID, MAX_NODE_ID, MAX_INDEX - 1, MAX_TERM, (entry,), MAX_INDEX
    )
    item = wire.pack_raft_item(MAX_PARTITION_ID, msg)
    assert len(item) <= limit - 5  # the transport's rule for one item
    frame = wire.raft_frame([item])
    assert list(FrameDecoder(limit).feed(frame)) == [RaftBatch([(MAX_PARTITION_ID, msg)])]


def test_a_nan_timeout_is_refused_and_deadlines_keep_working(two_gateways):
    gateway, leader, _ = two_gateways(1 << 16)
    leader.propose = lambda command, done: None  # the leader never answers
    conn = Conn()
    gateway.handle(conn, 1, {"op": "append", "data": b"x", "timeout": math.nan})
    assert conn.responses[1]["code"] == "INVALID_ARGUMENT"
    gateway.handle(conn, 2, {"op": "append", "data": b"x", "partition": 1, "timeout": 0.3})
    result = wait_until(lambda: conn.responses.get(2), timeout=5)
    assert result["code"] == "DEADLINE_EXCEEDED"


def test_the_client_refuses_early_with_the_gateways_message():
    # The client connects lazily: a refused request never opens a connection.
    client = BrokerClient("127.0.0.1:9", timeout=1, route=False)
    try:
        body = largest("put", wire.MAX_FRAME_SIZE)
        value = body["value"] + b"+"
        expected = refused({**body, "value": value}, "exceeds")
        with pytest.raises(InvalidArgument) as e:
            client.put(body["key"], value)
        assert e.value.message == expected
        with pytest.raises(InvalidArgument, match="exceeds"):
            client.append(b"x" * wire.max_command_size())
        with pytest.raises(InvalidArgument, match="exceeds"):
            client.cas("k", b"e" * 2_000_000, b"v" * 2_200_000)
        assert client._conn is None
    finally:
        client.close()


# --- finding 5: metric labels -------------------------------------------------------


def test_unknown_ops_do_not_grow_the_metrics(two_gateways):
    metrics = BrokerMetrics()  # both gateways count: the origin and the leader
    gateway, _, _ = two_gateways(1 << 16, metrics)
    conn = Conn()
    gateway.handle(conn, 0, {"op": "append", "data": b"x", "partition": 1})
    wait_until(lambda: conn.responses.get(0))
    before = len(metrics.render())
    n = 2000
    for i in range(n):
        gateway.handle(conn, i + 1, {"op": f"op-{i}-" + "x" * 50})
    gateway.handle(conn, n + 1, {"op": "_reconfigure", "partition": 1, "replicas": {1: 1}})
    gateway.handle(conn, n + 2, {"op": ["a", "list"]})
    assert all(conn.responses[i]["code"] == "INVALID_ARGUMENT" for i in range(1, n + 3))
    text = metrics.render().decode()
    assert len(text) < before + 500
    assert "op-1-" not in text and "_reconfigure" not in text
    line = 'broker_gateway_requests_total{code="INVALID_ARGUMENT",op="unknown"}'
    assert f"{line} {float(n + 2)}" in text
    assert 'broker_gateway_requests_total{code="OK",op="append"} 2.0' in text


def test_codes_of_answers_are_labelled_from_a_fixed_set(two_gateways):
    metrics = BrokerMetrics()
    gateway, leader, _ = two_gateways(1 << 16, metrics)
    leader.propose = lambda command, done: done({"ok": False, "code": "WEIRD-" + "x" * 99})
    conn = Conn()
    gateway.handle(conn, 1, {"op": "append", "data": b"x", "partition": 1})
    wait_until(lambda: conn.responses.get(1))
    text = metrics.render().decode()
    assert "WEIRD" not in text
    assert 'broker_gateway_requests_total{code="UNKNOWN",op="append"} 2.0' in text
    assert "INVALID_ARGUMENT" in ERROR_CODES


def test_the_inflight_gauge_reads_the_requests_in_flight_when_scraped(two_gateways):
    metrics = BrokerMetrics()
    gateway, leader, _ = two_gateways(1 << 16, metrics)
    held = []
    leader.propose = lambda command, done: held.append(done)
    conn = Conn()
    for i in range(3):
        gateway.handle(conn, i, {"op": "append", "data": b"x", "partition": 1})
    wait_until(lambda: len(held) == 3)
    line = 'broker_gateway_inflight_requests{partition="1"}'
    assert f"{line} 3.0" in metrics.render().decode()
    for done in held:
        done({"ok": True, "partition": 1, "position": 1})
    wait_until(lambda: len(conn.responses) == 3)
    assert f"{line} 0.0" in metrics.render().decode()
