"""``fab scale``: grow or shrink the running cluster, both regions in parity.

The walk of ``playbooks/scale.yml`` for brokers that are already installed (the
playbook also installs new hosts):

1. ``check_target``: the target is the first N brokers of the inventory (N even:
   ordinals below N/2 in each region) and keeps the dual-region rules; the
   running cluster has no change pending, no member the inventory lacks, and a
   leader on every partition. Nothing is touched before this passes;
2. ``start_joining``: each broker that joins is started unless it answers, and
   must be ready (it holds the cluster's configuration, hosting nothing yet);
3. ``request_scale``: ``POST /actuator/cluster/brokers`` with the target ids,
   asked once unless ``--yes``. Partitions move one replica at a time (adds,
   joins, leaves, removes) and never drop below their quorum, so writes go on;
4. ``wait_for_change_completed`` on every target broker;
5. ``stop_leaving``: the brokers that left host nothing any more; stop them;
6. ``verify_placement`` on the target brokers: RF replicas, RF/2 per region.
"""

from __future__ import annotations

from collections.abc import Callable

from broker.ops.api import ApiError
from broker.ops.checks import verify_placement, wait_for_change_completed
from broker.ops.control import Control
from broker.ops.inventory import Broker, Cluster
from broker.ops.steps import (
    Outcome,
    Progress,
    StepFailed,
    StepResult,
    ask_or_refuse,
    done,
    dry,
    failed,
    plan,
    run_procedure,
    skipped,
    step,
    wait_until,
)
from broker.ops.view import api_of, first_answering, ids_text, leaders
from broker.placement import check_layout

READY_TIMEOUT = 90.0
SCALE_TIMEOUT = 900.0  # every replica moved; grows with the data each one copies
SCALE_STEPS = 6


def target_brokers(cluster: Cluster, size: int | None) -> list[Broker]:
    """The first ``size`` brokers of the inventory by node id (all without ``size``)."""
    ids = cluster.ids()
    size = len(ids) if size is None else size
    if size < 2 or size % 2 or size > len(ids) or ids[:size] != list(range(size)):
        raise StepFailed(
            f"--size {size}: the target must be brokers 0..N-1 of the inventory, N even "
            f"(the same number in each region) and at most the {len(ids)} brokers it lists",
            "changed nothing",
        )
    return [cluster.broker(n) for n in range(size)]


@step("check the target and the running cluster")
def check_target(cluster: Cluster, target: list[Broker]) -> Outcome:
    report = check_layout(
        [(b.node_id, b.region) for b in target],
        cluster.partitions,
        cluster.replication_factor,
        regions=cluster.regions,
    )
    if not report.ok:
        raise StepFailed(
            f"{len(target)} brokers break the dual-region rules: "
            + "; ".join(f.message for f in report.findings),
            "changed nothing",
        )
    _, api, doc = first_answering(cluster, cluster.brokers)
    current = sorted(int(b["id"]) for b in doc["brokers"] if b["state"] != "LEFT")
    pending = doc.get("pendingChange")
    if pending:
        raise StepFailed(
            f"change {pending['id']} is still in progress", "changed nothing: wait for it"
        )
    unknown = sorted(set(current) - set(cluster.ids()))
    if unknown:
        raise StepFailed(
            f"the running cluster has brokers {ids_text(unknown)} the inventory does not list",
            "changed nothing: scale needs every member in the inventory",
        )
    led = leaders(api.topology())
    unled = [p for p in range(1, cluster.partitions + 1) if p not in led]
    if unled:
        raise StepFailed(
            f"partitions {ids_text(unled)} have no leader; moving replicas now could take a "
            "quorum away",
            "changed nothing: repair the cluster first (fab status)",
        )
    want = [b.node_id for b in target]
    joining = sorted(set(want) - set(current))
    leaving = sorted(set(current) - set(want))
    return done(
        f"{len(current)} -> {len(want)} brokers; joining: {ids_text(joining) or 'none'}; "
        f"leaving: {ids_text(leaving) or 'none'}",
        "checked",
        current=current,
        joining=joining,
        leaving=leaving,
    )


