"""The replicated state machine of one partition: an ordered record log and a KV map.

Commands arrive as committed Raft entries and are applied in log order on every
replica, so every replica computes the same state and the same results. Reads
go through the log too (a ``read``/``get`` command is committed like a write):
a result produced by applying a committed entry at the leader reflects every
write acknowledged before the read was proposed, so reads are linearizable
without leases or clocks.

Commands are msgpack lists ``[op, ...]``; results are dicts that the gateway
returns to clients as they are (with ``ok`` set). One Raft entry carries a
batch of commands, concatenated: whatever the leader received together is
replicated, written and fsynced as one entry.
"""

from __future__ import annotations

import zlib

import msgpack

from broker.records import APPEND, OutOfRange, RecordLog, is_append

READ, PUT, GET, CAS, DELETE = "read", "put", "get", "cas", "delete"
# exporter positions, replicated so that a new leader continues without gaps
EXPORTED, EXPORT_INIT = "exported", "export_init"
# a backup's checkpoint: the records up to here belong to backup N (broker.backup)
CHECKPOINT = "checkpoint"
CHECKPOINT_PREFIX = msgpack.packb([CHECKPOINT, 0])[:-1]  # how its encoding starts
MAX_READ_BYTES = 2 * 1024 * 1024  # keeps a read response well under the frame limit
SNAPSHOT_VERSION = 2  # 1 also held every record; 2 holds only the state


def key_partition(key: str, partitions_count: int) -> int:
    """The partition (1-based) that holds ``key``: the same rule in gateway and client."""
    return zlib.crc32(key.encode()) % partitions_count + 1


def encode(op: str, *args) -> bytes:
    return msgpack.packb([op, *args], use_bin_type=True)


def encode_appends(records: list[bytes]) -> bytes:
    """One append command per record, back to back: proposed as one, they land in
    one entry, so on disk they are the same as appends proposed one by one."""
    pack = msgpack.Packer(use_bin_type=True).pack
    return b"".join([pack([APPEND, record]) for record in records])


def _bad(exc: Exception) -> dict:
    return {"ok": False, "code": "INVALID_ARGUMENT", "message": f"bad command: {exc}"}


class PartitionState:
    """Keys, exporter positions and the record log's counters; deterministic apply,
    snapshot, restore. The records themselves are read from the journal."""

    def __init__(self, partition_id: int, records: RecordLog | None = None):
        self.partition_id = partition_id
        self.records = records if records is not None else RecordLog()
        self.checkpoint = (0, 0)  # (backup id, position) of the newest checkpoint
        self.new_checkpoint: tuple[int, int] | None = None  # applied just now: for the runner
        self.kv: dict[str, bytes] = {}
        self.exported: dict[str, int] = {}  # exporter id -> last acknowledged position
        self.applied_index = 0

    @property
    def last_position(self) -> int:
        return self.records.last_position

    def apply(self, index: int, batch: bytes) -> list[dict]:
        """Apply the batch of commands committed at ``index``; one result each."""
        self.applied_index = index
        pid = self.partition_id
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(batch)
        results = []
        try:
            for command in unpacker:
                if is_append(command):  # the rule records.appends reads back
                    position = self.records.add(index, command[1])
                    results.append({"ok": True, "partition": pid, "position": position})
                else:
                    results.append(self._apply_one(command))
        except (ValueError, msgpack.UnpackException) as exc:
            # A corrupt tail: every replica stops at the same place.
            results.append(_bad(exc))
        return results

    def _apply_one(self, command) -> dict:
        try:
            if type(command) is not list:
                raise TypeError(f"a command is a list, not {type(command).__name__}")
            op, *args = command
            return self._OPS[op](self, *args)
        except (ValueError, KeyError, TypeError) as exc:
            # The gateway validates commands before proposing them, so this is
            # a corrupt entry: every replica answers the same and moves on.
            return _bad(exc)

    def _append(self, *args) -> dict:
        raise TypeError(f"append takes one record, got {len(args)} arguments")

    def _read(self, start: int, max_records: int) -> dict:
        start = max(1, start)
        try:
            out = self.records.read(start, max_records, MAX_READ_BYTES)
        except OutOfRange as exc:
            return {
                "ok": False,
                "code": "OUT_OF_RANGE",
                "message": str(exc),
                "partition": self.partition_id,
                "first": exc.first,
            }
        nxt = out[-1][0] + 1 if out else start
        return {
            "ok": True,
            "partition": self.partition_id,
            "records": [list(r) for r in out],
            "next": nxt,
        }

    def _put(self, key: str, value: bytes) -> dict:
        self.kv[key] = value
        return {"ok": True, "partition": self.partition_id}

    def _get(self, key: str) -> dict:
        if key not in self.kv:
            return {"ok": False, "code": "NOT_FOUND", "message": f"no such key: {key!r}"}
        return {"ok": True, "partition": self.partition_id, "value": self.kv[key]}

    def _cas(self, key: str, expected: bytes | None, value: bytes) -> dict:
        current = self.kv.get(key)
        if current != expected:
            return {
                "ok": False,
                "code": "FAILED_PRECONDITION",
                "message": f"value of {key!r} is not the expected one",
                "current": current,
            }
        self.kv[key] = value
        return {"ok": True, "partition": self.partition_id}

    def _delete(self, key: str) -> dict:
        existed = self.kv.pop(key, None) is not None
        return {"ok": True, "partition": self.partition_id, "existed": existed}

    def _exported(self, exporter: str, position: int) -> dict:
        if position > self.exported.get(exporter, 0):
            self.exported[exporter] = min(position, self.last_position)
        return {"ok": True, "partition": self.partition_id, "position": self.exported[exporter]}

    def _export_init(self, exporter: str, source: str) -> dict:
        """Start ``exporter`` where ``source`` is (enable with initializeFrom)."""
        self.exported[exporter] = self.exported.get(source, 0)
        return {"ok": True, "partition": self.partition_id, "position": self.exported[exporter]}

    def _checkpoint(self, backup_id: int) -> dict:
        """Checkpoint ``backup_id`` at the current position (every replica applies it;
        the leader of the moment takes the backup). The same id again answers the
        same position; an older one is refused (backup ids only grow)."""
        if type(backup_id) is not int or backup_id < 1:
            raise TypeError(f"a backup id is a positive int, not {backup_id!r}")
        newest, position = self.checkpoint
        if backup_id < newest:
            return {
                "ok": False,
                "code": "FAILED_PRECONDITION",
                "message": f"backup {newest} is newer than {backup_id}: backup ids only grow",
            }
        if backup_id > newest:
            self.checkpoint = self.new_checkpoint = (backup_id, self.last_position)
        pid, position = self.partition_id, self.checkpoint[1]
        return {"ok": True, "partition": pid, "backupId": backup_id, "position": position}

    _OPS = {
        APPEND: _append,
        READ: _read,
        PUT: _put,
        GET: _get,
        CAS: _cas,
        DELETE: _delete,
        EXPORTED: _exported,
        EXPORT_INIT: _export_init,
        CHECKPOINT: _checkpoint,
    }

    # --- snapshots ---------------------------------------------------------

    def snapshot(self) -> bytes:
        """The state only: its size depends on the keys, not on the log."""
        return msgpack.packb(
            {
                "v": SNAPSHOT_VERSION,
                "applied": self.applied_index,
                "last_position": self.last_position,
                "kv": self.kv,
                "exported": self.exported,
                "checkpoint": list(self.checkpoint),
            },
            use_bin_type=True,
        )

    def restore(self, data: bytes) -> None:
        """Load a snapshot; the record log then starts after it (``records.rebuild``
        indexes what the journal still holds below it). Raises ValueError, and
        changes nothing, when ``data`` is not a snapshot this broker can use."""
        applied, last, kv, exported, checkpoint = _decode_snapshot(data)
        self.records.reset(last)
        self.kv = kv
        self.exported = exported
        self.checkpoint = checkpoint
        self.applied_index = applied


