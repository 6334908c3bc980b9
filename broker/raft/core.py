"""The Raft consensus core, sans-I/O.

``RaftNode`` is a deterministic state machine: its inputs are ``tick()``,
``step(message)``, proposals and ``persisted()`` notices; its outputs are
collected in a ``Ready`` (see messages.py) that the caller drains with
``ready()``. It owns no sockets, threads, clocks or files; randomness comes
from the injected ``random.Random``. The same object runs in the broker's
threaded runner and in the deterministic simulator (tests/sim).

Features, with the design choices that matter for operators:

* Pre-vote and leader lease (check quorum): a node that was partitioned away
  cannot disrupt a healthy leader when it comes back, and a leader that
  cannot reach a quorum within an election timeout steps down.
* Priority election (Zeebe's scheme): every follower starts with a target
  priority equal to the highest priority in the group; each election timeout
  without a leader lowers it by one; a node polls only once the target has
  decayed to its own priority. So the primary normally wins, and a node of
  priority p waits (max - p + 1) timeouts.
* Membership changes one server at a time (Raft dissertation section 4.1):
  a configuration takes effect when appended, the leader accepts a change
  only when no earlier one is uncommitted and it has committed an entry of
  its own term. Larger changes are sequences of single steps.
* Force reconfigure (region failover): each retained member overrides its
  configuration with the retained set and bumps its term. Until a leader of
  the forced group writes the configuration into the log, an election in the
  forced group needs the votes of *every* retained member: with an even
  replication factor split evenly over two regions, each committed entry is
  on at least one survivor, and a unanimous vote guarantees the new leader
  holds all of them (RPO 0). Normal majorities apply afterwards.
* Commit only by counting replicas of an entry of the leader's own term
  (Raft figure 8); a new leader appends a no-op to commit earlier entries.
* Replication is pipelined (bounded in-flight batches per follower), falls
  back to probing after a rejection, and backs off a whole term per round
  trip using the follower's hint. Followers too far behind get a snapshot in
  chunks.
"""

from __future__ import annotations

import bisect
import random
from collections import deque
from dataclasses import dataclass
from enum import Enum

from .log import RaftLog
from .messages import (
    AppendRequest,
    AppendResponse,
    Configuration,
    Entry,
    EntryKind,
    HardState,
    InstallSnapshot,
    InstallSnapshotResponse,
    Ready,
    SnapshotMeta,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)


