"""The management API of a real 3-broker cluster (started with ``broker run``)
against bad and hostile input: ids outside 32 bits, unbounded sizes, broken
JSON, oversized or missing lengths, slow clients and too many connections.

One cluster serves the whole module; every test leaves it as it found it,
except the last, which makes a real change to prove nothing got jammed.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.demo.localcluster import LocalCluster, wait_for
from broker.node.management import MAX_BODY_SIZE, MAX_CONNECTIONS, REQUEST_DEADLINE
from broker.node.topology_api import MAX_BROKER_ID, MAX_BROKERS
from tests.integration.test_cluster import FAST


@pytest.fixture(scope="module")
def c(tmp_path_factory):
    cluster = LocalCluster(
        str(tmp_path_factory.mktemp("hostile")),
        size=3,
        partitions=1,
        replication_factor=3,
        overrides=FAST,
    )
    try:
        cluster.start()
        cluster.wait_leaders()
        yield cluster
    finally:
        cluster.stop_all()


def port(c: LocalCluster, node: int = 0) -> int:
    return c.ports[node]["management"]


def request(
    c: LocalCluster,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    node: int = 0,
) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port(c, node), timeout=10)
    try:
        conn.request(
            method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})}
        )
        resp = conn.getresponse()
        raw = resp.read()
        assert resp.getheader("Content-Type") == "application/json", raw[:200]
        return resp.status, json.loads(raw) if raw else {}
    finally:
        conn.close()


def send_json(c: LocalCluster, method: str, path: str, obj, node: int = 0) -> tuple[int, dict]:
    return request(c, method, path, json.dumps(obj).encode(), node=node)


def raw_exchange(c: LocalCluster, data: bytes, node: int = 0) -> bytes:
    with socket.create_connection(("127.0.0.1", port(c, node)), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def cluster_doc(c: LocalCluster, node: int = 0) -> dict:
    status, doc = request(c, "GET", "/actuator/cluster", node=node)
    assert status == 200
    return doc


def unchanged(c: LocalCluster, before: dict) -> None:
    """Every broker still holds the configuration it had, with no change pending."""
    for node in range(3):
        doc = cluster_doc(c, node)
        assert doc["pendingChange"] is None
        assert doc["version"] == before["version"]
        assert sorted(b["id"] for b in doc["brokers"]) == [0, 1, 2]


HUGE = "99999999999999999999"


def test_ids_beyond_32_bits_are_refused_before_planning(c):
    before = cluster_doc(c)
    for node in (0, 1):  # the coordinator and a broker that would forward
        for path_id in (HUGE, str(MAX_BROKER_ID + 1), "-1", "1e3", "%D9%A3"):
            status, body = request(c, "POST", f"/actuator/cluster/brokers/{path_id}", node=node)
            assert status == 400, (path_id, body)
            assert "path parameter id" in body["message"]
        status, body = request(c, "POST", f"/actuator/cluster/brokers/{HUGE}", node=node)
        assert str(MAX_BROKER_ID) in body["message"]
        status, body = request(c, "DELETE", f"/actuator/cluster/brokers/{HUGE}", node=node)
        assert status == 400 and str(MAX_BROKER_ID) in body["message"]
    cases = [
        ("/actuator/cluster", {"brokers": {"add": [int(HUGE)]}}, "brokers.add"),
        ("/actuator/cluster", {"brokers": {"add": [HUGE]}}, "brokers.add"),
        ("/actuator/cluster", {"brokers": {"remove": [-1]}}, "brokers.remove"),
        ("/actuator/cluster", {"partitions": {"replicationFactor": 2**40}}, "replicationFactor"),
        ("/actuator/cluster?force=true", {"brokers": {"remove": [2**31]}}, "brokers.remove"),
    ]
    for path, body, field in cases:
        status, answer = send_json(c, "PATCH", path, body)
        assert status == 400, (body, answer)
        assert field in answer["message"]
    status, answer = send_json(c, "POST", "/actuator/cluster/brokers", [0, 1, 2, int(HUGE)])
    assert status == 400 and str(MAX_BROKER_ID) in answer["message"]
    status, answer = send_json(
        c, "POST", f"/actuator/cluster/brokers?replicationFactor={HUGE}", [0, 1, 2]
    )
    assert status == 400 and "replicationFactor" in answer["message"]
    unchanged(c, before)


def test_sizes_derived_from_a_request_are_bounded(c):
    before = cluster_doc(c)
    started = time.monotonic()
    status, body = send_json(
        c, "PATCH", "/actuator/cluster?dryRun=true", {"brokers": {"count": 400000}}
    )
    assert time.monotonic() - started < 1.0
    assert status == 400
    assert "brokers.count" in body["message"] and str(MAX_BROKERS) in body["message"]
    status, body = send_json(
        c, "PATCH", "/actuator/cluster", {"brokers": {"add": list(range(3, MAX_BROKERS + 3))}}
    )
    assert status == 400 and str(MAX_BROKERS) in body["message"]
    status, body = send_json(
        c, "POST", "/actuator/cluster/brokers?dryRun=true", list(range(MAX_BROKERS + 1))
    )
    assert status == 400 and str(MAX_BROKERS) in body["message"]
    # The maximum itself is planned, quickly.
    started = time.monotonic()
    status, body = send_json(
        c, "PATCH", "/actuator/cluster?dryRun=true", {"brokers": {"count": MAX_BROKERS}}
    )
    assert time.monotonic() - started < 5.0
    assert status == 200, body
    assert len(body["expectedTopology"]) == MAX_BROKERS
    unchanged(c, before)


BAD_BODIES = [
    (b"{", "invalid JSON"),
    (b'{"brokers": {"count": ' + b"9" * 5000 + b"}}", "digits"),
    (b"[" * 100_000 + b"]" * 100_000, "nested deeper"),
    (b'{"a":' * 40 + b"1" + b"}" * 40, "nested deeper"),
    (b'{"partitions": {"replicationFactor": NaN}}', "NaN"),
    (b'{"partitions": {"replicationFactor": Infinity}}', "Infinity"),
    (b'{"partitions": {"replicationFactor": -Infinity}}', "Infinity"),
    (b'{"partitions": {"replicationFactor": 1e999}}', "out of range"),
    (b'{"brokers": {"add": ["\xff"]}}', "UTF-8"),
    (b'{"brokers": {"count": 3.5}}', "brokers.count"),
    (b'{"brokers": {"count": true}}', "brokers.count"),
    (b'{"brokers": {"add": [[1]]}}', "brokers.add"),
    (b'"brokers"', "JSON object"),
]


@pytest.mark.parametrize(
    "body,fragment", BAD_BODIES, ids=[f[1] + str(i) for i, f in enumerate(BAD_BODIES)]
)
def test_bad_json_is_a_400_with_a_message(c, body, fragment):
    status, answer = request(c, "PATCH", "/actuator/cluster?dryRun=true", body)
    assert status == 400, answer
    assert fragment in answer["message"]


def test_lengths_are_checked_before_reading(c):
    before = cluster_doc(c)
    # Announced too large: refused at once, nothing read, connection closed.
    with socket.create_connection(("127.0.0.1", port(c)), timeout=10) as sock:
        sock.sendall(
            b"PATCH /actuator/cluster HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: %d\r\n\r\n" % (MAX_BODY_SIZE + 1)
        )
        reply = sock.makefile("rb").read()
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert b"Connection: close" in reply
    for length in (b"9" * 5000, b"99999999999999999999"):
        reply = raw_exchange(
            c,
            b"PATCH /actuator/cluster HTTP/1.1\r\nHost: x\r\nContent-Length: "
            + length
            + b"\r\n\r\n",
        )
        assert reply.startswith(b"HTTP/1.1 413 "), reply[:200]
    for length in (b"-1", b"0x10", b"1 2"):
        reply = raw_exchange(
            c,
            b"PATCH /actuator/cluster HTTP/1.1\r\nHost: x\r\nContent-Length: "
            + length
            + b"\r\n\r\n",
        )
        assert reply.startswith(b"HTTP/1.1 400 "), reply[:200]
    reply = raw_exchange(
        c,
        b"PATCH /actuator/cluster HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Content-Length: 3\r\nConnection: close\r\n\r\n{}",
    )
    assert reply.startswith(b"HTTP/1.1 400 ") and b"conflicting" in reply
    # A body-carrying endpoint without a length: 411, not an empty body.
    reply = raw_exchange(
        c, b"PATCH /actuator/cluster HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert reply.startswith(b"HTTP/1.1 411 "), reply[:200]
    # A bodiless POST (curl -X POST) still works.
    reply = raw_exchange(
        c,
        b"POST /actuator/exporting/resume HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 204 "), reply[:200]
    unchanged(c, before)


def test_a_dripping_client_is_closed_while_others_are_served(c):
    drip = socket.create_connection(("127.0.0.1", port(c)), timeout=10)
    normal = http.client.HTTPConnection("127.0.0.1", port(c), timeout=10)
    line = b"GET /actuator/health HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200
    started = time.monotonic()
    closed_after = None
    normal_requests = 0
    try:
        for byte in line:
            try:
                drip.sendall(bytes([byte]))
                drip.settimeout(1.0)  # the drip's pace: one byte a second
                if drip.recv(1) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                pass
            except ConnectionError:
                closed_after = time.monotonic() - started
                break
            # A keep-alive client on the same broker is served meanwhile, on one connection.
            normal.request("GET", "/actuator/health/liveness")
            resp = normal.getresponse()
            resp.read()
            assert resp.status == 200
            assert resp.getheader("Connection") != "close"
            normal_requests += 1
            if time.monotonic() - started > REQUEST_DEADLINE + 5:
                break
    finally:
        drip.close()
        normal.close()
    assert closed_after is not None, "the dripping client was never closed"
    assert REQUEST_DEADLINE - 1 <= closed_after <= REQUEST_DEADLINE + 3
    assert normal_requests >= REQUEST_DEADLINE - 2
    assert "Request timed out" in c.log_tail(0, 200)


def test_the_connection_cap_answers_503_and_frees_up(c):
    busy = []
    try:
        # Each holds a thread: a request has begun (a partial request line).
        for _ in range(MAX_CONNECTIONS):
            s = socket.create_connection(("127.0.0.1", port(c, 1)), timeout=10)
            s.sendall(b"GET /actuator/he")
            busy.append(s)
        reply = raw_exchange(c, b"GET /actuator/health HTTP/1.1\r\nHost: x\r\n\r\n", node=1)
        assert reply.startswith(b"HTTP/1.1 503 "), reply[:200]
        assert b"too many management connections" in reply
        # The other brokers are not affected.
        assert request(c, "GET", "/actuator/health/liveness", node=0)[0] == 200
        wait_for(lambda: "connection cap of" in c.log_tail(1, 200), 5, "the cap warning in the log")
    finally:
        for s in busy:
            s.close()
    wait_for(
        lambda: raw_exchange(
            c,
            b"GET /actuator/health/liveness HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            node=1,
        ).startswith(b"HTTP/1.1 200 "),
        5,
        "slots freed after the busy clients left",
    )


def test_idle_keep_alive_connections_make_room(c):
    idle = []
    try:
        for _ in range(MAX_CONNECTIONS):
            conn = http.client.HTTPConnection("127.0.0.1", port(c, 2), timeout=10)
            conn.request("GET", "/actuator/health/liveness")
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200
            idle.append(conn)
        # All slots are held by idle keep-alive connections: the oldest makes room
        # (at once, unless the last one's thread is not yet back to waiting: 503).
        wait_for(
            lambda: request(c, "GET", "/actuator/health/liveness", node=2)[0] == 200,
            5,
            "a new client to be served",
        )
        assert idle[0].sock.recv(1) == b""  # the oldest idle one was closed
    finally:
        for conn in idle:
            conn.close()


ID = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.text(max_size=30),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
)
JSON = st.recursive(
    st.one_of(ID, st.sampled_from([0, 1, 2, 3, "0", "1", 1024, 1025])),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(
            st.sampled_from(
                [
                    "brokers",
                    "partitions",
                    "add",
                    "remove",
                    "count",
                    "replicationFactor",
                    "initializeFrom",
                    "x",
                ]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)
ENDPOINTS = [
    ("PATCH", "/actuator/cluster?dryRun=true"),
    ("PATCH", "/actuator/cluster?dryRun=true&force=true"),
    ("POST", "/actuator/cluster/brokers?dryRun=true"),
    ("POST", "/actuator/cluster/brokers?dryRun=true&force=true"),
    ("POST", "/actuator/exporters/nope/enable?dryRun=true"),
]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(endpoint=st.sampled_from(ENDPOINTS), body=JSON)
def test_no_json_body_gets_a_500(c, endpoint, body):
    method, path = endpoint
    status, answer = request(c, method, path, json.dumps(body).encode())
    assert status in (200, 400, 404, 409), (body, answer)
    assert answer.get("message") or status == 200


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    method=st.sampled_from(["POST", "DELETE"]),
    segment=st.text(min_size=1, max_size=40),
    rf=st.one_of(st.none(), st.text(max_size=30)),
)
def test_no_path_or_query_gets_a_500(c, method, segment, rf):
    path = "/actuator/cluster/brokers/" + urllib.parse.quote(segment, safe="") + "?dryRun=true"
    if rf is not None:
        path += "&replicationFactor=" + urllib.parse.quote(rf, safe="")
    status, answer = request(c, method, path)
    assert status in (200, 400, 404), (segment, rf, answer)


def test_after_all_that_a_real_change_completes_everywhere(c):
    status, body = send_json(
        c, "PATCH", "/actuator/cluster", {"partitions": {"replicationFactor": 2}}
    )
    assert status == 202, body
    change_id = body["changeId"]

    def completed(node: int) -> bool:
        doc = cluster_doc(c, node)
        last = doc["lastChange"]
        return doc["pendingChange"] is None and last is not None and last["id"] >= change_id

    for node in range(3):
        wait_for(lambda node=node: completed(node), 20, f"broker {node} to complete the change")
    members = [b["id"] for b in cluster_doc(c)["brokers"]]
    assert sorted(members) == [0, 1, 2]
