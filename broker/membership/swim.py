"""The SWIM membership core, sans-I/O.

``Swim`` is a deterministic state machine in the style of h11 and etcd-raft:
its inputs are ``tick(now)`` (time is injected), ``receive(src, message)``,
``join(node_ids)`` and ``set_meta(meta)``; its outputs are messages to send
and membership events, which the caller takes with ``drain()``. It owns no
sockets, threads or clocks, and all randomness comes from the injected
``random.Random``, so the same object runs in the threaded runner
(broker/node/membership.py) and in the simulator (tests/sim/test_swim.py).

The protocol is SWIM (Das, Gupta, Motivala 2002) with the suspicion
mechanism and the refinements memberlist uses:

* Failure detection: every ``probe_interval`` a member pings the next member
  of a shuffled round-robin list. Without an ack within ``probe_timeout`` it
  asks ``suspect_probes`` other members to ping the target for it
  (ping-req; they relay the ack). Without any ack by the end of the probe
  period the target becomes SUSPECT, and a suspect not refuted within
  ``failure_timeout`` becomes DEAD.
* Incarnations: a member's (incarnation, state) pair is ordered by
  incarnation, then ALIVE < SUSPECT < DEAD, and a received record replaces
  ours only when its pair is greater. So a suspicion overrides ALIVE of the
  same incarnation, only the member itself can refute it (it bumps its
  incarnation and gossips ALIVE), and DEAD is final for its incarnation: a
  restarted member is back only with a higher incarnation, which it picks
  as soon as it hears what the others believe about it.
* Refutation cannot be outbid: a claim about a member that the member could
  not refute within the range checks (SUSPECT or DEAD at incarnation
  MAX_COUNTER, or metadata version MAX_COUNTER) is only believed from the
  member itself; from anyone else the record is dropped and noted (see
  ``take_dropped``). So one forged record can mark a live member DEAD only
  until the member hears of it (the ack of its next ping to any member that
  believes it, or a sync), at most a few protocol periods.
* Metadata (region, addresses, partition roles...) is opaque to this module,
  owned by its member and versioned by the member's own counter; the newest
  version wins. Like the incarnation, a member that hears of a version of
  its own metadata at least as new as its own republishes above it, so a
  restarted member's counter restarting at zero does not hide its metadata.
* Dissemination: changed records are queued and piggy-backed on every
  message (at most ``max_updates`` each, least-sent first), each sent
  ``retransmit_mult * ceil(log10(n + 1))`` times (memberlist's rule);
  every ``gossip_interval`` the queue also goes to ``gossip_fanout`` random
  members. Every ``sync_interval`` a member exchanges its full table with a
  random member (push-pull), which repairs whatever gossip missed.

Message formats (msgpack-able; maps have string keys only, as the wire's
msgpack decoder requires)::

    record   = [node_id, incarnation, "ALIVE"|"SUSPECT"|"DEAD", version, meta]
    ping     = {"t": "ping", "seq": int, "u": [record...]}
    ack      = {"t": "ack", "seq": int, "u": [record...]}
    ping-req = {"t": "ping-req", "seq": int, "target": node_id, "u": [record...]}
    gossip   = {"t": "gossip", "u": [record...]}
    sync     = {"t": "sync", "reply": bool, "u": [every record]}
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgpack

ALIVE, SUSPECT, DEAD = "ALIVE", "SUSPECT", "DEAD"
META = "META"  # event kind: a member's metadata changed
_RANK = {ALIVE: 0, SUSPECT: 1, DEAD: 2}

# Range checks of received records (a record outside them makes the message
# malformed): node ids are 31-bit, incarnations and metadata versions at most
# MAX_COUNTER (a version may be -1: "no metadata known yet"), metadata is a
# map of at most META_MAX_KEYS string keys of at most META_MAX_KEY_LEN
# characters, META_MAX_BYTES once packed.
MAX_NODE_ID = 2**31 - 1
MAX_COUNTER = 2**62
META_MAX_KEYS = 32
META_MAX_KEY_LEN = 64
META_MAX_BYTES = 256 * 1024


class MalformedMessage(ValueError):
    """A received message does not have the shape of any SWIM message."""


@dataclass(frozen=True)
class SwimConfig:
    """Times in seconds; the defaults are Zeebe's (DESIGN.md section 4)."""

    gossip_interval: float = 0.25
    gossip_fanout: int = 2
    probe_interval: float = 1.0
    probe_timeout: float = 0.1
    suspect_probes: int = 3
    failure_timeout: float = 10.0
    sync_interval: float = 10.0
    max_updates: int = 8  # records piggy-backed per message
    retransmit_mult: int = 4  # as memberlist's RetransmitMult


