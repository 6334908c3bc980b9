"""Raft snapshots on disk: one checksummed, atomically written file per snapshot.

The newest two are kept so that a snapshot damaged on disk still leaves an
older good one to fall back to; the older one is deleted only once the new one
is durable.
"""

from __future__ import annotations

import logging
import os
import re
import struct
from collections.abc import Iterator

import msgpack

from broker.fsutil import (
    CorruptFileError,
    fsync_dir,
    make_private_dirs,
    read_checked,
    remove_temp_files,
    write_checked,
)
from broker.raft.messages import Configuration, SnapshotMeta

log = logging.getLogger(__name__)

_KEEP = 2
_NAME = re.compile(r"^snapshot-(\d{20})-(\d{20})\.snap$")
_META_LEN = struct.Struct("<I")


class SnapshotStore:
    def __init__(self, directory: str | os.PathLike):
        self.directory = os.fspath(directory)
        make_private_dirs(self.directory)
        remove_temp_files(self.directory, "snapshot-")

    def save(self, meta: SnapshotMeta, data: bytes) -> None:
        """Durably store a snapshot, then delete all but the newest two."""
        header = msgpack.packb([meta.index, meta.term, meta.config.encode(), meta.config_term])
        name = _name(meta.index, meta.term)
        write_checked(
            os.path.join(self.directory, name), _META_LEN.pack(len(header)) + header + data
        )
        stale = self._files()[:-_KEEP]
        for _, _, old in stale:
            os.unlink(os.path.join(self.directory, old))
        if stale:
            fsync_dir(self.directory)

    def latest(self) -> tuple[SnapshotMeta, bytes] | None:
        """The newest readable snapshot; a damaged one is skipped with a warning."""
        return next(self.readable(), None)

    def readable(self) -> Iterator[tuple[SnapshotMeta, bytes]]:
        """Every snapshot whose file is intact (checksum and header verified), newest
        first; a damaged one is skipped with a warning naming its path."""
        for index, term, name in reversed(self._files()):
            path = os.path.join(self.directory, name)
            try:
                meta, data = _decode(path, read_checked(path))
                if (meta.index, meta.term) != (index, term):
                    raise CorruptFileError(path, f"holds snapshot {meta.index}/{meta.term}")
            except CorruptFileError as e:
                log.warning("skipping damaged snapshot: %s", e)
                continue
            yield meta, data

    def paths(self) -> list[str]:
        """The snapshot files present, oldest first (readable or not)."""
        return [os.path.join(self.directory, name) for _, _, name in self._files()]

    def _files(self) -> list[tuple[int, int, str]]:
        """Snapshot files as (index, term, name), oldest first."""
        found = []
        for name in os.listdir(self.directory):
            m = _NAME.match(name)
            if m:
                found.append((int(m[1]), int(m[2]), name))
        return sorted(found)


def _name(index: int, term: int) -> str:
    return f"snapshot-{index:020d}-{term:020d}.snap"


def _decode(path: str, payload: bytes) -> tuple[SnapshotMeta, bytes]:
    try:
        (n,) = _META_LEN.unpack_from(payload)
        index, term, config, config_term = msgpack.unpackb(
            payload[_META_LEN.size : _META_LEN.size + n]
        )
        for name, value in (("index", index), ("term", term), ("config term", config_term)):
            if type(value) is not int or value < 0:
                raise ValueError(f"snapshot {name} {value!r} is not a non-negative int")
        meta = SnapshotMeta(index, term, Configuration.decode(config), config_term)
    except (ValueError, TypeError, KeyError, struct.error, msgpack.UnpackException) as e:
        raise CorruptFileError(path, f"undecodable snapshot header: {e!r}") from e
    return meta, payload[_META_LEN.size + n :]
