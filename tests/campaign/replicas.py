"""A replica's record log, read from its files after the broker stopped: what the disk of
that one broker says each position holds (the gateway only ever shows the leader's).

Positions are counted the way the broker counts them when it opens the partition: the
newest usable snapshot gives the position at its index, the journal's normal entries after
it add their appends, and entries the journal still holds below the snapshot are numbered
backwards from it.
"""

from __future__ import annotations

from pathlib import Path

from broker.partition import PartitionState, check_snapshot
from broker.raft.journal import Journal
from broker.raft.messages import EntryKind
from broker.raft.snapshots import SnapshotStore
from broker.records import appends
from tests.campaign.workload import text


def _usable_snapshot(directory: Path, partition: int):
    for meta, data in SnapshotStore(directory / "snapshots").readable():
        state = PartitionState(partition)
        try:
            check_snapshot(data, meta.index)
            state.restore(data)
        except ValueError:
            continue
        return meta, state.last_position
    return None, 0


def _records(entries) -> list[str]:
    out = []
    for entry in entries:
        if entry.kind == EntryKind.NORMAL:
            out.extend(text(r) for r in appends(entry.data))
    return out


def replica_log(data_dir: str | Path, partition: int) -> tuple[dict[int, str], int]:
    """(position -> record data, as broker ``data_dir`` holds partition ``partition``; the
    position its newest usable snapshot covers, 0 without one)."""
    directory = Path(data_dir) / "partitions" / str(partition)
    if not (directory / "journal").is_dir():
        return {}, 0
    meta, base = _usable_snapshot(directory, partition)
    with Journal(directory / "journal", flush=False) as journal:
        first, last = journal.first_index, journal.last_index
        snap_index = meta.index if meta is not None else 0
        out: dict[int, str] = {}
        snapshot_in_journal = meta is not None and first <= snap_index <= last
        if snapshot_in_journal and journal.term_at(snap_index) == meta.term:
            below = _records(journal.read(first, snap_index + 1))
            start = base - len(below) + 1
            out.update(zip(range(start, base + 1), below, strict=True))
        lo = max(first, snap_index + 1)
        above = _records(journal.read(lo, last + 1)) if lo <= last else []
        out.update(zip(range(base + 1, base + 1 + len(above)), above, strict=True))
    return out, base
