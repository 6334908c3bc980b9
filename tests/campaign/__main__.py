"""python -m tests.campaign: a Jepsen-style fault campaign on real broker processes.

Each schedule starts a fresh dual-region cluster, runs client threads on a few keys and on
the record log while a nemesis drawn from the schedule's seed injects faults, then checks
the recorded history: linearizability of the keys, the record log on every replica and
exporter, and acknowledged writes lost. Exit 0 when every schedule is clean, 1 otherwise,
2 on bad options. The last line is the summary:

    campaign: S schedules, O operations, V violations, U undecided, L lost

A seed fixes the nemesis schedule and the clients' choices; the real system's timing is
not replayed, so rerunning a failing seed repeats the same faults in the same order.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from broker.lab.hosts import exclusive
from tests.campaign.environment import Shape, lab_unavailable, started_lab
from tests.campaign.logcheck import FinalLogs  # noqa: F401 (re-exported for --check)
from tests.campaign.nemesis import KINDS, MIXES
from tests.campaign.run import (
    Options,
    ScheduleResult,
    available_kinds,
    check,
    final_from_json,
    mix_for,
    run_schedule,
    summary_line,
)
from tests.campaign.workload import WorkloadOptions
from tests.labutil import TEST_LOCK, foreign_lab, owned_lab


def _parser() -> argparse.ArgumentParser:
    mixes = "; ".join(f"{name}: {','.join(kinds)}" for name, kinds in MIXES.items())
    p = argparse.ArgumentParser(
        prog="python -m tests.campaign",
        description=__doc__.split("\n\n")[0],
        epilog=f"Nemesis kinds: {', '.join(KINDS)}. Mixes: {mixes}. "
        "'rotate' (the default) gives schedule i the i-th mix that can run here. "
        "Re-judge a saved run with --check DIR.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--seconds", type=float, default=30.0, help="seconds of faults per schedule, 1-86400 (30)"
    )
    p.add_argument("--schedules", type=int, default=1, help="how many schedules, 1-10000 (1)")
    p.add_argument("--seed", type=int, default=1, help="seed of the first schedule (1)")
    p.add_argument("--mix", default="rotate", help="a mix name, or kinds: kill,pause (rotate)")
    p.add_argument(
        "--where",
        choices=("auto", "local", "lab"),
        default="auto",
        help="local processes, or the lab's namespaces (root); auto: the lab when it can",
    )
    p.add_argument(
        "--brokers", type=int, default=4, help="brokers, alternating regions, even, 2-16 (4)"
    )
    p.add_argument("--partitions", type=int, default=2, help="partitions, 1-64 (2)")
    p.add_argument(
        "--replication-factor",
        type=int,
        default=4,
        help="replication factor, at most --brokers (4)",
    )
    p.add_argument("--threads", type=int, default=8, help="client threads, 1-64 (8)")
    p.add_argument("--keys", type=int, default=6, help="keys worked on at a time, 1-1000 (6)")
    p.add_argument("--ops-per-key", type=int, default=120, help="then a fresh key, 2-100000 (120)")
    p.add_argument(
        "--budget",
        type=int,
        default=2_000_000,
        help="search steps per key, 1000-100000000 (2000000)",
    )
    p.add_argument("--workdir", type=Path, help="where runs are kept (a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep clean runs' files too")
    p.add_argument("--check", type=Path, metavar="DIR", help="only re-check a saved schedule")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.check is not None:
        return recheck(args.check, args.budget)
    problems = [
        f"--{name} must be at least {low}" if value < low else f"--{name} must be at most {high}"
        for name, value, low, high in (
            ("seconds", args.seconds, 1, 86_400),
            ("schedules", args.schedules, 1, 10_000),
            ("brokers", args.brokers, 2, 16),
            ("partitions", args.partitions, 1, 64),
            ("replication-factor", args.replication_factor, 1, 16),
            ("threads", args.threads, 1, 64),
            ("keys", args.keys, 1, 1_000),
            ("ops-per-key", args.ops_per_key, 2, 100_000),
            ("budget", args.budget, 1_000, 100_000_000),
        )
        if not low <= value <= high
    ]
    if args.brokers % 2 or args.replication_factor > args.brokers:
        problems.append("--brokers must be even (two regions) and >= --replication-factor")
    where = args.where
    if where == "auto":
        where = "local" if lab_unavailable() else "lab"
    elif where == "lab" and (why := lab_unavailable()):
        problems.append(f"--where lab: {why}")
    root = os.geteuid() == 0
    available = available_kinds(where, root)
    try:
        plan = [mix_for(args.mix, i, available) for i in range(args.schedules)]
    except ValueError as exc:
        problems.append(f"--mix: {exc}")
    if problems:
        for problem in problems:
            print(f"campaign: {problem}", file=sys.stderr)
        return 2
    for kind, why in available.items():
        if why:
            print(f"campaign: nemesis {kind} not used here: {why}")
    opts = Options(
        seconds=args.seconds,
        shape=Shape(args.brokers, args.partitions, args.replication_factor),
        workload=WorkloadOptions(args.threads, args.keys, args.ops_per_key),
        mix=args.mix,
        budget=args.budget,
        where=where,
    )
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="brk-campaign-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"campaign: {args.schedules} schedules of {args.seconds:g}s on {where}, in {workdir}")
    if where == "lab":
        with exclusive(TEST_LOCK, 900, "another lab run"):
            if reason := foreign_lab():
                print(f"campaign: {reason}", file=sys.stderr)
                return 2
            with owned_lab(workdir / "var-lab"), started_lab(workdir, args.brokers // 2) as lab:
                results = run_all(plan, args, opts, workdir, lab)
    else:
        results = run_all(plan, args, opts, workdir, None)
    if all(r.clean for r in results) and not args.keep and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    print(summary_line(results))
    return 0 if all(r.clean for r in results) else 1


def run_all(plan, args, opts: Options, workdir: Path, lab) -> list[ScheduleResult]:
    results = []
    for i, (mix, kinds) in enumerate(plan):
        seed = args.seed + i
        started = time.monotonic()
        directory = workdir / f"schedule-{seed}"
        result = run_schedule(seed, mix, kinds, opts, directory, lab)
        results.append(result)
        report(result, time.monotonic() - started, replay_command(seed, mix, args, opts))
        if result.clean and not args.keep:
            shutil.rmtree(directory / "cluster", ignore_errors=True)
    return results


def replay_command(seed: int, mix: str, args, opts: Options) -> str:
    shape = opts.shape
    return (
        f"python -m tests.campaign --seed {seed} --mix {mix} --seconds {opts.seconds:g} "
        f"--where {opts.where} --brokers {shape.brokers} --partitions {shape.partitions} "
        f"--replication-factor {shape.replication_factor} --threads {opts.workload.threads}"
    )


def report(r: ScheduleResult, seconds: float | None, replay: str | None) -> None:
    verdict = "clean" if r.clean else "FAILED"
    counts = (
        f"{verdict}, {r.operations} operations, {r.violations} violations, "
        f"{r.undecided} undecided, {r.lost} lost"
    )
    if seconds is None:
        print(f"saved run {r.directory}: {counts}")
    else:
        faults = ", ".join(f"{k} {n}" for k, n in sorted(r.nemeses.items())) or "none"
        print(f"schedule seed {r.seed} ({r.mix}): {counts}; faults: {faults}; {seconds:.0f}s")
    if r.clean:
        return
    if r.error:
        print(f"  error: {r.error.strip()}")
    for key, why in r.kv.violations.items() if r.kv else []:
        print(f"  key {key}: {why}")
    if r.kv and r.kv.undecided:
        print(f"  undecided keys (search budget spent): {', '.join(r.kv.undecided)}")
    for why in (r.log.violations if r.log else [])[:20]:
        print(f"  log: {why}")
    if replay is not None:
        print(f"  files: {r.directory}")
        print(f"  replay: {replay}")
        print(f"  re-check: python -m tests.campaign --check {r.directory}")


def recheck(directory: Path, budget: int) -> int:
    history, final = directory / "history.jsonl", directory / "final.json"
    if not history.is_file() or not final.is_file():
        print(f"campaign: {directory} holds no history.jsonl and final.json", file=sys.stderr)
        return 2
    kv, log, operations = check(history, final_from_json(json.loads(final.read_text())), budget)
    r = ScheduleResult(-1, "saved", directory, operations, kv, log)
    report(r, None, None)
    print(summary_line([r]))
    return 0 if r.clean else 1


if __name__ == "__main__":
    sys.exit(main())
