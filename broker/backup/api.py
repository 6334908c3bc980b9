"""Zeebe's backup API on the management port, and the broker that coordinates one.

``POST /actuator/backups`` ``{"backupId": N}`` → 202 once every partition has
committed its checkpoint (the backup's cut is then fixed; the copies go on in
the background), 409 if the id exists or is not above the newest or while the
newest backup is still IN_PROGRESS, 400 for a bad
id or when no store is configured, 503 naming the partitions that could not
checkpoint (their backups are marked FAILED). ``GET /actuator/backups/{id}``
→ the state and a detail per partition; ``GET /actuator/backups`` → all of
them; ``DELETE /actuator/backups/{id}`` → 204 (404 if there is none).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future

from broker import __version__
from broker.backup.store import IN_PROGRESS, BackupExists, BackupStore, status
from broker.node.management import (
    HttpError,
    Request,
    Response,
    Route,
    empty_response,
    json_response,
)

MAX_BACKUP_ID = 2**63 - 1  # Zeebe's ids are positive longs
CHECKPOINT_TIMEOUT = 10.0  # seconds for every partition to commit its checkpoint


class Backups:
    """Takes backups for the cluster from this broker (any broker can)."""

    def __init__(
        self,
        store: BackupStore,
        control: Callable[[dict, float], Future],
        partitions_count: int,
        topology: Callable[[], dict],
        timeout: float = CHECKPOINT_TIMEOUT,
    ):
        """``control(body, timeout)`` runs a control command on a partition's leader
        (``Gateway.control``); ``topology()`` is the cluster topology to record."""
        self.store = store
        self.control = control
        self.partitions_count = partitions_count
        self.topology = topology
        self.timeout = timeout

    def take(self, backup_id: int) -> dict:
        """Record the backup, then checkpoint every partition; raises BackupExists when
        the id is taken or too low, or while the newest backup is still being copied
        (one at a time: what a broker queues for copying stays bounded)."""
        ids = self.store.ids()
        if ids and status(self.store, ids[-1])["state"] == IN_PROGRESS:
            raise BackupExists(f"backup {ids[-1]} is still in progress; try again once it ends")
        now = time.time()
        self.store.create(
            backup_id,
            {
                "backupId": backup_id,
                "requestedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                "requestedAtEpoch": now,
                "partitionsCount": self.partitions_count,
                "brokerVersion": __version__,
                "topology": self.topology(),
            },
        )
        futures = {
            pid: self.control(
                {"op": "_checkpoint", "partition": pid, "backupId": backup_id}, self.timeout
            )
            for pid in range(1, self.partitions_count + 1)
        }
        checkpoints, failed = [], []
        for pid, fut in futures.items():
            try:
                answer = fut.result(self.timeout + 5)
            except Exception as exc:
                answer = {"ok": False, "message": str(exc) or type(exc).__name__}
            if answer.get("ok"):
                checkpoints.append({"partitionId": pid, "checkpointPosition": answer["position"]})
            else:
                reason = f"checkpoint not committed: {answer.get('message', answer)}"
                self.store.fail_partition(backup_id, pid, reason)
                failed.append(f"partition {pid}: {reason}")
        return {"backupId": backup_id, "checkpoints": checkpoints, "failed": failed}


def _backups(source) -> Backups:
    backups = getattr(source, "backups", None)
    if backups is None:
        raise HttpError(400, "backups are not configured on this broker: set data.backup.store")
    return backups


def _backup_id(value, what: str) -> int:
    if type(value) is not int or not 1 <= value <= MAX_BACKUP_ID:
        raise HttpError(400, f"{what} must be an integer in 1..{MAX_BACKUP_ID}, got {value!r}")
    return value


def take_backup(source, req: Request) -> Response:
    body = req.json()
    if type(body) is not dict or "backupId" not in body:
        raise HttpError(400, 'the body must be {"backupId": N}')
    backup_id = _backup_id(body["backupId"], "backupId")
    backups = _backups(source)
    try:
        result = backups.take(backup_id)
    except BackupExists as exc:
        raise HttpError(409, str(exc)) from None
    if result["failed"]:
        raise HttpError(503, f"backup {backup_id} failed: " + "; ".join(result["failed"]))
    message = f"A backup with id {backup_id} has been scheduled"
    return json_response(
        {"message": message, "backupId": backup_id, "checkpoints": result["checkpoints"]},
        status=202,
    )


def get_backup(source, req: Request) -> Response:
    backup_id = req.path_int("id", 1, MAX_BACKUP_ID)
    return json_response(status(_backups(source).store, backup_id))


def list_backups(source, req: Request) -> Response:
    store = _backups(source).store
    return json_response([status(store, i) for i in store.ids()])


def delete_backup(source, req: Request) -> Response:
    backup_id = req.path_int("id", 1, MAX_BACKUP_ID)
    if not _backups(source).store.delete(backup_id):
        raise HttpError(404, f"no backup {backup_id}")
    return empty_response(204)


ROUTES: tuple[Route, ...] = (
    Route("POST", "/actuator/backups", take_backup),
    Route("GET", "/actuator/backups", list_backups),
    Route("GET", "/actuator/backups/{id}", get_backup),
    Route("DELETE", "/actuator/backups/{id}", delete_backup),
)