@dataclass
class MemberRecord:
    node_id: int
    incarnation: int = 0
    state: str = ALIVE
    version: int = -1  # of meta; -1 while we know none
    meta: dict = field(default_factory=dict)
    since: float = 0.0  # when we last changed state (starts the suspicion timer)

    def wire(self) -> list:
        return [self.node_id, self.incarnation, self.state, self.version, self.meta]


class Event(NamedTuple):
    """A change in our view: ``kind`` is the member's new state (also on first
    sight, and for our own refutations) or META for new metadata."""

    node_id: int
    kind: str
    incarnation: int
    version: int


@dataclass
class _Probe:
    target: int
    seq: int
    started: float
    indirect: bool = False  # ping-reqs sent


class Swim:
    def __init__(
        self,
        node_id: int,
        meta: dict,
        config: SwimConfig | None = None,
        rng: random.Random | None = None,
        now: float = 0.0,
        incarnation: int = 0,
    ):
        self.id = node_id
        self.config = cfg = config or SwimConfig()
        self.rng = rng if rng is not None else random.Random(node_id)
        self.now = now
        self.members: dict[int, MemberRecord] = {
            node_id: MemberRecord(node_id, incarnation, ALIVE, 0, dict(meta), now)
        }
        self._messages: list[tuple[int, dict]] = []
        self._events: list[Event] = []
        self._queue: dict[int, list[int]] = {}  # node_id -> [times sent, order queued]
        self._queued = 0
        self._seq = 0
        self._probe: _Probe | None = None
        self._probe_list: list[int] = []
        self._relays: dict[int, tuple[int, int, float]] = {}  # our seq -> (asker, its seq, expiry)
        self._joining: dict[int, float] = {}  # contact point -> next attempt
        self._dropped: list[tuple[int, str]] = []  # (sender, why) of records ignored
        self._direct: dict[int, tuple[int, float]] = {}  # seq of probe_direct -> (target, expiry)
        self._direct_acks: dict[int, float] = {}  # node id -> when it last acked our own ping
        # A random phase keeps members started together from probing in lockstep.
        self._next_probe = now + self.rng.random() * cfg.probe_interval
        self._next_gossip = now + cfg.gossip_interval
        self._next_sync = now + cfg.sync_interval
        self._enqueue(node_id)

    # --- queries ----------------------------------------------------------

    @property
    def me(self) -> MemberRecord:
        return self.members[self.id]

    def states(self) -> dict[int, str]:
        return {nid: m.state for nid, m in self.members.items()}

    def next_deadline(self) -> float:
        """When ``tick`` next has something to do (the caller may tick sooner)."""
        due = [self._next_probe, self._next_gossip, self._next_sync, *self._joining.values()]
        if self._probe is not None and not self._probe.indirect:
            due.append(self._probe.started + self.config.probe_timeout)
        due.extend(
            m.since + self.config.failure_timeout
            for m in self.members.values()
            if m.state == SUSPECT
        )
        return min(due)

    def last_direct_ack(self, node_id: int) -> float | None:
        """When ``node_id`` itself last acked a ping of ours (not a relayed ack, not
        gossip): the evidence of a direct probe."""
        return self._direct_acks.get(node_id)

    def take_dropped(self) -> list[tuple[int, str]]:
        """(sender, reason) of the received records dropped since last time (the
        caller logs them); a dropped record changes nothing."""
        out, self._dropped = self._dropped, []
        return out

    def drain(self) -> tuple[list[tuple[int, dict]], list[Event]]:
        """The messages to send as (destination, message) and the events since last time."""
        out, self._messages = self._messages, []
        events, self._events = self._events, []
        return out, events

    # --- inputs -----------------------------------------------------------

    def set_meta(self, meta: dict) -> None:
        me = self.me
        if meta != me.meta:
            me.meta = dict(meta)
            me.version += 1
            self._events.append(Event(self.id, META, me.incarnation, me.version))
            self._enqueue(self.id)

    def join(self, contact_points: list[int]) -> None:
        """Push-pull with each contact point until it answers (retried every probe period)."""
        for nid in contact_points:
            if nid != self.id and nid not in self._joining:
                self._joining[nid] = self.now
        self._retry_joins()

    def probe_direct(self, target: int, timeout: float | None = None) -> int:
        """Ping ``target`` now, whatever we believe of it; its ack within ``timeout``
        (default: a probe period) updates ``last_direct_ack``. Returns the seq."""
        seq = self._next_seq()
        wait = self.config.probe_interval if timeout is None else timeout
        self._direct[seq] = (target, self.now + wait)
        self._send(target, {"t": "ping", "seq": seq})
        return seq

    def tick(self, now: float) -> None:
        self.now = now = max(self.now, now)
        cfg = self.config
        for m in list(self.members.values()):
            if m.state == SUSPECT and now >= m.since + cfg.failure_timeout:
                self._set_state(m, DEAD, m.incarnation)
        probe = self._probe
        if probe is not None and not probe.indirect and now >= probe.started + cfg.probe_timeout:
            probe.indirect = True
            self._ping_req(probe)
        if now >= self._next_probe:
            if probe is not None:
                # The period ended without any ack, direct or relayed.
                m = self.members.get(probe.target)
                if m is not None and m.state == ALIVE:
                    self._set_state(m, SUSPECT, m.incarnation)
                self._probe = None
            self._next_probe = max(self._next_probe + cfg.probe_interval, now)
            self._start_probe()
        if now >= self._next_gossip:
            self._next_gossip = max(self._next_gossip + cfg.gossip_interval, now)
            if self._queue:
                peers = self._peers()
                for dst in self.rng.sample(peers, min(cfg.gossip_fanout, len(peers))):
                    self._send(dst, {"t": "gossip"})
        if now >= self._next_sync:
            self._next_sync = max(self._next_sync + cfg.sync_interval, now)
            peers = self._peers()
            if peers:
                self._send(self.rng.choice(peers), self._sync(reply=True))
            # Also sync with one member we believe DEAD: after a partition heals,
            # two sides that declared each other dead would never talk again.
            dead = [nid for nid, m in self.members.items() if m.state == DEAD]
            if dead:
                self._send(self.rng.choice(dead), self._sync(reply=True))
        self._retry_joins()
        for seq, (_, _, expiry) in list(self._relays.items()):
            if now >= expiry:
                del self._relays[seq]
        for seq, (_, expiry) in list(self._direct.items()):
            if now >= expiry:
                del self._direct[seq]

    def receive(self, src: int, message: Any) -> None:
        """Apply one message; raises MalformedMessage (changing nothing) if it is not one."""
        kind, seq, target, records = _parse(message)
        if not (_is_int(src) and 0 <= src <= MAX_NODE_ID):
            raise MalformedMessage(f"sender id {src!r} out of range")
        if src == self.id:
            return
        self._joining.pop(src, None)
        for record in records:
            why = _unrefutable(src, record)
            if why is not None:
                self._dropped.append((src, why))
                continue
            self._merge(*record)
        if src not in self.members:
            # An unknown member contacted us (it learnt of us from others): add
            # it, and pull its record so we learn its metadata.
            self._add(MemberRecord(src, since=self.now))
            if kind != "sync":
                self._send(src, self._sync(reply=True))
        if kind == "ping":
            self._send(src, {"t": "ack", "seq": seq})
        elif kind == "ack":
            if self._probe is not None and seq == self._probe.seq:
                if src == self._probe.target:
                    self._direct_acks[src] = self.now
                self._probe = None
            elif seq in self._direct:
                if self._direct[seq][0] == src:
                    del self._direct[seq]
                    self._direct_acks[src] = self.now
            elif seq in self._relays:
                asker, asker_seq, _ = self._relays.pop(seq)
                self._send(asker, {"t": "ack", "seq": asker_seq})
        elif kind == "ping-req":
            if target == self.id:
                self._send(src, {"t": "ack", "seq": seq})
            else:
                ours = self._next_seq()
                self._relays[ours] = (src, seq, self.now + self.config.probe_interval)
                self._send(target, {"t": "ping", "seq": ours})
        elif kind == "sync" and message["reply"]:
            self._send(src, self._sync(reply=False))

    # --- probing ------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _start_probe(self) -> None:
        for _ in range(2):  # at most one reshuffle
            while self._probe_list:
                nid = self._probe_list.pop()
                m = self.members.get(nid)
                if m is not None and m.state != DEAD:
                    self._probe = _Probe(nid, self._next_seq(), self.now)
                    self._send(nid, {"t": "ping", "seq": self._probe.seq})
                    return
            self._probe_list = self._peers()
            self.rng.shuffle(self._probe_list)

    def _ping_req(self, probe: _Probe) -> None:
        helpers = [nid for nid in self._peers() if nid != probe.target]
        for nid in self.rng.sample(helpers, min(self.config.suspect_probes, len(helpers))):
            self._send(nid, {"t": "ping-req", "seq": probe.seq, "target": probe.target})

    def _peers(self) -> list[int]:
        """Members worth talking to: everyone but us and the dead."""
        return [nid for nid, m in self.members.items() if nid != self.id and m.state != DEAD]

    def _retry_joins(self) -> None:
        for nid, due in self._joining.items():
            if self.now >= due:
                self._joining[nid] = self.now + self.config.probe_interval
                self._send(nid, self._sync(reply=True))

    # --- membership records ---------------------------------------------------

    def _merge(self, nid: int, inc: int, state: str, version: int, meta: dict) -> None:
        if nid == self.id:
            self._about_me(inc, state, version, meta)
            return
        m = self.members.get(nid)
        if m is None:
            self._add(MemberRecord(nid, inc, state, version, meta, self.now))
            return
        if (inc, _RANK[state]) > (m.incarnation, _RANK[m.state]):
            self._set_state(m, state, inc)
        if version > m.version:
            m.version, m.meta = version, meta
            self._events.append(Event(nid, META, m.incarnation, version))
            self._enqueue(nid)

    def _about_me(self, inc: int, state: str, version: int, meta: dict) -> None:
        me = self.me
        if inc > me.incarnation or (inc == me.incarnation and state != ALIVE):
            # Suspected or declared dead (or we restarted and others knew a
            # higher incarnation): refute with a higher one.
            me.incarnation = min(inc + 1, MAX_COUNTER)  # claims at the cap are dropped
            self._events.append(Event(self.id, ALIVE, me.incarnation, me.version))
            self._enqueue(self.id)
        elif inc < me.incarnation:
            # Someone still spreads an old record of us, maybe because our
            # refutation was lost: announce ourselves again.
            self._enqueue(self.id)
        if version > me.version or (version == me.version and meta != me.meta):
            me.version = min(version + 1, MAX_COUNTER)
            self._events.append(Event(self.id, META, me.incarnation, me.version))
            self._enqueue(self.id)
        elif version < me.version:
            self._enqueue(self.id)

    def _add(self, m: MemberRecord) -> None:
        self.members[m.node_id] = m
        self._events.append(Event(m.node_id, m.state, m.incarnation, m.version))
        if m.version >= 0:
            self._events.append(Event(m.node_id, META, m.incarnation, m.version))
        if m.state != DEAD:
            # A random place in the probe order, as in the SWIM paper.
            self._probe_list.insert(self.rng.randint(0, len(self._probe_list)), m.node_id)
        self._enqueue(m.node_id)

    def _set_state(self, m: MemberRecord, state: str, inc: int) -> None:
        m.state, m.incarnation, m.since = state, inc, self.now
        self._events.append(Event(m.node_id, state, inc, m.version))
        self._enqueue(m.node_id)

    # --- dissemination ----------------------------------------------------------

    def _enqueue(self, nid: int) -> None:
        self._queued += 1
        self._queue[nid] = [0, self._queued]

    def _send(self, dst: int, message: dict) -> None:
        if "u" not in message:
            message["u"] = self._piggyback(dst, message["t"] in ("ping", "ack"))
        self._messages.append((dst, message))

    def _piggyback(self, dst: int, with_me: bool) -> list[list]:
        # Pings and acks always carry the sender's own record, so every probe
        # refreshes the prober's view of the probed member (and the other way
        # round) even when gossip of its newest record was lost.
        records = [self.me.wire()] if with_me else []
        target = self.members.get(dst)
        if target is not None and target.state != ALIVE:
            records.append(target.wire())  # lets it refute at once
        live = sum(1 for m in self.members.values() if m.state != DEAD)
        limit = self.config.retransmit_mult * math.ceil(math.log10(live + 1))
        # Least-sent first, newest first among equals.
        ranked = sorted(self._queue.items(), key=lambda kv: (kv[1][0], -kv[1][1]))
        sent = {r[0] for r in records}
        for nid, entry in ranked[: self.config.max_updates - len(records)]:
            if nid not in sent:
                records.append(self.members[nid].wire())
            entry[0] += 1
            if entry[0] >= limit:
                del self._queue[nid]
        return records

    def _sync(self, reply: bool) -> dict:
        return {"t": "sync", "reply": reply, "u": [m.wire() for m in self.members.values()]}


