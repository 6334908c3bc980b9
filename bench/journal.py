"""Journal benchmarks: the disk's raw fsync rate and durable append throughput.

Everything runs in ``./var/bench-tmp`` (on the project's disk, unlike a tmpfs
/tmp) and is removed afterwards. Each figure is the median of ``ROUNDS`` short
rounds. Journal rounds time ``append`` + ``flush`` only: building the Entry
objects is the caller's cost and is left out.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import statistics
import time
from pathlib import Path

from broker.raft.journal import Journal
from broker.raft.messages import Entry

TITLE = "Journal: fsync rate and durable append throughput (group commit)"
COLUMNS = [
    ("case", "case", "{}"),
    ("record_bytes", "record", "{:,} B"),
    ("batch", "batch", "{:,}"),
    ("records_per_s", "records/s", "{:,.0f}"),
    ("mb_per_s", "MB/s", "{:,.1f}"),
    ("records_per_fsync", "rec/fsync", "{:,.1f}"),
    ("fsyncs_per_s", "fsync/s", "{:,.0f}"),
]
ROUNDS = 5
SIZES = (100, 1024)
BATCHES = (1, 64, 1024)
TARGET = 100_000  # records/s of 100 B at batch 1024 (DESIGN section 7)


class _CountingSync:
    def __init__(self):
        self.calls = 0

    def __call__(self, fd: int) -> None:
        self.calls += 1
        (os.fsync if stat.S_ISDIR(os.fstat(fd).st_mode) else os.fdatasync)(fd)


def run(duration: float = 3.0) -> list[dict]:
    """About ``duration`` seconds of measurement in all; one row per case."""
    root = Path.cwd() / "var" / "bench-tmp"
    root.mkdir(parents=True, exist_ok=True)
    round_time = duration / ((2 + len(SIZES) * len(BATCHES)) * ROUNDS)
    try:
        rows = [_raw_fsync(root, round_time)]
        rows += [_journal(root, s, b, round_time) for s in SIZES for b in BATCHES]
        # The CPU ceiling of the append path, whatever the disk does.
        rows.append(_journal(root, 100, 1024, round_time, flush=False))
    finally:
        shutil.rmtree(root, ignore_errors=True)
        with contextlib.suppress(OSError):
            root.parent.rmdir()  # ./var too, unless something else lives there
    return rows


def summary(rows: list[dict]) -> list[str]:
    fsync = next(r for r in rows if r["case"] == "raw fsync")
    key = next(
        r
        for r in rows
        if r["case"] == "journal" and r["record_bytes"] == 100 and r["batch"] == 1024
    )
    verdict = "ok" if key["records_per_s"] >= TARGET else "MISSED"
    return [
        f"journal 100B batch=1024: {key['records_per_s']:,.0f} records/s "
        f"(target >= {TARGET:,}, {verdict}), fsync rate {fsync['fsyncs_per_s']:,.0f}/s"
    ]


def _raw_fsync(root: Path, round_time: float) -> dict:
    path = root / "fsync.dat"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    payload = b"x" * 100
    rates = []
    try:
        for _ in range(ROUNDS):
            n, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < round_time:
                os.write(fd, payload)
                os.fdatasync(fd)
                n += 1
            rates.append(n / elapsed)
    finally:
        os.close(fd)
        path.unlink()
    rate = statistics.median(rates)
    return _row("raw fsync", 100, 1, rate, 1.0, rate)


def _journal(root: Path, size: int, batch: int, round_time: float, flush: bool = True) -> dict:
    directory = root / f"journal-{size}-{batch}"
    sync = _CountingSync()
    payload = os.urandom(size)
    rates, fsync_rates, total_records, total_syncs = [], [], 0, 0
    with Journal(directory, flush=flush, fsync=sync) as journal:
        for _ in range(ROUNDS):
            records, busy, syncs_before = 0, 0.0, sync.calls
            deadline = time.perf_counter() + round_time
            while time.perf_counter() < deadline:
                lo = journal.last_index + 1
                entries = [Entry(i, 1, data=payload) for i in range(lo, lo + batch)]
                start = time.perf_counter()
                journal.append(entries)
                journal.flush()
                busy += time.perf_counter() - start
                records += batch
            syncs = sync.calls - syncs_before
            rates.append(records / busy)
            fsync_rates.append(syncs / busy)
            total_records += records
            total_syncs += syncs
    shutil.rmtree(directory)
    rate = statistics.median(rates)
    per_fsync = total_records / total_syncs if total_syncs else None
    case = "journal" if flush else "no fsync"
    return _row(case, size, batch, rate, per_fsync, statistics.median(fsync_rates))


def _row(case, size, batch, rate, per_fsync, fsyncs_per_s) -> dict:
    return {
        "case": case,
        "record_bytes": size,
        "batch": batch,
        "records_per_s": rate,
        "mb_per_s": rate * size / 1e6,
        "records_per_fsync": per_fsync,
        "fsyncs_per_s": fsyncs_per_s,
    }