class Role(Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class NotLeader(Exception):
    def __init__(self, leader: int | None):
        super().__init__(f"not the leader (leader: {leader})")
        self.leader = leader


class ProposalRejected(Exception):
    """The leader cannot take this proposal now (transfer or change in progress)."""


@dataclass
class RaftConfig:
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    priority_election: bool = True
    pre_vote: bool = True
    check_quorum: bool = True
    max_batch_entries: int = 512
    max_batch_bytes: int = 1 << 20
    max_inflight: int = 64
    max_apply_bytes: int = 16 << 20  # committed entries read back from disk per Ready
    snapshot_chunk_size: int = 1 << 20
    snapshot_window: int = 8  # chunks in flight during a snapshot install
    # Test-only switches that break a safety rule, so that tests can prove the
    # simulator detects the bug. Never set outside tests.
    unsafe_commit_earlier_terms: bool = False  # Raft figure 8
    unsafe_vote_ignores_log: bool = False  # election restriction (section 5.4.1)


class _State(Enum):
    PROBE = 0  # one append at a time until the follower's match is known
    REPLICATE = 1  # pipelined appends
    SNAPSHOT = 2  # sending a snapshot in chunks


class Progress:
    """The leader's view of one follower."""

    __slots__ = (
        "active",
        "inflight",
        "last_ack_tick",
        "match",
        "next",
        "paused",
        "snap",
        "snap_index",
        "snap_offset",
        "snap_reported",
        "snap_sent",
        "snap_sent_tick",
        "state",
    )

    def __init__(self, next_index: int, tick: int):
        self.match = 0
        self.next = next_index
        self.state = _State.PROBE
        self.paused = False
        self.inflight: deque[int] = deque()  # last index of each batch in flight
        self.active = False  # heard from since the last quorum check
        self.last_ack_tick = tick
        self.snap: tuple[SnapshotMeta, bytes] | None = None  # pinned while it is sent
        self.snap_index = 0
        self.snap_offset = 0  # acknowledged by the follower
        self.snap_reported = 0  # the offset the follower last said it expects
        self.snap_sent = 0  # sent so far (chunks between the two are in flight)
        self.snap_sent_tick = 0

    def probe(self, next_index: int) -> None:
        self.state = _State.PROBE
        self.next = max(self.match + 1, next_index)
        self.paused = False
        self.inflight.clear()
        self.snap = None


class RaftNode:
    def __init__(
        self,
        node_id: int,
        bootstrap: Configuration,
        config: RaftConfig | None = None,
        rng: random.Random | None = None,
        hard_state: HardState | None = None,
        snapshot: tuple[SnapshotMeta, bytes] | None = None,
        entries=(),
    ):
        """Create a node from what its storage holds.

        ``bootstrap`` is the group's initial configuration (from the cluster
        topology); a snapshot, configuration entries in the log and a forced
        configuration in the hard state all take precedence over it.
        """
        self.id = node_id
        self.cfg = config or RaftConfig()
        self.rng = rng or random.Random(node_id)
        hs = hard_state or HardState()
        self.term, self.vote = hs.term, hs.vote
        self.forced, self.forced_term = hs.forced, hs.forced_term
        self.bootstrap = bootstrap
        self.snapshot = snapshot
        if snapshot:
            meta = snapshot[0]
            self.log = RaftLog(meta.index, meta.term, entries)
        else:
            self.log = RaftLog(0, 0, entries)
        self.commit = self.log.snapshot_index
        self._emitted = self.commit  # last index handed out in Ready.committed
        self.persisted_index = self.log.last_index
        self._config_indexes = [e.index for e in self.log.entries if e.kind == EntryKind.CONFIG]
        self.role = Role.FOLLOWER
        self.leader_id: int | None = None
        self.progress: dict[int, Progress] = {}
        self.config: Configuration = bootstrap
        self.config_index = 0
        self.forced_active = False
        self._recompute_config()

        self._votes: dict[int, bool] = {}
        self._ticks = 0
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._timeout = self._random_timeout()
        self.target_priority = self.config.max_priority
        self.transferee: int | None = None
        self._transfer_elapsed = 0
        # snapshot being received: ((leader, term, index), bytes so far)
        self._incoming: tuple[tuple[int, int, int], bytearray] | None = None
        self._ready = Ready()
        self._hs_dirty = False
        self._dirty: set[int] = set()

    # --- inspection ---------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self.role is Role.LEADER

    @property
    def last_index(self) -> int:
        return self.log.last_index

    @property
    def priority(self) -> int:
        return self.config.priority(self.id)

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.forced, self.forced_term)

    # --- inputs -------------------------------------------------------------

    def tick(self) -> None:
        self._ticks += 1
        if self.role is Role.LEADER:
            self._tick_leader()
        else:
            self._tick_election()

    def propose(self, data: bytes) -> int:
        """Append ``data`` as a new entry; returns its index. Leader only."""
        self._check_can_propose()
        index = self.log.last_index + 1
        self._append_local([Entry(index, self.term, EntryKind.NORMAL, data)])
        return index

    def propose_batch(self, items: list[bytes]) -> int:
        """Append several entries at once; returns the index of the first."""
        self._check_can_propose()
        first = self.log.last_index + 1
        term = self.term
        self._append_local(
            [Entry(first + k, term, EntryKind.NORMAL, d) for k, d in enumerate(items)]
        )
        return first

    def propose_config(self, new: Configuration) -> int:
        """Change membership by at most one voter (priorities may change freely)."""
        self._check_can_propose()
        if self.config_index > self.commit:
            raise ProposalRejected("a configuration change is still uncommitted")
        if self.log.term_at(self.commit) != self.term:
            raise ProposalRejected("the leader has not committed an entry of its term yet")
        if not new.voters:
            raise ValueError("a configuration needs at least one voter")
        if len(new.voters ^ self.config.voters) > 1:
            raise ValueError("membership changes add or remove one voter at a time")
        index = self.log.last_index + 1
        self._append_local([Entry(index, self.term, EntryKind.CONFIG, new.encode())])
        return index

    def force_reconfigure(self, new: Configuration) -> None:
        """Make ``new`` (a subset of the members, including this node) the group.

        Idempotent: repeating the same forced configuration changes nothing.
        """
        if self.id not in new.voters:
            raise ValueError(f"node {self.id} is not in the forced configuration")
        if new.voters == self.config.voters and (self.forced_active or new == self.forced):
            return
        self.term += 1
        self.vote = None
        self.forced, self.forced_term = new, self.term
        self._hs_dirty = True
        self._become_follower(self.term, None)
        self._recompute_config()
        self.target_priority = self.config.max_priority
        # The forced group has no leader by definition: poll at the next tick
        # instead of waiting out a timeout (the priority order still holds).
        self._election_elapsed = self._timeout

    def transfer_leadership(self, target: int) -> None:
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader_id)
        if target == self.id or target not in self.config.voters:
            raise ValueError(f"cannot transfer leadership to {target}")
        self.transferee = target
        self._transfer_elapsed = 0
        p = self.progress[target]
        if p.match == self.log.last_index:
            self._send(TimeoutNow(self.term, self.id, target))
        else:
            self._dirty.add(target)

    def step_down_if_not_primary(self) -> bool:
        """Rebalance: hand leadership to the highest-priority voter if that is not us."""
        if self.role is not Role.LEADER:
            return False
        best = max(self.config.voters, key=lambda m: (self.config.priority(m), -m))
        if best == self.id or self.config.priority(best) <= self.priority:
            return False
        self.transfer_leadership(best)
        return True

    def persisted(self, index: int, term: int) -> None:
        """The caller made the log durable up to ``index`` (whose term was ``term``)."""
        if self.log.term_at(index) != term or index <= self.persisted_index:
            return  # stale notice: that entry was replaced meanwhile
        self.persisted_index = index
        if self.role is Role.LEADER:
            self._maybe_commit()

    def incoming_snapshot(self, m: InstallSnapshot) -> bytes | None:
        """The whole snapshot once ``m`` (its last chunk) is added to the chunks
        received so far, or None if ``m`` does not follow them (out of order, or
        another transfer). Lets the caller verify a snapshot before ``step``."""
        if m.offset == 0:
            return m.data
        inc = self._incoming
        if inc is None or inc[0] != (m.src, m.term, m.meta.index) or len(inc[1]) != m.offset:
            return None
        return bytes(inc[1]) + m.data

    def drop_incoming_snapshot(self) -> None:
        """Forget the chunks of a transfer the caller refused (the leader resends)."""
        self._incoming = None

    def compact(self, index: int, data: bytes) -> SnapshotMeta:
        """Take the caller's state machine snapshot at ``index`` (<= applied) and
        drop the log up to it. Returns the metadata the caller must persist."""
        if not self.log.snapshot_index <= index <= self._emitted:
            raise ValueError(
                f"cannot snapshot at {index}: applied up to {self._emitted}, "
                f"log starts after {self.log.snapshot_index}"
            )
        config, config_term = self._config_at(index)
        meta = SnapshotMeta(index, self.log.term_at(index), config, config_term)
        self.snapshot = (meta, data)
        self.log.compact(index)
        self._config_indexes = [i for i in self._config_indexes if i > index]
        return meta

    def ready(self) -> Ready:
        if self.role is Role.LEADER:
            for member in sorted(self._dirty):
                p = self.progress.get(member)
                if p is not None:
                    self._send_append(member, p)
        self._dirty.clear()
        if not self._ready.committed:
            self._emit_committed()  # the next part of a long backlog of commits
        if self._hs_dirty:
            self._ready.hard_state = self.hard_state()
            self._hs_dirty = False
        rd, self._ready = self._ready, Ready()
        return rd

    def step(self, m) -> None:
        if m.term > self.term:
            if isinstance(m, VoteRequest):
                pass  # decided in _on_vote_request (lease, pre-vote)
            elif isinstance(m, VoteResponse) and m.pre_vote and m.granted:
                pass
            elif isinstance(m, AppendRequest | InstallSnapshot | TimeoutNow):
                self._become_follower(m.term, m.src)
            else:
                self._become_follower(m.term, None)
        elif m.term < self.term:
            if isinstance(m, AppendRequest | InstallSnapshot):
                # tell a stale leader about the newer term so it steps down
                self._send(AppendResponse(self.term, self.id, m.src, False))
            elif isinstance(m, VoteRequest):
                self._send(VoteResponse(self.term, self.id, m.src, False, m.pre_vote))
            return
        handler = self._HANDLERS[type(m)]
        handler(self, m)

    # --- elections ----------------------------------------------------------

    def _random_timeout(self) -> int:
        t = self.cfg.election_ticks
        jitter = max(1, t // 4) if self.cfg.priority_election else t
        return t + self.rng.randrange(jitter)

    def _tick_election(self) -> None:
        self._election_elapsed += 1
        if self._election_elapsed < self._timeout:
            return
        self._election_elapsed = 0
        self._timeout = self._random_timeout()
        self.leader_id = None  # a whole timeout without the leader: its lease is over
        if self.id not in self.config.voters:
            return
        if (
            self.cfg.priority_election
            and self.role is Role.FOLLOWER
            and self.priority < self.target_priority
        ):
            self.target_priority -= 1  # one election timeout per priority step
            return
        self._campaign()

    def _campaign(self, transfer: bool = False) -> None:
        if self.cfg.pre_vote and not transfer:
            self.role = Role.PRE_CANDIDATE
            self.leader_id = None
            self._votes = {self.id: True}
            if not self._tally(pre_vote=True):
                for peer in self._peers():
                    self._send(
                        VoteRequest(
                            self.term + 1,
                            self.id,
                            peer,
                            self.log.last_index,
                            self.log.last_term,
                            pre_vote=True,
                        )
                    )
        else:
            self._start_election(transfer)

    def _start_election(self, transfer: bool) -> None:
        self.role = Role.CANDIDATE
        self.term += 1
        self.vote = self.id
        self.leader_id = None
        self._hs_dirty = True
        self._votes = {self.id: True}
        if self._tally(pre_vote=False):
            return
        for peer in self._peers():
            self._send_after_persist(
                VoteRequest(
                    self.term,
                    self.id,
                    peer,
                    self.log.last_index,
                    self.log.last_term,
                    transfer=transfer,
                )
            )

    def _votes_needed(self) -> int:
        # See the module docstring: a forced group's first election is unanimous.
        return len(self.config.voters) if self.forced_active else self.config.quorum()

    def _tally(self, pre_vote: bool) -> bool:
        """Count votes; act on a decision. Returns True when the node advanced."""
        voters = self.config.voters
        granted = sum(1 for m, g in self._votes.items() if g and m in voters)
        rejected = sum(1 for m, g in self._votes.items() if not g and m in voters)
        needed = self._votes_needed()
        if granted >= needed:
            if pre_vote:
                self._start_election(False)
            else:
                self._become_leader()
            return True
        if rejected > len(voters) - needed:
            self._become_follower(self.term, None)
        return False

    def _on_vote_request(self, m: VoteRequest) -> None:
        in_lease = (
            self.cfg.check_quorum
            and not m.transfer
            and self.leader_id is not None
            and self._election_elapsed < self.cfg.election_ticks
        )
        up_to_date = self.cfg.unsafe_vote_ignores_log or self.log.is_up_to_date(
            m.last_index, m.last_term
        )
        if m.pre_vote:
            grant = not in_lease and m.term > self.term and up_to_date
            self._send(VoteResponse(m.term if grant else self.term, self.id, m.src, grant, True))
            return
        if m.term > self.term:
            if in_lease:
                self._send(VoteResponse(self.term, self.id, m.src, False))
                return
            self._become_follower(m.term, None)
        can_vote = self.vote == m.src or (self.vote is None and self.leader_id is None)
        grant = can_vote and up_to_date
        if grant:
            self.vote = m.src
            self._hs_dirty = True
            self._election_elapsed = 0
        self._send_after_persist(VoteResponse(self.term, self.id, m.src, grant))

    def _on_vote_response(self, m: VoteResponse) -> None:
        if m.pre_vote:
            if self.role is Role.PRE_CANDIDATE and m.term in (self.term, self.term + 1):
                self._votes[m.src] = m.granted
                self._tally(pre_vote=True)
        elif self.role is Role.CANDIDATE and m.term == self.term:
            self._votes[m.src] = m.granted
            self._tally(pre_vote=False)

    def _on_timeout_now(self, m: TimeoutNow) -> None:
        if m.src == self.leader_id and self.id in self.config.voters:
            self._campaign(transfer=True)

    def _become_follower(self, term: int, leader: int | None) -> None:
        if term != self.term:
            self.term = term
            self.vote = None
            self._hs_dirty = True
        self.role = Role.FOLLOWER
        self.leader_id = leader
        self._election_elapsed = 0
        self._timeout = self._random_timeout()
        self.progress = {}
        self._dirty.clear()
        self.transferee = None
        if leader is not None:
            self.target_priority = self.config.max_priority

    def _become_leader(self) -> None:
        self.role = Role.LEADER
        self.leader_id = self.id
        self._heartbeat_elapsed = 0
        self._election_elapsed = 0
        self.progress = {}
        self._sync_progress()
        index = self.log.last_index + 1
        if self.forced_active:
            # write the forced configuration into the log; it doubles as the no-op
            entry = Entry(index, self.term, EntryKind.CONFIG, self.config.encode())
        else:
            entry = Entry(index, self.term, EntryKind.NOOP, b"")
        self._append_local([entry])
        for member in self.progress:
            self._send_heartbeat(member, self.progress[member])

    # --- leader -------------------------------------------------------------

    def _check_can_propose(self) -> None:
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader_id)
        if self.transferee is not None:
            raise ProposalRejected("leadership transfer in progress")

    def _peers(self):
        return sorted(m for m in self.config.voters if m != self.id)

    def _sync_progress(self) -> None:
        """Track exactly the current voters (other than ourselves)."""
        wanted = set(self._peers())
        for m in list(self.progress):
            if m not in wanted:
                del self.progress[m]
        for m in wanted:
            if m not in self.progress:
                self.progress[m] = Progress(self.log.last_index + 1, self._ticks)

    def _append_local(self, entries: list[Entry]) -> None:
        self.log.append(entries)
        self._ready.entries.extend(entries)
        if any(e.kind == EntryKind.CONFIG for e in entries):
            self._config_indexes.extend(e.index for e in entries if e.kind == EntryKind.CONFIG)
            self._recompute_config()
        if self.role is Role.LEADER:
            self._dirty.update(self.progress)
            if not self.progress:
                self._maybe_commit()  # single-voter group

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self.transferee is not None:
            self._transfer_elapsed += 1
            if self._transfer_elapsed > self.cfg.election_ticks:
                self.transferee = None
        if self._election_elapsed >= self.cfg.election_ticks:
            self._election_elapsed = 0
            if self.cfg.check_quorum and not self._quorum_active():
                self._become_follower(self.term, None)
                return
        if self._heartbeat_elapsed >= self.cfg.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            stall = max(2, self.cfg.election_ticks // 2)
            for member, p in self.progress.items():
                if p.state is _State.REPLICATE and p.inflight:
                    if self._ticks - p.last_ack_tick > stall:
                        p.probe(p.match + 1)  # acks stopped: assume loss, resend
                        self._dirty.add(member)
                elif p.state is _State.PROBE:
                    p.paused = False  # the probe or its answer may be lost: probe again
                    if p.match < self.log.last_index:
                        self._dirty.add(member)
                elif p.state is _State.SNAPSHOT and self._ticks - p.snap_sent_tick > stall:
                    # chunks were lost, or the follower lost its buffer: go back to
                    # where it last said it was
                    p.snap_offset = p.snap_sent = p.snap_reported
                    self._send_snapshot_chunks(member, p)
                self._send_heartbeat(member, p)

    def _quorum_active(self) -> bool:
        voters = self.config.voters
        active = (1 if self.id in voters else 0) + sum(
            1 for m, p in self.progress.items() if p.active and m in voters
        )
        for p in self.progress.values():
            p.active = False
        return active >= self.config.quorum()

    def _send_heartbeat(self, member: int, p: Progress) -> None:
        # prev = match: known to agree, so a heartbeat never causes a rejection
        prev = max(p.match, self.log.snapshot_index)
        if prev > self.log.last_index:
            prev = self.log.last_index
        self._send(
            AppendRequest(
                self.term,
                self.id,
                member,
                prev,
                self.log.term_at(prev),
                (),
                min(self.commit, p.match),
            )
        )

    def _send_append(self, member: int, p: Progress) -> None:
        cfg = self.cfg
        while True:
            if p.state is _State.SNAPSHOT:
                return
            if p.state is _State.PROBE and p.paused:
                return
            if p.state is _State.REPLICATE and len(p.inflight) >= cfg.max_inflight:
                return
            prev = p.next - 1
            prev_term = self.log.term_at(prev)
            if prev_term is None:  # compacted away: the follower needs a snapshot
                self._start_snapshot(member, p)
                return
            last = self.log.last_index
            if p.state is _State.REPLICATE and p.next > last:
                return
            hi = min(last + 1, p.next + cfg.max_batch_entries)
            entries = self.log.slice(p.next, hi, cfg.max_batch_bytes)
            size = 0
            for k, e in enumerate(entries):
                size += len(e.data)
                if size > cfg.max_batch_bytes and k > 0:
                    entries = entries[:k]
                    break
            self._send(
                AppendRequest(
                    self.term, self.id, member, prev, prev_term, tuple(entries), self.commit
                )
            )
            if p.state is _State.PROBE:
                p.paused = True
                return
            p.next = entries[-1].index + 1
            p.inflight.append(p.next - 1)

    def _on_append_response(self, m: AppendResponse) -> None:
        if self.role is not Role.LEADER:
            return
        p = self.progress.get(m.src)
        if p is None:
            return
        p.active = True
        if m.success:
            if m.match_index > p.match:
                p.match = m.match_index
                p.last_ack_tick = self._ticks
                while p.inflight and p.inflight[0] <= p.match:
                    p.inflight.popleft()
                if p.state is _State.PROBE:
                    p.state = _State.REPLICATE
                    p.paused = False
                    p.inflight.clear()
                p.next = max(p.next, p.match + 1)
                self._maybe_commit()
                if self.role is not Role.LEADER:
                    return  # stepped down (removed from the group)
                if self.transferee == m.src and p.match == self.log.last_index:
                    self._send(TimeoutNow(self.term, self.id, m.src))
            # An ack that advances nothing (a heartbeat's, prev = match) says
            # nothing new: a probe in flight decides where to continue.
            if p.next <= self.log.last_index:
                self._dirty.add(m.src)
            return
        # Rejected: match_index carries the prev_index the follower refused.
        rejected = m.match_index
        if rejected == p.match > 0 and m.hint_term == 0 and m.hint_index <= p.match:
            # A heartbeat (prev = match) refused because the follower's log now ends
            # before what it acknowledged: its disk was wiped or replaced. Forget the
            # match and probe from where it is (a snapshot if that was compacted).
            p.match = m.hint_index - 1
            p.probe(m.hint_index)
            self._dirty.add(m.src)
            return
        if rejected <= p.match or p.state is _State.SNAPSHOT:
            return  # stale, or a heartbeat refused while the snapshot is under way
        if m.hint_term == 0:
            next_index = m.hint_index
        else:
            last_of_term = self.log.last_index_of_term(m.hint_term, rejected)
            next_index = last_of_term + 1 if last_of_term is not None else m.hint_index
        p.probe(min(next_index, rejected))
        self._dirty.add(m.src)

    def _maybe_commit(self) -> None:
        voters = self.config.voters
        matches = [p.match for m, p in self.progress.items() if m in voters]
        if self.id in voters:
            matches.append(self.persisted_index)
        if not matches:
            return
        matches.sort(reverse=True)
        candidate = matches[self.config.quorum() - 1]
        if candidate <= self.commit:
            return
        if self.log.term_at(candidate) != self.term and not self.cfg.unsafe_commit_earlier_terms:
            return  # Raft figure 8: never commit an earlier term by counting replicas
        self._advance_commit(candidate)
        if self.id not in self.config.voters and self.config_index <= self.commit:
            self._become_follower(self.term, None)  # we were removed; the change is durable

    def _advance_commit(self, index: int) -> None:
        index = min(index, self.log.last_index)
        if index <= self.commit:
            return
        self.commit = index
        self._emit_committed()

    def _emit_committed(self) -> None:
        """Hand out committed entries; at most ``max_apply_bytes`` of them per Ready
        when they must be read back from disk (a restart replays a long log in parts)."""
        if self._emitted < self.commit:
            entries = self.log.slice(self._emitted + 1, self.commit + 1, self.cfg.max_apply_bytes)
            self._ready.committed.extend(entries)
            self._emitted = entries[-1].index

    # --- snapshots (leader side) ---------------------------------------------

    def _start_snapshot(self, member: int, p: Progress) -> None:
        if self.snapshot is None:
            return  # cannot happen: the log is only compacted by taking a snapshot
        p.state = _State.SNAPSHOT
        p.snap = self.snapshot  # later compactions must not restart this transfer
        p.snap_index = self.snapshot[0].index
        p.snap_offset = p.snap_sent = p.snap_reported = 0
        p.inflight.clear()
        self._send_snapshot_chunks(member, p)

    def _send_snapshot_chunks(self, member: int, p: Progress) -> None:
        """Fill the window of chunks in flight (go-back-N: a stall resends)."""
        meta, data = p.snap
        size = self.cfg.snapshot_chunk_size
        end = min(p.snap_offset + self.cfg.snapshot_window * size, max(1, len(data)))
        while p.snap_sent < end:
            offset = p.snap_sent
            chunk = data[offset : offset + size]
            done = offset + len(chunk) >= len(data)
            self._send(InstallSnapshot(self.term, self.id, member, meta, offset, chunk, done))
            p.snap_sent = offset + max(1, len(chunk))  # an empty snapshot is one chunk
            p.snap_sent_tick = self._ticks

    def _on_snapshot_response(self, m: InstallSnapshotResponse) -> None:
        if self.role is not Role.LEADER:
            return
        p = self.progress.get(m.src)
        if p is None or p.state is not _State.SNAPSHOT or m.snapshot_index != p.snap_index:
            return
        p.active = True
        if m.done:
            p.snap = None
            p.match = max(p.match, m.snapshot_index)
            p.last_ack_tick = self._ticks
            p.probe(m.snapshot_index + 1)
            self._maybe_commit()
            self._dirty.add(m.src)
            return
        p.snap_reported = m.next_offset
        if m.next_offset > p.snap_offset:
            p.snap_offset = m.next_offset
            p.snap_sent_tick = self._ticks
        self._send_snapshot_chunks(m.src, p)

    # --- follower -------------------------------------------------------------

    def _accept_leader(self, m) -> None:
        if self.role is not Role.FOLLOWER or self.leader_id != m.src:
            self._become_follower(m.term, m.src)
        self._election_elapsed = 0

    def _on_append(self, m: AppendRequest) -> None:
        self._accept_leader(m)
        log = self.log
        prev, entries = m.prev_index, m.entries
        if prev < log.snapshot_index:
            # Everything up to our snapshot is committed, so it matches the leader.
            skip = log.snapshot_index - prev
            entries = entries[skip:]
            prev = log.snapshot_index
            if not entries:
                match = max(log.snapshot_index, m.prev_index + len(m.entries))
                self._send_after_persist(
                    AppendResponse(self.term, self.id, m.src, True, min(match, log.last_index))
                )
                return
        elif log.term_at(prev) != m.prev_term:
            if prev > log.last_index:
                hint_index, hint_term = log.last_index + 1, 0
            else:
                hint_term = log.term_at(prev)
                hint_index = log.first_index_of_term_at(prev)
            self._send_after_persist(
                AppendResponse(self.term, self.id, m.src, False, prev, hint_index, hint_term)
            )
            return
        # Skip what we already have; truncate at the first conflict; append the rest.
        last = log.last_index
        k = 0
        for k, e in enumerate(entries):  # noqa: B007
            if e.index > last:
                break
            if log.term_at(e.index) != e.term:
                if e.index <= self.commit:
                    raise AssertionError(f"leader {m.src} conflicts with committed {e.index}")
                self._truncate(e.index)
                break
        else:
            k = len(entries)
        if k < len(entries):
            self._append_local(list(entries[k:]))
        match = prev + len(entries)
        self._advance_commit(min(m.commit, match))
        self._send_after_persist(AppendResponse(self.term, self.id, m.src, True, match))

    def _truncate(self, index: int) -> None:
        self.log.truncate_from(index)
        rd = self._ready
        if rd.truncate_from is None or index < rd.truncate_from:
            rd.truncate_from = index
        rd.entries = [e for e in rd.entries if e.index < index]
        self.persisted_index = min(self.persisted_index, index - 1)
        if self._config_indexes and self._config_indexes[-1] >= index:
            self._config_indexes = [i for i in self._config_indexes if i < index]
            self._recompute_config()

    def _on_install_snapshot(self, m: InstallSnapshot) -> None:
        self._accept_leader(m)
        meta = m.meta
        if meta.index <= self.commit:
            # we already hold it (perhaps our "done" was lost): stop the transfer
            self._send_after_persist(
                InstallSnapshotResponse(self.term, self.id, m.src, meta.index, 0, True)
            )
            return
        key = (m.src, m.term, meta.index)
        if m.offset == 0 and (self._incoming is None or self._incoming[0] != key):
            self._incoming = (key, bytearray())
        inc = self._incoming
        if inc is None or inc[0] != key or len(inc[1]) != m.offset:
            # out of order, duplicated, or from an older transfer: say where we are
            expected = len(inc[1]) if inc and inc[0] == key else 0
            self._send(InstallSnapshotResponse(self.term, self.id, m.src, meta.index, expected))
            return
        inc[1].extend(m.data)
        if not m.done:
            self._send(InstallSnapshotResponse(self.term, self.id, m.src, meta.index, len(inc[1])))
            return
        self._incoming = None
        self._restore(meta, bytes(inc[1]))
        self._send_after_persist(
            InstallSnapshotResponse(self.term, self.id, m.src, meta.index, len(inc[1]), True)
        )

    def _restore(self, meta: SnapshotMeta, data: bytes) -> None:
        if meta.index <= self.commit:
            return  # we already have everything it covers
        if self.log.term_at(meta.index) == meta.term:
            self.log.compact(meta.index)  # keep the matching suffix
            self._config_indexes = [i for i in self._config_indexes if i > meta.index]
        else:
            self.log.reset(meta.index, meta.term)
            self.persisted_index = meta.index
            self._config_indexes = []
        self._ready.entries = [e for e in self._ready.entries if e.index > meta.index]
        self.snapshot = (meta, data)
        self._ready.snapshot = (meta, data)
        self.commit = self._emitted = meta.index
        self._ready.committed = [e for e in self._ready.committed if e.index > meta.index]
        self._recompute_config()

    # --- configuration ------------------------------------------------------

    def _config_at(self, index: int) -> tuple[Configuration, int]:
        """The (configuration, entry term) in force at ``index``, from the log alone."""
        k = bisect.bisect_right(self._config_indexes, index)
        if k:
            e = self.log.entry(self._config_indexes[k - 1])
            return Configuration.decode(e.data), e.term
        if self.snapshot is not None:
            meta = self.snapshot[0]
            return meta.config, meta.config_term
        return self.bootstrap, 0

    def _recompute_config(self) -> None:
        config, term = self._config_at(self.log.last_index)
        index = self._config_indexes[-1] if self._config_indexes else 0
        if self.forced is not None and term < self.forced_term:
            config, index, self.forced_active = self.forced, 0, True
        else:
            self.forced_active = False
        self.config, self.config_index = config, index
        if self.role is Role.LEADER:
            self._sync_progress()

    # --- output helpers -------------------------------------------------------

    def _send(self, m) -> None:
        self._ready.messages.append(m)

    def _send_after_persist(self, m) -> None:
        self._ready.messages_after_persist.append(m)

    _HANDLERS = {
        VoteRequest: _on_vote_request,
        VoteResponse: _on_vote_response,
        AppendRequest: _on_append,
        AppendResponse: _on_append_response,
        InstallSnapshot: _on_install_snapshot,
        InstallSnapshotResponse: _on_snapshot_response,
        TimeoutNow: _on_timeout_now,
    }
