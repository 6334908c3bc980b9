"""Backup and restore with Zeebe's backup API (issue 14, item 1), on real broker
processes: a backup taken while writes continue, then every broker wiped and
restored, holds exactly the records acknowledged up to each partition's
checkpoint, at the same positions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest

from broker.client import BrokerClient, BrokerError
from broker.demo.localcluster import LocalCluster
from tests.helpers import wait_until
from tests.integration.test_cluster import FAST, read_all


def call(c: LocalCluster, i: int, method: str, path: str, body=None) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(c.management(i).rstrip("/") + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def broker_cli(c: LocalCluster, i: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "broker", *args, "--config", c.config_path(i)],
        capture_output=True,
        text=True,
        timeout=120,
    )


class Writer(threading.Thread):
    """Appends without pause until stopped; remembers each acknowledged record."""

    def __init__(self, client: BrokerClient, prefix: str):
        super().__init__(daemon=True)
        self.client, self.prefix = client, prefix
        self.acked: dict[bytes, tuple[int, int]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            batch = [f"{self.prefix}-{n + i}".encode() for i in range(20)]
            n += 20
            futures = [self.client.append_async(r) for r in batch]
            for record, fut in zip(batch, futures, strict=True):
                try:
                    a = fut.result()
                except BrokerError:
                    continue
                self.acked[record] = (a.partition, a.position)


@pytest.fixture
def cluster(tmp_path):
    store = tmp_path / "store"
    overrides = {
        **FAST,
        "data": {"backup": {"store": "filesystem", "filesystem": {"directory": str(store)}}},
    }
    c = LocalCluster(
        str(tmp_path / "c"), size=4, partitions=2, replication_factor=2, overrides=overrides
    )
    yield c
    c.stop_all()


def test_a_backup_under_load_restores_exactly_the_records_up_to_its_checkpoints(cluster):
    c = cluster
    c.start()
    c.wait_leaders()
    with BrokerClient(c.gateways(), timeout=10) as client:
        for i in range(200):
            client.append(f"before-{i}")
        writer = Writer(client, "during")
        writer.start()
        wait_until(lambda: len(writer.acked) > 200, timeout=30)
        code, answer = call(c, 1, "POST", "/actuator/backups", {"backupId": 7})
        assert code == 202, answer
        checkpoints = {d["partitionId"]: d["checkpointPosition"] for d in answer["checkpoints"]}
        assert sorted(checkpoints) == [1, 2]
        n = len(writer.acked)
        wait_until(lambda: len(writer.acked) > n + 300, timeout=30)  # writes go on
        writer.stop.set()
        writer.join(30)
        acked = {r.decode(): v for r, v in writer.acked.items()}
        for p in (1, 2):  # the "before" records, read back with their positions
            acked.update({r.decode(): (p, pos) for pos, r in read_all(client, p)})
    assert any(pos > checkpoints[p] for p, pos in acked.values())  # writes went on after it

    def completed():
        return call(c, 0, "GET", "/actuator/backups/7")[1]["state"] == "COMPLETED"

    wait_until(completed, timeout=60)
    code, doc = call(c, 2, "GET", "/actuator/backups/7")
    assert code == 200 and doc["backupId"] == 7
    assert [(d["partitionId"], d["state"]) for d in doc["details"]] == [
        (1, "COMPLETED"),
        (2, "COMPLETED"),
    ]
    assert {d["partitionId"]: d["checkpointPosition"] for d in doc["details"]} == checkpoints
    assert call(c, 0, "POST", "/actuator/backups", {"backupId": 7})[0] == 409  # exists
    assert call(c, 0, "POST", "/actuator/backups", {"backupId": 3})[0] == 409  # not above 7

    # the disaster: every broker stopped and its data wiped; then restored
    for i in range(4):
        c.stop(i)
        wiped = broker_cli(c, i, "wipe-data")
        assert wiped.returncode == 0, wiped.stderr
    for i in range(4):
        restored = broker_cli(c, i, "restore", "--backup-id", "7")
        assert restored.returncode == 0, restored.stderr
        assert "backup 7" in restored.stdout
    again = broker_cli(c, 0, "restore", "--backup-id", "7")
    assert again.returncode == 1 and "holds data" in again.stderr  # never over data
    c.start()
    c.wait_leaders()
    with BrokerClient(c.gateways(), timeout=10) as client:
        for p in (1, 2):
            got = {r.decode(): (p, pos) for pos, r in read_all(client, p)}
            want = {r: v for r, v in acked.items() if v[0] == p and v[1] <= checkpoints[p]}
            assert got == want, f"partition {p}: {len(got)} records, {len(want)} expected"
            assert sorted(pos for _, pos in got.values()) == list(range(1, checkpoints[p] + 1))
        after = client.append("after-restore", 1)
        assert after.position == checkpoints[1] + 1


def test_bad_backup_requests_get_a_4xx_naming_what_is_wrong(cluster):
    c = cluster
    c.start()
    c.wait_leaders()
    for body, code in (
        ({"backupId": 0}, 400),
        ({"backupId": -5}, 400),
        ({"backupId": "7"}, 400),
        ({"backupId": True}, 400),
        ({"backupId": 2**63}, 400),
        ({"id": 4}, 400),
        ([4], 400),
    ):
        got, answer = call(c, 0, "POST", "/actuator/backups", body)
        assert got == code and "backupId" in answer["message"], (body, got, answer)
    assert call(c, 0, "GET", "/actuator/backups/99") == (
        200,
        {"backupId": 99, "state": "DOES_NOT_EXIST", "details": []},
    )
    assert call(c, 0, "GET", "/actuator/backups/abc")[0] == 400
    assert call(c, 0, "DELETE", "/actuator/backups/99")[0] == 404
    assert call(c, 0, "POST", "/actuator/backups", {"backupId": 1})[0] == 202
    wait_until(lambda: call(c, 3, "GET", "/actuator/backups/1")[1]["state"] == "COMPLETED", 60)
    assert [d["backupId"] for d in call(c, 0, "GET", "/actuator/backups")[1]] == [1]
    assert call(c, 0, "DELETE", "/actuator/backups/1") == (204, None)
    assert call(c, 0, "GET", "/actuator/backups/1")[1]["state"] == "DOES_NOT_EXIST"
    # never under a running broker (its pid file names a live `broker run`)
    pid_file = os.path.join(c.data_dir(0), "broker.pid")
    with open(pid_file, "w") as f:
        f.write(str(c.procs[0].pid))
    try:
        running = broker_cli(c, 0, "restore", "--backup-id", "1")
    finally:
        os.unlink(pid_file)
    assert running.returncode == 1
    assert f"is running (pid {c.procs[0].pid}): stop it first" in running.stderr
