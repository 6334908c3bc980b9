import random
import socket
import threading
import time
import zlib

import pytest

from broker.client import (
    Appended,
    BrokerClient,
    BrokerError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
    parse_addresses,
)
from broker.transport import Transport
from broker.wire import MAX_FRAME_SIZE
from tests.helpers import wait_until

HOST = "127.0.0.1"
CLUSTER = "dual-region"


class FakeGateway:
    """The gateway protocol answered from memory, on a real Transport.

    Switches: ``error`` answers every request (or those of ``error_ops``)
    with ``(code, message)``;
    ``silent`` never answers; ``delay`` answers from a timer thread;
    ``hold`` collects that many requests, then answers them shuffled from
    several threads.
    """

    PARTITIONS = 3

    def __init__(self, port: int = 0, cluster: str = CLUSTER, node_id: int = 0):
        self.kv: dict[str, bytes] = {}
        self.logs: dict[int, list[bytes]] = {p: [] for p in range(1, self.PARTITIONS + 1)}
        self.error: tuple[str, str] | None = None
        self.error_ops: set[str] | None = None
        self.silent = False
        self.answer_topology: dict | None = None  # a topology to answer instead of the default
        self.delay = 0.0
        self.hold = 0
        self.received: list[dict] = []
        self.answered = 0
        self.connections: set = set()
        self._held: list = []
        self._round_robin = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.transport = Transport(
            node_id, cluster, HOST, port, lambda src, msgs: None, on_request=self._on_request
        )

    @property
    def address(self) -> str:
        return f"{HOST}:{self.transport.port}"

    def start(self) -> "FakeGateway":
        self.transport.start()
        return self

    def stop(self) -> None:
        self.transport.stop()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join()

    def disconnect(self) -> None:
        """Close every client connection, as a crashing broker would."""
        for conn in list(self.connections):
            conn.close()

    def _on_request(self, conn, req_id: int, body: dict) -> None:
        with self._lock:
            self.connections.add(conn)
            self.received.append(body)
            if self.silent:
                return
            answer = self.answer(body)
            if self.hold:
                self._held.append((conn, req_id, answer))
                if len(self._held) < self.hold:
                    return
                held, self._held = self._held, []
                random.shuffle(held)
                for i in range(4):
                    self._spawn(self._send_all, held[i::4])
                return
        if self.delay:
            self._spawn(self._send_later, self.delay, conn, req_id, answer)
        else:
            self._send_all([(conn, req_id, answer)])

    def _spawn(self, target, *args) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    def _send_later(self, delay: float, conn, req_id: int, answer: dict) -> None:
        time.sleep(delay)  # simulates a slow broker, not a synchronisation
        self._send_all([(conn, req_id, answer)])

    def _send_all(self, answers) -> None:
        for conn, req_id, answer in answers:
            conn.send_response(req_id, answer)
            with self._lock:
                self.answered += 1

    def partition_of(self, key: str) -> int:
        return zlib.crc32(key.encode()) % self.PARTITIONS + 1

    def answer(self, body: dict) -> dict:
        if self.error and (self.error_ops is None or body.get("op") in self.error_ops):
            code, message = self.error
            return {"ok": False, "code": code, "message": message}
        op = body.get("op")
        if op == "append":
            partition = body.get("partition")
            if partition is None:
                partition = self._round_robin % self.PARTITIONS + 1
                self._round_robin += 1
            if partition not in self.logs:
                return invalid(f"no partition {partition}")
            if "records" in body:  # many at once: consecutive positions, like a broker's
                self.logs[partition].extend(body["records"])
                n = len(body["records"])
                first = len(self.logs[partition]) - n + 1
                return {"ok": True, "partition": partition, "position": first, "count": n}
            self.logs[partition].append(body["data"])
            return {"ok": True, "partition": partition, "position": len(self.logs[partition])}
        if op == "read":
            log = self.logs.get(body["partition"])
            if log is None:
                return invalid(f"no partition {body['partition']}")
            first = body["from"]
            records = [[first + i, d] for i, d in enumerate(log[first - 1 :][: body["max"]])]
            nxt = records[-1][0] + 1 if records else first
            return {"ok": True, "partition": body["partition"], "records": records, "next": nxt}
        if op == "topology":
            return self.answer_topology or topology_document(self.transport.port)
        key = body.get("key")
        if op == "put":
            self.kv[key] = body["value"]
            return {"ok": True, "partition": self.partition_of(key)}
        if op == "get":
            if key not in self.kv:
                return {"ok": False, "code": "NOT_FOUND", "message": f"no key {key!r}"}
            return {"ok": True, "value": self.kv[key]}
        if op == "cas":
            current = self.kv.get(key)
            if current != body["expected"]:
                return {
                    "ok": False,
                    "code": "FAILED_PRECONDITION",
                    "message": f"{key!r} does not hold the expected value",
                    "current": current,
                }
            self.kv[key] = body["value"]
            return {"ok": True}
        if op == "delete":
            return {"ok": True, "existed": self.kv.pop(key, None) is not None}
        return invalid(f"unknown op {op!r}")