def check_snapshot(data: bytes, index: int | None = None) -> None:
    """Raise ValueError unless ``data`` decodes as a partition snapshot (taken at Raft
    index ``index`` when given): what a snapshot from a peer must pass before it
    replaces anything."""
    applied = _decode_snapshot(data)[0]
    if index is not None and applied != index:
        raise ValueError(f"partition snapshot holds applied index {applied}, not {index}")


def _decode_snapshot(data: bytes) -> tuple[int, int, dict, dict, tuple[int, int]]:
    """(applied index, last position, kv, exported, checkpoint) of a snapshot, every
    field checked."""
    try:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack reports bad input with many exception types
        raise ValueError(f"undecodable partition snapshot: {exc!r}") from None
    if type(doc) is not dict:
        raise ValueError(f"a partition snapshot is a map, not {type(doc).__name__}")
    version = doc.get("v")
    if version not in (1, SNAPSHOT_VERSION):
        raise ValueError(
            f"partition snapshot version {version!r} is not one this broker reads "
            f"(1 or {SNAPSHOT_VERSION}): written by a newer broker?"
        )
    # version 1 carried the records themselves; they are not kept
    if version == SNAPSHOT_VERSION:
        last = doc.get("last_position")
    else:
        records = doc.get("records")
        last = len(records) if type(records) is list else None
    applied, kv, exported = doc.get("applied"), doc.get("kv", {}), doc.get("exported", {})
    if not _natural(applied) or not _natural(last):
        raise ValueError(f"partition snapshot: bad applied {applied!r} or position {last!r}")
    # what apply stores is what a snapshot holds: its maps' contents are not judged
    if type(kv) is not dict:
        raise ValueError(f"partition snapshot: kv is a {type(kv).__name__}, not a map")
    if type(exported) is not dict:
        raise ValueError(f"partition snapshot: exported is a {type(exported).__name__}")
    checkpoint = doc.get("checkpoint", [0, 0])  # absent before backups existed
    if type(checkpoint) is not list or len(checkpoint) != 2 or not all(map(_natural, checkpoint)):
        raise ValueError(f"partition snapshot: bad checkpoint {checkpoint!r}")
    return applied, last, kv, exported, tuple(checkpoint)


def _natural(value) -> bool:
    return type(value) is int and value >= 0
