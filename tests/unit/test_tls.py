"""Mutual TLS between brokers, TLS for clients, and settings that cannot be honoured."""

import logging
import socket
import ssl

import pytest

from broker.raft.messages import TimeoutNow
from broker.tls import TlsSetupError, broker_contexts, client_context, describe_failure
from broker.transport import FramedClient, HandshakeRejected
from broker.wire import FrameDecoder, Hello, HelloReject, encode_frame
from tests.helpers import wait_until
from tests.tlsutil import ClusterCA
from tests.unit.conftest import CLUSTER, HOST
from tests.unit.test_transport import (
    LOGGER,
    closed_by_server,
    logged,
)


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return ClusterCA(tmp_path_factory.mktemp("ca"), CLUSTER)


@pytest.fixture(scope="module")
def foreign_ca(tmp_path_factory):
    # Same cluster name, another CA: what a stranger who knows the name can make.
    return ClusterCA(tmp_path_factory.mktemp("foreign"), CLUSTER)


def contexts(ca: ClusterCA, node_id: int, client_auth: str = "none"):
    pair = ca.broker(node_id)
    return broker_contexts(pair.cert, pair.key, ca.cert, client_auth)


def peer_kwargs(ca: ClusterCA, node_id: int) -> dict:
    tls = contexts(ca, node_id)
    return {
        "ssl_context": tls.internal_server,
        "client_ssl_context": tls.internal_client,
        "authenticate_peers": True,
    }


def tls_hello(port: int, ctx: ssl.SSLContext, hello: Hello):
    """Connect with ``ctx``, send ``hello``, return the first frame answered."""
    raw = socket.create_connection((HOST, port), timeout=5)
    sock = ctx.wrap_socket(raw, server_hostname=HOST)
    try:
        sock.sendall(encode_frame(hello))
        decoder = FrameDecoder()
        while True:
            data = sock.recv(65536)
            if not data:
                return None
            for frame in decoder.feed(data):
                return frame
    finally:
        sock.close()


def test_peers_with_cluster_certificates_exchange_raft_messages(ca, make_transport):
    a = make_transport(1, **peer_kwargs(ca, 1))
    b = make_transport(2, **peer_kwargs(ca, 2))
    a.set_peer(2, HOST, b.port)
    b.set_peer(1, HOST, a.port)
    wait_until(lambda: a.is_connected(2) and b.is_connected(1))
    a.send_raft(2, 1, TimeoutNow(1, 1, 2))
    wait_until(lambda: b.inbox.raft == [(1, 1, TimeoutNow(1, 1, 2))])


def test_a_peer_with_a_foreign_ca_or_no_certificate_is_refused_and_delivers_nothing(
    ca, foreign_ca, make_transport, caplog
):
    caplog.set_level(logging.WARNING, LOGGER)
    b = make_transport(2, **peer_kwargs(ca, 2))
    rogue = make_transport(1, **peer_kwargs(foreign_ca, 1))
    rogue.set_peer(2, HOST, b.port)
    rogue.send_gossip(2, {"dead": [2]})
    wait_until(lambda: logged(caplog, "refused a connection from 127.0.0.1", f"port {b.port}"))
    # A client context with no certificate at all, trusting the right CA.
    bare = client_context(ca.cert, check_hostname=False)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        tls_hello(b.port, bare, Hello(CLUSTER, 1, 1, "peer"))
    assert not rogue.is_connected(2)
    assert b.inbox.raft == [] and b.inbox.gossip == []


def test_a_peer_claiming_another_nodes_id_is_refused_without_learning_anything(
    ca, make_transport, caplog
):
    caplog.set_level(logging.WARNING, LOGGER)
    b = make_transport(2, **peer_kwargs(ca, 2))
    node3 = contexts(ca, 3).internal_client  # a real member's certificate: node 3
    reply = tls_hello(b.port, node3, Hello(CLUSTER, 1, 1, "peer"))
    assert reply == HelloReject("authentication failed")
    assert logged(caplog, "refused", "claiming peer 1", "its certificate names node 3")
    # With the name it holds, node 3 is accepted.
    assert type(tls_hello(b.port, node3, Hello(CLUSTER, 3, 1, "peer"))).__name__ == "HelloOk"
    # A wrong cluster name is refused without saying the right one.
    wrong = tls_hello(b.port, node3, Hello("guess", 3, 1, "peer"))
    assert isinstance(wrong, HelloReject) and CLUSTER not in wrong.reason


