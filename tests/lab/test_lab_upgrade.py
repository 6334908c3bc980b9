"""playbooks/upgrade.yml over real SSH on the 8-host lab, under a write load: upgrade to
a build that differs in version, then roll back.

The lab has 8 hosts (4 per region, 8 partitions, RF 4). The wheelhouse holds the
checkout's build (0.1.0) and a copy of the sources bumped to 0.1.1. Deploy 0.1.0, then
upgrade.yml -e broker_version=0.1.1 (stage on every host, check-data, then one broker
at a time, region by region, gated on ready + every partition led + replicas caught
up), then upgrade.yml -e broker_version=0.1.0 (the rollback: the release is still on
the hosts). Every acknowledged record is read back; the figures are printed. Last, an
upgrade to 0.2.0, a copy whose data format is 2, and a rollback to 0.1.0 that the
pre-check refuses before any broker is stopped.

Minutes on a busy machine: it runs with ``BROKER_LONG_TESTS=1`` (make test-long); the
same playbook runs in make test on the local inventory (tests/ansible/test_upgrade.py).
"""

from __future__ import annotations

import json
import os
import time
import urllib.request

import pytest

from broker.lab import Lab, unavailable_reason
from broker.ops.load import WriteLoad, read_back
from tests.ansible.conftest import ansible_playbook
from tests.ansible.test_upgrade import build_copy
from tests.labutil import longest_stall

REASON = unavailable_reason()
if REASON:
    print(f"tests/lab/test_lab_upgrade.py skipped: {REASON}")
    pytest.skip(REASON, allow_module_level=True)

pytestmark = [pytest.mark.xdist_group("brk-lab"), pytest.mark.slow]

FULL = os.environ.get("BROKER_LONG_TESTS") == "1"
PARTITIONS = 8
GATEWAY_PORT = 26500
MANAGEMENT_PORT = 9600
LOAD_RATE = 150  # records/s
LOAD_MAX_SECONDS = 1200  # the load stops by itself after this


def versions(lab: Lab) -> set[str]:
    host = lab.hosts[0]
    url = f"http://{host.address}:{MANAGEMENT_PORT}/v2/topology"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return {b["version"] for b in json.loads(resp.read())["brokers"]}


@pytest.mark.timeout(3000)
@pytest.mark.skipif(not FULL, reason="upgrade and rollback on the 8-host lab: BROKER_LONG_TESTS=1")
def test_upgrade_and_rollback_of_the_8_host_lab_under_load(
    big_lab, broker_sources, tmp_path, capsys
):
    lab = big_lab
    wheels = tmp_path / "wheels"
    build_copy(broker_sources, "0.1.1", 1, tmp_path, wheels)
    build_copy(broker_sources, "0.2.0", 2, tmp_path, wheels)  # a newer data format
    build = [
        "-e", f"broker_project_dir={broker_sources}",
        "-e", f"broker_wheelhouse_dir={wheels}",
        "-e", "broker_snapshot_period=60m",  # no compaction: every record reads back from 1
    ]  # fmt: skip
    run = ansible_playbook(lab.inventory, "playbooks/deploy.yml", *build)
    assert run.returncode == 0, str(run)
    assert versions(lab) == {"0.1.0"}

    gateways = ",".join(f"{h.address}:{GATEWAY_PORT}" for h in lab.hosts)
    load = WriteLoad(gateways, prefix="lab-upgrade", rate=LOAD_RATE, max_seconds=LOAD_MAX_SECONDS)
    times, stalls = {}, {}
    load.start()
    try:
        load.wait_for(lambda: len(load.acks) >= 50, 30, "acknowledgements before upgrading")
        for name, version in (("upgrade to 0.1.1", "0.1.1"), ("rollback to 0.1.0", "0.1.0")):
            start = time.monotonic()
            run = ansible_playbook(
                lab.inventory, "playbooks/upgrade.yml", *build, "-e", f"broker_version={version}"
            )
            end = time.monotonic()
            assert run.returncode == 0, str(run)
            assert versions(lab) == {version}, str(run)
            times[name] = end - start
            stalls[name] = longest_stall(load.snapshot(), start, end)
        load.wait_for(
            lambda: load.acked_between(end, time.monotonic()) >= 50,
            30,
            "acknowledgements after the rollback",
        )
    finally:
        load.stop()
    assert load.crash is None, f"the write load crashed: {load.crash!r}"
    acks = load.snapshot()
    back = read_back(gateways, acks, PARTITIONS, "lab-upgrade")
    assert not back.lost, f"{len(back.lost)} acknowledged records lost, e.g. {back.lost[:3]}"

    # a build with a newer data format: the upgrade works, a rollback across it is refused
    # by the pre-check before any broker is stopped
    run = ansible_playbook(
        lab.inventory, "playbooks/upgrade.yml", *build, "-e", "broker_version=0.2.0"
    )
    assert run.returncode == 0, str(run)
    times["upgrade to 0.2.0 (data format 2)"] = run.seconds
    assert versions(lab) == {"0.2.0"}
    run = ansible_playbook(
        lab.inventory, "playbooks/upgrade.yml", *build, "-e", "broker_version=0.1.0"
    )
    assert run.returncode != 0, str(run)
    assert "so no broker was stopped or switched" in run.flat(), str(run)
    assert "it is in format 2, written by broker 0.2.0" in run.flat(), str(run)
    assert versions(lab) == {"0.2.0"}
    with capsys.disabled():
        print(
            "\nlab upgrade (8 hosts): "
            + ", ".join(
                f"{name} {times[name]:.1f}s (longest stall {stalls[name]:.1f}s)"
                if name in stalls
                else f"{name} {times[name]:.1f}s"
                for name in times
            )
            + f"; load: {len(acks)} acknowledged, {load.failed} failed "
            f"{dict(load.errors)}, {len(back.lost)} lost"
        )
