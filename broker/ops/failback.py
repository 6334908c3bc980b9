"""Region failback: bring a recreated region back (DESIGN section 2, Camunda 8.6-8.8).

After a failover the survivors hold every partition with RF/2 replicas. When
the region is rebuilt (fresh disks), failback restores RF and placement:

1. ``start_region_brokers``: its brokers start and join with no partitions;
2. ``pause_exporting``: so the surviving sink stops moving;
3. ``restore_export_sink``: copy the surviving exporter's file sink into the
   recreated region's sink directory (``export_sinks``: the inventory's
   ``broker_export_sinks``, or the shared ``broker_export_dir`` of brokers that all
   run on this machine, as in ``inventories/local``);
4. ``enable_exporter``: the region's exporter, initialized from the survivor's
   position (so it continues exactly where the copied sink ends);
5. ``resume_exporting``;
6. ``add_brokers_back``: all brokers, the full replication factor;
7. ``wait_for_change_completed``, 8. ``wait_caught_up``: every replica at its
   leader's position; 9. ``verify_placement``: RF replicas, RF/2 per region.

Steps 2-5 are skipped once the region's exporter is ENABLED: a re-run after a
complete failback pauses nothing.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from broker.ops.api import DEFAULT_FORM, check_form, count_operations, format_operations
from broker.ops.checks import (
    CATCH_UP_TIMEOUT,
    CHANGE_TIMEOUT,
    verify_placement,
    wait_caught_up,
    wait_for_change_completed,
)
from broker.ops.control import Control
from broker.ops.inventory import Broker, Cluster
from broker.ops.steps import (
    Outcome,
    Progress,
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
from broker.ops.view import (
    alive_map,
    api_of,
    describe_pending,
    docs_from,
    exporter_state_everywhere,
    first_answering,
    ids_text,
    members,
    pending_ops,
    replica_sets,
)

__all__ = [
    "add_brokers_back",
    "enable_exporter",
    "export_sinks",
    "pause_exporting",
    "restore_export_sink",
    "resume_exporting",
    "run_failback",
    "start_region_brokers",
    "verify_placement",
    "wait_caught_up",
    "wait_for_change_completed",
]

START_TIMEOUT = 60.0
SINK_TIMEOUT = 30.0
COPY_ATTEMPTS = 3


# --- 1. brokers ---------------------------------------------------------------------------


@step("start the recreated region's brokers", acts=True)
def start_region_brokers(
    cluster: Cluster,
    region: str,
    *,
    start: Callable[[Broker], str] | None = None,
    dry_run: bool = False,
    timeout: float = START_TIMEOUT,
) -> Outcome:
    brokers = cluster.in_region(region)
    ids = cluster.ids(brokers)
    down = [b for b in brokers if not api_of(cluster, b).health("startup")]

    def up_and_seen() -> tuple[bool, str]:
        not_up = [b.node_id for b in brokers if not api_of(cluster, b).health("startup")]
        if not_up:
            return False, f"brokers {ids_text(not_up)} have not started"
        _, api, _ = first_answering(cluster, cluster.outside(region))
        alive = alive_map(api.topology())
        unseen = [i for i in ids if not alive.get(i)]
        if unseen:
            return False, f"the survivors do not see brokers {ids_text(unseen)} yet"
        return True, f"brokers {ids_text(ids)} of {region} are up and seen by the survivors"

    if not down:
        seen = wait_until(up_and_seen, timeout, f"the survivors to see {region}")
        return skipped(seen, "nothing to start")
    need = ids_text(b.node_id for b in down)
    if dry_run:
        return skipped(f"brokers {need} of {region} are not running", "dry run: would start them")
    if start is None:
        return failed(
            f"brokers {need} of {region} are not running, and no way to start them is configured",
            "start them (`broker start --config ...`, or systemctl start broker) and re-run",
        )
    did = [start(b) for b in down]
    seen = wait_until(up_and_seen, timeout, f"brokers {need} to start and be seen")
    return done(f"brokers {need} of {region} were not running", "; ".join(did) + f"; {seen}")


# --- 2-5. the export sink -----------------------------------------------------------------


def _exporters(cluster: Cluster) -> dict[str, str]:
    _, api, _ = first_answering(cluster, cluster.brokers)
    return api.exporters()


def _paused_on(cluster: Cluster) -> tuple[list[int], list[int]]:
    """(brokers that see exporting paused, brokers that do not) among those answering."""
    paused, running = [], []
    for node, doc in docs_from(cluster, cluster.brokers).items():
        if isinstance(doc, dict):
            (paused if doc.get("exportingPaused") else running).append(node)
    return paused, running


def _no_sink_work(cluster: Cluster, region: str) -> str | None:
    """Why steps 2-5 have nothing to do, or None."""
    exporter = cluster.exporter_of(region)
    states = _exporters(cluster)
    if exporter not in states:
        return f"no exporter {exporter!r} is configured (exporters: {states})"
    if states[exporter] == "ENABLED":
        return f"exporter {exporter} is ENABLED: its sink was restored and it was enabled before"
    return None


@step("pause exporting", acts=True)
def pause_exporting(
    cluster: Cluster, region: str, *, dry_run: bool = False, timeout: float = CHANGE_TIMEOUT
) -> Outcome:
    why = _no_sink_work(cluster, region)
    if why:
        return skipped(why, "no pause needed")
    paused, running = _paused_on(cluster)
    if not running:
        return skipped(f"exporting is paused on brokers {ids_text(paused)}")
    if dry_run:
        return skipped(f"exporting runs on {ids_text(running)}", "dry run: would pause it")
    _, api, _ = first_answering(cluster, cluster.brokers)
    api.pause_exporting()

    def everywhere() -> tuple[bool, str]:
        paused, running = _paused_on(cluster)
        return not running, f"paused on {ids_text(paused)}, running on {ids_text(running)}"

    seen = wait_until(everywhere, timeout, "every broker to see exporting paused")
    return done(f"exporting ran on brokers {ids_text(running)}", f"paused it; {seen}")


def sink_positions(directory: str | os.PathLike) -> dict[int, int]:
    """Partition -> the last position a file sink holds (``partition-<id>.jsonl``)."""
    out = {}
    directory = Path(directory)
    if not directory.is_dir():
        return out
    for f in sorted(directory.glob("partition-*.jsonl")):
        last = _last_line(f)
        if last:
            out[int(f.stem.removeprefix("partition-"))] = int(json.loads(last)["position"])
    return out


def _last_line(path: Path) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 65536))
        lines = f.read().splitlines()
    return lines[-1].decode() if lines else ""


def exporter_positions(cluster: Cluster, exporter: str) -> dict[int, int]:
    """Partition -> the highest position of ``exporter`` any replica has committed."""
    out: dict[int, int] = {}
    for doc in docs_from(cluster, cluster.brokers, "partitions").values():
        if isinstance(doc, dict):
            for pid, info in doc.items():
                pos = (info.get("exporters") or {}).get(exporter) or 0
                out[int(pid)] = max(out.get(int(pid), 0), pos)
    return out


def same_tree(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Do two sink directories hold the same files with the same bytes?"""
    if not (os.path.isdir(a) and os.path.isdir(b)):
        return False
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    return not mismatch and not errors


