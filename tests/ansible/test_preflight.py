"""deploy.yml refuses a layout that lets one region commit alone, before installing anything."""

from __future__ import annotations

import pytest

from .conftest import ansible_playbook, make_local_inventory

pytestmark = pytest.mark.slow

# 0-3 in region0 and 4-7 in region1: the contiguous layout DESIGN section 2 warns about
CONTIGUOUS = {
    **{f"brk-r0-h{i}": i for i in range(4)},
    **{f"brk-r1-h{i}": 4 + i for i in range(4)},
}


def assert_nothing_installed(inv, run):
    assert not inv.var.exists() or not any(inv.var.iterdir()), (
        f"preflight failed but {inv.var} has {sorted(p.name for p in inv.var.iterdir())}\n{run}"
    )
    wheelhouse = inv.path.parent / "wheels"
    assert not wheelhouse.exists(), f"the wheel was built before preflight passed\n{run}"
    assert not inv.pids(), f"brokers were started: {inv.pids()}\n{run}"


def test_preflight_refuses_contiguous_ids_before_installing(tmp_path, broker_sources):
    inv = make_local_inventory(tmp_path, broker_sources, node_ids=CONTIGUOUS)

    run = ansible_playbook(inv.path, "playbooks/deploy.yml")

    assert run.returncode != 0, f"deploy accepted a contiguous layout\n{run}"
    assert "Preflight refused the inventory layout" in run.output, str(run)
    out = run.flat()
    # the explicit ids break the parity rule, host by host
    for host, node_id in CONTIGUOUS.items():
        region_id, ordinal = int(host[5]), int(host[-1])  # brk-r<region>-h<ordinal>
        if node_id != ordinal * 2 + region_id:
            assert f"{host}: broker_node_id {node_id} is not broker_ordinal" in out, str(run)
    assert "PARITY_MISMATCH: parity rule broken by brokers 1,3,4,6" in out, str(run)
    # and the partitions that would sit (a quorum of them) in one region are named
    for partition, where in {
        1: "region0 alone holds 4 of 4 replicas",
        2: "region0 alone holds 3 of 4 replicas",
        4: "region1 alone holds 3 of 4 replicas",
        5: "region1 alone holds 4 of 4 replicas",
        6: "region1 alone holds 3 of 4 replicas",
        8: "region0 alone holds 3 of 4 replicas",
    }.items():
        assert f"QUORUM_IN_ONE_REGION: partition {partition}: {where}" in out, str(run)
    for partition in (3, 7):  # these two happen to straddle both regions
        assert f"partition {partition}:" not in out, str(run)
    assert "(region0: -; region1: 4,5,6,7)" in out, str(run)
    assert_nothing_installed(inv, run)


def test_preflight_refuses_odd_replication_factor_before_installing(tmp_path, broker_sources):
    inv = make_local_inventory(
        tmp_path, broker_sources, cluster_vars={"broker_replication_factor": 3}
    )

    run = ansible_playbook(inv.path, "playbooks/deploy.yml")

    assert run.returncode != 0, f"deploy accepted replication factor 3\n{run}"
    out = run.flat()
    assert "RF_ODD: replicationFactor 3 is odd" in out, str(run)
    # parity ids are fine here; with 3 replicas one region always holds 2 = the quorum
    assert "NODE_ID_MISMATCH" not in out and "PARITY_MISMATCH" not in out, str(run)
    for partition in range(1, 9):
        assert f"QUORUM_IN_ONE_REGION: partition {partition}: " in out, str(run)
    assert "enough for the quorum of 2 (region0: 0,2; region1: 1)" in out, str(run)
    assert_nothing_installed(inv, run)