def invalid(message: str) -> dict:
    return {"ok": False, "code": "INVALID_ARGUMENT", "message": message}


def topology_document(port: int) -> dict:
    roles = {0: "leader", 1: "follower", 2: "follower"}
    return {
        "ok": True,
        "brokers": [
            {
                "nodeId": node,
                "host": HOST,
                "port": port,
                "region": f"region{node % 2}",
                "partitions": [
                    {
                        "partitionId": p,
                        "role": roles[(node - p + 1) % 3],
                        "health": "healthy" if node != 2 else "unhealthy",
                        "term": 4,
                    }
                    for p in (1, 2)
                ],
            }
            for node in range(3)
        ],
        "clusterSize": 3,
        "partitionsCount": 3,
        "replicationFactor": 3,
        "gatewayVersion": "0.1.0",
    }


@pytest.fixture
def make_gateway():
    started = []

    def make(**kw) -> FakeGateway:
        gw = FakeGateway(**kw).start()
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()


@pytest.fixture
def gateway(make_gateway):
    return make_gateway()


@pytest.fixture
def make_client():
    clients = []

    def make(address, **kw) -> BrokerClient:
        # These tests pin one gateway's traffic exactly; routing has its own tests.
        kw.setdefault("route", False)
        client = BrokerClient(address, **kw)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()

    def leftover():
        return [t.name for t in threading.enumerate() if t.name.startswith("broker-client")]

    # A connection that failed closes itself from its own reader thread, which may
    # still be on its way out: wait for it, within a deadline.
    try:
        wait_until(lambda: not leftover(), timeout=5)
    except AssertionError:
        pytest.fail(f"client threads left running: {leftover()}")