# --- validation -------------------------------------------------------------------

_KINDS = ("ping", "ack", "ping-req", "gossip", "sync")


def _is_int(v: Any) -> bool:
    return type(v) is int


def _parse(message: Any) -> tuple[str, int, int, list[tuple]]:
    """(kind, seq, target, records) of a well-formed message, else MalformedMessage."""
    if type(message) is not dict:
        raise MalformedMessage(f"not a map: {type(message).__name__}")
    kind = message.get("t")
    if kind not in _KINDS:
        raise MalformedMessage(f"unknown kind {kind!r}")
    seq = message.get("seq")
    target = message.get("target")
    if kind in ("ping", "ack", "ping-req") and not _is_int(seq):
        raise MalformedMessage(f"{kind}: bad seq {seq!r}")
    if kind == "ping-req" and not (_is_int(target) and 0 <= target <= MAX_NODE_ID):
        raise MalformedMessage(f"ping-req: bad target {target!r}")
    if kind == "sync" and type(message.get("reply")) is not bool:
        raise MalformedMessage("sync: bad reply flag")
    records = message.get("u")
    if type(records) is not list:
        raise MalformedMessage(f"{kind}: records are not a list")
    parsed = []
    for r in records:
        why = _bad_record(r)
        if why is not None:
            raise MalformedMessage(f"{kind}: bad record ({why}) {r!r:.200}")
        parsed.append(tuple(r))
    return kind, seq, target, parsed


