"""The drill, the rolling restart and the network isolation, against real brokers.

The drill is the whole failover story under a write load: every record the
cluster acknowledged must be read back at its position afterwards.
"""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from broker.ops.drill import print_drill_figures, run_drill
from broker.ops.isolation import run_heal, run_isolate
from broker.ops.load import WriteLoad, read_back
from broker.ops.rolling import run_rolling_restart
from broker.ops.view import replica_sets
from tests.ops.test_procedures import explain, statuses

DRILL_STEPS = [
    "verify_placement",
    "start_write_load",
    "lose_region",
    "fail_over",
    "write_during_outage",
    "fail_back",
    "check_no_data_lost",
]


@pytest.mark.parametrize("region", ["region0", "region1"])
def test_a_drill_loses_no_acknowledged_record_for_either_region(dual, region):
    before = {b.node_id: dual.c.procs[b.node_id].pid for b in dual.cluster.in_region(region)}
    results, figures = run_drill(
        dual.cluster, region, control=dual.control, yes=True, rate=150, preload_mb=2
    )
    assert [r.name for r in results] == DRILL_STEPS, explain(results)
    assert all(r.status == "done" for r in results), explain(results)

    assert figures.acknowledged > 0 and figures.found == figures.acknowledged
    assert figures.lost == 0 and figures.check_error is None
    assert figures.failover_rto_seconds is not None and figures.failover_rto_seconds > 0
    assert "grew the log by 2 MB" in results[4].did, explain(results)
    # the rebuilt region received at least the grown log on each of its 2 brokers' disks
    assert figures.failback_seconds and figures.catch_up_bytes > 2 * 2_000_000
    assert [s["status"] for s in figures.nested["failover"]].count("failed") == 0
    # the region came back as new processes on empty disks, at full RF, 2+2
    for node, pid in before.items():
        assert dual.c.procs[node].pid != pid
    assert all(r == {0, 1, 2, 3} for r in replica_sets(dual.api_doc()).values())

    out = io.StringIO()
    print_drill_figures(figures, Console(file=out, width=200))
    rows = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in out.getvalue().splitlines()
        if line.count("│") == 3
    }
    assert rows["records found afterwards"] == str(figures.found)
    assert rows["acknowledged records LOST"] == "0"


def test_a_drill_is_destructive_and_needs_a_confirmation(dual):
    results, figures = run_drill(dual.cluster, "region1", control=dual.control)
    assert statuses(results)["lose_region"] == "failed", explain(results)
    assert "did not confirm" in results[-1].saw
    assert dual.c.running() == [0, 1, 2, 3]  # nothing killed
    assert figures.lost == 0 and figures.acknowledged == figures.found


def test_a_rolling_restart_keeps_every_write_and_restarts_each_broker_once(dual):
    pids = {n: p.pid for n, p in dual.c.procs.items()}
    load = WriteLoad(dual.c.gateways(), prefix="rolling", rate=150)
    load.start()
    try:
        results = run_rolling_restart(dual.cluster, control=dual.control, yes=True)
    finally:
        load.stop()
    names = ["verify_placement", *(f"restart_broker_{n}" for n in (0, 2, 1, 3))]
    assert [r.name for r in results] == names, explain(results)
    assert all(r.status == "done" for r in results), explain(results)
    assert all(dual.c.procs[n].pid != pid for n, pid in pids.items())
    rb = read_back(dual.c.gateways(), load.snapshot(), dual.c.partitions, load.prefix)
    assert not rb.lost and rb.found == rb.acknowledged > 0


def test_a_rolling_restart_asks_first_and_restarts_nothing_unasked(dual):
    pids = {n: p.pid for n, p in dual.c.procs.items()}
    results = run_rolling_restart(dual.cluster, control=dual.control, confirm=lambda q: False)
    assert [r.status for r in results] == ["done", "failed"], explain(results)
    assert {n: p.pid for n, p in dual.c.procs.items()} == pids


def test_isolating_a_region_that_shares_the_hosts_address_is_refused(dual):
    results = run_isolate(dual.cluster, "region1", yes=True)
    assert results[0].status == "failed"
    assert "shares addresses 127.0.0.1" in results[0].saw and "stop-region" in results[0].saw


def test_healing_regions_that_share_an_address_has_nothing_to_do(dual):
    (result,) = run_heal(dual.cluster, "region1")
    assert result.status == "skipped" and "never cut" in result.saw
