"""The Raft message decoder under mutated valid messages: the result is either a
valid message (in range, and it re-encodes to the same thing) or MalformedFrame."""

from __future__ import annotations

from dataclasses import fields

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from broker import wire
from broker.raft.messages import (
    MAX_INDEX,
    MAX_NODE_ID,
    MAX_PARTITION_ID,
    AppendRequest,
    Configuration,
    EntryKind,
    InstallSnapshot,
    InstallSnapshotResponse,
)
from broker.wire import FrameDecoder, FrameType, MalformedFrame, ProtocolError, RaftBatch
from tests.fuzz import EDGES, FUZZ, messages, msgpack_values, partition_ids


def assert_valid(msg) -> None:
    """Every number of ``msg`` in its range, entries in sequence, configurations sane."""
    for f in fields(msg):
        value = getattr(msg, f.name)
        if type(value) is int:
            lo = -1 if f.name == "next_offset" else 0
            hi = MAX_NODE_ID if f.name in ("src", "dst") else MAX_INDEX
            assert lo <= value <= hi, (f.name, value)
    if type(msg) is AppendRequest:
        for k, e in enumerate(msg.entries):
            assert e.index == msg.prev_index + 1 + k and 0 <= e.term <= MAX_INDEX
            assert type(e.kind) is EntryKind and type(e.data) is bytes
            if e.kind is EntryKind.CONFIG:
                Configuration.decode(e.data)
    if type(msg) is InstallSnapshot:
        meta = msg.meta
        assert all(0 <= v <= MAX_INDEX for v in (meta.index, meta.term, meta.config_term))
        assert all(0 <= v <= MAX_NODE_ID for v in meta.config.voters)
    if type(msg) is InstallSnapshotResponse:
        assert msg.next_offset >= -1


def reencodes(msg) -> None:
    assert_valid(msg)
    again = wire.decode_message(msgpack.unpackb(msgpack.packb(wire.encode_message(msg))))
    assert again == msg


@FUZZ
@given(messages)
def test_valid_messages_round_trip(msg):
    reencodes(msg)


@st.composite
def mutated_raw(draw, msg) -> list:
    """The encoded message as msgpack gives it back, with one element somewhere in
    its nested lists replaced (often by an edge number), deleted or added."""
    raw = msgpack.unpackb(msgpack.packb(wire.encode_message(msg)))
    node = raw
    while True:
        i = draw(st.integers(0, len(node) - 1))
        if isinstance(node[i], list) and node[i] and draw(st.booleans()):
            node = node[i]
            continue
        action = draw(st.sampled_from(["edge", "edge", "replace", "delete", "append"]))
        if action == "edge":
            node[i] = draw(st.sampled_from([*EDGES, True, False, None, 1.0, b"", []]))
        elif action == "replace":
            node[i] = draw(msgpack_values)
        elif action == "delete":
            del node[i]
        else:
            node.append(draw(msgpack_values))
        return raw


@FUZZ
@given(st.data(), messages)
def test_mutated_messages_decode_valid_or_raise_malformed(data, msg):
    raw = data.draw(mutated_raw(msg))
    try:
        got = wire.decode_message(raw)
    except MalformedFrame:
        return
    reencodes(got)


@FUZZ
@given(st.data(), st.lists(st.tuples(partition_ids, messages), min_size=1, max_size=3))
def test_mutated_raft_bodies_decode_valid_or_raise_malformed(data, batch):
    body = bytearray(wire.raft_frame([wire.pack_raft_item(p, m) for p, m in batch])[8:])
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(body) - 1))
        body[at] = data.draw(st.integers(0, 255))
    try:
        frame = wire.decode_body(FrameType.RAFT, bytes(body))
    except MalformedFrame:
        return
    assert type(frame) is RaftBatch
    for pid, msg in frame.messages:
        assert 0 <= pid <= MAX_PARTITION_ID
        reencodes(msg)
    # and the frame as a whole goes through a decoder again unchanged
    try:
        again = list(FrameDecoder().feed(wire.encode_frame(frame)))
    except ProtocolError as e:  # pragma: no cover - would be a codec asymmetry
        raise AssertionError(f"a decoded frame does not decode again: {e}") from None
    assert again == [frame]
