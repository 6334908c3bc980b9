"""brokerctl's management commands: ``cluster ...`` and ``exporters ...`` over the
management API (DESIGN section 5), and the management part of ``status``.

The requests go through broker.ops.api (``FirstAnswering``: the first of the
``--management`` URLs that answers); this module only words the answers. Each
command returns the exit code: 0 done, 1 the API refused (``brokerctl: HTTP
STATUS: message`` on stderr), was unreachable, or the change failed or timed
out; usage errors exit 2 through argparse.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from broker.ctl.options import parse_management_urls, tls_context
from broker.ops.api import ApiError, FirstAnswering, NoAnswer, Unreachable
from broker.ops.view import members

# How often --wait polls the cluster configuration, and how long it waits by default.
WAIT_POLL_INTERVAL = 0.2
DEFAULT_WAIT_TIMEOUT = 300.0
# The management part of `status` is optional: it never holds the command up for long.
STATUS_MANAGEMENT_TIMEOUT = 3.0


class ChangeFailed(Exception):
    """A change brokerctl followed (--wait) failed or did not finish in time."""


def _management(args: argparse.Namespace, timeout: float | None = None) -> FirstAnswering:
    urls = parse_management_urls(args.management)
    return FirstAnswering(
        urls,
        timeout=timeout or args.timeout,
        token=args.management_token,
        ssl_context=tls_context(args),
    )


def error_text(error: ApiError | ChangeFailed, api: FirstAnswering) -> str:
    """How brokerctl words a failed management request (after ``brokerctl: ``)."""
    if isinstance(error, ChangeFailed):
        return str(error)
    if isinstance(error, NoAnswer):  # only a change raises it: it was not sent again
        path = error.url[len(api.url) :].partition("?")[0]
        return (
            f"no answer from {api.url} to {error.method} {path} ({error.message}); it may have "
            "been applied: check with `brokerctl cluster show` before repeating it"
        )
    if isinstance(error, Unreachable):  # no URL answered; the message names each one
        return f"management API unreachable: {error.message}"
    return f"HTTP {error.status}: {error.message}"


def _api_command(func):
    """Runs a management command; an API refusal or an unreachable API is exit 1."""

    def run(args: argparse.Namespace) -> int:
        api = _management(args)
        try:
            return func(args, api)
        except (ApiError, ChangeFailed) as e:
            print(f"brokerctl: {error_text(e, api)}", file=sys.stderr)
            return 1

    return run


# --- how answers are shown ------------------------------------------------------------


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    """Left-aligned columns, two spaces apart, no trailing blanks."""
    cells = [headers, *[["" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def format_operations(ops: list[dict]) -> str:
    """The API's plannedChanges as a numbered table (``fab`` shows them as lines:
    broker.ops.api.format_operations)."""
    rows = []
    for n, op in enumerate(ops, 1):
        details = []
        if "brokers" in op:
            details.append("brokers=" + ",".join(map(str, op["brokers"])))
        if "exporterId" in op:
            details.append(f"exporter={op['exporterId']}")
        if "initializeFrom" in op:
            details.append(f"initializeFrom={op['initializeFrom']}")
        rows.append(
            [
                n,
                op["operation"],
                op["brokerId"],
                op.get("partitionId"),
                op.get("priority"),
                " ".join(details),
            ]
        )
    return format_table(["#", "OPERATION", "BROKER", "PARTITION", "PRIORITY", "DETAILS"], rows)


def describe_pending(change: dict | None) -> str:
    """``Pending change: none`` or its id, status and progress (k of n operations)."""
    if not change:
        return "Pending change: none"
    done, todo = change.get("completed", []), change.get("pending", [])
    line = (
        f"Pending change: {change['id']} {change['status']}, "
        f"{len(done)} of {len(done) + len(todo)} operations completed"
    )
    if todo:
        nxt = todo[0]
        where = f" partition {nxt['partitionId']}" if "partitionId" in nxt else ""
        line += f"; next: {nxt['operation']} on broker {nxt['brokerId']}{where}"
    return line


def describe_last(change: dict | None) -> str:
    if not change:
        return "Last change: none"
    line = f"Last change: {change['id']} {change['status']}, started {change['startedAt']}"
    if change.get("completedAt"):
        line += f", completed {change['completedAt']}"
    return line


def print_cluster(doc: dict) -> None:
    """The cluster configuration: version, brokers with state and partitions, changes."""
    print(f"Topology version: {doc['version']}")
    print(f"Cluster id: {doc.get('clusterId', '?')}")
    if doc.get("exportingPaused"):
        print("Exporting: paused")
    rows = []
    for b in sorted(doc["brokers"], key=lambda b: b["id"]):
        parts = [
            f"{p['id']}:{p['priority']}" + ("" if p["state"] == "ACTIVE" else f"({p['state']})")
            for p in sorted(b["partitions"], key=lambda p: p["id"])
        ]
        rows.append([b["id"], b["state"], b["version"], " ".join(parts) or "-"])
    print(format_table(["BROKER", "STATE", "VERSION", "PARTITIONS (id:priority)"], rows))
    print(describe_last(doc.get("lastChange")))
    print(describe_pending(doc.get("pendingChange")))


def print_management_summary(args: argparse.Namespace) -> None:
    """Topology version, pending change and exporters, or one line saying why not."""
    api = _management(args, min(args.timeout, STATUS_MANAGEMENT_TIMEOUT))
    try:
        cluster = api.cluster()
        exporters = api.exporters()
    except ApiError as e:
        print(f"Management API: not available ({error_text(e, api)})")
        return
    print(f"Topology version: {cluster['version']}")
    print(describe_pending(cluster.get("pendingChange")))
    states = ", ".join(f"{name} {state}" for name, state in exporters.items()) or "none"
    paused = " (exporting paused)" if cluster.get("exportingPaused") else ""
    print(f"Exporters: {states}{paused}")


# --- cluster ------------------------------------------------------------------------------


@_api_command
def cmd_cluster_show(args: argparse.Namespace, api: FirstAnswering) -> int:
    doc = api.cluster()
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print_cluster(doc)
    return 0


def _report_change(args: argparse.Namespace, api: FirstAnswering, answer: dict) -> int:
    """Print a change request's plan; with --wait follow it to the end."""
    ops = answer.get("plannedChanges", [])
    if args.dry_run:
        print(f"Dry run: {len(ops)} operations planned, nothing applied")
    else:
        print(f"Change {answer['changeId']} accepted: {len(ops)} operations planned")
    if ops:
        print(format_operations(ops))
    if args.wait and not args.dry_run:
        return wait_for_change(api, answer["changeId"], args.wait_timeout)
    return 0


