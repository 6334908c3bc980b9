"""`fab status` and `fab verify`: the cluster at a glance, and a health verdict."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from broker.ops.api import ApiError
from broker.ops.checks import (
    check_certificates,
    verify_placement,
    verify_writes,
    wait_for_leaders,
)
from broker.ops.inventory import Cluster
from broker.ops.steps import Progress, StepResult, plan, run_procedure
from broker.ops.view import (
    alive_map,
    api_of,
    describe_change,
    describe_pending,
    docs_from,
    ids_text,
    leaders,
    members,
)
from broker.placement import check_runtime, format_report


def collect(cluster: Cluster) -> dict[str, Any]:
    """What every broker answers, and the cluster as the lowest answering one sees it."""
    configs = docs_from(cluster, cluster.brokers)
    answering = sorted(n for n, d in configs.items() if isinstance(d, dict))
    status: dict[str, Any] = {
        "inventory": cluster.source,
        "answering": answering,
        "errors": {n: d.message for n, d in configs.items() if isinstance(d, ApiError)},
        "cluster": None,
        "topology": None,
        "exporters": {},
    }
    if answering:
        first = cluster.broker(answering[0])
        api = api_of(cluster, first)
        status["cluster"] = configs[first.node_id]
        try:
            status["topology"] = api.topology()
            status["exporters"] = api.exporters()
        except ApiError as exc:
            status["errors"][first.node_id] = exc.message
    return status


def warnings(cluster: Cluster, status: dict[str, Any]) -> list[str]:
    """Things an operator must know: e.g. a removed region's exporter ENABLED again."""
    out = []
    doc = status["cluster"]
    if doc is None:
        return ["no broker answers: the whole cluster is down or unreachable from here"]
    current = members(doc)
    for region in cluster.regions:
        ids = cluster.ids(cluster.in_region(region))
        exporter = cluster.exporter_of(region)
        if not set(ids) & set(current):
            out.append(
                f"{region} (brokers {ids_text(ids)}) is not in the cluster: it was failed over "
                f"and the cluster runs on the other region alone, with half the replicas. "
                f"Once {region} is rebuilt: fab failback --region {region}"
            )
        if not set(ids) & set(current) and status["exporters"].get(exporter) == "ENABLED":
            out.append(
                f"{region} is not in the cluster but exporter {exporter} is ENABLED "
                "(flipped back after a restart?): disable it"
            )
    if doc.get("exportingPaused"):
        out.append("exporting is PAUSED cluster-wide")
    if doc.get("pendingChange"):
        out.append(describe_pending(doc))
    return out


def render(cluster: Cluster, status: dict[str, Any]) -> Group:
    doc, topo = status["cluster"], status["topology"] or {}
    state = members(doc) if doc else {}
    alive = alive_map(topo)
    led: dict[int, list[int]] = {}
    for pid, node in leaders(topo).items():
        led.setdefault(node, []).append(pid)
    table = Table(title=f"cluster {cluster.name} ({cluster.source})")
    for column in ("id", "region", "host", "management", "member", "alive", "leads"):
        table.add_column(column)
    for b in cluster.brokers:
        answers = b.node_id in status["answering"]
        table.add_row(
            str(b.node_id),
            b.region,
            escape(f"{b.name} {b.host}"),
            "[green]answers[/green]" if answers else "[red]no answer[/red]",
            state.get(b.node_id, "[red]not a member[/red]"),
            {True: "yes", False: "[red]no[/red]", None: "?"}[alive.get(b.node_id)],
            ",".join(f"p{p}" for p in sorted(led.get(b.node_id, []))) or "-",
        )
    parts: list[Any] = [table]
    if doc:
        parts.append(
            Text(
                f"configuration version {doc.get('version')}; last change: "
                f"{describe_change(doc.get('lastChange'))}; "
                f"exporters: {status['exporters'] or 'none'}"
            )
        )
        report = check_runtime(doc, topo, cluster.regions_of(), cluster.replication_factor)
        parts.append(Text(format_report(report)))
    for warning in warnings(cluster, status):
        parts.append(Text(f"WARNING: {warning}", style="bold yellow"))
    return Group(*parts)


def print_status(cluster: Cluster, console: Console | None = None) -> dict[str, Any]:
    status = collect(cluster)
    (console or Console()).print(render(cluster, status))
    return status


VERIFY_STEPS = 4


def run_verify(cluster: Cluster, *, progress: Progress | None = None) -> list[StepResult]:
    """Leaders everywhere, placement (RF, RF/2 per region), a write per partition, and
    (with TLS) the days left on every broker's certificate."""
    brokers = list(cluster.brokers)
    return run_procedure(
        plan(
            (wait_for_leaders, lambda: wait_for_leaders(cluster, brokers, timeout=10)),
            (verify_placement, lambda: verify_placement(cluster, brokers, timeout=10)),
            (verify_writes, lambda: verify_writes(cluster, brokers, timeout=10)),
            (check_certificates, lambda: check_certificates(cluster, brokers)),
        ),
        progress,
    )
