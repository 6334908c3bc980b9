"""``make demo``: deploy a dual-region cluster, lose a region under load, fail over and back.

On this machine, without root, in about two minutes:

1. prepare a private copy of inventories/local (8 brokers on 127.0.0.1, ids
   0,2,4,6 in region0 and 1,3,5,7 in region1, 8 partitions, RF 4) with free
   ports and every directory under a temporary working directory;
2. deploy it with a real ``ansible-playbook playbooks/deploy.yml`` (wheels,
   virtualenvs, configuration, ``broker start``, the runtime placement check);
3. verify leaders, placement (2 replicas per region on every partition) and
   writes with broker.ops.run_verify;
4. start a steady write load (unique payloads; every acknowledged record kept);
5. lose region1: kill -9 its four broker processes;
6. fail over with broker.ops.run_failover (what ``fab failover`` runs), writing on;
7. rebuild region1 (empty data directories) and fail back with
   broker.ops.run_failback (what ``fab failback`` runs): RF 4, 2+2 again;
8. stop the load, read every acknowledged record back and print a summary;
9. clean up: stop every broker process it started (by pid), delete its files;
   also after a failure or Ctrl-C.

Exit 0 only when every acknowledged record was found, failover and failback
completed and the final placement holds. ``--quick`` runs the older 4-broker
demo instead (no Ansible, a leader killed; ~15 s).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from broker.client import BrokerError
from broker.demo.cluster import DemoCluster, DemoError
from broker.ops import (
    InventoryControl,
    InventoryError,
    run_failback,
    run_failover,
    run_verify,
)
from broker.ops.checks import wait_seen_dead
from broker.ops.failover import failover_seconds
from broker.ops.load import ReadBack, WriteLoad, read_back
from broker.ops.report import ConsoleProgress
from broker.ops.view import api_of, first_answering
from broker.placement import PlacementReport, check_runtime

PHASES = 9
DETECT_TIMEOUT = 60.0
WAIT_WRITES = 60.0  # seconds to wait for acknowledged writes on every partition
# Ansible output lines shown (in red) besides the task names and the recap
ANSIBLE_PROBLEMS = ("fatal:", "FAILED", "ERROR", "[ERROR]", "[WARNING]")


class Phases:
    """Numbered phases, each with its duration."""

    def __init__(self, console: Console, total: int = PHASES):
        self.console = console
        self.total = total
        self.number = 0
        self.took: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def __call__(self, title: str) -> Iterator[None]:
        self.number += 1
        n = self.number
        self.console.rule(f"[bold]Phase {n}/{self.total}: {escape(title)}", align="left")
        started = time.monotonic()
        try:
            yield
        except BaseException as exc:
            took = time.monotonic() - started
            how = "INTERRUPTED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            self.console.print(f"[bold red]phase {n} {how} after {took:.1f}s")
            raise
        took = time.monotonic() - started
        self.took.append((title, took))
        self.console.print(f"[green]phase {n} done in {took:.1f}s")


def make_console() -> Console:
    if not sys.stdout.isatty() and "COLUMNS" not in os.environ:
        return Console(width=120)
    return Console()


def placement(dc: DemoCluster) -> PlacementReport:
    brokers = dc.cluster.brokers
    broker, _, doc = first_answering(dc.cluster, brokers)
    topology = api_of(dc.cluster, broker).topology()
    return check_runtime(doc, topology, dc.cluster.regions_of(), dc.cluster.replication_factor)


def placement_table(report: PlacementReport, title: str) -> Table:
    table = Table(title=title)
    table.add_column("partition", justify="right")
    for region in report.regions:
        table.add_column(f"{region} replicas")
    table.add_column("per region")
    table.add_column("leader", justify="right")
    table.add_column("healthy", justify="right")
    table.add_column("status")
    for row in report.partitions:
        table.add_row(
            str(row.partition),
            *[",".join(map(str, row.by_region.get(r, ()))) or "-" for r in report.regions],
            "+".join(str(row.counts.get(r, 0)) for r in report.regions),
            "-" if row.leader is None else str(row.leader),
            str(row.healthy),
            "[green]ok" if row.ok else f"[red]{','.join(row.codes)}",
        )
    return table


def balanced(report: PlacementReport, rf: int) -> bool:
    """RF replicas on every partition, RF/2 in each region, nothing else wrong."""
    half = rf // len(report.regions)
    return (
        report.ok
        and bool(report.partitions)
        and all(all(row.counts.get(r) == half for r in report.regions) for row in report.partitions)
    )


def check_steps(results, what: str) -> None:
    if not results or results[-1].failed:
        last = results[-1] if results else None
        why = f"{last.name}: {last.saw}" if last else "no step ran"
        raise DemoError(f"{what} did not complete ({why})")


class Demo:
    def __init__(self, args: argparse.Namespace, console: Console):
        self.args = args
        self.console = console
        self.phase = Phases(console)
        self.region = args.lose
        self.dc: DemoCluster | None = None
        self.load: WriteLoad | None = None
        self.workdir: Path | None = None
        self.figures: dict[str, object] = {}

    # --- the phases ---------------------------------------------------------------------

    def run(self) -> bool:
        args, out = self.args, self.console
        with self.phase("prepare the inventory"):
            parent = args.workdir
            if parent is not None:
                parent.mkdir(parents=True, exist_ok=True)
            self.workdir = Path(tempfile.mkdtemp(prefix="broker-demo-", dir=parent)).resolve()
            out.print(f"working directory {self.workdir}")
            self.dc = dc = DemoCluster.create(self.workdir, args.inventory)
            cluster = dc.cluster
            cluster.check_region(self.region)
            self.survivor = cluster.other_region(self.region)
            dc.check_free()
            kind = "private copy of inventories/local" if dc.private else "given inventory"
            out.print(f"inventory {dc.inventory} ({kind})")
            table = Table(title=f"{len(cluster.brokers)} brokers on this machine")
            for column in ("id", "region", "host", "gateway", "internal", "management"):
                table.add_column(column)
            for b in cluster.brokers:
                table.add_row(
                    str(b.node_id),
                    b.region,
                    b.name,
                    str(b.gateway_port),
                    str(b.internal_port),
                    str(b.management_port),
                )
            out.print(table)
            out.print(
                f"{cluster.partitions} partitions, replication factor "
                f"{cluster.replication_factor}; data under {dc.data_dir(cluster.brokers[0])}/.."
            )
            out.print(
                f"TLS on every channel; the deploy makes the cluster CA at {cluster.tls.ca}"
                if cluster.tls is not None
                else "TLS off: gateway, peers and management in plaintext"
            )

        with self.phase("deploy with ansible-playbook playbooks/deploy.yml"):
            self.deploy()

        with self.phase("verify leaders, placement and writes (broker.ops.run_verify)"):
            results = run_verify(cluster, progress=ConsoleProgress(out))
            check_steps(results, "verification")
            report = placement(dc)
            out.print(placement_table(report, "placement after the deploy"))
            if not balanced(report, cluster.replication_factor):
                raise DemoError("the deployed cluster's placement is not 2+2 on every partition")

        with self.phase(f"start a steady write load ({args.rate:g} records/s)"):
            self.load = load = WriteLoad(
                dc.gateways(),
                prefix=f"demo-{os.getpid()}-{int(time.time())}",
                rate=args.rate,
                max_seconds=args.max_load_seconds,
                cluster_name=cluster.name,
                ssl_context=cluster.ssl_context(),
            )
            load.start()
            target = max(1, int(args.rate * args.warmup))
            everywhere = set(range(1, cluster.partitions + 1))
            load.wait_for(
                lambda: len(load.acks) >= target and {a.partition for a in load.acks} >= everywhere,
                WAIT_WRITES,
                f"{target} acknowledged writes on all {cluster.partitions} partitions",
            )
            out.print(
                f"{len(load.acks)} records acknowledged on all {cluster.partitions} partitions "
                f"in {time.monotonic() - load.started_at:.1f}s; the load keeps writing"
            )

        lost_ids = cluster.ids(cluster.in_region(self.region))
        with self.phase(f"lose {self.region}: kill -9 brokers {lost_ids}"):
            before = len(load.acks)
            self.killed_at = time.monotonic()
            victims = dc.kill_region(self.region)
            for node, pid in sorted(victims.items()):
                out.print(f"kill -9 {pid}  (broker {node}, {self.region})")
            out.print(
                f"{before} records acknowledged before the loss. Every partition has 2 of its "
                f"4 replicas in {self.region}: no quorum anywhere, writes stop"
            )
            seen = wait_seen_dead(cluster, self.region, DETECT_TIMEOUT)
            self.figures["detection"] = time.monotonic() - self.killed_at
            out.print(
                f"{seen} after {self.figures['detection']:.1f}s (membership failure detection): "
                "the operator is paged and starts the failover"
            )

        with self.phase(f"fail over to {self.survivor} (broker.ops.run_failover)"):
            started = time.monotonic()
            results = run_failover(
                cluster,
                self.region,
                yes=True,
                progress=ConsoleProgress(out),
                control=InventoryControl(),
            )
            check_steps(results, "failover")
            self.failover_done = time.monotonic()
            self.figures["rto"] = failover_seconds(results)
            self.figures["failover_wall"] = self.failover_done - started
            out.print(
                f"failover RTO: every partition took a write "
                f"{self.figures['rto']:.1f}s after the failover started"
            )
            self.writes_everywhere_since(
                self.failover_done, f"writes on {self.survivor} alone", seconds=args.warmup
            )

        with self.phase(f"rebuild {self.region} and fail back (broker.ops.run_failback)"):
            for directory in dc.wipe_region(self.region):
                out.print(f"{self.region} rebuilt: {directory} is empty")
            sink_restored = not all(
                cluster.exporter_of(r) in cluster.sinks for r in cluster.regions
            )
            if sink_restored:
                out.print(
                    "[yellow]the inventory names no shared export sinks "
                    "(broker_export_sinks): the sink copy is skipped (sink_restored)"
                )
            self.failback_started = time.monotonic()
            results = run_failback(
                cluster,
                self.region,
                yes=True,
                progress=ConsoleProgress(out),
                control=InventoryControl(),
                sink_restored=sink_restored,
            )
            for pid, config in sorted(dc.track().items()):
                out.print(f"started pid {pid} ({config})")
            check_steps(results, "failback")
            self.failback_done = time.monotonic()
            self.figures["failback"] = self.failback_done - self.failback_started
            self.writes_everywhere_since(self.failback_done, "writes at RF 4 again")

        with self.phase("stop the load, read every acknowledged record back"):
            load.stop()
            if load.crash is not None:
                raise DemoError(f"the write load crashed: {load.crash!r}")
            acks = load.snapshot()
            rb = read_back(
                dc.gateways(),
                acks,
                cluster.partitions,
                load.prefix,
                cluster_name=cluster.name,
                ssl_context=cluster.ssl_context(),
            )
            out.print(
                f"read {rb.records} records from {cluster.partitions} partitions; "
                f"{rb.found} of {rb.acknowledged} acknowledged records found"
            )
            report = placement(dc)
            out.print(placement_table(report, "final placement"))
        return self.summary(rb, report)

    def deploy(self) -> None:
        dc, out = self.dc, self.console
        assert dc is not None
        log = self.workdir / "ansible.log"
        started = time.monotonic()
        recap, last = False, ""

        def show(line: str) -> None:
            nonlocal recap, last
            if self.args.verbose:
                out.print(escape(line), highlight=False)
                return
            if line.startswith("PLAY RECAP"):
                recap = True
            if line.startswith("TASK ["):
                name = line[len("TASK [") :].rsplit("]", 1)[0].removeprefix("broker : ")
                if name != last:  # a handler runs once per host: shown once
                    short = name if len(name) <= 90 else name[:87] + "..."
                    elapsed = time.monotonic() - started
                    out.print(f"[dim]{elapsed:5.1f}s  {escape(short)}", highlight=False)
                last = name
            elif recap and line.strip():
                out.print(escape(line), highlight=False)
            elif line.lstrip().startswith(ANSIBLE_PROBLEMS):
                out.print(f"[red]{escape(line)}", highlight=False)

        rc = dc.playbook("deploy.yml", on_line=show, log=log)
        if rc != 0:
            tail = log.read_text(errors="replace").splitlines()[-40:]
            out.print(escape("\n".join(tail)), highlight=False)
            raise DemoError(f"ansible-playbook deploy.yml failed (exit {rc})")
        running = dc.running()
        for b in dc.cluster.brokers:
            out.print(f"broker {b.node_id} ({b.region}) runs as pid {running.get(b.node_id)}")
        if len(running) != len(dc.cluster.brokers):
            raise DemoError("not every broker runs after the deploy")

    def writes_everywhere_since(self, since: float, what: str, seconds: float = 0.0) -> None:
        """Wait until records sent after ``since`` were acknowledged on every partition,
        ``seconds`` worth of them at the load's rate."""
        load, cluster = self.load, self.dc.cluster
        everywhere = set(range(1, cluster.partitions + 1))
        count = int(self.args.rate * seconds)
        load.wait_for(
            lambda: (
                load.partitions_acked_since(since) >= everywhere
                and load.acked_between(since, float("inf")) >= count
            ),
            WAIT_WRITES,
            f"{what} on all {cluster.partitions} partitions",
        )
        self.console.print(
            f"{what}: acknowledged on all {cluster.partitions} partitions "
            f"({len(load.acks)} acknowledged so far, {load.failed} failed)"
        )

    # --- the summary --------------------------------------------------------------------------

    def summary(self, rb: ReadBack, report: PlacementReport) -> bool:
        load, cluster, out = self.load, self.dc.cluster, self.console
        rf = cluster.replication_factor
        client_gap = load.first_acks_after(self.killed_at)
        gap = max(client_gap.values()) if len(client_gap) == cluster.partitions else None
        outage = load.acked_between(self.killed_at, self.failback_done)
        alone = load.acked_between(self.failover_done, self.failback_started)
        fine = balanced(report, rf)
        split = " + ".join(f"{rf // len(report.regions)} {r}" for r in report.regions)
        table = Table(title="make demo: summary", show_header=True)
        table.add_column("what")
        table.add_column("value", justify="right")
        table.add_column("")
        good, bad = "[green]ok", "[bold red]NOT OK"
        table.add_row("records acknowledged", str(rb.acknowledged), "")
        complete = rb.found + len(rb.compacted) == rb.acknowledged > 0
        table.add_row("records found afterwards", str(rb.found), good if complete else bad)
        if rb.compacted:  # a broker compacts only what every exporter already has
            table.add_row("records compacted since", str(len(rb.compacted)), "not lost")
        table.add_row("records lost", str(len(rb.lost)), good if not rb.lost else bad)
        table.add_row(
            "failed appends (outcome unknown, never promised)",
            str(load.failed),
            ", ".join(f"{k} {v}" for k, v in load.errors.most_common()),
        )
        table.add_row("  of them committed anyway (found)", str(rb.unacknowledged_committed), "")
        rto = self.figures.get("rto")
        table.add_row(
            "loss detected by the survivors (kill -9 to dead everywhere)",
            f"{self.figures['detection']:.1f}s",
            "membership failureTimeout",
        )
        table.add_row(
            "failover RTO (task start to a write on every partition)",
            f"{rto:.1f}s" if rto is not None else "-",
            "target < 5 s" if rto is not None and rto < 5 else "",
        )
        table.add_row(
            "write outage seen by the load (kill -9 to a write on every partition)",
            f"{gap:.1f}s" if gap is not None else "-",
            "",
        )
        table.add_row("failback time", f"{self.figures['failback']:.1f}s", "RF 4 again")
        table.add_row(
            "writes during the outage (kill to failback done)",
            str(outage),
            f"{alone} on {self.survivor} alone",
        )
        table.add_row(
            "final placement",
            f"{sum(1 for r in report.partitions if r.ok)}/{len(report.partitions)} partitions",
            (good + f": RF {rf}, {split}") if fine else bad,
        )
        out.print(table)
        phases = Table(title="phases")
        phases.add_column("#", justify="right")
        phases.add_column("phase")
        phases.add_column("seconds", justify="right")
        for i, (title, took) in enumerate(self.phase.took, 1):
            phases.add_row(str(i), escape(title), f"{took:.1f}")
        phases.add_row("", "total before clean-up", f"{sum(t for _, t in self.phase.took):.1f}")
        out.print(phases)
        for a in rb.lost[:10]:
            out.print(f"[red]LOST: partition {a.partition} position {a.position} {a.payload!r}")
        ok = complete and not rb.lost and fine
        out.print(
            f"RESULT acknowledged={rb.acknowledged} found={rb.found} lost={len(rb.lost)} "
            f"failover_rto={rto if rto is None else round(rto, 1)} "
            f"failback={self.figures['failback']:.1f} outage_writes={outage} "
            f"placement={'ok' if fine else 'bad'}",
            highlight=False,
            soft_wrap=True,
        )
        if ok:
            out.print(
                f"[bold green]{self.region} was lost under load, failed over and back: every "
                f"one of {rb.acknowledged} acknowledged records is there"
                + (f" ({len(rb.compacted)} of them compacted since)" if rb.compacted else "")
            )
        return ok

    # --- failure and cleanup ----------------------------------------------------------------

    def show_logs(self) -> None:
        if self.dc is None:
            return
        for b in self.dc.cluster.brokers:
            tail = self.dc.log_tail(b)
            if tail:
                self.console.rule(f"broker {b.node_id} log (last lines)")
                self.console.print(escape(tail), highlight=False, end="")

    def cleanup(self) -> bool:
        """Stop the load and every broker the demo started; delete its files."""
        out, clean = self.console, True
        out.rule(f"[bold]Phase {PHASES}/{PHASES}: clean up", align="left")
        started = time.monotonic()
        if self.load is not None:
            self.load.stop()
        if self.dc is not None:
            pids, alive = self.dc.stop_all()
            out.print(f"stopped the broker processes the demo started: pids {_ids(pids)}")
            if alive:
                out.print(f"[bold red]still running: pids {_ids(alive)}")
                clean = False
            if not self.dc.private and self.dc.deployed and not alive:
                self.remove_given_inventory()
        if self.workdir is not None:
            if self.args.keep:
                out.print(f"kept {self.workdir} (--keep)")
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)
                if self.workdir.exists():
                    out.print(f"[bold red]could not delete {self.workdir}")
                    clean = False
                else:
                    out.print(f"deleted {self.workdir}")
        out.print(
            f"CLEANUP pids={_ids(self.dc.started if self.dc else ())} "
            f"alive={_ids(alive) if self.dc else '-'} workdir={self.workdir} "
            f"removed={not (self.workdir and self.workdir.exists())}",
            highlight=False,
            soft_wrap=True,
        )
        out.print(f"clean up done in {time.monotonic() - started:.1f}s")
        return clean

    def remove_given_inventory(self) -> None:
        """A given inventory's brokers keep their directories outside the working
        directory: playbooks/remove.yml deletes them."""
        log = self.workdir / "ansible-remove.log"
        rc = self.dc.playbook(
            "remove.yml", "-e", "broker_remove_confirm=true", on_line=lambda _: None, log=log
        )
        self.console.print(
            f"ansible-playbook remove.yml: {'data deleted' if rc == 0 else f'exit {rc}'}"
        )


