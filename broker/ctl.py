"""brokerctl's data commands: append, read, put, get, cas, status, bench.

Each command takes the parsed arguments and returns the exit code: 0 done
(for writes: committed), 1 the request failed (``brokerctl: CODE: message``
on stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

from broker.client import (
    DEFAULT_ADDRESS,
    DEFAULT_CLUSTER,
    BrokerClient,
    BrokerError,
    FailedPrecondition,
    parse_addresses,
)

DEFAULT_MANAGEMENT = "http://127.0.0.1:9600"


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
        default=pick(DEFAULT_MANAGEMENT),
        metavar="URL",
        help=f"management API of a broker (default: {DEFAULT_MANAGEMENT})",
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


# --- parser -------------------------------------------------------------------


def register(subparsers) -> None:
    """Add the data commands to brokerctl's subparsers."""
    # The connection options are accepted after the command too; SUPPRESS keeps
    # the top-level values unless they are given again.
    common = argparse.ArgumentParser(add_help=False)
    _connection_options(common, argparse.SUPPRESS)

    def add(name: str, func, help: str, description: str | None = None, **kw):
        p = subparsers.add_parser(
            name, parents=[common], help=help, description=description or help, **kw
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