def _bad_record(r: Any) -> str | None:
    """Why ``r`` is not a valid record, or None."""
    if type(r) is not list or len(r) != 5:
        return "not a list of 5"
    nid, inc, state, version, meta = r
    if not (_is_int(nid) and 0 <= nid <= MAX_NODE_ID):
        return "node id out of range"
    if not (_is_int(inc) and 0 <= inc <= MAX_COUNTER):
        return "incarnation out of range"
    if type(state) is not str or state not in _RANK:
        return "unknown state"
    if not (_is_int(version) and -1 <= version <= MAX_COUNTER):
        return "version out of range"
    if type(meta) is not dict:
        return "metadata is not a map"
    if len(meta) > META_MAX_KEYS:
        return "too many metadata keys"
    for k in meta:
        if type(k) is not str or len(k) > META_MAX_KEY_LEN:
            return "bad metadata key"
    if meta:
        try:
            size = len(msgpack.packb(meta))
        except (TypeError, ValueError, OverflowError):
            return "metadata not serialisable"
        if size > META_MAX_BYTES:
            return "metadata too large"
    return None


def _unrefutable(src: int, record: tuple) -> str | None:
    """Why a well-formed record from ``src`` is still not believed, or None: a claim
    about another member that the member could not outbid (its refutation would
    leave the range), so only the member itself may make it."""
    nid, inc, state, version, _ = record
    if nid == src:
        return None
    if inc >= MAX_COUNTER and state != ALIVE:
        return f"{state} of node {nid} at the maximum incarnation"
    if inc >= MAX_COUNTER or version >= MAX_COUNTER:
        return f"record of node {nid} at the maximum incarnation or version"
    return None
