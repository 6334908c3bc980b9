from __future__ import annotations

import http.client
import json
import logging
import socket
from typing import Any

import pytest

from broker.metrics import BrokerMetrics
from broker.node.management import (
    MAX_BODY_SIZE,
    ROUTES,
    HttpError,
    ManagementServer,
    Request,
    Response,
    Route,
    json_response,
    match_route,
)

TOPOLOGY = {
    "brokers": [
        {
            "nodeId": 0,
            "brokerId": "0",
            "host": "127.0.0.1",
            "port": 26500,
            "version": "0.1.0",
            "partitions": [
                {"partitionId": 1, "role": "leader", "health": "healthy", "state": "active"}
            ],
        }
    ],
    "clusterId": "dual-region",
    "clusterSize": 1,
    "partitionsCount": 1,
    "replicationFactor": 1,
    "gatewayVersion": "0.1.0",
    "lastCompletedChangeId": "-1",
}
PARTITIONS = {
    "1": {"role": "LEADER", "processedPosition": 10, "exportedPosition": 9, "snapshotId": None}
}


class FakeSource:
    def __init__(self) -> None:
        self.metrics = BrokerMetrics()
        self.state = {"startup": True, "ready": True, "live": True, "details": {"partitions": 1}}
        self.fail: Exception | None = None
        self.topology_doc: dict[str, Any] = TOPOLOGY

    def health(self) -> dict[str, Any]:
        return dict(self.state)

    def topology(self) -> dict[str, Any]:
        if self.fail is not None:
            raise self.fail
        return self.topology_doc

    def partitions(self) -> dict[str, Any]:
        return PARTITIONS


def echo(source: FakeSource, req: Request) -> Response:
    """A body-reading route, the way topology-change endpoints will use the helpers."""
    return json_response(
        {
            "id": req.path_int("id"),
            "dryRun": req.query_bool("dryRun"),
            "replicationFactor": req.query_int("replicationFactor"),
            "body": req.json(required=req.method != "DELETE"),
        },
        status=202,
    )


def conflict(source: FakeSource, req: Request) -> Response:
    raise HttpError(409, "another change is in progress")


EXTRA_ROUTES = (
    Route("POST", "/test/echo/{id}", echo),
    Route("DELETE", "/test/echo/{id}", echo),
    Route("POST", "/test/conflict", conflict),
)


@pytest.fixture
def source() -> FakeSource:
    return FakeSource()


@pytest.fixture
def server(source):
    srv = ManagementServer(source, "127.0.0.1", 0, routes=ROUTES + EXTRA_ROUTES)
    srv.start()
    yield srv
    srv.stop()


