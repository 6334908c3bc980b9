"""Command-line entry points: ``broker`` (runs a broker) and ``brokerctl`` (operates a cluster).

Exit codes: 0 success, 1 the check or request failed, 2 bad usage or bad configuration.
"""

from __future__ import annotations

import argparse
import json
import sys

from broker import __version__, ctl
from broker.tls import TlsSetupError


def _config_check(args: argparse.Namespace) -> int:
    from broker.config import main_check

    argv = ["--config", args.config] if args.config else []
    return main_check(argv)


def _daemon(action: str):
    def call(args: argparse.Namespace) -> int:
        from broker import daemon

        if action == "stop":
            return daemon.stop(args.config, kill=args.kill)
        if action == "run":
            return daemon.run(args.config, args.log_file, args.log_max_size, args.log_keep)
        if action == "start":
            return daemon.start(args.config, log_max_size=args.log_max_size, log_keep=args.log_keep)
        return getattr(daemon, action.replace("-", "_"))(args.config)

    return call


def broker_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="broker", description="Run and manage one broker of a dual-region cluster."
    )
    parser.add_argument("--version", action="version", version=f"broker {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config = sub.add_parser("config", help="inspect the configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = config_sub.add_parser(
        "check",
        help="validate a config file and BROKER_* overrides (exit 2 naming the bad key)",
    )
    check.add_argument("--config", metavar="FILE", help="YAML config (default: built-ins)")
    check.set_defaults(func=_config_check)
    for name, help_text in (
        ("run", "run the broker in the foreground until SIGTERM (what systemd starts)"),
        ("start", "start the broker as a daemon (pid and log file in the data directory)"),
        ("stop", "stop the daemon started with `broker start` and wait for it to exit"),
        ("status", "is the daemon running? (exit 0 yes, 3 no)"),
        (
            "wipe-data",
            "delete the data directory's contents, as on a rebuilt host (not while running)",
        ),
    ):
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument("--config", metavar="FILE", help="YAML config (default: built-ins)")
        if name == "stop":
            cmd.add_argument(
                "--kill", action="store_true", help="SIGKILL at once, as a crash (drills)"
            )
        if name in ("run", "start"):
            if name == "run":
                cmd.add_argument(
                    "--log-file",
                    metavar="FILE",
                    help="log to FILE, rotated by size (default: stderr, e.g. systemd's journal)",
                )
            cmd.add_argument(
                "--log-max-size",
                metavar="SIZE",
                default="64MB",
                help="rotate the log file when it reaches SIZE (KB, MB, GB; default 64MB)",
            )
            cmd.add_argument(
                "--log-keep",
                metavar="N",
                type=int,
                default=5,
                help="rotated log files kept beside the current one (default 5)",
            )
        cmd.set_defaults(func=_daemon(name))
    check_data = sub.add_parser(
        "check-data",
        help="can this build run the data directory? (exit 0 yes, 2 no, saying why); reads only",
        description="Read the data directory's format marker (format.json) and say whether "
        "this build can run the data: exit 0 when it can (also when the directory does not "
        "exist yet), 2 with a one-line message when the data is in a newer format. Changes "
        "nothing, so it can run beside the running broker: an upgrade asks the release it "
        "is about to switch to before stopping anything.",
    )
    check_data.add_argument("--config", metavar="FILE", help="YAML config (default: built-ins)")
    check_data.set_defaults(func=_daemon("check-data"))
    restore = sub.add_parser(
        "restore",
        help="restore this broker's partitions of a backup into its empty data directory",
        description="Restore this broker's partitions of backup N (taken with POST "
        "/actuator/backups) from data.backup's store into the empty data directory "
        "(stop the broker and run `broker wipe-data` first). Run it on every broker, "
        "then start them.",
    )
    restore.add_argument("--backup-id", type=_backup_id, required=True, metavar="N")
    restore.add_argument("--config", metavar="FILE", help="YAML config (default: built-ins)")
    restore.set_defaults(func=lambda a: _restore(a))
    args = parser.parse_args(argv)
    return args.func(args)


def _backup_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= 2**63 - 1:
        raise argparse.ArgumentTypeError(f"a backup id is 1..{2**63 - 1}: {text!r}")
    return value


def _restore(args: argparse.Namespace) -> int:
    from broker import daemon

    return daemon.restore(args.config, args.backup_id)


def _placement(args: argparse.Namespace) -> int:
    from broker.placement import check_layout, format_report

    if args.cluster_size < 1:
        print("brokerctl: --cluster-size must be at least 1", file=sys.stderr)
        return 2
    regions = ("region0", "region1")
    if args.layout == "parity":
        brokers = {i: regions[i % 2] for i in range(args.cluster_size)}
    else:  # contiguous: the first half in region0 (a layout the check must refuse)
        half = args.cluster_size // 2
        brokers = {i: regions[0 if i < half else 1] for i in range(args.cluster_size)}
    report = check_layout(brokers, args.partitions, args.replication_factor, regions)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(format_report(report))
    return 0 if report.ok else 1


def brokerctl_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="brokerctl", description="Operate a dual-region broker cluster."
    )
    parser.add_argument("--version", action="version", version=f"brokerctl {__version__}")
    ctl.add_global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ctl.register(sub)
    placement = sub.add_parser(
        "placement",
        help="quorum-placement report: does every partition's quorum span both regions?",
        description="Run the real partition distribution for a cluster shape and check that "
        "every partition holds exactly RF/2 replicas in each region. Exit 1 when it does not.",
    )
    placement.add_argument("--cluster-size", type=int, default=8)
    placement.add_argument("--partitions", type=int, default=8)
    placement.add_argument("--replication-factor", type=int, default=4)
    placement.add_argument(
        "--layout",
        choices=["parity", "contiguous"],
        default="parity",
        help="how node ids map to regions (parity: id %% 2; contiguous: first half in region0)",
    )
    placement.add_argument("--json", action="store_true", help="machine-readable report")
    placement.set_defaults(func=_placement)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except TlsSetupError as e:  # a --tls-* file that cannot be used
        print(f"brokerctl: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(brokerctl_main())
