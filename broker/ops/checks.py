"""Steps shared by failover, failback and `fab verify`: waiting and verifying.

Each takes the brokers it is about (the survivors during a failover, every
broker after a failback) and checks them all, not just one: a change is
complete only when every one of them has it, a partition is writable only
when a write to it is acknowledged and reads back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from broker.client import BrokerClient, BrokerError, DeadlineExceeded, Unavailable
from broker.ops.api import ApiError
from broker.ops.inventory import Broker, Cluster
from broker.ops.steps import Outcome, StepFailed, done, failed, skipped, step, wait_until
from broker.ops.view import (
    alive_map,
    api_of,
    docs_from,
    first_answering,
    ids_text,
    leaders,
    replica_sets,
)
from broker.placement import check_runtime

CHANGE_TIMEOUT = 60.0
LEADER_TIMEOUT = 30.0
WRITE_TIMEOUT = 30.0
CATCH_UP_TIMEOUT = 120.0
PLACEMENT_TIMEOUT = 30.0


def partition_count(cluster: Cluster, brokers: Iterable[Broker]) -> int:
    """The live partitionsCount (from /v2/topology), else the inventory's."""
    for doc in docs_from(cluster, brokers, "topology").values():
        if isinstance(doc, dict) and doc.get("partitionsCount"):
            return int(doc["partitionsCount"])
    return cluster.partitions


@step("wait until the topology change is complete on every broker")
def wait_for_change_completed(
    cluster: Cluster,
    brokers: Iterable[Broker],
    *,
    change_id: int | None = None,
    holds: Callable[[dict], bool] | None = None,
    timeout: float = CHANGE_TIMEOUT,
) -> Outcome:
    """Complete means: no change pending on any of ``brokers``, the last change (at
    least ``change_id``) COMPLETED, and ``holds(doc)`` true for every broker's copy."""
    brokers = list(brokers)
    _, _, first = first_answering(cluster, brokers)
    if change_id is None:
        change = first.get("pendingChange") or first.get("lastChange") or {}
        change_id = change.get("id")

    def everywhere() -> tuple[bool, str]:
        waiting = []
        for node, doc in docs_from(cluster, brokers).items():
            if isinstance(doc, ApiError):
                waiting.append(f"broker {node} does not answer ({doc.message})")
                continue
            last, pending = doc.get("lastChange") or {}, doc.get("pendingChange")
            if last.get("id") == change_id and last.get("status") in ("FAILED", "CANCELLED"):
                raise StepFailed(
                    f"change {change_id} ended {last['status']} (seen on broker {node}); "
                    "look at GET /actuator/cluster and the brokers' logs before retrying"
                )
            if pending:
                p = pending
                waiting.append(
                    f"broker {node}: change {p['id']} {len(p.get('completed', []))}/"
                    f"{len(p.get('completed', [])) + len(p.get('pending', []))} operations done"
                )
            elif change_id is not None and (last.get("id") or 0) < change_id:
                waiting.append(f"broker {node} has not learnt change {change_id} yet")
            elif holds is not None and not holds(doc):
                waiting.append(f"broker {node} does not show the change's result yet")
        return not waiting, "; ".join(waiting) or f"change {change_id} COMPLETED"

    holds_now, _ = everywhere()
    where = f"brokers {ids_text(b.node_id for b in brokers)}"
    if holds_now:
        return done(f"change {change_id} is COMPLETED on {where}", "no wait needed")
    started = time.monotonic()
    seen = wait_until(everywhere, timeout, f"change {change_id} to complete on {where}")
    return done(seen + f" on {where}", f"waited {time.monotonic() - started:.1f}s")


