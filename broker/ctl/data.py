"""brokerctl's data commands over the gateway (broker.client): append, read, put,
get, cas, status and bench.

Each takes the parsed arguments and returns the exit code: 0 done (for writes:
committed), 1 the request failed (``brokerctl: CODE: message`` on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from broker.client import BrokerClient, BrokerError, FailedPrecondition
from broker.ctl import load
from broker.ctl.manage import print_management_summary
from broker.ctl.options import tls_context
from broker.ops.view import leaders
from broker.wire import ProtocolError


def _client(args: argparse.Namespace) -> BrokerClient:
    return BrokerClient(
        args.address, args.cluster_name, args.timeout, ssl_context=tls_context(args)
    )


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
    """The topology as ``zbctl status`` shows it, one row per broker (the gateway's
    view; ``fab status`` is ops.status, the inventory's)."""
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
    for broker in sorted(topology.get("brokers", []), key=lambda b: b["nodeId"]):
        cell = Text()
        for p in sorted(broker.get("partitions", []), key=lambda p: p["partitionId"]):
            role, health = p.get("role", "?"), p.get("health", "?")
            leader = role == "leader"
            cell.append(f"{p['partitionId']:>3}  ")
            cell.append(f"{role.upper() if leader else role:<8}", "bold green" if leader else "")
            cell.append(f"  {health:<9}", "" if health == "healthy" else "bold red")
            cell.append(f"  term {p.get('term', '?')}\n")
        cell.rstrip()
        address = f"{broker.get('host')}:{broker.get('port')}"
        table.add_row(str(broker["nodeId"]), Text(broker.get("region", "")), Text(address), cell)
    console.print(table)
    # A partition counts as led when a live broker leads it (ops.view.leaders: a dead
    # broker's last claim may linger in the topology).
    led = leaders(topology)
    leaderless = sorted(set(range(1, (topology.get("partitionsCount") or 0) + 1)) - set(led))
    if leaderless:
        listed = ", ".join(map(str, leaderless))
        console.print(Text(f"Partitions without a leader: {listed}", "bold red"))


def cmd_bench(args: argparse.Namespace) -> int:
    payload = os.urandom(args.size // 2 + 1).hex()[: args.size].encode()
    try:
        with _client(args) as client:
            topology = client.topology()  # fails fast when there is no cluster
    except BrokerError as e:
        return _fail(e)
    spec = load.Load(
        records=args.records,
        payload=payload,
        inflight=args.inflight,
        duration=args.duration,
        timeout=args.timeout,
        partition=args.partition,
        rate=args.rate,
        batch=args.batch,
    )
    try:
        outcome = load.run(args.address, args.cluster_name, topology, spec, tls_context(args))
    except (OSError, ProtocolError) as e:
        return _fail(BrokerError(f"cannot reach a gateway: {e}"))
    report = _bench_report(outcome, args.size)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"{report['committed']}/{report['sent']} records in {outcome.elapsed:.2f}s: "
            f"{report['records_per_s']:.0f} records/s, {report['mb_per_s']:.2f} MB/s, "
            f"latency p50 {report['p50_ms']:.2f} ms, p99 {report['p99_ms']:.2f} ms "
            f"(load generator: {report['client_cpu_share']:.0%} of a core)"
        )
    for code, n in sorted(outcome.errors.items()):
        print(f"brokerctl: {code}: {n} records failed", file=sys.stderr)
    return 0 if not outcome.errors and outcome.sent == args.records else 1


def _bench_report(outcome: load.Outcome, size: int) -> dict:
    latencies, elapsed = sorted(outcome.latencies), outcome.elapsed

    def percentile(q: float) -> float:
        if not latencies:
            return 0.0
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    committed = len(latencies)
    return {
        "sent": outcome.sent,
        "requests": outcome.requests,
        "committed": committed,
        "errors": outcome.errors,
        "seconds": elapsed,
        "records_per_s": committed / elapsed if elapsed else 0.0,
        "mb_per_s": committed * size / elapsed / 1e6 if elapsed else 0.0,
        "p50_ms": percentile(0.50),
        "p99_ms": percentile(0.99),
        "client_cpu_share": outcome.cpu_s / elapsed if elapsed else 0.0,
    }
