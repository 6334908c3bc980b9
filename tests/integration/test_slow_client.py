"""A client that stops reading its answers must not stall its partition (issue 11).

Answers are sent from the partition's Raft thread when an entry commits; a
client whose socket no longer drains used to block that thread inside
``sendall``: every other client of the partition waited and heartbeats
stopped, so the followers elected another leader. Now the answers queue on
the connection, and a connection with too much unread is closed.
"""

from __future__ import annotations

import socket
import statistics
import time

import pytest

from broker.client import BrokerClient
from broker.demo.localcluster import LocalCluster, wait_for
from broker.wire import (
    PROTOCOL_VERSION,
    ROLE_CLIENT,
    FrameDecoder,
    Hello,
    HelloOk,
    Request,
    encode_frame,
)
from tests.integration.test_cluster import FAST

RECORD = 64 * 1024
RECORDS = 200  # 12.5 MiB: every read answer is as large as a read can be (~2 MiB)
READS = 60  # ~120 MiB of answers, far past what a connection may leave unread
APPEND_FOR = 3.0  # seconds of appends by a well-behaved client meanwhile
MAX_LATENCY = 1.0  # an append stalled behind the stuck client would take io_timeout (10 s)


@pytest.fixture
def cluster(tmp_path):
    clusters = []

    def make(**kw) -> LocalCluster:
        kw.setdefault("overrides", FAST)
        c = LocalCluster(str(tmp_path / f"c{len(clusters)}"), **kw)
        clusters.append(c)
        return c

    yield make
    for c in clusters:
        c.stop_all()


def stuck_client(port: int, cluster_name: str) -> socket.socket:
    """A raw client connection, handshake done, with a tiny receive buffer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: sets the window
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(encode_frame(Hello(cluster_name, -1, PROTOCOL_VERSION, ROLE_CLIENT)))
    decoder = FrameDecoder()
    while True:
        data = sock.recv(4096)
        assert data, "closed during the handshake"
        frames = list(decoder.feed(data))
        if frames:
            assert type(frames[0]) is HelloOk
            return sock


def closed_by_broker(sock: socket.socket, timeout: float) -> bool:
    """Drains ``sock`` until the broker closes it; False if it is still open at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not sock.recv(1 << 20):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


def partition_state(c: LocalCluster, node: int) -> tuple[str, int]:
    status = c.get_json(node, "/actuator/partitions")["1"]
    return status["role"], status["term"]


def test_a_client_that_stops_reading_does_not_stall_its_partition(cluster):
    c = cluster(size=3, partitions=1, replication_factor=3)
    c.start()
    leader = c.wait_leaders()[1]
    gateway = c.gateway(leader)  # its answers come from the leader's partition thread
    with BrokerClient(gateway, timeout=20) as client:
        payload = b"x" * RECORD
        futures = [client.append_async(payload, partition=1) for _ in range(RECORDS)]
        assert [f.result().position for f in futures] == list(range(1, RECORDS + 1))
        role, term = partition_state(c, leader)
        assert role == "LEADER"

        stuck = stuck_client(c.ports[leader]["gateway"], c.cluster_name)
        try:
            read = {"op": "read", "partition": 1, "from": 1, "max": 10_000}
            latencies, sent = [], 0
            end = time.monotonic() + APPEND_FOR
            while time.monotonic() < end:
                t0 = time.monotonic()
                client.append(b"small", partition=1)
                latencies.append(time.monotonic() - t0)
                if 0 <= sent < READS:
                    # one large read per append: each costs the partition thread a
                    # read of ~2 MiB, so queuing them all at once would stall the
                    # partition by itself, whatever happens to the answers
                    try:
                        stuck.sendall(encode_frame(Request(sent + 1, read)))  # never read
                        sent += 1
                    except OSError:
                        sent = -1  # closed by the broker already

            latencies.sort()
            p99 = latencies[int(len(latencies) * 0.99) - 1]
            summary = (
                f"{len(latencies)} appends: median {statistics.median(latencies) * 1000:.1f} ms,"
                f" p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms; reads sent: {sent}"
            )
            print(summary)
            assert latencies[-1] < MAX_LATENCY, summary
            assert sent in (-1, READS), f"{sent} reads sent"
            assert c.leaders() == {1: leader}, "the partition changed leader"
            assert partition_state(c, leader) == ("LEADER", term), "an election happened"

            # the broker closed the connection that left its answers unread
            assert closed_by_broker(stuck, timeout=15)
        finally:
            stuck.close()
        wait_for(lambda: "slow consumer" in c.log_tail(leader, 500), 5, "the slow-consumer log")

        assert c.procs[leader].poll() is None
        assert c.health(leader) == "UP"
        assert client.append(b"after", partition=1).position > RECORDS
        assert partition_state(c, leader) == ("LEADER", term)
