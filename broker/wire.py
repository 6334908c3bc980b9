"""Framing and message codec for the broker's TCP protocol (see docs/protocol.md).

A frame is an 8-byte header (magic, protocol version, frame type, body
length) followed by a msgpack body. ``FrameDecoder`` turns a byte stream into
frame objects and reports every kind of bad input as a ``ProtocolError``
subclass, never as a generic exception, so a transport can close the
offending connection with a precise reason.

Raft messages travel as compact lists ``[KIND, field values...]`` in the order
of the dataclass fields; the per-type layout is computed once at import.
"""

from __future__ import annotations

import struct
import threading
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from enum import IntEnum
from operator import attrgetter
from typing import Any

import msgpack

from broker.raft.messages import (
    MAX_INDEX,
    MAX_NODE_ID,
    MAX_PARTITION_ID,
    MAX_TERM,
    MESSAGE_TYPES,
    AppendRequest,
    Configuration,
    Entry,
    EntryKind,
    SnapshotMeta,
    check_configuration,
)

_packb = msgpack.packb

MAGIC = b"BK"
PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = frozenset({PROTOCOL_VERSION})
MAX_FRAME_SIZE = 4 * 1024 * 1024  # largest body accepted, by default
# Largest body of a frame before the handshake has completed, and of any HELLO,
# HELLO_OK or HELLO_REJECT: a stranger cannot make a node decode megabytes.
HANDSHAKE_MAX_FRAME = 4096
MAX_CLUSTER_NAME = 255  # characters of the cluster name in a HELLO
# Decoding limits of the bodies whose shape is not fixed (REQUEST, RESPONSE, GOSSIP):
MAX_NESTING = 32  # arrays and maps inside one another
REQUEST_MAX_ITEMS = 64  # entries of any map in a REQUEST body
# Items of any array in a REQUEST body: the records of an append (MAX_APPEND_RECORDS).
# Each item takes at least a byte of the frame, so this bounds nothing the frame
# size does not; the count of containers stays bounded below.
REQUEST_MAX_ARRAY = 10_000
REQUEST_MAX_CONTAINERS = 64  # maps and arrays in a REQUEST body, all together
SMALL_REQUEST = 4096  # bytes: containers counted after decoding, not during

HEADER = struct.Struct(">2sBBI")
HEADER_SIZE = HEADER.size

ROLE_PEER = "peer"
ROLE_CLIENT = "client"
ROLES = (ROLE_PEER, ROLE_CLIENT)


class FrameType(IntEnum):
    HELLO = 1
    HELLO_OK = 2
    HELLO_REJECT = 3
    RAFT = 4
    REQUEST = 5
    RESPONSE = 6
    GOSSIP = 7


_REQUEST = int(FrameType.REQUEST)  # a plain int compares faster on the per-request path
_RESPONSE = int(FrameType.RESPONSE)


# --- errors -----------------------------------------------------------------


class ProtocolError(Exception):
    """The peer broke the protocol; ``reason`` says how (for logs and rejects)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class BadMagic(ProtocolError):
    pass


class UnsupportedVersion(ProtocolError):
    def __init__(self, reason: str, version: int):
        super().__init__(reason)
        self.version = version


class UnknownFrameType(ProtocolError):
    pass


class FrameTooLarge(ProtocolError):
    pass


class MalformedFrame(ProtocolError):
    """The body is not valid msgpack or does not have the frame type's shape."""


class TruncatedFrame(ProtocolError):
    """The stream ended in the middle of a frame."""


class UnexpectedFrame(ProtocolError):
    """A frame of a type the connection does not accept in its state (see
    ``FrameDecoder.accept``), refused from its header before its body is read."""


# --- frames -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """First frame on every connection; ``node_id`` is -1 for a client."""

    TYPE = FrameType.HELLO
    cluster: str
    node_id: int
    version: int
    role: str


@dataclass(frozen=True, slots=True)
class HelloOk:
    TYPE = FrameType.HELLO_OK
    node_id: int  # the accepting node, so a dialer can check it reached the right one