@step("wait for a leader on every partition")
def wait_for_leaders(
    cluster: Cluster, brokers: Iterable[Broker], *, timeout: float = LEADER_TIMEOUT
) -> Outcome:
    """Every partition has a live leader among ``brokers``, as the first of them sees it."""
    brokers = list(brokers)
    allowed = {b.node_id for b in brokers}
    count = partition_count(cluster, brokers)

    def all_led() -> tuple[bool, str]:
        broker, api, _ = first_answering(cluster, brokers)
        led = {p: n for p, n in leaders(api.topology()).items() if n in allowed}
        missing = [p for p in range(1, count + 1) if p not in led]
        seen = ", ".join(f"p{p}:{n}" for p, n in sorted(led.items()))
        if missing:
            return False, f"no leader for partitions {ids_text(missing)} (leaders {seen or '-'})"
        return True, f"leaders {seen} (seen by broker {broker.node_id})"

    holds, seen = all_led()
    if holds:
        return done(seen, "no wait needed")
    started = time.monotonic()
    seen = wait_until(all_led, timeout, f"a leader on all {count} partitions")
    return done(seen, f"waited {time.monotonic() - started:.1f}s")


@step("write and read back a record on every partition")
def verify_writes(
    cluster: Cluster,
    brokers: Iterable[Broker],
    *,
    timeout: float = WRITE_TIMEOUT,
    label: str = "ops-verify",
) -> Outcome:
    """Append one record to each partition through ``brokers``' gateways; read it back."""
    brokers = list(brokers)
    count = partition_count(cluster, brokers)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    started = time.monotonic()
    deadline = started + timeout
    positions, first_ack = {}, {}
    gateways = ",".join(b.gateway for b in brokers)
    with BrokerClient(
        gateways, cluster.name, timeout=min(10.0, timeout), ssl_context=cluster.ssl_context()
    ) as client:
        for p in range(1, count + 1):
            data = f"{label} {stamp} partition {p}".encode()
            positions[p] = _append_with_retry(client, data, p, deadline)
            first_ack[p] = round(time.monotonic() - started, 3)
            got = client.read(p, positions[p], 1).records
            if not got or got[0] != (positions[p], data):
                raise StepFailed(
                    f"partition {p}: wrote position {positions[p]} but read back {got[:1]!r}"
                )
    where = ", ".join(f"p{p}@{pos}" for p, pos in positions.items())
    return done(
        f"all {count} partitions accept writes through {ids_text(b.node_id for b in brokers)}",
        f"wrote and read back one record per partition ({where})",
        positions=positions,
        first_ack_seconds=first_ack,
    )


def _append_with_retry(client: BrokerClient, data: bytes, partition: int, deadline: float) -> int:
    last: BrokerError | None = None
    while time.monotonic() < deadline:
        try:
            return client.append(data, partition).position
        except (Unavailable, DeadlineExceeded) as exc:  # a leader may still be settling
            last = exc
            time.sleep(0.1)
    raise StepFailed(f"partition {partition} accepts no write: {last}")


@step("wait until every replica has caught up with its leader")
def wait_caught_up(
    cluster: Cluster, brokers: Iterable[Broker], *, timeout: float = CATCH_UP_TIMEOUT
) -> Outcome:
    """Every replica of every partition has processed at least the position its leader
    had when we started waiting (so a busy cluster can still pass)."""
    brokers = list(brokers)

    def positions() -> tuple[dict[int, dict[int, int]], dict[int, int]]:
        """partition -> {broker: processedPosition}; partition -> leader."""
        out: dict[int, dict[int, int]] = {}
        led: dict[int, int] = {}
        for node, doc in docs_from(cluster, brokers, "partitions").items():
            if isinstance(doc, ApiError):
                continue
            for pid, info in doc.items():
                out.setdefault(int(pid), {})[node] = info.get("processedPosition") or 0
                if info.get("role") == "LEADER":
                    led[int(pid)] = node
        return out, led

    _, _, doc = first_answering(cluster, brokers)
    replicas = replica_sets(doc)
    now, led = positions()
    missing = [p for p in replicas if p not in led]
    if missing:
        raise StepFailed(f"partitions {ids_text(missing)} have no leader to catch up with")
    target = {p: now[p][led[p]] for p in replicas}

    def caught_up() -> tuple[bool, str]:
        now, _ = positions()
        behind = [
            f"p{p} broker {n} at {now.get(p, {}).get(n, 'none')} of {target[p]}"
            for p, members in sorted(replicas.items())
            for n in sorted(members)
            if (now.get(p, {}).get(n) or 0) < target[p]
        ]
        return not behind, ("behind: " + "; ".join(behind)) if behind else "all caught up"

    holds, seen = caught_up()
    summary = ", ".join(f"p{p}@{pos}" for p, pos in sorted(target.items()))
    if holds:
        return done(f"every replica is at its leader's position ({summary})", "no wait needed")
    started = time.monotonic()
    wait_until(caught_up, timeout, "every replica to catch up")
    return done(
        f"replicas were behind ({seen})",
        f"waited {time.monotonic() - started:.1f}s until all reached {summary}",
    )


