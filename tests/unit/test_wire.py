import contextlib
import struct
from dataclasses import fields

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker import wire
from broker.raft.messages import (
    MESSAGE_TYPES,
    AppendRequest,
    AppendResponse,
    Configuration,
    Entry,
    EntryKind,
    InstallSnapshot,
    InstallSnapshotResponse,
    SnapshotMeta,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from broker.wire import (
    BadMagic,
    FrameDecoder,
    FrameTooLarge,
    FrameType,
    Gossip,
    Hello,
    HelloOk,
    HelloReject,
    MalformedFrame,
    ProtocolError,
    RaftBatch,
    Request,
    Response,
    TruncatedFrame,
    UnknownFrameType,
    UnsupportedVersion,
    encode_frame,
)

no_deadline = settings(deadline=None)  # example timings vary too much on a loaded CI machine

CONFIG = Configuration.of([1, 2, 3, 4], {1: 4, 2: 3, 3: 2, 4: 1})
ENTRIES = (
    Entry(5, 2),
    Entry(6, 2, EntryKind.NOOP, b""),
    Entry(7, 3, EntryKind.CONFIG, CONFIG.encode()),
    Entry(8, 3, EntryKind.NORMAL, b"\x00\xffpayload"),
)

MESSAGES = [
    VoteRequest(3, 1, 2, 10, 2),
    VoteRequest(4, 1, 2, 10, 2, pre_vote=True, transfer=True),
    VoteResponse(3, 2, 1, True),
    VoteResponse(3, 2, 1, False, pre_vote=True),
    AppendRequest(3, 1, 2, 4, 2, ENTRIES, 6),
    AppendRequest(3, 1, 2, 8, 3, (), 8),
    AppendResponse(3, 2, 1, True, match_index=8),
    AppendResponse(3, 2, 1, False, hint_index=4, hint_term=1),
    InstallSnapshot(3, 1, 2, SnapshotMeta(100, 3, CONFIG, 2), 0, b"chunk", False),
    InstallSnapshot(3, 1, 2, SnapshotMeta(100, 3, Configuration.of([1])), 5, b"", True),
    InstallSnapshotResponse(3, 2, 1, 100, 5),
    InstallSnapshotResponse(3, 2, 1, 100, -1, done=True),
    TimeoutNow(5, 1, 2),
]


def frame_bytes(frame_type: int, body: bytes, magic=b"BK", version=1) -> bytes:
    return struct.pack(">2sBBI", magic, version, frame_type, len(body)) + body


def decode_all(data: bytes, **kw) -> list:
    return list(FrameDecoder(**kw).feed(data))


def roundtrip(frame):
    (decoded,) = decode_all(encode_frame(frame))
    return decoded


def test_every_message_type_is_covered():
    assert {type(m) for m in MESSAGES} == set(MESSAGE_TYPES.values())


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_raft_message_round_trip(msg):
    packed = msgpack.packb(wire.encode_message(msg))
    assert wire.decode_message(msgpack.unpackb(packed)) == msg
    assert roundtrip(RaftBatch([(7, msg)])) == RaftBatch([(7, msg)])


def test_raft_message_encoding_is_a_compact_list():
    raw = msgpack.unpackb(msgpack.packb(wire.encode_message(MESSAGES[4])))
    assert raw == [3, 3, 1, 2, 4, 2, [[5, 2, 0, b""], [6, 2, 1, b""], [7, 3, 2, CONFIG.encode()],
                                      [8, 3, 0, b"\x00\xffpayload"]], 6]  # fmt: skip
    decoded = wire.decode_message(raw)
    assert [type(e.kind) for e in decoded.entries] == [EntryKind] * 4


@pytest.mark.parametrize(
    "frame",
    [
        Hello("dual-region", 3, 1, "peer"),
        Hello("dual-region", -1, 1, "client"),
        HelloOk(3),
        HelloReject("cluster name mismatch"),
        RaftBatch([(1, MESSAGES[0]), (2, MESSAGES[4]), (1, MESSAGES[8])]),
        RaftBatch([]),
        Request(42, {"op": "append", "data": b"x", "nested": {"a": [1, 2]}}),
        Response(42, {"ok": True, "position": 17}),
        Gossip({"members": [[1, "host", 26502]], "incarnation": 3}),
        Gossip(b"opaque"),
    ],
    ids=lambda f: type(f).__name__,
)
def test_frame_round_trip(frame):
    assert roundtrip(frame) == frame


def test_every_frame_type_has_a_test():
    covered = {Hello, HelloOk, HelloReject, RaftBatch, Request, Response, Gossip}
    assert {f.TYPE for f in covered} == set(FrameType)


def test_decoder_fed_byte_by_byte():
    frames = [Hello("c", 1, 1, "peer"), RaftBatch([(1, m) for m in MESSAGES]), Response(1, {})]
    stream = b"".join(map(encode_frame, frames))
    decoder = FrameDecoder()
    out = []
    for i in range(len(stream)):
        out.extend(decoder.feed(stream[i : i + 1]))
    assert out == frames
    assert decoder.pending == 0
    decoder.finish()


def test_decoder_keeps_frames_left_unread():
    decoder = FrameDecoder()
    frames = decoder.feed(encode_frame(HelloOk(1)) + encode_frame(HelloOk(2)))
    assert next(frames) == HelloOk(1)
    assert list(decoder.feed(b"")) == [HelloOk(2)]


def test_bad_magic():
    with pytest.raises(BadMagic, match="bad magic"):
        decode_all(frame_bytes(FrameType.HELLO_OK, msgpack.packb([1]), magic=b"GE"))


def test_unsupported_version():
    with pytest.raises(UnsupportedVersion, match="unsupported protocol version 9") as e:
        decode_all(frame_bytes(FrameType.HELLO_OK, msgpack.packb([1]), version=9))
    assert e.value.version == 9


def test_unknown_frame_type():
    with pytest.raises(UnknownFrameType, match="unknown frame type 99"):
        decode_all(frame_bytes(99, b""))


def test_oversized_length_is_refused_before_the_body_arrives():
    decoder = FrameDecoder(max_frame_size=1024)
    header = struct.pack(">2sBBI", b"BK", 1, FrameType.REQUEST, 1025)
    with pytest.raises(FrameTooLarge, match="1025 bytes exceeds limit of 1024"):
        list(decoder.feed(header))
    # At the limit is fine.
    body = msgpack.packb([1, {"x": b"a" * 1000}])
    assert decode_all(frame_bytes(FrameType.REQUEST, body), max_frame_size=len(body))


def test_default_frame_limit_is_4_mib():
    assert wire.MAX_FRAME_SIZE == FrameDecoder().max_frame_size == 4 * 1024 * 1024


def test_undecodable_body():
    with pytest.raises(MalformedFrame, match="undecodable REQUEST body"):
        decode_all(frame_bytes(FrameType.REQUEST, b"\xc1"))  # 0xc1 is never valid msgpack
    with pytest.raises(MalformedFrame, match="undecodable"):
        decode_all(frame_bytes(FrameType.REQUEST, msgpack.packb([1, {}]) + b"\x01"))


def test_truncated_stream():
    data = encode_frame(Request(1, {"a": 1}))
    decoder = FrameDecoder()
    assert list(decoder.feed(data[:-1])) == []
    with pytest.raises(TruncatedFrame):
        decoder.finish()
    header_only = FrameDecoder()
    assert list(header_only.feed(data[:8])) == []
    with pytest.raises(TruncatedFrame):
        header_only.finish()


@pytest.mark.parametrize(
    "frame_type, body",
    [
        (FrameType.HELLO, ["c", 1, 1]),
        (FrameType.HELLO, ["c", "1", 1, "peer"]),
        (FrameType.HELLO, ["c", 1, 1, "observer"]),
        (FrameType.HELLO_OK, [True]),
        (FrameType.HELLO_REJECT, "reason"),
        (FrameType.REQUEST, [1, [1, 2]]),
        (FrameType.RESPONSE, {"req_id": 1}),
        (FrameType.RAFT, {"not": "a list"}),
        (FrameType.RAFT, [[1]]),
        (FrameType.RAFT, [["1", [7, 1, 1, 2]]]),
        (FrameType.RAFT, [[1, [99, 1, 1, 2]]]),  # unknown message kind
        (FrameType.RAFT, [[1, []]]),
        (FrameType.RAFT, [[1, [7, 1, 1]]]),  # TimeoutNow missing a field
        (FrameType.RAFT, [[1, [7, 1, 1, 2, 3]]]),  # one field too many
        (FrameType.RAFT, [[1, [2, 1, 2, 1, 1, False]]]),  # int where a bool belongs
        (FrameType.RAFT, [[1, [3, 1, 1, 2, 0, 0, 5, 0]]]),  # entries not a list
        (FrameType.RAFT, [[1, [3, 1, 1, 2, 0, 0, [5], 0]]]),  # entry not a list
        (FrameType.RAFT, [[1, [3, 1, 1, 2, 0, 0, [[1, 1, 0]], 0]]]),
        (FrameType.RAFT, [[1, [3, 1, 1, 2, 0, 0, [[1, 1, 0, "str"]], 0]]]),
        (FrameType.RAFT, [[1, [3, 1, 1, 2, 0, 0, [[1, 1, 9, b""]], 0]]]),  # bad entry kind
        (FrameType.RAFT, [[1, [5, 1, 1, 2, [1, 1, [[1], []]], 0, b"", True]]]),  # short meta
        (FrameType.RAFT, [[1, [5, 1, 1, 2, [1, 1, [["x"], []], 0], 0, b"", True]]]),
        (FrameType.RAFT, [[1, [5, 1, 1, 2, [1, 1, [[1], [[1]]], 0], 0, b"", True]]]),
        (FrameType.RAFT, [[1, [5, 1, 1, 2, [1, 1, [[1], 3], 0], 0, b"", True]]]),
    ],
)
def test_malformed_body(frame_type, body):
    with pytest.raises(MalformedFrame):
        decode_all(frame_bytes(frame_type, msgpack.packb(body)))


def test_protocol_errors_are_one_family():
    for cls in (BadMagic, UnsupportedVersion, UnknownFrameType, FrameTooLarge, MalformedFrame):
        assert issubclass(cls, ProtocolError)
    assert ProtocolError("why").reason == "why"


def test_raft_frame_from_prepacked_items():
    items = [wire.pack_raft_item(p, m) for p, m in enumerate(MESSAGES)]
    (decoded,) = decode_all(wire.raft_frame(items))
    assert decoded == RaftBatch(list(enumerate(MESSAGES)))


def test_large_raft_batches_use_wide_array_headers():
    msg = TimeoutNow(1, 1, 2)
    for n in (15, 16, 65535, 65536):
        (decoded,) = decode_all(wire.raft_frame([wire.pack_raft_item(1, msg)] * n))
        assert len(decoded.messages) == n


ints = st.integers(min_value=0, max_value=2**62)  # terms and indexes: 0..2**62


@st.composite
def append_requests(draw) -> AppendRequest:
    # Entries follow prev_index one by one; CONFIG entries hold a configuration.
    prev = draw(st.integers(0, 2**62 - 20))
    entries = []
    for k in range(draw(st.integers(0, 20))):
        kind = draw(st.sampled_from(list(EntryKind)))
        data = CONFIG.encode() if kind is EntryKind.CONFIG else draw(st.binary(max_size=300))
        entries.append(Entry(prev + 1 + k, draw(ints), kind, data))
    return AppendRequest(
        draw(ints), draw(st.integers(0, 1000)), draw(st.integers(0, 1000)), prev, draw(ints),
        tuple(entries), draw(ints),
    )  # fmt: skip


@no_deadline
@given(st.lists(st.tuples(st.integers(0, 2**31 - 1), append_requests()), max_size=5))
def test_append_request_round_trip_property(batch):
    frame = RaftBatch(batch)
    assert roundtrip(frame) == frame


def decodes_or_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        list(FrameDecoder(max_frame_size=1024).feed(data))


@no_deadline
@given(st.binary(max_size=200))
def test_garbage_stream_only_raises_protocol_error(data):
    decodes_or_protocol_error(b"BK\x01" + data)


@no_deadline
@given(st.sampled_from(FrameType), st.binary(max_size=200))
def test_garbage_body_only_raises_protocol_error(frame_type, body):
    decodes_or_protocol_error(frame_bytes(frame_type, body))


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.binary() | st.text(),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=30,
)


