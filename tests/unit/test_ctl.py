import contextlib
import copy
import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from broker.cli import brokerctl_main
from broker.ctl import printable
from tests.unit.test_client import HOST, FakeGateway, topology_document
from tests.unit.test_layers import MODULES, imports

ROOT = Path(__file__).resolve().parents[2]
ENV_OPTIONS = ("BROKER_ADDRESS", "BROKER_MANAGEMENT", "BROKER_MANAGEMENT_TOKEN")


def _op(operation, broker, partition=None, priority=None):
    op = {"operation": operation, "brokerId": broker}
    if partition is not None:
        op["partitionId"] = partition
    if priority is not None:
        op["priority"] = priority
    return op


def cluster_doc(*, pending=None, last=None, left=(), paused=False) -> dict:
    """A GET /actuator/cluster document: brokers 0-3, partitions 1-2 on every broker."""
    brokers = []
    for b in range(4):
        parts = [
            {
                "id": p,
                "state": "ACTIVE",
                "priority": 4 - (b + p - 1) % 4,
                "config": {"exporting": {"exporters": [{"id": "region0", "state": "ENABLED"}]}},
            }
            for p in (1, 2)
        ]
        brokers.append(
            {
                "id": b,
                "state": "LEFT" if b in left else "ACTIVE",
                "version": 2,
                "lastUpdatedAt": "2024-05-01T10:00:00.000Z",
                "partitions": [] if b in left else parts,
            }
        )
    return {
        "version": 7,
        "clusterId": "c0ffee",
        "brokers": brokers,
        "lastChange": last
        or {
            "id": 3,
            "status": "COMPLETED",
            "startedAt": "2024-05-01T10:00:00.000Z",
            "completedAt": "2024-05-01T10:00:01.000Z",
        },
        "pendingChange": pending,
        "partitionsCount": 2,
        "exportingPaused": paused,
    }


def pending_change(change_id=4, done=2, todo=3) -> dict:
    ops = [_op("BROKER_ADD", 4)] + [_op("PARTITION_JOIN", 4, p, 1) for p in range(1, 5)]
    ops = (ops * 2)[: done + todo]
    return {
        "id": change_id,
        "status": "IN_PROGRESS",
        "startedAt": "2024-05-01T11:00:00.000Z",
        "completedAt": None,
        "internalVersion": done,
        "completed": ops[:done],
        "pending": ops[done:],
    }


def accepted(change_id=5, ops=None) -> dict:
    if ops is None:
        ops = [_op("PARTITION_JOIN", 4, 1, 1), _op("PARTITION_LEAVE", 3, 1)]
    return {
        "changeId": change_id,
        "currentTopology": [],
        "plannedChanges": ops,
        "expectedTopology": [],
    }


class FakeManagement:
    """A management API on 127.0.0.1: canned answers per (method, path), requests recorded.

    ``answer(method, path, *answers)``: each answer is ``(status, document)``
    (status None: close the connection without answering); they are given in
    turn and the last one repeats.
    """

    def __init__(self):
        self.answers: dict[tuple[str, str], list[tuple[int, object]]] = {
            ("GET", "/actuator/cluster"): [(200, cluster_doc())],
            ("GET", "/actuator/exporters"): [
                (200, [{"exporterId": "region0", "status": "ENABLED"}])
            ],
        }
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                url = urlsplit(self.path)
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                fake.requests.append(
                    {
                        "method": self.command,
                        "path": url.path,
                        "query": {k: v[-1] for k, v in parse_qs(url.query).items()},
                        "body": json.loads(raw) if raw else None,
                        "authorization": self.headers.get("Authorization"),
                    }
                )
                queue = fake.answers.get((self.command, url.path))
                status, doc = (
                    (queue.pop(0) if len(queue) > 1 else queue[0])
                    if queue
                    else (404, {"message": f"no such endpoint: {url.path}"})
                )
                if status is None:  # hang up without answering
                    return
                body = b"" if status == 204 else json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_PATCH = do_DELETE = do_GET

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.url = f"http://{HOST}:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def answer(self, method: str, path: str, *answers) -> None:
        self.answers[(method, path)] = list(answers)

    def changes(self) -> list[dict]:
        """The requests other than reads."""
        return [r for r in self.requests if r["method"] != "GET"]