@pytest.fixture
def refused_address():
    """An address that refuses connections: bound, never listening."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        yield f"{HOST}:{sock.getsockname()[1]}"


def test_every_operation_round_trips(gateway, make_client):
    client = make_client(gateway.address)
    assert client.append("one", partition=2) == Appended(2, 1)
    assert client.append(b"\x00two", partition=2) == Appended(2, 2)
    records = client.read(2)
    assert records.partition == 2
    assert records.records == [(1, b"one"), (2, b"\x00two")]
    assert records.next == 3
    assert client.read(2, from_position=2, max_records=5).records == [(2, b"\x00two")]
    assert client.put("k", "värde") == gateway.partition_of("k")
    assert client.get("k") == "värde".encode()
    assert client.get("missing") is None
    client.cas("k", "värde", b"new")
    client.cas("fresh", None, "v")
    assert client.get("fresh") == b"v"
    assert client.delete("k") is True
    assert client.delete("k") is False
    topology = client.topology()
    assert "ok" not in topology
    assert [b["nodeId"] for b in topology["brokers"]] == [0, 1, 2]
    assert all(body["timeout"] == 15.0 for body in gateway.received)


def test_a_thousand_pipelined_appends_resolve_out_of_order_to_their_own_futures(
    gateway, make_client
):
    gateway.hold = 1000  # answered only once all 1000 are in flight, shuffled
    client = make_client(gateway.address)
    futures = [client.append_async(f"record {i}") for i in range(1000)]
    results = [f.result(timeout=10) for f in futures]
    for i, (partition, position) in enumerate(results):
        assert gateway.logs[partition][position - 1] == f"record {i}".encode()
    assert len(set(results)) == 1000
    assert len(gateway.connections) == 1


@pytest.mark.parametrize(
    "code, cls",
    [
        ("UNAVAILABLE", Unavailable),
        ("RESOURCE_EXHAUSTED", ResourceExhausted),
        ("DEADLINE_EXCEEDED", DeadlineExceeded),
        ("INVALID_ARGUMENT", InvalidArgument),
        ("NOT_FOUND", NotFound),
        ("FAILED_PRECONDITION", FailedPrecondition),
    ],
)
def test_error_codes_map_to_exceptions(gateway, make_client, code, cls):
    gateway.error = (code, "no leader for partition 3")
    client = make_client(gateway.address)
    with pytest.raises(cls) as err:
        client.append("x")
    assert isinstance(err.value, BrokerError)
    assert err.value.code == code
    assert err.value.message == "no leader for partition 3"
    assert str(err.value) == f"{code}: no leader for partition 3"


def test_an_unknown_error_code_is_a_plain_broker_error(gateway, make_client):
    gateway.error = ("TEAPOT", "short and stout")
    with pytest.raises(BrokerError) as err:
        make_client(gateway.address).put("k", "v")
    assert type(err.value) is BrokerError
    assert err.value.code == "TEAPOT"


def test_cas_mismatch_carries_the_current_value(gateway, make_client):
    client = make_client(gateway.address)
    with pytest.raises(FailedPrecondition) as err:
        client.cas("k", "old", "new")
    assert err.value.current is None
    client.put("k", "actual")
    with pytest.raises(FailedPrecondition) as err:
        client.cas("k", None, "new")
    assert err.value.current == b"actual"
    assert client.get("k") == b"actual"


def test_a_gateway_that_does_not_answer_hits_the_client_deadline(gateway, make_client):
    gateway.silent = True
    client = make_client(gateway.address, timeout=0.2)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        client.put("k", "v")
    assert 0.2 <= time.monotonic() - started < 3
    fut = client.append_async("x")
    with pytest.raises(DeadlineExceeded):
        fut.result(timeout=5)
    gateway.silent = False
    client.put("k", "v")  # the same connection still works
    assert len(gateway.connections) == 1


def test_a_late_answer_after_the_deadline_is_dropped(gateway, make_client):
    gateway.delay = 1.0
    client = make_client(gateway.address, timeout=0.1)
    with pytest.raises(DeadlineExceeded):
        client.append("late")
    gateway.delay = 0.0
    wait_until(lambda: gateway.answered == 1)
    assert client.append("on time", partition=3) == Appended(3, 1)


def test_a_lost_connection_fails_everything_in_flight_and_the_next_call_reconnects(
    gateway, make_client
):
    gateway.silent = True
    client = make_client(gateway.address)
    futures = [client.append_async(f"r{i}") for i in range(10)]
    wait_until(lambda: len(gateway.received) == 10)
    gateway.disconnect()
    for fut in futures:
        with pytest.raises(Unavailable, match="lost") as err:
            fut.result(timeout=5)  # long before the 15 s deadline
        assert err.value.sent  # they reached the gateway: they may have taken effect
    gateway.silent = False
    client.put("k", "v")
    assert len(gateway.connections) == 2


def test_reconnects_after_the_gateway_restarts_on_the_same_port(make_gateway, make_client):
    first = make_gateway()
    client = make_client(first.address)
    client.put("k", "v")
    first.stop()
    with pytest.raises(Unavailable):
        client.get("k")
    second = make_gateway(port=first.transport.port)
    assert client.put("k", "again") == second.partition_of("k")
    assert second.kv == {"k": b"again"}


def test_fails_over_to_the_next_address(make_gateway, make_client, refused_address):
    a, b = make_gateway(node_id=0), make_gateway(node_id=1)
    client = make_client(f"{refused_address},{a.address},{b.address}")
    client.put("k", "v")
    assert a.kv == {"k": b"v"}
    a.stop()
    # The first call may still go to the connection that is being lost; its
    # fate is unknown, so the client reports it instead of resending it.
    for _attempt in range(2):
        try:
            client.put("k", "w")
            break
        except Unavailable:
            pass
    assert b.kv == {"k": b"w"}


def test_no_reachable_address_is_unavailable_naming_each(make_client, refused_address):
    client = make_client(f"{refused_address},{refused_address}")
    with pytest.raises(Unavailable) as err:
        client.put("k", "v")
    assert err.value.message.count(refused_address) == 2
    assert not err.value.sent  # nothing left the client: certainly not applied
    fut = client.append_async("x")  # async calls report it through the future
    assert isinstance(fut.exception(timeout=5), Unavailable)
    assert not fut.exception().sent


def test_a_cluster_name_mismatch_is_unavailable_with_the_reason(gateway, make_client):
    client = make_client(gateway.address, cluster_name="other")
    with pytest.raises(Unavailable, match="cluster name mismatch"):
        client.topology()


def test_threads_can_share_one_client(gateway, make_client):
    client = make_client(gateway.address)
    errors = []

    def work(n: int) -> None:
        try:
            for i in range(50):
                key = f"t{n}-{i}"
                client.put(key, key)
                assert client.get(key) == key.encode()
                client.cas(key, key, "done")
                client.append(key, partition=n % 3 + 1)
        except Exception as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(gateway.kv) == 400 and set(gateway.kv.values()) == {b"done"}
    assert sum(len(log) for log in gateway.logs.values()) == 400
    assert len(gateway.connections) == 1


def test_close_fails_requests_in_flight_and_refuses_new_ones(gateway, make_client):
    gateway.silent = True
    client = make_client(gateway.address)
    futures = [client.append_async("x") for _ in range(5)]
    client.close()
    for fut in futures:
        assert isinstance(fut.exception(timeout=5), Unavailable)
    with pytest.raises(Unavailable, match="closed"):
        client.put("k", "v")


def test_a_request_over_the_frame_limit_is_refused_without_sending(gateway, make_client):
    client = make_client(gateway.address)
    with pytest.raises(InvalidArgument, match="exceeds"):
        client.append(b"x" * (MAX_FRAME_SIZE + 1))
    assert client.append("small") == Appended(1, 1)
    assert len(gateway.connections) == 1


def test_values_must_be_str_or_bytes(gateway, make_client):
    client = make_client(gateway.address)
    with pytest.raises(TypeError):
        client.put("k", 5)
    with pytest.raises(TypeError):
        client.get(b"k")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("127.0.0.1:26500", [("127.0.0.1", 26500)]),
        ("a:1, b:2,", [("a", 1), ("b", 2)]),
        ("host", [("host", 26500)]),
        ("[::1]:7", [("::1", 7)]),
        ("[::1]", [("::1", 26500)]),
        (["a:1", "b"], [("a", 1), ("b", 26500)]),
    ],
)
def test_parse_addresses(text, expected):
    assert parse_addresses(text) == expected


@pytest.mark.parametrize("text", ["", "a:port", "a:0", "a:70000", ":5", ","])
def test_parse_addresses_refuses_bad_ones(text):
    with pytest.raises(ValueError):
        parse_addresses(text)


# --- routing to partition leaders ----------------------------------------------


def leader_map(partitions: dict[int, FakeGateway]) -> dict:
    """A topology whose partition p is led by the gateway partitions[p]."""
    gateways = {gw.transport.port: gw for gw in partitions.values()}
    return {
        "ok": True,
        "brokers": [
            {
                "nodeId": n,
                "host": HOST,
                "port": port,
                "alive": True,
                "partitions": [
                    {"partitionId": p, "role": "leader", "health": "healthy", "term": 2}
                    for p, gw in partitions.items()
                    if gw is gateways[port]
                ],
            }
            for n, port in enumerate(sorted(gateways))
        ],
        "partitionsCount": FakeGateway.PARTITIONS,
    }


def test_requests_go_straight_to_the_partition_leader(make_gateway, make_client):
    entry, leader = make_gateway(), make_gateway()
    topology = leader_map({1: entry, 2: leader, 3: leader})
    for gw in (entry, leader):
        gw.answer_topology = topology
    client = make_client(entry.address, route=True)
    wait_until(lambda: len(client.routes()) == 3)  # learnt in the background
    assert client.append("x", partition=2) == Appended(2, 1)
    assert [b["data"] for b in leader.received if b["op"] == "append"] == [b"x"]
    assert not [b for b in entry.received if b["op"] == "append"]
    for key in ("k", "kk", "kkk", "kkkk"):  # the key's partition decides where it goes
        client.put(key, "v")
        owner = {1: entry, 2: leader, 3: leader}[entry.partition_of(key)]
        assert [b["key"] for b in owner.received if b["op"] == "put"][-1] == key


def test_unkeyed_appends_are_spread_over_the_partitions_with_leaders(make_gateway, make_client):
    a, b = make_gateway(), make_gateway()
    topology = leader_map({1: a, 2: b, 3: b})
    a.answer_topology = b.answer_topology = topology
    client = make_client(a.address, route=True)
    wait_until(lambda: len(client.routes()) == 3)
    partitions = {client.append(f"r{i}").partition for i in range(6)}
    assert partitions == {1, 2, 3}
    assert sum(1 for x in b.received if x["op"] == "append") == 4


def test_an_unreachable_leader_falls_back_to_the_given_gateway(make_gateway, make_client):
    entry, leader = make_gateway(), make_gateway()
    entry.answer_topology = leader_map({1: entry, 2: leader, 3: leader})
    client = make_client(entry.address, route=True)
    wait_until(lambda: len(client.routes()) == 3)
    leader.stop()  # the leader's gateway is gone; the entry gateway forwards
    assert client.append("x", partition=2).partition == 2
    assert [b["data"] for b in entry.received if b["op"] == "append"] == [b"x"]
