"""brokerctl's commands: the data commands (append, read, put, get, cas,
status, bench) over the gateway, and ``cluster ...`` / ``exporters ...`` over
the management API (DESIGN section 5).

Each command takes the parsed arguments and returns the exit code: 0 done
(for writes: committed), 1 the request failed or the API refused it
(``brokerctl: CODE: message`` or ``brokerctl: HTTP STATUS: message`` on
stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from broker.client import (
    DEFAULT_ADDRESS,
    DEFAULT_CLUSTER,
    BrokerClient,
    BrokerError,
    FailedPrecondition,
    parse_addresses,
)
from broker.ops.api import ApiError, ManagementApi, NoAnswer, Unreachable

DEFAULT_MANAGEMENT = "http://127.0.0.1:9600"
# How often --wait polls the cluster configuration, and how long it waits by default.
WAIT_POLL_INTERVAL = 0.2
DEFAULT_WAIT_TIMEOUT = 300.0
# The management part of `status` is optional: it never holds the command up for long.
STATUS_MANAGEMENT_TIMEOUT = 3.0


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _addresses(text: str) -> str:
    try:
        parse_addresses(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def parse_management_urls(text: str) -> list[str]:
    """``URL[,URL...]`` as base URLs; ``HOST:PORT`` means ``http://HOST:PORT``."""
    urls = []
    for part in text.split(","):
        part = part.strip().rstrip("/")
        if not part:
            continue
        if "://" not in part:
            part = "http://" + part
        split = urllib.parse.urlsplit(part)
        if split.scheme not in ("http", "https") or not split.hostname:
            raise ValueError(f"not an http(s) URL: {part!r}")
        try:
            _ = split.port  # raises ValueError for a bad port
        except ValueError:
            raise ValueError(f"bad port in {part!r}") from None
        urls.append(part)
    if not urls:
        raise ValueError("no management URL given")
    return urls


