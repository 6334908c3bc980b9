"""One broker: transports, membership, the partitions it hosts, gateway and management.

Start order matters for operators reading the log: listeners first (so peers
and clients can connect as soon as we announce ourselves), then the Raft
groups, then membership broadcasts, then the management API, whose
readiness turns UP once the broker holds the cluster's configuration and every
hosted partition runs.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from datetime import UTC, datetime

from broker import __version__, dataformat
from broker.backup import api as backup_api
from broker.backup.store import open_store
from broker.backup.taker import BackupTaker
from broker.config import BrokerConfig, ConfigError, dual_region_warnings
from broker.diskspace import DiskSpaceMonitor
from broker.fsutil import make_private_dirs
from broker.metrics import BrokerMetrics
from broker.node import topology_api
from broker.node.exporting import ExporterRunner
from broker.node.gateway import Gateway
from broker.node.link import InternalLink
from broker.node.management import ROUTES, ManagementServer
from broker.node.membership import SwimMembership
from broker.node.partitions import PartitionRunner
from broker.node.topology import TopologyManager, now_iso
from broker.peers import Member
from broker.raft.core import RaftConfig
from broker.raft.messages import Configuration
from broker.tls import BrokerTls, TlsSetupError, broker_contexts, client_context
from broker.topology import model as tmodel
from broker.transport import Transport

log = logging.getLogger(__name__)

# Inbound connections open at once per port (each costs a reader thread): peers
# and tools on the internal port; clients on the gateway, whose idle ones are
# closed after CLIENT_IDLE_TIMEOUT (the Python client reconnects when it needs to).
INTERNAL_MAX_CONNECTIONS = 256
GATEWAY_MAX_CONNECTIONS = 1024
CLIENT_IDLE_TIMEOUT = 600.0
CERT_WARN_DAYS = 30  # a certificate closer to its end than this is logged at start


def raft_settings(cfg: BrokerConfig) -> tuple[RaftConfig, float]:
    """Map the time-based config onto the core's ticks: one tick per heartbeat."""
    r = cfg.cluster.raft
    election_ticks = max(2, round(r.election_timeout / r.heartbeat_interval))
    core = RaftConfig(
        election_ticks=election_ticks,
        heartbeat_ticks=1,
        priority_election=r.enable_priority_election,
        snapshot_chunk_size=min(1 << 20, cfg.network.max_frame_size // 2),
    )
    return core, r.heartbeat_interval


def _role(info: dict, alive: bool, newest_leader_term: int) -> str:
    """A member's role as far as we know it. A leadership claim older than another
    leader's term is superseded (its broker is gone or has not heard yet)."""
    role = info.get("role", "inactive") if alive else "inactive"
    if role == "leader" and info.get("term", 0) < newest_leader_term:
        return "inactive"
    return role


# Camunda's partition states (``TopologyResponse`` 8.9 and later) for ours in the
# cluster configuration; the API also has "learner" and "recovering", which we never are.
_PARTITION_STATES = {"ACTIVE": "active", "JOINING": "joining", "LEAVING": "leaving"}


def _partition_state(config: tmodel.ClusterConfig | None, node_id: int, pid: int) -> str:
    """The state of broker ``node_id``'s replica of ``pid`` in the cluster configuration,
    as Camunda's topology names it: the operation a pending change is carrying out on
    that replica (a join or a leave) first, else the configured state; "unknown" when the
    configuration does not list the replica (or is not known yet)."""
    if config is None:
        return "unknown"
    change = config.pending_change
    if change is not None and change.pending:
        op = change.pending[0]  # the one in progress; the rest wait for it
        if op.broker_id == node_id and op.partition_id == pid:
            if op.operation == tmodel.PARTITION_JOIN:
                return "joining"
            if op.operation == tmodel.PARTITION_LEAVE:
                return "leaving"
    member = config.members.get(node_id)
    part = member.partitions.get(pid) if member is not None and member.state != "LEFT" else None
    return _PARTITION_STATES.get(part.state, "unknown") if part is not None else "unknown"


def _last_completed_change_id(config: tmodel.ClusterConfig | None) -> str:
    """Camunda's ``lastCompletedChangeId``: the id of the last completed topology change
    as a string, "-1" when none has completed (the value of Camunda's schema example)."""
    last = config.last_change if config is not None else None
    return str(last.id) if last is not None and last.status == "COMPLETED" else "-1"


class Broker:
    def __init__(self, cfg: BrokerConfig):
        self.cfg = cfg
        self.node_id = cfg.cluster.node_id
        self.metrics = BrokerMetrics()
        self.runners: dict[int, PartitionRunner] = {}
        self.started = threading.Event()
        self.internal: Transport | None = None
        # set during start(); the transports start first and may hear from peers before
        self.peers: SwimMembership | None = None
        self.topology_manager: TopologyManager | None = None
        self.gateway_transport: Transport | None = None
        # data.backup: the store, this broker's partition backups, the coordinator
        store = open_store(cfg.data.backup)
        self.backup_taker = BackupTaker(store, self.node_id) if store is not None else None
        self.backups: backup_api.Backups | None = None
        self.management = None
        # With TLS: how this broker calls another's management API (forwarding a
        # topology change to its coordinator), showing its own certificate.
        self.management_client_ssl: ssl.SSLContext | None = None
        self.disk: DiskSpaceMonitor | None = None

    # --- lifecycle -------------------------------------------------------------

    def _tls_contexts(self) -> BrokerTls | None:
        t = self.cfg.security.tls
        if not t.enabled:
            return None
        try:
            return broker_contexts(t.certificate, t.private_key, t.ca, t.client_auth)
        except TlsSetupError as e:
            raise ConfigError(f"config error: {e}", key=e.key) from None

    def start(self) -> None:
        cfg, c = self.cfg, self.cfg.cluster
        tls = self._tls_contexts()  # before anything binds or writes: a bad file stops us
        if tls is not None:
            t = cfg.security.tls
            from broker import certs  # cryptography: loaded only with TLS on

            expiry = certs.not_after(t.certificate)
            self.metrics.tls_certificate_expiry.set(expiry.timestamp())
            days = (expiry - datetime.now(UTC)).total_seconds() / 86400
            if days < CERT_WARN_DAYS:
                log.warning(
                    "the TLS certificate %s expires in %.0f days (%s): rotate it "
                    "(playbooks/rotate-certs.yml)",
                    t.certificate,
                    days,
                    expiry.isoformat(),
                )
            # Peers are known by address, and the CA vouches for the node.
            self.management_client_ssl = client_context(
                t.ca, t.certificate, t.private_key, check_hostname=False
            )
        for warning in dual_region_warnings(cfg):
            log.warning("%s", warning)
        make_private_dirs(cfg.data.directory)
        dataformat.ensure(cfg.data.directory)  # refuses newer data before reading any
        free = cfg.data.free_space
        self.disk = DiskSpaceMonitor(
            cfg.data.directory, free.processing, free.replication, metrics=self.metrics
        )
        self.disk.start()
        host = cfg.network.host
        self.internal = Transport(
            self.node_id,
            c.cluster_name,
            host,
            cfg.network.internal.port,
            on_raft=self._on_raft,
            on_gossip=self._on_gossip,
            max_frame_size=cfg.network.max_frame_size,
            ssl_context=tls and tls.internal_server,
            client_ssl_context=tls and tls.internal_client,
            authenticate_peers=tls is not None,
            max_connections=INTERNAL_MAX_CONNECTIONS,
            on_peer_lost=lambda node_id: self.link.lost(node_id),
            on_bad_frame=self._bad_frame,
        )
        self.link = InternalLink(self.node_id, self.internal.send_gossip)
        self.gateway = Gateway(
            self.node_id,
            c.partitions_count,
            self.runners,
            lambda pid: self.peers.leader_of(pid) if self.peers else None,
            self.link,
            self.topology,
            cfg.network.gateway.request_timeout,
            cfg.network.gateway.max_inflight,
            self.metrics,
            max_frame_size=cfg.network.max_frame_size,
        )
        # forwarded requests and control commands from other brokers
        self.link.serve = lambda conn, req_id, body: self.gateway.handle(
            conn, req_id, body, internal=True
        )
        self.gateway_transport = Transport(
            self.node_id,
            c.cluster_name,
            host,
            cfg.network.gateway.port,
            on_raft=self._refuse_raft,
            on_request=self.gateway.handle,
            max_frame_size=cfg.network.max_frame_size,
            ssl_context=tls and tls.gateway,
            max_connections=GATEWAY_MAX_CONNECTIONS,
            idle_timeout=CLIENT_IDLE_TIMEOUT,
            on_bad_frame=self._bad_frame,
        )
        self.internal.start()
        self.gateway_transport.start()

        if self.backup_taker is not None:
            self.backups = backup_api.Backups(
                self.backup_taker.store,
                self.gateway.control,
                c.partitions_count,
                lambda: self.topology_manager.config.to_json(),
            )
        self.management = ManagementServer(
            self,
            cfg.management.host,
            cfg.management.port,
            cfg.management.token,
            routes=ROUTES + topology_api.ROUTES + backup_api.ROUTES,
            ssl_context=tls and tls.management,
        )
        self.management.start()
        advertised = cfg.network.effective_advertised_host
        m = c.membership
        self.peers = SwimMembership(
            Member(
                self.node_id,
                region=c.region,
                host=advertised,
                internal_port=self.internal.port,
                gateway_port=self.gateway_transport.port,
                management_port=self.management.port,
                version=__version__,
            ),
            list(c.initial_contact_points),
            self.internal,
            c.cluster_name,
            self._local_partitions,
            interval=m.gossip_interval,
            failure_timeout=m.failure_timeout,
            gossip_fanout=m.gossip_fanout,
            probe_interval=m.probe_interval,
            probe_timeout=m.probe_timeout,
            suspect_probes=m.suspect_probes,
            sync_interval=m.sync_interval,
        )
        self.topology_manager = TopologyManager(
            self, self._static_topology, initializer=self.node_id == 0
        )
        self.topology_manager.start()  # starts the partitions this broker hosts
        self.exporters = ExporterRunner(
            self.node_id, cfg.exporters, self.runners, lambda: self.topology_manager.config
        )
        self.exporters.start()
        self.peers.start()
        self.started.set()
        log.info(
            "broker %d (%s) started: gateway %s:%d, internal %s:%d, management %d, partitions %s",
            self.node_id,
            c.region,
            host,
            self.gateway_transport.port,
            host,
            self.internal.port,
            self.management.port,
            sorted(self.runners),
        )

    def stop(self) -> None:
        log.info("broker %d stopping", self.node_id)
        if self.management is not None:
            self.management.stop()
        if self.gateway_transport is not None:
            self.gateway_transport.stop()
        if self.started.is_set():
            self.exporters.stop()
            self.topology_manager.stop()
            self.peers.stop()
            self.gateway.stop()
        for runner in self.runners.values():
            runner.stop()
        if self.internal is not None:
            self.internal.stop()
        if self.disk is not None:
            self.disk.stop()
        if self.backup_taker is not None:
            self.backup_taker.stop()  # a copy under way is finished, not cut

    # --- plumbing -------------------------------------------------------------------

    def _bad_frame(self, reason: str) -> None:
        self.metrics.bad_frames.labels(reason).inc()

    def _static_topology(self) -> tmodel.ClusterConfig:
        c = self.cfg.cluster
        return tmodel.initial(
            c.cluster_size,
            c.partitions_count,
            c.replication_factor,
            sorted(self.cfg.exporters),
            now_iso(),
            cluster_id=c.cluster_name,
        )

    def ensure_partition(self, pid: int, replicas: dict[int, int]) -> None:
        """Host partition ``pid`` (its Raft group starts from ``replicas`` when new)."""
        if pid in self.runners:
            return
        cfg = self.cfg
        core, tick = raft_settings(cfg)
        runner = PartitionRunner(
            pid,
            self.node_id,
            os.path.join(cfg.data.directory, "partitions", str(pid)),
            Configuration.of(replicas, replicas),
            core,
            tick,
            self.internal.send_raft,
            metrics=self.metrics,
            flush=cfg.cluster.raft.flush.enabled,
            flush_delay=cfg.cluster.raft.flush.delay_time,
            disk=self.disk,
            segment_size=cfg.data.log_segment_size,
            snapshot_entries=cfg.data.snapshot_entries,
            snapshot_period=cfg.data.snapshot_period,
            on_checkpoint=self.backup_taker and self.backup_taker.checkpoint,
        )
        runner.log_holders = lambda: self._exporters_holding_log(pid)
        self.runners[pid] = runner
        runner.start()

    def _exporters_holding_log(self, pid: int) -> list[str]:
        """The configured exporters enabled for this broker's replica of ``pid``: the
        log is kept until they have acknowledged it (a disabled one holds nothing)."""
        manager = getattr(self, "topology_manager", None)
        me = manager.config.members.get(self.node_id) if manager else None
        part = me.partitions.get(pid) if me else None
        if part is None:  # not known yet: keep the log for every configured exporter
            return list(self.cfg.exporters)
        return [ex for ex in self.cfg.exporters if part.exporters.get(ex) == tmodel.ENABLED]

    def reconfigure_partition(self, pid: int, replicas: dict[int, int]) -> bool:
        """Ask the partition's leader to make ``replicas`` its voters (one change at a
        time); True once that configuration is committed."""
        body = {
            "op": "_reconfigure",
            "partition": pid,
            "replicas": {str(b): p for b, p in replicas.items()},
        }
        try:
            answer = self.gateway.control(body, timeout=2.0).result(3.0)
        except Exception:
            return False
        return bool(answer.get("ok") and answer.get("committed"))

    def init_exporter(self, pid: int, exporter: str, source: str) -> bool:
        """Commit, on the partition's leader, that ``exporter`` starts at ``source``'s position."""
        body = {"op": "_export_init", "partition": pid, "exporter": exporter, "from": source}
        try:
            answer = self.gateway.control(body, timeout=2.0).result(3.0)
        except Exception:
            return False
        return bool(answer.get("ok"))

    def rebalance(self) -> None:
        """Every partition's leader steps down unless it is the primary (async)."""
        for pid in range(1, self.cfg.cluster.partitions_count + 1):
            self.gateway.control({"op": "_rebalance", "partition": pid}, timeout=2.0)

    @property
    def data_directory(self) -> str:
        return self.cfg.data.directory

    def send_gossip(self, node_id: int, payload) -> bool:
        return self.internal.send_gossip(node_id, payload)

    def _on_gossip(self, src: int, payload) -> None:
        if self.link.on_message(src, payload):
            return
        if self.peers is None or self.topology_manager is None:
            return  # still starting: SWIM's periodic sync brings it again
        if isinstance(payload, dict) and "topology" in payload:
            self.topology_manager.on_gossip(src, payload["topology"])
        else:
            self.peers.on_gossip(src, payload)

    def _on_raft(self, src: int, items) -> None:
        for pid, msg in items:
            runner = self.runners.get(pid)
            if runner is not None:
                runner.deliver(msg)

    def _refuse_raft(self, src: int, items) -> None:
        log.warning("node %d sent Raft traffic to the gateway port; ignored", src)

    def _local_partitions(self) -> dict[int, dict]:
        out = {}
        for pid, runner in self.runners.items():
            s = runner.status
            out[pid] = {
                "role": s.get("role", "inactive"),
                "term": s.get("term", 0),
                "leader": s.get("leader"),
                "health": s.get("health", "unhealthy"),
                "voters": s.get("voters", []),
            }
        return out

    # --- the management source ------------------------------------------------------

    def health(self) -> dict:
        """Readiness and liveness stay UP while a partition is unhealthy (a full disk:
        the partition recovers by itself, a restart would not help); the overall
        status (``/actuator/health``) is DOWN until every partition is healthy."""
        started = self.started.is_set()
        # a new broker is not ready until a peer gave it the cluster's configuration
        configured = started and self.topology_manager.config.initialized
        runners = list(self.runners.items())
        dead = [pid for pid, r in runners if r.status.get("health") == "dead" or r.died]
        unhealthy = {
            str(pid): r.status.get("unhealthyReason", "unhealthy")
            for pid, r in runners
            if r.status.get("health") == "unhealthy"
        }
        details = {"partitions": sorted(self.runners), "dead": dead, "unhealthy": unhealthy}
        if started and not configured:
            details["configuration"] = "waiting for the cluster configuration from a peer"
        if self.disk is not None:
            details["diskSpace"] = self.disk.status()
        return {
            "startup": started,
            "ready": configured and not dead,
            "live": not dead,
            "healthy": not dead and not unhealthy,
            "details": details,
        }

    def topology(self) -> dict:
        c = self.cfg.cluster
        brokers = []
        members = dict(self.peers.members) if self.started.is_set() else {}
        members[self.node_id] = members.get(self.node_id) or Member(self.node_id)
        # Partition roles are believed only from members of the cluster's topology
        # (or contact points): a stranger in the gossip is listed without any.
        trusted = self.peers.trusted() if self.started.is_set() else None

        def claims(node_id: int, m: Member) -> dict:
            if node_id == self.node_id:
                return self._local_partitions()
            return m.partitions if trusted is None or node_id in trusted else {}

        newest: dict[int, int] = {}  # partition -> highest term claimed by a leader
        for node_id, m in members.items():
            parts = claims(node_id, m)
            for pid, info in parts.items():
                if info.get("role") == "leader":
                    newest[pid] = max(newest.get(pid, 0), info.get("term", 0))
        live = getattr(self, "topology_manager", None)  # the configuration, once running
        config = live.config if live is not None else None
        for node_id in sorted(members):
            m = members[node_id]
            alive = self.peers.alive(node_id) if self.started.is_set() else node_id == self.node_id
            parts = claims(node_id, m)
            brokers.append(
                {
                    "nodeId": node_id,
                    # Camunda's zone-unaware form: the node id as a string.
                    "brokerId": str(node_id),
                    "host": m.host,
                    "port": m.gateway_port,
                    # as gossiped ("" from a broker too old to say)
                    "version": __version__ if node_id == self.node_id else m.version,
                    "region": m.region,
                    "alive": alive,
                    "partitions": [
                        {
                            "partitionId": pid,
                            "role": _role(info, alive, newest.get(pid, 0)),
                            "health": info.get("health", "unhealthy") if alive else "dead",
                            "state": _partition_state(config, node_id, pid),
                            "term": info.get("term", 0),
                        }
                        for pid, info in sorted(parts.items())
                    ],
                }
            )
        if config is not None:
            cluster_size = len(config.active_members())
            replication_factor = config.replication_factor()
        else:
            cluster_size, replication_factor = c.cluster_size, c.replication_factor
        return {
            "brokers": brokers,
            # The id /actuator/cluster reports; null until the configuration is loaded.
            "clusterId": config.cluster_id if config is not None else None,
            "clusterSize": cluster_size,
            "partitionsCount": c.partitions_count,
            "replicationFactor": replication_factor,
            "gatewayVersion": __version__,
            "lastCompletedChangeId": _last_completed_change_id(config),
        }

    def partitions(self) -> dict:
        out = {}
        for pid, r in sorted(self.runners.items()):
            s = r.status
            out[str(pid)] = {
                "role": s.get("role", "inactive").upper(),
                "term": s.get("term"),
                "leader": s.get("leader"),
                "processedPosition": s.get("lastPosition"),
                "processedIndex": s.get("appliedIndex"),
                "commitIndex": s.get("commit"),
                "exportedPosition": min(s.get("exported", {}).values(), default=None),
                "exporters": s.get("exported", {}),
                "snapshotId": f"{s.get('snapshotIndex')}" if s.get("snapshotIndex") else None,
                "voters": s.get("voters"),
                "health": s.get("health"),
                "unhealthyReason": s.get("unhealthyReason"),
                "restarts": s.get("restarts", 0),
            }
        return out