@dataclass(frozen=True, slots=True)
class HelloReject:
    TYPE = FrameType.HELLO_REJECT
    reason: str


@dataclass(frozen=True, slots=True)
class RaftBatch:
    """Raft messages from one node to another: ``(partition_id, message)`` pairs."""

    TYPE = FrameType.RAFT
    messages: list[tuple[int, Any]]


@dataclass(frozen=True, slots=True)
class Request:
    TYPE = FrameType.REQUEST
    req_id: int
    body: dict


@dataclass(frozen=True, slots=True)
class Response:
    TYPE = FrameType.RESPONSE
    req_id: int
    body: dict


@dataclass(frozen=True, slots=True)
class Gossip:
    """An opaque payload (any msgpack value) for the membership layer."""

    TYPE = FrameType.GOSSIP
    payload: Any


Frame = Hello | HelloOk | HelloReject | RaftBatch | Request | Response | Gossip

# What each side of a connection may receive, by state (``FrameDecoder.accept``).
HANDSHAKE_FRAMES = frozenset({FrameType.HELLO, FrameType.HELLO_OK, FrameType.HELLO_REJECT})
ACCEPTOR_HANDSHAKE = frozenset({FrameType.HELLO})  # an accepted connection's first frame
DIALER_HANDSHAKE = frozenset({FrameType.HELLO_OK, FrameType.HELLO_REJECT})
FROM_CLIENT = frozenset({FrameType.REQUEST})  # what a client may send after its HELLO
FROM_PEER = frozenset({FrameType.RAFT, FrameType.GOSSIP, FrameType.REQUEST})
FROM_GATEWAY = frozenset({FrameType.RESPONSE})  # what a client receives


# --- Raft message codec -----------------------------------------------------


def _malformed(what: str) -> MalformedFrame:
    return MalformedFrame(f"malformed {what}")


def _out_of_range(what: str, value: int, lo: int, hi: int) -> MalformedFrame:
    return MalformedFrame(f"malformed {what}: {value} is not in {lo}..{hi}")


# Range of each integer field of the Raft messages, by name; every other integer
# field is a term, an index, an offset or a count in 0..MAX_INDEX (MAX_TERM ==
# MAX_INDEX).
_FIELD_RANGES = {
    "src": (0, MAX_NODE_ID),
    "dst": (0, MAX_NODE_ID),
    "next_offset": (-1, MAX_INDEX),  # -1 rejects a snapshot transfer
}


_ENTRY_KINDS = {k.value: k for k in EntryKind}
_ENTRY_FIELDS = ("index", "term", "kind", "data")
_ENTRY_TYPES = (int, int, int, bytes)
if tuple(f.name for f in fields(Entry)) != _ENTRY_FIELDS:
    raise TypeError("wire: Entry fields changed; update the entry codec")
_entry_values = attrgetter(*_ENTRY_FIELDS)
# Entries are the bulk of the traffic. Filling the slots directly skips the
# frozen dataclass __init__ (four object.__setattr__ calls) and makes
# decoding about 40% faster; the check above keeps this in step with Entry.
_new = object.__new__
_set_index, _set_term, _set_kind, _set_data = (getattr(Entry, f).__set__ for f in _ENTRY_FIELDS)


def _encode_entries(entries: Sequence[Entry]) -> list:
    return list(map(_entry_values, entries))


def _decode_entries(raw: list) -> tuple[Entry, ...]:
    out = []
    for e in raw:
        # One tuple comparison checks both the arity and every field's type.
        if type(e) is not list or tuple(map(type, e)) != _ENTRY_TYPES:
            raise _malformed("entry")
        index, term, kind, data = e
        if not 0 <= index <= MAX_INDEX:
            raise _out_of_range("entry index", index, 0, MAX_INDEX)
        if not 0 <= term <= MAX_TERM:
            raise _out_of_range("entry term", term, 0, MAX_TERM)
        if kind not in _ENTRY_KINDS:
            raise _malformed(f"entry: unknown kind {kind}")
        if kind == EntryKind.CONFIG:
            try:
                Configuration.decode(data)
            except ValueError as exc:
                raise _malformed(f"configuration entry {index}: {exc}") from None
        entry = _new(Entry)
        _set_index(entry, index)
        _set_term(entry, term)
        _set_kind(entry, _ENTRY_KINDS[kind])
        _set_data(entry, data)
        out.append(entry)
    return tuple(out)


