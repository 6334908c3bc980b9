"""brokerctl's commands (DESIGN section 5), wired into its argument parser.

``broker.cli`` builds the parser and calls ``add_global_options`` and ``register``.
The commands live in:

- ``broker.ctl.data``: append, read, put, get, cas, status, bench, over the
  gateway (broker.client);
- ``broker.ctl.manage``: ``cluster ...`` and ``exporters ...``, over the management
  API through broker.ops.api, and the management part of ``status``;
- ``broker.ctl.options``: the connection options and argument types.

Each command takes the parsed arguments and returns the exit code: 0 done
(for writes: committed), 1 the request failed or the API refused it
(``brokerctl: CODE: message`` or ``brokerctl: HTTP STATUS: message`` on
stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse

from broker.ctl import data, manage
from broker.ctl.data import printable
from broker.ctl.options import (
    broker_id,
    broker_ids,
    connection_options,
    count,
    positive,
    records_per_request,
)

__all__ = ["add_global_options", "printable", "register"]


def add_global_options(parser: argparse.ArgumentParser) -> None:
    """The connection options, on brokerctl's top-level parser."""
    connection_options(parser, None)


# --- parser -------------------------------------------------------------------


def register(subparsers) -> None:
    """Add the data commands to brokerctl's subparsers."""
    # The connection options are accepted after the command too; SUPPRESS keeps
    # the top-level values unless they are given again.
    common = argparse.ArgumentParser(add_help=False)
    connection_options(common, argparse.SUPPRESS)

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
        data.cmd_append,
        "append a record; prints 'partition P position N' once it is committed",
    )
    p.add_argument("data", metavar="DATA", help="the record ('-' reads it from stdin)")
    p.add_argument(
        "--partition", type=int, metavar="N", help="target partition (default: round-robin)"
    )

    p = add(
        "read",
        data.cmd_read,
        "read committed records of a partition",
        "Print one line per record: POSITION<TAB>DATA, the data as UTF-8 with backslash "
        "escapes (\\\\, \\t, \\n, \\xNN) for anything else.",
    )
    p.add_argument("--partition", type=int, required=True, metavar="N", help="partition to read")
    p.add_argument(
        "--from",
        dest="from_position",
        type=count,
        default=1,
        metavar="POS",
        help="first position to read (default: 1, the first record)",
    )
    p.add_argument(
        "--max", type=count, default=1000, metavar="M", help="at most M records (default: 1000)"
    )

    p = add("put", data.cmd_put, "set a key; exit 0 once committed")
    p.add_argument("key", metavar="KEY")
    p.add_argument("value", metavar="VALUE", help="the value ('-' reads it from stdin)")

    p = add("get", data.cmd_get, "print a key's value alone on stdout; exit 1 when it is absent")
    p.add_argument("key", metavar="KEY")

    p = add(
        "cas",
        data.cmd_cas,
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
        data.cmd_status,
        "cluster topology: brokers, partitions, leaders and health (like zbctl status)",
    )
    p.add_argument("--json", action="store_true", help="print the topology document as JSON")

    p = add(
        "bench",
        data.cmd_bench,
        "pipelined write load: records/s, MB/s and latency percentiles",
        "Append --records records of --size bytes, keeping up to --inflight in flight on one "
        "connection per leader gateway (one thread, so the load generator stays cheap), and stop "
        "submitting after --duration seconds. With --batch N, the records due for a partition "
        "go in one request, up to N (each still gets its own position). Latency is timed per "
        "record from when it was due. Exit 1 if any record failed.",
    )
    p.add_argument("--records", type=count, default=10_000, help="default: 10000")
    p.add_argument("--size", type=count, default=100, help="record size in bytes (default: 100)")
    p.add_argument("--inflight", type=count, default=64, help="default: 64")
    p.add_argument(
        "--batch",
        type=records_per_request,
        default=1,
        metavar="N",
        help="records per request at most, 1..10000 (default: 1)",
    )
    p.add_argument(
        "--partition", type=int, metavar="N", help="target partition (default: round-robin)"
    )
    p.add_argument(
        "--duration", type=positive, default=60.0, metavar="S", help="time limit (default: 60)"
    )
    p.add_argument(
        "--rate",
        type=positive,
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
        type=positive,
        default=manage.DEFAULT_WAIT_TIMEOUT,
        metavar="S",
        help=f"give up waiting after S seconds (default: {manage.DEFAULT_WAIT_TIMEOUT:g})",
    )
    rf = argparse.ArgumentParser(add_help=False)
    rf.add_argument(
        "--replication-factor",
        type=count,
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
        manage.cmd_cluster_show,
        "topology version, brokers with state and partitions, last and pending change",
        under=cluster,
    )
    p.add_argument("--json", action="store_true", help="print the GET /actuator/cluster document")

    p = add(
        "add",
        manage.cmd_cluster_add,
        "add brokers; partitions are redistributed over the active brokers and the new ones",
        "Add brokers (PATCH /actuator/cluster brokers.add). The brokers must be running "
        "for the change to complete.",
        under=cluster,
        parents=[change, rf],
    )
    p.add_argument("ids", nargs="+", type=broker_id, metavar="ID", help="brokers to add")

    p = add(
        "remove",
        manage.cmd_cluster_remove,
        "remove brokers; their partitions move to the remaining brokers first",
        "Remove running brokers (PATCH /actuator/cluster brokers.remove). For brokers that "
        "are gone (a lost region) use force-remove.",
        under=cluster,
        parents=[change, rf],
    )
    p.add_argument("ids", nargs="+", type=broker_id, metavar="ID", help="brokers to remove")

    p = add(
        "scale",
        manage.cmd_cluster_scale,
        "reconfigure the cluster to exactly the given brokers",
        "Redistribute the partitions over exactly --brokers (POST /actuator/cluster/brokers): "
        "missing brokers are added, others removed. Used for failback: "
        "scale --brokers 0,1,2,3,4,5,6,7 --replication-factor 4.",
        under=cluster,
        parents=[change, rf],
    )
    p.add_argument(
        "--brokers",
        type=broker_ids,
        required=True,
        metavar="ID,ID,...",
        help="the brokers the cluster should consist of",
    )

    p = add(
        "force-remove",
        manage.cmd_cluster_force_remove,
        "force out brokers that are gone (region failover); moves no data",
        "Force-remove the given brokers: posts the active brokers minus these as the "
        "retained set with force=true (POST /actuator/cluster/brokers?force=true). Each "
        "partition's replica set shrinks to its retained members. The API refuses to "
        "force out brokers it can still reach; retrying the same command is safe.",
        under=cluster,
        parents=[change],
    )
    p.add_argument(
        "ids", nargs="+", type=broker_id, metavar="ID", help="the lost brokers to force out"
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
    p = add("list", manage.cmd_exporters_list, "every exporter and its state", under=exporters)
    p.add_argument("--json", action="store_true", help="print the GET /actuator/exporters list")
    p = add(
        "enable",
        manage.cmd_exporters_enable,
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
        manage.cmd_exporters_disable,
        "disable an exporter on every partition (failover: the lost region's)",
        under=exporters,
        parents=[change],
    )
    p.add_argument("id", metavar="ID", help="the exporter to disable")
    add("pause", manage.cmd_exporting_pause, "pause exporting cluster-wide", under=exporters)
    add("resume", manage.cmd_exporting_resume, "resume exporting", under=exporters)
