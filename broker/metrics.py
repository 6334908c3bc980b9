"""Prometheus metrics of one broker.

Each BrokerMetrics owns its registry instead of using the process-global one,
so several brokers (tests, the simulator, a local cluster) can live in one
process without clashing metric names.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress

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

# Values of atomix_role (Zeebe's encoding, so that Camunda's dashboards read it:
# leaders are ``atomix_role == 3``).
ROLE_INACTIVE = 0  # the partition is stopped after an error
ROLE_FOLLOWER = 1
ROLE_CANDIDATE = 2
ROLE_LEADER = 3


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
            "atomix_role",
            "Raft role of this broker per partition (Zeebe's metric): 0 inactive, "
            "1 follower, 2 candidate, 3 leader.",
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
            "zeebe_health",
            "Health of this broker's replica of the partition (Zeebe's metric): "
            "1 healthy, 0 unhealthy.",
            ["partition"],
            registry=r,
        )
        self.disk_processing_watermark = Gauge(
            "broker_disk_processing_watermark_bytes",
            "data.freeSpace.processing: below this much free space writes are refused.",
            registry=r,
        )
        self.disk_replication_watermark = Gauge(
            "broker_disk_replication_watermark_bytes",
            "data.freeSpace.replication: below this much free space replicated entries "
            "are refused.",
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
        # Set by the partition leader only, on its ticks (never per record); a replica
        # that is not the leader has none of these series.
        self.last_committed_position = Gauge(
            "zeebe_log_appender_last_committed_position",
            "The last committed record position of the partition, at its leader (Zeebe's metric).",
            ["partition"],
            registry=r,
        )
        self.exporter_position = Gauge(
            "zeebe_exporter_last_exported_position",
            "The last record position the exporter acknowledged, replicated, at the "
            "partition leader, for each exporter enabled there (Zeebe's metric).",
            ["exporter", "partition"],
            registry=r,
        )
        self.replication_lag = Gauge(
            "broker_replication_lag_entries",
            "Log entries the follower lacks (the leader's last index minus the follower's "
            "acknowledged match index), at the partition leader.",
            ["partition", "follower"],
            registry=r,
        )
        self._leader_series: dict[str, tuple[set[str], set[str]]] = {}
        self.bad_frames = Counter(
            "broker_transport_bad_frames_total",
            "Malformed or oversized frames that closed a connection.",
            ["reason"],
            registry=r,
        )

    def set_leader_view(
        self, partition: str, committed: int, exported: dict[str, int], lag: dict[int, int]
    ) -> None:
        """At the partition leader: its last committed position, the acknowledged position
        of each enabled exporter, the lag of each follower. Series of exporters and
        followers no longer given are removed."""
        old_exporters, old_followers = self._leader_series.get(partition, (set(), set()))
        exporters, followers = set(exported), {str(f) for f in lag}
        self.last_committed_position.labels(partition).set(committed)
        for ex, position in exported.items():
            self.exporter_position.labels(ex, partition).set(position)
        for follower, entries in lag.items():
            self.replication_lag.labels(partition, str(follower)).set(entries)
        self._remove(old_exporters - exporters, old_followers - followers, partition)
        self._leader_series[partition] = (exporters, followers)

    def clear_leader_view(self, partition: str) -> None:
        """This replica is not (or no longer) the leader: drop its leader-only series."""
        if partition not in self._leader_series:
            return
        exporters, followers = self._leader_series.pop(partition)
        self._remove(exporters, followers, partition)
        with suppress(KeyError):
            self.last_committed_position.remove(partition)

    def _remove(self, exporters, followers, partition: str) -> None:
        for ex in exporters:
            with suppress(KeyError):
                self.exporter_position.remove(ex, partition)
        for follower in followers:
            with suppress(KeyError):
                self.replication_lag.remove(partition, follower)

    def sample_on_render(self, sample: Callable[[], None]) -> None:
        """Call ``sample()`` before each render: gauges that would otherwise change on
        every request (in-flight counts) are set from their owner's state instead."""
        self._samplers.append(sample)

    def render(self) -> bytes:
        """All metrics in the Prometheus text format (see CONTENT_TYPE)."""
        for sample in self._samplers:
            sample()
        return generate_latest(self.registry)
