"""The topology part of the management API, compatible with Zeebe's (DESIGN section 5).

Changes are planned on the broker that receives the request and carried out
by the coordinator: the lowest active broker, or for a forced change the
lowest retained one. A request arriving elsewhere is forwarded there as is.

Guards against the known field failures:
* a forced removal of brokers that are reachable is refused (it is how a
  typo once removed the surviving region) unless the request says
  ``allowRemovingReachableBrokers=true``;
* a forced removal whose retained brokers are not all reachable is refused;
* a second change while one is pending gets 409, except that an identical
  retried forced request is answered with the change already under way (or
  already completed) instead of failing or applying twice.

Bounds, checked before anything is planned, forwarded or persisted (400 with
the field and the allowed range): broker ids 0..MAX_BROKER_ID (Zeebe's 32-bit
ids; a larger id cannot be gossiped), at most MAX_BROKERS brokers in a request
or in the resulting cluster (brokers.count, add/remove lists, the POST list),
a replication factor of 1..MAX_BROKERS, and at most MAX_PLAN_OPERATIONS
operations in a plan (a plan that could be far larger is refused before it is
computed).
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request

from broker.node.management import (
    INT32_MAX,
    HttpError,
    Request,
    Response,
    Route,
    empty_response,
    json_response,
    parse_int,
)
from broker.node.topology import now_iso
from broker.topology import model as t

OVERRIDE = "allowRemovingReachableBrokers"
# Broker ids are Zeebe's 32-bit node ids.
MAX_BROKER_ID = INT32_MAX
# The largest cluster a request may ask for (and the longest list of brokers in one).
MAX_BROKERS = 1024
# The most operations one change may have. Computing the expected topology grows
# with operations x replicas: 4096 operations take about 0.5 s, 9000 about 9 s.
MAX_PLAN_OPERATIONS = 4096
# Refused before planning at all: an upper estimate of the operations (partitions x
# (new + current replication factor) + brokers); planning is linear in it.
MAX_PLAN_ESTIMATE = 64 * MAX_PLAN_OPERATIONS


def _ids(values, what: str) -> list[int]:
    if not isinstance(values, list):
        raise HttpError(400, f"{what} must be a JSON array of broker ids")
    if len(values) > MAX_BROKERS:
        raise HttpError(
            400, f"{what} names {len(values)} brokers; at most {MAX_BROKERS} are allowed"
        )
    out = []
    for v in values:
        if isinstance(v, str):
            out.append(parse_int(f"{what} broker id", v, 0, MAX_BROKER_ID))
        elif isinstance(v, int) and not isinstance(v, bool):
            if not 0 <= v <= MAX_BROKER_ID:
                raise HttpError(
                    400, f"{what}: broker id {v} is out of range (0 to {MAX_BROKER_ID})"
                )
            out.append(v)
        else:
            raise HttpError(400, f"{what}: {_show(v)} is not a broker id")
    return out


def _show(value, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _replication_factor(value, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise HttpError(400, f"{what} must be an integer")
    if not 1 <= value <= MAX_BROKERS:
        raise HttpError(400, f"{what} must be between 1 and {MAX_BROKERS}, got {value}")
    return value


def _check_size(cfg: t.ClusterConfig, brokers: list[int], rf: int | None) -> None:
    """Refuse a plan that would be too large before computing it."""
    target = set(brokers)
    if len(target) > MAX_BROKERS:
        raise HttpError(
            400,
            f"the resulting cluster would have {len(target)} brokers; "
            f"at most {MAX_BROKERS} are allowed",
        )
    current = cfg.active_members()
    new_rf = rf if rf is not None else cfg.replication_factor()
    bound = cfg.partitions_count * (new_rf + cfg.replication_factor())
    bound += len(target) + len(current)
    if bound > MAX_PLAN_ESTIMATE:
        raise HttpError(
            400,
            f"the change could need up to {bound} operations; "
            f"at most {MAX_PLAN_OPERATIONS} are allowed",
        )


def _check_plan(ops: list[t.Operation]) -> None:
    if len(ops) > MAX_PLAN_OPERATIONS:
        raise HttpError(
            400,
            f"the change needs {len(ops)} operations; at most {MAX_PLAN_OPERATIONS} are "
            "allowed (change the cluster in smaller steps)",
        )


def _respond_change(source, req: Request, ops, force: bool, request_key: str) -> Response:
    manager = source.topology_manager
    cfg = manager.config
    now = now_iso()
    if req.query_bool("dryRun"):
        return json_response(
            {
                "changeId": None,
                "currentTopology": cfg.to_api()["brokers"],
                "plannedChanges": [op.to_api() for op in ops],
                "expectedTopology": t.expected(cfg, ops, now).to_api()["brokers"],
            },
            status=200,
        )
    pending = cfg.pending_change
    if force and pending is not None and pending.force and pending.request == request_key:
        return _accepted(cfg, pending.id, pending.pending, cfg)  # identical retry
    last = cfg.last_change
    if force and not ops and last is not None and last.force and last.request == request_key:
        return _accepted(cfg, last.id, [], cfg)  # already done
    try:
        new = manager.begin(ops, force=force, request=request_key)
    except t.ChangeInProgress as exc:
        raise HttpError(409, f"another topology change is in progress: {exc}") from None
    change_id = (new.pending_change or new.last_change).id
    return _accepted(cfg, change_id, ops, t.expected(cfg, ops, now))


def _accepted(current: t.ClusterConfig, change_id: int, ops, expected) -> Response:
    return json_response(
        {
            "changeId": change_id,
            "currentTopology": current.to_api()["brokers"],
            "plannedChanges": [op.to_api() for op in ops],
            "expectedTopology": expected.to_api()["brokers"],
        },
        status=202,
    )


def _forward_or_none(source, req: Request, coordinator: int) -> Response | None:
    """Forward the request to the coordinator unless that is us."""
    if coordinator == source.node_id:
        return None
    member = source.peers.members.get(coordinator)
    if member is None or not member.management_port or not source.peers.alive(coordinator):
        raise HttpError(503, f"the coordinator, broker {coordinator}, is not reachable")
    ssl_context = source.management_client_ssl  # this broker's own cert, with TLS
    scheme = "https" if ssl_context is not None else "http"
    url = f"{scheme}://{member.host}:{member.management_port}{req.path}"
    if req.query:
        url += "?" + urllib.parse.urlencode([(k, v) for k, vs in req.query.items() for v in vs])
    fwd = urllib.request.Request(url, data=req.body or None, method=req.method)
    fwd.add_header("Content-Type", "application/json")
    if source.cfg.management.token:
        fwd.add_header("Authorization", f"Bearer {source.cfg.management.token}")
    try:
        with urllib.request.urlopen(fwd, timeout=10, context=ssl_context) as resp:
            return Response(resp.status, resp.read(), "application/json")
    except urllib.error.HTTPError as exc:
        return Response(exc.code, exc.read(), "application/json")
    except OSError as exc:
        raise HttpError(503, f"cannot reach the coordinator, broker {coordinator}: {exc}") from None


def _scale(source, req: Request, brokers: list[int], rf: int | None) -> Response:
    cfg = source.topology_manager.config
    _check_size(cfg, brokers, rf)
    forwarded = _forward_or_none(source, req, cfg.coordinator())
    if forwarded is not None:
        return forwarded
    try:
        ops = t.plan_scale(cfg, brokers, rf)
    except t.PlanError as exc:
        raise HttpError(400, str(exc)) from None
    _check_plan(ops)
    return _respond_change(source, req, ops, False, f"scale:{sorted(brokers)}:{rf}")


def _force_remove(source, req: Request, retained: list[int]) -> Response:
    cfg = source.topology_manager.config
    retained = sorted(set(retained))
    try:
        ops = t.plan_force_remove(cfg, retained)
    except t.PlanError as exc:
        raise HttpError(400, str(exc)) from None
    removed = [op.broker_id for op in ops if op.operation == t.BROKER_FORCE_REMOVE]
    # Direct probes, not gossip: one forged record must not decide a forced change.
    # All at once: the lost region's brokers each take the whole probe timeout.
    answered = source.peers.reachable_among([*retained, *removed])
    unreachable = [b for b in retained if b not in answered]
    if unreachable:
        raise HttpError(
            400,
            f"retained brokers {unreachable} are not reachable; a forced change needs every "
            "retained broker (fix or exclude them first)",
        )
    reachable = [b for b in removed if b in answered]
    if reachable and not req.query_bool(OVERRIDE):
        raise HttpError(
            400,
            f"refusing to force-remove brokers {reachable}: they are reachable. Forcing out "
            "live brokers is how the surviving region gets removed by mistake (data loss). "
            f"If you are sure, repeat with {OVERRIDE}=true",
        )
    forwarded = _forward_or_none(source, req, retained[0])
    if forwarded is not None:
        return forwarded
    return _respond_change(source, req, ops, True, f"force:{retained}")


def _initialized(source) -> t.ClusterConfig:
    """The configuration a change is planned on; a new broker without one refuses."""
    cfg = source.topology_manager.config
    if not cfg.initialized:
        raise HttpError(
            503,
            f"broker {source.node_id} has no cluster configuration yet (it waits for a "
            "peer's); send the request to a broker of the cluster",
        )
    return cfg


# --- handlers -------------------------------------------------------------------------


def get_cluster(source, req: Request) -> Response:
    return json_response(source.topology_manager.config.to_api())


def post_brokers(source, req: Request) -> Response:
    _initialized(source)
    rf = req.query_int("replicationFactor", None, 1, MAX_BROKERS)
    brokers = _ids(req.json(), "body")
    if req.query_bool("force"):
        return _force_remove(source, req, brokers)
    return _scale(source, req, brokers, rf)


def add_broker(source, req: Request) -> Response:
    _initialized(source)
    cfg = source.topology_manager.config
    added = req.path_int("id", 0, MAX_BROKER_ID)
    return _scale(source, req, [*cfg.active_members(), added], None)


def remove_broker(source, req: Request) -> Response:
    _initialized(source)
    cfg = source.topology_manager.config
    gone = req.path_int("id", 0, MAX_BROKER_ID)
    if gone not in cfg.active_members():
        raise HttpError(400, f"broker {gone} is not a member")
    return _scale(source, req, [m for m in cfg.active_members() if m != gone], None)


def patch_cluster(source, req: Request) -> Response:
    _initialized(source)
    body = req.json()
    if not isinstance(body, dict):
        raise HttpError(400, "body must be a JSON object with 'brokers' and/or 'partitions'")
    brokers = body.get("brokers")
    partitions = body.get("partitions")
    brokers = {} if brokers is None else brokers
    partitions = {} if partitions is None else partitions
    if not isinstance(brokers, dict) or not isinstance(partitions, dict):
        raise HttpError(400, "'brokers' and 'partitions' must be JSON objects")
    unknown = [f"{k}" for k in body if k not in ("brokers", "partitions")]
    unknown += [f"brokers.{k}" for k in brokers if k not in ("add", "remove", "count")]
    unknown += [f"partitions.{k}" for k in partitions if k != "replicationFactor"]
    if unknown:
        raise HttpError(400, f"unsupported fields: {', '.join(unknown)}")
    if "count" in brokers and ("add" in brokers or "remove" in brokers):
        raise HttpError(400, "brokers.count cannot be combined with brokers.add or remove")
    cfg = source.topology_manager.config
    add = _ids(brokers.get("add", []), "brokers.add")
    remove = _ids(brokers.get("remove", []), "brokers.remove")
    rf = _replication_factor(partitions.get("replicationFactor"), "partitions.replicationFactor")
    if req.query_bool("force"):
        if add or "count" in brokers or rf is not None:
            raise HttpError(400, "a forced change can only remove brokers")
        return _force_remove(source, req, [m for m in cfg.active_members() if m not in remove])
    if "count" in brokers:
        count = brokers["count"]
        if isinstance(count, bool) or not isinstance(count, int):
            raise HttpError(400, "brokers.count must be an integer")
        if not 1 <= count <= MAX_BROKERS:
            raise HttpError(400, f"brokers.count must be between 1 and {MAX_BROKERS}, got {count}")
        target = list(range(count))
    else:
        target = [m for m in {*cfg.active_members(), *add} if m not in remove]
    return _scale(source, req, target, rf)


def get_exporters(source, req: Request) -> Response:
    cfg = source.topology_manager.config
    return json_response(
        [{"exporterId": ex, "status": st} for ex, st in sorted(cfg.exporters().items())]
    )


def _exporter(enable: bool):
    def handler(source, req: Request) -> Response:
        cfg = _initialized(source)
        forwarded = _forward_or_none(source, req, cfg.coordinator())
        if forwarded is not None:
            return forwarded
        body = req.json(required=False) or {}
        if not isinstance(body, dict):
            raise HttpError(400, "body must be a JSON object")
        init = body.get("initializeFrom") if enable else None
        if init is not None and not isinstance(init, str):
            raise HttpError(400, "initializeFrom must be an exporter id (a string) or null")
        exporter = req.path_params["id"]
        try:
            ops = t.plan_exporter(cfg, exporter, enable, init)
        except t.PlanError as exc:
            raise HttpError(404 if "no exporter" in str(exc) else 400, str(exc)) from None
        return _respond_change(source, req, ops, False, f"exporter:{exporter}:{enable}:{init}")

    return handler


def _exporting(paused: bool):
    def handler(source, req: Request) -> Response:
        def set_paused(cfg: t.ClusterConfig) -> None:
            cfg.exporting_paused = paused

        if _initialized(source).exporting_paused != paused:
            source.topology_manager.update(set_paused)
        return empty_response(204)

    return handler


def rebalance(source, req: Request) -> Response:
    source.rebalance()
    return json_response({"message": "leaders that are not their partition's primary step down"})


ROUTES: tuple[Route, ...] = (
    Route("GET", "/actuator/cluster", get_cluster),
    Route("POST", "/actuator/cluster/brokers", post_brokers),
    Route("POST", "/actuator/cluster/brokers/{id}", add_broker),
    Route("DELETE", "/actuator/cluster/brokers/{id}", remove_broker),
    Route("PATCH", "/actuator/cluster", patch_cluster),
    Route("GET", "/actuator/exporters", get_exporters),
    Route("POST", "/actuator/exporters/{id}/enable", _exporter(True)),
    Route("POST", "/actuator/exporters/{id}/disable", _exporter(False)),
    Route("POST", "/actuator/exporting/pause", _exporting(True)),
    Route("POST", "/actuator/exporting/resume", _exporting(False)),
    Route("POST", "/actuator/rebalance", rebalance),
)
