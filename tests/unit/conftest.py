"""Fixtures shared by the transport tests: transports on loopback, and sockets to close."""

import threading

import pytest

from broker.transport import Transport

HOST = "127.0.0.1"
CLUSTER = "test-cluster"


class Inbox:
    """Collects what a transport's callbacks receive."""

    def __init__(self):
        self.raft: list[tuple[int, int, object]] = []  # (src, partition, message)
        self.gossip: list[tuple[int, object]] = []
        self.batches = 0

    def on_raft(self, src, messages):
        self.batches += 1
        self.raft.extend((src, pid, msg) for pid, msg in messages)

    def on_gossip(self, src, payload):
        self.gossip.append((src, payload))


def echo(conn, req_id, body):
    conn.send_response(req_id, {"echo": body})


@pytest.fixture
def make_transport():
    """Builds transports on 127.0.0.1 and stops them all at teardown."""
    started = []

    def make(node_id, *, port=0, cluster=CLUSTER, start=True, **kw):
        inbox = Inbox()
        kw.setdefault("on_request", echo)
        kw.setdefault("backoff", (0.01, 0.1))
        t = Transport(node_id, cluster, HOST, port, inbox.on_raft, on_gossip=inbox.on_gossip, **kw)
        t.inbox = inbox
        started.append(t)
        if start:
            t.start()
        return t

    yield make
    for t in started:
        t.stop()
    leftover = [th.name for th in threading.enumerate() if th.name.startswith("transport-")]
    assert not leftover, f"threads left running: {leftover}"


@pytest.fixture
def closing():
    """Closes the clients and sockets a test registers."""
    things = []
    yield things.append
    for thing in things:
        thing.close()
