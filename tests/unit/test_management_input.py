"""The management server's input bounds, in process with small limits: strict
JSON and integers, the request deadline, the connection cap, HTTPS (a
self-signed certificate made here) and health probes that are UP only for True."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import logging
import socket
import ssl
import time
import urllib.error
import urllib.request

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from broker.node.management import (
    INT32_MAX,
    MAX_JSON_DEPTH,
    ROUTES,
    HttpError,
    ManagementServer,
    parse_int,
    parse_json,
)
from tests.helpers import wait_until
from tests.unit.test_management import EXTRA_ROUTES, FakeSource

DEADLINE = 0.5


# --- pure parsing ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("99999999999999999999", "between"),
        (str(INT32_MAX + 1), "between"),
        ("9" * 5000, "between"),
        ("-" + "9" * 5000, "between"),
        ("+", "expected an integer"),
        ("1_000", "expected an integer"),
        (" 12", "expected an integer"),
        ("\u0663", "expected an integer"),
        ("1e3", "expected an integer"),
        ("", "expected an integer"),
    ],
)
def test_parse_int_is_strict_and_bounded(text, fragment):
    with pytest.raises(HttpError) as err:
        parse_int("path parameter id", text, 0, INT32_MAX)
    assert err.value.status == 400
    assert "path parameter id" in err.value.message and fragment in err.value.message
    assert len(err.value.message) < 200  # a 5000-digit value is not echoed whole


def test_parse_int_accepts_the_range():
    assert parse_int("x", "0", 0, INT32_MAX) == 0
    assert parse_int("x", str(INT32_MAX), 0, INT32_MAX) == INT32_MAX
    assert parse_int("x", "-5") == -5


@pytest.mark.parametrize(
    "body",
    [
        b"NaN",
        b"[Infinity]",
        b"[-Infinity]",
        b"1e999",
        b"-1e999",
        b"9" * 5000,
        b"-" + b"9" * 21,
        b"[" * 10_000 + b"]" * 10_000,
        b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1),
        b"{",
        b"\xff",
        b'{"a": 1} x',
    ],
)
def test_parse_json_refuses_with_400(body):
    with pytest.raises(HttpError) as err:
        parse_json(body)
    assert err.value.status == 400
    assert err.value.message.startswith("invalid JSON body: ")


def test_parse_json_accepts_ordinary_bodies():
    nested = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert parse_json(nested) is not None
    assert parse_json(b'{"brokers": {"add": [1, "2"]}, "x": 1.5, "y": -12345678901234567890}') == {
        "brokers": {"add": [1, "2"]},
        "x": 1.5,
        "y": -12345678901234567890,
    }


# --- the server -------------------------------------------------------------------------


@pytest.fixture
def source() -> FakeSource:
    return FakeSource()


def make_server(source, **kwargs) -> ManagementServer:
    kwargs.setdefault("request_deadline", DEADLINE)
    srv = ManagementServer(source, "127.0.0.1", 0, routes=ROUTES + EXTRA_ROUTES, **kwargs)
    srv.start()
    return srv


@pytest.fixture
def server(source):
    srv = make_server(source)
    yield srv
    srv.stop()


def closed_within(sock: socket.socket, limit: float) -> tuple[float, bytes]:
    """Wait for the server to close ``sock``; the time it took and what it sent."""
    started = time.monotonic()
    sock.settimeout(limit)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionError:
        pass
    return time.monotonic() - started, received


def test_silent_connection_is_closed_at_the_deadline(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        took, received = closed_within(sock, 5)
    assert received == b""
    assert DEADLINE - 0.1 <= took <= DEADLINE + 1


def test_dripping_headers_are_closed_at_the_deadline(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        started = time.monotonic()
        sock.settimeout(0.1)  # the drip's pace
        closed = False
        for byte in b"GET /v2/topology HTTP/1.1\r\nX-Slow: " + b"a" * 100:
            try:
                sock.sendall(bytes([byte]))
                if sock.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except ConnectionError:
                closed = True
                break
        took = time.monotonic() - started
    assert closed
    assert DEADLINE - 0.1 <= took <= DEADLINE + 1


def test_dripping_body_gets_408_and_close(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /test/echo/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        took, received = closed_within(sock, 5)
    assert received.startswith(b"HTTP/1.1 408 ")
    assert b"Connection: close" in received
    assert took <= DEADLINE + 1


def test_keep_alive_outlives_the_request_deadline(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        for _ in range(2):
            conn.request("GET", "/v2/topology")
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200
            first_sock = conn.sock
            # Idle for longer than the request deadline: still the same connection.
            time.sleep(DEADLINE * 2)  # the behaviour under test is waiting itself
            assert conn.sock is first_sock
    finally:
        conn.close()


def test_cap_refuses_with_503_and_a_warning_then_frees(source, caplog):
    srv = make_server(source, max_connections=2, request_deadline=5)
    busy = []
    try:
        for _ in range(2):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            s.sendall(b"GET /v2/top")
            busy.append(s)
        with (
            caplog.at_level(logging.WARNING, logger="broker.node.management"),
            socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s,
        ):
            s.sendall(b"GET /v2/topology HTTP/1.1\r\nHost: x\r\n\r\n")
            _, reply = closed_within(s, 5)
        assert reply.startswith(b"HTTP/1.1 503 ")
        assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["message"].startswith("too many")
        assert any("connection cap of 2" in r.getMessage() for r in caplog.records)
        for s in busy:
            s.close()
        busy.clear()
        wait_until(lambda: get_status(srv) == 200, 5)
    finally:
        for s in busy:
            s.close()
        srv.stop()


def get_status(srv: ManagementServer, path: str = "/v2/topology") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except ConnectionError:
        return 0
    finally:
        conn.close()


def test_idle_keep_alive_connection_makes_room(source):
    # Idle for a minute by default: without eviction every new client would get 503.
    srv = make_server(source, max_connections=1)
    idle = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    try:
        idle.request("GET", "/v2/topology")
        idle.getresponse().read()
        # (Until its thread is back waiting for the next request it is busy: 503.)
        wait_until(lambda: get_status(srv) == 200, 5)
        # The idle one was closed to make room.
        assert idle.sock.recv(1) == b""
    finally:
        idle.close()
        srv.stop()


# --- health -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["false", "true", 1, None, [False]])
def test_health_is_up_only_for_true(server, source, value):
    source.state = {"startup": value, "ready": value, "live": value, "details": {}}
    for probe in ("", "/startup", "/readiness", "/liveness"):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        conn.request("GET", "/actuator/health" + probe)
        resp = conn.getresponse()
        assert resp.status == 503
        assert json.loads(resp.read())["status"] == "DOWN"
        conn.close()
    source.state = {"startup": True, "ready": True, "live": True, "healthy": "no", "details": {}}
    assert get_status(server, "/actuator/health/readiness") == 200
    assert get_status(server, "/actuator/health") == 503


# --- TLS ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 and localhost: (cert file, key file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "management test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_file), str(key_file)


@pytest.fixture
def tls_server(source, certificate):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    srv = make_server(source, ssl_context=context, request_deadline=1.0)
    yield srv
    srv.stop()


def client_context(certificate) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=certificate[0])


def test_https_serves_with_a_trusted_certificate(tls_server, certificate):
    url = f"https://127.0.0.1:{tls_server.port}/v2/topology"
    with urllib.request.urlopen(url, context=client_context(certificate), timeout=5) as resp:
        assert resp.status == 200
        assert json.loads(resp.read())["clusterSize"] == 1
    # Keep-alive over TLS, and a JSON body.
    conn = http.client.HTTPSConnection(
        "127.0.0.1", tls_server.port, context=client_context(certificate), timeout=5
    )
    try:
        for _ in range(2):
            conn.request("POST", "/test/echo/7", body=b'{"a": 1}')
            resp = conn.getresponse()
            assert resp.status == 202
            assert json.loads(resp.read())["body"] == {"a": 1}
        conn.request("POST", "/test/echo/7", body=b"[NaN]")
        resp = conn.getresponse()
        assert resp.status == 400
        resp.read()
    finally:
        conn.close()


def test_untrusted_client_refuses_the_certificate(tls_server):
    url = f"https://127.0.0.1:{tls_server.port}/v2/topology"
    with pytest.raises(urllib.error.URLError) as err:
        urllib.request.urlopen(url, context=ssl.create_default_context(), timeout=5)
    assert isinstance(err.value.reason, ssl.SSLCertVerificationError)


def test_plain_http_on_the_tls_port_is_closed_and_logged(tls_server, caplog):
    with caplog.at_level(logging.INFO, logger="broker.node.management"):
        with socket.create_connection(("127.0.0.1", tls_server.port), timeout=5) as sock:
            sock.sendall(b"GET /v2/topology HTTP/1.1\r\nHost: x\r\n\r\n")
            took, received = closed_within(sock, 5)
        assert b"HTTP/1.1 200" not in received
        assert took < 1.0
        wait_until(lambda: any("plain HTTP" in r.getMessage() for r in caplog.records), 5)
    records = [r for r in caplog.records if "plain HTTP" in r.getMessage()]
    assert records[0].levelno == logging.WARNING
    assert "127.0.0.1" in records[0].getMessage()
    assert all(r.exc_info is None for r in caplog.records)


def test_slow_handshake_does_not_block_others_and_is_bounded(tls_server, certificate, caplog):
    url = f"https://127.0.0.1:{tls_server.port}/v2/topology"
    with caplog.at_level(logging.INFO, logger="broker.node.management"):
        with socket.create_connection(("127.0.0.1", tls_server.port), timeout=5) as silent:
            # The silent connection's handshake is pending: others are served at once.
            started = time.monotonic()
            with urllib.request.urlopen(url, context=client_context(certificate), timeout=5) as r:
                assert r.status == 200
            assert time.monotonic() - started < 0.5
            took, received = closed_within(silent, 5)
        assert received == b""
        assert 0.9 <= took <= 2.0  # the request deadline (1 s) bounds the handshake
    assert any("within its deadline" in r.getMessage() for r in caplog.records)
    assert all(r.exc_info is None for r in caplog.records)


def test_stop_closes_idle_tls_connections(source, certificate):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    srv = make_server(source, ssl_context=context)
    conn = http.client.HTTPSConnection(
        "127.0.0.1", srv.port, context=client_context(certificate), timeout=5
    )
    try:
        conn.request("GET", "/v2/topology")
        conn.getresponse().read()
        started = time.monotonic()
        srv.stop()
        assert time.monotonic() - started < 2
        assert conn.sock.recv(1) == b""
    finally:
        conn.close()
        srv.stop()


def test_expect_100_continue_only_for_an_acceptable_body(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            b"POST /test/echo/1 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: 999999999999\r\n\r\n"
        )
        _, reply = closed_within(sock, 5)
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert b"100 Continue" not in reply
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            b"POST /test/echo/1 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: 2\r\nConnection: close\r\n\r\n"
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"{}")
        _, reply = closed_within(sock, 5)
    assert reply.startswith(b"HTTP/1.1 202 ")


# --- plan size (the topology API's bound, checked against a real configuration) -----------


def test_plan_size_is_bounded_before_and_after_planning():
    from broker.node.topology_api import (
        MAX_BROKERS,
        MAX_PLAN_OPERATIONS,
        _check_plan,
        _check_size,
    )
    from broker.topology import model as t

    # Far too large: refused before planning, at once.
    cfg = t.initial(3, 512, 3, ["e1"], "now")
    started = time.monotonic()
    with pytest.raises(HttpError) as err:
        _check_size(cfg, list(range(MAX_BROKERS)), MAX_BROKERS)
    assert time.monotonic() - started < 0.1
    assert err.value.status == 400 and str(MAX_PLAN_OPERATIONS) in err.value.message
    with pytest.raises(HttpError) as err:
        _check_size(cfg, list(range(MAX_BROKERS + 1)), 3)
    assert str(MAX_BROKERS) in err.value.message
    # Plannable but too many operations: refused once planned (planning is quick).
    cfg = t.initial(3, 8, 3, ["e1"], "now")
    _check_size(cfg, list(range(MAX_BROKERS)), MAX_BROKERS)
    started = time.monotonic()
    ops = t.plan_scale(cfg, list(range(MAX_BROKERS)), MAX_BROKERS)
    assert time.monotonic() - started < 1.0
    with pytest.raises(HttpError) as err:
        _check_plan(ops)
    assert err.value.status == 400 and str(MAX_PLAN_OPERATIONS) in err.value.message
    # At the edge, the expected topology is computed quickly.
    cfg = t.initial(3, 2, 3, ["e1"], "now")
    ops = t.plan_scale(cfg, list(range(MAX_BROKERS)), 760)
    _check_plan(ops)
    started = time.monotonic()
    t.expected(cfg, ops, "now").to_api()
    assert time.monotonic() - started < 3.0
