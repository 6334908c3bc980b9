"""The bounded slice of the fault campaign that make test runs (make campaign runs long ones).

Each test runs the real command, ``python -m tests.campaign``, against real broker
processes: local ones for the process faults and a region loss with the operator's
failover and failback; the lab's namespaces (as root) for network cuts both ways and one
way, and a disk filled up on a tmpfs. A schedule passes only with 0 violations, 0 undecided
keys and 0 acknowledged writes lost, and only if the faults it names really happened.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from broker.lab.hosts import unavailable_reason

ROOT = Path(__file__).resolve().parents[2]
SUMMARY = re.compile(
    r"^campaign: (\d+) schedules, (\d+) operations, (\d+) violations, (\d+) undecided, "
    r"(\d+) lost$",
    re.M,
)


def campaign(*args: str, timeout: float = 420) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tests.campaign", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def assert_clean(res: subprocess.CompletedProcess, faults: tuple[str, ...]) -> None:
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    summary = SUMMARY.findall(res.stdout)
    assert summary, out
    _, operations, violations, undecided, lost = map(int, summary[-1])
    assert (violations, undecided, lost) == (0, 0, 0), out
    assert operations > 1000, out  # the clients really ran through the faults
    for fault in faults:
        assert re.search(rf"faults: .*\b{fault} [1-9]", res.stdout), f"no {fault} fault:\n{out}"
    print(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("mix", "seed", "seconds", "faults"),
    [
        ("processes", 1, 20, ("kill", "restart")),
        ("region", 2, 25, ("failover",)),
    ],
)
def test_a_local_schedule_is_linearizable_and_loses_nothing(
    mix, seed, seconds, faults, capsys, tmp_path
):
    res = campaign(
        "--where", "local", "--mix", mix, "--seed", str(seed), "--seconds", str(seconds),
        "--workdir", str(tmp_path), "--keep",
    )  # fmt: skip
    with capsys.disabled():
        assert_clean(res, faults)
    saved = tmp_path / f"schedule-{seed}"
    assert_the_saved_run_is_judged_on_real_data(saved)


def assert_the_saved_run_is_judged_on_real_data(saved: Path) -> None:
    """The run's files hold what the verdict rests on: re-judged as they are they pass;
    with one acknowledged record dropped from the final log and two records swapped on a
    replica's disk, the same command reports both."""
    assert campaign("--check", str(saved), timeout=120).returncode == 0
    final = json.loads((saved / "final.json").read_text())
    acked = {}
    for line in (saved / "history.jsonl").read_text().splitlines():
        doc = json.loads(line)
        if doc["type"] == "ok" and "position" in doc:
            acked[(doc["partition"], doc["position"])] = doc
    partition, records = next((p, r) for p, r in final["log"].items() if len(r) > 10)
    victim = next(  # not the first: a log starting later reads as compacted
        i for i, (pos, _) in enumerate(records) if i > 0 and (int(partition), pos) in acked
    )
    del records[victim]
    replica = next(iter(final["replicas"].values()))[partition]
    a, b = sorted(replica, key=int)[3:5]
    replica[a], replica[b] = replica[b], replica[a]
    (saved / "final.json").write_text(json.dumps(final))
    res = campaign("--check", str(saved), timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    assert re.search(r"[1-9]\d* lost$", res.stdout.strip()), res.stdout
    assert f"partition {partition}" in res.stdout and "replica broker-" in res.stdout, res.stdout


@pytest.mark.xdist_group("brk-lab")
def test_a_lab_schedule_with_cuts_one_way_cuts_and_a_full_disk(capsys):
    if reason := unavailable_reason():
        print(f"skipping the lab campaign: {reason}")
        pytest.skip(reason)
    # the command takes the lab tests' machine lock itself, and brings the lab up and down
    res = campaign("--where", "lab", "--mix", "cut,oneway,disk,pause", "--seed", "3",
                   "--seconds", "25")  # fmt: skip
    if res.returncode == 2 and "a lab is already up" in res.stderr:
        print(res.stderr)
        pytest.skip(res.stderr.strip())
    with capsys.disabled():
        assert_clean(res, ("cut", "oneway", "disk"))


def test_bad_options_exit_2_naming_them():
    res = campaign("--seconds", "0", "--mix", "kill,earthquake", "--threads", "1000", timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "--seconds must be at least 1" in res.stderr
    assert "--threads must be at most 64" in res.stderr
    assert "earthquake" in res.stderr
