"""Where backups live: the ``BackupStore`` interface and the filesystem store.

A store holds, per backup id, the request (``backup.json``: when, how many
partitions, the cluster topology) and one directory per partition: its files
and a manifest, written last, so a partition backup exists whole or not at all.
The methods are what an object store offers (put a set of files, get them,
list, delete), so an S3-compatible store is another subclass.

Layout of ``FilesystemStore(root)``::

    root/<id>/backup.json
    root/<id>/partition-<p>/manifest.json, <snapshot file>, <journal segments>
    root/<id>/partition-<p>.failed.json      (a partition backup that failed)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

from broker.fsutil import fsync_dir, make_private_dirs

# A partition backup not completed this long after the request never will be
# (its broker stopped or lost the leadership mid-copy): the backup is INCOMPLETE.
STALE_AFTER = 600.0
COPY_CHUNK = 1024 * 1024
COMPLETED, IN_PROGRESS, FAILED, INCOMPLETE = "COMPLETED", "IN_PROGRESS", "FAILED", "INCOMPLETE"
DOES_NOT_EXIST = "DOES_NOT_EXIST"


class BackupExists(Exception):
    """The id is taken, or not above the newest backup's (ids only grow)."""


class BackupStore(ABC):
    @abstractmethod
    def create(self, backup_id: int, doc: dict) -> None:
        """Record a new backup; BackupExists if ``backup_id`` is not above every id."""

    @abstractmethod
    def ids(self) -> list[int]:
        """Every backup id, in order."""

    @abstractmethod
    def backup(self, backup_id: int) -> dict | None:
        """The document ``create`` stored, or None."""

    @abstractmethod
    def put_partition(
        self,
        backup_id: int,
        partition_id: int,
        files: Iterable[tuple[str, str, int]],
        manifest: dict,
    ) -> None:
        """Store a partition backup whole: ``files`` are (name, source path, bytes to
        copy from its start); the manifest is written last."""

    @abstractmethod
    def fail_partition(self, backup_id: int, partition_id: int, reason: str) -> None:
        """Record that this partition's backup failed."""

    @abstractmethod
    def partition(self, backup_id: int, partition_id: int) -> dict | None:
        """The manifest (``state`` COMPLETED) or failure (``state`` FAILED), or None."""

    @abstractmethod
    def get_partition(self, backup_id: int, partition_id: int, target: str) -> dict:
        """Copy a completed partition backup's files into ``target``; its manifest."""

    @abstractmethod
    def delete(self, backup_id: int) -> bool:
        """Delete a backup; False if there was none."""


