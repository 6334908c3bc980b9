"""A bounded slice of ``make bench``'s storage section: the same code, 48 MB instead of
gigabytes, so a change that breaks the benchmark fails ``make test``."""

from __future__ import annotations

import re

from bench import storage


def test_the_storage_benchmark_runs_end_to_end(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # its scratch directory (var/bench-tmp) lands here
    monkeypatch.setenv("BENCH_STORAGE_MB", "48")
    monkeypatch.setenv("BENCH_CATCHUP_MB", "48")
    rows = {r["case"]: r["value"] for r in storage.run()}
    assert rows["written"] == "48 MB in 3,072 records"
    growth = int(re.match(r"(-?\d+) MB", rows["RSS growth, largest"])[1])
    assert growth < 100
    assert re.search(r"[\d.]+ MB/s", rows["wiped follower catch-up, whole log"])
    assert rows["exporter paused: log kept, leader RSS idle -> after"].startswith("48 MB of log")
    assert not (tmp_path / "var" / "bench-tmp").exists() or not any(
        (tmp_path / "var" / "bench-tmp").iterdir()
    )
    assert storage.summary(list({"case": k, "value": v} for k, v in rows.items()))
