"""Prometheus metrics of one broker.

Each BrokerMetrics owns its registry instead of using the process-global one,
so several brokers (tests, the simulator, a local cluster) can live in one
process without clashing metric names.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST

COMMIT_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0,
)  # fmt: skip
FSYNC_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
FLUSH_ENTRIES_BUCKETS = tuple(float(2**i) for i in range(13))  # 1 .. 4096

# Values of broker_partition_role.
ROLE_FOLLOWER = 0
ROLE_CANDIDATE = 1
ROLE_LEADER = 2


class BrokerMetrics:
    """The broker's metrics, registered in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._samplers: list[Callable[[], None]] = []
        r = self.registry
        self.commit_latency = Histogram(
            "broker_commit_latency_seconds",
            "Time from proposal to commit at the partition leader.",
            ["partition"],
            buckets=COMMIT_LATENCY_BUCKETS,
            registry=r,
        )
        self.records_committed = Counter(
            "broker_records_committed_total",
            "Records committed.",
            ["partition"],
            registry=r,
        )
        self.fsync_duration = Histogram(
            "broker_journal_fsync_duration_seconds",
            "Duration of one journal fsync.",
            ["partition"],
            buckets=FSYNC_BUCKETS,
            registry=r,
        )
        self.fsync_batch = Histogram(
            "broker_journal_flush_entries",
            "Journal entries made durable by one group-commit flush.",
            ["partition"],
            buckets=FLUSH_ENTRIES_BUCKETS,
            registry=r,
        )
        self.leader_changes = Counter(
            "broker_leader_changes_total",
            "Leader changes seen by this broker.",
            ["partition"],
            registry=r,
        )
        self.inflight_requests = Gauge(
            "broker_gateway_inflight_requests",
            "Client requests in flight at the gateway.",
            ["partition"],
            registry=r,
        )
        self.requests = Counter(
            "broker_gateway_requests_total",
            "Client requests answered by the gateway, by operation and result code "
            '(labels from fixed sets: an unknown op counts as "unknown", an unknown '
            'code as "UNKNOWN").',
            ["op", "code"],
            registry=r,
        )
        self.role = Gauge(
            "broker_partition_role",
            "Raft role of this broker per partition: 0 follower, 1 candidate, 2 leader.",
            ["partition"],
            registry=r,
        )
        self.tls_certificate_expiry = Gauge(
            "broker_tls_certificate_expiry_timestamp_seconds",
            "Not-after of this broker's TLS certificate, as a Unix time (0 without TLS).",
            registry=r,
        )
        self.disk_free = Gauge(
            "broker_disk_free_bytes",
            "Free space of the data directory's file system, as the broker may use it.",
            registry=r,
        )
        self.disk_processing_paused = Gauge(
            "broker_disk_processing_paused",
            "1 while free disk space is below data.freeSpace.processing (writes refused).",
            registry=r,
        )
        self.disk_replication_paused = Gauge(
            "broker_disk_replication_paused",
            "1 while free disk space is below data.freeSpace.replication "
            "(replicated entries refused).",
            registry=r,
        )
        self.partition_healthy = Gauge(
            "broker_partition_healthy",
            "1 when this broker's replica of the partition is healthy, else 0.",
            ["partition"],
            registry=r,
        )
        self.partition_restarts = Counter(
            "broker_partition_restarts_total",
            "Times the partition was rebuilt from disk after an error (disk full, I/O error).",
            ["partition"],
            registry=r,
        )
        self.inbox_dropped = Counter(
            "broker_partition_inbox_dropped_total",
            "Raft messages dropped and proposals refused because the partition's inbox was full.",
            ["partition", "kind"],
            registry=r,
        )
        self.log_first_position = Gauge(
            "broker_log_first_position",
            "The first record position this replica can still read (compaction deletes "
            "the records below it).",
            ["partition"],
            registry=r,
        )
        self.log_last_position = Gauge(
            "broker_log_last_position",
            "The last record position this replica has applied.",
            ["partition"],
            registry=r,
        )
        self.log_segments = Gauge(
            "broker_log_segments",
            "Journal segment files this replica keeps.",
            ["partition"],
            registry=r,
        )
        self.log_bytes = Gauge(
            "broker_log_bytes",
            "Bytes of journal segments this replica keeps on disk.",
            ["partition"],
            registry=r,
        )
        self.bad_frames = Counter(
            "broker_transport_bad_frames_total",
            "Malformed or oversized frames that closed a connection.",
            ["reason"],
            registry=r,
        )

    def sample_on_render(self, sample: Callable[[], None]) -> None:
        """Call ``sample()`` before each render: gauges that would otherwise change on
        every request (in-flight counts) are set from their owner's state instead."""
        self._samplers.append(sample)

    def render(self) -> bytes:
        """All metrics in the Prometheus text format (see CONTENT_TYPE)."""
        for sample in self._samplers:
            sample()
        return generate_latest(self.registry)