def call(
    srv: ManagementServer,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, http.client.HTTPResponse, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp, resp.read()
    finally:
        conn.close()


def call_json(srv: ManagementServer, method: str, path: str, **kwargs) -> tuple[int, Any]:
    status, resp, body = call(srv, method, path, **kwargs)
    assert resp.getheader("Content-Type") == "application/json"
    return status, json.loads(body)


def raw_exchange(srv: ManagementServer, data: bytes) -> bytes:
    """Send raw bytes and read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


HEALTH_PATHS = (
    "/actuator/health",
    "/actuator/health/status",
    "/actuator/health/startup",
    "/actuator/health/readiness",
    "/actuator/health/liveness",
)


def health_statuses(srv: ManagementServer) -> dict[str, int]:
    return {path.rsplit("/", 1)[1]: call(srv, "GET", path)[0] for path in HEALTH_PATHS}


def test_start_binds_a_real_port(server):
    assert server.port != 0


def test_health_up(server):
    for path in HEALTH_PATHS:
        status, body = call_json(server, "GET", path)
        assert status == 200, path
        assert body == {"status": "UP", "details": {"partitions": 1}}


def test_health_transitions(server, source):
    source.state.update(startup=False, ready=False)
    assert health_statuses(server) == {
        "health": 503,
        "status": 503,
        "startup": 503,
        "readiness": 503,
        "liveness": 200,
    }
    assert call_json(server, "GET", "/actuator/health/readiness") == (
        503,
        {"status": "DOWN", "details": {"partitions": 1}},
    )

    source.state.update(startup=True)
    assert health_statuses(server) == {
        "health": 503,
        "status": 503,
        "startup": 200,
        "readiness": 503,
        "liveness": 200,
    }

    source.state.update(ready=True)
    assert set(health_statuses(server).values()) == {200}

    source.state.update(live=False)
    assert health_statuses(server) == {
        "health": 503,
        "status": 503,
        "startup": 200,
        "readiness": 200,
        "liveness": 503,
    }


def test_topology(server):
    status, body = call_json(server, "GET", "/v2/topology")
    assert status == 200
    assert body == TOPOLOGY
    partition = body["brokers"][0]["partitions"][0]
    assert set(partition) == {"partitionId", "role", "health", "state"}


def status_topology(*brokers: list[tuple[int, str, str]], partitions: int = 2) -> dict:
    """A /v2/topology document: one list of (partitionId, role, health) per broker."""
    return {
        **TOPOLOGY,
        "brokers": [
            {
                **TOPOLOGY["brokers"][0],
                "nodeId": i,
                "brokerId": str(i),
                "partitions": [
                    {"partitionId": pid, "role": role, "health": health, "state": "active"}
                    for pid, role, health in parts
                ],
            }
            for i, parts in enumerate(brokers)
        ],
        "clusterSize": len(brokers),
        "partitionsCount": partitions,
    }


def test_status_is_204_when_every_partition_has_a_healthy_leader(server, source):
    source.topology_doc = status_topology(
        [(1, "leader", "healthy"), (2, "follower", "healthy")],
        [(1, "follower", "unhealthy"), (2, "leader", "healthy")],
    )
    status, _, body = call(server, "GET", "/v2/status")
    assert (status, body) == (204, b"")


@pytest.mark.parametrize(
    "brokers, message",
    [
        (  # partition 2 has no leader at all: its replicas are followers or gone
            ([(1, "leader", "healthy"), (2, "follower", "healthy")], [(2, "inactive", "dead")]),
            "no leader for partition(s) 2",
        ),
        (  # a partition no broker reports (every replica unknown to this broker)
            ([(1, "leader", "healthy")],),
            "no leader for partition(s) 2",
        ),
        (  # partition 1's leader is unhealthy (e.g. its disk is full)
            ([(1, "leader", "unhealthy"), (2, "leader", "healthy")], [(1, "follower", "healthy")]),
            "the leader is not healthy for partition(s) 1 (unhealthy)",
        ),
        (
            ([(1, "leader", "dead")], [(1, "follower", "healthy")]),
            "no leader for partition(s) 2; the leader is not healthy for partition(s) 1 (dead)",
        ),
    ],
)
def test_status_is_503_naming_what_is_missing(server, source, brokers, message):
    source.topology_doc = status_topology(*brokers)
    status, body = call_json(server, "GET", "/v2/status")
    assert (status, body) == (503, {"message": message})


def test_status_counts_every_partition_of_the_cluster_not_only_those_listed(server, source):
    source.topology_doc = status_topology([(1, "leader", "healthy")], partitions=1)
    assert call(server, "GET", "/v2/status")[0] == 204
    source.topology_doc = status_topology([(1, "leader", "healthy")], partitions=3)
    assert call_json(server, "GET", "/v2/status") == (
        503,
        {"message": "no leader for partition(s) 2, 3"},
    )


def test_partitions(server):
    status, body = call_json(server, "GET", "/actuator/partitions")
    assert status == 200
    assert body == PARTITIONS


def test_prometheus(server, source):
    source.metrics.records_committed.labels(partition="1").inc(3)
    source.metrics.requests.labels(op="put", code="OK").inc()
    status, resp, body = call(server, "GET", "/actuator/prometheus")
    assert status == 200
    assert resp.getheader("Content-Type").startswith("text/plain; version=")
    text = body.decode()
    assert 'broker_records_committed_total{partition="1"} 3.0' in text
    assert 'broker_gateway_requests_total{code="OK",op="put"} 1.0' in text


def test_unknown_path_404(server):
    status, body = call_json(server, "GET", "/x")
    assert status == 404
    assert body == {"message": "no such endpoint: GET /x"}


def test_query_string_does_not_affect_routing(server):
    assert call(server, "GET", "/v2/topology?foo=bar")[0] == 200
    assert call_json(server, "GET", "/nope?foo=bar") == (
        404,
        {"message": "no such endpoint: GET /nope"},
    )


def test_wrong_method_405_with_allow(server):
    status, resp, body = call(server, "POST", "/v2/topology", body=b"{}")
    assert status == 405
    assert resp.getheader("Allow") == "GET"
    assert "message" in json.loads(body)
    status, resp, _ = call(server, "PUT", "/test/echo/1")
    assert status == 405
    assert resp.getheader("Allow") == "DELETE, POST"


def test_unsupported_method_is_json_error(server):
    status, body = call_json(server, "FROB", "/v2/topology")
    assert status == 501
    assert "message" in body


def test_path_query_and_json_body(server):
    status, body = call_json(
        server,
        "POST",
        "/test/echo/7?dryRun=TRUE&replicationFactor=4",
        body=b'[1, "2"]',
        headers={"Content-Type": "application/json"},
    )
    assert status == 202
    assert body == {"id": 7, "dryRun": True, "replicationFactor": 4, "body": [1, "2"]}


def test_optional_body_and_defaults(server):
    status, body = call_json(server, "DELETE", "/test/echo/3")
    assert status == 202
    assert body == {"id": 3, "dryRun": False, "replicationFactor": None, "body": None}


@pytest.mark.parametrize(
    "path, body, fragment",
    [
        ("/test/echo/1?dryRun=yes", b"[]", "query parameter dryRun"),
        ("/test/echo/1?replicationFactor=two", b"[]", "query parameter replicationFactor"),
        ("/test/echo/one", b"[]", "path parameter id"),
        ("/test/echo/1", b"{not json", "invalid JSON body"),
        ("/test/echo/1", b"\xff\xfe", "invalid JSON body"),
        ("/test/echo/1", b"", "request body required"),
    ],
)
def test_bad_request_400(server, path, body, fragment):
    status, reply = call_json(server, "POST", path, body=body)
    assert status == 400
    assert fragment in reply["message"]


def test_handler_http_error(server):
    status, body = call_json(server, "POST", "/test/conflict", body=b"{}")
    assert status == 409
    assert body == {"message": "another change is in progress"}


def test_body_too_large_413_then_next_request_works(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.putrequest("POST", "/test/echo/1")
        conn.putheader("Content-Length", str(MAX_BODY_SIZE + 1))
        conn.endheaders()
        resp = conn.getresponse()
        assert resp.status == 413
        assert "too large" in json.loads(resp.read())["message"]
        assert resp.getheader("Connection") == "close"
    finally:
        conn.close()
    assert call(server, "GET", "/v2/topology")[0] == 200


def test_bad_content_length_and_chunked(server):
    status, body = call_json(server, "POST", "/test/echo/1", headers={"Content-Length": "-5"})
    assert status == 400
    assert "Content-Length" in body["message"]
    reply = raw_exchange(
        server,
        b"POST /test/echo/1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 411 ")


def test_handler_exception_500_and_server_keeps_serving(server, source, caplog):
    source.fail = RuntimeError("boom")
    with caplog.at_level(logging.ERROR, logger="broker.node.management"):
        status, body = call_json(server, "GET", "/v2/topology")
    assert status == 500
    assert "boom" in body["message"]
    assert any(r.exc_info and r.exc_info[0] is RuntimeError for r in caplog.records)
    source.fail = None
    assert call(server, "GET", "/v2/topology")[0] == 200


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x01garbage\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n",
    ],
)
def test_garbage_gets_4xx_or_5xx_and_server_survives(server, garbage):
    reply = raw_exchange(server, garbage)
    status_line = reply.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 4") or status_line.startswith(b"HTTP/1.1 505")
    assert b'{"message": ' in reply
    assert call(server, "GET", "/v2/topology")[0] == 200


def test_garbage_request_line_gets_400(server):
    reply = raw_exchange(server, b"\x00\x01garbage\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ")


def test_keep_alive_across_requests_and_errors(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        for path, expected in (("/v2/topology", 200), ("/x", 404), ("/actuator/partitions", 200)):
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            assert resp.status == expected
        conn.request("POST", "/test/conflict", body=b"{}")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 409
        conn.request("GET", "/v2/topology")
        assert conn.getresponse().status == 200
    finally:
        conn.close()


def test_unread_body_on_error_closes_connection(server):
    # A 404 does not read the body; keeping the connection would parse it as a request.
    reply = raw_exchange(
        server,
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 18\r\n\r\nGET /v2/topology\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 404 ")
    assert reply.count(b"HTTP/1.1") == 1


def test_access_log_is_silent(server, capfd):
    call(server, "GET", "/v2/topology")
    call(server, "GET", "/x")
    raw_exchange(server, b"\x00\x01garbage\r\n\r\n")
    assert capfd.readouterr().err == ""


@pytest.fixture
def token_server(source):
    srv = ManagementServer(source, "127.0.0.1", 0, token="s3cret")
    srv.start()
    yield srv
    srv.stop()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "s3cret"},
        {"Authorization": "Bearer s3cr\xe9t"},
    ],
)
def test_token_required(token_server, headers):
    for path in ("/v2/topology", "/actuator/health/liveness", "/x"):
        status, body = call_json(token_server, "GET", path, headers=headers)
        assert status == 401, path
        assert body == {"message": "missing or invalid bearer token"}


def test_token_accepted(token_server):
    headers = {"Authorization": "Bearer s3cret"}
    assert call(token_server, "GET", "/v2/topology", headers=headers)[0] == 200
    assert call(token_server, "GET", "/x", headers=headers)[0] == 404


def test_two_servers_do_not_clash():
    a, b = FakeSource(), FakeSource()
    with ManagementServer(a, "127.0.0.1", 0) as sa, ManagementServer(b, "127.0.0.1", 0) as sb:
        assert sa.port != sb.port
        a.metrics.leader_changes.labels(partition="1").inc()
        text_a = call(sa, "GET", "/actuator/prometheus")[2].decode()
        text_b = call(sb, "GET", "/actuator/prometheus")[2].decode()
    assert 'broker_leader_changes_total{partition="1"} 1.0' in text_a
    assert "broker_leader_changes_total{" not in text_b


def test_stop_closes_listener_and_idle_connections(source):
    srv = ManagementServer(source, "127.0.0.1", 0)
    srv.start()
    port = srv.port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/v2/topology")
    conn.getresponse().read()
    srv.stop()
    srv.stop()  # idempotent
    try:
        assert conn.sock.recv(1) == b""
    finally:
        conn.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_stop_without_start_is_a_no_op(source):
    ManagementServer(source, "127.0.0.1", 0).stop()


def test_match_route():
    routes = (
        Route("POST", "/actuator/cluster/brokers/{id}", echo),
        Route("DELETE", "/actuator/cluster/brokers/{id}", echo),
        Route("POST", "/actuator/exporters/{id}/enable", echo),
    )
    route, params, allowed = match_route(routes, "DELETE", "/actuator/cluster/brokers/a%20b")
    assert route is routes[1]
    assert params == {"id": "a b"}
    route, params, allowed = match_route(routes, "GET", "/actuator/cluster/brokers/3")
    assert (route, allowed) == (None, ["DELETE", "POST"])
    assert match_route(routes, "POST", "/actuator/cluster/brokers/3/x") == (None, {}, [])
    assert match_route(routes, "POST", "/actuator/cluster/brokers/") == (None, {}, [])
    route, params, _ = match_route(routes, "POST", "/actuator/exporters/region1/enable")
    assert route is routes[2]
    assert params == {"id": "region1"}


def test_topology_partition_state_and_last_change_follow_the_configuration():
    from broker.node.broker import _last_completed_change_id, _partition_state
    from broker.topology import model as t

    now = "2026-11-26T08:00:00Z"
    cfg = t.initial(3, 1, 2, [], now, cluster_id="c1")  # partition 1 on brokers 0 and 1
    assert [_partition_state(cfg, b, 1) for b in (0, 1, 2)] == ["active", "active", "unknown"]
    assert _partition_state(None, 0, 1) == "unknown"  # no configuration loaded yet
    assert _last_completed_change_id(cfg) == "-1"
    move = [t.Operation(t.PARTITION_JOIN, 2, 1, 1), t.Operation(t.PARTITION_LEAVE, 0, 1)]
    cfg = t.start_change(cfg, move, now)
    # Only the operation in progress (the first pending one) marks its replica.
    assert [_partition_state(cfg, b, 1) for b in (0, 1, 2)] == ["active", "active", "joining"]
    assert _last_completed_change_id(cfg) == "-1"
    cfg = t.complete_next(cfg, now)
    assert [_partition_state(cfg, b, 1) for b in (0, 1, 2)] == ["leaving", "active", "active"]
    cfg = t.complete_next(cfg, now)
    assert cfg.pending_change is None
    assert [_partition_state(cfg, b, 1) for b in (0, 1, 2)] == ["unknown", "active", "active"]
    assert _last_completed_change_id(cfg) == "1"
    cfg = t.start_change(cfg, [], now)  # an empty plan completes at once: change 2
    assert _last_completed_change_id(cfg) == "2"
