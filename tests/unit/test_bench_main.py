"""The bench runner's own parts: ``--json`` (one document with every figure, for
comparing commits) and the CPU hog the cluster section runs beside itself."""

from __future__ import annotations

import json
import os
import sys
import types

import pytest

import bench.__main__ as bench_main
from bench.hog import cpu_hog
from tests.helpers import wait_until


def test_json_prints_one_document_with_every_row(monkeypatch, capsys):
    rows = [
        {"id": "a", "case": "one", "records_s": 1234.5, "ratios": {"x_vs_y": 0.5}},
        {"id": "b", "case": "two", "records_s": None, "ratios": {}},
    ]
    fake = types.ModuleType("bench.fake")
    fake.TITLE, fake.COLUMNS = "Fake", [("case", "case", "{}")]
    fake.run, fake.summary = lambda: rows, lambda rows: ["never printed with --json"]
    monkeypatch.setitem(sys.modules, "bench.fake", fake)
    monkeypatch.setattr(bench_main, "SECTIONS", ["fake"])
    bench_main.main(["fake", "--json"])
    out = capsys.readouterr().out
    doc = json.loads(out)  # the whole of stdout is the document
    assert doc["sections"] == {"fake": {"title": "Fake", "rows": rows}}
    assert doc["cpus"] == os.cpu_count() and len(doc["load_average_before"]) == 3
    assert "never printed" not in out


def test_cluster_json_carries_the_figures_design_names(monkeypatch, capsys):
    import bench.cluster as cluster

    rows = [
        {"id": "rf3", "records_s": 300.0, "p50_ms": 3.0, "p99_ms": 6.0},
        {"id": "rf3_half", "records_s": 150.0, "p50_ms": 2.0, "p99_ms": 9.0},
        {"id": "pysyncobj_tuned", "records_s": 60.0, "ratios": {"broker_vs_pysyncobj": 5.0}},
        {"id": "leader_kill", "records_s": None, "p50_ms": 2400.0, "p99_ms": 2700.0},
        {"id": "threads", "records_s": None, "threads": {"idle": 12}},
    ]
    monkeypatch.setattr(cluster, "run", lambda: rows)
    bench_main.main(["cluster", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["broker3"] == {"records_per_s": 300.0, "p50_ms": 3.0, "p99_ms": 6.0}
    assert doc["broker3_half"]["p99_ms"] == 9.0
    assert doc["pysyncobj_tuned"] == {"records_per_s": 60.0, "broker_vs_pysyncobj": 5.0}
    assert doc["leader_kill_s"] == {"median": 2.4, "max": 2.7}
    assert doc["threads"] == {"idle": 12}
    assert "broker8_rf4" not in doc  # a row that did not run is not made up


def test_unknown_sections_are_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        bench_main.main(["nosuch", "--json"])
    assert exc.value.code == 2
    assert "unknown section(s): nosuch" in capsys.readouterr().err


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def test_the_cpu_hog_spins_on_one_core_and_is_gone_afterwards():
    with cpu_hog(core=0) as pid:
        status = proc_status(pid)
        if 0 in os.sched_getaffinity(0):
            assert status["Cpus_allowed_list"] == "0"

        def spinning() -> bool:  # burning CPU: its user time grows
            with open(f"/proc/{pid}/stat") as f:
                return int(f.read().rsplit(")", 1)[1].split()[11]) > 0

        wait_until(spinning, timeout=10)
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(pid, 0)