def _encode_config(c: Configuration) -> list:
    return [sorted(c.voters), [list(p) for p in c.priorities]]


def _decode_config(raw: list) -> Configuration:
    if tuple(map(type, raw)) != (list, list):
        raise _malformed("configuration")
    voters, priorities = raw
    try:
        check_configuration(voters, priorities)
    except ValueError as exc:
        raise _malformed(str(exc)) from None
    return Configuration(frozenset(voters), tuple(map(tuple, priorities)))


def _encode_meta(m: SnapshotMeta) -> list:
    return [m.index, m.term, _encode_config(m.config), m.config_term]


def _decode_meta(raw: list) -> SnapshotMeta:
    if tuple(map(type, raw)) != (int, int, list, int):
        raise _malformed("snapshot meta")
    index, term, config, config_term = raw
    if not 0 <= index <= MAX_INDEX:
        raise _out_of_range("snapshot meta index", index, 0, MAX_INDEX)
    if not 0 <= term <= MAX_TERM:
        raise _out_of_range("snapshot meta term", term, 0, MAX_TERM)
    if not 0 <= config_term <= MAX_TERM:
        raise _out_of_range("snapshot meta config_term", config_term, 0, MAX_TERM)
    return SnapshotMeta(index, term, _decode_config(config), config_term)


# Field type hint -> (wire type after msgpack decoding, encoder, decoder).
# ``None`` codecs mean the value travels as is.
_FIELD_CODECS: dict[Any, tuple[type, Any, Any]] = {
    int: (int, None, None),
    bool: (bool, None, None),
    bytes: (bytes, None, None),
    tuple[Entry, ...]: (list, _encode_entries, _decode_entries),
    SnapshotMeta: (list, _encode_meta, _decode_meta),
}


class _MessageCodec:
    """Precomputed layout of one Raft message type."""

    __slots__ = ("cls", "getter", "kind", "nested", "ranges", "types")

    def __init__(self, cls: type):
        hints = typing.get_type_hints(cls)
        names = [f.name for f in fields(cls)]
        specs = []
        for name in names:
            if hints[name] not in _FIELD_CODECS:
                raise TypeError(f"wire: no codec for {cls.__name__}.{name}: {hints[name]}")
            specs.append(_FIELD_CODECS[hints[name]])
        self.cls = cls
        self.kind = cls.KIND
        self.getter = attrgetter(*names)
        self.types = tuple(s[0] for s in specs)
        self.nested = tuple((i, enc, dec) for i, (_, enc, dec) in enumerate(specs) if enc)
        self.ranges = tuple(
            (i, *_FIELD_RANGES.get(name, (0, MAX_INDEX)), name)
            for i, name in enumerate(names)
            if hints[name] is int
        )

    def encode(self, msg) -> list:
        values = list(self.getter(msg))
        for i, enc, _ in self.nested:
            values[i] = enc(values[i])
        return [self.kind, *values]

    def decode(self, raw: list):
        values = raw[1:]
        if tuple(map(type, values)) != self.types:
            raise _malformed(f"{self.cls.__name__}")
        for i, lo, hi, name in self.ranges:
            if not lo <= values[i] <= hi:
                raise _out_of_range(f"{self.cls.__name__}.{name}", values[i], lo, hi)
        for i, _, dec in self.nested:
            values[i] = dec(values[i])
        msg = self.cls(*values)
        if self.cls is AppendRequest:
            _check_append(msg)
        return msg


def _check_append(m: AppendRequest) -> None:
    """The entries of an AppendRequest follow ``prev_index`` one by one."""
    first = m.prev_index + 1
    for k, e in enumerate(m.entries):
        if e.index != first + k:
            raise _malformed(f"AppendRequest: entry {k} has index {e.index}, expected {first + k}")


