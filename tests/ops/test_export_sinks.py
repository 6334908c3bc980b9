"""Where the failback finds each exporter's sink (broker.ops.failback.export_sinks)."""

from __future__ import annotations

from pathlib import Path

from broker.ops import Broker, Cluster, load_inventory
from broker.ops.failback import export_sinks

PROJECT = Path(__file__).resolve().parents[2]


def cluster(export_dirs: list[str], local: bool = True, sinks: dict | None = None) -> Cluster:
    brokers = []
    for i, export_dir in enumerate(export_dirs):
        host_vars = {"broker_export_dir": export_dir, "broker_region_id": i % 2}
        if local:
            host_vars["ansible_connection"] = "local"
        else:
            host_vars["ansible_user"] = "deploy"
        host = "127.0.0.1" if local else f"10.{10 * (1 + i % 2)}.1.{10 + i // 2}"
        brokers.append(Broker(i, f"b{i}", f"region{i % 2}", host, 1, 2, 3, host_vars))
    return Cluster(tuple(brokers), ("region0", "region1"), 4, 8, sinks=sinks or {})


def test_the_local_inventory_shares_one_sink_per_exporter():
    local = load_inventory(PROJECT / "inventories" / "local" / "hosts.yml")
    export = PROJECT / "var" / "local" / "export"
    assert {b.vars["broker_export_dir"] for b in local.brokers} == {str(export)}
    assert export_sinks(local) == {r: str(export / r) for r in ("region0", "region1")}


def test_the_inventorys_broker_export_sinks_come_first():
    named = {"region0": "/mnt/a", "region1": "/mnt/b"}
    assert export_sinks(cluster(["/x"] * 4, sinks=named)) == named
    assert export_sinks(cluster(["/x"] * 4, local=False, sinks=named)) == named


def test_no_sink_is_guessed_for_remote_hosts_or_per_broker_directories():
    # the same path on four hosts is four disks, not one sink
    assert export_sinks(cluster(["/var/lib/broker-export"] * 4, local=False)) == {}
    # one directory per broker on this machine: no exporter has one place
    assert export_sinks(cluster([f"/tmp/b{i}/export" for i in range(4)])) == {}
    assert export_sinks(cluster([""] * 4)) == {}