def test_a_dialed_node_must_hold_the_certificate_of_the_node_it_is_meant_to_be(
    ca, make_transport, caplog
):
    caplog.set_level(logging.WARNING, LOGGER)
    impostor = make_transport(3, **peer_kwargs(ca, 3))
    a = make_transport(1, **peer_kwargs(ca, 1))
    # Node 1 believes node 2 lives at the impostor's address.
    a.set_peer(2, HOST, impostor.port)
    a.send_raft(2, 1, TimeoutNow(1, 1, 2))
    wait_until(lambda: logged(caplog, "peer 2 at", "handshake failed"))
    assert not a.is_connected(2)
    assert impostor.inbox.raft == []


def test_plaintext_to_a_tls_port_is_refused_and_logged(ca, make_transport, closing, caplog):
    caplog.set_level(logging.WARNING, LOGGER)
    b = make_transport(2, **peer_kwargs(ca, 2))
    plain = socket.create_connection((HOST, b.port), timeout=5)
    closing(plain)
    plain.sendall(encode_frame(Hello(CLUSTER, -1, 1, "client")))
    assert closed_by_server(plain)
    wait_until(lambda: logged(caplog, "refused a connection", "does not speak TLS"))


@pytest.mark.parametrize("client_auth", ["none", "required"])
def test_gateway_clients_per_client_auth(ca, make_transport, client_auth):
    tls = contexts(ca, 1, client_auth)
    b = make_transport(1, ssl_context=tls.gateway)
    anonymous = client_context(ca.cert)
    with_cert = client_context(ca.cert, *_pair(ca.client("ops")))
    with FramedClient(HOST, b.port, CLUSTER, timeout=5, ssl_context=with_cert) as c:
        assert c.request({"a": 1}) == {"echo": {"a": 1}}
    if client_auth == "none":
        with FramedClient(HOST, b.port, CLUSTER, timeout=5, ssl_context=anonymous) as c:
            assert c.request({"a": 2}) == {"echo": {"a": 2}}
    else:
        refused = (ssl.SSLError, ConnectionError, HandshakeRejected, OSError)
        with (
            pytest.raises(refused),
            FramedClient(HOST, b.port, CLUSTER, timeout=5, ssl_context=anonymous) as c,
        ):
            c.request({"a": 3})


def _pair(pair):
    return pair.cert, pair.key


def test_client_errors_name_the_problem(ca, foreign_ca, make_transport):
    b = make_transport(1, ssl_context=contexts(ca, 1).gateway)
    with pytest.raises(ssl.SSLCertVerificationError) as unknown:
        FramedClient(HOST, b.port, CLUSTER, timeout=5, ssl_context=client_context(foreign_ca.cert))
    assert "unknown CA" in describe_failure(unknown.value)
    strict = client_context(ca.cert)
    raw = socket.create_connection((HOST, b.port), timeout=5)
    with pytest.raises(ssl.SSLCertVerificationError) as mismatch:
        strict.wrap_socket(raw, server_hostname="broker.example.org")
    raw.close()
    assert "host name does not match" in describe_failure(mismatch.value)


def test_settings_that_cannot_be_honoured_name_their_key(ca, foreign_ca, tmp_path):
    pair = ca.broker(1)
    other = foreign_ca.broker(1)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    cases = [
        ((str(tmp_path / "missing.pem"), pair.key, ca.cert), "security.tls.certificate"),
        ((pair.cert, str(tmp_path / "missing.key"), ca.cert), "security.tls.privateKey"),
        ((pair.cert, other.key, ca.cert), "security.tls.privateKey"),
        ((pair.cert, pair.key, str(tmp_path / "missing-ca.pem")), "security.tls.ca"),
        ((pair.cert, pair.key, str(junk)), "security.tls.ca"),
    ]
    for args, key in cases:
        with pytest.raises(TlsSetupError) as info:
            broker_contexts(*args)
        assert info.value.key == key, (args, str(info.value))
    with pytest.raises(TlsSetupError) as info:
        broker_contexts(pair.cert, pair.key, ca.cert, "sometimes")
    assert info.value.key == "security.tls.clientAuth"