@contextlib.contextmanager
def closed_port():
    """A port on 127.0.0.1 that refuses connections (bound, not listening)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        yield sock.getsockname()[1]


@pytest.fixture
def gateway():
    gw = FakeGateway().start()
    yield gw
    gw.stop()


@pytest.fixture
def management():
    fake = FakeManagement()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()
    fake.thread.join(5)


@pytest.fixture
def ctl(gateway, management, monkeypatch, capsys):
    """Runs brokerctl in this process against the fake gateway and management API."""

    def run(*args, env=None):
        for name in ENV_OPTIONS:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("BROKER_ADDRESS", gateway.address)
        monkeypatch.setenv("BROKER_MANAGEMENT", management.url)
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        try:
            code = brokerctl_main(list(args))
        except SystemExit as e:
            code = e.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def brokerctl(gateway, management):
    """Runs ``python -m broker.cli`` against the fake gateway and management API."""

    def run(*args, address=None, env=None, stdin=b""):
        environ = {k: v for k, v in os.environ.items() if k not in ENV_OPTIONS}
        environ["BROKER_MANAGEMENT"] = management.url
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


def test_status_counts_only_live_leaders(ctl, gateway):
    """A dead broker's last leader claim lingers in the topology; it leads nothing."""
    topology = topology_document(gateway.transport.port)
    topology["brokers"][0]["alive"] = False  # it led partition 1
    gateway.answer_topology = topology
    code, out, err = ctl("status")
    assert (code, err) == (0, "")
    assert out.count("LEADER") == 2  # the table still shows what each broker reported
    assert "Partitions without a leader: 1, 3" in out


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


def test_bench_batches_the_records_due_and_times_each_record(brokerctl, gateway):
    code, out, _ = brokerctl(
        "bench", "--records", "1000", "--size", "10", "--inflight", "200", "--batch", "64", "--json"
    )
    assert code == 0
    report = json.loads(out)
    assert report["committed"] == report["sent"] == 1000 and report["errors"] == {}
    assert sum(len(log) for log in gateway.logs.values()) == 1000
    appends = [b for b in gateway.received if b["op"] == "append"]
    assert report["requests"] == len(appends) < 1000 / 4  # 1000 records, few requests
    assert max(len(b["records"]) for b in appends) == 64
    assert all("data" not in b for b in appends)


def test_bench_counts_a_batch_answered_for_another_count_as_failed(brokerctl, gateway):
    real = gateway.answer

    def short(body):
        answer = real(body)
        if answer.get("count", 1) > 1:
            answer["count"] -= 1  # a broker that says it appended one record less
        return answer

    gateway.answer = short
    code, _, err = brokerctl("bench", "--records", "40", "--inflight", "40", "--batch", "40")
    assert code == 1 and "WRONG_COUNT: 40 records failed" in err


def test_bench_refuses_a_batch_over_the_request_limit(brokerctl, gateway):
    code, _, err = brokerctl("bench", "--batch", "10001")
    assert code == 2 and "at most 10000 records per request" in err


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


# --- management commands (cluster, exporters, status) against FakeManagement ----------


def test_cluster_show_prints_brokers_partitions_and_changes(ctl, management):
    management.answer("GET", "/actuator/cluster", (200, cluster_doc(pending=pending_change())))
    code, out, err = ctl("cluster", "show")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[:2] == ["Topology version: 7", "Cluster id: c0ffee"]
    assert lines[2].split() == ["BROKER", "STATE", "VERSION", "PARTITIONS", "(id:priority)"]
    assert lines[3].split() == ["0", "ACTIVE", "2", "1:4", "2:3"]
    assert lines[6].split() == ["3", "ACTIVE", "2", "1:1", "2:4"]
    assert "Last change: 3 COMPLETED, started 2024-05-01T10:00:00.000Z, completed" in out
    assert lines[-1] == (
        "Pending change: 4 IN_PROGRESS, 2 of 5 operations completed; "
        "next: PARTITION_JOIN on broker 4 partition 2"
    )


