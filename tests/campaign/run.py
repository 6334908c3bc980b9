"""One campaign schedule, start to verdict, and the campaign's summary.

A schedule: start a fresh cluster; run the clients and the nemesis for the given time;
stop the faults, let the cluster settle, read every key once more and every partition's
whole log; wait for the exporters; stop the brokers and read each replica's log from its
disk; then check the history. Everything lands in the schedule's directory:
``history.jsonl`` (every operation and nemesis action), ``final.json`` (the logs read at
the end) and the brokers' own logs, so ``--check DIR`` can judge it again.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from broker.demo.localcluster import wait_for
from broker.lab import Lab
from broker.ops.view import replica_sets
from tests.campaign.environment import Environment, Shape
from tests.campaign.history import load_history
from tests.campaign.linearizable import KvReport, check_kv
from tests.campaign.logcheck import FinalLogs, LogReport, check_log
from tests.campaign.nemesis import KINDS, MIXES, Nemesis, needs
from tests.campaign.recorder import Recorder
from tests.campaign.replicas import replica_log
from tests.campaign.workload import Client, KeySlots, WorkloadOptions, final_reads
from tests.integration.test_exporters import sink

SETTLE_TIMEOUT = 90.0
EXPORT_TIMEOUT = 60.0


@dataclass
class Options:
    seconds: float = 30.0
    shape: Shape = field(default_factory=Shape)
    workload: WorkloadOptions = field(default_factory=WorkloadOptions)
    mix: str = "rotate"  # a name in MIXES, "rotate" (through them), or kinds "kill,pause"
    budget: int = 2_000_000  # linearizability search steps per key
    where: str = "local"  # or "lab"


@dataclass
class ScheduleResult:
    seed: int
    mix: str
    directory: Path
    operations: int = 0
    kv: KvReport | None = None
    log: LogReport | None = None
    nemeses: dict[str, int] = field(default_factory=dict)
    error: str | None = None  # the run itself failed (a procedure, a crash): not a verdict

    @property
    def violations(self) -> int:
        return (len(self.kv.violations) if self.kv else 0) + (
            len(self.log.violations) if self.log else 0
        )

    @property
    def undecided(self) -> int:
        return len(self.kv.undecided) if self.kv else 0

    @property
    def lost(self) -> int:
        return self.log.lost if self.log else 0

    @property
    def clean(self) -> bool:
        return not (self.error or self.violations or self.undecided or self.lost)


def available_kinds(where: str, root: bool) -> dict[str, str | None]:
    """kind -> None when it can run here, else why not."""
    out = {}
    for kind in KINDS:
        need = needs(kind)
        if need == "lab" and where != "lab":
            out[kind] = "needs the lab (--where lab, as root)"
        elif need == "tmpfs" and not root:
            out[kind] = "needs root to mount a tmpfs"
        else:
            out[kind] = None
    return out


def mix_for(mix: str, index: int, available: dict[str, str | None]) -> tuple[str, tuple[str, ...]]:
    """(the mix's name, its kinds that can run here) for schedule number ``index``."""
    if mix == "rotate":
        usable = [m for m in MIXES if any(available[k] is None for k in MIXES[m] if k != "pause")]
        mix = usable[index % len(usable)]
    if mix in MIXES:
        kinds = MIXES[mix]
    else:
        kinds = tuple(k.strip() for k in mix.split(",") if k.strip())
        unknown = [k for k in kinds if k not in KINDS]
        if unknown or not kinds:
            raise ValueError(f"unknown nemesis kinds {unknown or mix!r}: choose from {KINDS}")
    runnable = tuple(k for k in kinds if available[k] is None)
    if not runnable:
        why = "; ".join(f"{k}: {available[k]}" for k in kinds)
        raise ValueError(f"no kind of mix {mix!r} can run here ({why})")
    return mix, runnable


def run_schedule(
    seed: int, mix: str, kinds: tuple[str, ...], opts: Options, directory: Path, lab: Lab | None
) -> ScheduleResult:
    directory.mkdir(parents=True, exist_ok=True)
    result = ScheduleResult(seed, mix, directory)
    recorder = Recorder(directory / "history.jsonl")
    recorder.event(
        "meta",
        seed=seed,
        mix=mix,
        kinds=list(kinds),
        seconds=opts.seconds,
        where=opts.where,
        shape=vars(opts.shape),
    )
    rng = random.Random(seed)
    try:
        with Environment(directory, opts.shape, lab=lab, tmpfs="disk" in kinds) as env:
            final = exercise(env, kinds, rng, seed, opts, recorder, result)
    except Exception:
        result.error = result.error or traceback.format_exc()
        final = None
    finally:
        recorder.close()
    result.operations = recorder.operations
    if final is not None:
        (directory / "final.json").write_text(json.dumps(final_to_json(final)))
        result.kv, result.log, _ = check(directory / "history.jsonl", final, opts.budget)
    return result


def exercise(
    env: Environment,
    kinds: tuple[str, ...],
    rng: random.Random,
    seed: int,
    opts: Options,
    recorder: Recorder,
    result: ScheduleResult,
) -> FinalLogs | None:
    stop = threading.Event()
    keys = KeySlots(opts.workload.key_slots, opts.workload.ops_per_key)
    clients = [
        Client(
            n,
            env.gateways,
            env.c.cluster_name,
            recorder,
            keys,
            opts.workload,
            opts.shape.partitions,
            seed,
            stop,
        )
        for n in range(opts.workload.threads)
    ]
    nemesis = Nemesis(env, kinds, rng, opts.seconds, recorder, stop)
    for c in clients:
        c.start()
    nemesis.start()
    nemesis.join(opts.seconds + 600)  # a failover started near the end runs to its end
    stop.set()
    for c in clients:
        c.join(opts.workload.timeout + 30)
    result.nemeses = {k: v for k, v in nemesis.counts.items() if v}
    crashed = [f"{c.name}: {c.error!r}" for c in clients if c.error is not None]
    if nemesis.is_alive() or nemesis.error or crashed:
        result.error = nemesis.error or "; ".join(crashed) or "the nemesis did not finish"
        return None

    env.heal_all()
    if why := env.settle(SETTLE_TIMEOUT):
        result.error = why
        return None
    with env.client(timeout=5.0) as client:
        unread = final_reads(client, recorder, keys.used, 10_000, time.monotonic() + SETTLE_TIMEOUT)
        if unread:
            result.error = f"{len(unread)} keys could not be read after the faults: {unread[:5]}"
            return None
        log = {p: env.final_log(client, p) for p in range(1, opts.shape.partitions + 1)}
    ends = {p: (records[-1][0] if records else 0) for p, records in log.items()}

    def exported() -> bool:
        positions = env.exporter_positions()
        return all(
            positions.get(e, {}).get(p, 0) >= end
            for e in env.sinks
            for p, end in ends.items()
            if end
        )

    with contextlib.suppress(TimeoutError):  # the log checker names what is missing
        wait_for(exported, EXPORT_TIMEOUT, "the exporters to reach the end of every log")
    hosts = replica_sets(env.c.get_json(env.members()[0], "/actuator/cluster") or {})
    if set(hosts) != set(ends):
        result.error = f"the cluster configuration names replicas for {sorted(hosts)} only"
        return None
    env.c.stop_all()
    replicas: dict[str, dict[int, dict[int, str]]] = {}
    for i in env.members():
        name = f"broker-{i}"
        replicas[name] = {}
        for p, end in ends.items():
            if i not in hosts.get(p, ()):
                continue
            held, snapshot_position = replica_log(env.c.data_dir(i), p)
            if not held and snapshot_position:
                continue  # every record went into the snapshot: nothing left to compare
            # entries past the leader's last one can be an old term's uncommitted tail, which
            # Raft keeps until a leader overwrites it: not part of the committed log
            replicas[name][p] = {pos: data for pos, data in held.items() if pos <= end}
    exporters = {e: sink(d) for e, d in env.sinks.items()}
    return FinalLogs(log=log, replicas=replicas, exporters=exporters)


def check(history: Path, final: FinalLogs, budget: int) -> tuple[KvReport, LogReport, int]:
    """The verdicts on a saved history, and how many operations it holds."""
    loaded = load_history(history)
    return check_kv(loaded.ops, budget=budget), check_log(loaded.ops, final), len(loaded.ops)


def final_to_json(final: FinalLogs) -> dict:
    return {
        "log": {str(p): records for p, records in final.log.items()},
        "replicas": {
            r: {str(p): {str(pos): d for pos, d in held.items()} for p, held in parts.items()}
            for r, parts in final.replicas.items()
        },
        "exporters": {
            e: {str(p): lines for p, lines in parts.items()} for e, parts in final.exporters.items()
        },
    }


def final_from_json(doc: dict) -> FinalLogs:
    return FinalLogs(
        log={int(p): [(int(a), b) for a, b in r] for p, r in doc["log"].items()},
        replicas={
            r: {int(p): {int(pos): d for pos, d in held.items()} for p, held in parts.items()}
            for r, parts in doc["replicas"].items()
        },
        exporters={
            e: {int(p): [(int(a), b) for a, b in lines] for p, lines in parts.items()}
            for e, parts in doc["exporters"].items()
        },
    )


def summary_line(results: list[ScheduleResult]) -> str:
    return (
        f"campaign: {len(results)} schedules, {sum(r.operations for r in results)} operations, "
        f"{sum(r.violations for r in results)} violations, "
        f"{sum(r.undecided for r in results)} undecided, {sum(r.lost for r in results)} lost"
    )
