"""Isolating a region from the other by the network, and healing it: `fab isolate-region`.

On every host of the region an nftables table (``inet brk_isolate``) drops
traffic to and from the other region's host addresses, and nothing else: the
controller keeps its SSH and its view of both regions. That is the lab's way to
fence a region and to rehearse an inter-region cut, which failover must
diagnose as a cut and refuse to force anything (`confirm_region_lost`).

Each host is reached like `InventoryControl` reaches it (here or over SSH, with the
host's become settings: nft needs root), so
this needs hosts with their own addresses: regions sharing an address (the
local, one-machine inventory) cannot be cut apart, and that is refused.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable

from broker.ops.control import run_on
from broker.ops.inventory import Broker, Cluster
from broker.ops.steps import (
    Outcome,
    Progress,
    StepFailed,
    StepResult,
    ask_or_refuse,
    done,
    failed,
    plan,
    run_procedure,
    skipped,
    step,
)
from broker.ops.view import ids_text

TABLE = "brk_isolate"
PROBE_SECONDS = 2


def _addresses(brokers: list[Broker]) -> list[str]:
    return sorted({b.host for b in brokers})


def _check_separable(cluster: Cluster, region: str) -> tuple[list[Broker], list[str]]:
    hosts = cluster.in_region(region)
    mine, theirs = set(_addresses(hosts)), _addresses(cluster.outside(region))
    shared = mine & set(theirs)
    if shared:
        raise StepFailed(
            f"{region} shares addresses {', '.join(sorted(shared))} with the other region: "
            "they cannot be cut apart by the network (on one machine, use stop-region)",
            "changed nothing",
        )
    return hosts, theirs


def _ruleset(others: list[str]) -> str:
    peers = ", ".join(others)
    return (
        f"table inet {TABLE} {{\n"
        f"  chain input {{ type filter hook input priority -10; policy accept; "
        f"ip saddr {{ {peers} }} drop; }}\n"
        f"  chain output {{ type filter hook output priority -10; policy accept; "
        f"ip daddr {{ {peers} }} drop; }}\n"
        "}\n"
    )


def _isolated(broker: Broker) -> bool:
    # no `|| true`: an nft that may not read the tables (no root) must fail, not say "no"
    out = run_on(broker, "nft list tables inet", root=True)
    return f"table inet {TABLE}" in out


def _reaches(broker: Broker, target: Broker) -> bool:
    """Does a TCP connection from ``broker``'s host reach ``target``'s host? A refused
    connection counts (the host answered; the broker may be down); a drop does not."""
    port = target.ports["internal"]
    probe = f"timeout {PROBE_SECONDS} bash -c {shlex.quote(f'</dev/tcp/{target.host}/{port}')}"
    out = run_on(broker, f"{probe} 2>&1 && echo connected || true")
    return "connected" in out or "refused" in out


@step("cut the region off from the other region (nftables on its hosts)", acts=True)
def isolate_region(
    cluster: Cluster, region: str, *, dry_run: bool = False, approve: Callable[[str], bool]
) -> Outcome:
    hosts, others = _check_separable(cluster, region)
    todo = [b for b in hosts if not _isolated(b)]
    if not todo:
        return skipped(f"every host of {region} already drops traffic of {', '.join(others)}")
    ids = ids_text(b.node_id for b in todo)
    if dry_run:
        return skipped(f"brokers {ids} of {region} are connected", "dry run: would isolate them")
    if not approve(f"Cut brokers {ids} of {region} off from {', '.join(others)}?"):
        return failed("the operator did not confirm", "cut nothing")
    rules = shlex.quote(_ruleset(others))
    for b in todo:
        run_on(b, f"printf %s {rules} | nft -f -", root=True)
    probe, target = hosts[0], cluster.outside(region)[0]
    if _reaches(probe, target):
        raise StepFailed(
            f"the rules are in place but {probe.label()} still reaches {target.label()}",
            "check the hosts' nftables",
        )
    return done(
        f"brokers {ids} of {region} were connected to the other region",
        f"dropped their traffic to and from {', '.join(others)}; "
        f"{probe.label()} no longer reaches {target.label()}",
    )


@step("restore the traffic between the regions", acts=True)
def heal_region(cluster: Cluster, region: str, *, dry_run: bool = False) -> Outcome:
    try:
        hosts, _ = _check_separable(cluster, region)
    except StepFailed as exc:  # regions that cannot be cut apart were never cut
        return skipped(exc.saw.split(":")[0] + ": never cut", "nothing to heal")
    todo = [b for b in hosts if _isolated(b)]
    if not todo:
        return skipped(f"no host of {region} has the {TABLE} rules", "nothing to heal")
    ids = ids_text(b.node_id for b in todo)
    if dry_run:
        return skipped(f"brokers {ids} of {region} are cut off", "dry run: would heal them")
    for b in todo:
        run_on(b, f"nft delete table inet {TABLE}", root=True)
    probe, target = hosts[0], cluster.outside(region)[0]
    if not _reaches(probe, target):
        raise StepFailed(
            f"the rules are gone but {probe.label()} does not reach {target.label()}",
            "check the network between the regions",
        )
    return done(
        f"brokers {ids} of {region} were cut off",
        f"removed the {TABLE} rules; {probe.label()} reaches {target.label()} again",
    )


def run_isolate(
    cluster: Cluster,
    region: str,
    *,
    dry_run: bool = False,
    yes: bool = False,
    confirm: Callable[[str], bool] | None = None,
    progress: Progress | None = None,
) -> list[StepResult]:
    cluster.check_region(region)
    approve = ask_or_refuse(yes, confirm)
    steps = plan(
        (isolate_region, lambda: isolate_region(cluster, region, dry_run=dry_run, approve=approve))
    )
    return run_procedure(steps, progress)


def run_heal(
    cluster: Cluster, region: str, *, dry_run: bool = False, progress: Progress | None = None
) -> list[StepResult]:
    cluster.check_region(region)
    return run_procedure(
        plan((heal_region, lambda: heal_region(cluster, region, dry_run=dry_run))), progress
    )