def test_cluster_show_marks_left_brokers_and_paused_exporting(ctl, management):
    management.answer("GET", "/actuator/cluster", (200, cluster_doc(left=(1, 3), paused=True)))
    code, out, _ = ctl("cluster", "show")
    assert code == 0
    assert "Exporting: paused" in out
    assert [line.split() for line in out.splitlines() if line.startswith("1 ")] == [
        ["1", "LEFT", "2", "-"]
    ]
    assert "Pending change: none" in out


def test_cluster_show_json_is_the_document(ctl, management):
    code, out, _ = ctl("cluster", "show", "--json")
    assert code == 0
    assert json.loads(out) == cluster_doc()
    assert [(r["method"], r["path"]) for r in management.requests] == [("GET", "/actuator/cluster")]


def test_the_first_management_url_that_answers_is_used(ctl, management):
    with closed_port() as port:
        urls = f"http://{HOST}:{port},{management.url}"
        code, out, _ = ctl("--management", urls, "cluster", "show", "--json")
        assert code == 0 and json.loads(out)["version"] == 7
        code, out, err = ctl("exporters", "list", "--management", f"{HOST}:{port}")
    assert (code, out) == (1, "")
    assert err == (
        f"brokerctl: management API unreachable: http://{HOST}:{port}: "
        "[Errno 111] Connection refused\n"
    )


def test_a_read_without_answer_moves_on_but_a_change_is_not_sent_twice(ctl, management):
    twice = f"{management.url},{management.url}"
    management.answer("GET", "/actuator/cluster", (None, None), (200, cluster_doc()))
    assert ctl("--management", twice, "cluster", "show", "--json")[0] == 0
    management.answer("PATCH", "/actuator/cluster", (None, None), (202, accepted()))
    code, out, err = ctl("--management", twice, "cluster", "add", "4")
    assert (code, out) == (1, "")
    assert "it may have been applied: check with `brokerctl cluster show`" in err
    assert len(management.changes()) == 1


@pytest.mark.parametrize(
    "args, method, path, query, body",
    [
        (
            ["cluster", "add", "4", "5", "--replication-factor", "4"],
            "PATCH",
            "/actuator/cluster",
            {},
            {"brokers": {"add": [4, 5]}, "partitions": {"replicationFactor": 4}},
        ),
        (
            ["cluster", "remove", "3"],
            "PATCH",
            "/actuator/cluster",
            {},
            {"brokers": {"remove": [3]}},
        ),
        (
            ["cluster", "scale", "--brokers", "3,0,1,2", "--replication-factor", "2"],
            "POST",
            "/actuator/cluster/brokers",
            {"replicationFactor": "2"},
            [0, 1, 2, 3],
        ),
        (
            ["cluster", "force-remove", "1", "3"],
            "POST",
            "/actuator/cluster/brokers",
            {"force": "true"},
            [0, 2],
        ),
        (
            ["cluster", "force-remove", "3", "--allow-removing-reachable-brokers"],
            "POST",
            "/actuator/cluster/brokers",
            {"force": "true", "allowRemovingReachableBrokers": "true"},
            [0, 1, 2],
        ),
        (
            ["exporters", "enable", "region1", "--initialize-from", "region0"],
            "POST",
            "/actuator/exporters/region1/enable",
            {},
            {"initializeFrom": "region0"},
        ),
        (
            ["exporters", "disable", "region1"],
            "POST",
            "/actuator/exporters/region1/disable",
            {},
            None,
        ),
    ],
)
def test_change_commands_send_the_zeebe_requests(ctl, management, args, method, path, query, body):
    management.answer(method, path, (202, accepted()))
    code, out, err = ctl(*args)
    assert (code, err) == (0, "")
    [request] = management.changes()
    assert (request["method"], request["path"]) == (method, path)
    assert (request["query"], request["body"]) == (query, body)
    assert "Change 5 accepted: 2 operations planned" in out
    table = out.splitlines()[-3:]
    assert table[0].split() == ["#", "OPERATION", "BROKER", "PARTITION", "PRIORITY", "DETAILS"]
    assert table[1].split() == ["1", "PARTITION_JOIN", "4", "1", "1"]
    assert table[2].split() == ["2", "PARTITION_LEAVE", "3", "1"]