def copy_sink(source: str, target: str) -> str | None:
    """Replace ``target`` with a copy of ``source``; an old non-empty target is moved aside
    (returned), never deleted. The copy appears under its name only once complete."""
    staging = f"{target}.restoring"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    kept = None
    if os.path.isdir(target) and os.listdir(target):
        kept = f"{target}.before-restore-{time.strftime('%Y%m%dT%H%M%S')}"
        os.rename(target, kept)
    elif os.path.isdir(target):
        os.rmdir(target)
    os.rename(staging, target)
    return kept


def export_sinks(cluster: Cluster) -> dict[str, str]:
    """Exporter id -> the directory of its file sink, as this controller sees it.

    The inventory's ``broker_export_sinks`` when it names them (each exporter writes one
    sink that every broker and the controller see, e.g. a shared mount: the lab's layout).
    Otherwise, when every broker runs on this machine and all of them share one
    ``broker_export_dir`` (``inventories/local``), that directory holds one shared sink
    per exporter: ``<broker_export_dir>/<exporter id>``, exactly where the role points
    each file exporter. Brokers on other hosts each write their own disk: without
    ``broker_export_sinks`` no sink is known (the failback step then says so).
    """
    if cluster.sinks:
        return {str(k): str(v) for k, v in cluster.sinks.items()}
    dirs = {str(b.vars.get("broker_export_dir") or "") for b in cluster.brokers}
    if len(dirs) != 1 or not all(b.is_local for b in cluster.brokers):
        return {}
    (root,) = dirs
    if not root or "{{" in root:
        return {}
    exporters = [cluster.exporter_of(r) for r in cluster.regions]
    return {e: os.path.join(root, e) for e in exporters}


