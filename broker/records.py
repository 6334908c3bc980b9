"""The record log of one partition: positions 1, 2, ... kept on disk in the journal.

A record is the payload of an ``append`` command; its position is its rank
among all appends in log order. The records themselves are not held in memory:
the journal already holds them, inside the committed Raft entries. This index
maps a position to the entry that holds it, with one pair (entry index, first
position) per entry that appends anything, so it grows with the number of
entries in the retained log, not with their bytes, and it shrinks when the
journal is compacted. A small cache keeps the newest records for the readers
that follow the head (exporters, tailing clients).

Every replica assigns the same positions because ``appends`` is the one rule,
used when applying an entry and when reading it back.

Not thread-safe: the partition thread owns it (other threads read through
``PartitionRunner.read_records``).
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable

import msgpack

APPEND = "append"
CACHE_BYTES = 8 * 1024 * 1024
_READ_ENTRIES = 256  # journal entries per read while looking for records
_RECORD_OVERHEAD = 16  # what a record costs in a read answer beyond its payload


class OutOfRange(Exception):
    """The records asked for were compacted away."""

    def __init__(self, first: int):
        super().__init__(f"records below position {first} were compacted")
        self.first = first


def is_append(command) -> bool:
    return type(command) is list and len(command) == 2 and command[0] == APPEND


def appends(batch: bytes) -> list:
    """The payloads ``batch`` (one Raft entry) appends, in order: the same rule as
    applying it (a corrupt tail ends the batch there)."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(batch)
    out = []
    try:
        for command in unpacker:
            if is_append(command):
                out.append(command[1])
    except (ValueError, msgpack.UnpackException):
        pass
    return out


class RecordLog:
    def __init__(
        self,
        read_entries: Callable[[int, int], list] | None = None,
        cache_bytes: int | None = CACHE_BYTES,
    ):
        """``read_entries(lo, hi)`` returns the committed journal entries lo..hi-1
        (objects with ``index`` and ``data``). Without it every record stays in the
        cache (``cache_bytes`` is then ignored): for tests and tools."""
        self._read_entries = read_entries
        self._cache_bytes = cache_bytes if read_entries is not None else None
        self.last_position = 0
        self.first_position = 1  # the first position that can still be read
        self._entry = array("Q")  # index of each Raft entry that appends records...
        self._first = array("Q")  # ...and the position of its first record
        self._cache: deque[tuple[int, object]] = deque()  # the newest (position, record)
        self._cached_bytes = 0

    # --- writing (apply) ----------------------------------------------------

    def add(self, index: int, record) -> int:
        """Record the next append, made by the entry at ``index``; its position."""
        position = self.last_position + 1
        if not self._entry or self._entry[-1] != index:
            self._entry.append(index)
            self._first.append(position)
        self.last_position = position
        self._cache.append((position, record))
        self._cached_bytes += _size(record)
        if self._cache_bytes is not None:
            while self._cached_bytes > self._cache_bytes and len(self._cache) > 1:
                self._cached_bytes -= _size(self._cache.popleft()[1])
        return position

    def reset(self, last_position: int) -> None:
        """Nothing is readable up to ``last_position`` (a snapshot was installed and
        the log below it is not here)."""
        self.last_position = last_position
        self.first_position = last_position + 1
        del self._entry[:], self._first[:]
        self._cache.clear()
        self._cached_bytes = 0

    def rebuild(self, entries: Iterable, last_position: int) -> bool:
        """Index the retained ``entries`` (in order, up to the snapshot that ends at
        ``last_position``) after a restart; False, and nothing readable below
        ``last_position``, when they cannot have produced it."""
        counts = [(e.index, len(appends(e.data))) for e in entries]
        base = last_position - sum(n for _, n in counts)
        self.reset(last_position)
        if base < 0:
            return False
        self.first_position = base + 1
        position = base + 1
        for index, n in counts:
            if n:
                self._entry.append(index)
                self._first.append(position)
                position += n
        return True

    def trim(self, first_index: int) -> None:
        """The journal now starts at ``first_index``: forget the entries before it."""
        k = bisect_right(self._entry, first_index - 1)
        if not k:
            return
        del self._entry[:k], self._first[:k]
        self.first_position = self._first[0] if self._first else self.last_position + 1
        while self._cache and self._cache[0][0] < self.first_position:
            self._cached_bytes -= _size(self._cache.popleft()[1])

    # --- reading ------------------------------------------------------------

    @property
    def retained_entries(self) -> int:
        return len(self._entry)

    def read(self, start: int, max_records: int, max_bytes: int) -> list[tuple[int, object]]:
        """Up to ``max_records`` records from ``start`` on, at most ``max_bytes``
        (but at least one); raises ``OutOfRange`` below the first retained one."""
        start = max(1, start)
        if start < self.first_position:
            raise OutOfRange(self.first_position)
        end = min(self.last_position, start + max_records - 1)  # inclusive
        if start > end:
            return []
        if self._cache and start >= self._cache[0][0]:
            return _take(
                (r for r in self._cache if r[0] >= start), end, max_bytes
            )  # fmt: skip
        return _take(self._from_journal(start, end), end, max_bytes)

    def _from_journal(self, start: int, end: int):
        """(position, record) from ``start`` on, read entry by entry."""
        k = bisect_right(self._first, start) - 1
        index, position = self._entry[k], self._first[k]
        last_index = self._entry[bisect_right(self._first, end) - 1]
        while index <= last_index:
            batch = self._read_entries(index, min(index + _READ_ENTRIES, last_index + 1))
            if not batch:
                return
            for e in batch:
                for record in appends(e.data):
                    if position >= start:
                        yield position, record
                    position += 1
            index = batch[-1].index + 1


def _take(records, end: int, max_bytes: int) -> list[tuple[int, object]]:
    out, size = [], 0
    for position, record in records:
        if position > end:
            break
        size += _size(record) + _RECORD_OVERHEAD
        if out and size > max_bytes:
            break
        out.append((position, record))
    return out


def _size(record) -> int:
    return len(record) if isinstance(record, (bytes, str)) else 64
