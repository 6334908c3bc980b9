"""What one listener accepts: whole-handshake deadline, HELLO size, frame
deadline, idle clients, and the cap on open connections."""

import contextlib
import logging
import socket
import time

from broker.transport import FramedClient
from broker.wire import Hello, encode_frame
from tests.helpers import wait_until
from tests.unit.conftest import CLUSTER, HOST
from tests.unit.test_transport import (
    LOGGER,
    client_hello,
    closed_by_server,
    logged,
)


def test_a_handshake_dripped_one_byte_at_a_time_is_closed_at_its_deadline(
    make_transport, closing, caplog
):
    caplog.set_level(logging.WARNING, LOGGER)
    b = make_transport(1, handshake_timeout=1.0)
    s = socket.create_connection((HOST, b.port), timeout=5)
    closing(s)
    hello = encode_frame(Hello(CLUSTER, -1, 1, "client"))
    start = time.monotonic()
    # Each byte arrives well within the per-read timeout; the whole never does.
    sent = 0
    try:
        while sent < len(hello) - 1 and time.monotonic() - start < 5:
            s.sendall(hello[sent : sent + 1])
            sent += 1
            time.sleep(0.2)  # the attacker's pace, not a synchronisation
    except OSError:
        pass  # closed under us: what the test wants
    assert closed_by_server(s)
    assert time.monotonic() - start < 3.5
    assert wait_until(lambda: logged(caplog, "handshake took over 1.0 s"))
    assert b.stats()["connection_errors"] >= 1


def test_a_hello_larger_than_a_hello_can_be_is_refused_before_it_is_read(make_transport, closing):
    b = make_transport(1)
    s = socket.create_connection((HOST, b.port), timeout=5)
    closing(s)
    big = encode_frame(Hello(CLUSTER * 1000, -1, 1, "client"))  # ~12 KB
    with contextlib.suppress(OSError):
        s.sendall(big)
    assert closed_by_server(s)
    # The node still serves a normal client.
    with FramedClient(HOST, b.port, CLUSTER, timeout=5) as c:
        assert c.request({"n": 1}) == {"echo": {"n": 1}}


def test_a_frame_dripped_after_the_handshake_is_closed_at_the_frame_deadline(
    make_transport, closing, caplog
):
    caplog.set_level(logging.WARNING, LOGGER)
    b = make_transport(1, frame_timeout=1.0, io_timeout=0.3)
    s = socket.create_connection((HOST, b.port), timeout=5)
    closing(s)
    client_hello(s)
    s.sendall(b"BK")  # the first bytes of a frame header, and then nothing more
    start = time.monotonic()
    assert closed_by_server(s)
    assert 0.9 <= time.monotonic() - start < 4
    assert wait_until(lambda: logged(caplog, "a frame took over 1 s to arrive"))


def test_an_idle_client_is_closed_and_a_busy_one_is_not(make_transport, closing, caplog):
    caplog.set_level(logging.INFO, LOGGER)
    b = make_transport(1, idle_timeout=1.0, io_timeout=0.2)
    idle = socket.create_connection((HOST, b.port), timeout=5)
    closing(idle)
    client_hello(idle)
    busy = FramedClient(HOST, b.port, CLUSTER, timeout=5)
    closing(busy)
    start = time.monotonic()
    while time.monotonic() - start < 2.0:
        assert busy.request({"t": 1}) == {"echo": {"t": 1}}
        time.sleep(0.1)  # the client's pace
    assert closed_by_server(idle)
    assert wait_until(lambda: logged(caplog, "idle for 1 s"))
    assert busy.request({"t": 2}) == {"echo": {"t": 2}}


def test_connections_over_the_cap_are_refused_and_logged_and_the_rest_keep_working(
    make_transport, closing, caplog
):
    caplog.set_level(logging.WARNING, LOGGER)
    b = make_transport(1, max_connections=3)
    clients = [FramedClient(HOST, b.port, CLUSTER, timeout=5) for _ in range(3)]
    for c in clients:
        closing(c)
    extra = socket.create_connection((HOST, b.port), timeout=5)
    closing(extra)
    assert closed_by_server(extra)
    assert wait_until(lambda: logged(caplog, "3 connections open, the most allowed"))
    assert b.stats()["connections_refused"] >= 1
    for i, c in enumerate(clients):
        assert c.request({"i": i}) == {"echo": {"i": i}}
    clients[0].close()
    # A slot frees once the server has noticed the close.
    assert wait_until(lambda: _can_connect(b.port))


def _can_connect(port: int) -> bool:
    try:
        with FramedClient(HOST, port, CLUSTER, timeout=2) as c:
            return c.request({"x": 1}) == {"echo": {"x": 1}}
    except OSError:
        return False
