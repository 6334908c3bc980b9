"""Region failover: the documented procedure (DESIGN section 2, Camunda 8.6-8.8) as code.

With an even replication factor split R/2 per region, losing a region loses
quorum on every partition. Failover gives the surviving region the cluster:

1. ``confirm_region_lost``: nothing of the region answers from here nor (over
   SSH) from the surviving hosts, and the survivors see it dead too (a region
   that answers us but not its peers is a network cut, not a loss: refused);
2. ``check_survivors_healthy``: every surviving broker answers and sees the
   others, and no other change is pending (it would block the forced one);
3. ``fence_region`` (optional): stop whatever of the region still runs;
4. ``force_remove``: the survivors force the region's brokers out (replica
   sets shrink to the survivors; RF is effectively R/2);
5. ``wait_for_change_completed`` and 6. ``wait_for_leaders`` on the survivors;
7. ``disable_exporter``: the lost region's exporter;
8. ``verify_writes``: a write and a read on every partition.

Guards against the known field failures: a force removal of a region that
answers is refused unless ``override_reachable`` (the loudly named
``allowRemovingReachableBrokers``); the plan the API proposes is checked to
remove exactly the lost region's brokers, never a survivor; a retried run
finds an identical force request under way or done and does not apply it
twice; a pending change that blocks the removal is named.
"""

from __future__ import annotations

from collections.abc import Callable

