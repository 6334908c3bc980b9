"""Camunda's official Python SDK (``camunda-orchestration-sdk``) reads this cluster.

Each release line the SDK has published since Camunda 8.8 (1.1.x, 9.0.x, 10.0.x)
is installed from PyPI into its own virtual environment, cached under
``var/sdk-venvs/<line>`` (git-ignored; a venv that already has the line is
reused, so only the first run downloads anything). A small script run by each
venv's Python builds the SDK's client against a real broker's management URL
and prints what the SDK parsed from ``GET /v2/topology`` and ``GET /v2/status``
as JSON; the test checks those parsed values against the cluster.

Without PyPI the test fails (it is not skipped): CI has PyPI.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from broker import __version__
from broker.demo.localcluster import LocalCluster
from tests.helpers import wait_until
from tests.integration.test_cluster import FAST

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
VENVS = ROOT / "var" / "sdk-venvs"
PACKAGE = "camunda-orchestration-sdk"
LINES = ("1.1", "9.0", "10.0")
PIP_TIMEOUT = 600

# 4 brokers, 2 partitions, RF 2: the round-robin layout puts partition 1 on brokers
# 0 and 1, partition 2 on brokers 1 and 2, and nothing on broker 3.
SIZE, PARTITIONS, RF = 4, 2, 2
REPLICAS = {1: {0, 1}, 2: {1, 2}}

# Run by each SDK venv's Python: argv = management URL, "topology" and/or "status".
# Prints one JSON document of what the SDK parsed (model attributes, not raw JSON).
SCRIPT = r"""
import json, sys
from importlib.metadata import version

import camunda_orchestration_sdk as sdk
from camunda_orchestration_sdk import CamundaClient

base, wanted = sys.argv[1], sys.argv[2:]
client = CamundaClient(
    configuration={"CAMUNDA_REST_ADDRESS": base, "CAMUNDA_AUTH_STRATEGY": "NONE"}
)
out = {
    "sdk": version("camunda-orchestration-sdk"),
    "restAddress": client.configuration.CAMUNDA_REST_ADDRESS,
}


def enum(value):
    return None if value is None else value.value


if "topology" in wanted:
    t = client.get_topology()
    out["topology"] = {
        "model": type(t).__name__,
        "clusterId": t.cluster_id if isinstance(t.cluster_id, (str, type(None))) else "UNSET",
        "clusterSize": t.cluster_size,
        "partitionsCount": t.partitions_count,
        "replicationFactor": t.replication_factor,
        "gatewayVersion": t.gateway_version,
        "lastCompletedChangeId": t.last_completed_change_id,
        "brokers": [
            {
                "model": type(b).__name__,
                "nodeId": b.node_id,
                "brokerId": getattr(b, "broker_id", None),  # a model field since 10.0
                "host": b.host,
                "port": b.port,
                "version": b.version,
                "partitions": [
                    {
                        "partitionId": p.partition_id,
                        "role": enum(p.role),
                        "health": enum(p.health),
                        "state": enum(getattr(p, "state", None)),  # since 10.0
                    }
                    for p in b.partitions
                ],
            }
            for b in t.brokers
        ],
    }

if "status" in wanted:
    if hasattr(client, "get_status"):  # 9.0 and later
        via = "CamundaClient.get_status"
        try:
            client.get_status()
            status = {"ok": True, "statusCode": 204}
        except sdk.errors.ApiError as exc:  # ServiceUnavailableError for a 503
            status = {"ok": False, "statusCode": exc.status_code, "error": type(exc).__name__}
    else:  # 1.1 generated the operation but not its client method
        from camunda_orchestration_sdk.api.cluster import get_status

        via = "api.cluster.get_status.sync_detailed"
        r = get_status.sync_detailed(client=client.client)
        status = {"ok": 200 <= r.status_code < 300, "statusCode": int(r.status_code)}
    out["status"] = {"via": via, **status}

