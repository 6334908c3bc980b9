from __future__ import annotations

from broker.metrics import CONTENT_TYPE, ROLE_LEADER, BrokerMetrics

METRIC_NAMES = (
    "broker_commit_latency_seconds",
    "broker_records_committed_total",
    "broker_journal_fsync_duration_seconds",
    "broker_journal_flush_entries",
    "broker_leader_changes_total",
    "broker_gateway_inflight_requests",
    "broker_gateway_requests_total",
    "atomix_role",
    "broker_transport_bad_frames_total",
)


def observe_all(m: BrokerMetrics) -> None:
    m.commit_latency.labels(partition="1").observe(0.003)
    m.records_committed.labels(partition="1").inc(5)
    m.fsync_duration.labels(partition="1").observe(0.0002)
    m.fsync_batch.labels(partition="1").observe(64)
    m.leader_changes.labels(partition="1").inc()
    m.inflight_requests.labels(partition="1").set(3)
    m.requests.labels(op="append", code="OK").inc()
    m.requests.labels(op="append", code="UNAVAILABLE").inc()
    m.role.labels(partition="1").set(ROLE_LEADER)
    m.bad_frames.labels(reason="oversized").inc()


def test_render_contains_every_metric_after_observing():
    m = BrokerMetrics()
    observe_all(m)
    text = m.render().decode()
    for name in METRIC_NAMES:
        assert f"\n{name}" in text, name
    assert 'broker_records_committed_total{partition="1"} 5.0' in text
    assert 'broker_gateway_requests_total{code="UNAVAILABLE",op="append"} 1.0' in text
    assert 'atomix_role{partition="1"} 3.0' in text
    assert 'broker_transport_bad_frames_total{reason="oversized"} 1.0' in text
    assert 'broker_journal_flush_entries_bucket{le="64.0",partition="1"} 1.0' in text


def test_bucket_ranges():
    m = BrokerMetrics()
    observe_all(m)
    text = m.render().decode()
    for bound in ("0.0005", "2.0"):
        assert f'broker_commit_latency_seconds_bucket{{le="{bound}",partition="1"}}' in text
    for bound in ("5e-05", "1.0"):
        assert f'broker_journal_fsync_duration_seconds_bucket{{le="{bound}",partition="1"}}' in text
    for bound in ("1.0", "4096.0"):
        assert f'broker_journal_flush_entries_bucket{{le="{bound}",partition="1"}}' in text


def test_instances_have_separate_registries():
    a, b = BrokerMetrics(), BrokerMetrics()
    assert a.registry is not b.registry
    a.records_committed.labels(partition="2").inc(7)
    assert 'broker_records_committed_total{partition="2"} 7.0' in a.render().decode()
    assert 'partition="2"' not in b.render().decode()


def test_content_type_is_prometheus_text():
    assert CONTENT_TYPE.startswith("text/plain")
    assert isinstance(BrokerMetrics().render(), bytes)


def test_leader_view_sets_and_removes_leader_only_series():
    m = BrokerMetrics()
    m.set_leader_view("1", 120, {"region0": 100, "region1": 120}, {1: 0, 2: 37})
    text = m.render().decode()
    assert 'zeebe_log_appender_last_committed_position{partition="1"} 120.0' in text
    assert 'zeebe_exporter_last_exported_position{exporter="region0",partition="1"} 100.0' in text
    assert 'broker_replication_lag_entries{follower="2",partition="1"} 37.0' in text
    # an exporter disabled, a follower removed: their series go
    m.set_leader_view("1", 130, {"region1": 130}, {1: 3})
    text = m.render().decode()
    assert 'exporter="region0"' not in text
    assert 'follower="2"' not in text
    assert 'broker_replication_lag_entries{follower="1",partition="1"} 3.0' in text
    # stepping down drops every leader-only series of the partition, and only those
    m.set_leader_view("2", 5, {}, {0: 1})
    m.clear_leader_view("1")
    m.clear_leader_view("1")  # twice is harmless
    text = m.render().decode()
    assert 'partition="1"' not in text
    assert 'zeebe_log_appender_last_committed_position{partition="2"} 5.0' in text
