"""Exporters with real processes: every record reaches each enabled sink once, in order;
disable survives restarts; pause/resume; enable with initializeFrom after a sink restore."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from broker.client import BrokerClient, OutOfRange
from broker.demo.localcluster import LocalCluster, wait_for
from tests.integration.test_cluster import FAST, write
from tests.integration.test_failover_api import cluster_doc, completed, everywhere, http


def sink(directory: str) -> dict[int, list[tuple[int, str]]]:
    out = {}
    if not os.path.isdir(directory):
        return out
    for name in sorted(os.listdir(directory)):
        p = int(name.removeprefix("partition-").removesuffix(".jsonl"))
        with open(os.path.join(directory, name)) as f:
            out[p] = [(d["position"], d["data"]) for d in map(json.loads, f)]
    return out


def complete_in_order(directory: str, acked: dict) -> bool:
    """The sink holds exactly positions 1..n of every partition, with the acked data."""
    got = sink(directory)
    want: dict[int, dict[int, str]] = {}
    for rec, (p, pos) in acked.items():
        want.setdefault(p, {})[pos] = rec
    for p, records in want.items():
        lines = got.get(p, [])
        positions = [pos for pos, _ in lines]
        if positions != list(range(1, len(positions) + 1)) or len(positions) < max(records):
            return False
        if any(dict(lines)[pos] != rec for pos, rec in records.items()):
            return False
    return True


@pytest.fixture
def exporting(tmp_path):
    export = tmp_path / "export"
    overrides = {
        **FAST,
        "exporters": {
            "region0": {"type": "file", "args": {"path": str(export / "region0")}},
            "region1": {"type": "file", "args": {"path": str(export / "region1")}},
        },
    }
    c = LocalCluster(
        str(tmp_path / "c"), size=4, partitions=4, replication_factor=4, overrides=overrides
    )
    yield c, str(export / "region0"), str(export / "region1")
    c.stop_all()


def exporter_states(c: LocalCluster, node: int) -> dict[str, str]:
    status, doc = http(c, node, "GET", "/actuator/exporters")
    assert status == 200
    return {e["exporterId"]: e["status"] for e in doc}


def test_exporters_follow_the_configuration(exporting):
    c, region0, region1 = exporting
    c.start()
    c.wait_leaders()
    with BrokerClient(c.gateways(), timeout=10) as client:
        acked = write(client, 200, "a")
        wait_for(lambda: complete_in_order(region0, acked), 20, "region0 sink")
        wait_for(lambda: complete_in_order(region1, acked), 20, "region1 sink")

        status, doc = http(c, 1, "POST", "/actuator/exporters/region1/disable")
        assert status == 202, doc
        wait_for(lambda: completed(c, 0, doc["changeId"]), 20, "disable to complete")
        everywhere(c, doc["changeId"])  # no leader may still think region1 is enabled
        assert exporter_states(c, 2) == {"region0": "ENABLED", "region1": "DISABLED"}
        before = sink(region1)
        more = write(client, 100, "b")
        acked.update(more)
        wait_for(lambda: complete_in_order(region0, acked), 20, "region0 to export more")
        assert sink(region1) == before  # a disabled exporter exports nothing

        status, _ = http(c, 0, "POST", "/actuator/exporting/pause")
        assert status == 204
        wait_for(lambda: cluster_doc(c, 3)["exportingPaused"], 10, "broker 3 to learn the pause")
        c.stop(3)
        c.start([3])  # the disabled exporter and the pause survive a restart
        assert exporter_states(c, 3)["region1"] == "DISABLED"
        assert cluster_doc(c, 3)["exportingPaused"] is True
        paused = write(client, 50, "c")
        acked.update(paused)
        assert http(c, 0, "POST", "/actuator/exporting/resume")[0] == 204
        wait_for(lambda: complete_in_order(region0, acked), 20, "region0 after resume")

        # failback of the sink: pause, restore region1 from region0 (complete, checked
        # above, and nothing is written meanwhile), enable region1 from region0, resume
        assert http(c, 0, "POST", "/actuator/exporting/pause")[0] == 204
        shutil.rmtree(region1)
        shutil.copytree(region0, region1)
        status, doc = http(
            c, 0, "POST", "/actuator/exporters/region1/enable", {"initializeFrom": "region0"}
        )
        assert status == 202, doc
        assert all(op["initializeFrom"] == "region0" for op in doc["plannedChanges"])
        wait_for(lambda: completed(c, 0, doc["changeId"]), 20, "enable to complete")
        everywhere(c, doc["changeId"])
        assert http(c, 0, "POST", "/actuator/exporting/resume")[0] == 204
        acked.update(write(client, 50, "d"))
        wait_for(lambda: complete_in_order(region1, acked), 20, "region1 complete and in order")
        wait_for(lambda: complete_in_order(region0, acked), 20, "region0 complete and in order")
        assert sink(region0) == sink(region1)


def _segments(c: LocalCluster, node: int, partition: int = 1) -> list[str]:
    journal = os.path.join(c.data_dir(node), "partitions", str(partition), "journal")
    return sorted(n for n in os.listdir(journal) if n.endswith(".seg"))


def test_a_paused_exporter_holds_the_log_and_compaction_resumes_after(tmp_path):
    """Zeebe's rule with real processes: snapshots come often and segments are small,
    yet no segment with records the paused exporter has not exported is deleted; after
    the resume everything reaches the sink and the log is compacted."""
    export = str(tmp_path / "export")
    overrides = {
        **FAST,
        "data": {"snapshotEntries": 20, "logSegmentSize": "64KB"},
        "exporters": {"region0": {"type": "file", "args": {"path": export}}},
    }
    c = LocalCluster(
        str(tmp_path / "c"), size=2, partitions=1, replication_factor=2, overrides=overrides
    )
    try:
        c.start()
        c.wait_leaders()
        with BrokerClient(c.gateways(), timeout=10) as client:
            acked = write(client, 20, "a", partition=1)
            wait_for(lambda: complete_in_order(export, acked), 20, "the first records exported")
            assert http(c, 0, "POST", "/actuator/exporting/pause")[0] == 204
            wait_for(
                lambda: cluster_doc(c, 1)["exportingPaused"], 10, "broker 1 to learn the pause"
            )
            exported = len(sink(export).get(1, []))
            first_segments = {n: _segments(c, n)[0] for n in range(2)}
            for i in range(300):  # one entry each: many snapshots, many 64 KB segments
                p = client.append(f"b{i}-".encode() + b"x" * 1000, 1)
                acked[f"b{i}"] = (p.partition, p.position)
            assert all(len(_segments(c, n)) > 3 for n in range(2))
            # the unexported records are all still there, on every replica
            for n in range(2):
                assert _segments(c, n)[0] <= first_segments[n]
            assert len(sink(export).get(1, [])) == exported
            assert client.read(1, exported + 1, 1).records[0][0] == exported + 1

            assert http(c, 0, "POST", "/actuator/exporting/resume")[0] == 204
            wait_for(lambda: len(sink(export).get(1, [])) == 320, 30, "the sink to catch up")
            positions = [pos for pos, _ in sink(export)[1]]
            assert positions == list(range(1, 321))
            more = write(client, 40, "c", partition=1)  # snapshots after the resume compact
            wait_for(lambda: len(sink(export).get(1, [])) == 360, 30, "the last records exported")

            def compacted():
                client.append("tick", 1)  # entries keep snapshots coming
                return all(_segments(c, n)[0] > first_segments[n] for n in range(2))

            wait_for(compacted, 30, "compaction after the resume")
            with pytest.raises(OutOfRange):
                client.read(1, 1, 1)
            assert more
    finally:
        c.stop_all()
