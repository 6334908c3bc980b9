"""What the cluster looks like from the controller: reads over the management APIs.

Pure helpers over the API documents (``members``, ``replica_sets``, ``leaders``)
and a few reads that ask several brokers (``first_answering``, ``docs_from``).
Nothing here changes the cluster.
"""

from __future__ import annotations

import shlex
import socket
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from broker.ops.api import DEFAULT_FORM, ApiError, ManagementApi
from broker.ops.control import run_on
from broker.ops.inventory import Broker, Cluster
from broker.ops.steps import StepFailed

PROBE_TIMEOUT = 1.0


def api_of(cluster: Cluster, broker: Broker, form: str = DEFAULT_FORM, timeout: float = 5.0):
    return ManagementApi(
        broker.management_url,
        timeout=timeout,
        token=cluster.token,
        form=form,
        ssl_context=cluster.ssl_context(),
    )


def first_answering(
    cluster: Cluster, brokers: Iterable[Broker], form: str = DEFAULT_FORM
) -> tuple[Broker, ManagementApi, dict]:
    """The lowest-id broker of ``brokers`` whose management API answers, its client and
    its /actuator/cluster document; StepFailed naming every broker tried otherwise."""
    errors = []
    for b in sorted(brokers, key=lambda b: b.node_id):
        api = api_of(cluster, b, form)
        try:
            return b, api, api.cluster()
        except ApiError as exc:
            errors.append(f"{b.label()}: {exc.message}")
    raise StepFailed("no management API answers: " + "; ".join(errors))


def docs_from(
    cluster: Cluster, brokers: Iterable[Broker], what: str = "cluster"
) -> dict[int, dict | ApiError]:
    """``what`` (cluster, topology, partitions) from every broker, in parallel:
    node id -> document, or the ApiError that broker gave."""
    brokers = list(brokers)

    def read(b: Broker):
        try:
            return getattr(api_of(cluster, b, timeout=3.0), what)()
        except ApiError as exc:
            return exc

    with ThreadPoolExecutor(max(1, len(brokers))) as pool:
        return dict(zip((b.node_id for b in brokers), pool.map(read, brokers), strict=True))


# --- reachability ------------------------------------------------------------------------


def answering_ports(brokers: Iterable[Broker], timeout: float = PROBE_TIMEOUT) -> list[str]:
    """Every port (management, gateway, internal) of ``brokers`` that accepts a TCP
    connection from here, as "broker 1 management 10.0.0.2:9600"; probed in parallel."""
    targets = [(b, name, port) for b in brokers for name, port in b.ports.items()]

    def answers(target) -> bool:
        b, _, port = target
        try:
            with socket.create_connection((b.host, port), timeout=timeout):
                return True
        except OSError:
            return False

    if not targets:
        return []
    with ThreadPoolExecutor(len(targets)) as pool:
        results = list(pool.map(answers, targets))
    return [
        f"broker {b.node_id} {name} {b.host}:{port}"
        for (b, name, port), ok in zip(targets, results, strict=True)
        if ok
    ]


def answering_ports_from(
    sources: Iterable[Broker], brokers: Iterable[Broker], timeout: float = PROBE_TIMEOUT
) -> dict[int, list[str] | StepFailed]:
    """``answering_ports`` as seen from other hosts (over SSH, in parallel): source broker
    id -> the ports of ``brokers`` that accept a connection from its host. Sources on
    this machine are skipped: ``answering_ports`` already saw from here."""
    targets = [(b, name, port) for b in brokers for name, port in b.ports.items()]
    seconds = max(1, round(timeout))
    probes = " ".join(
        f"timeout {seconds} bash -c {shlex.quote(f'</dev/tcp/{b.host}/{port}')} 2>/dev/null "
        f"&& echo {i};"
        for i, (b, _, port) in enumerate(targets)
    )
    remote = [s for s in sources if not s.is_local]
    if not targets or not remote:
        return {}

    def probe(source: Broker) -> list[str] | StepFailed:
        try:
            out = run_on(source, probes, timeout=10 + seconds * len(targets))
        except StepFailed as exc:  # the caller decides what an unreachable host means
            return exc
        hits = {int(x) for x in out.split() if x.isdigit()}
        return [
            f"broker {b.node_id} {name} {b.host}:{port}"
            for i, (b, name, port) in enumerate(targets)
            if i in hits
        ]

    with ThreadPoolExecutor(len(remote)) as pool:
        return dict(zip((s.node_id for s in remote), pool.map(probe, remote), strict=True))