def test_dry_run_prints_the_plan_and_applies_nothing(ctl, management):
    ops = [
        _op("PARTITION_FORCE_RECONFIGURE", 0, 1) | {"brokers": [0, 2]},
        _op("BROKER_FORCE_REMOVE", 1),
    ]
    management.answer("POST", "/actuator/cluster/brokers", (200, accepted(None, ops)))
    code, out, err = ctl("cluster", "force-remove", "1", "3", "--dry-run")
    assert (code, err) == (0, "")
    assert management.changes()[0]["query"] == {"force": "true", "dryRun": "true"}
    lines = out.splitlines()
    assert lines[0] == "Retaining brokers [0, 2]; force-removing [1, 3]"
    assert lines[1] == "Dry run: 2 operations planned, nothing applied"
    assert lines[3].split() == ["1", "PARTITION_FORCE_RECONFIGURE", "0", "1", "brokers=0,2"]
    assert lines[4].split() == ["2", "BROKER_FORCE_REMOVE", "1"]


@pytest.mark.parametrize("status", [400, 409, 503])
def test_an_api_refusal_exits_1_with_its_message(ctl, management, status):
    message = "another topology change is in progress: change 4 is still in progress"
    management.answer("PATCH", "/actuator/cluster", (status, {"message": message}))
    assert ctl("cluster", "add", "4") == (1, "", f"brokerctl: HTTP {status}: {message}\n")


def test_wait_follows_the_change_until_it_completes(ctl, management):
    done = {"id": 5, "status": "COMPLETED", "startedAt": "t0", "completedAt": "t1"}
    management.answer("POST", "/actuator/exporters/region1/disable", (202, accepted()))
    management.answer(
        "GET",
        "/actuator/cluster",
        (200, cluster_doc()),  # not yet gossiped to the broker that is polled
        (200, cluster_doc(pending=pending_change(5, 0, 2))),
        (200, cluster_doc(pending=pending_change(5, 1, 1))),
        (200, cluster_doc(pending=pending_change(5, 1, 1))),
        (200, cluster_doc(last=done)),
    )
    code, out, err = ctl("exporters", "disable", "region1", "--wait")
    assert code == 0
    assert err.splitlines() == [
        "change 5: 0 of 2 operations completed",
        "change 5: 1 of 2 operations completed",
    ]
    assert out.splitlines()[-1] == "Change 5 COMPLETED"


def test_wait_gives_up_at_its_deadline(ctl, management):
    management.answer("POST", "/actuator/cluster/brokers", (202, accepted()))
    management.answer("GET", "/actuator/cluster", (200, cluster_doc(pending=pending_change(5))))
    code, _, err = ctl(
        "cluster", "scale", "--brokers", "0,1,2,3,4", "--wait", "--wait-timeout", "0.5"
    )
    assert code == 1
    assert err.splitlines()[-1] == (
        "brokerctl: timed out after 0.5s waiting for change 5 (2 of 5 operations completed)"
    )