@no_deadline
@given(st.sampled_from(FrameType), msgpack_values)
def test_wrongly_shaped_body_only_raises_protocol_error(frame_type, value):
    decodes_or_protocol_error(frame_bytes(frame_type, msgpack.packb(value)))


@no_deadline
@given(st.integers(0, 2**31), msgpack_values)
def test_wrongly_shaped_raft_message_only_raises_protocol_error(kind, fields):
    raw = [kind % 8, *fields] if isinstance(fields, list) else [kind % 8, fields]
    decodes_or_protocol_error(frame_bytes(FrameType.RAFT, msgpack.packb([[1, raw]])))


@no_deadline
@given(st.sampled_from(MESSAGES), st.data())
def test_mutated_raft_message_only_raises_protocol_error(msg, data):
    raw = msgpack.unpackb(msgpack.packb(wire.encode_message(msg)))
    node = raw
    while True:  # walk down to a random element of the nested lists, then change it
        i = data.draw(st.integers(0, len(node) - 1))
        if isinstance(node[i], list) and node[i] and data.draw(st.booleans()):
            node = node[i]
            continue
        action = data.draw(st.sampled_from(["replace", "delete", "append"]))
        if action == "replace":
            node[i] = data.draw(msgpack_values)
        elif action == "delete":
            del node[i]
        else:
            node.append(data.draw(msgpack_values))
        break
    decodes_or_protocol_error(frame_bytes(FrameType.RAFT, msgpack.packb([[1, raw]])))


def test_raft_message_layout_is_pinned():
    # The wire layout follows the dataclass field order. If this fails, a
    # message changed: update docs/protocol.md and decide on a version bump.
    layout = {kind: [f.name for f in fields(cls)] for kind, cls in MESSAGE_TYPES.items()}
    assert layout == {
        1: ["term", "src", "dst", "last_index", "last_term", "pre_vote", "transfer"],
        2: ["term", "src", "dst", "granted", "pre_vote"],
        3: ["term", "src", "dst", "prev_index", "prev_term", "entries", "commit"],
        4: ["term", "src", "dst", "success", "match_index", "hint_index", "hint_term"],
        5: ["term", "src", "dst", "meta", "offset", "data", "done"],
        6: ["term", "src", "dst", "snapshot_index", "next_offset", "done"],
        7: ["term", "src", "dst"],
    }
    assert [f.name for f in fields(SnapshotMeta)] == ["index", "term", "config", "config_term"]