# --- the cluster configuration (GET /actuator/cluster) ------------------------------------


def members(doc: dict) -> dict[int, str]:
    """Broker id -> state for every broker that has not LEFT."""
    return {int(b["id"]): b["state"] for b in doc.get("brokers", []) if b["state"] != "LEFT"}


def replica_sets(doc: dict) -> dict[int, set[int]]:
    """Partition id -> the brokers holding a replica (brokers that have not LEFT)."""
    out: dict[int, set[int]] = {}
    for b in doc.get("brokers", []):
        if b["state"] != "LEFT":
            for p in b.get("partitions", []):
                out.setdefault(int(p["id"]), set()).add(int(b["id"]))
    return out


def pending_ops(doc: dict) -> list[dict]:
    pending = doc.get("pendingChange")
    return list(pending.get("pending", [])) + list(pending.get("completed", [])) if pending else []


def describe_change(change: dict | None) -> str:
    if not change:
        return "none"
    return f"change {change['id']} {change['status']} (started {change.get('startedAt')})"


def describe_pending(doc: dict) -> str:
    pending = doc.get("pendingChange")
    if not pending:
        return "no change pending"
    names = sorted({f"{op['operation']} {op['brokerId']}" for op in pending.get("pending", [])})
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    return (
        f"change {pending['id']} is {pending['status']} since {pending.get('startedAt')}: "
        f"{len(pending.get('completed', []))} operations done, "
        f"{len(pending.get('pending', []))} to go ({shown})"
    )


# --- exporters ---------------------------------------------------------------------------


def exporter_state_everywhere(
    cluster: Cluster, brokers: list[Broker], exporter: str, want: str, change_id: int
) -> tuple[bool, str]:
    """(every broker completed ``change_id`` and has ``exporter`` in state ``want``, what
    was seen): the condition the exporter steps wait for."""
    waiting = []
    for node, doc in docs_from(cluster, brokers).items():
        if isinstance(doc, ApiError):
            waiting.append(f"broker {node} does not answer")
        elif doc.get("pendingChange") or (doc.get("lastChange") or {}).get("id", 0) < change_id:
            waiting.append(f"broker {node} has not completed change {change_id}")
    if not waiting:
        for node, states in exporter_states(cluster, brokers).items():
            if states.get(exporter) != want:
                waiting.append(f"broker {node} has {exporter} {states.get(exporter)}")
    ids = ids_text(b.node_id for b in brokers)
    return not waiting, "; ".join(waiting) or f"{exporter} {want} on brokers {ids}"


def exporter_states(cluster: Cluster, brokers: list[Broker]) -> dict[int, dict[str, str]]:
    return {b.node_id: api_of(cluster, b).exporters() for b in brokers}


# --- the topology (GET /v2/topology) ------------------------------------------------------


def alive_map(topology: dict) -> dict[int, bool]:
    return {int(b["nodeId"]): bool(b.get("alive", True)) for b in topology.get("brokers", [])}


def leaders(topology: dict) -> dict[int, int]:
    """Partition id -> the live leader with the highest term, as one broker sees it
    (a deposed leader's claim may linger in gossip for a moment)."""
    best: dict[int, tuple[int, int]] = {}
    for b in topology.get("brokers", []):
        if not b.get("alive", True):
            continue
        for p in b.get("partitions", []):
            pid, term = int(p["partitionId"]), int(p.get("term") or 0)
            if p.get("role") == "leader" and term >= best.get(pid, (-1, -1))[0]:
                best[pid] = (term, int(b["nodeId"]))
    return {pid: node for pid, (_, node) in best.items()}


def ids_text(ids: Iterable[int]) -> str:
    ids = sorted(ids)
    return ",".join(str(i) for i in ids) if ids else "none"
