"""The Raft core's view of its log: a snapshot point plus the entries after it.

Pure data structure; durability is the journal's job. Entries are kept in a
list where ``entries[k].index == snapshot_index + 1 + k``.

Memory: the owner may ``release`` the data of entries that are on disk (persisted
and applied) and give a ``loader`` that reads them back; the log then keeps only
their index, term and kind, and ``slice`` reads released data through the loader.
Configuration entries always keep their data (the core reads them). Without a
loader nothing is released: the simulator keeps everything in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .messages import Entry, EntryKind


class RaftLog:
    __slots__ = (
        "_held_bytes",
        "_released_to",
        "entries",
        "loader",
        "snapshot_index",
        "snapshot_term",
    )

    def __init__(self, snapshot_index: int = 0, snapshot_term: int = 0, entries=()):
        """``entries`` may come with ``data=None``: released, read through the loader."""
        self.snapshot_index = snapshot_index
        self.snapshot_term = snapshot_term
        self.entries: list[Entry] = list(entries)
        if self.entries and self.entries[0].index != snapshot_index + 1:
            raise ValueError(
                f"log entries start at {self.entries[0].index}, expected {snapshot_index + 1}"
            )
        # loader(lo, hi, max_bytes): entries lo..hi-1 from disk, stopping early at
        # max_bytes (None: no limit; at least one entry)
        self.loader: Callable[[int, int, int | None], list[Entry]] | None = None
        released = [e.index for e in self.entries if e.data is None]
        self._released_to = released[-1] if released else snapshot_index
        self._held_bytes = sum(len(e.data) for e in self.entries if e.data is not None)

    @property
    def held_bytes(self) -> int:
        """Bytes of entry data held in memory."""
        return self._held_bytes

    @property
    def last_index(self) -> int:
        return self.snapshot_index + len(self.entries)

    @property
    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snapshot_term

    def term_at(self, index: int) -> int | None:
        """The term of the entry at ``index``; None when unknown (compacted or beyond)."""
        if index == self.snapshot_index:
            return self.snapshot_term
        k = index - self.snapshot_index - 1
        if 0 <= k < len(self.entries):
            return self.entries[k].term
        return None

    def entry(self, index: int) -> Entry:
        return self.entries[index - self.snapshot_index - 1]

    def slice(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries with lo <= index < hi (lo must be after the snapshot point). With
        ``max_bytes``, entries read back from disk may stop early at that many bytes
        (at least one entry); entries in memory are all returned."""
        base = self.snapshot_index + 1
        if lo > self._released_to or lo >= hi:
            return self.entries[lo - base : hi - base]
        split = min(hi, self._released_to + 1)
        loaded = self.loader(lo, split, max_bytes)
        if not loaded or loaded[0].index != lo or len(loaded) > split - lo:
            raise RuntimeError(f"log: reading entries {lo}..{split - 1} back gave {len(loaded)}")
        if len(loaded) < split - lo:
            return loaded
        return loaded + self.entries[split - base : hi - base]

    def release(self, up_to: int, keep_bytes: int) -> None:
        """Drop the data of the oldest entries up to ``up_to`` (which must be on disk)
        until at most ``keep_bytes`` are held; a no-op without a loader."""
        if self.loader is None or self._held_bytes <= keep_bytes:
            return
        base = self.snapshot_index + 1
        index = max(self._released_to + 1, base)
        entries = self.entries
        while index <= min(up_to, self.last_index) and self._held_bytes > keep_bytes:
            e = entries[index - base]
            if e.kind is not EntryKind.CONFIG and e.data is not None:
                self._held_bytes -= len(e.data)
                entries[index - base] = Entry(e.index, e.term, e.kind, None)
            self._released_to = index
            index += 1

    def _forget(self, removed: list[Entry]) -> None:
        self._held_bytes -= sum(len(e.data) for e in removed if e.data is not None)

    def append(self, entries: Sequence[Entry]) -> None:
        if entries and entries[0].index != self.last_index + 1:
            raise ValueError(f"append at {entries[0].index}, log ends at {self.last_index}")
        self.entries.extend(entries)
        self._held_bytes += sum(len(e.data) for e in entries)

    def truncate_from(self, index: int) -> None:
        """Drop ``index`` and everything after it."""
        k = max(0, index - self.snapshot_index - 1)
        self._forget(self.entries[k:])
        del self.entries[k:]
        self._released_to = min(self._released_to, self.last_index)

    def compact(self, index: int) -> None:
        """Forget entries up to ``index`` (which must be in the log)."""
        term = self.term_at(index)
        if term is None:
            raise ValueError(f"cannot compact at {index}: not in the log")
        k = index - self.snapshot_index
        self._forget(self.entries[:k])
        del self.entries[:k]
        self.snapshot_index, self.snapshot_term = index, term
        self._released_to = max(self._released_to, index)

    def reset(self, snapshot_index: int, snapshot_term: int) -> None:
        """Replace the whole log by a snapshot point (a snapshot was installed)."""
        self.entries.clear()
        self._held_bytes = 0
        self.snapshot_index, self.snapshot_term = snapshot_index, snapshot_term
        self._released_to = snapshot_index

    def first_index_of_term_at(self, index: int) -> int:
        """The first index, at or before ``index``, of the term of entry ``index``."""
        term = self.term_at(index)
        i = index
        while i - 1 > self.snapshot_index and self.term_at(i - 1) == term:
            i -= 1
        return i

    def last_index_of_term(self, term: int, at_most: int) -> int | None:
        """The last index <= ``at_most`` holding an entry of ``term``, if any."""
        i = min(at_most, self.last_index)
        while i > self.snapshot_index:
            t = self.term_at(i)
            if t == term:
                return i
            if t < term:  # terms only grow along a log
                return None
            i -= 1
        return None

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft's election restriction: is (last_term, last_index) at least ours?"""
        return (last_term, last_index) >= (self.last_term, self.last_index)