def test_wait_reports_a_change_that_failed(ctl, management):
    failed = {"id": 5, "status": "FAILED", "startedAt": "t0", "completedAt": "t1"}
    management.answer("PATCH", "/actuator/cluster", (202, accepted()))
    management.answer("GET", "/actuator/cluster", (200, cluster_doc(last=failed)))
    code, _, err = ctl("cluster", "remove", "3", "--wait")
    assert (code, err) == (1, "brokerctl: change 5 ended FAILED\n")


def test_force_remove_checks_the_ids_before_sending_anything(ctl, management):
    code, _, err = ctl("cluster", "force-remove", "1", "9")
    assert code == 2 and "brokers [9] are not members (members: [0, 1, 2, 3])" in err
    code, _, err = ctl("cluster", "force-remove", "0", "1", "2", "3")
    assert code == 2 and "must retain at least one broker" in err
    assert management.changes() == []


def test_force_remove_repeated_after_the_brokers_left_retains_the_same_brokers(ctl, management):
    management.answer("GET", "/actuator/cluster", (200, cluster_doc(left=(1, 3))))
    management.answer("POST", "/actuator/cluster/brokers", (202, accepted(4, [])))
    code, out, err = ctl("cluster", "force-remove", "1", "3")
    assert (code, err) == (0, "brokerctl: brokers [1, 3] have already left\n")
    assert management.changes()[0]["body"] == [0, 2]
    assert "Change 4 accepted: 0 operations planned" in out


def test_exporters_list_pause_and_resume(ctl, management):
    exporters = [
        {"exporterId": "region0", "status": "ENABLED"},
        {"exporterId": "region1", "status": "DISABLED"},
    ]
    management.answer("GET", "/actuator/exporters", (200, exporters))
    code, out, _ = ctl("exporters", "list")
    assert code == 0
    assert [line.split() for line in out.splitlines()] == [
        ["EXPORTER", "STATUS"],
        ["region0", "ENABLED"],
        ["region1", "DISABLED"],
    ]
    assert json.loads(ctl("exporters", "list", "--json")[1]) == exporters
    for action, word in (("pause", "paused"), ("resume", "resumed")):
        management.answer("POST", f"/actuator/exporting/{action}", (204, None))
        assert ctl("exporters", action) == (0, f"Exporting {word}\n", "")
    assert [r["path"] for r in management.changes()] == [
        "/actuator/exporting/pause",
        "/actuator/exporting/resume",
    ]


def test_the_management_token_is_sent_as_a_bearer_token(ctl, management):
    assert ctl("cluster", "show", "--management-token", "s3cret")[0] == 0
    assert ctl("exporters", "list", env={"BROKER_MANAGEMENT_TOKEN": "t0ken"})[0] == 0
    assert [r["authorization"] for r in management.requests] == ["Bearer s3cret", "Bearer t0ken"]
    management.answer("GET", "/actuator/cluster", (401, {"message": "missing or invalid token"}))
    assert ctl("cluster", "show") == (
        1,
        "",
        "brokerctl: HTTP 401: missing or invalid token\n",
    )


def test_status_adds_version_pending_change_and_exporters(ctl, management):
    doc = copy.deepcopy(cluster_doc(pending=pending_change(), paused=True))
    management.answer("GET", "/actuator/cluster", (200, doc))
    management.answer(
        "GET",
        "/actuator/exporters",
        (
            200,
            [
                {"exporterId": "region0", "status": "ENABLED"},
                {"exporterId": "region1", "status": "DISABLED"},
            ],
        ),
    )
    code, out, err = ctl("status")
    assert (code, err) == (0, "")
    assert "Cluster size: 3" in out  # the gateway part is still there
    assert out.splitlines()[-3:] == [
        "Topology version: 7",
        "Pending change: 4 IN_PROGRESS, 2 of 5 operations completed; "
        "next: PARTITION_JOIN on broker 4 partition 2",
        "Exporters: region0 ENABLED, region1 DISABLED (exporting paused)",
    ]