def _management_urls(text: str) -> str:
    try:
        parse_management_urls(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _broker_id(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"not a broker id: {text!r}")
    return int(text)


def _broker_ids(text: str) -> list[int]:
    """``0,1,2,3`` as a list of broker ids."""
    ids = [_broker_id(part.strip()) for part in text.split(",") if part.strip()]
    if not ids:
        raise argparse.ArgumentTypeError("expected broker ids like 0,1,2,3")
    return ids


def _connection_options(parser: argparse.ArgumentParser, default) -> None:
    def pick(value):
        return value if default is None else default

    parser.add_argument(
        "--address",
        type=_addresses,
        default=pick(os.environ.get("BROKER_ADDRESS", DEFAULT_ADDRESS)),
        metavar="HOST:PORT[,HOST:PORT]",
        help="gateway(s) to talk to, tried in turn on connection failure "
        f"(default: $BROKER_ADDRESS or {DEFAULT_ADDRESS})",
    )
    parser.add_argument(
        "--cluster-name",
        default=pick(DEFAULT_CLUSTER),
        metavar="NAME",
        help=f"must match the brokers' cluster.clusterName (default: {DEFAULT_CLUSTER})",
    )
    parser.add_argument(
        "--timeout",
        type=_positive,
        default=pick(15.0),
        metavar="S",
        help="request deadline in seconds (default: 15)",
    )
    parser.add_argument(
        "--management",
        type=_management_urls,
        default=pick(os.environ.get("BROKER_MANAGEMENT", DEFAULT_MANAGEMENT)),
        metavar="URL[,URL]",
        help="management API of one or more brokers; the first that answers is used "
        f"(default: $BROKER_MANAGEMENT or {DEFAULT_MANAGEMENT})",
    )
    parser.add_argument(
        "--management-token",
        default=pick(os.environ.get("BROKER_MANAGEMENT_TOKEN")),
        metavar="TOKEN",
        help="bearer token for the management API, when the brokers set management.token "
        "(default: $BROKER_MANAGEMENT_TOKEN)",
    )


def add_global_options(parser: argparse.ArgumentParser) -> None:
    """The connection options, on brokerctl's top-level parser."""
    _connection_options(parser, None)


def _client(args: argparse.Namespace) -> BrokerClient:
    return BrokerClient(args.address, args.cluster_name, args.timeout)


def _fail(error: BrokerError) -> int:
    print(f"brokerctl: {error}", file=sys.stderr)
    return 1


def _data_arg(text: str) -> bytes:
    return sys.stdin.buffer.read() if text == "-" else text.encode()


# Control characters, and the backslash itself so that escapes are unambiguous.
_ESCAPES = {i: f"\\x{i:02x}" for i in [*range(0x20), *range(0x7F, 0xA0)]}
_ESCAPES.update({ord("\\"): "\\\\", ord("\t"): "\\t", ord("\n"): "\\n", ord("\r"): "\\r"})


def printable(data: bytes) -> str:
    """``data`` as one line of text: UTF-8, with backslash escapes for the rest."""
    # Backslashes are doubled first so those added by backslashreplace stay single.
    text = data.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")
    return text.translate({k: v for k, v in _ESCAPES.items() if k != ord("\\")})


# --- commands -----------------------------------------------------------------


def cmd_append(args: argparse.Namespace) -> int:
    try:
        with _client(args) as client:
            result = client.append(_data_arg(args.data), args.partition)
    except BrokerError as e:
        return _fail(e)
    print(f"partition {result.partition} position {result.position}")
    return 0


def cmd_read(args: argparse.Namespace) -> int:
    try:
        with _client(args) as client:
            result = client.read(args.partition, args.from_position, args.max)
    except BrokerError as e:
        return _fail(e)
    for position, data in result.records:
        print(f"{position}\t{printable(data)}")
    return 0


def cmd_put(args: argparse.Namespace) -> int:
    try:
        with _client(args) as client:
            client.put(args.key, _data_arg(args.value))
    except BrokerError as e:
        return _fail(e)
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    try:
        with _client(args) as client:
            value = client.get(args.key)
    except BrokerError as e:
        return _fail(e)
    if value is None:
        print(f"brokerctl: NOT_FOUND: no key {args.key!r}", file=sys.stderr)
        return 1
    sys.stdout.flush()
    sys.stdout.buffer.write(value + b"\n")
    return 0


def cmd_cas(args: argparse.Namespace) -> int:
    if len(args.values) != (1 if args.absent else 2):
        args.parser.error("expected KEY OLD NEW, or --absent KEY NEW")
    expected = None if args.absent else args.values[0].encode()
    try:
        with _client(args) as client:
            client.cas(args.key, expected, args.values[-1].encode())
    except FailedPrecondition as e:
        _fail(e)
        current = "(absent)" if e.current is None else printable(e.current)
        print(f"current value: {current}", file=sys.stderr)
        return 1
    except BrokerError as e:
        return _fail(e)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    try:
        with _client(args) as client:
            topology = client.topology()
    except BrokerError as e:
        return _fail(e)
    if args.json:
        print(json.dumps(topology, indent=2, sort_keys=True))
        return 0
    print_status(topology)
    print_management_summary(args)
    return 0


def print_status(topology: dict) -> None:
    """The topology as ``zbctl status`` shows it, one row per broker."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(highlight=False)
    for label, key in (
        ("Cluster size", "clusterSize"),
        ("Partitions count", "partitionsCount"),
        ("Replication factor", "replicationFactor"),
        ("Gateway version", "gatewayVersion"),
    ):
        console.print(Text(f"{label}: {topology.get(key)}"))
    table = Table("Node", "Region", "Address", "Partitions")
    led = set()
    for broker in sorted(topology.get("brokers", []), key=lambda b: b["nodeId"]):
        cell = Text()
        for p in sorted(broker.get("partitions", []), key=lambda p: p["partitionId"]):
            role, health = p.get("role", "?"), p.get("health", "?")
            leader = role == "leader"
            if leader:
                led.add(p["partitionId"])
            cell.append(f"{p['partitionId']:>3}  ")
            cell.append(f"{role.upper() if leader else role:<8}", "bold green" if leader else "")
            cell.append(f"  {health:<9}", "" if health == "healthy" else "bold red")
            cell.append(f"  term {p.get('term', '?')}\n")
        cell.rstrip()
        address = f"{broker.get('host')}:{broker.get('port')}"
        table.add_row(str(broker["nodeId"]), Text(broker.get("region", "")), Text(address), cell)
    console.print(table)
    leaderless = sorted(set(range(1, (topology.get("partitionsCount") or 0) + 1)) - led)
    if leaderless:
        listed = ", ".join(map(str, leaderless))
        console.print(Text(f"Partitions without a leader: {listed}", "bold red"))


def cmd_bench(args: argparse.Namespace) -> int:
    payload = os.urandom(args.size // 2 + 1).hex()[: args.size].encode()
    inflight = threading.BoundedSemaphore(args.inflight)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()

    def done(fut, started: float) -> None:
        with lock:
            if fut.exception() is None:
                latencies.append(time.perf_counter() - started)
            else:
                code = getattr(fut.exception(), "code", "UNKNOWN")
                errors[code] = errors.get(code, 0) + 1
        inflight.release()

    client = _client(args)
    try:
        try:
            client.topology()  # connects first, and fails fast when there is no cluster
        except BrokerError as e:
            return _fail(e)
        stop_at = time.perf_counter() + args.duration
        start = time.perf_counter()
        sent = 0
        while sent < args.records and time.perf_counter() < stop_at:
            if args.rate:  # open loop: pace the sends, whatever the latency
                delay = start + sent / args.rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            if not inflight.acquire(timeout=max(0.0, stop_at - time.perf_counter())):
                break
            t0 = time.perf_counter()
            fut = client.append_async(payload, args.partition)
            fut.add_done_callback(lambda f, t0=t0: done(f, t0))
            sent += 1
        for _ in range(args.inflight):  # all answered or failed by their deadline
            inflight.acquire()
        elapsed = time.perf_counter() - start
    finally:
        client.close()
    report = _bench_report(sent, latencies, errors, elapsed, args.size)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"{report['committed']}/{report['sent']} records in {elapsed:.2f}s: "
            f"{report['records_per_s']:.0f} records/s, {report['mb_per_s']:.2f} MB/s, "
            f"latency p50 {report['p50_ms']:.2f} ms, p99 {report['p99_ms']:.2f} ms"
        )
    for code, n in sorted(errors.items()):
        print(f"brokerctl: {code}: {n} records failed", file=sys.stderr)
    return 0 if not errors and sent == args.records else 1


def _bench_report(sent, latencies, errors, elapsed, size) -> dict:
    latencies = sorted(latencies)

    def percentile(q: float) -> float:
        if not latencies:
            return 0.0
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    committed = len(latencies)
    return {
        "sent": sent,
        "committed": committed,
        "errors": errors,
        "seconds": elapsed,
        "records_per_s": committed / elapsed if elapsed else 0.0,
        "mb_per_s": committed * size / elapsed / 1e6 if elapsed else 0.0,
        "p50_ms": percentile(0.50),
        "p99_ms": percentile(0.99),
    }


# --- management API -----------------------------------------------------------


class ManagementError(Exception):
    """A management request failed: refused by the API (``status`` set) or unreachable."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status

    def __str__(self) -> str:
        message = super().__str__()
        return message if self.status is None else f"HTTP {self.status}: {message}"


class ManagementClient:
    """JSON over HTTP to the first of several brokers' management APIs that answers.

    An HTTP error answer counts as an answer (it is the cluster's reply). A
    request that could not be delivered moves on to the next URL; so does a
    read that got no answer, but a change that got none is reported rather than
    sent again elsewhere. The URL that answered is tried first from then on.
    """

    def __init__(self, urls: str, timeout: float, token: str | None = None):
        self.urls = parse_management_urls(urls)
        self.timeout = timeout
        self.token = token

    def call(self, method: str, path: str, body: Any = None, **query: Any) -> Any:
        """The parsed answer (None for an empty one); raises ManagementError."""
        failures = []
        for url in list(self.urls):
            api = ManagementApi(url, timeout=self.timeout, token=self.token)
            try:
                doc = api.request(method, path, body, **query)
            except NoAnswer as e:  # delivered, but no answer
                if method == "GET":
                    failures.append(f"{url}: {e.message}")
                    continue
                raise ManagementError(
                    f"no answer from {url} to {method} {path} ({e.message}); it may have been "
                    "applied: check with `brokerctl cluster show` before repeating it"
                ) from None
            except Unreachable as e:  # not delivered (refused, no route): next one
                failures.append(f"{url}: {e.message}")
                continue
            except ApiError as e:  # the cluster's answer, a refusal
                self._prefer(url)
                raise ManagementError(e.message, e.status) from None
            self._prefer(url)
            return doc
        raise ManagementError("management API unreachable: " + "; ".join(failures))

    def _prefer(self, url: str) -> None:
        """The URL that answered is tried first from then on."""
        self.urls.remove(url)
        self.urls.insert(0, url)


def _management(args: argparse.Namespace, timeout: float | None = None) -> ManagementClient:
    return ManagementClient(args.management, timeout or args.timeout, args.management_token)


def _api_command(func):
    """Runs a management command; an API refusal or an unreachable API is exit 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args, _management(args))
        except ManagementError as e:
            print(f"brokerctl: {e}", file=sys.stderr)
            return 1

    return run


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    """Left-aligned columns, two spaces apart, no trailing blanks."""
    cells = [headers, *[["" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def format_operations(ops: list[dict]) -> str:
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


@_api_command
def cmd_cluster_show(args: argparse.Namespace, api: ManagementClient) -> int:
    doc = api.call("GET", "/actuator/cluster")
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print_cluster(doc)
    return 0


def _submit_change(
    args: argparse.Namespace, api: ManagementClient, method: str, path: str, body=None, **query
) -> int:
    """Send a change request; print its plan; with --wait follow it to the end."""
    answer = api.call(method, path, body, dryRun=args.dry_run, **query)
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


def wait_for_change(api: ManagementClient, change_id: int, timeout: float) -> int:
    """Poll until ``change_id`` is the completed last change (progress on stderr).

    Changes run one at a time, so a later last change means ours is done too.
    """
    deadline = time.monotonic() + timeout
    progress = None
    while True:
        doc = api.call("GET", "/actuator/cluster")
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
                raise ManagementError(f"change {change_id} ended {last['status']}")
            print(f"Change {change_id} COMPLETED")
            return 0
        if time.monotonic() >= deadline:
            where = f" ({progress[0]} of {progress[1]} operations completed)" if progress else ""
            raise ManagementError(
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
def cmd_cluster_add(args: argparse.Namespace, api: ManagementClient) -> int:
    body = _patch_body(add=args.ids, rf=args.replication_factor)
    return _submit_change(args, api, "PATCH", "/actuator/cluster", body)


@_api_command
def cmd_cluster_remove(args: argparse.Namespace, api: ManagementClient) -> int:
    body = _patch_body(remove=args.ids, rf=args.replication_factor)
    return _submit_change(args, api, "PATCH", "/actuator/cluster", body)


@_api_command
def cmd_cluster_scale(args: argparse.Namespace, api: ManagementClient) -> int:
    return _submit_change(
        args,
        api,
        "POST",
        "/actuator/cluster/brokers",
        sorted(set(args.brokers)),
        replicationFactor=args.replication_factor,
    )


@_api_command
def cmd_cluster_force_remove(args: argparse.Namespace, api: ManagementClient) -> int:
    members = {b["id"]: b["state"] for b in api.call("GET", "/actuator/cluster")["brokers"]}
    unknown = sorted(set(args.ids) - members.keys())
    if unknown:
        args.parser.error(f"brokers {unknown} are not members (members: {sorted(members)})")
    left = sorted(i for i in set(args.ids) if members[i] == "LEFT")
    if left:
        print(f"brokerctl: brokers {left} have already left", file=sys.stderr)
    retained = sorted(m for m, state in members.items() if state != "LEFT" and m not in args.ids)
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
    except ManagementError as e:
        if "allowRemovingReachableBrokers" in str(e):  # the API's guard names its override
            e.args = (f"{e.args[0]} (brokerctl: --allow-removing-reachable-brokers)",)
        raise


@_api_command
def cmd_exporters_list(args: argparse.Namespace, api: ManagementClient) -> int:
    exporters = api.call("GET", "/actuator/exporters")
    if args.json:
        print(json.dumps(exporters, indent=2))
    elif not exporters:
        print("No exporters configured")
    else:
        rows = [[e["exporterId"], e["status"]] for e in exporters]
        print(format_table(["EXPORTER", "STATUS"], rows))
    return 0


@_api_command
def cmd_exporters_enable(args: argparse.Namespace, api: ManagementClient) -> int:
    body = {"initializeFrom": args.initialize_from} if args.initialize_from else None
    path = f"/actuator/exporters/{urllib.parse.quote(args.id, safe='')}/enable"
    return _submit_change(args, api, "POST", path, body)


@_api_command
def cmd_exporters_disable(args: argparse.Namespace, api: ManagementClient) -> int:
    path = f"/actuator/exporters/{urllib.parse.quote(args.id, safe='')}/disable"
    return _submit_change(args, api, "POST", path)


def _exporting(action: str):
    @_api_command
    def run(args: argparse.Namespace, api: ManagementClient) -> int:
        api.call("POST", f"/actuator/exporting/{action}")
        print(f"Exporting {'paused' if action == 'pause' else 'resumed'}")
        return 0

    return run


def print_management_summary(args: argparse.Namespace) -> None:
    """Topology version, pending change and exporters, or one line saying why not."""
    try:
        api = _management(args, min(args.timeout, STATUS_MANAGEMENT_TIMEOUT))
        cluster = api.call("GET", "/actuator/cluster")
        exporters = api.call("GET", "/actuator/exporters")
    except ManagementError as e:
        print(f"Management API: not available ({e})")
        return
    print(f"Topology version: {cluster['version']}")
    print(describe_pending(cluster.get("pendingChange")))
    states = ", ".join(f"{e['exporterId']} {e['status']}" for e in exporters) or "none"
    paused = " (exporting paused)" if cluster.get("exportingPaused") else ""
    print(f"Exporters: {states}{paused}")


# --- parser -------------------------------------------------------------------


def register(subparsers) -> None:
    """Add the data commands to brokerctl's subparsers."""
    # The connection options are accepted after the command too; SUPPRESS keeps
    # the top-level values unless they are given again.
    common = argparse.ArgumentParser(add_help=False)
    _connection_options(common, argparse.SUPPRESS)

    def add(name: str, func, help: str, description: str | None = None, *, under=None, **kw):
        p = (under or subparsers).add_parser(
            name,
            parents=[common, *kw.pop("parents", [])],
            help=help,
            description=description or help,
            **kw,
        )
        p.set_defaults(func=func, parser=p)
        return p

    p = add(
        "append",
        cmd_append,
        "append a record; prints 'partition P position N' once it is committed",
    )
    p.add_argument("data", metavar="DATA", help="the record ('-' reads it from stdin)")
    p.add_argument(
        "--partition", type=int, metavar="N", help="target partition (default: round-robin)"
    )

    p = add(
        "read",
        cmd_read,
        "read committed records of a partition",
        "Print one line per record: POSITION<TAB>DATA, the data as UTF-8 with backslash "
        "escapes (\\\\, \\t, \\n, \\xNN) for anything else.",
    )
    p.add_argument("--partition", type=int, required=True, metavar="N", help="partition to read")
    p.add_argument(
        "--from",
        dest="from_position",
        type=_count,
        default=1,
        metavar="POS",
        help="first position to read (default: 1, the first record)",
    )
    p.add_argument(
        "--max", type=_count, default=1000, metavar="M", help="at most M records (default: 1000)"
    )

    p = add("put", cmd_put, "set a key; exit 0 once committed")
    p.add_argument("key", metavar="KEY")
    p.add_argument("value", metavar="VALUE", help="the value ('-' reads it from stdin)")

    p = add("get", cmd_get, "print a key's value alone on stdout; exit 1 when it is absent")
    p.add_argument("key", metavar="KEY")

    p = add(
        "cas",
        cmd_cas,
        "compare-and-set: cas KEY OLD NEW, or cas --absent KEY NEW",
        "Set KEY to NEW only if it holds OLD (or, with --absent, does not exist). "
        "On a mismatch exit 1 and print the current value on stderr.",
        usage="brokerctl cas [options] KEY OLD NEW\n"
        "       brokerctl cas [options] --absent KEY NEW",
    )
    p.add_argument("--absent", action="store_true", help="require KEY to be absent (no OLD)")
    p.add_argument("key", metavar="KEY")
    p.add_argument("values", nargs="+", metavar="VALUE", help="OLD NEW, or NEW with --absent")

    p = add(
        "status",
        cmd_status,
        "cluster topology: brokers, partitions, leaders and health (like zbctl status)",
    )
    p.add_argument("--json", action="store_true", help="print the topology document as JSON")

    p = add(
        "bench",
        cmd_bench,
        "pipelined write load: records/s, MB/s and latency percentiles",
        "Append --records records of --size bytes, keeping up to --inflight in flight on one "
        "connection, and stop submitting after --duration seconds. Exit 1 if any record failed.",
    )
    p.add_argument("--records", type=_count, default=10_000, help="default: 10000")
    p.add_argument("--size", type=_count, default=100, help="record size in bytes (default: 100)")
    p.add_argument("--inflight", type=_count, default=64, help="default: 64")
    p.add_argument(
        "--partition", type=int, metavar="N", help="target partition (default: round-robin)"
    )
    p.add_argument(
        "--duration", type=_positive, default=60.0, metavar="S", help="time limit (default: 60)"
    )
    p.add_argument(
        "--rate",
        type=_positive,
        default=None,
        metavar="R",
        help="send at most R records/s, paced (default: as fast as --inflight allows)",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")

    _register_management(add, common)


def _register_management(add, common: argparse.ArgumentParser) -> None:
    """``cluster ...`` and ``exporters ...``: the management API commands."""
    change = argparse.ArgumentParser(add_help=False)
    mode = change.add_mutually_exclusive_group()
    mode.add_argument(
        "--dry-run",
        action="store_true",
        help="only plan the change and print the operations; apply nothing",
    )
    mode.add_argument(
        "--wait",
        action="store_true",
        help="follow the change until it is COMPLETED, printing progress on stderr "
        "(exit 1 if it fails or --wait-timeout passes)",
    )
    change.add_argument(
        "--wait-timeout",
        type=_positive,
        default=DEFAULT_WAIT_TIMEOUT,
        metavar="S",
        help=f"give up waiting after S seconds (default: {DEFAULT_WAIT_TIMEOUT:g})",
    )
    rf = argparse.ArgumentParser(add_help=False)
    rf.add_argument(
        "--replication-factor",
        type=_count,
        metavar="N",
        help="also change the replication factor to N (default: keep it)",
    )

    def group(name: str, help: str, description: str):
        p = add(name, None, help, description)
        return p.add_subparsers(dest=f"{name}_action", required=True, metavar="ACTION")

    cluster = group(
        "cluster",
        "show and change the cluster topology (management API)",
        "Show and change the cluster configuration through the management API (--management, "
        "several URLs comma-separated: the first that answers is used). Changes print the "
        "planned operations. Exit 0 done, 1 the API refused (its message on stderr), was "
        "unreachable, or the change failed or timed out, 2 bad usage.",
    )
    p = add(
        "show",
        cmd_cluster_show,
        "topology version, brokers with state and partitions, last and pending change",
        under=cluster,
    )
    p.add_argument("--json", action="store_true", help="print the GET /actuator/cluster document")

    p = add(
        "add",
        cmd_cluster_add,
        "add brokers; partitions are redistributed over the active brokers and the new ones",
        "Add brokers (PATCH /actuator/cluster brokers.add). The brokers must be running "
        "for the change to complete.",
        under=cluster,
        parents=[change, rf],
    )
    p.add_argument("ids", nargs="+", type=_broker_id, metavar="ID", help="brokers to add")

    p = add(
        "remove",
        cmd_cluster_remove,
        "remove brokers; their partitions move to the remaining brokers first",
        "Remove running brokers (PATCH /actuator/cluster brokers.remove). For brokers that "
        "are gone (a lost region) use force-remove.",
        under=cluster,
        parents=[change, rf],
    )
    p.add_argument("ids", nargs="+", type=_broker_id, metavar="ID", help="brokers to remove")

    p = add(
        "scale",
        cmd_cluster_scale,
        "reconfigure the cluster to exactly the given brokers",
        "Redistribute the partitions over exactly --brokers (POST /actuator/cluster/brokers): "
        "missing brokers are added, others removed. Used for failback: "
        "scale --brokers 0,1,2,3,4,5,6,7 --replication-factor 4.",
        under=cluster,
        parents=[change, rf],
    )
    p.add_argument(
        "--brokers",
        type=_broker_ids,
        required=True,
        metavar="ID,ID,...",
        help="the brokers the cluster should consist of",
    )

    p = add(
        "force-remove",
        cmd_cluster_force_remove,
        "force out brokers that are gone (region failover); moves no data",
        "Force-remove the given brokers: posts the active brokers minus these as the "
        "retained set with force=true (POST /actuator/cluster/brokers?force=true). Each "
        "partition's replica set shrinks to its retained members. The API refuses to "
        "force out brokers it can still reach; retrying the same command is safe.",
        under=cluster,
        parents=[change],
    )
    p.add_argument(
        "ids", nargs="+", type=_broker_id, metavar="ID", help="the lost brokers to force out"
    )
    p.add_argument(
        "--allow-removing-reachable-brokers",
        action="store_true",
        help="override the guard against forcing out brokers that are still reachable "
        "(forcing out live brokers is how a surviving region gets removed by mistake)",
    )

    exporters = group(
        "exporters",
        "list, enable and disable exporters; pause and resume exporting",
        "Exporters through the management API. enable and disable are topology changes "
        "(--dry-run, --wait); pause and resume take effect at once.",
    )
    p = add("list", cmd_exporters_list, "every exporter and its state", under=exporters)
    p.add_argument("--json", action="store_true", help="print the GET /actuator/exporters list")
    p = add(
        "enable",
        cmd_exporters_enable,
        "enable an exporter on every partition",
        "Enable exporter ID. With --initialize-from it starts where that exporter is "
        "(failback, after restoring its sink from the other one's).",
        under=exporters,
        parents=[change],
    )
    p.add_argument("id", metavar="ID", help="the exporter to enable")
    p.add_argument(
        "--initialize-from",
        metavar="ID",
        help="start at the position exporter ID has reached",
    )
    p = add(
        "disable",
        cmd_exporters_disable,
        "disable an exporter on every partition (failover: the lost region's)",
        under=exporters,
        parents=[change],
    )
    p.add_argument("id", metavar="ID", help="the exporter to disable")
    add("pause", _exporting("pause"), "pause exporting cluster-wide", under=exporters)
    add("resume", _exporting("resume"), "resume exporting", under=exporters)
