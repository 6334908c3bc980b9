"""A real dual-region cluster for the ops procedures: 4 brokers on loopback (0,2 in
region0; 1,3 in region1), 4 partitions, RF 4, a file exporter per region, fast timing;
and an inventory file describing it in the project's format."""

from __future__ import annotations

import json
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from broker.demo.localcluster import LocalCluster, wait_for
from broker.ops import Broker, Cluster, load_inventory
from tests.integration.test_cluster import FAST

REGIONS = ("region0", "region1")


def write_inventory(c: LocalCluster, path: Path, sinks: dict[str, str]) -> Path:
    """The inventory of a LocalCluster, in the format of inventories/local/hosts.yml."""
    groups = {}
    for region_id, region in enumerate(REGIONS):
        hosts = {}
        for i in range(region_id, c.size, len(REGIONS)):
            hosts[f"brk-r{region_id}-h{i // 2}"] = {
                "ansible_host": c.hosts[i],
                "broker_ordinal": i // 2,
                "broker_gateway_port": c.ports[i]["gateway"],
                "broker_internal_port": c.ports[i]["internal"],
                "broker_management_port": c.ports[i]["management"],
                "broker_config_file": c.config_path(i),
                "broker_data_dir": c.data_dir(i),
            }
        groups[region] = {
            "vars": {"broker_region": region, "broker_region_id": region_id},
            "hosts": hosts,
        }
    doc = {
        "all": {
            "vars": {
                "broker_cluster_name": "dual-region",
                "broker_partitions_count": c.partitions,
                "broker_replication_factor": c.replication_factor,
                "broker_export_sinks": sinks,
            },
            "children": {"brokers": {"vars": {"ansible_connection": "local"}, "children": groups}},
        }
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class PidControl:
    """Stops (SIGKILL) and starts the LocalCluster's broker processes by pid."""

    def __init__(self, c: LocalCluster):
        self.c = c

    def stop(self, broker: Broker) -> str:
        pid = self.c.procs[broker.node_id].pid if broker.node_id in self.c.procs else None
        self.c.kill(broker.node_id)
        return f"killed broker {broker.node_id} (pid {pid})"

    def start(self, broker: Broker) -> str:
        self.c.start([broker.node_id])
        return f"started broker {broker.node_id} (pid {self.c.procs[broker.node_id].pid})"

    kill = stop  # stop is already a crash

    def wipe(self, broker: Broker) -> str:
        shutil.rmtree(self.c.data_dir(broker.node_id), ignore_errors=True)
        return f"wiped the data of broker {broker.node_id}"


@dataclass
class Dual:
    c: LocalCluster
    cluster: Cluster
    inventory: Path
    sinks: dict[str, str]
    control: PidControl

    def api_doc(self, node: int = 0) -> dict:
        doc = self.c.get_json(node, "/actuator/cluster")
        assert doc is not None, f"broker {node} does not answer"
        return doc

    def lose(self, region: str = "region1") -> None:
        """The region is lost: kill -9 its brokers; wait until the survivors see it."""
        lost = [b.node_id for b in self.cluster.in_region(region)]
        for n in lost:
            self.c.kill(n)
        self.wait_seen_dead(lost)

    def wait_seen_dead(self, ids: list[int]) -> None:
        def dead_everywhere():
            for n in self.c.running():
                topo = self.c.get_json(n, "/v2/topology") or {"brokers": []}
                if any(b["alive"] for b in topo["brokers"] if b["nodeId"] in ids):
                    return False
            return True

        wait_for(dead_everywhere, 15, f"the survivors to see {ids} dead")

    def pause(self, region: str = "region1") -> None:
        """SIGSTOP the region's brokers: their ports still accept connections (the
        kernel does), but they stop talking to their peers: a cut, seen from here."""
        for b in self.cluster.in_region(region):
            os.kill(self.c.procs[b.node_id].pid, signal.SIGSTOP)

    def unpause_all(self) -> None:
        for proc in self.c.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)


@pytest.fixture
def dual(tmp_path):
    export = tmp_path / "export"
    sinks = {region: str(export / region) for region in REGIONS}
    overrides = {
        **FAST,
        "exporters": {r: {"type": "file", "args": {"path": sinks[r]}} for r in REGIONS},
        "data": {
            "backup": {"store": "filesystem", "filesystem": {"directory": str(tmp_path / "bk")}}
        },
    }
    c = LocalCluster(
        str(tmp_path / "c"), size=4, partitions=4, replication_factor=4, overrides=overrides
    )
    inventory = write_inventory(c, tmp_path / "hosts.yml", sinks)
    d = Dual(c, load_inventory(inventory), inventory, sinks, PidControl(c))
    try:
        c.start()
        c.wait_leaders()
        yield d
    finally:
        d.unpause_all()
        c.stop_all()


def sink_records(directory: str) -> dict[int, list[int]]:
    """Partition -> the positions a file sink holds, in file order."""
    out = {}
    for f in sorted(Path(directory).glob("partition-*.jsonl")):
        with open(f) as lines:
            out[int(f.stem.removeprefix("partition-"))] = [
                json.loads(line)["position"] for line in lines
            ]
    return out
