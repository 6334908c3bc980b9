import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from broker.ctl import printable
from tests.unit.test_client import HOST, FakeGateway

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def gateway():
    gw = FakeGateway().start()
    yield gw
    gw.stop()


@pytest.fixture
def brokerctl(gateway):
    """Runs ``python -m broker.cli`` against the fake gateway."""

    def run(*args, address=None, env=None, stdin=b""):
        environ = {k: v for k, v in os.environ.items() if k != "BROKER_ADDRESS"}
        environ.update(env or {})
        argv = [sys.executable, "-m", "broker.cli"]
        if address is not False:
            argv += ["--address", address or gateway.address]
        proc = subprocess.run(
            [*argv, *args], input=stdin, capture_output=True, cwd=ROOT, env=environ, timeout=60
        )
        return proc.returncode, proc.stdout.decode(), proc.stderr.decode()

    return run


def test_append_prints_partition_and_position(brokerctl, gateway):
    assert brokerctl("append", "hello") == (0, "partition 1 position 1\n", "")
    assert brokerctl("append", "--partition", "3", "there") == (0, "partition 3 position 1\n", "")
    assert brokerctl("append", "-", "--partition", "3", stdin=b"\x00bin") == (
        0,
        "partition 3 position 2\n",
        "",
    )
    assert gateway.logs[3] == [b"there", b"\x00bin"]


def test_read_prints_one_line_per_record_with_escapes(brokerctl, gateway):
    gateway.logs[2] = [b"plain text", "vä\tl\n".encode(), b"\xff\\x"]
    code, out, err = brokerctl("read", "--partition", "2")
    assert (code, err) == (0, "")
    assert out.splitlines() == ["1\tplain text", "2\tvä\\tl\\n", "3\t\\xff\\\\x"]
    code, out, _ = brokerctl("read", "--partition", "2", "--from", "2", "--max", "1")
    assert out == "2\tvä\\tl\\n\n"


def test_read_of_an_unknown_partition_fails(brokerctl):
    assert brokerctl("read", "--partition", "9") == (
        1,
        "",
        "brokerctl: INVALID_ARGUMENT: no partition 9\n",
    )


def test_put_then_get_prints_the_value_alone(brokerctl, gateway):
    assert brokerctl("put", "color", "blå") == (0, "", "")
    assert gateway.kv == {"color": "blå".encode()}
    assert brokerctl("get", "color") == (0, "blå\n", "")


def test_get_of_an_absent_key_exits_1(brokerctl):
    code, out, err = brokerctl("get", "nothing")
    assert (code, out) == (1, "")
    assert err.startswith("brokerctl: NOT_FOUND")


def test_cas_sets_only_on_a_match(brokerctl, gateway):
    assert brokerctl("cas", "--absent", "k", "one") == (0, "", "")
    assert brokerctl("cas", "k", "one", "two") == (0, "", "")
    assert gateway.kv == {"k": b"two"}
    code, out, err = brokerctl("cas", "k", "one", "three")
    assert (code, out) == (1, "")
    assert err.splitlines()[0].startswith("brokerctl: FAILED_PRECONDITION")
    assert err.splitlines()[1] == "current value: two"
    code, _, err = brokerctl("cas", "--absent", "k", "x")
    assert code == 1 and "current value: two" in err
    code, _, err = brokerctl("cas", "other", "x", "y")
    assert code == 1 and "current value: (absent)" in err
    assert gateway.kv == {"k": b"two"}


def test_unavailable_writes_exit_nonzero_with_the_code_on_stderr(brokerctl, gateway):
    gateway.error = ("UNAVAILABLE", "no leader for partition 3")
    expected = (1, "", "brokerctl: UNAVAILABLE: no leader for partition 3\n")
    assert brokerctl("put", "k", "v") == expected
    assert brokerctl("append", "x") == expected
    assert brokerctl("cas", "k", "a", "b") == expected


def test_a_gateway_that_does_not_answer_is_deadline_exceeded(brokerctl, gateway):
    gateway.silent = True
    code, out, err = brokerctl("--timeout", "0.2", "put", "k", "v")
    assert (code, out) == (1, "")
    assert err.startswith("brokerctl: DEADLINE_EXCEEDED")


