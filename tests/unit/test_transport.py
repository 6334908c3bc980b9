import logging
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time

import msgpack
import pytest

from broker import transport
from broker.ioloop import IoLoop
from broker.raft.messages import AppendRequest, Entry, TimeoutNow, VoteRequest, VoteResponse
from broker.transport import Connection, FramedClient, HandshakeRejected, Transport
from broker.wire import (
    FrameDecoder,
    FrameType,
    Hello,
    HelloOk,
    HelloReject,
    ProtocolError,
    RaftBatch,
    Request,
    Response,
    encode_frame,
)
from tests.helpers import wait_until
from tests.unit.conftest import CLUSTER, HOST

LOGGER = "broker.transport"


def connect_pair(a: Transport, b: Transport) -> None:
    a.set_peer(b.node_id, HOST, b.port)
    b.set_peer(a.node_id, HOST, a.port)
    wait_until(lambda: a.is_connected(b.node_id) and b.is_connected(a.node_id))


def client_hello(sock: socket.socket) -> None:
    sock.sendall(encode_frame(Hello(CLUSTER, -1, 1, "client")))
    assert read_frame(sock) == HelloOk(1)


def read_frame(sock: socket.socket):
    decoder = FrameDecoder()
    while True:
        data = sock.recv(65536)
        assert data, "connection closed"
        for frame in decoder.feed(data):
            return frame


