"""``broker restore --backup-id N --config FILE``: one broker's data from a backup.

Into an empty data directory (``broker wipe-data`` first), with the broker
stopped: for every partition of the backup whose group has this broker as a
voter, the partition backup's snapshot file and journal segments go back where
the broker keeps them, the journal is cut right after the checkpoint entry,
and the Raft term (and a forced configuration, after a failover) is restored;
the cluster topology recorded with the backup becomes this broker's. Every
broker restores the same partition backups, so the replicas agree; started
again, they elect leaders and serve exactly the records up to each partition's
checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

from broker.backup.store import COMPLETED, open_store, status
from broker.fsutil import fsync_dir, make_private_dirs, write_checked
from broker.raft.journal import Journal
from broker.raft.messages import Configuration, HardState
from broker.raft.metastore import MetaStore


class RestoreError(Exception):
    """Nothing usable to restore, or the data directory is not empty."""


def restore(cfg, backup_id: int, say=print) -> list[dict]:
    """Restore this broker's partitions of backup ``backup_id``; the manifests of the
    partitions restored. Raises RestoreError (nothing written) when it cannot."""
    store = open_store(cfg.data.backup)
    if store is None:
        raise RestoreError("data.backup.store is none: there is no backup store to restore from")
    state = status(store, backup_id)
    if state["state"] != COMPLETED:
        raise RestoreError(f"backup {backup_id} in {store!r} is {state['state']}, not COMPLETED")
    doc = store.backup(backup_id)
    directory = cfg.data.directory
    taken = [
        name
        for name in ("partitions", "topology.json")
        if os.path.exists(os.path.join(directory, name))
        and (name != "partitions" or os.listdir(os.path.join(directory, name)))
    ]
    if taken:
        raise RestoreError(
            f"{directory} holds data ({', '.join(taken)}): restore goes into an empty data "
            "directory; stop the broker and run `broker wipe-data` first"
        )
    node_id = cfg.cluster.node_id
    manifests = [store.partition(backup_id, pid) for pid in range(1, doc["partitionsCount"] + 1)]
    mine = [m for m in manifests if node_id in m["voters"]]
    if not mine:
        say(f"broker {node_id}: hosts no partition of backup {backup_id}; topology restored")
    for manifest in mine:
        t0 = time.monotonic()
        pid = manifest["partitionId"]
        _restore_partition(store, backup_id, pid, os.path.join(directory, "partitions", str(pid)))
        say(
            f"broker {node_id}: partition {pid} restored from backup {backup_id} "
            f"(records up to position {manifest['checkpointPosition']}, "
            f"{time.monotonic() - t0:.1f} s)"
        )
    if doc.get("topology") is not None:
        write_checked(
            os.path.join(directory, "topology.json"),
            json.dumps(doc["topology"], sort_keys=True).encode(),
        )
    fsync_dir(directory)
    return mine


def _restore_partition(store, backup_id: int, pid: int, target: str) -> None:
    make_private_dirs(os.path.dirname(target))
    temp = tempfile.mkdtemp(prefix=f".restore-{pid}-", dir=os.path.dirname(target))
    try:
        manifest = store.get_partition(backup_id, pid, os.path.join(temp, "files"))
        files = os.path.join(temp, "files")
        make_private_dirs(os.path.join(temp, "snapshots"))
        make_private_dirs(os.path.join(temp, "journal"))
        if manifest["snapshot"]:
            name = manifest["snapshot"]
            os.rename(os.path.join(files, name), os.path.join(temp, "snapshots", name))
        for name in manifest["segments"]:
            os.rename(os.path.join(files, name), os.path.join(temp, "journal", name))
        os.rmdir(files)
        with Journal(os.path.join(temp, "journal")) as journal:
            index = manifest["checkpointIndex"]
            if journal.last_index < index or journal.term_at(index) != manifest["checkpointTerm"]:
                raise RestoreError(
                    f"partition {pid}: the backup's journal does not hold the checkpoint "
                    f"entry {index}; the backup is damaged"
                )
            if journal.last_index > index:
                journal.truncate_from(index + 1)
        forced = manifest.get("forced")
        MetaStore(temp).save(
            HardState(
                term=max(manifest["term"], manifest["checkpointTerm"]),
                vote=None,
                forced=None if forced is None else Configuration.decode(bytes.fromhex(forced)),
                forced_term=manifest.get("forcedTerm", 0),
            )
        )
        os.rename(temp, target)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