_CODECS_BY_KIND = {kind: _MessageCodec(cls) for kind, cls in MESSAGE_TYPES.items()}
_CODECS_BY_TYPE = {c.cls: c for c in _CODECS_BY_KIND.values()}


def encode_message(msg) -> list:
    """A Raft message as a msgpack-ready list ``[KIND, field values...]``."""
    return _CODECS_BY_TYPE[type(msg)].encode(msg)


def decode_message(raw):
    """The inverse of ``encode_message`` after a msgpack round trip (lists, not
    tuples); raises ``MalformedFrame`` on bad input."""
    if type(raw) is not list or not raw:
        raise _malformed("raft message")
    codec = _CODECS_BY_KIND.get(raw[0]) if type(raw[0]) is int else None
    if codec is None:
        raise _malformed(f"raft message: unknown kind {raw[0]!r}")
    try:
        return codec.decode(raw)
    except ProtocolError:
        raise
    except (TypeError, ValueError, KeyError) as e:
        # Non-iterables where lists belong, bad entry kinds, unhashable voters...
        raise _malformed(f"{codec.cls.__name__}: {e}") from None


# --- frame encoding ---------------------------------------------------------


def _header(frame_type: int, length: int) -> bytes:
    return HEADER.pack(MAGIC, PROTOCOL_VERSION, frame_type, length)


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def pack_raft_item(partition_id: int, msg) -> bytes:
    """One ``[partition_id, message]`` element of a RAFT body, already packed.

    Packing items one by one lets a sender split a batch into frames under the
    size limit without encoding anything twice (see ``raft_frame``).
    """
    return msgpack.packb([partition_id, encode_message(msg)])


def raft_frame(packed_items: Sequence[bytes]) -> bytes:
    """A complete RAFT frame from items made by ``pack_raft_item``."""
    body = _array_header(len(packed_items)) + b"".join(packed_items)
    return _header(FrameType.RAFT, len(body)) + body


def _replication_overhead() -> int:
    """Bytes a RAFT frame body adds around an entry's data when that entry is the
    only one of an AppendRequest, every number at its largest (measured with the
    encoder itself, the data long enough to take the widest bin header)."""
    size = 1 << 16
    entry = Entry(MAX_INDEX, MAX_TERM, EntryKind.NORMAL, bytes(size))
    msg = AppendRequest(
        MAX_TERM, MAX_NODE_ID, MAX_NODE_ID, MAX_INDEX - 1, MAX_TERM, (entry,), MAX_INDEX
    )
    # A sender's batch starts with an array header of up to 5 bytes.
    return 5 + len(pack_raft_item(MAX_PARTITION_ID, msg)) - size


REPLICATION_OVERHEAD = _replication_overhead()
# Room for the fields around a command when a gateway forwards its request to the
# partition's leader (a GOSSIP frame: the link's envelope, the field names, the
# partition, the deadline); measured at about 100 bytes, this leaves a margin.
FORWARD_OVERHEAD = 256
# Records one append request may carry (``records``). They are proposed together
# (one entry, consecutive positions), so a client that batches its appends pays
# the request's decoding, routing and answer once for all of them. Their commands
# together are bounded like any other command (``max_command_size``).
MAX_APPEND_RECORDS = REQUEST_MAX_ARRAY


def max_command_size(max_frame_size: int = MAX_FRAME_SIZE) -> int:
    """The largest command (the data of one Raft entry: an encoded append, put or
    cas) that a broker with this frame limit accepts: one larger could not be
    replicated nor forwarded in one frame."""
    return max_frame_size - REPLICATION_OVERHEAD - FORWARD_OVERHEAD


def command_too_large(size: int, max_frame_size: int = MAX_FRAME_SIZE) -> str:
    """The refusal of a command of ``size`` bytes (gateway and client say the same)."""
    return (
        f"request too large: its command of {size} bytes exceeds the limit of "
        f"{max_command_size(max_frame_size)} bytes (network.maxFrameSize "
        f"{max_frame_size} less the replication overhead)"
    )


