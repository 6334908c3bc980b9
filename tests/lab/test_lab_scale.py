"""playbooks/scale.yml over real SSH on the lab: 4 -> 8 -> 4 hosts under a write load.

The lab has 8 hosts (4 per region, 8 partitions, RF 4). The cluster is first deployed
from an inventory that lists only ordinals 0 and 1 of each region, as an operator's
inventory did before the new hosts were racked; scale.yml with the whole inventory then
installs the four new hosts and moves the partitions onto them; scale.yml with
broker_scale_size=4 moves them back and stops the four. A steady write load runs
through all of it and every acknowledged record is read back.

Minutes on a busy machine: it runs with ``BROKER_LONG_TESTS=1`` (make test-long); the
same playbook runs in make test on the local inventory (tests/ansible/test_local_cluster.py).
"""

from __future__ import annotations

import os
import time

import pytest
import yaml

from broker.lab import Lab, unavailable_reason
from broker.ops.load import WriteLoad, read_back
from tests.ansible.conftest import ansible_playbook
from tests.labutil import longest_stall

REASON = unavailable_reason()
if REASON:
    print(f"tests/lab/test_lab_scale.py skipped: {REASON}")
    pytest.skip(REASON, allow_module_level=True)

pytestmark = [pytest.mark.xdist_group("brk-lab"), pytest.mark.slow]

FULL = os.environ.get("BROKER_LONG_TESTS") == "1"
PARTITIONS = 8
GATEWAY_PORT = 26500
LOAD_RATE = 150  # records/s
LOAD_MAX_SECONDS = 900  # the load stops by itself after this


def first_hosts(lab: Lab, per_region: int) -> os.PathLike:
    """The lab's inventory with only the first ``per_region`` hosts of each region."""
    doc = yaml.safe_load(lab.inventory.read_text())
    for region in doc["all"]["children"]["brokers"]["children"].values():
        region["hosts"] = {
            name: host
            for name, host in region["hosts"].items()
            if host["broker_ordinal"] < per_region
        }
    path = lab.inventory.with_name("first-hosts.yml")
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.timeout(2400)
@pytest.mark.skipif(not FULL, reason="scale 4 -> 8 -> 4 on the lab: BROKER_LONG_TESTS=1")
def test_scale_out_to_8_hosts_and_back_to_4_under_load(big_lab, broker_sources, tmp_path, capsys):
    lab = big_lab
    build = [
        "-e", f"broker_project_dir={broker_sources}",
        "-e", f"broker_wheelhouse_dir={tmp_path / 'wheels'}",
    ]  # fmt: skip
    small = first_hosts(lab, 2)
    run = ansible_playbook(small, "playbooks/deploy.yml", *build)
    assert run.returncode == 0, str(run)
    assert f"placement ok (runtime): {PARTITIONS} partitions" in run.output, str(run)

    first = [h for h in lab.hosts if h.ordinal < 2]
    gateways = ",".join(f"{h.address}:{GATEWAY_PORT}" for h in first)
    load = WriteLoad(gateways, prefix="lab-scale", rate=LOAD_RATE, max_seconds=LOAD_MAX_SECONDS)
    times, stalls = {}, {}
    load.start()
    try:
        load.wait_for(lambda: len(load.acks) >= 50, 30, "acknowledgements before scaling")
        for name, extra in (("4 -> 8", []), ("8 -> 4", ["-e", "broker_scale_size=4"])):
            start = time.monotonic()
            run = ansible_playbook(lab.inventory, "playbooks/scale.yml", *build, *extra)
            end = time.monotonic()
            assert run.returncode == 0, str(run)
            assert f"placement ok (runtime): {PARTITIONS} partitions" in run.output, str(run)
            assert f"{name} brokers" in run.output, str(run)
            times[name] = end - start
            stalls[name] = longest_stall(load.snapshot(), start, end)
        load.wait_for(
            lambda: load.acked_between(end, time.monotonic()) >= 50,
            30,
            "acknowledgements after scaling",
        )
    finally:
        load.stop()
    assert load.crash is None, f"the write load crashed: {load.crash!r}"
    acks = load.snapshot()
    back = read_back(gateways, acks, PARTITIONS, "lab-scale")
    assert not back.lost, f"{len(back.lost)} acknowledged records lost, e.g. {back.lost[:3]}"
    with capsys.disabled():
        print(
            "\nlab scale: "
            + ", ".join(
                f"{name} {times[name]:.1f}s (longest stall {stalls[name]:.1f}s)" for name in times
            )
            + f"; load: {len(acks)} acknowledged, {load.failed} failed "
            f"{dict(load.errors)}, {len(back.lost)} lost"
        )