def closed_by_server(sock: socket.socket) -> bool:
    """Reads until the server closes (the socket's timeout bounds the wait)."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def logged(caplog, *fragments: str) -> bool:
    return any(all(f in r.getMessage() for f in fragments) for r in caplog.records)


# --- peers --------------------------------------------------------------------


def test_raft_batches_flow_both_ways(make_transport):
    a, b = make_transport(1), make_transport(2)
    connect_pair(a, b)
    append = AppendRequest(3, 1, 2, 0, 0, (Entry(1, 3, data=b"x" * 100),), 0)
    a.send_raft(2, 7, append)
    a.send_raft(2, 8, VoteRequest(3, 1, 2, 1, 3))
    b.send_raft(1, 7, VoteResponse(3, 2, 1, True))
    wait_until(lambda: len(b.inbox.raft) == 2 and len(a.inbox.raft) == 1)
    assert b.inbox.raft == [(1, 7, append), (1, 8, VoteRequest(3, 1, 2, 1, 3))]
    assert a.inbox.raft == [(2, 7, VoteResponse(3, 2, 1, True))]


def test_gossip_frames_reach_the_gossip_callback(make_transport):
    a, b = make_transport(1), make_transport(2)
    a.set_peer(2, HOST, b.port)
    wait_until(lambda: a.is_connected(2))
    a.send_gossip(2, {"alive": [1, 2], "incarnation": 4})
    wait_until(lambda: b.inbox.gossip)
    assert b.inbox.gossip == [(1, {"alive": [1, 2], "incarnation": 4})]


def test_queued_messages_are_batched_into_one_frame(make_transport):
    b = make_transport(2)
    a = make_transport(1, start=False)
    a.set_peer(2, HOST, b.port)
    # Queued before the sender runs, so they all go out in the first write.
    for i in range(500):
        assert a.send_raft(2, i % 8, TimeoutNow(i, 1, 2))
    a.start()
    wait_until(lambda: len(b.inbox.raft) == 500 and a.stats()["raft_sent"] == 500)
    assert [m.term for _, _, m in b.inbox.raft] == list(range(500))
    assert a.stats()["frames_sent"] == 1
    assert b.inbox.batches == 1


def test_a_batch_over_the_frame_limit_is_split(make_transport):
    limit = 16 * 1024
    b = make_transport(2, max_frame_size=limit)
    a = make_transport(1, start=False, max_frame_size=limit)
    a.set_peer(2, HOST, b.port)
    entries = (Entry(1, 1, data=bytes(1000)),)
    for i in range(100):  # ~100 KB in total
        a.send_raft(2, 1, AppendRequest(i, 1, 2, 0, 0, entries, 0))
    a.send_raft(2, 1, AppendRequest(0, 1, 2, 0, 0, (Entry(1, 1, data=bytes(limit)),), 0))
    a.start()
    wait_until(lambda: len(b.inbox.raft) == 100 and a.stats()["raft_sent"] == 100)
    assert [m.term for _, _, m in b.inbox.raft] == list(range(100))
    stats = a.stats()
    assert 100 * 1000 // limit < stats["frames_sent"] < 100
    assert stats["dropped"] == 1  # the single message over the limit


def test_reconnects_after_the_remote_restarts_on_the_same_port(make_transport):
    a, b = make_transport(1), make_transport(2)
    a.set_peer(2, HOST, b.port)
    wait_until(lambda: a.is_connected(2))
    a.send_raft(2, 1, TimeoutNow(1, 1, 2))
    wait_until(lambda: b.inbox.raft)

    b.stop()
    wait_until(lambda: not a.is_connected(2))
    b2 = make_transport(2, port=b.port)
    wait_until(lambda: a.is_connected(2))
    a.send_raft(2, 1, TimeoutNow(2, 1, 2))
    wait_until(lambda: b2.inbox.raft)
    assert b2.inbox.raft == [(1, 1, TimeoutNow(2, 1, 2))]


def test_messages_to_an_unreachable_peer_are_dropped_and_the_queue_is_bounded(make_transport):
    with socket.socket() as s:
        s.bind((HOST, 0))
        dead_port = s.getsockname()[1]  # bound but not listening: connections are refused
        a = make_transport(1, start=False, queue_limit=10)
        a.set_peer(2, HOST, dead_port)
        accepted = [a.send_raft(2, 1, TimeoutNow(i, 1, 2)) for i in range(15)]
        assert accepted == [True] * 10 + [False] * 5
        assert not a.send_raft(3, 1, TimeoutNow(1, 1, 3))  # unknown peer
        a.start()
        wait_until(lambda: a.stats()["dropped"] == 16)
        assert not a.is_connected(2)


def test_a_peer_answering_with_another_node_id_is_dropped(make_transport, caplog):
    caplog.set_level(logging.INFO, LOGGER)
    a, b = make_transport(1), make_transport(2)
    a.set_peer(5, HOST, b.port)
    wait_until(lambda: logged(caplog, "peer 5", "answered as node 2, expected 5"))
    a.send_raft(5, 1, TimeoutNow(1, 1, 5))
    assert not a.is_connected(5)
    assert b.inbox.raft == []


def test_the_sender_survives_a_message_it_cannot_encode(make_transport, caplog):
    a, b = make_transport(1), make_transport(2)
    a.set_peer(2, HOST, b.port)
    a.send_raft(2, 1, object())
    a.send_raft(2, 1, TimeoutNow(1, 1, 2))
    wait_until(lambda: b.inbox.raft == [(1, 1, TimeoutNow(1, 1, 2))])
    assert a.stats()["dropped"] == 1
    assert logged(caplog, "cannot encode")


def test_a_failing_handler_does_not_close_the_connection(make_transport, caplog):
    b = make_transport(2)
    received = []

    def flaky(src, messages):
        received.extend(messages)
        if len(received) == 1:
            raise RuntimeError("bug in the handler")

    b.on_raft = flaky
    a = make_transport(1)
    a.set_peer(2, HOST, b.port)
    a.send_raft(2, 1, TimeoutNow(1, 1, 2))
    wait_until(lambda: received)
    a.send_raft(2, 1, TimeoutNow(2, 1, 2))
    wait_until(lambda: len(received) == 2)
    assert logged(caplog, "handler failed on RAFT")
    assert a.stats()["connection_errors"] == 0


def test_a_transport_starts_once(make_transport):
    t = make_transport(1)
    with pytest.raises(RuntimeError):
        t.start()


def test_removed_peer_gets_nothing(make_transport):
    a, b = make_transport(1), make_transport(2)
    a.set_peer(2, HOST, b.port)
    wait_until(lambda: a.is_connected(2))
    a.remove_peer(2)
    assert not a.send_raft(2, 1, TimeoutNow(1, 1, 2))
    wait_until(lambda: not any(t.name == "transport-1-to-2" for t in threading.enumerate()))


def test_cluster_name_mismatch_is_refused_and_logged_on_both_sides(make_transport, caplog):
    caplog.set_level(logging.WARNING, LOGGER)
    a = make_transport(1, cluster="blue")
    b = make_transport(2, cluster="green")
    a.set_peer(2, HOST, b.port)
    # The refusal names the cluster the dialer asked for, never the node's own.
    reason = "cluster name mismatch: not a member of cluster 'blue'"
    wait_until(lambda: logged(caplog, "node 2 rejected handshake from 127.0.0.1:", reason))
    wait_until(lambda: logged(caplog, f"peer 2 at 127.0.0.1:{b.port}", "rejected", reason))
    assert not a.is_connected(2)
    with pytest.raises(HandshakeRejected, match="cluster name mismatch"):
        FramedClient(HOST, b.port, "blue", timeout=5)
    assert logged(caplog, f"127.0.0.1:{b.port} rejected handshake: cluster name mismatch")
    assert not logged(caplog, "green")


def test_protocol_version_mismatch_is_refused(make_transport, caplog, closing):
    caplog.set_level(logging.WARNING, LOGGER)
    b = make_transport(2)
    # A future client announcing version 2 in its HELLO.
    s = socket.create_connection((HOST, b.port), timeout=5)
    closing(s)
    s.sendall(encode_frame(Hello(CLUSTER, -1, 2, "client")))
    assert read_frame(s) == HelloReject("protocol version mismatch: node 2 speaks 1, got 2")
    assert closed_by_server(s)
    # A frame header in a version this node cannot even parse.
    s2 = socket.create_connection((HOST, b.port), timeout=5)
    closing(s2)
    body = msgpack.packb([CLUSTER, -1, 9, "client"])
    s2.sendall(struct.pack(">2sBBI", b"BK", 9, FrameType.HELLO, len(body)) + body)
    reject = read_frame(s2)
    assert isinstance(reject, HelloReject) and "unsupported protocol version 9" in reject.reason
    assert closed_by_server(s2)
    assert logged(caplog, "rejected handshake", "protocol version mismatch")


@pytest.mark.parametrize("node_id, role", [(3, "client"), (-1, "peer")])
def test_node_id_must_match_the_role(make_transport, closing, node_id, role):
    b = make_transport(2)
    s = socket.create_connection((HOST, b.port), timeout=5)
    closing(s)
    s.sendall(encode_frame(Hello(CLUSTER, node_id, 1, role)))
    assert read_frame(s) == HelloReject(f"invalid node id {node_id} for role {role}")
    assert closed_by_server(s)


# --- bad input --------------------------------------------------------------------

OVERSIZED = struct.pack(">2sBBI", b"BK", 1, FrameType.REQUEST, 64 * 1024 * 1024)
TRUNCATED = encode_frame(Request(7, {"data": b"x" * 1000}))[:-10]


@pytest.mark.parametrize(
    "handshake, payload, close_ours, reason",
    [
        (False, b"GET / HTTP/1.1\r\n\r\n", False, "bad magic"),
        (True, b"\x00garbage\xff" * 10, False, "bad magic"),
        (True, OVERSIZED, False, "frame of 67108864 bytes exceeds limit of 4194304"),
        (True, TRUNCATED, True, "stream ended inside a frame"),
        # Before the handshake only a HELLO is read: other types are refused from the header.
        (False, TRUNCATED, True, "unexpected REQUEST frame"),
        (True, encode_frame(Hello(CLUSTER, -1, 1, "client")), False, "unexpected HELLO"),
        (False, encode_frame(Request(1, {})), False, "unexpected REQUEST frame"),
    ],
    ids=[
        "garbage-before-hello",
        "garbage",
        "oversized",
        "truncated",
        "truncated-hello",
        "second-hello",
        "request-before-hello",
    ],
)
def test_bad_input_closes_only_that_connection(
    make_transport, caplog, closing, handshake, payload, close_ours, reason
):
    caplog.set_level(logging.WARNING, LOGGER)
    server = make_transport(1)
    good = FramedClient(HOST, server.port, CLUSTER, timeout=5)
    closing(good)
    assert good.request({"n": 1}) == {"echo": {"n": 1}}

    bad = socket.create_connection((HOST, server.port), timeout=5)
    closing(bad)
    address = "{}:{}".format(*bad.getsockname())
    if handshake:
        client_hello(bad)
    bad.sendall(payload)
    if close_ours:
        bad.shutdown(socket.SHUT_WR)
    assert closed_by_server(bad)
    wait_until(lambda: logged(caplog, f"closing connection from {address}", reason))

    assert good.request({"n": 2}) == {"echo": {"n": 2}}
    with FramedClient(HOST, server.port, CLUSTER, timeout=5) as fresh:
        assert fresh.request({"n": 3}) == {"echo": {"n": 3}}


def test_raft_frames_from_a_client_are_refused(make_transport, caplog, closing):
    caplog.set_level(logging.WARNING, LOGGER)
    server = make_transport(1)
    s = socket.create_connection((HOST, server.port), timeout=5)
    closing(s)
    client_hello(s)
    s.sendall(encode_frame(RaftBatch([(1, TimeoutNow(1, 2, 1))])))
    assert closed_by_server(s)
    wait_until(lambda: logged(caplog, "unexpected RAFT frame"))
    assert server.inbox.raft == []


def test_every_connection_is_served_by_the_io_thread_whatever_their_number(make_transport, closing):
    """Once its handshake is over, a connection is read and written by the transport's
    I/O loop: the thread count does not grow with connections, and handlers run on
    that one thread (which is why they must never block)."""
    handlers_ran_on = set()

    def on_request(conn, req_id, body):
        handlers_ran_on.add(threading.current_thread().name)
        conn.send_response(req_id, {"echo": body})

    server = make_transport(1, on_request=on_request)
    a = make_transport(2)
    a.set_peer(1, HOST, server.port)
    wait_until(lambda: a.is_connected(1))
    baseline = threading.active_count()
    clients = [FramedClient(HOST, server.port, CLUSTER, timeout=5) for _ in range(30)]
    for client in clients:
        closing(client)
    for i, client in enumerate(clients):
        assert client.request({"n": i}) == {"echo": {"n": i}}
    # the handshakes' threads have ended; no thread per connection remains
    wait_until(lambda: threading.active_count() == baseline)
    assert handlers_ran_on == {"transport-1-io"}
    a.send_raft(1, 1, TimeoutNow(1, 2, 1))
    wait_until(lambda: server.inbox.raft == [(2, 1, TimeoutNow(1, 2, 1))])


# --- clients --------------------------------------------------------------------


def test_client_request_response_with_pipelining(make_transport, closing):
    server = make_transport(1)
    client = FramedClient(HOST, server.port, CLUSTER, timeout=5)
    closing(client)
    assert client.node_id == 1
    ids = [client.send_request({"i": i}) for i in range(50)]
    assert len(set(ids)) == 50
    responses = dict(client.recv_response() for _ in ids)
    assert responses == {rid: {"echo": {"i": i}} for i, rid in enumerate(ids)}

    # request() waits for its own response and keeps the others for recv_response().
    first = client.send_request({"x": 1})
    assert client.request({"x": 2}) == {"echo": {"x": 2}}
    assert client.recv_response() == (first, {"echo": {"x": 1}})


def test_responses_can_come_from_other_threads_out_of_order(make_transport, closing):
    held = []
    responders = []

    def defer(conn, req_id, body):
        held.append((conn, req_id, body))
        if len(held) == 2:  # answer the second request first, from other threads
            for conn, rid, b in reversed(held):
                responders.append(threading.Thread(target=conn.send_response, args=(rid, b)))
                responders[-1].start()

    server = make_transport(1, on_request=defer)
    client = FramedClient(HOST, server.port, CLUSTER, timeout=5)
    closing(client)
    r1 = client.send_request({"n": 1})
    assert client.request({"n": 2}) == {"n": 2}
    assert client.recv_response() == (r1, {"n": 1})
    for t in responders:
        t.join(5)


def test_send_response_on_a_closed_connection_returns_false(make_transport):
    conns = []
    server = make_transport(1, on_request=lambda conn, rid, body: conns.append(conn))
    with FramedClient(HOST, server.port, CLUSTER, timeout=5) as client:
        client.send_request({})
        wait_until(lambda: conns)
    wait_until(lambda: not conns[0].send_response(1, {}))


# --- TLS --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_contexts(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=broker-test", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cert)
    return server, client


def test_tls_between_peers_and_for_clients(make_transport, tls_contexts, caplog, closing):
    caplog.set_level(logging.INFO, LOGGER)
    server_ctx, client_ctx = tls_contexts
    kw = {"ssl_context": server_ctx, "client_ssl_context": client_ctx}
    a, b = make_transport(1, **kw), make_transport(2, **kw)
    connect_pair(a, b)
    a.send_raft(2, 1, TimeoutNow(1, 1, 2))
    b.send_raft(1, 1, TimeoutNow(2, 2, 1))
    wait_until(lambda: a.inbox.raft and b.inbox.raft)

    with FramedClient(HOST, b.port, CLUSTER, timeout=5, ssl_context=client_ctx) as client:
        assert client.request({"secure": True}) == {"echo": {"secure": True}}
        ids = [client.send_request({"i": i}) for i in range(20)]
        assert dict(client.recv_response() for _ in ids) == {
            rid: {"echo": {"i": i}} for i, rid in enumerate(ids)
        }

    plain = socket.create_connection((HOST, b.port), timeout=5)
    closing(plain)
    plain.sendall(encode_frame(Hello(CLUSTER, -1, 1, "client")))
    assert closed_by_server(plain)
    wait_until(lambda: logged(caplog, "refused a connection from 127.0.0.1:", "does not speak TLS"))

    # The peer connections survived the plaintext intruder.
    a.send_raft(2, 1, TimeoutNow(3, 1, 2))
    wait_until(lambda: len(b.inbox.raft) == 2)


def test_response_type_is_checked_by_the_client(make_transport, closing):
    # A server that answers a request with a HELLO_OK is broken; the client says so.
    listener = socket.socket()
    closing(listener)
    listener.bind((HOST, 0))
    listener.listen(1)

    def fake_server():
        conn, _ = listener.accept()
        with conn:
            FrameDecoder().feed(conn.recv(65536))
            conn.sendall(encode_frame(HelloOk(9)))
            conn.recv(65536)
            conn.sendall(encode_frame(Response(99, {})) + encode_frame(HelloOk(9)))

    t = threading.Thread(target=fake_server)
    t.start()
    try:
        with FramedClient(HOST, listener.getsockname()[1], CLUSTER, timeout=5) as client:
            assert client.node_id == 9
            client.send_request({})
            assert client.recv_response() == (99, {})
            with pytest.raises(ProtocolError, match="unexpected HELLO_OK frame"):
                client.recv_response()
    finally:
        t.join(5)


# --- outbound queue of an accepted connection (issue 11) -------------------------


@pytest.fixture
def io_loop():
    loop = IoLoop("test-io")
    loop.start()
    yield loop
    loop.stop()
    assert not loop.thread.is_alive()


@pytest.fixture
def stuck_pair(closing, io_loop):
    """A Connection served by an I/O loop over a socketpair whose peer never reads
    (small buffers)."""
    ours, theirs = socket.socketpair()
    for sock in (ours, theirs):
        closing(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn = Connection(ours, ("127.0.0.1", 4242), Hello(CLUSTER, -1, 1, "client"), io_loop)
    io_loop.add(conn)
    closing(conn)
    return conn, theirs


def test_sends_never_block_and_a_peer_that_does_not_read_is_cut_off(
    stuck_pair, monkeypatch, caplog
):
    caplog.set_level(logging.INFO, LOGGER)
    monkeypatch.setattr(transport, "MAX_OUTBOUND_BYTES", 4 * 1024 * 1024)
    conn, peer = stuck_pair
    body = {"data": b"x" * 64 * 1024}
    frame_size = len(encode_frame(Response(1, body)))
    results, slowest = [], 0.0
    deadline = time.monotonic() + 10
    while (not results or results[-1]) and time.monotonic() < deadline:
        t0 = time.monotonic()
        results.append(conn.send_response(len(results) + 1, body))
        slowest = max(slowest, time.monotonic() - t0)
    # far more than the socket buffers hold was queued without waiting for the peer
    assert results[-1] is False and all(results[:-1])
    assert len(results) - 1 >= (4 * 1024 * 1024) // frame_size - 1
    assert slowest < 0.5, f"a send took {slowest:.3f}s"
    assert conn.closed
    assert conn.send_response(0, {}) is False
    wait_until(lambda: logged(caplog, "127.0.0.1:4242", "slow consumer:", "bytes of responses"))
    wait_until(lambda: conn.sock.fileno() == -1)  # the loop closed the socket
    # the peer reads what was written, then the end of the stream
    peer.settimeout(5)
    assert closed_by_server(peer)


def test_frames_arrive_whole_and_in_order_once_the_peer_reads(stuck_pair):
    conn, peer = stuck_pair
    sent = [{"n": i, "pad": b"p" * (i * 97 % 5000)} for i in range(300)]
    assert all(conn.send_response(i, body) for i, body in enumerate(sent))
    decoder, got = FrameDecoder(), []
    peer.settimeout(5)
    while len(got) < len(sent):
        data = peer.recv(65536)
        assert data, "connection closed"
        got.extend(decoder.feed(data))
    assert got == [Response(i, body) for i, body in enumerate(sent)]


@pytest.mark.parametrize("blocked", [False, True], ids=["idle", "blocked"])
def test_close_from_another_thread_releases_the_socket(stuck_pair, blocked):
    conn, _ = stuck_pair
    assert conn.send_response(1, {"data": b"x" * (1 << 20 if blocked else 10)})
    if blocked:
        wait_until(lambda: conn._out_bytes and not conn._out)  # taken by the loop
    closer = threading.Thread(target=conn.close)
    t0 = time.monotonic()
    closer.start()
    closer.join(5)
    wait_until(lambda: conn.sock.fileno() == -1, timeout=2)
    assert time.monotonic() - t0 < 2
    assert conn.send_response(2, {}) is False


def test_a_socket_that_accepts_nothing_for_io_timeout_is_closed(closing, io_loop, caplog):
    caplog.set_level(logging.INFO, LOGGER)
    ours, theirs = socket.socketpair()
    for sock in (ours, theirs):
        closing(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    hello = Hello(CLUSTER, -1, 1, "client")
    conn = Connection(ours, ("127.0.0.1", 4243), hello, io_loop, io_timeout=0.5)
    io_loop.add(conn)
    assert conn.send_response(1, {"data": b"x" * (1 << 20)})  # far more than the buffers
    wait_until(lambda: conn.closed, timeout=5)
    assert logged(caplog, "127.0.0.1:4243", "write failed: no progress for")


def test_a_tls_writer_blocked_on_a_peer_that_does_not_read_leaves_reads_flowing(
    make_transport, tls_contexts, closing
):
    """OpenSSL is not thread-safe, so reads and writes share a lock: a writer must
    not hold it while it waits for the peer to make room."""
    server_ctx, client_ctx = tls_contexts
    seen, conns = [], []
    big = {"data": b"x" * 256 * 1024}

    def handler(conn, req_id, body):
        conns.append(conn)
        seen.append(body["n"])
        if body["big"]:
            conn.send_response(req_id, big)

    server = make_transport(1, on_request=handler, ssl_context=server_ctx, io_timeout=20)
    client = FramedClient(HOST, server.port, CLUSTER, timeout=5, ssl_context=client_ctx)
    closing(client)
    client._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    for n in range(40):  # 10 MiB of answers that are never read
        client.send_request({"n": n, "big": True})
    wait_until(lambda: len(seen) == 40)
    conn = conns[0]
    wait_until(lambda: conn._out_bytes > 4 * 1024 * 1024)  # the writer is stuck
    client.send_request({"n": 40, "big": False})
    wait_until(lambda: len(seen) == 41, timeout=3)  # well within io_timeout
    assert not conn.closed


def test_requests_sent_with_the_hello_in_one_write_are_answered(make_transport, closing):
    """The handshake reads the HELLO and may buffer what follows it: the I/O loop
    serves those frames first, though the socket has nothing more to read."""
    server = make_transport(1)
    sock = socket.create_connection((HOST, server.port), timeout=5)
    closing(sock)
    hello = encode_frame(Hello(CLUSTER, -1, 1, "client"))
    requests = b"".join(encode_frame(Request(i, {"n": i})) for i in range(3))
    sock.sendall(hello + requests)
    decoder, got = FrameDecoder(), []
    while len(got) < 4:
        data = sock.recv(65536)
        assert data, "closed by the server"
        got.extend(decoder.feed(data))
    assert got == [HelloOk(1)] + [Response(i, {"echo": {"n": i}}) for i in range(3)]
