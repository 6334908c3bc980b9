"""The playbooks over real SSH against a fresh lab of 4 hosts (2 per region, 4 partitions,
RF 4), the way an operator runs them with the inventory `lab up` writes:

deploy from scratch; an unchanged re-run reports changed=0 on every host and restarts
nothing; a rolling restart (playbooks/restart.yml) restarts every broker, region by region,
while a steady write load keeps being acknowledged, and afterwards every acknowledged record
reads back at its position; verify in check mode passes and changes nothing.

One test walks the lifecycle, because every step needs the cluster the previous one left.
The wheel is built from a snapshot of the sources, as tests/ansible's broker_sources does (an
edit of broker/ during the test cannot make the re-run reinstall), into a wheelhouse of the
test's own. The module's lab (tests/lab/conftest.py) is torn down whatever happens, which also
stops every broker in it.
"""

from __future__ import annotations

import contextlib
import re
import time

import pytest

from broker.lab import Lab, network, unavailable_reason
from broker.ops.load import WriteLoad, read_back
from tests.ansible.conftest import Run, ansible_playbook
from tests.labutil import longest_stall

REASON = unavailable_reason()
if REASON:
    print(f"tests/lab/test_lab_deploy.py skipped: {REASON}")
    pytest.skip(REASON, allow_module_level=True)

# the lab is machine-wide: with `pytest -n --dist loadgroup` all of it runs on one worker
pytestmark = [pytest.mark.xdist_group("brk-lab"), pytest.mark.slow]

PARTITIONS = 4
GATEWAY_PORT = 26500
LOAD_RATE = 150  # records/s
LOAD_MAX_SECONDS = 300  # the load stops by itself after this
STALL_LIMIT = 15.0  # longest stretch without a new acknowledgement during the restart


def broker_pids(lab: Lab) -> dict[str, int]:
    """host -> pid of its broker (pid file in its data directory), only if it is alive."""
    out = {}
    for h in lab.hosts:
        with contextlib.suppress(OSError, ValueError):
            pid = int((lab.host_dir(h) / "var-lib-broker" / "broker.pid").read_text())
            if pid in network.netns_pids(h.name):
                out[h.name] = pid
    return out


def check_recap(run: Run, lab: Lab) -> None:
    assert run.returncode == 0, str(run)
    assert set(run.recap) == {h.name for h in lab.hosts}, str(run)
    assert all(h["failed"] == 0 and h["unreachable"] == 0 for h in run.recap.values()), str(run)


@pytest.mark.timeout(1500)
def test_deploy_rerun_rolling_restart_under_load_and_verify(lab, broker_sources, tmp_path, capsys):
    times = {}
    build = [
        "-e", f"broker_project_dir={broker_sources}",
        "-e", f"broker_wheelhouse_dir={tmp_path / 'wheels'}",
    ]  # fmt: skip
    names = [h.name for h in lab.hosts]

    # --- deploy from scratch, over SSH -------------------------------------------------
    run = ansible_playbook(lab.inventory, "playbooks/deploy.yml", *build)
    times["deploy"] = run.seconds
    check_recap(run, lab)
    assert f"placement ok (layout): {PARTITIONS} partitions" in run.output, str(run)
    assert f"placement ok (runtime): {PARTITIONS} partitions" in run.output, str(run)
    pids = broker_pids(lab)
    assert sorted(pids) == sorted(names), f"brokers running: {pids}\n{run}"

    # --- an unchanged re-run changes nothing and restarts nothing ------------------------
    run = ansible_playbook(lab.inventory, "playbooks/deploy.yml", *build)
    times["re-run"] = run.seconds
    check_recap(run, lab)
    assert {host: r["changed"] for host, r in run.recap.items()} == dict.fromkeys(names, 0), str(
        run
    )
    assert broker_pids(lab) == pids, "the re-run restarted brokers"

    # --- a rolling restart under a steady write load -------------------------------------
    gateways = ",".join(f"{h.address}:{GATEWAY_PORT}" for h in lab.hosts)
    load = WriteLoad(gateways, prefix="lab-restart", rate=LOAD_RATE, max_seconds=LOAD_MAX_SECONDS)
    load.start()
    try:
        load.wait_for(lambda: len(load.acks) >= 50, 30, "acknowledgements before the restart")
        start = time.monotonic()
        run = ansible_playbook(lab.inventory, "playbooks/restart.yml")
        end = time.monotonic()
        times["rolling restart"] = run.seconds
        load.wait_for(
            lambda: load.acked_between(end, time.monotonic()) >= 50,
            30,
            "acknowledgements after the restart",
        )
    finally:
        load.stop()
    assert load.crash is None, f"the write load crashed: {load.crash!r}"
    check_recap(run, lab)
    order = re.findall(
        r"^included: \S+/restart_one\.yml for \S+ => \(item=(\S+)\)$", run.output, re.M
    )
    assert order == [f"brk-r{r}-h{o}" for r in (0, 1) for o in (0, 1)], (
        f"not one at a time, region by region: {order}\n{run}"
    )
    restarted = broker_pids(lab)
    assert sorted(restarted) == sorted(names), f"brokers running: {restarted}"
    assert all(restarted[h] != pids[h] for h in names), "a broker was not restarted"
    acks = load.snapshot()
    during = load.acked_between(start, end)
    stall = longest_stall(acks, start, end)
    assert during > 0, "no write was acknowledged during the rolling restart"
    assert stall < STALL_LIMIT, f"no acknowledgement for {stall:.1f}s during the restart"
    back = read_back(gateways, acks, PARTITIONS, "lab-restart")
    assert not back.lost, f"{len(back.lost)} acknowledged records lost, e.g. {back.lost[:3]}"
    assert back.found == back.acknowledged == len(acks) > 0

    # --- verify, in check mode: passes and changes nothing -------------------------------
    run = ansible_playbook(lab.inventory, "playbooks/verify.yml", "--check")
    times["verify --check"] = run.seconds
    check_recap(run, lab)
    assert run.changed == 0, str(run)
    assert f"placement ok (runtime): {PARTITIONS} partitions" in run.output, str(run)

    with capsys.disabled():
        print(
            "\nlab deploy (4 hosts): "
            + ", ".join(f"{step} {seconds:.1f}s" for step, seconds in times.items())
            + f"; load: {len(acks)} acknowledged ({during} during the restart, "
            f"longest stall {stall:.1f}s), {load.failed} failed {dict(load.errors)}, 0 lost"
        )
