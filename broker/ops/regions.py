"""Stopping and starting a region's brokers, and the dry runs of the procedures that
stop and start processes (``fab stop-region``, ``start-region``, ``rolling-restart``,
``drill``).

Each is a procedure of steps (broker.ops.steps) like the failover, so fab prints it,
sums it up and writes it to the audit record the same way. A dry run reads the
cluster (which brokers answer, whether placement holds) and says, broker by broker,
what would run where; it starts, stops, kills and wipes nothing.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import replace

from broker.ops.checks import verify_placement
from broker.ops.control import Control
from broker.ops.failback import export_sinks
from broker.ops.inventory import Broker, Cluster
from broker.ops.steps import (
    Outcome,
    Progress,
    Step,
    StepResult,
    ask_or_refuse,
    done,
    failed,
    run_procedure,
    skipped,
    step,
    wait_until,
)
from broker.ops.view import api_of, ids_text

STOP_TIMEOUT = 60.0
START_TIMEOUT = 60.0


def how(broker: Broker, action: str) -> str:
    """In words, the command ``InventoryControl`` runs to ``action`` (start, stop, kill,
    wipe-data) this broker, and where: what a dry run says it would do."""
    config = broker.config_path or "<no broker_config_dir in the inventory>"
    where = "on this machine" if broker.is_local else f"on {broker.host} over SSH"
    manager = broker.vars.get("broker_service_manager", "systemd")
    if not broker.is_local and manager == "systemd" and action in ("start", "stop", "kill"):
        unit = shlex.quote(str(broker.vars.get("broker_service_name", "broker")))
        if action == "kill":
            return f"`systemctl kill --signal=SIGKILL {unit}; systemctl stop {unit}` {where}"
        return f"`systemctl {action} {unit}` {where}"
    verb = "stop --kill" if action == "kill" else action
    return f"`broker {verb} --config {shlex.quote(config)}` {where}"


def _answers(cluster: Cluster, broker: Broker) -> bool:
    return api_of(cluster, broker, timeout=2.0).health("startup")


def _saw(cluster: Cluster, broker: Broker) -> tuple[bool, str]:
    up = _answers(cluster, broker)
    return up, f"{broker.label()} {'answers' if up else 'does not answer'}"


@step("stop one broker of the region", acts=True)
def stop_broker(
    cluster: Cluster,
    broker: Broker,
    *,
    control: Control | None,
    approve: Callable[[str], bool],
    dry_run: bool = False,
    timeout: float = STOP_TIMEOUT,
) -> Outcome:
    _, saw = _saw(cluster, broker)
    if dry_run:
        return skipped(saw, f"dry run: would stop it with {how(broker, 'stop')}")
    if not approve(f"Stop {broker.label()}?"):
        return failed(saw + "; the operator did not confirm", "stopped nothing")
    if control is None:
        return failed(saw + "; no way to stop brokers is configured", "stopped nothing")
    did = control.stop(broker)  # also when it does not answer: it may hang, not be gone

    def down() -> tuple[bool, str]:
        still = _answers(cluster, broker)
        return not still, "still answers" if still else "no longer answers"

    seen = wait_until(down, timeout, f"broker {broker.node_id} to stop")
    return done(saw, f"{did}; {seen}")


@step("start one broker of the region", acts=True)
def start_broker(
    cluster: Cluster,
    broker: Broker,
    *,
    control: Control | None,
    approve: Callable[[str], bool],
    dry_run: bool = False,
    timeout: float = START_TIMEOUT,
) -> Outcome:
    up, saw = _saw(cluster, broker)
    if up:
        return skipped(saw, "nothing to start")
    if dry_run:
        return skipped(saw, f"dry run: would start it with {how(broker, 'start')}")
    if not approve(f"Start {broker.label()}?"):
        return failed(saw + "; the operator did not confirm", "started nothing")
    if control is None:
        return failed(saw + "; no way to start brokers is configured", "started nothing")
    did = control.start(broker)

    def up_now() -> tuple[bool, str]:
        answers = _answers(cluster, broker)
        return answers, "answers" if answers else "does not answer yet"

    seen = wait_until(up_now, timeout, f"broker {broker.node_id} to answer")
    return done(saw, f"{did}; {seen}")


def _ask_once(yes: bool, confirm: Callable[[str], bool] | None, question: str):
    """One question for a whole procedure, asked when its first broker step needs it."""
    ask = ask_or_refuse(yes, confirm)
    answer: dict[str, bool] = {}

    def approve(_: str) -> bool:
        if "given" not in answer:
            answer["given"] = ask(question)
        return answer["given"]

    return approve


def _per_broker(call: Callable[[Broker], StepResult], name: str, verb: str, brokers) -> list[Step]:
    return [
        Step(
            f"{name}_{b.node_id}",
            f"{verb} broker {b.node_id} ({b.name}, {b.host})",
            lambda b=b: replace(call(b), name=f"{name}_{b.node_id}"),
        )
        for b in brokers
    ]


def run_stop_region(
    cluster: Cluster,
    region: str,
    *,
    control: Control | None,
    dry_run: bool = False,
    yes: bool = False,
    confirm: Callable[[str], bool] | None = None,
    progress: Progress | None = None,
    timeout: float = STOP_TIMEOUT,
) -> list[StepResult]:
    """Stop every broker of ``region``, one step per broker; asks once unless ``yes``."""
    brokers = sorted(cluster.in_region(region), key=lambda b: b.node_id)
    approve = _ask_once(
        yes, confirm, f"Stop brokers {ids_text(b.node_id for b in brokers)} of {region}?"
    )

    def one(b: Broker) -> StepResult:
        return stop_broker(
            cluster, b, control=control, approve=approve, dry_run=dry_run, timeout=timeout
        )

    steps = _per_broker(one, "stop_broker", "stop", brokers)
    return run_procedure(steps, progress)


def run_start_region(
    cluster: Cluster,
    region: str,
    *,
    control: Control | None,
    dry_run: bool = False,
    yes: bool = False,
    confirm: Callable[[str], bool] | None = None,
    progress: Progress | None = None,
    timeout: float = START_TIMEOUT,
) -> list[StepResult]:
    """Start every broker of ``region`` that does not answer; asks once unless ``yes``
    (a region's old brokers with old data must not meet the survivors after a failover)."""
    brokers = sorted(cluster.in_region(region), key=lambda b: b.node_id)
    approve = _ask_once(
        yes, confirm, f"Start brokers {ids_text(b.node_id for b in brokers)} of {region}?"
    )

    def one(b: Broker) -> StepResult:
        return start_broker(
            cluster, b, control=control, approve=approve, dry_run=dry_run, timeout=timeout
        )

    steps = _per_broker(one, "start_broker", "start", brokers)
    return run_procedure(steps, progress)


# --- dry runs of the rolling restart and the drill ---------------------------------------


def _planned(name: str, title: str, saw: Callable[[], str], did: str) -> Step:
    """A step a dry run does not run: it says what it sees and what it would do."""
    return Step(name, title, lambda: StepResult(name, "skipped", saw(), did, 0.0))


def _check_first(cluster: Cluster, title: str) -> Step:
    """The read-only check both procedures start with; a dry run runs it too."""
    return Step("verify_placement", title, lambda: verify_placement(cluster, cluster.brokers))


def dry_run_rolling_restart(
    cluster: Cluster, order: list[Broker], progress: Progress | None = None
) -> list[StepResult]:
    """What ``run_rolling_restart`` would do, broker by broker, in its order."""
    steps = [_check_first(cluster, "verify the cluster is healthy before restarting anything")]
    for b in order:
        steps.append(
            _planned(
                f"restart_broker_{b.node_id}",
                f"restart broker {b.node_id} ({b.label()})",
                lambda b=b: _saw(cluster, b)[1],
                f"dry run: would stop it with {how(b, 'stop')}, start it with "
                f"{how(b, 'start')}, and wait until it is ready and every partition is led "
                "and caught up before the next broker",
            )
        )
    return run_procedure(steps, progress)


def dry_run_drill(
    cluster: Cluster, region: str, *, rate: float, progress: Progress | None = None
) -> list[StepResult]:
    """What ``run_drill`` would do to ``region``: the same steps, none of them run
    except the first, read-only check."""
    lost = sorted(cluster.in_region(region), key=lambda b: b.node_id)
    ids = ids_text(b.node_id for b in lost)
    gateways = ",".join(b.gateway for b in cluster.brokers)

    def region_seen() -> str:
        return "; ".join(_saw(cluster, b)[1] for b in lost)

    def sinks_seen() -> str:
        sinks = export_sinks(cluster)
        if all(cluster.exporter_of(r) in sinks for r in cluster.regions):
            return "export sinks: " + ", ".join(f"{e} {d}" for e, d in sorted(sinks.items()))
        return (
            "NO shared export sink is known for every exporter (broker_export_sinks): the "
            "failback would stop at restore_export_sink"
        )

    kills = "; ".join(f"broker {b.node_id}: {how(b, 'kill')}" for b in lost)
    wipes = "; ".join(f"broker {b.node_id}: {how(b, 'wipe-data')}" for b in lost)
    starts = "; ".join(f"broker {b.node_id}: {how(b, 'start')}" for b in lost)
    steps = [
        _check_first(cluster, "verify the cluster is healthy before the drill"),
        _planned(
            "start_write_load",
            "start a steady write load through every gateway",
            lambda: f"gateways {gateways}",
            f"dry run: would write {rate:g} records/s, remembering every acknowledged one",
        ),
        _planned(
            "lose_region",
            f"lose {region}: kill -9 its brokers and empty their disks",
            region_seen,
            f"dry run: would kill brokers {ids} ({kills}), wipe their data ({wipes}) and wait "
            "until the survivors see them dead",
        ),
        _planned(
            "fail_over",
            "fail over to the surviving region",
            lambda: f"{region} holds brokers {ids}",
            f"dry run: would run the failover from {region} (fab failover --lost-region "
            f"{region} --yes), timing its RTO",
        ),
        _planned(
            "write_during_outage",
            "keep writing during the outage (every partition)",
            lambda: f"survivors: brokers {ids_text(cluster.ids(cluster.outside(region)))}",
            "dry run: would wait until writes sent after the failover are acknowledged on "
            "every partition",
        ),
        _planned(
            "fail_back",
            "fail back the rebuilt region",
            sinks_seen,
            f"dry run: would run the failback of {region} (fab failback --region {region} "
            f"--yes), starting its brokers ({starts}) and restoring its export sink",
        ),
        _planned(
            "check_no_data_lost",
            "stop the load and read back every acknowledged record",
            lambda: "no load runs in a dry run",
            "dry run: would stop the load and read back every acknowledged record at its position",
        ),
    ]
    return run_procedure(steps, progress)
