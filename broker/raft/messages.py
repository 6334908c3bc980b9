"""Values exchanged by the Raft core: log entries, configurations and messages.

Everything here is an immutable value with no behaviour beyond validation, so
the same objects flow through the core, the journal, the simulator and the
wire codec. Each message type has a stable numeric ``KIND`` used by the codec.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class EntryKind(IntEnum):
    NORMAL = 0  # application data
    NOOP = 1  # appended by every new leader (commits earlier terms, Raft section 5.4.2)
    CONFIG = 2  # a membership configuration, effective as soon as it is appended


@dataclass(frozen=True, slots=True)
class Entry:
    index: int
    term: int
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class Configuration:
    """The voting members of one Raft group and their election priorities.

    ``priorities`` maps member id to priority (Zeebe's scheme: the primary has
    the highest). Members missing from it have priority 1.
    """

    voters: frozenset[int]
    priorities: tuple[tuple[int, int], ...] = ()

    @staticmethod
    def of(voters, priorities: dict[int, int] | None = None) -> Configuration:
        prio = tuple(sorted((priorities or {}).items()))
        return Configuration(frozenset(voters), prio)

    def priority(self, member: int) -> int:
        for m, p in self.priorities:
            if m == member:
                return p
        return 1

    @property
    def max_priority(self) -> int:
        return max((p for m, p in self.priorities if m in self.voters), default=1)

    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    def encode(self) -> bytes:
        import msgpack

        return msgpack.packb([sorted(self.voters), [list(p) for p in self.priorities]])

    @staticmethod
    def decode(data: bytes) -> Configuration:
        import msgpack

        voters, prio = msgpack.unpackb(data)
        return Configuration(frozenset(voters), tuple((m, p) for m, p in prio))


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before a node sends any message that depends on it.

    ``forced``/``forced_term`` record a force reconfigure (region failover):
    the forced configuration overrides every configuration in the log whose
    entry term is below ``forced_term``, until a leader of the forced group
    appends a configuration entry at a term >= ``forced_term``.
    """

    term: int = 0
    vote: int | None = None
    forced: Configuration | None = None
    forced_term: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """A snapshot covers the log up to ``index`` (whose term is ``term``);
    ``config`` is the configuration in force there and ``config_term`` the term
    of the entry that established it (0 for the bootstrap configuration)."""

    index: int
    term: int
    config: Configuration
    config_term: int = 0


# --- messages -------------------------------------------------------------
# Every message carries the sender's term, its source and its destination.


@dataclass(frozen=True, slots=True)
class VoteRequest:
    KIND = 1
    term: int
    src: int
    dst: int
    last_index: int
    last_term: int
    pre_vote: bool = False
    transfer: bool = False  # leadership transfer: bypasses the leader lease


@dataclass(frozen=True, slots=True)
class VoteResponse:
    KIND = 2
    term: int
    src: int
    dst: int
    granted: bool
    pre_vote: bool = False


@dataclass(frozen=True, slots=True)
class AppendRequest:
    KIND = 3
    term: int
    src: int
    dst: int
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int


@dataclass(frozen=True, slots=True)
class AppendResponse:
    """Reply to AppendRequest.

    On success ``match_index`` is the last index the follower now holds that
    matches the leader. On rejection ``hint_index``/``hint_term`` let the leader
    skip a whole conflicting term at once (fast back-off): ``hint_term`` is the
    follower's term at ``hint_index`` (0 if the follower's log is too short),
    and ``hint_index`` is the first index of that term on the follower (or the
    follower's last index + 1 when its log is too short).
    """

    KIND = 4
    term: int
    src: int
    dst: int
    success: bool
    match_index: int = 0
    hint_index: int = 0
    hint_term: int = 0


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    KIND = 5
    term: int
    src: int
    dst: int
    meta: SnapshotMeta
    offset: int
    data: bytes
    done: bool


@dataclass(frozen=True, slots=True)
class InstallSnapshotResponse:
    KIND = 6
    term: int
    src: int
    dst: int
    snapshot_index: int
    next_offset: int  # the offset the follower expects next; -1 rejects the transfer
    done: bool = False


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Sent by a leader transferring leadership: start an election right away."""

    KIND = 7
    term: int
    src: int
    dst: int


Message = (
    VoteRequest
    | VoteResponse
    | AppendRequest
    | AppendResponse
    | InstallSnapshot
    | InstallSnapshotResponse
    | TimeoutNow
)

MESSAGE_TYPES: dict[int, type] = {
    t.KIND: t
    for t in (
        VoteRequest,
        VoteResponse,
        AppendRequest,
        AppendResponse,
        InstallSnapshot,
        InstallSnapshotResponse,
        TimeoutNow,
    )
}


@dataclass(slots=True)
class Ready:
    """Work the caller must do after feeding the core, in this order:

    1. persist, durably and in this order: ``hard_state`` (if not None);
       ``truncate_from`` (if set: drop the log from that index on);
       ``snapshot`` (if set: store it, then compact the log up to its index
       when the log holds that index with the snapshot's term, else empty
       the log so that it continues after the snapshot); ``entries``;
    2. send ``messages_after_persist`` (acks and votes that promise durability);
    3. call ``RaftNode.persisted(index, term)`` for the last entry written;
    4. restore the state machine from ``snapshot`` (if set), then apply
       ``committed`` entries in order.

    ``messages`` do not depend on the write above and may be sent at once.
    """

    hard_state: HardState | None = None
    truncate_from: int | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: tuple[SnapshotMeta, bytes] | None = None
    messages: list = field(default_factory=list)
    messages_after_persist: list = field(default_factory=list)
    committed: list[Entry] = field(default_factory=list)

    def empty(self) -> bool:
        return not (
            self.hard_state
            or self.truncate_from is not None
            or self.entries
            or self.snapshot
            or self.messages
            or self.messages_after_persist
            or self.committed
        )