def _submit_change(
    args: argparse.Namespace, api: FirstAnswering, method: str, path: str, body=None, **query
) -> int:
    """Send a change request as brokerctl words it (ints, the form the command names)."""
    return _report_change(args, api, api.request(method, path, body, dryRun=args.dry_run, **query))


def wait_for_change(api: FirstAnswering, change_id: int, timeout: float) -> int:
    """Poll until ``change_id`` is the completed last change (progress on stderr).

    Changes run one at a time, so a later last change means ours is done too.
    """
    deadline = time.monotonic() + timeout
    progress = None
    while True:
        doc = api.cluster()
        pending, last = doc.get("pendingChange"), doc.get("lastChange")
        if pending and pending["id"] == change_id:
            done = len(pending["completed"])
            now = (done, done + len(pending["pending"]))
            if now != progress:
                progress = now
                print(
                    f"change {change_id}: {now[0]} of {now[1]} operations completed",
                    file=sys.stderr,
                    flush=True,
                )
        elif last and last["id"] >= change_id:
            if last["id"] == change_id and last["status"] != "COMPLETED":
                raise ChangeFailed(f"change {change_id} ended {last['status']}")
            print(f"Change {change_id} COMPLETED")
            return 0
        if time.monotonic() >= deadline:
            where = f" ({progress[0]} of {progress[1]} operations completed)" if progress else ""
            raise ChangeFailed(
                f"timed out after {timeout:g}s waiting for change {change_id}{where}"
            )
        time.sleep(WAIT_POLL_INTERVAL)


