"""``fab backup``: one consistent backup of the whole cluster, as the runbook says.

1. wait for a leader on every partition (a partition without one cannot take
   its checkpoint);
2. ask one broker for the backup (``POST /actuator/backups``): every partition
   commits a checkpoint, the records before it are in the backup;
3. wait until every partition's backup is COMPLETED (the copies run in the
   background on each partition's leader), reporting each checkpoint position.

The backup id must be above every earlier one (Zeebe's rule); without
``--backup-id`` the next free id is taken.
"""

from __future__ import annotations

import time

from broker.ops.api import ApiError
from broker.ops.checks import wait_for_leaders
from broker.ops.inventory import Cluster
from broker.ops.steps import (
    Outcome,
    Progress,
    StepFailed,
    StepResult,
    done,
    dry,
    plan,
    run_procedure,
    skipped,
    step,
    wait_until,
)
from broker.ops.view import first_answering

BACKUP_TIMEOUT = 600.0  # seconds for every partition's copy to complete
BACKUP_STEPS = 3


def _api(cluster: Cluster):
    _, api, _ = first_answering(cluster, cluster.brokers)
    return api


def next_backup_id(cluster: Cluster) -> int:
    """One above the newest backup the store holds (1 for the first)."""
    return (
        max((b["backupId"] for b in _api(cluster).request("GET", "/actuator/backups")), default=0)
        + 1
    )


@step("take the backup: a checkpoint on every partition", acts=True)
def request_backup(cluster: Cluster, backup_id: int, *, dry_run: bool = False) -> Outcome:
    api = _api(cluster)
    held = [b["backupId"] for b in api.request("GET", "/actuator/backups")]
    if dry_run:
        return skipped(
            f"the store holds backups {held or 'none'}", f"dry run: would take backup {backup_id}"
        )
    try:
        answer = api.request("POST", "/actuator/backups", {"backupId": backup_id})
    except ApiError as exc:
        if exc.status == 409:
            raise StepFailed(
                f"backup {backup_id} exists or is not above the newest ({max(held, default=0)}): "
                f"{exc.message}",
                "changed nothing: pick a larger --backup-id",
            ) from None
        raise
    cuts = {c["partitionId"]: c["checkpointPosition"] for c in answer["checkpoints"]}
    return done(
        "checkpoints at " + ", ".join(f"p{p}:{pos}" for p, pos in sorted(cuts.items())),
        f"asked broker {api.url} for backup {backup_id}",
        checkpoints=cuts,
    )


@step("wait until every partition's backup is completed")
def wait_completed(cluster: Cluster, backup_id: int, *, timeout: float = BACKUP_TIMEOUT) -> Outcome:
    started = time.monotonic()

    def completed() -> tuple[bool, str]:
        doc = _api(cluster).request("GET", f"/actuator/backups/{backup_id}")
        if doc["state"] in ("FAILED", "INCOMPLETE", "DOES_NOT_EXIST"):
            raise StepFailed(
                f"backup {backup_id} is {doc['state']}: {doc.get('failureReason', '')}".rstrip(": ")
            )
        states = ", ".join(f"p{d['partitionId']}:{d['state']}" for d in doc["details"])
        return doc["state"] == "COMPLETED", f"backup {backup_id} {doc['state']} ({states})"

    seen = wait_until(completed, timeout, f"backup {backup_id} to complete", interval=0.5)
    return done(seen, f"waited {time.monotonic() - started:.1f}s")


def run_backup(
    cluster: Cluster,
    backup_id: int | None = None,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> tuple[list[StepResult], int]:
    """The procedure; returns its results and the backup id used."""
    if backup_id is None:
        backup_id = next_backup_id(cluster)
    steps = plan(
        (wait_for_leaders, lambda: wait_for_leaders(cluster, cluster.brokers)),
        (request_backup, lambda: request_backup(cluster, backup_id, dry_run=dry_run)),
        (
            wait_completed,
            (lambda: dry(wait_completed))
            if dry_run
            else lambda: wait_completed(cluster, backup_id),
        ),
    )
    return run_procedure(steps, progress), backup_id
