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

APPEND, READ, PUT, GET, CAS, DELETE = "append", "read", "put", "get", "cas", "delete"
# exporter positions, replicated so that a new leader continues without gaps
EXPORTED, EXPORT_INIT = "exported", "export_init"
MAX_READ_BYTES = 2 * 1024 * 1024  # keeps a read response well under the frame limit


def key_partition(key: str, partitions_count: int) -> int:
    """The partition (1-based) that holds ``key``: the same rule in gateway and client."""
    return zlib.crc32(key.encode()) % partitions_count + 1


def encode(op: str, *args) -> bytes:
    return msgpack.packb([op, *args], use_bin_type=True)


def _bad(exc: Exception) -> dict:
    return {"ok": False, "code": "INVALID_ARGUMENT", "message": f"bad command: {exc}"}


class PartitionState:
    """Records (positions 1, 2, ...) and keys; deterministic apply, snapshot, restore."""

    def __init__(self, partition_id: int):
        self.partition_id = partition_id
        self.records: list[bytes] = []  # records[p - 1] is the record at position p
        self.kv: dict[str, bytes] = {}
        self.exported: dict[str, int] = {}  # exporter id -> last acknowledged position
        self.applied_index = 0

    @property
    def last_position(self) -> int:
        return len(self.records)

    def apply(self, index: int, batch: bytes) -> list[dict]:
        """Apply the batch of commands committed at ``index``; one result each."""
        self.applied_index = index
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(batch)
        results = []
        try:
            for command in unpacker:
                results.append(self._apply_one(command))
        except (ValueError, msgpack.UnpackException) as exc:
            # A corrupt tail: every replica stops at the same place.
            results.append(_bad(exc))
        return results

    def _apply_one(self, command) -> dict:
        try:
            op, *args = command
            return self._OPS[op](self, *args)
        except (ValueError, KeyError, TypeError) as exc:
            # The gateway validates commands before proposing them, so this is
            # a corrupt entry: every replica answers the same and moves on.
            return _bad(exc)

    def _append(self, data: bytes) -> dict:
        self.records.append(data)
        return {"ok": True, "partition": self.partition_id, "position": len(self.records)}

    def _read(self, start: int, max_records: int) -> dict:
        start = max(1, start)
        out, size = [], 0
        for pos in range(start, min(len(self.records), start + max_records - 1) + 1):
            rec = self.records[pos - 1]
            size += len(rec) + 16
            if out and size > MAX_READ_BYTES:
                break
            out.append([pos, rec])
        nxt = out[-1][0] + 1 if out else max(start, 1)
        return {"ok": True, "partition": self.partition_id, "records": out, "next": nxt}

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
            self.exported[exporter] = min(position, len(self.records))
        return {"ok": True, "partition": self.partition_id, "position": self.exported[exporter]}

    def _export_init(self, exporter: str, source: str) -> dict:
        """Start ``exporter`` where ``source`` is (enable with initializeFrom)."""
        self.exported[exporter] = self.exported.get(source, 0)
        return {"ok": True, "partition": self.partition_id, "position": self.exported[exporter]}

    _OPS = {
        APPEND: _append,
        READ: _read,
        PUT: _put,
        GET: _get,
        CAS: _cas,
        DELETE: _delete,
        EXPORTED: _exported,
        EXPORT_INIT: _export_init,
    }

    # --- snapshots ---------------------------------------------------------

    def snapshot(self) -> bytes:
        return msgpack.packb(
            {
                "v": 1,
                "applied": self.applied_index,
                "records": self.records,
                "kv": self.kv,
                "exported": self.exported,
            },
            use_bin_type=True,
        )

    def restore(self, data: bytes) -> None:
        doc = msgpack.unpackb(data, raw=False)
        if doc.get("v") != 1:
            raise ValueError(f"unsupported partition snapshot version {doc.get('v')!r}")
        self.records = list(doc["records"])
        self.kv = dict(doc["kv"])
        self.exported = dict(doc.get("exported", {}))
        self.applied_index = doc["applied"]
