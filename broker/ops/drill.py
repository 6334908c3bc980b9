"""The region-loss drill: `fab drill --region R`, the whole failover story under load.

1. ``verify_placement``: start only from a healthy cluster;
2. ``start_write_load``: a steady load through every gateway, every
   acknowledged record remembered (broker.ops.load);
3. ``lose_region``: kill -9 every broker of the region and empty its disks
   (the region burned down and its hosts are rebuilt); wait until the
   survivors see it dead (the detection time is reported, not counted in RTO);
4. ``fail_over``: ``run_failover``; its RTO is from its start to the first
   acknowledged write on every partition;
5. ``write_during_outage``: the load's own writes land on every partition;
6. ``fail_back``: ``run_failback`` with the rebuilt, empty region; reports its
   duration and the catch-up rate (bytes the region's disks received while its
   replicas caught up, per second);
7. ``check_no_data_lost``: stop the load; every acknowledged record is read
   back at its position. Anything missing fails the drill.

Destructive by design: it asks once, before the loss, unless ``yes``.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from broker.client import BrokerClient, BrokerError
from broker.ops.checks import partition_count, verify_placement, wait_seen_dead
from broker.ops.control import DrillControl, run_on
from broker.ops.failback import run_failback
from broker.ops.failover import failover_seconds, run_failover
from broker.ops.inventory import Broker, Cluster
from broker.ops.load import WriteLoad, read_back
from broker.ops.report import outcome
from broker.ops.steps import (
    Outcome,
    Progress,
    StepFailed,
    StepResult,
    ask_or_refuse,
    done,
    failed,
    plan,
    run_procedure,
    step,
)
from broker.ops.view import ids_text

DETECT_TIMEOUT = 60.0
OUTAGE_WRITE_TIMEOUT = 30.0
FAILOVER_STEPS = 8
FAILBACK_STEPS = 9
DRILL_STEPS = 7


@dataclass
class DrillFigures:
    """What a drill measured; ``lost`` must be 0."""

    region: str
    acknowledged: int = 0
    found: int = 0
    lost: int = 0
    failed_writes: int = 0
    detection_seconds: float | None = None
    failover_rto_seconds: float | None = None
    failback_seconds: float | None = None
    catch_up_bytes: int | None = None
    catch_up_seconds: float | None = None
    check_error: str | None = None
    nested: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def catch_up_mb_per_s(self) -> float | None:
        if not self.catch_up_bytes or not self.catch_up_seconds:
            return None
        return self.catch_up_bytes / self.catch_up_seconds / 1e6


def _data_dir(broker: Broker) -> str:
    """The broker's data directory, read from its config on its host."""
    config = yaml.safe_load(run_on(broker, f"cat {shlex.quote(str(broker.config_path))}")) or {}
    directory = (config.get("data") or {}).get("directory")
    if not directory:
        raise StepFailed(f"{broker.label()}: no data.directory in {broker.config_path}")
    return str(directory)


def _data_bytes(brokers: list[Broker], dirs: dict[int, str]) -> int:
    """Bytes in the brokers' data directories (``dirs``: node id -> directory), each read
    on its host, all hosts at once."""

    def du(b: Broker) -> int:
        return int(run_on(b, f"du -sb {shlex.quote(dirs[b.node_id])} | cut -f1").strip() or 0)

    with ThreadPoolExecutor(max(1, len(brokers))) as pool:
        return sum(pool.map(du, brokers))


def _data_dirs(brokers: list[Broker]) -> dict[int, str]:
    with ThreadPoolExecutor(max(1, len(brokers))) as pool:
        return dict(zip((b.node_id for b in brokers), pool.map(_data_dir, brokers), strict=True))


@step("lose the region: kill its brokers and empty their disks", acts=True)
def lose_region(
    cluster: Cluster,
    region: str,
    *,
    control: DrillControl,
    approve: Callable[[str], bool],
    figures: DrillFigures,
    timeout: float = DETECT_TIMEOUT,
) -> Outcome:
    lost = cluster.in_region(region)
    ids = cluster.ids(lost)
    if not approve(f"Drill: kill brokers {ids_text(ids)} of {region} and wipe their data?"):
        return failed("the operator did not confirm", "killed nothing")
    started = time.monotonic()
    did = [control.kill(b) for b in lost] + [control.wipe(b) for b in lost]

    seen = wait_seen_dead(cluster, region, timeout)
    figures.detection_seconds = round(time.monotonic() - started, 3)
    return done(
        f"brokers {ids_text(ids)} of {region} were running",
        f"{'; '.join(did)}; {seen} after {figures.detection_seconds:.1f}s",
    )