class FilesystemStore(BackupStore):
    def __init__(self, root: str):
        self.root = root

    def _dir(self, backup_id: int) -> str:
        return os.path.join(self.root, str(backup_id))

    def create(self, backup_id: int, doc: dict) -> None:
        make_private_dirs(self.root)
        if any(i >= backup_id for i in self.ids()):
            raise BackupExists(f"backup {backup_id} exists or is not above {max(self.ids())}")
        try:
            os.mkdir(self._dir(backup_id), 0o700)  # atomic: two requests, one wins
        except FileExistsError:
            raise BackupExists(f"backup {backup_id} exists") from None
        _write_json(os.path.join(self._dir(backup_id), "backup.json"), doc)
        fsync_dir(self.root)

    def ids(self) -> list[int]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return sorted(int(n) for n in names if n.isdigit() and len(n) <= 19)

    def backup(self, backup_id: int) -> dict | None:
        return _read_json(os.path.join(self._dir(backup_id), "backup.json"))

    def put_partition(self, backup_id, partition_id, files, manifest) -> None:
        base = self._dir(backup_id)
        temp = os.path.join(base, f".partition-{partition_id}.{uuid.uuid4().hex}")
        make_private_dirs(temp)
        try:
            for name, source, length in files:
                _copy(source, os.path.join(temp, name), length)
            _write_json(os.path.join(temp, "manifest.json"), manifest)
            fsync_dir(temp)
            os.rename(temp, os.path.join(base, f"partition-{partition_id}"))
            fsync_dir(base)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise

    def fail_partition(self, backup_id, partition_id, reason) -> None:
        path = os.path.join(self._dir(backup_id), f"partition-{partition_id}.failed.json")
        with contextlib.suppress(OSError):
            _write_json(path, {"failureReason": reason, "failedAt": _now()})

    def partition(self, backup_id, partition_id) -> dict | None:
        base = self._dir(backup_id)
        manifest = _read_json(os.path.join(base, f"partition-{partition_id}", "manifest.json"))
        if manifest is not None:
            return {**manifest, "state": COMPLETED}
        failed = _read_json(os.path.join(base, f"partition-{partition_id}.failed.json"))
        return {**failed, "state": FAILED} if failed is not None else None

    def get_partition(self, backup_id, partition_id, target) -> dict:
        source = os.path.join(self._dir(backup_id), f"partition-{partition_id}")
        manifest = _read_json(os.path.join(source, "manifest.json"))
        if manifest is None:
            raise FileNotFoundError(f"no completed backup of partition {partition_id} in {source}")
        make_private_dirs(target)
        for name in manifest["files"]:
            _copy(os.path.join(source, name), os.path.join(target, name), None)
        return manifest

    def delete(self, backup_id) -> bool:
        path = self._dir(backup_id)
        if not os.path.isdir(path):
            return False
        trash = os.path.join(self.root, f".deleted-{backup_id}-{uuid.uuid4().hex}")
        os.rename(path, trash)  # gone for readers at once
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def __repr__(self) -> str:
        return f"filesystem store {self.root}"


def open_store(backup_cfg) -> BackupStore | None:
    """The store ``data.backup`` configures (None: backups are off)."""
    if backup_cfg.store == "filesystem":
        return FilesystemStore(backup_cfg.filesystem.directory)
    return None


def status(store: BackupStore, backup_id: int, now: float | None = None) -> dict:
    """``GET /actuator/backups/{id}``: the backup's state and each partition's."""
    doc = store.backup(backup_id)
    if doc is None:
        return {"backupId": backup_id, "state": DOES_NOT_EXIST, "details": []}
    now = time.time() if now is None else now
    stale = now - doc.get("requestedAtEpoch", now) > STALE_AFTER
    details, states = [], []
    for pid in range(1, int(doc.get("partitionsCount", 0)) + 1):
        part = store.partition(backup_id, pid)
        if part is None:
            state = INCOMPLETE if stale else IN_PROGRESS
            details.append({"partitionId": pid, "state": state})
        else:
            state = part["state"]
            detail: dict[str, Any] = {"partitionId": pid, "state": state}
            for key in ("createdAt", "brokerVersion", "checkpointPosition", "failureReason"):
                if key in part:
                    detail[key] = part[key]
            details.append(detail)
        states.append(state)
    if FAILED in states:
        state = FAILED
    elif states and all(s == COMPLETED for s in states):
        state = COMPLETED
    elif INCOMPLETE in states:
        state = INCOMPLETE
    else:
        state = IN_PROGRESS
    out: dict[str, Any] = {"backupId": backup_id, "state": state, "details": details}
    failures = [d["failureReason"] for d in details if "failureReason" in d]
    if failures:
        out["failureReason"] = "; ".join(failures)
    return out


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _write_json(path: str, doc: dict) -> None:
    temp = f"{path}.tmp"
    with open(temp, "w", encoding="utf-8") as f:
        json.dump(doc, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def _copy(source: str, target: str, length: int | None) -> None:
    """Copy the first ``length`` bytes of ``source`` (None: all of it), durably."""
    with open(source, "rb") as src, open(target, "wb") as dst:
        left = length
        while left is None or left > 0:
            chunk = src.read(COPY_CHUNK if left is None else min(COPY_CHUNK, left))
            if not chunk:
                break
            dst.write(chunk)
            if left is not None:
                left -= len(chunk)
        if left:
            raise OSError(f"{source} ended {left} bytes early")
        dst.flush()
        os.fsync(dst.fileno())