def test_no_broker_listening_is_unavailable_exit_1(brokerctl):
    with socket.socket() as sock:
        sock.bind((HOST, 0))  # bound but not listening: refuses connections
        code, out, err = brokerctl("get", "k", address=f"{HOST}:{sock.getsockname()[1]}")
    assert (code, out) == (1, "")
    assert err.startswith("brokerctl: UNAVAILABLE: cannot connect")


@pytest.mark.parametrize(
    "args",
    [
        ["read"],
        ["read", "--partition", "1", "--from", "0"],
        ["cas", "k", "v"],
        ["cas", "--absent", "k", "a", "b"],
        ["--timeout", "-1", "get", "k"],
        ["--address", "host:port", "get", "k"],
        ["get"],
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_2(brokerctl, args):
    code, out, err = brokerctl(*args)
    assert (code, out) == (2, "")
    assert "usage:" in err


def test_address_from_the_environment_or_after_the_command(brokerctl, gateway):
    env = {"BROKER_ADDRESS": gateway.address}
    assert brokerctl("put", "a", "1", address=False, env=env)[0] == 0
    assert brokerctl("put", "b", "2", "--address", gateway.address, address=False)[0] == 0
    assert gateway.kv == {"a": b"1", "b": b"2"}


def test_status_shows_every_broker_and_partition(brokerctl, gateway):
    code, out, err = brokerctl("status")
    assert (code, err) == (0, "")
    assert "Cluster size: 3" in out
    assert "Partitions count: 3" in out
    assert "Replication factor: 3" in out
    rows = [line for line in out.splitlines() if f"{HOST}:{gateway.transport.port}" in line]
    assert [row.split()[1] for row in rows] == ["0", "1", "2"]
    assert out.count("LEADER") == 2
    assert "unhealthy" in out
    assert "Partitions without a leader: 3" in out


def test_status_json_is_the_topology_document(brokerctl):
    code, out, _ = brokerctl("status", "--json")
    assert code == 0
    document = json.loads(out)
    assert [b["nodeId"] for b in document["brokers"]] == [0, 1, 2]
    assert document["replicationFactor"] == 3


def test_bench_reports_throughput_and_latency(brokerctl, gateway):
    code, out, err = brokerctl("bench", "--records", "300", "--size", "10", "--inflight", "16")
    assert (code, err) == (0, "")
    assert "300/300 records" in out
    for word in ("records/s", "MB/s", "p50", "p99"):
        assert word in out
    assert sum(len(log) for log in gateway.logs.values()) == 300
    assert all(len(r) == 10 for log in gateway.logs.values() for r in log)


def test_bench_json_and_failures(brokerctl, gateway):
    code, out, _ = brokerctl("bench", "--records", "50", "--partition", "2", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["committed"] == 50 and report["errors"] == {}
    assert len(gateway.logs[2]) == 50
    gateway.error, gateway.error_ops = ("RESOURCE_EXHAUSTED", "backpressure"), {"append"}
    code, out, err = brokerctl("bench", "--records", "20", "--json")
    assert code == 1
    assert json.loads(out)["errors"] == {"RESOURCE_EXHAUSTED": 20}
    assert "brokerctl: RESOURCE_EXHAUSTED: 20 records failed" in err


def test_bench_without_a_cluster_fails_before_measuring(brokerctl, gateway):
    gateway.error = ("UNAVAILABLE", "no leader")
    assert brokerctl("bench", "--records", "10") == (1, "", "brokerctl: UNAVAILABLE: no leader\n")
    assert [body["op"] for body in gateway.received] == ["topology"]


@pytest.mark.parametrize(
    "data, text",
    [
        (b"plain", "plain"),
        ("ünïcode".encode(), "ünïcode"),
        (b"a\tb\nc\r", "a\\tb\\nc\\r"),
        (b"\x00\x7f", "\\x00\\x7f"),
        (b"back\\slash", "back\\\\slash"),
        (b"\xff\xfe", "\\xff\\xfe"),
    ],
)
def test_printable(data, text):
    assert printable(data) == text