def test_status_without_a_management_api_says_so_in_one_line(ctl):
    with closed_port() as port:
        code, out, err = ctl("status", "--management", f"http://{HOST}:{port}")
    assert (code, err) == (0, "")
    assert "Cluster size: 3" in out
    assert out.splitlines()[-1].startswith("Management API: not available (management API unre")


@pytest.mark.parametrize(
    "args",
    [
        ["cluster"],
        ["cluster", "frobnicate"],
        ["cluster", "scale"],
        ["cluster", "scale", "--brokers", "0,x"],
        ["cluster", "add"],
        ["cluster", "add", "-1"],
        ["cluster", "add", "4", "--dry-run", "--wait"],
        ["cluster", "remove", "3", "--replication-factor", "0"],
        ["cluster", "force-remove"],
        ["exporters", "enable"],
        ["exporters", "disable", "a", "b"],
        ["--management", "ftp://host", "cluster", "show"],
        ["--management", "http://host:port", "exporters", "list"],
    ],
)
def test_management_usage_errors_exit_2_without_a_request(ctl, management, args):
    code, out, err = ctl(*args)
    assert (code, out) == (2, "")
    assert "usage:" in err
    assert management.requests == []


def test_force_remove_refused_by_the_reachable_guard_names_the_cli_override(ctl, management):
    message = "refusing to force-remove brokers [1]: they are reachable. ... repeat with "
    message += "allowRemovingReachableBrokers=true"
    management.answer("POST", "/actuator/cluster/brokers", (400, {"message": message}))
    code, _, err = ctl("cluster", "force-remove", "1")
    assert code == 1
    assert (
        err == f"brokerctl: HTTP 400: {message} (brokerctl: --allow-removing-reachable-brokers)\n"
    )


def test_ops_does_not_import_brokerctl():
    """brokerctl builds on broker.ops (its management client, its views), not the reverse."""
    for name, path in MODULES.items():
        if name == "broker.ops" or name.startswith("broker.ops."):
            wrong = sorted(m for m in imports(name, path) if m.split(".")[:2] == ["broker", "ctl"])
            assert not wrong, f"{name} imports {wrong}"


def test_bench_routes_each_partition_to_its_leader_and_the_rest_to_the_first_address():
    from broker.ctl import load

    doc = topology_document(7000)
    for b in doc["brokers"]:
        b["port"] = 7000 + b["nodeId"]
    spec = load.Load(records=1, payload=b"x", inflight=1, duration=1, timeout=1)
    fallback = (HOST, 9999)
    # partitions 1 and 2 are led by brokers 0 and 1; partition 3 has no leader
    assert load.routes(doc, spec, fallback) == {1: (HOST, 7000), 2: (HOST, 7001), 3: fallback}
    spec.partition = 2
    assert load.routes(doc, spec, fallback) == {2: (HOST, 7001)}
    assert load.routes({"brokers": []}, load.Load(1, b"x", 1, 1, 1), fallback) == {0: fallback}


def test_bench_gives_each_partition_its_share_of_the_window():
    """A partition that never answers holds at most its share of the window in flight
    (not all of it, past what its gateway accepts); the others go on committing."""
    from broker.ctl import load

    class Lagging(FakeGateway):
        def _on_request(self, conn, req_id, body):
            if body.get("partition") == 2:
                with self._lock:
                    self.received.append(body)
                return  # never answered
            super()._on_request(conn, req_id, body)

    gw = Lagging().start()
    try:
        doc = topology_document(gw.transport.port)
        spec = load.Load(records=3000, payload=b"x", inflight=90, duration=1.0, timeout=0.5)
        outcome = load.run(gw.address, "dual-region", doc, spec)
    finally:
        gw.stop()
    to_lagging = [b for b in gw.received if b.get("partition") == 2]
    assert 0 < len(to_lagging) <= 30 * 2  # its share of 90 over 3, sent again after timeouts
    assert len(outcome.latencies) > 1000  # partitions 1 and 3 kept committing
    assert outcome.errors == {"DEADLINE_EXCEEDED": len(to_lagging)}
