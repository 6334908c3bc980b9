"""``python -m broker.lab``: build, inspect, break and remove the lab.

    python -m broker.lab up [--hosts-per-region 4]   # idempotent: repairs what is missing
    python -m broker.lab up --init systemd           # hosts boot systemd; login: deploy+sudo
    python -m broker.lab up --plaintext              # an inventory without TLS
    python -m broker.lab status [--json]             # exit 1 unless every host answers SSH
    python -m broker.lab cut region1                 # inter-region link down
    python -m broker.lab heal
    python -m broker.lab kill region1 [--hard]       # brokers die; --hard: hosts gone too
                                                     # (systemd hosts: broker units stopped)
    python -m broker.lab down [--purge]              # also after a crash

Exit codes: 0 ok, 1 the operation failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys

from broker.lab.hosts import DEFAULT_DIR, DEFAULT_INVENTORY, INITS, REGIONS, Lab
from broker.lab.network import LabError, UsageError


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", default=str(DEFAULT_DIR), help="lab data (default: %(default)s)")
    common.add_argument(
        "--inventory", default=str(DEFAULT_INVENTORY), help="inventory written by up"
    )
    p = argparse.ArgumentParser(
        prog="python -m broker.lab",
        description=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = sub.add_parser("up", parents=[common], help="create or repair the lab, write inventory")
    up.add_argument("--hosts-per-region", type=int, default=4, metavar="N")
    up.add_argument(
        "--init",
        choices=INITS,
        default=None,
        help="none: namespace hosts with a bare sshd, root login (the default for a new lab); "
        "systemd: hosts boot systemd (systemd-nspawn), login as deploy with sudo. "
        "A lab that is up keeps its kind.",
    )
    up.add_argument(
        "--plaintext",
        dest="tls",
        action="store_const",
        const=False,
        default=None,
        help="the inventory leaves TLS off. Default for a new lab: TLS on every channel, "
        "the cluster CA made by the role on the first deploy and kept in DIR/tls. "
        "A lab keeps what it was brought up with unless --plaintext or --tls is given.",
    )
    up.add_argument("--tls", dest="tls", action="store_const", const=True, help="TLS on again")
    up.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for boot and SSH")
    st = sub.add_parser("status", parents=[common], help="table of hosts")
    st.add_argument("--json", action="store_true")
    down = sub.add_parser("down", parents=[common], help="remove everything named brk*")
    down.add_argument("--purge", action="store_true", help="also delete host data and keys")
    cut = sub.add_parser("cut", parents=[common], help="drop traffic between the regions")
    cut.add_argument("region", choices=REGIONS)
    sub.add_parser("heal", parents=[common], help="restore inter-region traffic")
    kill = sub.add_parser("kill", parents=[common], help="SIGKILL a region's processes")
    kill.add_argument("region", choices=REGIONS)
    kill.add_argument("--hard", action="store_true", help="sshd too: the region is gone")
    return p


def _table(rows: list[dict]) -> str:
    def yn(v):
        return "yes" if v else "NO"

    head = ("HOST", "REGION", "ADDRESS", "INIT", "NETNS", "SSHD", "SSH", "BROKERS", "LINK")
    body = [
        (
            r["name"], r["region"], r["address"],
            r["init"] if r["init"] == "none" else f"{r['init']} ({r['system'] or 'down'})",
            yn(r["netns"]),
            str(r["sshd_pid"]) if r["sshd"] else "dead", yn(r["ssh"]), str(r["brokers"]),
            "CUT" if r["cut"] else "ok",
        )
        for r in rows
    ]  # fmt: skip
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
                     for line in (head, *body))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    lab = Lab(args.dir, args.inventory, init=getattr(args, "init", None))
    try:
        if args.command == "up":
            lab.up(args.hosts_per_region, timeout=args.timeout, tls=args.tls)
        elif args.command == "down":
            lab.down(purge=args.purge)
        elif args.command == "cut":
            lab.cut(args.region)
        elif args.command == "heal":
            lab.heal()
        elif args.command == "kill":
            lab.kill(args.region, hard=args.hard)
        elif args.command == "status":
            rows = lab.status()
            if not rows:
                print(f"lab: no hosts (nothing in {lab.dir}, no brk namespaces)")
                return 1
            print(json.dumps(rows, indent=2) if args.json else _table(rows))
            ok = all(r["netns"] and r["sshd"] and r["ssh"] for r in rows)
            booted = all(r["system"] in ("running", "degraded") for r in rows)
            return 0 if ok and (booted or rows[0]["init"] == "none") else 1
    except UsageError as exc:
        print(f"lab: error: {exc}", file=sys.stderr)
        return 2
    except LabError as exc:
        print(f"lab: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "lab: interrupted; run `python -m broker.lab up` or `down` to settle", file=sys.stderr
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