def _frame_body(frame: Frame) -> Any:
    match frame:
        case Hello(cluster, node_id, version, role):
            return [cluster, node_id, version, role]
        case HelloOk(node_id):
            return [node_id]
        case HelloReject(reason):
            return [reason]
        case Request(req_id, body) | Response(req_id, body):
            return [req_id, body]
        case Gossip(payload):
            return payload
    raise TypeError(f"not a frame: {frame!r}")


def encode_frame(frame: Frame) -> bytes:
    """The bytes of one frame (header + body)."""
    t = type(frame)
    if t is RaftBatch:
        return raft_frame([pack_raft_item(p, m) for p, m in frame.messages])
    if t is Response or t is Request:  # the per-request path: no pattern matching
        return _request_frame(frame.TYPE, frame.req_id, frame.body)
    body = _packb(_frame_body(frame))
    return _header(frame.TYPE, len(body)) + body


def encode_response(req_id: int, body: dict) -> bytes:
    """``encode_frame(Response(req_id, body))``, without building the Response."""
    return _request_frame(_RESPONSE, req_id, body)


_packers = threading.local()


def _request_frame(frame_type: int, req_id: int, body: dict) -> bytes:
    # A Packer per thread: packb builds a new one on every call, which costs as much
    # as packing an answer.
    packer = getattr(_packers, "packer", None)
    if packer is None:
        packer = _packers.packer = msgpack.Packer()
    data = packer.pack([req_id, body])
    return HEADER.pack(MAGIC, PROTOCOL_VERSION, frame_type, len(data)) + data


# --- frame decoding ---------------------------------------------------------


def _shape(body: Any, types: tuple[type, ...], what: str) -> list:
    if type(body) is not list or tuple(map(type, body)) != types:
        raise _malformed(what)
    return body


def _decode_hello(body: Any) -> Hello:
    cluster, node_id, version, role = _shape(body, (str, int, int, str), "HELLO")
    if len(cluster) > MAX_CLUSTER_NAME:
        raise _malformed(f"HELLO: cluster name longer than {MAX_CLUSTER_NAME} characters")
    if not -1 <= node_id <= MAX_NODE_ID:  # -1: a client
        raise _out_of_range("HELLO node_id", node_id, -1, MAX_NODE_ID)
    if not 0 <= version <= 255:
        raise _out_of_range("HELLO version", version, 0, 255)
    if role not in ROLES:
        raise _malformed(f"HELLO: unknown role {role[:32]!r}")
    return Hello(cluster, node_id, version, role)


def _decode_hello_ok(body: Any) -> HelloOk:
    (node_id,) = _shape(body, (int,), "HELLO_OK")
    if not 0 <= node_id <= MAX_NODE_ID:
        raise _out_of_range("HELLO_OK node_id", node_id, 0, MAX_NODE_ID)
    return HelloOk(node_id)


def _decode_raft(body: Any) -> RaftBatch:
    if type(body) is not list:
        raise _malformed("RAFT batch")
    messages = []
    for item in body:
        if type(item) is not list or len(item) != 2 or type(item[0]) is not int:
            raise _malformed("RAFT batch item")
        if not 0 <= item[0] <= MAX_PARTITION_ID:
            raise _out_of_range("RAFT batch item partition_id", item[0], 0, MAX_PARTITION_ID)
        messages.append((item[0], decode_message(item[1])))
    return RaftBatch(messages)


def _check_nesting(value: Any, what: str, max_containers: int | None = None) -> None:
    """Refuse maps and arrays nested deeper than ``MAX_NESTING`` (a consumer that
    walks or re-encodes the value must not hit a recursion limit), and more than
    ``max_containers`` of them below ``value`` (None: any number)."""
    stack = [(value, 1)]
    left = max_containers
    while stack:
        v, depth = stack.pop()
        if depth > MAX_NESTING:
            raise _malformed(f"{what}: nested deeper than {MAX_NESTING}")
        items = v.values() if type(v) is dict else v
        for x in items:
            if type(x) is list or type(x) is dict:
                stack.append((x, depth + 1))
                if left is not None:
                    left -= 1
                    if left < 0:
                        raise _too_many_containers(what)


