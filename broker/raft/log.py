"""The Raft core's view of its log: a snapshot point plus the entries after it.

Pure data structure; durability is the journal's job. Entries are kept in a
list where ``entries[k].index == snapshot_index + 1 + k``.
"""

from __future__ import annotations

from collections.abc import Sequence

from .messages import Entry


class RaftLog:
    __slots__ = ("entries", "snapshot_index", "snapshot_term")

    def __init__(self, snapshot_index: int = 0, snapshot_term: int = 0, entries=()):
        self.snapshot_index = snapshot_index
        self.snapshot_term = snapshot_term
        self.entries: list[Entry] = list(entries)
        if self.entries and self.entries[0].index != snapshot_index + 1:
            raise ValueError(
                f"log entries start at {self.entries[0].index}, expected {snapshot_index + 1}"
            )

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

    def slice(self, lo: int, hi: int) -> list[Entry]:
        """Entries with lo <= index < hi (lo must be after the snapshot point)."""
        base = self.snapshot_index + 1
        return self.entries[lo - base : hi - base]

    def append(self, entries: Sequence[Entry]) -> None:
        if entries and entries[0].index != self.last_index + 1:
            raise ValueError(f"append at {entries[0].index}, log ends at {self.last_index}")
        self.entries.extend(entries)

    def truncate_from(self, index: int) -> None:
        """Drop ``index`` and everything after it."""
        del self.entries[max(0, index - self.snapshot_index - 1) :]

    def compact(self, index: int) -> None:
        """Forget entries up to ``index`` (which must be in the log)."""
        term = self.term_at(index)
        if term is None:
            raise ValueError(f"cannot compact at {index}: not in the log")
        del self.entries[: index - self.snapshot_index]
        self.snapshot_index, self.snapshot_term = index, term

    def reset(self, snapshot_index: int, snapshot_term: int) -> None:
        """Replace the whole log by a snapshot point (a snapshot was installed)."""
        self.entries.clear()
        self.snapshot_index, self.snapshot_term = snapshot_index, snapshot_term

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