print(json.dumps(out))
"""


# --- the SDK venvs -------------------------------------------------------------------


def _installed(python: Path) -> str | None:
    """The SDK version installed in the venv of ``python``, None if none (or no venv)."""
    if not python.exists():
        return None
    probe = subprocess.run(
        [str(python), "-c", f"import importlib.metadata as m; print(m.version({PACKAGE!r}))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def sdk_python(line: str) -> tuple[Path, str]:
    """The Python of the venv holding the newest ``line`` release pip resolves (installed
    on first use, then reused) and the version it holds."""
    venv = VENVS / line
    python = venv / "bin" / "python"
    VENVS.mkdir(parents=True, exist_ok=True)
    with open(VENVS / f"{line}.lock", "w") as lock:  # one installer per line at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        have = _installed(python)
        if have is not None and have.startswith(f"{line}."):
            return python, have
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        pip = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", f"{PACKAGE}=={line}.*"],
            capture_output=True,
            text=True,
            timeout=PIP_TIMEOUT,
        )
        if pip.returncode != 0:
            pytest.fail(
                f"pip could not install {PACKAGE}=={line}.* into {venv} (is PyPI reachable? "
                f"this test needs it); pip exited {pip.returncode}:\n{pip.stderr[-3000:]}",
                pytrace=False,
            )
        have = _installed(python)
        assert have and have.startswith(f"{line}."), f"{venv}: installed {have!r}"
        return python, have


@pytest.fixture(scope="module")
def sdks() -> dict[str, tuple[Path, str]]:
    """line -> (venv python, SDK version), the three installed at once."""
    with concurrent.futures.ThreadPoolExecutor(len(LINES)) as pool:
        return dict(zip(LINES, pool.map(sdk_python, LINES), strict=True))


def run_sdk(python: Path, base: str, *what: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAMUNDA_", "ZEEBE_"))}
    proc = subprocess.run(
        [str(python), "-c", SCRIPT, base, *what],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, f"{python}: the SDK failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- the cluster -----------------------------------------------------------------------


def status_code(c: LocalCluster, i: int) -> int | None:
    """Broker ``i``'s answer to GET /v2/status (plain HTTP, for waiting)."""
    try:
        with urllib.request.urlopen(c.management(i) + "/v2/status", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


@pytest.fixture
def cluster(tmp_path):
    c = LocalCluster(
        str(tmp_path / "c"), size=SIZE, partitions=PARTITIONS, replication_factor=RF, overrides=FAST
    )
    try:
        c.start()
        yield c
    finally:
        c.stop_all()


def check_topology(name: str, out: dict, c: LocalCluster) -> None:
    """What the SDK parsed matches the cluster: every broker with its gateway address,
    every replica, one healthy leader per partition, the cluster's figures."""
    t = out["topology"]
    cluster_doc = c.get_json(3, "/actuator/cluster")
    assert t["clusterId"] == cluster_doc["clusterId"] == "dual-region", name
    assert (t["clusterSize"], t["partitionsCount"], t["replicationFactor"]) == (4, 2, 2), name
    assert t["gatewayVersion"] == __version__, name
    last = cluster_doc["lastChange"]
    assert t["lastCompletedChangeId"] == (str(last["id"]) if last else "-1"), name
    brokers = {b["nodeId"]: b for b in t["brokers"]}
    assert sorted(brokers) == list(range(SIZE)), name
    leaders: dict[int, list[int]] = {1: [], 2: []}
    for node, b in brokers.items():
        host, port = c.gateway(node).rsplit(":", 1)
        assert (b["host"], b["port"], b["version"]) == (host, int(port), __version__), name
        if name == "10.0":  # brokerId and state are model fields from 10.0 on
            assert b["brokerId"] == str(node), name
        replicas = {p for p, on in REPLICAS.items() if node in on}
        assert {p["partitionId"] for p in b["partitions"]} == replicas, (name, node)
        for p in b["partitions"]:
            assert p["role"] in ("leader", "follower"), (name, node, p)
            assert p["health"] == "healthy", (name, node, p)
            if name == "10.0":
                assert p["state"] == "active", (name, node, p)
            if p["role"] == "leader":
                leaders[p["partitionId"]].append(node)
    assert {pid: len(nodes) for pid, nodes in leaders.items()} == {1: 1, 2: 1}, (name, leaders)


def test_camunda_python_sdk_reads_topology_and_status(sdks, cluster):
    c = cluster
    for line, (_, have) in sdks.items():
        print(f"SDK {line}: {PACKAGE} {have} in {VENVS / line}")
    # Broker 3 hosts no partition: its answers come from its view of the whole cluster.
    viewer = 3
    base = c.management(viewer)
    wait_until(lambda: status_code(c, viewer) == 204, timeout=30, interval=0.1)

    for line, (python, have) in sdks.items():
        out = run_sdk(python, base, "topology", "status")
        print(f"SDK {line} ({have}), every partition led: {json.dumps(out)}")
        assert out["sdk"] == have
        check_topology(line, out, c)
        assert out["status"]["ok"] is True and out["status"]["statusCode"] == 204, (line, out)

    # Partition 2 (brokers 1 and 2, RF 2) loses its quorum when broker 2 stops: no leader.
    c.stop(2)
    wait_until(lambda: status_code(c, viewer) == 503, timeout=30, interval=0.1)
    message = c.get_json(viewer, "/v2/status")["message"]
    assert message == "no leader for partition(s) 2", message

    for line, (python, have) in sdks.items():
        out = run_sdk(python, base, "topology", "status")
        print(f"SDK {line} ({have}), broker 2 stopped: {json.dumps(out)}")
        status = out["status"]
        assert status["ok"] is False and status["statusCode"] == 503, (line, out)
        if line != "1.1":
            assert status["error"] == "ServiceUnavailableError", (line, out)
        leaders = {
            p["partitionId"]
            for b in out["topology"]["brokers"]
            for p in b["partitions"]
            if p["role"] == "leader"
        }
        assert leaders == {1}, (line, out)
