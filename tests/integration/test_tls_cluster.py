"""A TLS cluster of real broker processes, and rogue peers that try to join it.

The brokers are started with the documented CLI (``broker run --config``) and
certificates issued by broker.certs. A rogue that knows the cluster name and
the ports, holding a certificate of another CA or none at all, must never be
seen as a member and never change a term, a vote, a member state or a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys

import pytest

from broker.demo.localcluster import LocalCluster, wait_for
from broker.raft.messages import AppendRequest, TimeoutNow, VoteRequest
from broker.tls import broker_contexts, client_context
from broker.transport import Transport
from broker.wire import Hello, encode_frame
from tests.integration.test_cluster import FAST, assert_all_readable, write
from tests.tlsutil import ClusterCA


@pytest.fixture
def tls_cluster(tmp_path):
    c = LocalCluster(str(tmp_path / "c"), size=3, partitions=2, overrides=FAST, tls=True)
    try:
        c.start()
        c.wait_leaders()
        yield c
    finally:
        c.stop_all()


def _state(c: LocalCluster) -> dict:
    """Every broker's view: members and their states, and each partition's term and role."""
    view = {}
    for i in c.running():
        topo = c.get_json(i, "/v2/topology")
        members = c.get_json(i, "/actuator/cluster")
        assert topo and members, f"broker {i} does not answer"
        view[i] = {
            "brokers": sorted(
                (
                    b["nodeId"],
                    b.get("alive", True),
                    tuple((p["partitionId"], p["role"], p.get("term")) for p in b["partitions"]),
                )
                for b in topo["brokers"]
            ),
            "cluster": members,
        }
    return view


def _settled(c: LocalCluster) -> tuple[dict, dict]:
    """State and files once two looks half a second apart agree (a cluster that
    just started may still be recording its topology)."""
    last = None

    def same_twice():
        nonlocal last
        now = (_state(c), _files(c))
        agreed, last = now == last, now
        return agreed

    wait_for(same_twice, 20, "a settled cluster", interval=0.5)
    return last


def _files(c: LocalCluster) -> dict[str, str]:
    """Hashes of every file under the data directories except the journals'
    segments (which heartbeats do not touch either, but keep the check to state)."""
    out = {}
    for i in range(c.size):
        for root, _, names in os.walk(c.data_dir(i)):
            for name in names:
                path = os.path.join(root, name)
                with open(path, "rb") as f:
                    out[path] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_a_tls_cluster_commits_and_reads_back_over_tls(tls_cluster):
    c = tls_cluster
    with c.client() as client:
        acked = write(client, 200, "tls")
        assert len(acked) == 200
        assert_all_readable(client, acked)
    topo = c.get_json(0, "/v2/topology")
    assert sorted(b["nodeId"] for b in topo["brokers"]) == [0, 1, 2]
    # Plaintext to any of the three ports is refused.
    for port in c.ports[0].values():
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            s.sendall(encode_frame(Hello(c.cluster_name, -1, 1, "client")))
            got = b""
            try:
                while chunk := s.recv(65536):
                    got += chunk
            except ConnectionResetError:
                pass
            assert not got.startswith((b"BK", b"HTTP")), (port, got[:40])
        finally:
            s.close()


def test_fresh_tls_clients_writing_while_their_reader_reads_lose_no_connection(tls_cluster):
    """A TLS client's reader thread and its senders share one OpenSSL connection, which
    allows one call at a time: unserialised, a fresh connection written to while its
    reader took in the broker's first records was seen closed ("connection closed by the
    broker", twice in a row: a failed failover step in CI). Many fresh clients, each
    sending at once from several threads, all get every answer."""
    c = tls_cluster
    for round_ in range(20):
        with c.client() as client:
            futures = [client.append_async(f"r{round_}-{i}", 1 + i % 2) for i in range(50)]
            errors = []
            for fut in futures:
                try:
                    fut.result(timeout=30)
                except Exception as exc:
                    errors.append(exc)
            assert not errors, errors[:3]


def test_rogue_peers_never_join_and_never_change_anything(tls_cluster, tmp_path):
    c = tls_cluster
    with c.client() as client:
        assert len(write(client, 20, "before")) == 20
    c.wait_leaders()
    before_state, before_files = _settled(c)
    terms = {p[0]: p[2] for b in before_state[0]["brokers"] for p in b[2] if p[1] == "leader"}

    foreign = ClusterCA(tmp_path / "foreign", c.cluster_name)  # right name, wrong CA
    pair = foreign.broker(7)
    tls = broker_contexts(pair.cert, pair.key, foreign.cert)
    rogues = []
    try:
        for node_id, server, client_ctx in ((7, tls.internal_server, tls.internal_client),):
            rogue = Transport(
                node_id,
                c.cluster_name,
                "127.0.0.1",
                0,
                on_raft=lambda *_: None,
                ssl_context=server,
                client_ssl_context=client_ctx,
                authenticate_peers=True,
                backoff=(0.05, 0.2),
            )
            rogue.start()
            rogues.append(rogue)
        # A rogue with no certificate at all: TLS without a client cert.
        bare = Transport(
            8,
            c.cluster_name,
            "127.0.0.1",
            0,
            on_raft=lambda *_: None,
            ssl_context=tls.internal_server,
            # It trusts the cluster's CA (public) but has no certificate to show.
            client_ssl_context=client_context(c.tls_files["ca"], check_hostname=False),
            backoff=(0.05, 0.2),
        )
        bare.start()
        rogues.append(bare)
        for rogue in rogues:
            for i in range(c.size):
                rogue.set_peer(i, "127.0.0.1", c.ports[i]["internal"])
        for rogue in rogues:
            src = rogue.node_id
            for i in range(c.size):
                for pid, term in terms.items():
                    big = term + 1
                    rogue.send_raft(i, pid, AppendRequest(big, src, i, 0, 0, (), 0))
                    rogue.send_raft(i, pid, VoteRequest(big, src, i, 10**9, big))
                    rogue.send_raft(i, pid, TimeoutNow(big, src, i))
                rogue.send_gossip(i, {"topology": {"brokers": {}}})
        # Every rogue tried and failed to connect to every broker, more than once.
        wait_for(
            lambda: all(r.stats()["connection_errors"] >= 2 * c.size for r in rogues),
            20,
            "the rogues' connection attempts",
        )
        assert not any(r.is_connected(i) for r in rogues for i in range(c.size))
    finally:
        for rogue in rogues:
            rogue.stop()
    assert _state(c) == before_state
    assert _files(c) == before_files
    for i in range(c.size):
        assert "refused a connection" in c.log_tail(i, 100000), c.log_tail(i)


def test_brokerctl_over_tls_and_its_errors_name_the_problem(tls_cluster, tmp_path):
    c = tls_cluster
    f = c.tls_files
    tls = ["--tls-ca", f["ca"], "--tls-cert", f["cert"], "--tls-key", f["key"]]
    base = [sys.executable, "-m", "broker.cli", "--cluster-name", c.cluster_name]
    gateway = ["--address", c.gateways()]
    management = ["--management", c.management(0)]

    def ctl(*args, env=None):
        return subprocess.run([*base, *args], capture_output=True, text=True, timeout=60, env=env)

    done = ctl(*gateway, *tls, "append", "--partition", "1", "over-tls")
    assert done.returncode == 0, done.stderr
    read = ctl(*gateway, *tls, "read", "--partition", "1", "--from", "1")
    assert read.returncode == 0 and "over-tls" in read.stdout, read
    shown = ctl(*management, *tls, "cluster", "show")
    assert shown.returncode == 0, shown.stderr
    # The same files from the environment.
    env = dict(os.environ, BROKER_TLS_CA=f["ca"], BROKER_TLS_CERT=f["cert"])
    env["BROKER_TLS_KEY"] = f["key"]
    assert ctl(*gateway, "get", "nothing-here", env=env).returncode in (0, 1)
    status = ctl(*gateway, *management, "status", "--json", env=env)
    assert status.returncode == 0, status.stderr

    foreign = ClusterCA(tmp_path / "foreign", c.cluster_name)
    wrong = ctl(*gateway, "--tls-ca", foreign.cert, "append", "x")
    assert wrong.returncode == 1
    assert "unknown CA (wrong --tls-ca?)" in wrong.stderr, wrong.stderr
    wrong = ctl(*management, "--tls-ca", foreign.cert, "cluster", "show")
    assert wrong.returncode == 1
    assert "unknown CA (wrong --tls-ca?)" in wrong.stderr, wrong.stderr
    plain = ctl(*gateway, "append", "x")
    assert plain.returncode == 1, plain
    missing = ctl(*gateway, "--tls-ca", str(tmp_path / "none.pem"), "append", "x")
    assert missing.returncode == 2
    assert "brokerctl: --tls-ca: cannot read" in missing.stderr and "no such file" in missing.stderr


def test_brokerctl_bench_over_tls_commits_every_record_it_counts(tls_cluster):
    """The load generator (one thread, non-blocking TLS sockets, coalesced writes) sends
    each partition's appends to its leader; every record it counts is in the log."""
    c = tls_cluster
    f = c.tls_files
    cmd = [sys.executable, "-m", "broker.cli", "--cluster-name", c.cluster_name]
    cmd += ["--address", c.gateways(), "--tls-ca", f["ca"], "--tls-cert", f["cert"]]
    cmd += ["--tls-key", f["key"], "bench", "--records", "3000", "--size", "300"]
    cmd += ["--inflight", "200", "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["sent"], report["committed"], report["errors"]) == (3000, 3000, {})
    assert 0 < report["p50_ms"] <= report["p99_ms"]
    with c.client() as client:
        found = 0
        for p in (1, 2):
            records = client.read(p, 1, 10_000).records
            found += sum(1 for _, data in records if len(data) == 300)
    assert found == 3000
