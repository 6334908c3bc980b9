"""Taking one partition's backup at its checkpoint, off the partition thread.

``BackupTaker.checkpoint`` runs on the partition thread (``PartitionRunner.
on_checkpoint``) when the replica that leads applies a checkpoint entry: it
hard-links the newest snapshot file and the journal segments through the
checkpoint into a staging directory beside the partition (metadata only: no
data is copied, and the links keep the files whatever the journal compacts or
truncates later), notes how many bytes of the last segment hold the entries
through the checkpoint, and queues the rest. One background thread per broker
copies the staged files to the store and writes the manifest, then removes the
staging directory.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import shutil
import threading
import time

from broker import __version__
from broker.backup.store import BackupStore
from broker.fsutil import make_private_dirs

log = logging.getLogger(__name__)

_SNAPSHOT_INDEX = re.compile(r"snapshot-(\d{20})-\d{20}\.snap$")


class BackupTaker:
    def __init__(self, store: BackupStore, node_id: int):
        self.store = store
        self.node_id = node_id
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"backup-{node_id}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(30)

    # --- the partition thread -----------------------------------------------------

    def checkpoint(self, runner, backup_id: int, index: int, position: int) -> None:
        pid = runner.partition_id
        if self.store.partition(backup_id, pid) is not None:
            return  # taken already (the checkpoint applied again after a restart)
        staging = os.path.join(runner.directory, f"backup-{backup_id}")
        try:
            files, manifest = self._stage(runner, backup_id, index, position, staging)
        except Exception as exc:
            shutil.rmtree(staging, ignore_errors=True)
            self._failed(backup_id, pid, f"staging failed on broker {self.node_id}: {exc}")
            return
        self._queue.put((backup_id, pid, staging, files, manifest))

    def _stage(self, runner, backup_id: int, index: int, position: int, staging: str):
        shutil.rmtree(staging, ignore_errors=True)
        make_private_dirs(staging)
        journal, node = runner.journal, runner.node
        files, snapshot, snapshot_index = [], None, 0
        snapshots = runner.snapshots.paths()
        if snapshots:
            path = snapshots[-1]
            snapshot = os.path.basename(path)
            snapshot_index = int(_SNAPSHOT_INDEX.search(snapshot)[1])
            files.append(_link(path, staging, os.path.getsize(path)))
        if journal.first_index > snapshot_index + 1:
            raise RuntimeError(
                f"the journal starts at {journal.first_index}, after the snapshot at "
                f"{snapshot_index}: entries in between are missing"
            )
        segments = []
        for path, length in journal.files_through(index):
            files.append(_link(path, staging, length))
            segments.append(os.path.basename(path))
        hard = runner.meta.load()
        config = node.config
        manifest = {
            "backupId": backup_id,
            "partitionId": runner.partition_id,
            "checkpointIndex": index,
            "checkpointTerm": journal.term_at(index),
            "checkpointPosition": position,
            "snapshot": snapshot,
            "snapshotIndex": snapshot_index,
            "segments": segments,
            "files": [name for name, _, _ in files],
            "term": hard.term,
            "forced": None if hard.forced is None else hard.forced.encode().hex(),
            "forcedTerm": hard.forced_term,
            "voters": sorted(config.voters),
            "nodeId": self.node_id,
            "brokerVersion": __version__,
            "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        return files, manifest

    # --- the backup thread ----------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            backup_id, pid, staging, files, manifest = item
            t0 = time.monotonic()
            try:
                self.store.put_partition(backup_id, pid, files, manifest)
            except Exception as exc:
                self._failed(backup_id, pid, f"copy to {self.store!r} failed: {exc}")
            else:
                size = sum(length for _, _, length in files)
                log.info(
                    "backup %d of partition %d: %d files, %.1f MB in %.1f s, checkpoint at "
                    "position %d",
                    backup_id,
                    pid,
                    len(files),
                    size / 1e6,
                    time.monotonic() - t0,
                    manifest["checkpointPosition"],
                )
            finally:
                shutil.rmtree(staging, ignore_errors=True)

    def _failed(self, backup_id: int, pid: int, reason: str) -> None:
        log.error("backup %d of partition %d failed: %s", backup_id, pid, reason)
        self.store.fail_partition(backup_id, pid, reason)


def _link(path: str, staging: str, length: int) -> tuple[str, str, int]:
    name = os.path.basename(path)
    target = os.path.join(staging, name)
    os.link(path, target)
    return name, target, length
