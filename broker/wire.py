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
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from enum import IntEnum
from operator import attrgetter
from typing import Any

import msgpack

from broker.raft.messages import (
    MESSAGE_TYPES,
    Configuration,
    Entry,
    EntryKind,
    SnapshotMeta,
)

MAGIC = b"BK"
PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = frozenset({PROTOCOL_VERSION})
MAX_FRAME_SIZE = 4 * 1024 * 1024  # largest body accepted, by default

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


# --- Raft message codec -----------------------------------------------------


def _malformed(what: str) -> MalformedFrame:
    return MalformedFrame(f"malformed {what}")


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
        if tuple(map(type, e)) != _ENTRY_TYPES:
            raise _malformed("entry")
        index, term, kind, data = e
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
    if any(type(v) is not int for v in voters):
        raise _malformed("configuration voters")
    prio = tuple(map(tuple, priorities))
    if any(tuple(map(type, p)) != (int, int) for p in prio):
        raise _malformed("configuration priorities")
    return Configuration(frozenset(voters), prio)


def _encode_meta(m: SnapshotMeta) -> list:
    return [m.index, m.term, _encode_config(m.config), m.config_term]


def _decode_meta(raw: list) -> SnapshotMeta:
    if tuple(map(type, raw)) != (int, int, list, int):
        raise _malformed("snapshot meta")
    index, term, config, config_term = raw
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

    __slots__ = ("cls", "getter", "kind", "nested", "types")

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

    def encode(self, msg) -> list:
        values = list(self.getter(msg))
        for i, enc, _ in self.nested:
            values[i] = enc(values[i])
        return [self.kind, *values]

    def decode(self, raw: list):
        values = raw[1:]
        if tuple(map(type, values)) != self.types:
            raise _malformed(f"{self.cls.__name__}")
        for i, _, dec in self.nested:
            values[i] = dec(values[i])
        return self.cls(*values)


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
    if type(frame) is RaftBatch:
        return raft_frame([pack_raft_item(p, m) for p, m in frame.messages])
    body = msgpack.packb(_frame_body(frame))
    return _header(frame.TYPE, len(body)) + body


# --- frame decoding ---------------------------------------------------------


def _shape(body: Any, types: tuple[type, ...], what: str) -> list:
    if type(body) is not list or tuple(map(type, body)) != types:
        raise _malformed(what)
    return body


def _decode_hello(body: Any) -> Hello:
    cluster, node_id, version, role = _shape(body, (str, int, int, str), "HELLO")
    if role not in ROLES:
        raise _malformed(f"HELLO: unknown role {role!r}")
    return Hello(cluster, node_id, version, role)


def _decode_raft(body: Any) -> RaftBatch:
    if type(body) is not list:
        raise _malformed("RAFT batch")
    messages = []
    for item in body:
        if type(item) is not list or len(item) != 2 or type(item[0]) is not int:
            raise _malformed("RAFT batch item")
        messages.append((item[0], decode_message(item[1])))
    return RaftBatch(messages)


def _decode_request(body: Any) -> Request:
    return Request(*_shape(body, (int, dict), "REQUEST"))


def _decode_response(body: Any) -> Response:
    return Response(*_shape(body, (int, dict), "RESPONSE"))


_BODY_DECODERS = {
    FrameType.HELLO: _decode_hello,
    FrameType.HELLO_OK: lambda b: HelloOk(*_shape(b, (int,), "HELLO_OK")),
    FrameType.HELLO_REJECT: lambda b: HelloReject(*_shape(b, (str,), "HELLO_REJECT")),
    FrameType.RAFT: _decode_raft,
    FrameType.REQUEST: _decode_request,
    FrameType.RESPONSE: _decode_response,
    FrameType.GOSSIP: Gossip,
}


def decode_body(frame_type: int, body: bytes | bytearray) -> Frame:
    try:
        value = msgpack.unpackb(body)
    except Exception as e:
        # msgpack signals bad input with many exception types (ExtraData,
        # FormatError, StackError, ValueError, UnicodeDecodeError...).
        raise MalformedFrame(f"undecodable {FrameType(frame_type).name} body: {e}") from None
    return _BODY_DECODERS[frame_type](value)


class FrameDecoder:
    """Incremental decoder: ``feed`` bytes, iterate the complete frames.

    The header is checked as soon as it has arrived, so an oversized length is
    refused before its body is read. After a ``ProtocolError`` the stream is
    unusable and the connection should be closed.
    """

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE):
        self.max_frame_size = max_frame_size
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
        if length > self.max_frame_size:
            raise FrameTooLarge(f"frame of {length} bytes exceeds limit of {self.max_frame_size}")
        return frame_type, length
