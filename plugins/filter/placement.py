"""Jinja filters that put broker.placement's quorum-placement rules into playbooks.

The rules live in the broker package (``broker.placement``), shared with the
broker itself and with ``fab``; these filters only adapt inventory data and
management-API documents to them. ``ansible-playbook`` must run from the
project's ``.venv`` (where the ``broker`` package is installed); as a fallback
the repository checkout that holds this file is put on ``sys.path``.

Filters:

- ``node_id(ordinal, region_id, regions=2)``: the parity rule,
  node id = ordinal * regions + region_id.
- ``broker_placement(nodes, partitions_count, replication_factor, regions=None)``:
  the inventory checks (explicit ids against the parity rule, region ids,
  address clashes) plus ``check_layout``; a report dict with ``ok``,
  ``findings`` (code, message, partition, brokers), ``partitions`` and ``text``.
- ``broker_runtime_placement(topology, nodes, replication_factor, cluster=None)``:
  ``check_runtime`` on a live cluster's ``/v2/topology`` (and
  ``/actuator/cluster`` when the broker serves it); same report shape.
- ``broker_replica_lag(mine, others)``: ``broker.catchup.replica_lag``, how far a
  broker's replicas are behind their leaders (``others``: documents or ``uri``
  results), ``{"<partition>": entries or None}``; upgrade.yml's catch-up gate.
- ``broker_leaders(topology)``: ``{"<partition>": leader node id}`` where a
  live broker claims leadership, the highest term winning (a deposed leader's
  claim may linger for a gossip round).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from ansible.errors import AnsibleFilterError

REGIONS = 2


def _broker_module(name: str):
    """``broker.<name>``, from the .venv's broker package or else this checkout."""
    try:
        return importlib.import_module(f"broker.{name}")
    except ImportError:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        if not os.path.isfile(os.path.join(root, "broker", f"{name}.py")):
            raise AnsibleFilterError(
                f"cannot import broker.{name}: run ansible-playbook from the project's "
                ".venv (make setup), where the broker package is installed"
            ) from None
        sys.path.insert(0, root)
        return importlib.import_module(f"broker.{name}")


def _placement():
    return _broker_module("placement")


