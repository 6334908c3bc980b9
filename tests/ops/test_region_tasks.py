"""fab stop-region, start-region, rolling-restart and drill: --dry-run changes nothing
and says what would run where; every run, dry or real, leaves an audit record.

Against the 4 real brokers of the ``dual`` fixture. The tasks run in-process (the
bodies of the fabfile's tasks) with the audit directory in tmp; the real stops and starts
go through the fixture's PidControl (its brokers are not daemons with pid files),
patched in where the fabfile makes its InventoryControl. One dry run goes through
the real ``fab`` command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from invoke.exceptions import Exit

import fabfile
from broker.ops.regions import how
from tests.ops.test_drill_and_rolling import DRILL_STEPS

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture
def audit(tmp_path, monkeypatch) -> Path:
    directory = tmp_path / "audit"
    monkeypatch.setattr(fabfile, "AUDIT_DIR", directory)
    return directory


def records(directory: Path) -> list[dict]:
    found = [json.loads(p.read_text()) for p in directory.glob("*.json")]
    return sorted(found, key=lambda r: r["startedAt"])


def pids(dual) -> dict[int, int]:
    return {n: p.pid for n, p in dual.c.procs.items() if p.poll() is None}


def test_dry_runs_change_nothing_and_say_what_would_run(dual, audit):
    before = pids(dual)
    assert len(before) == 4
    inventory = str(dual.inventory)

    fabfile.stop_region.body(None, "region1", dry_run=True, inventory=inventory)
    fabfile.start_region.body(None, "region1", dry_run=True, inventory=inventory)
    fabfile.rolling_restart.body(None, dry_run=True, inventory=inventory)
    fabfile.drill.body(None, "region1", dry_run=True, rate=50, inventory=inventory)

    assert pids(dual) == before, "a dry run stopped or restarted a broker"
    done = {r["procedure"]: r for r in records(audit)}
    assert set(done) == {"stop-region", "start-region", "rolling-restart", "drill"}, done
    for record in done.values():
        assert record["options"]["dryRun"] is True
        assert record["outcome"] == "completed", record
        assert all(s["status"] in ("skipped", "done") for s in record["steps"]), record
        acted = [s["name"] for s in record["steps"] if s["acted"]]
        assert not acted, f"{record['procedure']}: steps {acted} acted in a dry run"
    names = sorted(p.name for p in audit.iterdir())
    assert all(n.endswith("-dry-run.json") for n in names), names

    region1 = dual.cluster.in_region("region1")
    stop = done["stop-region"]
    assert [s["name"] for s in stop["steps"]] == [f"stop_broker_{b.node_id}" for b in region1]
    for s, b in zip(stop["steps"], region1, strict=True):
        assert s["status"] == "skipped"
        assert s["saw"] == f"{b.label()} answers"
        assert s["did"] == f"dry run: would stop it with {how(b, 'stop')}"
        assert f"`broker stop --config {b.config_path}` on this machine" in s["did"]
    start = done["start-region"]
    assert all(s["did"] == "nothing to start" for s in start["steps"]), start  # all answer

    rolling = done["rolling-restart"]
    assert rolling["region"] == "all"
    order = [s["name"] for s in rolling["steps"]]
    assert order == ["verify_placement"] + [f"restart_broker_{i}" for i in (0, 2, 1, 3)]
    assert rolling["steps"][0]["status"] == "done"  # the read-only check does run

    drill = done["drill"]
    assert [s["name"] for s in drill["steps"]] == DRILL_STEPS
    assert drill["steps"][0]["status"] == "done"
    lose = next(s for s in drill["steps"] if s["name"] == "lose_region")
    assert "would kill brokers 1,3" in lose["did"] and "stop --kill" in lose["did"], lose
    back = next(s for s in drill["steps"] if s["name"] == "fail_back")
    sinks = ", ".join(f"{e} {d}" for e, d in sorted(dual.sinks.items()))
    assert back["saw"] == f"export sinks: {sinks}", back


def test_the_fab_command_takes_dry_run_for_stop_region(dual, tmp_path):
    before = pids(dual)
    fab = str(Path(sys.executable).with_name("fab"))
    proc = subprocess.run(
        [
            fab,
            "stop-region",
            "--region",
            "region0",
            "--dry-run",
            "--inventory",
            str(dual.inventory),
        ],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", "BROKER_OPS_AUDIT_DIR": str(tmp_path / "audit")},
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "stop-region of region0 (DRY RUN: nothing was changed): completed" in proc.stdout
    assert pids(dual) == before
    (record,) = records(tmp_path / "audit")
    assert record["procedure"] == "stop-region" and record["options"]["dryRun"] is True


def test_stop_and_start_region_write_audit_records(dual, audit, monkeypatch):
    monkeypatch.setattr(fabfile, "InventoryControl", lambda: dual.control)
    region1 = [b.node_id for b in dual.cluster.in_region("region1")]
    inventory = str(dual.inventory)

    with pytest.raises(Exit):  # no --yes and no terminal: refused, and recorded
        fabfile.stop_region.body(None, "region1", inventory=inventory)
    assert all(dual.c.procs[n].poll() is None for n in region1)

    fabfile.stop_region.body(None, "region1", yes=True, inventory=inventory)
    assert not any(n in dual.c.procs and dual.c.procs[n].poll() is None for n in region1)
    fabfile.start_region.body(None, "region1", yes=True, inventory=inventory)
    assert all(dual.c.procs[n].poll() is None for n in region1)

    refused, stopped, started = records(audit)
    assert refused["outcome"] == "failed at stop_broker_1", refused
    assert "the operator did not confirm" in refused["steps"][0]["saw"]
    for record, verb in ((stopped, "stop"), (started, "start")):
        assert record["procedure"] == f"{verb}-region" and record["region"] == "region1"
        assert record["outcome"] == "completed", record
        assert record["options"] == {"dryRun": False, "yes": True}
        assert [s["status"] for s in record["steps"]] == ["done", "done"], record
        assert all(s["acted"] for s in record["steps"]), record
    assert "no longer answers" in stopped["steps"][0]["did"]
    assert "answers" in started["steps"][1]["did"]
