import json

import pytest

from broker.topology import model as t

NOW = "2026-11-26T08:00:00Z"


def reference() -> t.ClusterConfig:
    """8 brokers, 8 partitions, RF 4, exporters region0 and region1."""
    return t.initial(8, 8, 4, ["region0", "region1"], NOW, cluster_id="c1")


def run_to_completion(cfg: t.ClusterConfig) -> t.ClusterConfig:
    while cfg.pending_change is not None:
        cfg = t.complete_next(cfg, NOW)
    return cfg


def test_initial_configuration_is_the_round_robin_layout():
    cfg = reference()
    assert cfg.version == 1 and cfg.active_members() == list(range(8))
    assert cfg.replicas(1) == {0: 4, 1: 3, 2: 2, 3: 1}
    assert cfg.replication_factor() == 4
    assert cfg.exporters() == {"region0": "ENABLED", "region1": "ENABLED"}


def test_api_document_has_zeebe_field_names_and_round_trips():
    cfg = reference()
    doc = cfg.to_api()
    broker = doc["brokers"][0]
    assert set(broker) == {"id", "state", "version", "lastUpdatedAt", "partitions"}
    part = broker["partitions"][0]
    assert part["config"]["exporting"]["exporters"][0] == {"id": "region0", "state": "ENABLED"}
    assert doc["lastChange"] is None and doc["pendingChange"] is None
    back = t.ClusterConfig.from_json(json.loads(json.dumps(cfg.to_json())))
    assert back == cfg


def test_force_remove_of_region1_shrinks_every_partition_to_region0():
    cfg = reference()
    ops = t.plan_force_remove(cfg, [0, 2, 4, 6])
    force = [op for op in ops if op.operation == t.PARTITION_FORCE_RECONFIGURE]
    assert len(force) == 8
    for op in force:
        assert set(op.brokers) == set(cfg.replicas(op.partition_id)) & {0, 2, 4, 6}
        assert op.broker_id == min(op.brokers)  # the lowest retained member runs it
    assert [op.broker_id for op in ops if op.operation == t.BROKER_FORCE_REMOVE] == [1, 3, 5, 7]
    # the force steps come first, the removals last
    assert ops.index(force[-1]) < min(
        ops.index(o) for o in ops if o.operation == t.BROKER_FORCE_REMOVE
    )
    done = run_to_completion(t.start_change(cfg, ops, NOW, force=True))
    assert done.active_members() == [0, 2, 4, 6]
    assert all(len(done.replicas(p)) == 2 for p in range(1, 9))
    assert done.last_change.status == "COMPLETED" and done.pending_change is None
    assert done.version > cfg.version


def test_force_remove_is_refused_when_a_partition_would_keep_no_replica():
    cfg = t.initial(4, 4, 2, [], NOW)  # RF 2: partition 1 lives on 0 and 1 only
    with pytest.raises(t.PlanError, match="partition 1 would keep no replica"):
        t.plan_force_remove(cfg, [2, 3])


def test_force_remove_refuses_unknown_brokers():
    with pytest.raises(t.PlanError, match="not members"):
        t.plan_force_remove(reference(), [0, 2, 9])


def test_scale_back_to_rf4_after_failover_joins_before_it_leaves():
    cfg = run_to_completion(
        t.start_change(reference(), t.plan_force_remove(reference(), [0, 2, 4, 6]), NOW)
    )
    ops = t.plan_scale(cfg, list(range(8)), 4)
    names = [op.operation for op in ops]
    assert names[:4] == [t.BROKER_ADD] * 4
    assert t.PARTITION_LEAVE not in names  # back to the original layout: nothing leaves
    joins = [op for op in ops if op.operation == t.PARTITION_JOIN]
    assert {op.broker_id for op in joins} == {1, 3, 5, 7}
    done = run_to_completion(t.start_change(cfg, ops, NOW))
    fresh = reference()
    for p in range(1, 9):
        assert done.replicas(p) == fresh.replicas(p)  # same members and priorities again


def test_scale_down_orders_joins_priorities_then_leaves_and_removes():
    cfg = t.initial(4, 4, 2, [], NOW)
    ops = t.plan_scale(cfg, [0, 1, 2], 2)
    names = [op.operation for op in ops]
    order = [t.PARTITION_JOIN, t.PARTITION_RECONFIGURE_PRIORITY, t.PARTITION_LEAVE]
    positions = [[i for i, n in enumerate(names) if n == kind] for kind in order]
    flat = [i for group in positions for i in group]
    assert flat == sorted(flat)
    assert names[-1] == t.BROKER_REMOVE and ops[-1].broker_id == 3
    done = run_to_completion(t.start_change(cfg, ops, NOW))
    assert done.active_members() == [0, 1, 2]
    assert all(len(done.replicas(p)) == 2 for p in range(1, 5))


@pytest.mark.parametrize("rf", [0, 9])
def test_scale_refuses_an_impossible_replication_factor(rf):
    with pytest.raises(t.PlanError, match="replication factor"):
        t.plan_scale(reference(), list(range(8)), rf)


def test_a_second_change_while_one_is_pending_is_refused():
    cfg = t.start_change(reference(), t.plan_scale(reference(), list(range(8)), 2), NOW)
    with pytest.raises(t.ChangeInProgress):
        t.start_change(cfg, [], NOW)


def test_an_empty_plan_completes_at_once():
    cfg = t.start_change(reference(), [], NOW)
    assert cfg.pending_change is None and cfg.last_change.status == "COMPLETED"


def test_exporter_disable_then_enable_with_initialize_from():
    cfg = reference()
    ops = t.plan_exporter(cfg, "region1", enable=False)
    assert len(ops) == 8 * 4 and {op.operation for op in ops} == {t.PARTITION_DISABLE_EXPORTER}
    off = run_to_completion(t.start_change(cfg, ops, NOW))
    assert off.exporters()["region1"] == "DISABLED"
    assert t.plan_exporter(off, "region1", enable=False) == []  # already done: idempotent
    on_ops = t.plan_exporter(off, "region1", enable=True, initialize_from="region0")
    assert all(op.initialize_from == "region0" for op in on_ops)
    on = run_to_completion(t.start_change(off, on_ops, NOW))
    assert on.exporters()["region1"] == "ENABLED"
    with pytest.raises(t.PlanError, match="no exporter"):
        t.plan_exporter(on, "nope", enable=True)


def test_pending_change_document_lists_completed_and_pending_operations():
    cfg = reference()
    started = t.start_change(cfg, t.plan_force_remove(cfg, [0, 2, 4, 6]), NOW, force=True)
    one = t.complete_next(started, NOW)
    doc = one.to_api()["pendingChange"]
    assert doc["status"] == "IN_PROGRESS"
    assert len(doc["completed"]) == 1 and doc["completed"][0]["operation"] == (
        "PARTITION_FORCE_RECONFIGURE"
    )
    assert len(doc["pending"]) == 8 + 4 - 1
    assert t.ClusterConfig.from_json(json.loads(json.dumps(one.to_json()))) == one