CERT_WARN_DAYS = 30
EXPIRY_METRIC = "broker_tls_certificate_expiry_timestamp_seconds"


@step("check the brokers' TLS certificates")
def check_certificates(cluster: Cluster, brokers: Iterable[Broker]) -> Outcome:
    """Days left on each broker's certificate, as the broker itself reports it
    (its metric); under 30 days is a warning, an expired one fails."""
    if cluster.tls is None:
        return skipped("TLS is off in the inventory")
    now = time.time()
    left: dict[int, float] = {}
    unread = []
    for b in brokers:
        try:
            text = api_of(cluster, b).text("/actuator/prometheus")
        except ApiError as exc:
            unread.append(f"broker {b.node_id}: {exc.message}")
            continue
        expiry = _gauge(text, EXPIRY_METRIC)
        if expiry:
            left[b.node_id] = (expiry - now) / 86400
        else:
            unread.append(f"broker {b.node_id}: serves no certificate (TLS off on it?)")
    if not left:
        return failed("; ".join(unread) or "no broker to ask")
    expired = sorted(n for n, d in left.items() if d <= 0)
    if expired:
        return failed(f"the certificates of brokers {ids_text(expired)} have expired")
    soon = {n: d for n, d in left.items() if d < CERT_WARN_DAYS}
    saw = f"{min(left.values()):.0f} to {max(left.values()):.0f} days left"
    if unread:
        saw += "; " + "; ".join(unread)
    if soon:
        names = ", ".join(f"broker {n} in {d:.0f} days" for n, d in sorted(soon.items()))
        return done(
            saw, f"WARNING: certificates expire soon ({names}): run playbooks/rotate-certs.yml"
        )
    return done(saw, f"every certificate has over {CERT_WARN_DAYS} days left")


def _gauge(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            try:
                return float(line.split()[1])
            except (IndexError, ValueError):
                return None
    return None


@step("verify the replication factor and the placement across regions")
def verify_placement(
    cluster: Cluster,
    brokers: Iterable[Broker],
    *,
    replication_factor: int | None = None,
    timeout: float = PLACEMENT_TIMEOUT,
) -> Outcome:
    """``check_runtime``: RF replicas per partition, RF/2 in each region, a healthy
    quorum and one leader each."""
    brokers = list(brokers)
    rf = replication_factor or cluster.replication_factor

    def placement_ok() -> tuple[bool, str]:
        _, api, doc = first_answering(cluster, brokers)
        report = check_runtime(doc, api.topology(), cluster.regions_of(), rf)
        if report.ok:
            split = "+".join(str(n) for n in report.partitions[0].counts.values())
            return True, (
                f"{len(report.partitions)} partitions, {rf} replicas each ({split} per region), "
                "one healthy leader each"
            )
        return False, "; ".join(f.message for f in report.findings)

    holds, seen = placement_ok()
    if holds:
        return done(seen, "checked")
    started = time.monotonic()
    seen = wait_until(placement_ok, timeout, f"placement with RF {rf} to verify")
    return done(seen, f"checked (settled after {time.monotonic() - started:.1f}s)")


def wait_seen_dead(cluster: Cluster, region: str, timeout: float) -> str:
    """Wait until every answering survivor sees every broker of ``region`` dead (the
    membership's failure detection); returns what was seen."""
    ids = cluster.ids(cluster.in_region(region))

    def seen_dead() -> tuple[bool, str]:
        seeing = []
        for node, topo in docs_from(cluster, cluster.outside(region), "topology").items():
            if isinstance(topo, dict):
                seeing += [f"{node} sees {i} alive" for i in ids if alive_map(topo).get(i)]
        return not seeing, "; ".join(seeing) or f"the survivors see {ids_text(ids)} dead"

    return wait_until(seen_dead, timeout, f"the survivors to see {region} dead")