def _ids(pids) -> str:
    return ",".join(str(p) for p in sorted(pids)) or "none"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m broker.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="run the short 4-broker demo instead (no Ansible; a leader is killed)",
    )
    p.add_argument(
        "--inventory",
        type=Path,
        metavar="PATH",
        help="deploy this local-format inventory (hosts.yml or its directory; every broker "
        "local, process mode; its ports must be free) instead of a private copy of "
        "inventories/local; its directories are deleted afterwards with remove.yml",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        metavar="DIR",
        help="where the demo's temporary directory goes (default: the system's temp dir)",
    )
    p.add_argument(
        "--lose", default="region1", metavar="REGION", help="the region to lose (default region1)"
    )
    p.add_argument(
        "--rate", type=float, default=100.0, help="writes per second of the load (default 100)"
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=3.0,
        metavar="S",
        help="seconds of load before the region is lost (default 3)",
    )
    p.add_argument(
        "--max-load-seconds",
        type=float,
        default=600.0,
        metavar="S",
        help="the load stops by itself after this long in any case (default 600)",
    )
    p.add_argument("--verbose", action="store_true", help="show Ansible's whole output")
    p.add_argument(
        "--keep", action="store_true", help="keep the working directory (brokers still stop)"
    )
    args, rest = p.parse_known_args(argv)
    if rest and not args.quick:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    if args.rate <= 0:
        p.error("--rate must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.quick:
        from broker.demo import quick

        return quick.main(args.rest + (["--keep"] if args.keep else []))
    console = make_console()

    def terminated(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminated)
    demo = Demo(args, console)
    started = time.monotonic()
    ok, interrupted = False, False
    try:
        ok = demo.run()
    except KeyboardInterrupt:
        interrupted = True
        console.print("[bold red]interrupted: cleaning up")
    except (DemoError, InventoryError, BrokerError, TimeoutError, RuntimeError) as exc:
        console.print(f"[bold red]demo failed: {escape(str(exc))}")
        demo.show_logs()
    finally:
        # a second Ctrl-C (or SIGTERM) must not leave brokers behind
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            clean = demo.cleanup()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, previous)
    total = time.monotonic() - started
    verdict = "[bold green]demo passed" if ok and clean else "[bold red]demo FAILED"
    console.print(f"{verdict} in {total:.0f}s")
    if interrupted:
        return 130
    return 0 if ok and clean else 1


if __name__ == "__main__":
    sys.exit(main())