def _patch_body(add=(), remove=(), rf: int | None = None) -> dict:
    body: dict[str, Any] = {"brokers": {}}
    if add:
        body["brokers"]["add"] = list(add)
    if remove:
        body["brokers"]["remove"] = list(remove)
    if rf is not None:
        body["partitions"] = {"replicationFactor": rf}
    return body


@_api_command
def cmd_cluster_add(args: argparse.Namespace, api: FirstAnswering) -> int:
    body = _patch_body(add=args.ids, rf=args.replication_factor)
    return _submit_change(args, api, "PATCH", "/actuator/cluster", body)


@_api_command
def cmd_cluster_remove(args: argparse.Namespace, api: FirstAnswering) -> int:
    body = _patch_body(remove=args.ids, rf=args.replication_factor)
    return _submit_change(args, api, "PATCH", "/actuator/cluster", body)


@_api_command
def cmd_cluster_scale(args: argparse.Namespace, api: FirstAnswering) -> int:
    return _submit_change(
        args,
        api,
        "POST",
        "/actuator/cluster/brokers",
        sorted(set(args.brokers)),
        replicationFactor=args.replication_factor,
    )


@_api_command
def cmd_cluster_force_remove(args: argparse.Namespace, api: FirstAnswering) -> int:
    doc = api.cluster()
    states = {b["id"]: b["state"] for b in doc["brokers"]}
    unknown = sorted(set(args.ids) - states.keys())
    if unknown:
        args.parser.error(f"brokers {unknown} are not members (members: {sorted(states)})")
    left = sorted(i for i in set(args.ids) if states[i] == "LEFT")
    if left:
        print(f"brokerctl: brokers {left} have already left", file=sys.stderr)
    retained = sorted(set(members(doc)) - set(args.ids))
    if not retained:
        args.parser.error("a forced removal must retain at least one broker")
    print(f"Retaining brokers {retained}; force-removing {sorted(set(args.ids))}")
    try:
        return _submit_change(
            args,
            api,
            "POST",
            "/actuator/cluster/brokers",
            retained,
            force=True,
            allowRemovingReachableBrokers=args.allow_removing_reachable_brokers,
        )
    except ApiError as e:
        if e.status is not None and "allowRemovingReachableBrokers" in e.message:
            e.message += " (brokerctl: --allow-removing-reachable-brokers)"  # the API's guard
        raise


# --- exporters ----------------------------------------------------------------------------


@_api_command
def cmd_exporters_list(args: argparse.Namespace, api: FirstAnswering) -> int:
    exporters = api.request("GET", "/actuator/exporters")  # the document, for --json
    if args.json:
        print(json.dumps(exporters, indent=2))
    elif not exporters:
        print("No exporters configured")
    else:
        rows = [[e["exporterId"], e["status"]] for e in exporters]
        print(format_table(["EXPORTER", "STATUS"], rows))
    return 0


@_api_command
def cmd_exporters_enable(args: argparse.Namespace, api: FirstAnswering) -> int:
    answer = api.enable_exporter(args.id, args.initialize_from, dry_run=args.dry_run)
    return _report_change(args, api, answer)


@_api_command
def cmd_exporters_disable(args: argparse.Namespace, api: FirstAnswering) -> int:
    return _report_change(args, api, api.disable_exporter(args.id, dry_run=args.dry_run))


@_api_command
def cmd_exporting_pause(args: argparse.Namespace, api: FirstAnswering) -> int:
    api.pause_exporting()
    print("Exporting paused")
    return 0


@_api_command
def cmd_exporting_resume(args: argparse.Namespace, api: FirstAnswering) -> int:
    api.resume_exporting()
    print("Exporting resumed")
    return 0