from broker.ops.api import (
    DEFAULT_FORM,
    OVERRIDE,
    ApiError,
    check_form,
    count_operations,
    format_operations,
)
from broker.ops.checks import (
    CHANGE_TIMEOUT,
    verify_writes,
    wait_for_change_completed,
    wait_for_leaders,
)
from broker.ops.control import Control
from broker.ops.inventory import Cluster
from broker.ops.steps import (
    Outcome,
    Progress,
    StepFailed,
    StepResult,
    WaitTimeout,
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
from broker.ops.view import (
    alive_map,
    answering_ports,
    answering_ports_from,
    describe_change,
    describe_pending,
    docs_from,
    exporter_state_everywhere,
    first_answering,
    ids_text,
    members,
    pending_ops,
)

__all__ = [
    "check_survivors_healthy",
    "confirm_region_lost",
    "disable_exporter",
    "fence_region",
    "force_remove",
    "run_failover",
    "verify_writes",
    "wait_for_change_completed",
    "wait_for_leaders",
]

# The survivors need the membership failureTimeout (10 s by default) to see a region dead.
DETECT_TIMEOUT = 30.0
SETTLE_TIMEOUT = 15.0
FENCE_TIMEOUT = 30.0
FORCE_OPERATIONS = ("BROKER_FORCE_REMOVE", "PARTITION_FORCE_RECONFIGURE")


def _seen_alive(cluster: Cluster, region: str, ids: list[int]) -> dict[int, list[int]]:
    """Lost-region id -> the survivors that still see it alive."""
    seen: dict[int, list[int]] = {}
    for survivor, topo in docs_from(cluster, cluster.outside(region), "topology").items():
        if isinstance(topo, dict):
            alive = alive_map(topo)
            for i in ids:
                if alive.get(i):
                    seen.setdefault(i, []).append(survivor)
    return seen


@step("confirm the region is lost")
def confirm_region_lost(
    cluster: Cluster,
    region: str,
    *,
    override_reachable: bool = False,
    timeout: float = DETECT_TIMEOUT,
) -> Outcome:
    lost = cluster.in_region(region)
    survivors = cluster.outside(region)
    try:
        _, _, doc = first_answering(cluster, survivors)
    except StepFailed as exc:
        others = ", ".join(sorted({b.region for b in survivors}))
        raise StepFailed(
            f"none of the brokers that would survive ({others}: {ids_text(cluster.ids(survivors))})"
            f" answers from here, so there is nothing to fail over to. Is {region} really the "
            f"lost region, and not {others}? ({exc.saw})",
            "refused to fail over",
        ) from None
    still = [i for i in cluster.ids(lost) if i in members(doc)]
    if not still:
        return done(
            f"brokers {ids_text(cluster.ids(lost))} of {region} are no longer cluster members: "
            f"it was removed already (last: {describe_change(doc.get('lastChange'))})",
            "nothing to confirm",
        )
    answering = answering_ports(lost)
    if answering:
        alive = _seen_alive(cluster, region, still)
        if alive:
            verdict = (
                f"{region} is UP: {'; '.join(answering)} answer from here, and the survivors see "
                f"brokers {ids_text(alive)} alive. There is nothing to fail over."
            )
        else:
            verdict = (
                f"network cut, not a region loss: {region} answers from here "
                f"({'; '.join(answering)}) but the survivors see brokers {ids_text(still)} dead. "
                "Heal the link between the regions; forcing out a live region splits the "
                "cluster and loses the writes it still takes."
            )
        if not override_reachable:
            return failed(verdict, "refused to fail over")
        return done(
            "WARNING " + verdict,
            f"proceeding anyway: override_reachable ({OVERRIDE}) was given by the operator",
        )

    def survivors_see_it_dead() -> tuple[bool, str]:
        alive = _seen_alive(cluster, region, still)
        if alive:
            who = "; ".join(f"{i} by {ids_text(s)}" for i, s in sorted(alive.items()))
            return False, f"survivors still see brokers alive: {who}"
        return True, f"the survivors see brokers {ids_text(still)} dead"

    try:
        seen = wait_until(survivors_see_it_dead, timeout, f"the survivors to see {region} dead")
    except WaitTimeout as exc:
        return failed(
            f"{region} does not answer from here, but {exc}. The fault is between this "
            f"controller and {region}, not a region loss: do not fail over",
            "refused to fail over",
        )
    ports = sum(len(b.ports) for b in lost)
    seen_from = answering_ports_from(survivors, lost)
    answered = {n: p for n, p in seen_from.items() if isinstance(p, list) and p}
    if answered and not override_reachable:
        where = "; ".join(f"from broker {n}'s host: {', '.join(p)}" for n, p in answered.items())
        return failed(
            f"{region} does not answer from here, but it answers from the surviving region's "
            f"hosts ({where}). The fault is between this controller and {region}, not a "
            "region loss: do not fail over",
            "refused to fail over",
        )
    asked = [n for n, p in seen_from.items() if isinstance(p, list)]
    unasked = {n: p.saw for n, p in seen_from.items() if isinstance(p, StepFailed)}
    also = f"; nor from the survivors' hosts {ids_text(asked)} (over SSH)" if asked else ""
    if unasked:
        also += "; WARNING could not ask " + "; ".join(unasked.values())
    return done(
        f"no broker of {region} answers on any of its {ports} ports (management, gateway, "
        f"internal) from here{also}, and {seen}",
        f"confirmed: {region} is lost",
    )


@step("check that the surviving region is complete and healthy")
def check_survivors_healthy(
    cluster: Cluster, region: str, *, timeout: float = SETTLE_TIMEOUT
) -> Outcome:
    survivors = cluster.outside(region)
    ids = cluster.ids(survivors)
    docs = docs_from(cluster, survivors)
    silent = {n: d for n, d in docs.items() if isinstance(d, ApiError)}
    if silent:
        why = "; ".join(f"{cluster.broker(n).label()}: {e.message}" for n, e in silent.items())
        return failed(
            f"the surviving side is incomplete: {why}. A forced removal needs every retained "
            "broker; bring them back before failing over (a failover now could lose data)",
            "refused to fail over",
        )
    doc = docs[ids[0]]
    not_members = [n for n in ids if n not in members(doc)]
    if not_members:
        return failed(
            f"brokers {ids_text(not_members)} of the surviving side are not cluster members "
            f"(states: {[(b['id'], b['state']) for b in doc['brokers']]}); check the inventory",
            "refused to fail over",
        )

    def all_see_each_other() -> tuple[bool, str]:
        blind = []
        for node, topo in docs_from(cluster, survivors, "topology").items():
            if isinstance(topo, ApiError):
                blind.append(f"broker {node} does not answer")
                continue
            alive = alive_map(topo)
            dead = [i for i in ids if not alive.get(i)]
            if dead:
                blind.append(f"broker {node} sees {ids_text(dead)} dead")
        return not blind, "; ".join(blind) or f"brokers {ids_text(ids)} see each other alive"

    try:
        seen = wait_until(all_see_each_other, timeout, "the survivors to see each other")
    except WaitTimeout as exc:
        return failed(f"the surviving side is not healthy: {exc}", "refused to fail over")
    lost_ids = set(cluster.ids(cluster.in_region(region)))
    ops = pending_ops(doc)
    if ops and not any(
        op["operation"] in FORCE_OPERATIONS and op["brokerId"] in lost_ids | set(ids) for op in ops
    ):
        return failed(
            f"{describe_pending(doc)}. It blocks the forced removal (the API answers 409) "
            f"and may never finish without {region}: let it finish or cancel it first",
            "refused to fail over",
        )
    note = describe_pending(doc) if ops else "no change pending"
    return done(f"{seen}; {note}; configuration version {doc.get('version')}", "checked")


@step("fence the lost region (stop whatever of it still runs)", acts=True)
def fence_region(
    cluster: Cluster,
    region: str,
    *,
    control: Control | None = None,
    dry_run: bool = False,
    approve: Callable[[str], bool] = lambda q: False,
    timeout: float = FENCE_TIMEOUT,
) -> Outcome:
    lost = cluster.in_region(region)
    answering = answering_ports(lost)
    if not answering:
        return skipped(f"nothing of {region} answers from here", "nothing to stop")
    running = [b for b in lost if any(p.startswith(f"broker {b.node_id} ") for p in answering)]
    ids = ids_text(b.node_id for b in running)
    if control is None:
        return skipped(
            f"WARNING {region} still answers ({'; '.join(answering)}) and no process control "
            f"is configured to stop brokers {ids}",
            "NOT fenced: stop them by hand, or they may come back with a stale configuration",
        )
    if dry_run:
        return skipped(f"{'; '.join(answering)} answer", f"dry run: would stop brokers {ids}")
    if not approve(f"Stop brokers {ids} of {region}?"):
        return failed("the operator did not confirm stopping them", "stopped nothing")
    did = [control.stop(b) for b in running]
    wait_until(
        lambda: (not (a := answering_ports(lost)), "; ".join(a) or "nothing answers"),
        timeout,
        f"{region} to stop answering",
    )
    return done(f"{'; '.join(answering)} answered", "; ".join(did) + "; nothing answers now")


@step("force-remove the lost region's brokers", acts=True)
def force_remove(
    cluster: Cluster,
    region: str,
    *,
    dry_run: bool = False,
    override_reachable: bool = False,
    api: str = DEFAULT_FORM,
    approve: Callable[[str], bool] = lambda q: False,
) -> Outcome:
    lost_ids = cluster.ids(cluster.in_region(region))
    survivors = cluster.outside(region)
    broker, mapi, doc = first_answering(cluster, survivors, api)
    current = members(doc)
    still = [i for i in lost_ids if i in current]
    if not still:
        return skipped(
            f"brokers {ids_text(lost_ids)} of {region} are not members any more "
            f"(last: {describe_change(doc.get('lastChange'))})",
            "nothing to remove",
        )
    ops = pending_ops(doc)
    if any(op["operation"] == "BROKER_FORCE_REMOVE" and op["brokerId"] in still for op in ops):
        change = doc["pendingChange"]["id"]
        return skipped(
            f"{describe_pending(doc)}: the forced removal of {ids_text(still)} is under way",
            "not sent again",
            changeId=change,
        )
    answering = answering_ports(cluster.in_region(region))
    if answering and not override_reachable:
        return failed(
            f"refusing to force-remove {region}: it answers ({'; '.join(answering)}). "
            f"Only with override_reachable ({OVERRIDE}) and only if you are sure",
            "removed nothing",
        )
    retained = [i for i in cluster.ids(survivors) if i in current]
    proposal = mapi.force_remove(still, retained, dry_run=True, allow_reachable=override_reachable)
    planned = proposal.get("plannedChanges", [])
    _check_plan(planned, set(still), set(retained))
    lines = format_operations(planned)
    saw = (
        f"brokers {ids_text(still)} of {region} are members; the survivors "
        f"{ids_text(retained)} answer (asked broker {broker.node_id}, API {api})"
    )
    if dry_run:
        return skipped(
            saw,
            "dry run: the API's own plan, not applied:\n" + "\n".join(f"  {ln}" for ln in lines),
            plannedChanges=planned,
        )
    if not approve(
        f"Force-remove brokers {ids_text(still)} of {region}, keeping {ids_text(retained)}? "
        "This cannot be undone except by a failback"
    ):
        return failed(saw + "; the operator did not confirm", "removed nothing")
    answer = mapi.force_remove(still, retained, allow_reachable=override_reachable)
    change = answer.get("changeId")
    return done(
        saw,
        f"change {change} accepted: {count_operations(planned)}",
        changeId=change,
        plannedChanges=planned,
    )


def _check_plan(planned: list[dict], removing: set[int], retained: set[int]) -> None:
    """The plan must remove exactly the lost brokers and keep every replica set inside the
    survivors: the guard against forcing out the surviving region by a mistake."""
    removed = {op["brokerId"] for op in planned if op["operation"] == "BROKER_FORCE_REMOVE"}
    kept = {b for op in planned for b in op.get("brokers") or ()}
    if removed != removing or not kept <= retained:
        raise StepFailed(
            f"the API's plan removes brokers {ids_text(removed)} and keeps replicas on "
            f"{ids_text(kept)}, but the lost region has {ids_text(removing)} and the "
            f"survivors are {ids_text(retained)}: refusing to apply it",
            "removed nothing",
        )


@step("disable the lost region's exporter", acts=True)
def disable_exporter(
    cluster: Cluster, region: str, *, dry_run: bool = False, timeout: float = CHANGE_TIMEOUT
) -> Outcome:
    exporter = cluster.exporter_of(region)
    survivors = cluster.outside(region)
    _, mapi, _ = first_answering(cluster, survivors)
    states = mapi.exporters()
    if exporter not in states:
        return skipped(f"no exporter {exporter!r} is configured (exporters: {states})")
    if states[exporter] == "DISABLED":
        return skipped(f"exporter {exporter} is DISABLED")
    if dry_run:
        proposal = mapi.disable_exporter(exporter, dry_run=True)
        ops = count_operations(proposal.get("plannedChanges", []))
        return skipped(f"exporter {exporter} is {states[exporter]}", f"dry run: would apply {ops}")
    change = mapi.disable_exporter(exporter)["changeId"]
    seen = wait_until(
        lambda: exporter_state_everywhere(cluster, survivors, exporter, "DISABLED", change),
        timeout,
        f"exporter {exporter} to be DISABLED on every survivor",
    )
    return done(
        f"exporter {exporter} was {states[exporter]}", f"disabled (change {change}); {seen}"
    )


def run_failover(
    cluster: Cluster,
    lost_region: str,
    *,
    dry_run: bool = False,
    yes: bool = False,
    confirm: Callable[[str], bool] | None = None,
    api: str = DEFAULT_FORM,
    progress: Progress | None = None,
    override_reachable: bool = False,
    control: Control | None = None,
    until: str | None = None,
    detect_timeout: float = DETECT_TIMEOUT,
    change_timeout: float = CHANGE_TIMEOUT,
) -> list[StepResult]:
    """Run the failover steps in order; stop at the first failed one (or after ``until``).

    Destructive steps (fence_region, force_remove) ask ``confirm(question)`` unless
    ``yes``; without either they refuse. ``dry_run`` changes nothing and shows the
    API's own plan. A re-run resumes: finished steps find their work done.
    """
    check_form(api)
    cluster.check_region(lost_region)
    approve = ask_or_refuse(yes, confirm)
    survivors = cluster.outside(lost_region)
    lost_ids = set(cluster.ids(cluster.in_region(lost_region)))
    learnt: dict[str, int | None] = {}

    def remove() -> StepResult:
        result = force_remove(
            cluster,
            lost_region,
            dry_run=dry_run,
            override_reachable=override_reachable,
            api=api,
            approve=approve,
        )
        learnt["change"] = result.data.get("changeId")
        return result

    def removal_applied(doc: dict) -> bool:
        return not lost_ids & set(members(doc))

    steps = plan(
        (
            confirm_region_lost,
            lambda: confirm_region_lost(
                cluster, lost_region, override_reachable=override_reachable, timeout=detect_timeout
            ),
        ),
        (check_survivors_healthy, lambda: check_survivors_healthy(cluster, lost_region)),
        (
            fence_region,
            lambda: fence_region(
                cluster, lost_region, control=control, dry_run=dry_run, approve=approve
            ),
        ),
        (force_remove, remove),
        (
            wait_for_change_completed,
            lambda: (
                dry(wait_for_change_completed)
                if dry_run
                else wait_for_change_completed(
                    cluster,
                    survivors,
                    change_id=learnt.get("change"),
                    holds=removal_applied,
                    timeout=change_timeout,
                )
            ),
        ),
        (
            wait_for_leaders,
            lambda: dry(wait_for_leaders) if dry_run else wait_for_leaders(cluster, survivors),
        ),
        (
            disable_exporter,
            lambda: disable_exporter(cluster, lost_region, dry_run=dry_run, timeout=change_timeout),
        ),
        (
            verify_writes,
            lambda: dry(verify_writes) if dry_run else verify_writes(cluster, survivors),
        ),
    )
    return run_procedure(steps, progress, until)


def failover_seconds(results: list[StepResult]) -> float | None:
    """From the start of the run to the first acknowledged write on every partition."""
    total = 0.0
    for r in results:
        if r.name == "verify_writes" and r.status == "done":
            return total + max(r.data.get("first_ack_seconds", {0: r.seconds}).values())
        total += r.seconds
    return None
