"""Who is in the cluster, where to reach them, and what they host.

Static membership: peers are found from ``initialContactPoints`` (a client
handshake tells a contact point's node id) and then from each other, since
every broker broadcasts, every ``gossipInterval``, its own description (region,
addresses, partition roles and terms) together with the addresses of the
members it knows. A member not heard from for ``failureTimeout`` is considered
down, or after 8 missed broadcasts if that is sooner (without SWIM's
indirect probes there is nothing to wait for). This is the seam the SWIM
membership replaces: the rest of the broker only uses ``members``,
``alive``, ``leader_of`` and ``on_gossip``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from broker.transport import FramedClient, HandshakeRejected

log = logging.getLogger(__name__)


@dataclass
class Member:
    node_id: int
    region: str = ""
    host: str = ""
    internal_port: int = 0
    gateway_port: int = 0
    management_port: int = 0
    partitions: dict[int, dict] = field(default_factory=dict)  # id -> {role, term, leader, ...}
    last_seen: float = 0.0

    def describe(self) -> dict:
        return {
            "id": self.node_id,
            "region": self.region,
            "host": self.host,
            "internal": self.internal_port,
            "gateway": self.gateway_port,
            "management": self.management_port,
            "partitions": {str(k): v for k, v in self.partitions.items()},
        }


class PeerDirectory:
    def __init__(
        self,
        me: Member,
        contact_points: list[str],
        transport,
        cluster_name: str,
        local_partitions: Callable[[], dict[int, dict]],
        interval: float = 0.25,
        failure_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.me = me
        self.transport = transport
        self.cluster_name = cluster_name
        self.local_partitions = local_partitions
        self.interval = interval
        self.failure_timeout = min(failure_timeout, max(1.0, 8 * interval))
        self.clock = clock
        self.members: dict[int, Member] = {me.node_id: me}
        self._unresolved = [cp for cp in contact_points if cp]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"peers-{me.node_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    # --- queries ---------------------------------------------------------------

    def alive(self, node_id: int) -> bool:
        if node_id == self.me.node_id:
            return True
        m = self.members.get(node_id)
        return m is not None and self.clock() - m.last_seen < self.failure_timeout

    def leader_of(self, partition_id: int) -> int | None:
        """The live member claiming leadership of the partition in the highest term."""
        best, best_term = None, -1
        for m in list(self.members.values()):
            info = m.partitions.get(partition_id)
            if (
                info
                and info.get("role") == "leader"
                and info["term"] > best_term
                and self.alive(m.node_id)
            ):
                best, best_term = m.node_id, info["term"]
        return best

    # --- gossip ------------------------------------------------------------------

    def on_gossip(self, src: int, payload: dict) -> None:
        try:
            d = payload["me"]
            member = Member(
                node_id=int(d["id"]),
                region=str(d["region"]),
                host=str(d["host"]),
                internal_port=int(d["internal"]),
                gateway_port=int(d["gateway"]),
                management_port=int(d["management"]),
                partitions={int(k): v for k, v in d["partitions"].items()},
                last_seen=self.clock(),
            )
            known = {int(k): (str(h), int(p)) for k, (h, p) in payload["known"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning("node %d: malformed gossip from %d: %s", self.me.node_id, src, exc)
            return
        if member.node_id != src:
            log.warning("node %d: gossip from %d about %d", self.me.node_id, src, member.node_id)
            return
        with self._lock:
            new = src not in self.members
            self.members[src] = member
        if new:
            log.info("node %d: met node %d (%s)", self.me.node_id, src, member.region)
            self.transport.set_peer(src, member.host, member.internal_port)
        for node_id, (host, port) in known.items():
            if node_id != self.me.node_id and node_id not in self.members:
                with self._lock:
                    self.members.setdefault(node_id, Member(node_id, host=host, internal_port=port))
                self.transport.set_peer(node_id, host, port)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._resolve_contact_points()
                self._broadcast()
            except Exception:
                log.exception("node %d: membership round failed", self.me.node_id)

    def _resolve_contact_points(self) -> None:
        for cp in list(self._unresolved):
            host, _, port = cp.rpartition(":")
            try:
                with FramedClient(host, int(port), self.cluster_name, timeout=0.5) as c:
                    node_id = c.node_id
            except HandshakeRejected as exc:
                log.error("contact point %s refused us: %s", cp, exc)
                continue
            except (OSError, ValueError):
                continue  # not up yet; try again next round
            self._unresolved.remove(cp)
            if node_id != self.me.node_id and node_id not in self.members:
                with self._lock:
                    self.members[node_id] = Member(node_id, host=host, internal_port=int(port))
                self.transport.set_peer(node_id, host, int(port))

    def _broadcast(self) -> None:
        self.me.partitions = self.local_partitions()
        self.me.last_seen = self.clock()
        with self._lock:
            known = {
                str(m.node_id): [m.host, m.internal_port]
                for m in self.members.values()
                if m.host and m.internal_port
            }
        payload = {"me": self.me.describe(), "known": known}
        for node_id in list(self.members):
            if node_id != self.me.node_id:
                self.transport.send_gossip(node_id, payload)