@step("restore the region's export sink from the surviving one", acts=True)
def restore_export_sink(
    cluster: Cluster,
    region: str,
    *,
    sink_restored: bool = False,
    dry_run: bool = False,
    approve: Callable[[str], bool] = lambda q: False,
    timeout: float = SINK_TIMEOUT,
) -> Outcome:
    why = _no_sink_work(cluster, region)
    if why:
        return skipped(why, "nothing to restore")
    if sink_restored:
        return skipped("the operator says the sink was restored (sink_restored)", "copied nothing")
    target, source = cluster.exporter_of(region), cluster.exporter_of(cluster.other_region(region))
    sinks = export_sinks(cluster)
    src, dst = sinks.get(source), sinks.get(target)
    if not src or not dst:
        return failed(
            f"no file sink directory is known for exporter {source if not src else target} "
            f"(inventory var broker_export_sinks: {{{source}: DIR, {target}: DIR}}, "
            "or one broker_export_dir shared by brokers that all run on this machine)",
            f"copy {source}'s sink to {target}'s by hand, then re-run with sink_restored",
        )
    if dry_run:
        return skipped(
            f"{source}'s sink is {src}; {target}'s is {dst}",
            f"dry run: would replace {dst} with a copy of {src}, with exporting paused",
        )
    _, running = _paused_on(cluster)
    if running:
        return failed(f"exporting still runs on brokers {ids_text(running)}", "copied nothing")
    committed = exporter_positions(cluster, source)

    def source_settled() -> tuple[bool, str]:
        have = sink_positions(src)
        short = [
            f"p{p} {have.get(p, 0)}<{pos}"
            for p, pos in sorted(committed.items())
            if have.get(p, 0) < pos
        ]
        return not short, ("behind its exporter: " + ", ".join(short)) if short else "complete"

    wait_until(source_settled, timeout, f"{src} to hold every exported record")
    held = ", ".join(f"p{p}@{pos}" for p, pos in sorted(sink_positions(src).items()))
    saw = f"{source}'s sink {src} holds {held or 'nothing'} (exporting paused)"
    if same_tree(src, dst):
        return skipped(saw + f"; {dst} is an exact copy already", "copied nothing")
    if not approve(f"Replace {target}'s sink {dst} with a copy of {source}'s sink {src}?"):
        return failed(saw + "; the operator did not confirm", "copied nothing")
    kept = copy_sink(src, dst)
    for _ in range(COPY_ATTEMPTS - 1):  # a last in-flight batch may land while we copy
        if same_tree(src, dst):
            break
        copy_sink(src, dst)
    if not same_tree(src, dst):
        return failed(saw + f"; {src} keeps changing: is exporting really paused?", "copied")
    return done(saw, f"copied it to {dst}" + (f"; the old contents are in {kept}" if kept else ""))


@step("enable the region's exporter from the surviving one's position", acts=True)
def enable_exporter(
    cluster: Cluster, region: str, *, dry_run: bool = False, timeout: float = CHANGE_TIMEOUT
) -> Outcome:
    why = _no_sink_work(cluster, region)
    if why:
        return skipped(why, "nothing to enable")
    target, source = cluster.exporter_of(region), cluster.exporter_of(cluster.other_region(region))
    _, api, _ = first_answering(cluster, cluster.brokers)
    if dry_run:
        proposal = api.enable_exporter(target, initialize_from=source, dry_run=True)
        ops = count_operations(proposal.get("plannedChanges", []))
        return skipped(f"exporter {target} is DISABLED", f"dry run: would apply {ops}")
    change = api.enable_exporter(target, initialize_from=source)["changeId"]
    running = [b for b in cluster.brokers if api_of(cluster, b).health("startup")]
    seen = wait_until(
        lambda: exporter_state_everywhere(cluster, running, target, "ENABLED", change),
        timeout,
        f"exporter {target} to be ENABLED everywhere",
    )
    return done(
        f"exporter {target} was DISABLED",
        f"enabled with initializeFrom={source} (change {change}); {seen}",
    )


@step("resume exporting", acts=True)
def resume_exporting(
    cluster: Cluster, region: str, *, dry_run: bool = False, timeout: float = CHANGE_TIMEOUT
) -> Outcome:
    paused, running = _paused_on(cluster)
    if not paused:
        return skipped(f"exporting runs on brokers {ids_text(running)}")
    if dry_run:
        return skipped(f"exporting is paused on {ids_text(paused)}", "dry run: would resume it")
    _, api, _ = first_answering(cluster, cluster.brokers)
    api.resume_exporting()

    def everywhere() -> tuple[bool, str]:
        paused, running = _paused_on(cluster)
        return not paused, f"running on {ids_text(running)}, paused on {ids_text(paused)}"

    seen = wait_until(everywhere, timeout, "every broker to see exporting resumed")
    return done(f"exporting was paused on brokers {ids_text(paused)}", f"resumed it; {seen}")


# --- 6. the brokers back into the replica sets ------------------------------------------


def restored(cluster: Cluster, replication_factor: int) -> Callable[[dict], bool]:
    """Does a cluster document show every broker a member and RF replicas everywhere?"""

    def holds(doc: dict) -> bool:
        sets = replica_sets(doc)
        return (
            set(cluster.ids()) <= set(members(doc))
            and len(sets) >= cluster.partitions
            and all(len(r) == replication_factor for r in sets.values())
        )

    return holds


