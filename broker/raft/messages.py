"""Values exchanged by the Raft core: log entries, configurations and messages.

Everything here is an immutable value with no behaviour beyond validation, so
the same objects flow through the core, the journal, the simulator and the
wire codec. Each message type has a stable numeric ``KIND`` used by the codec.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

# Ranges of the numbers a peer may send (the wire codec refuses the rest). A term
# or index stays well inside 64 bits so that ``term + 1`` and ``index + 1`` always
# encode; node and partition ids are 31-bit.
MAX_TERM = 2**62
MAX_INDEX = 2**62  # log indexes, snapshot offsets and sizes
MAX_NODE_ID = 2**31 - 1
MAX_PARTITION_ID = 2**31 - 1
MAX_PRIORITY = 2**31 - 1
MAX_VOTERS = 1024  # members of one configuration


def check_configuration(voters, priorities) -> None:
    """Raise ``ValueError`` naming the field unless ``voters`` is a list of node ids
    and ``priorities`` a list of ``[node id, priority]`` pairs, both bounded."""
    if type(voters) is not list or len(voters) > MAX_VOTERS:
        raise ValueError(f"configuration voters: a list of at most {MAX_VOTERS} node ids")
    if type(priorities) is not list or len(priorities) > MAX_VOTERS:
        raise ValueError(f"configuration priorities: a list of at most {MAX_VOTERS} pairs")
    for v in voters:
        if type(v) is not int or not 0 <= v <= MAX_NODE_ID:
            raise ValueError(f"configuration voter {v!r}: not a node id in 0..{MAX_NODE_ID}")
    for p in priorities:
        if type(p) not in (list, tuple) or len(p) != 2:
            raise ValueError("configuration priorities: each is a [node id, priority] pair")
        member, prio = p
        if type(member) is not int or not 0 <= member <= MAX_NODE_ID:
            raise ValueError(f"configuration priority member {member!r}: not a node id")
        if type(prio) is not int or not 0 <= prio <= MAX_PRIORITY:
            raise ValueError(f"configuration priority {prio!r}: not in 0..{MAX_PRIORITY}")


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

        try:
            raw = msgpack.unpackb(data)
        except Exception as e:  # msgpack reports bad input with many exception types
            raise ValueError(f"undecodable configuration: {e}") from None
        if type(raw) is not list or len(raw) != 2:
            raise ValueError("configuration: not a [voters, priorities] pair")
        voters, prio = raw
        check_configuration(voters, prio)
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