@step("start the brokers that join and wait until they are ready", acts=True)
def start_joining(
    cluster: Cluster, joining: list[Broker], *, control: Control, timeout: float = READY_TIMEOUT
) -> Outcome:
    if not joining:
        return skipped("no broker joins")
    started = []
    for b in joining:
        if not api_of(cluster, b).health("startup"):
            started.append(control.start(b))

    def ready() -> tuple[bool, str]:
        waiting = [b.node_id for b in joining if not api_of(cluster, b).health("readiness")]
        if waiting:
            return False, f"brokers {ids_text(waiting)} are not ready"
        return True, f"brokers {ids_text(b.node_id for b in joining)} are ready"

    seen = wait_until(ready, timeout, "the brokers that join to be ready")
    return done(seen, "; ".join(started) or "they were running")


@step("ask the cluster for the new broker set", acts=True)
def request_scale(
    cluster: Cluster,
    target: list[Broker],
    *,
    approve: Callable[[str], bool],
    dry_run: bool = False,
) -> Outcome:
    ids = [b.node_id for b in target]
    _, api, _ = first_answering(cluster, target)
    planned = api.request("POST", "/actuator/cluster/brokers", ids, dryRun="true")
    ops = planned["plannedChanges"]
    summary = _count(ops)
    if dry_run:
        return skipped(f"the plan has {len(ops)} operations ({summary})", "dry run: asked nothing")
    if not ops:
        return skipped("the cluster already has these brokers")
    if not approve(f"Move the cluster to brokers {ids_text(ids)} ({len(ops)} operations)?"):
        return failed("the operator did not confirm", "changed nothing")
    try:
        answer = api.request("POST", "/actuator/cluster/brokers", ids)
    except ApiError as exc:
        if exc.status == 409:
            raise StepFailed(f"another change is in progress: {exc.message}") from None
        raise
    return done(
        f"change {answer['changeId']}: {len(answer['plannedChanges'])} operations ({summary})",
        f"asked {api.url} for brokers {ids_text(ids)}",
        change_id=answer["changeId"],
    )


@step("stop the brokers that left", acts=True)
def stop_leaving(cluster: Cluster, leaving: list[Broker], *, control: Control) -> Outcome:
    if not leaving:
        return skipped("no broker left")
    stopped = [control.stop(b) for b in leaving]
    return done(
        f"brokers {ids_text(b.node_id for b in leaving)} host no partition any more",
        "; ".join(stopped),
    )


def _count(ops: list[dict]) -> str:
    counts: dict[str, int] = {}
    for op in ops:
        counts[op["operation"]] = counts.get(op["operation"], 0) + 1
    return ", ".join(f"{n} {name}" for name, n in counts.items()) or "nothing"


def run_scale(
    cluster: Cluster,
    size: int | None = None,
    *,
    control: Control,
    yes: bool = False,
    confirm: Callable[[str], bool] | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
    timeout: float = SCALE_TIMEOUT,
) -> list[StepResult]:
    target = target_brokers(cluster, size)
    approve = ask_or_refuse(yes, confirm)
    state: dict = {}

    def check() -> StepResult:
        result = check_target(cluster, target)
        state.update(result.data)
        return result

    def brokers(key: str) -> list[Broker]:
        return [cluster.broker(n) for n in state.get(key, [])]

    def ask() -> StepResult:
        result = request_scale(cluster, target, approve=approve, dry_run=dry_run)
        state.update(result.data)
        return result

    def wait() -> StepResult:
        if "change_id" not in state:  # nothing to move: the cluster had these brokers
            title = "no change was asked"
            return StepResult("wait_for_change_completed", "skipped", title, "nothing to do", 0.0)
        return wait_for_change_completed(
            cluster, target, change_id=state["change_id"], timeout=timeout
        )

    if dry_run:
        return run_procedure(
            plan(
                (check_target, check),
                (start_joining, lambda: dry(start_joining)),
                (request_scale, ask),
                (wait_for_change_completed, lambda: dry(wait_for_change_completed)),
                (stop_leaving, lambda: dry(stop_leaving)),
                (verify_placement, lambda: dry(verify_placement)),
            ),
            progress,
        )
    return run_procedure(
        plan(
            (check_target, check),
            (
                start_joining,
                lambda: start_joining(cluster, brokers("joining"), control=control),
            ),
            (request_scale, ask),
            (wait_for_change_completed, wait),
            (stop_leaving, lambda: stop_leaving(cluster, brokers("leaving"), control=control)),
            (verify_placement, lambda: verify_placement(cluster, target)),
        ),
        progress,
    )