PRELOAD_RECORD = 16 * 1024
PRELOAD_WINDOW = 64


def _grow_log(cluster: Cluster, gateways: str, megabytes: float) -> str:
    """Append ``megabytes`` of 16 KiB records, pipelined; every one must be acknowledged
    (they are read back with the rest at the end only by count, not content)."""
    count = int(megabytes * 1e6 // PRELOAD_RECORD)
    payload = b"p" * PRELOAD_RECORD
    started = time.monotonic()
    with BrokerClient(
        gateways, cluster.name, timeout=30.0, ssl_context=cluster.ssl_context()
    ) as client:
        pending = []
        for _ in range(count):
            pending.append(client.append_async(payload))
            if len(pending) >= PRELOAD_WINDOW:
                pending.pop(0).result()
        for fut in pending:
            fut.result()
    seconds = time.monotonic() - started
    return f"; grew the log by {count * PRELOAD_RECORD / 1e6:.0f} MB in {seconds:.1f}s"


def _nested(name: str, results: list[StepResult], total: int) -> Outcome:
    result = outcome(results, total)
    summary = ", ".join(f"{r.name} {r.status}" for r in results)
    if result != "completed":
        last = results[-1] if results else None
        why = f"{last.name}: {last.saw}" if last else "nothing ran"
        return failed(f"the {name} {result} ({why})", "stopped the drill")
    return done(f"{name}: {summary}", f"the {name} completed")


def run_drill(
    cluster: Cluster,
    region: str,
    *,
    control: DrillControl,
    yes: bool = False,
    confirm: Callable[[str], bool] | None = None,
    api: str | None = None,
    progress: Progress | None = None,
    nested_progress: Progress | None = None,
    rate: float = 200.0,
    preload_mb: float = 0.0,
) -> tuple[list[StepResult], DrillFigures]:
    """Run the drill; returns its steps and its figures. Stops at the first failed step
    (the load is stopped then too, and whatever was acknowledged is still checked).
    ``preload_mb`` more megabytes of log written during the outage give the failback's
    catch-up a volume worth timing."""
    cluster.check_region(region)
    approve = ask_or_refuse(yes, confirm)
    figures = DrillFigures(region)
    survivors = cluster.outside(region)
    everyone = ",".join(b.gateway for b in cluster.brokers)
    forms = {"api": api} if api else {}
    state: dict[str, Any] = {}

    @step("start a steady write load through every gateway")
    def start_write_load() -> Outcome:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        load = WriteLoad(
            everyone,
            prefix=f"drill-{region}-{stamp}",
            rate=rate,
            cluster_name=cluster.name,
            ssl_context=cluster.ssl_context(),
        )
        state["load"] = load
        load.start()
        load.wait_for(lambda: bool(load.acks), OUTAGE_WRITE_TIMEOUT, "a first acknowledged write")
        return done(f"gateways {everyone}", f"writing {rate:g} records/s, unkeyed (round-robin)")

    @step("fail over to the surviving region", acts=True)
    def fail_over() -> Outcome:
        results = run_failover(
            cluster, region, yes=True, progress=nested_progress, control=None, **forms
        )
        figures.nested["failover"] = [r.to_dict() for r in results]
        state["failed_over_at"] = time.monotonic()
        figures.failover_rto_seconds = failover_seconds(results)
        return _nested("failover", results, FAILOVER_STEPS)

    @step("keep writing during the outage (every partition)")
    def write_during_outage() -> Outcome:
        load: WriteLoad = state["load"]
        count = partition_count(cluster, survivors)
        since = state["failed_over_at"]
        load.wait_for(
            lambda: len(load.partitions_acked_since(since)) == count,
            OUTAGE_WRITE_TIMEOUT,
            "writes sent after the failover acknowledged on every partition",
        )
        gateways = ",".join(b.gateway for b in survivors)
        grown = _grow_log(cluster, gateways, preload_mb) if preload_mb else ""
        return done(
            f"{len(load.acks)} records acknowledged so far, {load.failed} not",
            f"writes sent after the failover acknowledged on all {count} partitions{grown}",
        )

    @step("fail back the rebuilt region", acts=True)
    def fail_back() -> Outcome:
        marks: dict[str, float] = {}

        class Timing:  # when add_brokers_back starts and wait_caught_up ends
            def started(self, index, total, s):
                marks.setdefault(s.name, time.monotonic())
                if nested_progress:
                    nested_progress.started(index, total, s)

            def finished(self, index, total, r):
                marks[f"{r.name}:end"] = time.monotonic()
                if nested_progress:
                    nested_progress.finished(index, total, r)

        rebuilt = cluster.in_region(region)
        dirs = _data_dirs(rebuilt)
        before = _data_bytes(rebuilt, dirs)
        results = run_failback(
            cluster, region, yes=True, control=control, progress=Timing(), **forms
        )
        figures.nested["failback"] = [r.to_dict() for r in results]
        figures.failback_seconds = round(sum(r.seconds for r in results), 3)
        verdict = _nested("failback", results, FAILBACK_STEPS)
        if verdict.status == "done":
            figures.catch_up_bytes = _data_bytes(rebuilt, dirs) - before
            figures.catch_up_seconds = round(
                marks["wait_caught_up:end"] - marks["add_brokers_back"], 3
            )
        return verdict

    @step("stop the load and read back every acknowledged record")
    def check_no_data_lost() -> Outcome:
        return _check(state, figures, cluster)

    steps = plan(
        (verify_placement, lambda: verify_placement(cluster, cluster.brokers)),
        (start_write_load, start_write_load),
        (
            lose_region,
            lambda: lose_region(cluster, region, control=control, approve=approve, figures=figures),
        ),
        (fail_over, fail_over),
        (write_during_outage, write_during_outage),
        (fail_back, fail_back),
        (check_no_data_lost, check_no_data_lost),
    )
    try:
        results = run_procedure(steps, progress)
    finally:
        if "load" in state and "checked" not in state:
            try:  # a failed drill still says what it lost, if the cluster can tell
                _check(state, figures, cluster)
            except BrokerError as exc:
                figures.check_error = str(exc)
    return results, figures


def _check(state: dict[str, Any], figures: DrillFigures, cluster: Cluster) -> Outcome:
    load: WriteLoad = state["load"]
    state["checked"] = True
    load.stop()
    if load.crash is not None:
        raise StepFailed(f"the write load crashed: {load.crash!r}")
    acks = load.snapshot()
    gateways = ",".join(b.gateway for b in cluster.brokers)
    rb = read_back(
        gateways,
        acks,
        cluster.partitions,
        load.prefix,
        cluster_name=cluster.name,
        ssl_context=cluster.ssl_context(),
    )
    figures.acknowledged, figures.found, figures.lost = rb.acknowledged, rb.found, len(rb.lost)
    figures.failed_writes = load.failed
    saw = (
        f"{rb.acknowledged} records acknowledged; {load.failed} writes not acknowledged "
        f"(not promised; {rb.unacknowledged_committed} of them were committed anyway)"
    )
    if rb.lost:
        sample = ", ".join(f"p{a.partition}@{a.position}" for a in rb.lost[:3])
        return failed(saw, f"LOST {len(rb.lost)} acknowledged records, e.g. {sample}")
    if rb.compacted:  # a broker compacts only what every exporter already has
        return done(
            saw,
            f"all {rb.found} still kept found at their positions, {len(rb.compacted)} more "
            "compacted since (only once every exporter had them): nothing lost",
        )
    return done(saw, f"all {rb.found} found at their positions: nothing lost")


def print_drill_figures(figures: DrillFigures, console: Console) -> None:
    def fmt(value: float | None, unit: str) -> str:
        return "-" if value is None else f"{value:.2f} {unit}"

    table = Table(title=f"drill of {figures.region}: figures")
    table.add_column("measure")
    table.add_column("value", justify="right")
    style = "green" if figures.lost == 0 and not figures.check_error else "bold red"
    rows = [
        ("records acknowledged", str(figures.acknowledged)),
        ("records found afterwards", str(figures.found)),
        ("acknowledged records LOST", f"[{style}]{figures.lost}[/{style}]"),
        ("writes not acknowledged (not counted)", str(figures.failed_writes)),
        ("loss detected by the survivors after", fmt(figures.detection_seconds, "s")),
        (
            "failover RTO (start to a write on every partition)",
            fmt(figures.failover_rto_seconds, "s"),
        ),
        ("failback duration", fmt(figures.failback_seconds, "s")),
        ("catch-up", fmt(figures.catch_up_mb_per_s, "MB/s")),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if figures.check_error:
        console.print(
            f"[bold red]could not read the records back: {figures.check_error}[/bold red]"
        )
