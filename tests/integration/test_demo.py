"""`make demo` end to end: `python -m broker.demo` as a real subprocess.

It deploys 8 brokers with ansible-playbook (a private copy of inventories/local
with free ports, under this test's temporary directory), loses region1 under
a write load, fails over and back, and must find every acknowledged record,
stop every broker process it started and delete its working directory.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from broker.demo.cluster import broker_config_of, pid_alive

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RESULT = re.compile(
    r"^RESULT acknowledged=(?P<acked>\d+) found=(?P<found>\d+) lost=(?P<lost>\d+) "
    r"failover_rto=(?P<rto>\S+) failback=(?P<failback>\S+) outage_writes=(?P<outage>\d+) "
    r"placement=(?P<placement>\w+)$",
    re.M,
)
CLEANUP = re.compile(
    r"^CLEANUP pids=(?P<pids>\S+) alive=(?P<alive>\S+) workdir=(?P<workdir>\S+) "
    r"removed=(?P<removed>\w+)$",
    re.M,
)


def still_ours(pid: int, workdir: str) -> bool:
    """Is ``pid`` alive and still one of the demo's brokers (not a reused pid)?"""
    config = broker_config_of(pid)
    return pid_alive(pid) and config is not None and config.startswith(workdir)


@pytest.mark.timeout(900)
def test_make_demo_loses_no_acknowledged_record_and_leaves_nothing_behind(tmp_path):
    if not Path(sys.executable).with_name("ansible-playbook").exists():
        pytest.skip("ansible-playbook is not installed next to this Python (make setup)")
    workdir = tmp_path / "work"
    proc = subprocess.run(
        [sys.executable, "-m", "broker.demo", "--workdir", str(workdir)],
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "160", "PYTHONUNBUFFERED": "1"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=840,
        check=False,
    )
    out = proc.stdout
    shown = "\n".join(out.splitlines()[-120:])
    assert proc.returncode == 0, shown

    # the phases, in order, each with its duration
    numbers = re.findall(r"^phase (\d) done in [\d.]+s$", out, re.M)
    assert numbers == [str(n) for n in range(1, 9)], shown
    assert "PLAY RECAP" in out and "failed=0" in out, shown
    # TLS by default: the deploy made the CA, and every check and write spoke TLS
    assert "TLS on every channel; the deploy makes the cluster CA at" in out, shown

    # every acknowledged record found; final placement 2+2
    result = RESULT.search(out)
    assert result, shown
    acked, found, lost = (int(result[k]) for k in ("acked", "found", "lost"))
    assert acked == found > 0 and lost == 0, result[0]
    assert result["placement"] == "ok", result[0]
    assert float(result["rto"]) > 0 and float(result["failback"]) > 0, result[0]
    assert int(result["outage"]) > 0, result[0]  # writes went on during the outage
    assert "make demo: summary" in out

    # no broker it started survives; its working directory is gone
    cleanup = CLEANUP.search(out)
    assert cleanup, shown
    pids = [int(p) for p in cleanup["pids"].split(",")]
    assert len(pids) == 12, cleanup[0]  # 8 deployed + 4 started again by the failback
    started = {int(p) for p in re.findall(r"runs as pid (\d+)", out)}
    started |= {int(p) for p in re.findall(r"^started pid (\d+)", out, re.M)}
    assert started <= set(pids), (started, pids)
    demo_dir = cleanup["workdir"]
    assert Path(demo_dir).parent == workdir
    survivors = [p for p in pids if still_ours(p, demo_dir)]
    assert not survivors, f"broker processes left running: {survivors}"
    assert cleanup["alive"] == "none" and cleanup["removed"] == "True", cleanup[0]
    assert not Path(demo_dir).exists()
    assert list(workdir.iterdir()) == []
