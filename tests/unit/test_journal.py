import logging
import os
import random
import stat
import threading

import pytest

from broker.fsutil import TRASH_SUFFIX, CorruptFileError, wait_discarded
from broker.raft.journal import _HEADER, _RECORD, Journal, NewerFormatError, RecoveryReport
from broker.raft.messages import Entry, EntryKind

SEG = 256  # tiny segments: a few records each


def make(lo, hi, term=1, size=20):
    kinds = list(EntryKind)
    return [
        Entry(i, term, kinds[i % len(kinds)], f"entry-{i}".encode().ljust(size, b"."))
        for i in range(lo, hi)
    ]


def segments(directory):
    return sorted(n for n in os.listdir(directory) if n.endswith(".seg"))


def record_len(size=20):
    return _RECORD.size + size


class CountingSync:
    def __init__(self):
        self.files = 0
        self.dirs = 0

    def __call__(self, fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            self.dirs += 1
        else:
            self.files += 1
        os.fsync(fd)


def test_new_journal_is_empty(tmp_path):
    with Journal(tmp_path) as j:
        assert (j.first_index, j.last_index, j.durable_index) == (1, 0, 0)
        assert j.term_at(0) is None and j.term_at(1) is None
        assert j.read(1, 1) == [] and list(j) == []
        assert j.recovery == RecoveryReport()
    with Journal(tmp_path) as j:
        assert (j.first_index, j.last_index) == (1, 0)


def test_round_trip_across_segments(tmp_path):
    written = make(1, 20, term=1) + make(20, 45, term=3, size=60) + make(45, 61, term=4)
    with Journal(tmp_path, segment_size=SEG) as j:
        for lo in range(0, len(written), 7):
            j.append(written[lo : lo + 7])
        assert j.flush() == 60
        assert j.durable_index == 60

    assert len(segments(tmp_path)) > 4
    with Journal(tmp_path, segment_size=SEG) as j:
        assert j.recovery == RecoveryReport()
        assert list(j) == written
        assert (j.first_index, j.last_index, j.durable_index) == (1, 60, 60)
        for lo, hi in [(1, 61), (5, 6), (9, 33), (44, 46), (60, 61)]:
            assert j.read(lo, hi) == written[lo - 1 : hi - 1]
        assert [j.term_at(i) for i in (1, 19, 20, 44, 45, 60, 61)] == [1, 1, 3, 3, 4, 4, None]


def test_segment_files_roll_over_at_size_and_are_named_by_first_index(tmp_path):
    with Journal(tmp_path, segment_size=SEG) as j:
        j.append(make(1, 30))
        j.flush()
    names = segments(tmp_path)
    firsts = [int(n.removesuffix(".seg")) for n in names]
    assert firsts[0] == 1 and firsts == sorted(firsts)
    for name in names[:-1]:
        size = (tmp_path / name).stat().st_size
        # a segment is closed by the first record that takes it to or past the limit
        assert SEG <= size < SEG + record_len()


def test_append_must_be_contiguous_and_leaves_log_unchanged_on_error(tmp_path):
    with Journal(tmp_path, segment_size=SEG) as j:
        j.append(make(1, 6, term=2))
        j.flush()
        sizes = {n: (tmp_path / n).stat().st_size for n in segments(tmp_path)}

        with pytest.raises(ValueError, match="expected 6"):
            j.append(make(7, 9))
        with pytest.raises(ValueError, match="does not follow"):
            j.append(make(6, 30, term=2) + make(31, 32, term=2))  # gap after a rollover
        with pytest.raises(ValueError, match="term 1 < 2"):
            j.append(make(6, 8, term=1))

        assert j.last_index == 5
        assert {n: (tmp_path / n).stat().st_size for n in segments(tmp_path)} == sizes
        j.append(make(6, 8, term=2))
        assert j.read(1, 8) == make(1, 8, term=2)


def test_read_outside_the_log_raises(tmp_path):
    with Journal(tmp_path) as j:
        j.append(make(1, 5))
        with pytest.raises(IndexError):
            j.read(0, 2)
        with pytest.raises(IndexError):
            j.read(3, 6)


def test_unflushed_entries_are_readable_but_not_durable(tmp_path):
    with Journal(tmp_path) as j:
        j.append(make(1, 4))
        j.flush()
        j.append(make(4, 6))
        assert (j.last_index, j.durable_index) == (5, 3)
        assert j.read(4, 6) == make(4, 6)


def test_group_commit_one_fsync_per_flush(tmp_path):
    sync = CountingSync()
    with Journal(tmp_path, fsync=sync) as j:
        sync.files = sync.dirs = 0
        for lo in range(1, 1001, 100):
            j.append(make(lo, lo + 100))
        assert j.flush() == 1000
        assert (sync.files, sync.dirs) == (1, 0)
        j.flush()  # nothing new: no fsync
        assert (sync.files, sync.dirs) == (1, 0)


def test_new_segment_makes_flush_sync_the_directory(tmp_path):
    sync = CountingSync()
    with Journal(tmp_path, segment_size=SEG, fsync=sync) as j:
        sync.files = sync.dirs = 0
        j.append(make(1, 14))  # spans three segments
        j.flush()
        assert len(segments(tmp_path)) == 3
        assert (sync.files, sync.dirs) == (3, 1)


def test_flush_disabled_never_syncs(tmp_path):
    sync = CountingSync()
    with Journal(tmp_path, segment_size=SEG, flush=False, fsync=sync) as j:
        j.append(make(1, 30))
        assert j.flush() == 29
        j.truncate_from(10)
        j.compact(5)
        j.reset(100)
    assert (sync.files, sync.dirs) == (0, 0)


def test_torn_tail_is_truncated_to_the_previous_record(tmp_path, caplog):
    with Journal(tmp_path) as j:
        j.append(make(1, 11))
        j.flush()
    (name,) = segments(tmp_path)
    path = tmp_path / name
    full = path.stat().st_size
    os.truncate(path, full - 5)  # cut inside the last record

    with caplog.at_level(logging.WARNING, logger="broker.raft.journal"), Journal(tmp_path) as j:
        assert list(j) == make(1, 10)
        assert (j.last_index, j.durable_index) == (9, 9)
        assert j.recovery.truncated_records == 1
        assert j.recovery.truncated_bytes == record_len() - 5
        assert "torn record at index 10" in j.recovery.reason
        assert j.recovery.segment == name
        offset = full - record_len()
        assert path.stat().st_size == offset
        j.append(make(10, 12, term=2))
        j.flush()

    assert name in caplog.text and f"offset {offset}" in caplog.text and "torn" in caplog.text
    with Journal(tmp_path) as j:
        assert j.recovery == RecoveryReport()
        assert list(j) == make(1, 10) + make(10, 12, term=2)


def test_torn_record_header_is_truncated(tmp_path):
    with Journal(tmp_path) as j:
        j.append(make(1, 4))
        j.flush()
    path = tmp_path / segments(tmp_path)[0]
    with open(path, "ab") as f:
        f.write(b"\x07\x00\x00")  # three bytes of a next record's length field

    with Journal(tmp_path) as j:
        assert list(j) == make(1, 4)
        assert (j.recovery.truncated_records, j.recovery.truncated_bytes) == (1, 3)


def test_corrupt_record_in_the_middle_truncates_from_it(tmp_path, caplog):
    with Journal(tmp_path, segment_size=SEG) as j:
        j.append(make(1, 31))
        j.flush()
    names = segments(tmp_path)
    victim = names[1]
    first = int(victim.removesuffix(".seg"))
    bad = first + 2  # third record of the second segment
    path = tmp_path / victim
    offset = _HEADER.size + 2 * record_len()
    blob = bytearray(path.read_bytes())
    blob[offset + _RECORD.size + 3] ^= 0x10  # one bit of that record's data
    path.write_bytes(bytes(blob))
    later_bytes = sum((tmp_path / n).stat().st_size for n in names[2:])

    with caplog.at_level(logging.WARNING), Journal(tmp_path, segment_size=SEG) as j:
        assert list(j) == make(1, bad)
        assert j.last_index == bad - 1
        assert j.recovery.truncated_records == 30 - bad + 1
        assert j.recovery.truncated_bytes == len(blob) - offset + later_bytes
        assert j.recovery.reason == f"checksum mismatch at index {bad}"
        assert j.recovery.segment == victim
        assert segments(tmp_path) == names[:2]
        assert path.stat().st_size == offset

    assert f"offset {offset} of {victim}" in caplog.text
    with Journal(tmp_path, segment_size=SEG) as j:
        assert j.recovery == RecoveryReport()
        assert j.last_index == bad - 1


def test_missing_middle_segment_truncates_at_the_gap(tmp_path):
    with Journal(tmp_path, segment_size=SEG) as j:
        j.append(make(1, 31))
        j.flush()
    names = segments(tmp_path)
    os.unlink(tmp_path / names[2])

    with Journal(tmp_path, segment_size=SEG) as j:
        assert j.last_index == int(names[2].removesuffix(".seg")) - 1
        assert "expected" in j.recovery.reason
        assert j.recovery.segment == names[3]
        assert segments(tmp_path) == names[:2]


def test_corrupt_first_segment_header_keeps_the_first_index(tmp_path):
    with Journal(tmp_path) as j:
        j.reset(50)
        j.append(make(50, 55))
        j.flush()
    path = tmp_path / segments(tmp_path)[0]
    blob = path.read_bytes()
    path.write_bytes(b"JUNK" + blob[4:])

    with Journal(tmp_path) as j:
        assert (j.first_index, j.last_index) == (50, 49)
        assert "bad segment header" in j.recovery.reason
        assert j.recovery.truncated_records == 5
        assert j.recovery.truncated_bytes == len(blob)
        j.append(make(50, 51))


def test_corrupt_data_found_by_read_raises(tmp_path):
    with Journal(tmp_path) as j:
        j.append(make(1, 5))
        j.flush()
        path = tmp_path / segments(tmp_path)[0]
        blob = bytearray(path.read_bytes())
        blob[-1] ^= 0x01
        path.write_bytes(bytes(blob))
        assert j.read(1, 4) == make(1, 4)
        with pytest.raises(CorruptFileError, match="changed on disk"):
            j.read(1, 5)


def test_truncate_within_a_segment_then_append_and_reopen(tmp_path):
    with Journal(tmp_path) as j:
        j.append(make(1, 11, term=1))
        j.append(make(11, 13, term=2))
        j.flush()
        j.truncate_from(8)
        assert (j.last_index, j.durable_index) == (7, 7)
        assert j.term_at(8) is None and j.term_at(7) == 1
        with pytest.raises(ValueError):
            j.append(make(9, 10, term=3))
        j.append(make(8, 12, term=3))
        j.flush()
        assert j.term_at(7) == 1 and j.term_at(8) == 3

    with Journal(tmp_path) as j:
        assert j.recovery == RecoveryReport()
        assert list(j) == make(1, 8, term=1) + make(8, 12, term=3)


def test_truncate_across_segments_then_append_and_reopen(tmp_path):
    with Journal(tmp_path, segment_size=SEG) as j:
        j.append(make(1, 31, term=1))
        j.flush()
        names = segments(tmp_path)
        cut = int(names[1].removesuffix(".seg")) + 1  # inside the second segment
        j.truncate_from(cut)
        assert segments(tmp_path) == names[:2]
        assert j.last_index == cut - 1
        j.append(make(cut, 40, term=2))
        j.flush()

    with Journal(tmp_path, segment_size=SEG) as j:
        assert j.recovery == RecoveryReport()
        assert list(j) == make(1, cut, term=1) + make(cut, 40, term=2)
        assert j.term_at(cut - 1) == 1 and j.term_at(cut) == 2


def test_truncate_at_a_segment_boundary_removes_that_segment(tmp_path):
    with Journal(tmp_path, segment_size=SEG) as j:
        j.append(make(1, 20))
        j.flush()
        names = segments(tmp_path)
        boundary = int(names[1].removesuffix(".seg"))
        j.truncate_from(boundary)
        assert segments(tmp_path) == names[:1]
        assert j.last_index == boundary - 1
        j.append(make(boundary, boundary + 2, term=5))
        j.flush()
    with Journal(tmp_path, segment_size=SEG) as j:
        assert j.read(boundary - 1, boundary + 2) == make(boundary - 1, boundary) + make(
            boundary, boundary + 2, term=5
        )


def test_truncate_edges(tmp_path):
    with Journal(tmp_path, segment_size=SEG) as j:
        j.append(make(1, 20))
        j.flush()
        j.truncate_from(25)  # beyond the end: nothing to drop
        assert j.last_index == 19
        j.compact(9)
        with pytest.raises(ValueError, match="log starts at"):
            j.truncate_from(j.first_index - 1)
        first = j.first_index
        j.truncate_from(first)  # everything
        assert (j.first_index, j.last_index) == (first, first - 1)
        assert list(j) == []
        j.append(make(first, first + 1, term=2))
        j.flush()
    with Journal(tmp_path, segment_size=SEG) as j:
        assert list(j) == make(first, first + 1, term=2)


def test_compact_deletes_only_whole_segments_up_to_index(tmp_path):
    with Journal(tmp_path, segment_size=SEG) as j:
        j.append(make(1, 41))
        j.flush()
        names = segments(tmp_path)
        starts = [int(n.removesuffix(".seg")) for n in names]
        # an index inside the third segment: the first two are wholly covered
        assert j.compact(starts[2] + 1) == 2
        assert segments(tmp_path) == names[2:]
        assert j.first_index == starts[2]
        assert j.term_at(starts[2] - 1) is None and j.term_at(starts[2]) == 1
        assert j.compact(starts[2] + 1) == 0
        assert j.read(starts[2], 41) == make(starts[2], 41)

    with Journal(tmp_path, segment_size=SEG) as j:
        assert j.first_index == starts[2]
        assert list(j) == make(starts[2], 41)
        assert j.compact(10**9) == len(names) - 3  # the active segment always stays
        assert segments(tmp_path) == names[-1:]
        assert j.last_index == 40
        j.append(make(41, 42))
        assert j.read(starts[-1], 42) == make(starts[-1], 42)


def test_reset_drops_everything_and_sets_the_next_index(tmp_path):
    with Journal(tmp_path, segment_size=SEG) as j:
        j.append(make(1, 30))
        j.flush()
        j.reset(100)
        assert (j.first_index, j.last_index, j.durable_index) == (100, 99, 99)
        assert list(j) == [] and j.term_at(29) is None
        assert segments(tmp_path) == [f"{100:020d}.seg"]
        with pytest.raises(ValueError):
            j.append(make(30, 31))
    with Journal(tmp_path, segment_size=SEG) as j:
        assert (j.first_index, j.last_index) == (100, 99)
        j.append(make(100, 103, term=7))
        j.flush()
        j.reset(5)  # also backwards
        assert (j.first_index, j.last_index) == (5, 4)
    with Journal(tmp_path, segment_size=SEG) as j:
        assert (j.first_index, j.last_index) == (5, 4)


def test_write_error_leaves_no_partial_record(tmp_path, monkeypatch):
    real_pwrite = os.pwrite

    def short_then_fail(fd, data, offset):
        real_pwrite(fd, bytes(data[:10]), offset)
        raise OSError(28, "No space left on device")

    with Journal(tmp_path) as j:
        j.append(make(1, 4))
        j.flush()
        size = (tmp_path / segments(tmp_path)[0]).stat().st_size
        monkeypatch.setattr(os, "pwrite", short_then_fail)
        with pytest.raises(OSError):
            j.append(make(4, 8))
        monkeypatch.undo()
        assert j.last_index == 3
        assert (tmp_path / segments(tmp_path)[0]).stat().st_size == size
        j.append(make(4, 6))
        j.flush()
    with Journal(tmp_path) as j:
        assert j.recovery == RecoveryReport()
        assert list(j) == make(1, 6)


def test_compaction_discards_segments_without_unlinking_them_on_the_callers_thread(
    tmp_path, monkeypatch
):
    """Freeing a full segment's blocks takes tens of ms: the partition thread only
    renames it; the background unlinker frees it."""
    unlinked_by = []
    real = os.unlink
    monkeypatch.setattr(
        os, "unlink", lambda path: (unlinked_by.append(threading.current_thread()), real(path))
    )
    with Journal(tmp_path, segment_size=200) as j:
        j.append(make(1, 40))
        j.flush()
        segments = sorted(p.name for p in tmp_path.glob("*.seg"))
        assert len(segments) > 2
        assert j.compact(30) >= 2
        assert wait_discarded()
        left = sorted(p.name for p in tmp_path.glob("*.seg"))
        assert left == segments[len(segments) - len(left) :]
        assert not list(tmp_path.glob(f"*{TRASH_SUFFIX}"))
        assert unlinked_by and threading.main_thread() not in unlinked_by
        assert [e.index for e in j.read(j.first_index, 40)][-1] == 39


def test_failed_fsync_closes_the_journal(tmp_path):
    broken = False

    def sync(fd):
        if broken:
            raise OSError(5, "Input/output error")

    j = Journal(tmp_path, fsync=sync)
    j.append(make(1, 3))
    broken = True
    with pytest.raises(OSError):
        j.flush()
    with pytest.raises(ValueError, match="closed"):
        j.append(make(3, 4))


def test_directory_is_locked_while_open(tmp_path):
    with Journal(tmp_path), pytest.raises(RuntimeError, match="open elsewhere"):
        Journal(tmp_path)
    Journal(tmp_path).close()


# --- crash simulation ------------------------------------------------------


class CrashDisk:
    """A model of what a crash keeps: each file as it was at its last fsync
    (which it records instead of syncing).

    Files are keyed by path; ``unlink`` (patched over os.unlink) forgets a
    deleted file so a later file of the same name starts with nothing durable.
    Deletions are taken as durable at once (the journal fsyncs the directory
    before it returns from an operation that deletes)."""

    def __init__(self, live, rng):
        self.live = live
        self.rng = rng
        self.durable: dict[str, bytes] = {}
        self.before_sync = None
        self._unlink = os.unlink
        self._rename = os.rename

    def fsync(self, fd):
        if self.before_sync:
            self.before_sync()
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            self.durable[os.readlink(f"/proc/self/fd/{fd}")] = os.pread(fd, st.st_size, 0)

    def unlink(self, path):
        self.durable.pop(os.path.realpath(path), None)
        self._unlink(path)

    def rename(self, src, dst):
        # a discarded segment: out of the journal at once (its unlink follows later)
        self.durable.pop(os.path.realpath(src), None)
        self._rename(src, dst)

    def image(self, dst):
        """Each file cut back to its durable content, plus a partial record of junk
        where unsynced writes were in flight. Returns whether any junk was added."""
        dst.mkdir()
        any_junk = False
        # A discarded segment may or may not be unlinked yet: the crash leaves one.
        (dst / f"{0:020d}.seg{TRASH_SUFFIX}").write_bytes(self.rng.randbytes(40))
        for path in sorted(self.live.iterdir()):
            if path.name.endswith(TRASH_SUFFIX):
                continue
            live = path.read_bytes()
            kept = self.durable.get(str(path.resolve()), b"")
            junk = b""
            if live != kept:
                n = self.rng.randint(1, _RECORD.size + 9)  # less than the smallest record
                torn = live[len(kept) : len(kept) + n]  # the start of what was not synced
                junk = self.rng.choice([torn or bytes(n), self.rng.randbytes(n), bytes(n)])
                any_junk = True
            (dst / path.name).write_bytes(kept + junk)
        return any_junk


@pytest.mark.parametrize("seed", range(4))
def test_crash_keeps_exactly_the_flushed_entries(tmp_path, monkeypatch, seed):
    rng = random.Random(seed)
    live = tmp_path / "live"
    disk = CrashDisk(live, rng)
    monkeypatch.setattr(os, "unlink", disk.unlink)
    monkeypatch.setattr(os, "rename", disk.rename)
    checks = []  # (image, junk added, first index, entries that must / may survive)

    def crash(must, may, first):
        image = tmp_path / f"crash{len(checks)}"
        checks.append((image, disk.image(image), first, list(must), list(may)))

    j = Journal(live, segment_size=200, fsync=disk.fsync)
    log, durable, term = [], [], 1
    for _ in range(80):
        op = rng.random()
        if op < 0.45:
            lo = j.last_index + 1
            batch = [
                Entry(i, term, EntryKind.NORMAL, rng.randbytes(rng.randint(10, 60)))
                for i in range(lo, lo + rng.randint(1, 8))
            ]
            j.append(batch)
            log += batch
        elif op < 0.75:
            # A crash before any fsync inside flush keeps some prefix of the new entries.
            must, may, first = list(durable), list(log), j.first_index
            disk.before_sync = lambda must=must, may=may, first=first: crash(must, may, first)
            assert j.flush() == j.last_index
            disk.before_sync = None
            durable = list(log)
        elif op < 0.85 and log:
            cut = rng.randint(j.first_index, j.last_index)
            j.truncate_from(cut)
            term += 1
            log = [e for e in log if e.index < cut]
            durable = list(log)
        elif op < 0.95:
            if j.compact(rng.randint(0, j.durable_index)):
                log = [e for e in log if e.index >= j.first_index]
                durable = list(log)
        else:
            j.reset(j.last_index + rng.randint(1, 3))
            log, durable = [], []
        crash(durable, durable, j.first_index)
    j.close()
    monkeypatch.undo()

    assert len(checks) > 80
    for image, junk, first, must, may in checks:
        with Journal(image, segment_size=200) as recovered:
            got = list(recovered)
            assert recovered.first_index == first, image
            assert got == may[: len(got)], image
            assert len(got) >= len(must), image
            assert recovered.last_index == first + len(got) - 1
            if not junk:
                assert recovered.recovery == RecoveryReport(), image
    assert wait_discarded()
    assert not [p for p in tmp_path.rglob(f"*{TRASH_SUFFIX}")]  # swept at open


def test_read_with_a_byte_budget_stops_at_whole_entries(tmp_path):
    with Journal(tmp_path / "j", segment_size=4096) as j:
        j.append([Entry(i, 1, EntryKind.NORMAL, bytes([i]) * 1000) for i in range(1, 21)])
        j.flush()
        assert j.segment_count > 3  # budgets that cross segments too
        full = j.read(1, 21)
        size = _RECORD.size + 1000  # one record on disk
        for budget in (1, 1000, size, 2 * size + 1, 5000, 9999, 10**9):
            got = j.read(3, 21, budget)
            assert got == full[2 : 2 + len(got)]
            assert len(got) == max(1, min(18, budget // size)), budget


def test_a_segment_from_a_newer_broker_is_refused_not_truncated(tmp_path):
    with Journal(tmp_path / "j") as j:
        j.append([Entry(1, 1, EntryKind.NORMAL, b"kept")])
        j.flush()
    [segment] = list((tmp_path / "j").glob("*.seg"))
    data = bytearray(segment.read_bytes())
    _HEADER.pack_into(data, 0, b"RJNL", 2, 0, 1)  # format version 2
    segment.write_bytes(bytes(data))
    with pytest.raises(NewerFormatError, match="format version 2; this broker reads up to 1"):
        Journal(tmp_path / "j")
    assert segment.read_bytes() == bytes(data)  # untouched; and the lock was released:
    _HEADER.pack_into(data, 0, b"RJNL", 1, 0, 1)
    segment.write_bytes(bytes(data))
    with Journal(tmp_path / "j") as j:
        assert j.read(1, 2)[0].data == b"kept"