@step("add the region's brokers back with the full replication factor", acts=True)
def add_brokers_back(
    cluster: Cluster,
    region: str,
    *,
    replication_factor: int | None = None,
    api: str = DEFAULT_FORM,
    dry_run: bool = False,
) -> Outcome:
    rf = replication_factor or cluster.replication_factor
    added = cluster.ids(cluster.in_region(region))
    broker, mapi, doc = first_answering(cluster, cluster.outside(region), api)
    sets = replica_sets(doc)
    saw = f"members {ids_text(members(doc))}; replicas per partition " + ", ".join(
        f"p{p}:{len(r)}" for p, r in sorted(sets.items())
    )
    if restored(cluster, rf)(doc):
        return skipped(saw, "nothing to add")
    ops = pending_ops(doc)
    if any(
        op["operation"] in ("BROKER_ADD", "PARTITION_JOIN") and op["brokerId"] in added
        for op in ops
    ):
        change = doc["pendingChange"]["id"]
        return skipped(f"{describe_pending(doc)}: adding {region} is under way", changeId=change)
    if ops:
        return failed(f"{describe_pending(doc)}; wait for it to finish first", "added nothing")
    proposal = mapi.add_brokers(added, cluster.ids(), rf, dry_run=True)
    lines = format_operations(proposal.get("plannedChanges", []))
    if dry_run:
        return skipped(
            saw,
            "dry run: the API's own plan, not applied:\n" + "\n".join(f"  {ln}" for ln in lines),
            plannedChanges=proposal.get("plannedChanges", []),
        )
    answer = mapi.add_brokers(added, cluster.ids(), rf)
    change = answer.get("changeId")
    return done(
        saw + f" (asked broker {broker.node_id}, API {api})",
        f"change {change} accepted: {count_operations(answer.get('plannedChanges', []))}; RF {rf}",
        changeId=change,
    )


def run_failback(
    cluster: Cluster,
    region: str,
    *,
    dry_run: bool = False,
    yes: bool = False,
    confirm: Callable[[str], bool] | None = None,
    api: str = DEFAULT_FORM,
    progress: Progress | None = None,
    control: Control | None = None,
    start: Callable[[Broker], str] | None = None,
    sink_restored: bool = False,
    until: str | None = None,
    change_timeout: float = CHANGE_TIMEOUT,
    catch_up_timeout: float = CATCH_UP_TIMEOUT,
) -> list[StepResult]:
    """Run the failback steps in order; stop at the first failed one (or after ``until``).

    ``start`` (or ``control.start``) starts one broker of the recreated region. The
    sink copy overwrites the region's sink directory, so it asks ``confirm`` unless
    ``yes``. A re-run resumes: finished steps find their work done.
    """
    check_form(api)
    cluster.check_region(region)
    approve = ask_or_refuse(yes, confirm)
    start = start or (control.start if control else None)
    everyone = list(cluster.brokers)
    rf = cluster.replication_factor
    learnt: dict[str, int | None] = {}

    def add_back() -> StepResult:
        result = add_brokers_back(cluster, region, replication_factor=rf, api=api, dry_run=dry_run)
        learnt["change"] = result.data.get("changeId")
        return result

    steps = plan(
        (
            start_region_brokers,
            lambda: start_region_brokers(cluster, region, start=start, dry_run=dry_run),
        ),
        (pause_exporting, lambda: pause_exporting(cluster, region, dry_run=dry_run)),
        (
            restore_export_sink,
            lambda: restore_export_sink(
                cluster, region, sink_restored=sink_restored, dry_run=dry_run, approve=approve
            ),
        ),
        (enable_exporter, lambda: enable_exporter(cluster, region, dry_run=dry_run)),
        (resume_exporting, lambda: resume_exporting(cluster, region, dry_run=dry_run)),
        (add_brokers_back, add_back),
        (
            wait_for_change_completed,
            lambda: (
                dry(wait_for_change_completed)
                if dry_run
                else wait_for_change_completed(
                    cluster,
                    everyone,
                    change_id=learnt.get("change"),
                    holds=restored(cluster, rf),
                    timeout=change_timeout,
                )
            ),
        ),
        (
            wait_caught_up,
            lambda: (
                dry(wait_caught_up)
                if dry_run
                else wait_caught_up(cluster, everyone, timeout=catch_up_timeout)
            ),
        ),
        (
            verify_placement,
            lambda: (
                dry(verify_placement)
                if dry_run
                else verify_placement(cluster, everyone, replication_factor=rf)
            ),
        ),
    )
    return run_procedure(steps, progress, until)
