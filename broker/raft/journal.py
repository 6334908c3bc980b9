"""The Raft log on disk: a segmented, append-only journal with a checksum per record.

Layout: one directory of segment files named ``<first_index:020d>.seg``. Each
starts with a header (magic, format version, first index) followed by records
framed as ``length u32, crc32 u32, index u64, term u64, kind u8, data``; the
checksum covers index, term, kind and data.

Appends are written to the OS at once (one ``write`` per batch and segment) but
are durable only after ``flush()``, which issues one fdatasync per dirty segment
for the whole batch (group commit). Recovery verifies every record and cuts the
log at the first torn or corrupt one: a Raft log must be contiguous, so nothing
after a hole is usable.

Offsets of every record and the runs of equal terms are kept in memory, so
``read``, ``term_at`` and ``truncate_from`` never rescan files. Not thread-safe:
one owner drives it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import zlib
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from struct import Struct

from broker.fsutil import FILE_MODE, CorruptFileError, discard, make_private_dirs, sweep_trash
from broker.raft.messages import Entry, EntryKind

log = logging.getLogger(__name__)

_HEADER = Struct("<4sHHQ")  # magic, format version, reserved, first index
_MAGIC = b"RJNL"
_VERSION = 1
_RECORD = Struct("<IIQQB")  # data length, crc32, index, term, kind
_PREFIX = Struct("<II")  # data length, crc32
_BODY = Struct("<QQB")  # index, term, kind: the checksummed fields before data
_CRC_FROM = _PREFIX.size  # the checksum covers the record from here to its end
_KINDS = tuple(EntryKind)
_NAME = re.compile(r"^(\d{20})\.seg$")
_READ_CHUNK = 4096  # entries per read while iterating


class NewerFormatError(RuntimeError):
    """Data written by a newer broker: never truncated, never read."""


@dataclass(frozen=True)
class RecoveryReport:
    """What recovery cut off the log; zeros and "" when the log was clean."""

    truncated_records: int = 0
    truncated_bytes: int = 0
    reason: str = ""
    segment: str | None = None


class _Segment:
    __slots__ = ("fd", "first", "offsets", "path", "size")

    def __init__(self, path: str, fd: int, first: int, offsets: array, size: int):
        self.path = path
        self.fd = fd
        self.first = first
        self.offsets = offsets  # file offset of each record, in index order
        self.size = size  # end of the last record

    @property
    def next_index(self) -> int:
        return self.first + len(self.offsets)


class Journal:
    def __init__(
        self,
        directory: str | os.PathLike,
        segment_size: int = 64 * 1024 * 1024,
        flush: bool = True,
        fsync: Callable[[int], None] | None = None,
    ):
        """Open (creating if needed) and recover the journal in ``directory``.

        ``flush=False`` skips every fsync (benchmarks only). ``fsync`` replaces
        the sync call for data files and the directory (a test seam)."""
        self.directory = os.fspath(directory)
        self._segment_size = segment_size
        self._sync = flush
        self._sync_file = fsync or os.fdatasync
        self._sync_dir = fsync or os.fsync
        self._segments: list[_Segment] = []
        self._run_starts: list[int] = []  # first index of each run of equal terms
        self._run_terms: list[int] = []
        self._dirty: list[_Segment] = []  # segments written since the last flush
        self._dir_dirty = False
        self._closed = False
        make_private_dirs(self.directory)
        self._dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(self._dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._dir_fd)
            raise RuntimeError(f"journal {self.directory} is open elsewhere") from None
        try:
            self.recovery = self._recover()
        except BaseException:
            self.close()
            raise
        self.durable_index = self.last_index

    # --- state -------------------------------------------------------------

    @property
    def first_index(self) -> int:
        return self._segments[0].first

    @property
    def last_index(self) -> int:
        return self._segments[-1].next_index - 1

    @property
    def segment_count(self) -> int:
        return len(self._segments)

    @property
    def size_bytes(self) -> int:
        """Bytes of the segment files (headers and records)."""
        return sum(seg.size for seg in self._segments)

    def term_at(self, index: int) -> int | None:
        if not self.first_index <= index <= self.last_index:
            return None
        return self._run_terms[bisect_right(self._run_starts, index) - 1]

    # --- writing -----------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> None:
        """Write ``entries`` after the last one; durable only after ``flush()``.

        On an I/O error a prefix of the batch may have been appended; the
        journal stays consistent and ``last_index`` tells how far it got."""
        self._check_open()
        if not entries:
            return
        seg = self._segments[-1]
        index = seg.next_index
        if entries[0].index != index:
            raise ValueError(f"append at {entries[0].index}, expected {index}")
        crc32, pack_prefix, pack_body = zlib.crc32, _PREFIX.pack, _BODY.pack
        limit = self._segment_size
        last_term = self._run_terms[-1] if self._run_terms else 0
        runs: list[tuple[int, int]] = []
        # Encode and validate everything before writing anything.
        groups: list[tuple[int, list[bytes], list[int]]] = []  # (first index, parts, offsets)
        parts: list[bytes] = []
        offsets: list[int] = []
        group_first, pos, count = seg.first, seg.size, len(seg.offsets)
        for e in entries:
            if e.index != index:
                raise ValueError(f"entry {e.index} does not follow {index - 1}")
            if pos >= limit and count:
                groups.append((group_first, parts, offsets))
                parts, offsets = [], []
                group_first, pos, count = index, _HEADER.size, 0
            term = e.term
            if term != last_term:
                if term < last_term:
                    raise ValueError(f"entry {index} has term {term} < {last_term}")
                runs.append((index, term))
                last_term = term
            data = e.data
            body = pack_body(index, term, e.kind)
            parts.append(pack_prefix(len(data), crc32(data, crc32(body))))
            parts.append(body)
            parts.append(data)
            offsets.append(pos)
            pos += _RECORD.size + len(data)
            count += 1
            index += 1
        groups.append((group_first, parts, offsets))

        for first, group_parts, group_offsets in groups:
            if first != seg.first:
                seg = self._new_segment(first)
            self._write(seg, b"".join(group_parts))
            seg.offsets.extend(group_offsets)
            while runs and runs[0][0] < seg.next_index:
                start, term = runs.pop(0)
                self._run_starts.append(start)
                self._run_terms.append(term)

    def flush(self) -> int:
        """Make everything appended so far durable (one fsync per dirty file);
        returns the durable last index."""
        self._check_open()
        if self._sync and (self._dirty or self._dir_dirty):
            try:
                for seg in self._dirty:
                    self._sync_file(seg.fd)
                if self._dir_dirty:
                    self._sync_dir(self._dir_fd)
            except OSError:
                # After a failed fsync the kernel may have dropped the dirty pages;
                # retrying could report durability that is not there.
                self.close()
                raise
        self._dirty.clear()
        self._dir_dirty = False
        self.durable_index = self.last_index
        return self.durable_index

    def truncate_from(self, index: int) -> None:
        """Durably drop ``index`` and every entry after it."""
        self._check_open()
        if index > self.last_index:
            return
        if index < self.first_index:
            raise ValueError(f"cannot truncate from {index}: log starts at {self.first_index}")
        while self._segments[-1].first > index or (
            len(self._segments) > 1 and self._segments[-1].first == index
        ):
            self._delete(self._segments.pop())
        seg = self._segments[-1]
        keep = index - seg.first
        seg.size = seg.offsets[keep] if keep < len(seg.offsets) else seg.size
        del seg.offsets[keep:]
        os.ftruncate(seg.fd, seg.size)
        self._mark_dirty(seg)
        cut = bisect_left(self._run_starts, index)
        del self._run_starts[cut:], self._run_terms[cut:]
        self.flush()

    def compact(self, up_to_index: int) -> int:
        """Delete the oldest segments whose entries are all <= ``up_to_index``;
        the active (last) segment is never deleted. Returns how many were deleted."""
        self._check_open()
        deleted = 0
        while len(self._segments) > 1 and self._segments[1].first - 1 <= up_to_index:
            self._delete(self._segments.pop(0))
            deleted += 1
        if deleted:
            cut = bisect_right(self._run_starts, self.first_index) - 1
            del self._run_starts[:cut], self._run_terms[:cut]
            self.flush()
        return deleted

    def reset(self, next_index: int) -> None:
        """Drop every entry (after installing a snapshot); the next append is ``next_index``."""
        self._check_open()
        if next_index < 1:
            raise ValueError(f"next_index must be >= 1, got {next_index}")
        while self._segments:
            self._delete(self._segments.pop())
        self._run_starts.clear()
        self._run_terms.clear()
        self._new_segment(next_index)
        self.flush()

    def files_through(self, index: int) -> list[tuple[str, int]]:
        """The segment files that hold entries ``first_index`` .. ``index``, each with
        the bytes that hold them (the last one cut right after entry ``index``):
        what a backup copies. Bytes before the cut never change while ``index`` is
        committed, whatever is appended or truncated after it."""
        self._check_open()
        if not self.first_index <= index <= self.last_index:
            raise IndexError(f"{index} outside [{self.first_index}, {self.last_index}]")
        out = []
        for seg in self._segments:
            if seg.first > index:
                break
            k = index - seg.first + 1  # entries of this segment up to ``index``
            out.append((seg.path, seg.offsets[k] if k < len(seg.offsets) else seg.size))
        return out

    # --- reading -----------------------------------------------------------

    def read(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries ``lo`` (inclusive) to ``hi`` (exclusive); with ``max_bytes``, only as
        many as fit in that many bytes on disk (but at least one)."""
        self._check_open()
        if lo >= hi:
            return []
        if lo < self.first_index or hi > self.last_index + 1:
            raise IndexError(f"read [{lo}, {hi}) outside [{self.first_index}, {self.last_index}]")
        out: list[Entry] = []
        budget = max_bytes
        i = bisect_right(self._segments, lo, key=lambda s: s.first) - 1
        while lo < hi:
            seg = self._segments[i]
            end = min(hi, seg.next_index)
            start_off = seg.offsets[lo - seg.first]
            end_off = seg.offsets[end - seg.first] if end < seg.next_index else seg.size
            if budget is not None and end_off - start_off > budget:
                # the last entry that still fits (the first one always does)
                offsets = seg.offsets
                k = bisect_right(offsets, start_off + budget, lo - seg.first + 1, end - seg.first)
                end = seg.first + k - 1
                if end == lo:
                    if out:
                        break
                    end = lo + 1
                end_off = offsets[end - seg.first] if end < seg.next_index else seg.size
                hi = end  # nothing after this segment either
            buf = os.pread(seg.fd, end_off - start_off, start_off)
            _decode(buf, seg.path, start_off, out)
            if budget is not None:
                budget -= end_off - start_off
            lo, i = end, i + 1
        return out

    def __iter__(self) -> Iterator[Entry]:
        index = self.first_index
        while index <= self.last_index:
            batch = self.read(index, min(index + _READ_CHUNK, self.last_index + 1))
            yield from batch
            index += len(batch)

    # --- lifecycle ---------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for seg in self._segments:
            os.close(seg.fd)
        self._segments.clear()
        os.close(self._dir_fd)  # also releases the lock

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- internals ---------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"journal {self.directory} is closed")

    def _path(self, first: int) -> str:
        return os.path.join(self.directory, f"{first:020d}.seg")

    def _new_segment(self, first: int) -> _Segment:
        path = self._path(first)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)  # whatever the umask, and if the file existed
        except OSError:
            os.close(fd)
            raise
        seg = _Segment(path, fd, first, array("Q"), 0)
        self._dir_dirty = True
        try:
            self._write(seg, _HEADER.pack(_MAGIC, _VERSION, 0, first))
        except OSError:
            os.close(fd)
            os.unlink(path)
            raise
        self._segments.append(seg)
        return seg

    def _write(self, seg: _Segment, buf: bytes) -> None:
        view, off = memoryview(buf), seg.size
        try:
            while view:
                n = os.pwrite(seg.fd, view, off)
                view, off = view[n:], off + n
        except OSError:
            # Leave no partial record behind for the next append to follow.
            os.ftruncate(seg.fd, seg.size)
            raise
        seg.size = off
        self._mark_dirty(seg)

    def _mark_dirty(self, seg: _Segment) -> None:
        if not self._dirty or self._dirty[-1] is not seg:
            self._dirty.append(seg)

    def _delete(self, seg: _Segment) -> None:
        os.close(seg.fd)
        discard(seg.path)  # unlinking a full segment would stall the partition thread
        if seg in self._dirty:
            self._dirty.remove(seg)
        self._dir_dirty = True

    def _recover(self) -> RecoveryReport:
        sweep_trash(self.directory)
        names = sorted(n for n in os.listdir(self.directory) if _NAME.match(n))
        report = RecoveryReport()
        expected = None  # the index the next segment must start at
        for k, name in enumerate(names):
            path = os.path.join(self.directory, name)
            fd = os.open(path, os.O_RDWR)
            data = os.pread(fd, os.fstat(fd).st_size, 0)
            first = int(name[:20])
            seg = _Segment(path, fd, first, array("Q"), 0)
            try:
                bad, reason = self._scan(seg, data, expected)
            except NewerFormatError:
                os.close(fd)
                raise
            if bad is None:
                self._segments.append(seg)
                expected = seg.next_index
                continue
            report = self._cut(seg, data, bad, reason, names[k + 1 :])
            break
        if not self._segments:
            # Keep the first index known even when nothing survived.
            self._new_segment(int(names[0][:20]) if names else 1)
        if report.reason or not names:
            self.flush()
        return report

    def _scan(self, seg: _Segment, data: bytes, expected: int | None) -> tuple[int | None, str]:
        """Index ``data`` into ``seg``; returns the offset of the first bad byte and why."""
        if len(data) < _HEADER.size:
            return 0, f"torn segment header ({len(data)} bytes)"
        magic, version, _, first = _HEADER.unpack_from(data)
        if magic == _MAGIC and version > _VERSION:
            # written by a newer broker: cutting it would lose data; refuse to open
            raise NewerFormatError(
                f"journal segment {seg.path} has format version {version}; this broker "
                f"reads up to {_VERSION}: run the broker version that wrote it"
            )
        if magic != _MAGIC or version != _VERSION:
            return 0, f"bad segment header (magic {magic!r}, version {version})"
        if first != seg.first or (expected is not None and first != expected):
            return 0, f"segment starts at {first}, expected {expected or seg.first}"
        offsets, unpack, crc32 = seg.offsets, _RECORD.unpack_from, zlib.crc32
        view = memoryview(data)
        pos, end_of_data, index = _HEADER.size, len(data), first
        starts, terms = self._run_starts, self._run_terms
        last_term = terms[-1] if terms else 0
        while pos < end_of_data:
            if end_of_data - pos < _RECORD.size:
                return pos, f"torn record header at index {index}"
            length, crc, rec_index, term, kind = unpack(data, pos)
            end = pos + _RECORD.size + length
            if end > end_of_data:
                return pos, f"torn record at index {index} ({end - end_of_data} bytes missing)"
            if crc32(view[pos + _CRC_FROM : end]) != crc:
                return pos, f"checksum mismatch at index {index}"
            if rec_index != index or kind >= len(_KINDS) or term < last_term:
                return pos, f"invalid record at index {index} (index {rec_index}, term {term})"
            if term != last_term:
                starts.append(index)
                terms.append(term)
                last_term = term
            offsets.append(pos)
            pos, index = end, index + 1
        seg.size = pos
        return None, ""

    def _cut(
        self, seg: _Segment, data: bytes, bad: int, reason: str, later: list[str]
    ) -> RecoveryReport:
        """Truncate the log at ``bad`` in ``seg`` and delete the ``later`` segments."""
        records = _count_frames(data, max(bad, _HEADER.size))
        nbytes = len(data) - bad
        if bad == 0:
            self._delete(seg)
        else:
            os.ftruncate(seg.fd, bad)
            seg.size = bad
            self._segments.append(seg)
            self._mark_dirty(seg)
        for name in later:
            path = os.path.join(self.directory, name)
            with open(path, "rb") as f:
                rest = f.read()
            records += _count_frames(rest, _HEADER.size)
            nbytes += len(rest)
            os.unlink(path)
            self._dir_dirty = True
        name = os.path.basename(seg.path)
        log.warning(
            "journal %s: %s at offset %d of %s; dropped %d records (%d bytes) from there on",
            self.directory,
            reason,
            bad,
            name,
            records,
            nbytes,
        )
        return RecoveryReport(records, nbytes, reason, name)


def _decode(buf: bytes, path: str, base: int, out: list[Entry]) -> None:
    unpack, crc32, view = _RECORD.unpack_from, zlib.crc32, memoryview(buf)
    pos, size = 0, len(buf)
    while pos < size:
        if size - pos < _RECORD.size:
            raise CorruptFileError(path, f"short read at offset {base + pos}")
        length, crc, index, term, kind = unpack(buf, pos)
        start = pos + _RECORD.size
        end = start + length
        if end > size or crc32(view[pos + _CRC_FROM : end]) != crc:
            raise CorruptFileError(path, f"record at offset {base + pos} changed on disk")
        out.append(Entry(index, term, _KINDS[kind], buf[start:end]))
        pos = end


def _count_frames(data: bytes, pos: int) -> int:
    """How many records (the last possibly partial) the framing shows from ``pos`` on."""
    count = 0
    while pos < len(data):
        count += 1
        if len(data) - pos < _PREFIX.size:
            break
        pos += _RECORD.size + _PREFIX.unpack_from(data, pos)[0]
    return count
