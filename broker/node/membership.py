"""SwimMembership: the threaded runner around the SWIM core.

The broker's membership (constructor and query
surface): one thread ticks the core with ``time.monotonic()`` at its next
deadline (at least every 50 ms, which is also how often the local
partitions are re-read into our metadata), transport reader threads feed it
GOSSIP payloads, and whatever it produces goes out with
``transport.send_gossip``. Another thread resolves ``initialContactPoints``
(a client handshake tells a contact point's node id), so that a contact
point that is not up yet never stalls the ticks.

What gossip may and may not decide:

* ``alive`` and ``states`` are SWIM's view, gossip included: good enough for
  routing, never for destroying anything. ``reachable(node_id)`` answers
  from a direct probe only (an ack to our own ping, sent by that broker over
  its own connection): what a guard such as the refusal to force-remove
  reachable brokers must use.
* ``leader_of`` believes a leadership claim only from a member of the
  cluster: a broker of the committed topology (not LEFT; the topology
  manager installs ``topology_members``) or one of the configured contact
  points. Without a topology (unit tests) every member is trusted. A claim
  is also ignored when its term is below the term this broker's own replica
  of the partition knows.
* Records dropped by the core's checks are logged at WARNING with the sender.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable

import msgpack

from broker.membership.swim import DEAD, META, MalformedMessage, Swim, SwimConfig
from broker.peers import Member
from broker.transport import HandshakeRejected
from broker.wire import ProtocolError

log = logging.getLogger(__name__)
MAX_VERSION_CHARS = 64

MAX_WAIT = 0.05  # longest sleep between ticks
PROBE_TIMEOUT = 1.0  # how long ``reachable`` waits for the ack of its direct ping


class SwimMembership:
    def __init__(
        self,
        me: Member,
        contact_points: list[str],
        transport,
        cluster_name: str,
        local_partitions: Callable[[], dict[int, dict]],
        interval: float = 0.25,
        failure_timeout: float = 10.0,
        *,
        gossip_fanout: int = 2,
        probe_interval: float = 1.0,
        probe_timeout: float = 0.1,
        suspect_probes: int = 3,
        sync_interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ):
        """``interval`` is the gossip interval."""
        self.me = me
        self.transport = transport
        self.cluster_name = cluster_name
        self.local_partitions = local_partitions
        self.clock = clock
        self.config = SwimConfig(
            gossip_interval=interval,
            gossip_fanout=gossip_fanout,
            probe_interval=probe_interval,
            probe_timeout=probe_timeout,
            suspect_probes=suspect_probes,
            failure_timeout=failure_timeout,
            sync_interval=sync_interval,
        )
        meta = _normalized(me.describe())
        self._core = Swim(me.node_id, meta, self.config, rng or random.Random(), clock())
        # Snapshots for lock-free readers (the gateway asks leader_of per
        # request): replaced, never mutated, after each step of the core.
        self.members: dict[int, Member] = {me.node_id: me}
        self._states: dict[int, str] = {me.node_id: "ALIVE"}
        self._addresses: dict[int, tuple[str, int]] = {}  # as given to the transport
        self._unresolved = [cp for cp in contact_points if cp]
        self._malformed: dict[int, str] = {}  # node id -> what was last wrong with its gossip
        self._contact_ids: set[int] = set()  # node ids of resolved contact points
        # Set by the topology manager: the broker ids of the committed topology.
        self.topology_members: Callable[[], Iterable[int]] | None = None
        self._lock = threading.Lock()
        self._acked = threading.Condition(self._lock)  # a direct ack arrived
        self._stop = threading.Event()
        name = f"swim-{me.node_id}"
        self._threads = [
            threading.Thread(target=self._run, name=name, daemon=True),
            threading.Thread(target=self._resolve_loop, name=f"{name}-join", daemon=True),
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join(5)

    # --- queries ------------------------------------------------------------

    def states(self) -> dict[int, str]:
        """node id -> "ALIVE" | "SUSPECT" | "DEAD", for every member we know."""
        return dict(self._states)

    def alive(self, node_id: int) -> bool:
        """Not (yet) declared DEAD: a SUSPECT member still counts, as in SWIM."""
        if node_id == self.me.node_id:
            return True
        state = self._states.get(node_id)
        return state is not None and state != DEAD

    def reachable(self, node_id: int, timeout: float = PROBE_TIMEOUT) -> bool:
        """Whether ``node_id`` answers a direct probe now: an ack to our own ping,
        from that broker itself, within the last probe period or to a ping sent
        now (waits up to ``timeout``). Gossip about it counts for nothing."""
        return node_id in self.reachable_among([node_id], timeout)

    def reachable_among(self, node_ids: Iterable[int], timeout: float = PROBE_TIMEOUT) -> set[int]:
        """Those of ``node_ids`` that answer a direct probe (as :meth:`reachable`), all
        probed at once: lost brokers cost one ``timeout`` together, not one each."""
        wanted = set(node_ids)
        found = wanted & {self.me.node_id}
        with self._lock:
            now = self.clock()
            for n in wanted - found:
                last = self._core.last_direct_ack(n)
                if last is not None and now - last <= self.config.probe_interval:
                    found.add(n)
            pending = wanted - found
            if not pending:
                return found
            self._core.tick(now)
            for n in sorted(pending):
                self._core.probe_direct(n, timeout)
            out = self._collect()
        self._send(out)
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for n in list(pending):
                    last = self._core.last_direct_ack(n)
                    if last is not None and last >= now:
                        found.add(n)
                        pending.discard(n)
                remaining = deadline - time.monotonic()
                if not pending or remaining <= 0:
                    return found
                self._acked.wait(remaining)

    def trusted(self) -> set[int] | None:
        """Who may claim partition leadership (None: anyone, when no topology is known)."""
        if self.topology_members is None:
            return None
        try:
            members = set(self.topology_members())
        except Exception:
            log.exception("node %d: reading the topology failed", self.me.node_id)
            members = set()
        return members | self._contact_ids | {self.me.node_id}

    def leader_of(self, partition_id: int) -> int | None:
        """The live trusted member claiming leadership of the partition in the
        highest term, that term not below our own replica's (see the module doc)."""
        trusted = self.trusted()
        mine = self.me.partitions.get(partition_id)
        best, best_term = None, -1
        if mine:
            best_term = _term(mine) - 1  # a claim must be at least our term
        for m in self.members.values():
            info = m.partitions.get(partition_id)
            if (
                info
                and info.get("role") == "leader"
                and _term(info) > best_term
                and (trusted is None or m.node_id in trusted)
                and self.alive(m.node_id)
            ):
                best, best_term = m.node_id, _term(info)
        return best

    # --- inputs -------------------------------------------------------------

    def on_gossip(self, src: int, payload) -> None:
        """Transport callback (any reader thread); bad payloads are logged and dropped."""
        m = self.members.get(src)
        if m is not None:
            m.last_seen = self.clock()
        with self._lock:
            try:
                self._core.tick(self.clock())
                self._core.receive(src, payload)
            except MalformedMessage as exc:
                # A peer of another version would repeat the same mistake
                # every round: say it once.
                level = logging.DEBUG if self._malformed.get(src) == str(exc) else logging.WARNING
                self._malformed[src] = str(exc)
                log.log(level, "node %d: malformed gossip from %d: %s", self.me.node_id, src, exc)
            except Exception:
                log.exception("node %d: gossip from %d failed", self.me.node_id, src)
            for sender, why in self._core.take_dropped():
                log.warning(
                    "node %d: dropped a record gossiped by node %d: %s",
                    self.me.node_id,
                    sender,
                    why,
                )
            if self._core.last_direct_ack(src) is not None:
                self._acked.notify_all()
            out = self._collect()
        self._send(out)

    def _run(self) -> None:
        while True:
            try:
                meta = self._my_meta()
                with self._lock:
                    self._core.set_meta(meta)
                    self._core.tick(self.clock())
                    wait = self._core.next_deadline() - self.clock()
                    out = self._collect()
                self._send(out)
            except Exception:
                log.exception("node %d: membership round failed", self.me.node_id)
                wait = MAX_WAIT
            if self._stop.wait(min(max(wait, 0.001), MAX_WAIT)):
                return

    def _my_meta(self) -> dict:
        self.me.partitions = self.local_partitions()
        self.me.last_seen = self.clock()
        return _normalized(self.me.describe())

    # --- outputs ------------------------------------------------------------

    def _collect(self) -> list[tuple[int, dict]]:
        """Drain the core and apply its events to the snapshots (lock held)."""
        messages, events = self._core.drain()
        if not events:
            return messages
        members, states = dict(self.members), dict(self._states)
        for e in events:
            if e.node_id == self.me.node_id:
                continue
            record = self._core.members[e.node_id]
            if e.kind == META:
                members[e.node_id] = self._member(e.node_id, record.meta)
                self._learn_address(members[e.node_id])
            else:
                if states.get(e.node_id) != e.kind:
                    log.info(
                        "node %d: node %d is %s (incarnation %d)",
                        self.me.node_id,
                        e.node_id,
                        e.kind,
                        e.incarnation,
                    )
                states[e.node_id] = e.kind
                members.setdefault(e.node_id, Member(e.node_id))
        self.members, self._states = members, states
        return messages

    def _member(self, node_id: int, meta: dict) -> Member:
        old = self.members.get(node_id)
        try:
            return Member(
                node_id=node_id,
                region=str(meta.get("region", "")),
                host=str(meta.get("host", "")),
                internal_port=int(meta.get("internal", 0)),
                gateway_port=int(meta.get("gateway", 0)),
                management_port=int(meta.get("management", 0)),
                version=_version(meta.get("version")),
                partitions={
                    int(k): {**v, "term": int(v.get("term", 0))}  # leader_of compares terms
                    for k, v in meta.get("partitions", {}).items()
                },
                last_seen=old.last_seen if old else 0.0,
            )
        except (TypeError, ValueError, AttributeError) as exc:
            log.warning("node %d: bad metadata of node %d: %s", self.me.node_id, node_id, exc)
            return old or Member(node_id)

    def _learn_address(self, m: Member) -> None:
        address = (m.host, m.internal_port)
        if m.host and m.internal_port and self._addresses.get(m.node_id) != address:
            self._addresses[m.node_id] = address
            self.transport.set_peer(m.node_id, *address)

    def _send(self, messages: list[tuple[int, dict]]) -> None:
        for dst, message in messages:
            self.transport.send_gossip(dst, message)

    # --- contact points -----------------------------------------------------

    def _resolve_loop(self) -> None:
        while self._unresolved and not self._stop.wait(self.config.gossip_interval):
            for cp in list(self._unresolved):
                try:
                    self._resolve(cp)
                except Exception:
                    log.exception("node %d: resolving %s failed", self.me.node_id, cp)

    def _resolve(self, cp: str) -> None:
        host, _, port = cp.rpartition(":")
        try:
            node_id = self.transport.identify(host, int(port), timeout=0.5)
        except HandshakeRejected as exc:
            log.error("contact point %s refused us: %s", cp, exc)
            return
        except ProtocolError as exc:
            log.error("contact point %s: %s", cp, exc)
            return
        except (OSError, ValueError):
            return  # not up yet; try again next round
        self._unresolved.remove(cp)
        if node_id == self.me.node_id:
            return
        self._contact_ids = {*self._contact_ids, node_id}
        with self._lock:
            if node_id not in self._addresses:
                self._addresses[node_id] = (host, int(port))
                self.transport.set_peer(node_id, host, int(port))
            self._core.join([node_id])
            out = self._collect()
        self._send(out)


def _term(info: dict) -> int:
    term = info.get("term", 0)
    return term if type(term) is int else 0


def _normalized(meta: dict) -> dict:
    # The msgpack round trip makes it exactly what others will hear (str
    # keys, lists not tuples), so that equal metadata compares equal.
    return msgpack.unpackb(msgpack.packb(meta))


def _version(value) -> str:
    """A gossiped software version: a short string, else unknown ("")."""
    return value if type(value) is str and len(value) <= MAX_VERSION_CHARS else ""