def _too_many_containers(what: str) -> ProtocolError:
    return _malformed(f"{what}: more than the allowed maps and arrays")


def _decode_request(body: Any) -> Request:
    req_id, fields_ = _shape(body, (int, dict), "REQUEST")
    # the body and the fields map are two of the containers allowed
    _check_nesting(fields_, "REQUEST", REQUEST_MAX_CONTAINERS - 2)
    return Request(req_id, fields_)


def _decode_response(body: Any) -> Response:
    return Response(*_shape(body, (int, dict), "RESPONSE"))


def _decode_gossip(body: Any) -> Gossip:
    if type(body) is list or type(body) is dict:
        _check_nesting(body, "GOSSIP")
    return Gossip(body)


_BODY_DECODERS = {
    FrameType.HELLO: _decode_hello,
    FrameType.HELLO_OK: _decode_hello_ok,
    FrameType.HELLO_REJECT: lambda b: HelloReject(*_shape(b, (str,), "HELLO_REJECT")),
    FrameType.RAFT: _decode_raft,
    FrameType.REQUEST: _decode_request,
    FrameType.RESPONSE: _decode_response,
    FrameType.GOSSIP: _decode_gossip,
}


def _no_ext(code: int, data: bytes) -> Any:
    raise _malformed(f"msgpack extension type {code}")


class _Counter:
    """A list/object hook that refuses more than ``limit`` containers, during the
    decoding: a body of thousands of tiny arrays stops at the first one too many."""

    __slots__ = ("left", "what")

    def __init__(self, limit: int, what: str):
        self.left = limit
        self.what = what

    def __call__(self, value):
        self.left -= 1
        if self.left < 0:
            raise _too_many_containers(self.what)
        return value


# A small body cannot hold a string longer than itself (the unpacker checks what is
# left of the buffer), so one limit serves every small request: no dict per request.
_SMALL_REQUEST_LIMITS = {
    "max_array_len": REQUEST_MAX_ARRAY,
    "max_map_len": REQUEST_MAX_ITEMS,
    "max_str_len": SMALL_REQUEST,
    "max_bin_len": SMALL_REQUEST,
}


def _unpack_limits(frame_type: int, size: int) -> dict:
    """msgpack limits for a body of ``size`` bytes of ``frame_type``: checked by
    the unpacker before it allocates, so a small body cannot claim a huge array."""
    if frame_type == _REQUEST:  # first: it is every client request
        if size <= SMALL_REQUEST:
            return _SMALL_REQUEST_LIMITS
        # Count the containers while decoding: a large body of tiny arrays stops at
        # the first one too many. A small body cannot hold enough to matter;
        # _decode_request counts them afterwards (same limit), which saves two hook
        # calls on every ordinary request.
        counter = _Counter(REQUEST_MAX_CONTAINERS, "REQUEST")
        limits = {
            "max_array_len": REQUEST_MAX_ARRAY,
            "max_map_len": REQUEST_MAX_ITEMS,
            "max_str_len": size,
            "max_bin_len": size,
            "list_hook": counter,
            "object_hook": counter,
        }
        return limits
    if frame_type == FrameType.HELLO:
        return {"max_array_len": 4, "max_map_len": 0, "max_str_len": size, "max_bin_len": 0}
    if frame_type in (FrameType.HELLO_OK, FrameType.HELLO_REJECT):
        return {"max_array_len": 1, "max_map_len": 0, "max_str_len": size, "max_bin_len": 0}
    if frame_type == FrameType.RAFT:
        # Lists of numbers, booleans and bytes only: no map, no string.
        return {"max_array_len": size, "max_map_len": 0, "max_str_len": 0, "max_bin_len": size}
    return {
        "max_array_len": size,
        "max_map_len": size // 2,
        "max_str_len": size,
        "max_bin_len": size,
    }


