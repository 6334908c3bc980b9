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
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request

from broker.node.management import (
    HttpError,
    Request,
    Response,
    Route,
    empty_response,
    json_response,
)
from broker.node.topology import now_iso
from broker.topology import model as t

OVERRIDE = "allowRemovingReachableBrokers"


def _ids(values, what: str) -> list[int]:
    if not isinstance(values, list):
        raise HttpError(400, f"{what} must be a JSON array of broker ids")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | str):
            raise HttpError(400, f"{what}: {v!r} is not a broker id")
        try:
            out.append(int(v))
        except ValueError:
            raise HttpError(400, f"{what}: {v!r} is not a broker id") from None
    return out


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
    url = f"http://{member.host}:{member.management_port}{req.path}"
    if req.query:
        url += "?" + urllib.parse.urlencode([(k, v) for k, vs in req.query.items() for v in vs])
    fwd = urllib.request.Request(url, data=req.body or None, method=req.method)
    fwd.add_header("Content-Type", "application/json")
    if source.cfg.management.token:
        fwd.add_header("Authorization", f"Bearer {source.cfg.management.token}")
    try:
        with urllib.request.urlopen(fwd, timeout=10) as resp:
            return Response(resp.status, resp.read(), "application/json")
    except urllib.error.HTTPError as exc:
        return Response(exc.code, exc.read(), "application/json")
    except OSError as exc:
        raise HttpError(503, f"cannot reach the coordinator, broker {coordinator}: {exc}") from None


def _scale(source, req: Request, brokers: list[int], rf: int | None) -> Response:
    cfg = source.topology_manager.config
    forwarded = _forward_or_none(source, req, cfg.coordinator())
    if forwarded is not None:
        return forwarded
    try:
        ops = t.plan_scale(cfg, brokers, rf)
    except t.PlanError as exc:
        raise HttpError(400, str(exc)) from None
    return _respond_change(source, req, ops, False, f"scale:{sorted(brokers)}:{rf}")


def _force_remove(source, req: Request, retained: list[int]) -> Response:
    cfg = source.topology_manager.config
    retained = sorted(set(retained))
    try:
        ops = t.plan_force_remove(cfg, retained)
    except t.PlanError as exc:
        raise HttpError(400, str(exc)) from None
    removed = [op.broker_id for op in ops if op.operation == t.BROKER_FORCE_REMOVE]
    unreachable = [b for b in retained if not source.peers.alive(b)]
    if unreachable:
        raise HttpError(
            400,
            f"retained brokers {unreachable} are not reachable; a forced change needs every "
            "retained broker (fix or exclude them first)",
        )
    reachable = [b for b in removed if source.peers.alive(b)]
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


# --- handlers -------------------------------------------------------------------------


def get_cluster(source, req: Request) -> Response:
    return json_response(source.topology_manager.config.to_api())


def post_brokers(source, req: Request) -> Response:
    brokers = _ids(req.json(), "body")
    if req.query_bool("force"):
        return _force_remove(source, req, brokers)
    return _scale(source, req, brokers, req.query_int("replicationFactor"))


def add_broker(source, req: Request) -> Response:
    cfg = source.topology_manager.config
    return _scale(source, req, [*cfg.active_members(), req.path_int("id")], None)


def remove_broker(source, req: Request) -> Response:
    cfg = source.topology_manager.config
    gone = req.path_int("id")
    if gone not in cfg.active_members():
        raise HttpError(400, f"broker {gone} is not a member")
    return _scale(source, req, [m for m in cfg.active_members() if m != gone], None)


def patch_cluster(source, req: Request) -> Response:
    body = req.json()
    if not isinstance(body, dict):
        raise HttpError(400, "body must be a JSON object with 'brokers' and/or 'partitions'")
    brokers = body.get("brokers") or {}
    partitions = body.get("partitions") or {}
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
    rf = partitions.get("replicationFactor")
    if rf is not None and (isinstance(rf, bool) or not isinstance(rf, int)):
        raise HttpError(400, "partitions.replicationFactor must be an integer")
    if req.query_bool("force"):
        if add or "count" in brokers or rf is not None:
            raise HttpError(400, "a forced change can only remove brokers")
        return _force_remove(source, req, [m for m in cfg.active_members() if m not in remove])
    if "count" in brokers:
        count = brokers["count"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise HttpError(400, "brokers.count must be a positive integer")
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
        cfg = source.topology_manager.config
        forwarded = _forward_or_none(source, req, cfg.coordinator())
        if forwarded is not None:
            return forwarded
        body = req.json(required=False) or {}
        if not isinstance(body, dict):
            raise HttpError(400, "body must be a JSON object")
        init = body.get("initializeFrom") if enable else None
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

        if source.topology_manager.config.exporting_paused != paused:
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