def broker_replica_lag(mine: Mapping[str, Any] | None, others: Iterable[Any]) -> dict:
    docs = [d.get("json") if isinstance(d, Mapping) and "json" in d else d for d in others or []]
    return _broker_module("catchup").replica_lag(mine or {}, docs)


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise AnsibleFilterError(f"{what} must be an integer, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise AnsibleFilterError(f"{what} must be an integer, got {value!r}") from None


def node_id(ordinal: Any, region_id: Any, regions: Any = REGIONS) -> int:
    """node id = ordinal * regions + region_id (DESIGN section 2)."""
    ordinal, region_id = _int(ordinal, "broker_ordinal"), _int(region_id, "broker_region_id")
    regions = _int(regions, "regions")
    if ordinal < 0:
        raise AnsibleFilterError(f"broker_ordinal must be >= 0, got {ordinal}")
    if not 0 <= region_id < regions:
        raise AnsibleFilterError(f"broker_region_id must be in 0..{regions - 1}, got {region_id}")
    return ordinal * regions + region_id


def _finding(code: str, message: str, partition: int | None = None, brokers=()) -> dict:
    return {"code": code, "message": message, "partition": partition, "brokers": list(brokers)}


def _inventory_findings(nodes: list[Mapping[str, Any]], regions: int) -> list[dict]:
    """What check_layout cannot see: how ids, regions and addresses were written down."""
    findings = []
    for node in nodes:
        computed = node_id(node["ordinal"], node["region_id"], regions)
        given = _int(node["node_id"], f"{node['host']}: broker_node_id")
        if given != computed:
            findings.append(
                _finding(
                    "NODE_ID_MISMATCH",
                    f"{node['host']}: broker_node_id {given} is not broker_ordinal "
                    f"{node['ordinal']} * {regions} + broker_region_id {node['region_id']} "
                    f"= {computed}",
                    brokers=(given,),
                )
            )
    names: dict[int, set[str]] = {}
    ids: dict[str, set[int]] = {}
    for node in nodes:
        names.setdefault(_int(node["region_id"], "broker_region_id"), set()).add(node["region"])
        ids.setdefault(node["region"], set()).add(_int(node["region_id"], "broker_region_id"))
    for region_id, found in sorted(names.items()):
        if len(found) > 1:
            findings.append(
                _finding(
                    "REGION_ID_SHARED",
                    f"broker_region_id {region_id} is used by regions {', '.join(sorted(found))}",
                )
            )
    for region, found in sorted(ids.items()):
        if len(found) > 1:
            findings.append(
                _finding(
                    "REGION_IDS_DIFFER",
                    f"region {region} has hosts with broker_region_id "
                    f"{', '.join(str(i) for i in sorted(found))}",
                )
            )
    users: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for node in nodes:
        for kind in ("gateway_port", "internal_port", "management_port"):
            key = (str(node["address"]), _int(node[kind], f"{node['host']}: broker_{kind}"))
            users.setdefault(key, []).append(node)
    for (address, port), holders in sorted(users.items()):
        if len(holders) > 1:
            hosts = ", ".join(sorted({str(n["host"]) for n in holders}))
            findings.append(
                _finding(
                    "ADDRESS_CLASH",
                    f"{address}:{port} is used more than once (hosts {hosts})",
                    brokers=sorted({_int(n["node_id"], "node id") for n in holders}),
                )
            )
    return findings


def _region_order(nodes: Iterable[Mapping[str, Any]]) -> list[str]:
    by_id: dict[int, str] = {}
    for node in nodes:
        by_id.setdefault(_int(node["region_id"], "broker_region_id"), str(node["region"]))
    return [by_id[i] for i in sorted(by_id)]


def _with_text(report, extra: list[dict], placement) -> dict:
    """The report as a dict, inventory findings first, with a printable ``text``."""
    doc = report.to_dict()
    doc["findings"] = extra + doc["findings"]
    doc["ok"] = not doc["findings"]
    doc["messages"] = [f"{f['code']}: {f['message']}" for f in doc["findings"]]
    lines = placement.format_report(report).splitlines()
    table = lines[: next(i for i, line in enumerate(lines) if line.startswith("placement "))]
    if doc["ok"]:
        table.append(f"placement ok ({report.source}): {len(report.partitions)} partitions")
    else:
        table.append(f"placement NOT ok ({report.source}): {len(doc['findings'])} finding(s)")
        table += [f"  {message}" for message in doc["messages"]]
    doc["text"] = "\n".join(table)
    return doc


def broker_placement(
    nodes: Iterable[Mapping[str, Any]],
    partitions_count: Any,
    replication_factor: Any,
    regions: Iterable[str] | None = None,
) -> dict:
    """Check an inventory's layout before anything is installed.

    ``nodes``: one mapping per broker host with ``host``, ``node_id`` (effective:
    explicit or computed), ``ordinal``, ``region``, ``region_id``, ``address``
    and the three ports.
    """
    placement = _placement()
    nodes = [dict(node) for node in nodes]
    if not nodes:
        raise AnsibleFilterError("broker_placement: no broker hosts in the inventory")
    order = list(regions) if regions is not None else _region_order(nodes)
    extra = _inventory_findings(nodes, max(REGIONS, len(order)))
    pairs = [(_int(n["node_id"], f"{n['host']}: node id"), str(n["region"])) for n in nodes]
    report = placement.check_layout(
        pairs,
        _int(partitions_count, "broker_partitions_count"),
        _int(replication_factor, "broker_replication_factor"),
        regions=order,
    )
    return _with_text(report, extra, placement)


def broker_leaders(topology: Mapping[str, Any]) -> dict[str, int]:
    """Partition -> leader node id, as a broker's /v2/topology shows it: the leader claim
    of the highest term among live brokers."""
    best: dict[int, tuple[int, int]] = {}
    for broker in topology.get("brokers") or []:
        if not broker.get("alive", True):
            continue
        for part in broker.get("partitions") or []:
            if part.get("role") != "leader":
                continue
            pid, term = int(part["partitionId"]), int(part.get("term") or 0)
            if term >= best.get(pid, (-1, -1))[0]:
                best[pid] = (term, int(broker["nodeId"]))
    return {str(pid): node for pid, (_, node) in sorted(best.items())}


def _resolve_stale_leaders(topology: Mapping[str, Any]) -> dict:
    """A copy of the topology where only the current leader of each partition says so;
    a lower-term claim (a deposed leader not yet gossiped out) reads as follower."""
    leaders = {int(pid): node for pid, node in broker_leaders(topology).items()}
    brokers = []
    for broker in topology.get("brokers") or []:
        node_id = int(broker["nodeId"])
        parts = []
        for part in broker.get("partitions") or []:
            part = dict(part)
            pid = int(part["partitionId"])
            if part.get("role") == "leader" and leaders.get(pid) != node_id:
                part["role"] = "follower"
            parts.append(part)
        brokers.append({**dict(broker), "partitions": parts})
    return {**dict(topology), "brokers": brokers}


def _cluster_from_topology(topology: Mapping[str, Any]) -> dict:
    """An /actuator/cluster-shaped document for brokers that do not serve it yet: every
    partition a broker reports is one of its replicas."""
    return {
        "brokers": [
            {
                "id": int(broker["nodeId"]),
                "state": "ACTIVE",
                "partitions": [
                    {"id": int(part["partitionId"]), "state": "ACTIVE"}
                    for part in broker.get("partitions") or []
                ],
            }
            for broker in topology.get("brokers") or []
        ]
    }


def broker_runtime_placement(
    topology: Mapping[str, Any],
    nodes: Iterable[Mapping[str, Any]],
    replication_factor: Any,
    cluster: Mapping[str, Any] | None = None,
) -> dict:
    """check_runtime on a live cluster; regions come from the inventory (``nodes``)."""
    placement = _placement()
    regions_of = {_int(n["node_id"], "node id"): str(n["region"]) for n in nodes}
    if not isinstance(topology, Mapping) or "brokers" not in topology:
        raise AnsibleFilterError(
            f"not a /v2/topology document (is the management API reachable?): {topology!r}"
        )
    if not cluster or not isinstance(cluster, Mapping) or "brokers" not in cluster:
        cluster = _cluster_from_topology(topology)
    report = placement.check_runtime(
        cluster,
        _resolve_stale_leaders(topology),
        regions_of,
        _int(replication_factor, "broker_replication_factor"),
    )
    return _with_text(report, [], placement)


class FilterModule:
    def filters(self):
        return {
            "node_id": node_id,
            "broker_placement": broker_placement,
            "broker_runtime_placement": broker_runtime_placement,
            "broker_leaders": broker_leaders,
            "broker_replica_lag": broker_replica_lag,
        }