def decode_body(frame_type: int, body: bytes | bytearray) -> Frame:
    """The frame of ``frame_type`` whose body is ``body``; ``MalformedFrame`` when
    the body is not msgpack, breaks a decoding limit or lacks the frame's shape."""
    try:
        value = msgpack.unpackb(
            body, ext_hook=_no_ext, max_ext_len=0, **_unpack_limits(frame_type, len(body))
        )
    except ProtocolError:
        raise
    except Exception as e:
        # msgpack signals bad input with many exception types (ExtraData,
        # FormatError, StackError, ValueError, UnicodeDecodeError...).
        raise MalformedFrame(f"undecodable {FrameType(frame_type).name} body: {e}") from None
    return _BODY_DECODERS[frame_type](value)


class FrameDecoder:
    """Incremental decoder: ``feed`` bytes, iterate the complete frames.

    The header is checked as soon as it has arrived, so an oversized length or
    a frame type outside ``accept`` is refused before its body is read. After a
    ``ProtocolError`` the stream is unusable and the connection should be closed.

    Both limits are attributes the owner may change between frames, e.g. once a
    handshake has completed: ``max_frame_size`` (largest body; a connection
    starts with ``HANDSHAKE_MAX_FRAME`` and is raised to the configured limit
    after its HELLO) and ``accept`` (the frame types allowed, None for all; e.g.
    ``ACCEPTOR_HANDSHAKE``, then ``FROM_CLIENT`` or ``FROM_PEER``). Whatever the
    limit, HELLO, HELLO_OK and HELLO_REJECT bodies are at most
    ``HANDSHAKE_MAX_FRAME`` bytes.
    """

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE, accept: frozenset[int] | None = None):
        self.max_frame_size = max_frame_size
        self.accept = accept
        self._buf = bytearray()
        self._pos = 0
        self._header: tuple[int, int] | None = None  # (type, length) of the frame in progress

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet form a complete frame."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> Iterator[Frame]:
        """Buffer ``data`` and iterate the frames now complete (frames left
        unread when the iteration stops early come out of the next ``feed``)."""
        self._buf += data
        return self._frames()

    def finish(self) -> None:
        """The stream has ended: raise ``TruncatedFrame`` if a frame is incomplete."""
        if self._header is not None or self.pending:
            raise TruncatedFrame(f"stream ended inside a frame ({self.pending} bytes pending)")

    def _frames(self) -> Iterator[Frame]:
        while True:
            frame = self._next()
            if frame is None:
                if self._pos:
                    del self._buf[: self._pos]
                    self._pos = 0
                return
            yield frame

    def _next(self) -> Frame | None:
        if self._header is None:
            if self.pending < HEADER_SIZE:
                return None
            self._header = self._check_header(HEADER.unpack_from(self._buf, self._pos))
            self._pos += HEADER_SIZE
        frame_type, length = self._header
        if self.pending < length:
            return None
        body = self._buf[self._pos : self._pos + length]
        self._pos += length
        self._header = None
        return decode_body(frame_type, body)

    def _check_header(self, header: tuple) -> tuple[int, int]:
        magic, version, frame_type, length = header
        if magic != MAGIC:
            raise BadMagic(f"bad magic {magic!r} (expected {MAGIC!r})")
        if version not in SUPPORTED_VERSIONS:
            raise UnsupportedVersion(
                f"unsupported protocol version {version} (supported: {sorted(SUPPORTED_VERSIONS)})",
                version,
            )
        if frame_type not in _BODY_DECODERS:
            raise UnknownFrameType(f"unknown frame type {frame_type}")
        if self.accept is not None and frame_type not in self.accept:
            raise UnexpectedFrame(f"unexpected {FrameType(frame_type).name} frame")
        if frame_type in HANDSHAKE_FRAMES and length > HANDSHAKE_MAX_FRAME:
            raise FrameTooLarge(
                f"{FrameType(frame_type).name} of {length} bytes exceeds limit of "
                f"{HANDSHAKE_MAX_FRAME}"
            )
        if length > self.max_frame_size:
            raise FrameTooLarge(f"frame of {length} bytes exceeds limit of {self.max_frame_size}")
        return frame_type, length
