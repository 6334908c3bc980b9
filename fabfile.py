"""Operations tasks for the dual-region broker cluster: a thin layer over broker.ops.

    fab -l
    fab status                                   # inventories/local/hosts.yml
    fab --inventory inventories/lab/hosts.yml status
    fab failover --lost-region region1 --dry-run # the API's own plan, nothing changed
    fab failover --lost-region region1           # asks before destructive steps
    fab failback --region region1
    fab drill --region region1                   # lose, fail over, fail back, under load
    fab isolate-region --region region1          # an inter-region cut (lab/real hosts)
    fab heal-region --region region1
    fab rolling-restart                          # one broker at a time, region by region
    fab stop-region --region region1 --dry-run   # every task that changes things has --dry-run
    fab backup                                   # a backup of every partition (next free id)
    fab scale --size 4                           # the first 4 brokers of the inventory stay
    fab upgrade --version 0.1.1                  # switch to a release staged on the hosts
    fab verify --json                            # any task: one JSON document on stdout

The inventory is ``--inventory PATH`` (before or after the task name), else the
``BROKER_INVENTORY`` environment variable, else ``inventories/local/hosts.yml``; a
file or a directory, read by ansible-core as ansible-playbook reads it. Vault-encrypted
values need ``ANSIBLE_VAULT_PASSWORD_FILE`` or ``fab --vault-password-file FILE task``.
Every task that changes the cluster writes a JSON audit record under ``var/ops/audit/`` (or
``$BROKER_OPS_AUDIT_DIR``). With ``--json`` a task prints its result (every step, the outcome,
its figures) as one JSON document on stdout, for scripts; progress and tables go to stderr.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from fabric import task
from invoke.exceptions import Exit
from rich.console import Console

from broker.ops import InventoryControl, InventoryError, load_inventory
from broker.ops.api import API_FORMS, DEFAULT_FORM, ApiError
from broker.ops.backup import BACKUP_STEPS, run_backup
from broker.ops.drill import DRILL_STEPS, print_drill_figures, run_drill
from broker.ops.failback import run_failback
from broker.ops.failover import failover_seconds, run_failover
from broker.ops.isolation import run_heal, run_isolate
from broker.ops.regions import (
    dry_run_drill,
    dry_run_rolling_restart,
    run_start_region,
    run_stop_region,
)
from broker.ops.report import ConsoleProgress, audit_record, print_summary, write_audit
from broker.ops.rolling import restart_order, run_rolling_restart
from broker.ops.scale import SCALE_STEPS, run_scale
from broker.ops.status import VERIFY_STEPS, print_status, run_verify
from broker.ops.steps import StepFailed
from broker.ops.upgrade import DEFAULT_MAX_LAG, run_upgrade

PROJECT = Path(__file__).resolve().parent
DEFAULT_INVENTORY = PROJECT / "inventories" / "local" / "hosts.yml"
AUDIT_DIR = Path(os.environ.get("BROKER_OPS_AUDIT_DIR") or PROJECT / "var" / "ops" / "audit")
FAILOVER_STEPS = 8
FAILBACK_STEPS = 9
console = Console()
progress_console = Console(stderr=True)  # with --json, stdout carries the document alone
JSON_HELP = "print the result as one JSON document on stdout (progress goes to stderr)"


def _console(json_: bool) -> Console:
    return progress_console if json_ else console


def _print_json(doc) -> None:
    print(json.dumps(doc, indent=2, default=str))


def _take_leading_inventory_flag() -> str | None:
    """``fab --inventory PATH [--vault-password-file FILE] task``: Fabric has no per-project
    core flags, so these are taken off the command line (before the first task name) ahead
    of task parsing. The vault password file goes to ``ANSIBLE_VAULT_PASSWORD_FILE``, where
    the inventory reader, and every command a runbook runs, find it."""
    try:
        from fabric.main import program
    except ImportError:
        return None
    args = getattr(getattr(program, "core", None), "unparsed", None)
    if not args:
        return None
    taken: dict[str, str] = {}
    while args and args[0].startswith("--"):
        name, sep, value = args[0].partition("=")
        if name not in ("--inventory", "--vault-password-file"):
            break
        if sep:
            del args[0]
        elif len(args) > 1:
            value = args[1]
            del args[:2]
        else:
            break
        taken[name] = value
    if "--vault-password-file" in taken:
        os.environ["ANSIBLE_VAULT_PASSWORD_FILE"] = os.path.abspath(taken["--vault-password-file"])
    return taken.get("--inventory")


LEADING_INVENTORY = _take_leading_inventory_flag()
INVENTORY_HELP = (
    "inventory file or directory (default: $BROKER_INVENTORY, else inventories/local/hosts.yml); "
    "vault-encrypted values need $ANSIBLE_VAULT_PASSWORD_FILE or a leading "
    "`fab --vault-password-file FILE`"
)


def _cluster(inventory: str | None):
    path = inventory or LEADING_INVENTORY or os.environ.get("BROKER_INVENTORY") or DEFAULT_INVENTORY
    try:
        return load_inventory(path)
    except InventoryError as exc:
        raise Exit(f"fab: {exc}", code=2) from None


def _region(cluster, region: str) -> str:
    try:
        return cluster.check_region(region)
    except InventoryError as exc:
        raise Exit(f"fab: {exc}", code=2) from None


def _api_form(api: str) -> str:
    if api not in API_FORMS:
        raise Exit(f"fab: --api must be one of {', '.join(API_FORMS)}, not {api!r}", code=2)
    return api


def _typed_confirmation(word: str, json_: bool = False):
    """Destructive steps ask the operator to type ``word`` (the region); no terminal: no."""
    out = _console(json_)

    def confirm(question: str) -> bool:
        if not sys.stdin.isatty():
            out.print(f"[bold red]{question}[/bold red]\nno terminal to confirm on: use --yes")
            return False
        out.print(f"[bold yellow]{question}[/bold yellow]")
        out.print(f"Type {word!r} to go ahead, anything else stops: ", end="")
        return input().strip() == word

    return confirm


def _finish(
    procedure: str,
    region: str,
    results,
    total: int,
    started,
    options,
    cluster,
    json_: bool = False,
    extra: dict | None = None,
    audit: bool = True,
    title: str | None = None,
) -> dict:
    """Summary table, audit record (``audit``: the task changes things), and with
    ``json_`` the record (plus ``extra`` figures) as the one document on stdout."""
    out = _console(json_)
    title = title or f"{procedure} of {region}"
    print_summary(results, total, title, out, dry_run=options.get("dryRun", False))
    record = audit_record(
        procedure,
        region,
        results,
        total,
        started_at=started,
        options=options,
        inventory=cluster.source,
    )
    record.update(extra or {})
    if audit:
        path = write_audit(record, AUDIT_DIR)
        out.print(f"audit record: {path}")
    if json_:
        _print_json(record)
    return record


def _exit_unless_completed(record: dict) -> None:
    if record["outcome"] != "completed":
        raise Exit(code=1)


@task(auto_shortflags=False, help={"inventory": INVENTORY_HELP, "json": JSON_HELP})
def status(c, inventory=None, json_=False):
    """Show brokers, leaders, placement, exporters and any pending topology change."""
    cluster = _cluster(inventory)
    state = print_status(cluster, _console(json_))
    if json_:
        _print_json(state)
    if not state["answering"]:
        raise Exit(code=1)


@task(auto_shortflags=False, help={"inventory": INVENTORY_HELP, "json": JSON_HELP})
def verify(c, inventory=None, json_=False):
    """Verify leaders, RF and per-region placement, and a write+read on every partition."""
    cluster = _cluster(inventory)
    started = datetime.now(UTC)
    results = run_verify(cluster, progress=ConsoleProgress(_console(json_)))
    title = f"verify {cluster.name}"
    _finish(
        "verify",
        "all",
        results,
        VERIFY_STEPS,
        started,
        {},
        cluster,
        json_,
        audit=False,
        title=title,
    )
    if len(results) < VERIFY_STEPS or results[-1].failed:
        raise Exit(code=1)


@task(
    auto_shortflags=False,
    help={
        "lost-region": "the region that is lost (e.g. region1)",
        "dry-run": "change nothing; show the API's own plan",
        "yes": "do not ask before destructive steps",
        "api": f"management API form: {' or '.join(API_FORMS)} (default {DEFAULT_FORM})",
        "allow-removing-reachable-brokers": "DANGER: force out a region that still answers",
        "inventory": INVENTORY_HELP,
        "json": JSON_HELP,
    },
)
def failover(
    c,
    lost_region,
    dry_run=False,
    yes=False,
    api=DEFAULT_FORM,
    allow_removing_reachable_brokers=False,
    inventory=None,
    json_=False,
):
    """Fail over from a lost region: confirm, force-remove it, disable its exporter, verify."""
    cluster = _cluster(inventory)
    started = datetime.now(UTC)
    results = run_failover(
        cluster,
        _region(cluster, lost_region),
        dry_run=dry_run,
        yes=yes,
        confirm=_typed_confirmation(lost_region, json_),
        api=_api_form(api),
        progress=ConsoleProgress(_console(json_)),
        override_reachable=allow_removing_reachable_brokers,
        control=InventoryControl(),
    )
    options = {"dryRun": dry_run, "yes": yes, "api": api}
    options["allowRemovingReachableBrokers"] = allow_removing_reachable_brokers
    seconds = failover_seconds(results)
    record = _finish(
        "failover",
        lost_region,
        results,
        FAILOVER_STEPS,
        started,
        options,
        cluster,
        json_,
        extra={"writableAfterSeconds": seconds},
    )
    if seconds is not None:
        _console(json_).print(
            f"every partition took a write {seconds:.1f}s after the failover started"
        )
    _exit_unless_completed(record)


@task(
    auto_shortflags=False,
    help={
        "region": "the recreated region to bring back (e.g. region1)",
        "dry-run": "change nothing; show the API's own plan",
        "yes": "do not ask before overwriting the region's export sink",
        "api": f"management API form: {' or '.join(API_FORMS)} (default {DEFAULT_FORM})",
        "sink-restored": "the region's export sink was restored by hand; do not copy it",
        "inventory": INVENTORY_HELP,
        "json": JSON_HELP,
    },
)
def failback(
    c,
    region,
    dry_run=False,
    yes=False,
    api=DEFAULT_FORM,
    sink_restored=False,
    inventory=None,
    json_=False,
):
    """Bring a recreated region back: start it, restore its exporter, add it back at full RF."""
    cluster = _cluster(inventory)
    started = datetime.now(UTC)
    results = run_failback(
        cluster,
        _region(cluster, region),
        dry_run=dry_run,
        yes=yes,
        confirm=_typed_confirmation(region, json_),
        api=_api_form(api),
        progress=ConsoleProgress(_console(json_)),
        control=InventoryControl(),
        sink_restored=sink_restored,
    )
    options = {"dryRun": dry_run, "yes": yes, "api": api, "sinkRestored": sink_restored}
    _exit_unless_completed(
        _finish("failback", region, results, FAILBACK_STEPS, started, options, cluster, json_)
    )


@task(
    auto_shortflags=False,
    help={
        "region": "the region to rehearse losing (e.g. region1)",
        "yes": "do not ask before killing the region",
        "api": f"management API form: {' or '.join(API_FORMS)} (default {DEFAULT_FORM})",
        "rate": "records per second of the write load (default 200)",
        "dry-run": "change nothing: check the cluster, say what each step would do",
        "inventory": INVENTORY_HELP,
        "json": JSON_HELP,
    },
)
def drill(
    c,
    region,
    yes=False,
    api=DEFAULT_FORM,
    rate=200.0,
    dry_run=False,
    inventory=None,
    json_=False,
):
    """Drill a region loss under load: kill+wipe it, fail over, fail back, check nothing lost."""
    cluster = _cluster(inventory)
    started = datetime.now(UTC)
    out = _console(json_)
    options = {"dryRun": dry_run, "yes": yes, "api": api, "rate": float(rate)}
    if dry_run:
        _api_form(api)
        results = dry_run_drill(
            cluster, _region(cluster, region), rate=float(rate), progress=ConsoleProgress(out)
        )
        record = _finish("drill", region, results, DRILL_STEPS, started, options, cluster, json_)
        _exit_unless_completed(record)
        return
    nested = ConsoleProgress(out, indent="        ")
    results, figures = run_drill(
        cluster,
        _region(cluster, region),
        control=InventoryControl(),
        yes=yes,
        confirm=_typed_confirmation(region, json_),
        api=_api_form(api),
        progress=ConsoleProgress(out),
        nested_progress=nested,
        rate=float(rate),
    )
    print_drill_figures(figures, out)
    record = _finish(
        "drill",
        region,
        results,
        DRILL_STEPS,
        started,
        options,
        cluster,
        json_,
        extra={"figures": figures},
    )
    _exit_unless_completed(record)


@task(
    auto_shortflags=False,
    help={
        "region": "the region to cut off from the other one",
        "dry-run": "change nothing; say what would be cut",
        "yes": "do not ask",
        "inventory": INVENTORY_HELP,
        "json": JSON_HELP,
    },
)
def isolate_region(c, region, dry_run=False, yes=False, inventory=None, json_=False):
    """Cut a region off from the other (nftables on its hosts); SSH from here keeps working."""
    cluster = _cluster(inventory)
    started = datetime.now(UTC)
    results = run_isolate(
        cluster,
        _region(cluster, region),
        dry_run=dry_run,
        yes=yes,
        confirm=_typed_confirmation(region, json_),
        progress=ConsoleProgress(_console(json_)),
    )
    options = {"dryRun": dry_run, "yes": yes}
    _exit_unless_completed(_finish("isolate", region, results, 1, started, options, cluster, json_))


@task(
    auto_shortflags=False,
    help={
        "region": "the region to reconnect",
        "dry-run": "change nothing",
        "inventory": INVENTORY_HELP,
        "json": JSON_HELP,
    },
)
def heal_region(c, region, dry_run=False, inventory=None, json_=False):
    """Remove the isolate-region cut: traffic between the regions flows again."""
    cluster = _cluster(inventory)
    started = datetime.now(UTC)
    results = run_heal(
        cluster,
        _region(cluster, region),
        dry_run=dry_run,
        progress=ConsoleProgress(_console(json_)),
    )
    options = {"dryRun": dry_run}
    _exit_unless_completed(_finish("heal", region, results, 1, started, options, cluster, json_))


@task(
    auto_shortflags=False,
    help={
        "region": "restart only this region's brokers (default: all, region by region)",
        "yes": "do not ask",
        "dry-run": "change nothing: check the cluster, list the restarts in their order",
        "inventory": INVENTORY_HELP,
        "json": JSON_HELP,
    },
)
def rolling_restart(c, region=None, yes=False, dry_run=False, inventory=None, json_=False):
    """Restart brokers one at a time, region by region, waiting for a whole cluster between."""
    cluster = _cluster(inventory)
    started = datetime.now(UTC)
    if region is not None:
        _region(cluster, region)
    order = restart_order(cluster, region)
    out = _console(json_)
    if dry_run:
        results = dry_run_rolling_restart(cluster, order, progress=ConsoleProgress(out))
    else:
        results = run_rolling_restart(
            cluster,
            control=InventoryControl(),
            region=region,
            yes=yes,
            confirm=_typed_confirmation(region or "all", json_),
            progress=ConsoleProgress(out),
        )
    total = 1 + len(order)
    options = {"dryRun": dry_run, "yes": yes}
    record = _finish(
        "rolling-restart", region or "all", results, total, started, options, cluster, json_
    )
    _exit_unless_completed(record)


def _region_procedure(name: str, run, region: str, yes: bool, dry_run: bool, inventory, json_):
    """Stop or start a region's brokers (``run``), with the audit record every mutating
    task writes."""
    cluster = _cluster(inventory)
    started = datetime.now(UTC)
    results = run(
        cluster,
        _region(cluster, region),
        control=InventoryControl(),
        dry_run=dry_run,
        yes=yes,
        confirm=_typed_confirmation(region, json_),
        progress=ConsoleProgress(_console(json_)),
    )
    total = len(cluster.in_region(region))
    options = {"dryRun": dry_run, "yes": yes}
    _exit_unless_completed(_finish(name, region, results, total, started, options, cluster, json_))


@task(
    auto_shortflags=False,
    help={
        "region": "region whose brokers to stop",
        "yes": "do not ask",
        "dry-run": "change nothing: say which brokers answer and what would stop them",
        "inventory": INVENTORY_HELP,
        "json": JSON_HELP,
    },
)
def stop_region(c, region, yes=False, dry_run=False, inventory=None, json_=False):
    """Stop every broker of a region (broker stop, or systemctl over SSH)."""
    _region_procedure("stop-region", run_stop_region, region, yes, dry_run, inventory, json_)


@task(
    auto_shortflags=False,
    help={
        "region": "region whose brokers to start",
        "yes": "do not ask (after a failover, only a rebuilt region with empty disks may start)",
        "dry-run": "change nothing: say which brokers answer and what would start the others",
        "inventory": INVENTORY_HELP,
        "json": JSON_HELP,
    },
)
def start_region(c, region, yes=False, dry_run=False, inventory=None, json_=False):
    """Start every broker of a region (broker start, or systemctl over SSH)."""
    _region_procedure("start-region", run_start_region, region, yes, dry_run, inventory, json_)


@task(
    auto_shortflags=False,
    iterable=["param"],
    help={
        "name": "failover, failback, rolling-restart, verify-placement (runbooks/), or a .md file",
        "lost-region": "fills {lost_region}",
        "region": "fills {region}",
        "api": "fills {api}: the management API form, 8.6 or 8.8",
        "param": "NAME=VALUE for any other placeholder (repeatable)",
        "yes": "run destructive steps without asking",
        "dry-run": "print every step with its commands filled in; run nothing",
        "from-step": "start at this step (resume once a failed step is sorted out)",
        "inventory": INVENTORY_HELP,
        "json": JSON_HELP,
    },
)
def runbook(
    c,
    name,
    lost_region=None,
    region=None,
    api=None,
    param=None,
    yes=False,
    dry_run=False,
    from_step=1,
    inventory=None,
    json_=False,
):
    """Walk through a runbook: each step shown, run and verified; destructive ones asked."""
    from broker.ops import runbook as runbooks

    named = {"lost-region": lost_region, "region": region, "api": api}
    given = {k.replace("-", "_"): v for k, v in named.items()}
    flags = [f"--{k} {v}" for k, v in named.items() if v]
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise Exit(f"fab: --param takes NAME=VALUE, not {item!r}", code=2)
        given[key.strip().replace("-", "_")] = value
        flags.append(f"--param {item}")
    path = os.path.abspath(
        inventory or LEADING_INVENTORY or os.environ.get("BROKER_INVENTORY") or DEFAULT_INVENTORY
    )
    resume = " ".join(["fab runbook", name, *flags, f"--inventory {path}"])
    try:
        book = runbooks.load(name)
        params = runbooks.resolve_parameters(book, given, inventory=path)
        out = _console(json_)
        confirm = runbooks.terminal_confirm(runbooks.confirmation_word(params), out)
        record = runbooks.execute(
            book,
            params,
            yes=yes,
            confirm=confirm,
            dry_run=dry_run,
            from_step=int(from_step),
            console=out,
            resume=resume,
        )
    except runbooks.RunbookError as exc:
        raise Exit(f"fab: {exc}", code=2) from None
    if json_:
        _print_json(record)
    if record["outcome"] not in ("completed", "dry run"):
        raise Exit(code=1)


@task(
    auto_shortflags=False,
    help={
        "backup-id": "the backup's id, above every earlier one (default: the next free id)",
        "dry-run": "change nothing: check the cluster, list the backups the store holds",
        "inventory": INVENTORY_HELP,
        "json": JSON_HELP,
    },
)
def backup(c, backup_id=None, dry_run=False, inventory=None, json_=False):
    """Back up every partition at a checkpoint (writes go on) and wait until it completes."""
    cluster = _cluster(inventory)
    started = datetime.now(UTC)
    if backup_id is not None and not str(backup_id).isdigit():
        raise Exit(f"fab: --backup-id must be a positive integer, not {backup_id!r}", code=2)
    try:
        results, used = run_backup(
            cluster,
            int(backup_id) if backup_id is not None else None,
            dry_run=dry_run,
            progress=ConsoleProgress(_console(json_)),
        )
    except StepFailed as exc:  # no management API answers: nothing was asked
        raise Exit(f"fab: {exc.saw}", code=1) from None
    except ApiError as exc:  # finding the next free id failed
        raise Exit(f"fab: {exc}", code=1) from None
    options = {"dryRun": dry_run, "backupId": used}
    checkpoints = next((r.data.get("checkpoints") for r in results if r.data), None)
    record = _finish(
        "backup",
        "all",
        results,
        BACKUP_STEPS,
        started,
        options,
        cluster,
        json_,
        extra={"backupId": used, "checkpoints": checkpoints},
    )
    _exit_unless_completed(record)


@task(
    auto_shortflags=False,
    help={
        "version": "the broker version to switch to; its release must be staged on every host",
        "yes": "do not ask",
        "dry-run": "change nothing: check the release and the data, list the switches",
        "max-lag": f"entries a switched broker's replicas may lag (default {DEFAULT_MAX_LAG})",
        "inventory": INVENTORY_HELP,
        "json": JSON_HELP,
    },
)
def upgrade(
    c,
    version,
    yes=False,
    dry_run=False,
    max_lag=DEFAULT_MAX_LAG,
    inventory=None,
    json_=False,
):
    """Switch brokers one at a time to a release staged on their hosts (upgrade or rollback)."""
    cluster = _cluster(inventory)
    started = datetime.now(UTC)
    if not str(max_lag).isdigit():
        raise Exit(f"fab: --max-lag must be a non-negative integer, not {max_lag!r}", code=2)
    results = run_upgrade(
        cluster,
        version,
        control=InventoryControl(),
        dry_run=dry_run,
        yes=yes,
        confirm=_typed_confirmation(version, json_),
        progress=ConsoleProgress(_console(json_)),
        max_lag=int(max_lag),
    )
    options = {"dryRun": dry_run, "yes": yes, "version": version, "maxLag": int(max_lag)}
    record = _finish(
        "upgrade",
        "all",
        results,
        3 + len(cluster.brokers),
        started,
        options,
        cluster,
        json_,
        extra={"version": version},
        title=f"upgrade to broker {version}",
    )
    _exit_unless_completed(record)


@task(
    auto_shortflags=False,
    help={
        "size": "the number of brokers to keep or reach: the first N of the inventory, N "
        "even (default: every broker it lists)",
        "yes": "do not ask",
        "dry-run": "change nothing: check the target and the cluster, show the API's plan",
        "inventory": INVENTORY_HELP,
        "json": JSON_HELP,
    },
)
def scale(c, size=None, yes=False, dry_run=False, inventory=None, json_=False):
    """Move the cluster to the first N brokers of the inventory, both regions in parity.

    The brokers that join must be installed (ansible-playbook playbooks/scale.yml also
    installs new hosts); those that leave are stopped once they host nothing."""
    cluster = _cluster(inventory)
    started = datetime.now(UTC)
    if size is not None and not str(size).isdigit():
        raise Exit(f"fab: --size must be a positive even integer, not {size!r}", code=2)
    try:
        results = run_scale(
            cluster,
            int(size) if size is not None else None,
            control=InventoryControl(),
            yes=yes,
            confirm=_typed_confirmation("scale", json_),
            dry_run=dry_run,
            progress=ConsoleProgress(_console(json_)),
        )
    except StepFailed as exc:  # the target itself is impossible: nothing was asked
        raise Exit(f"fab: {exc.saw}", code=2) from None
    options = {"dryRun": dry_run, "yes": yes, "size": size}
    change = next((r.data["change_id"] for r in results if "change_id" in r.data), None)
    record = _finish(
        "scale",
        "all",
        results,
        SCALE_STEPS,
        started,
        options,
        cluster,
        json_,
        extra={"changeId": change},
    )
    _exit_unless_completed(record)
