"""The frame decoder under arbitrary and mutated input, fed in random chunks:
only ProtocolError subclasses escape, buffering and decoding stay bounded."""

from __future__ import annotations

import itertools
import struct
import time

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from broker import wire
from broker.wire import (
    HEADER_SIZE,
    FrameDecoder,
    FrameType,
    Gossip,
    Hello,
    HelloOk,
    HelloReject,
    ProtocolError,
    RaftBatch,
    Request,
    Response,
    encode_frame,
)
from tests.fuzz import FUZZ, messages, msgpack_values, partition_ids

LIMIT = 64 * 1024  # the decoders' frame limit here: big enough for every example
SLOW = 0.5  # seconds: no example may take this long to decode

fields = st.dictionaries(st.text(max_size=8), msgpack_values, max_size=6)
frames = st.one_of(
    st.builds(
        Hello,
        st.text(max_size=20),
        st.integers(-1, 2**31 - 1),
        st.just(1),
        st.sampled_from(wire.ROLES),
    ),
    st.builds(HelloOk, st.integers(0, 2**31 - 1)),
    st.builds(HelloReject, st.text(max_size=50)),
    st.builds(RaftBatch, st.lists(st.tuples(partition_ids, messages), min_size=1, max_size=4)),
    st.builds(Request, st.integers(0, 2**32), fields),
    st.builds(Response, st.integers(0, 2**32), fields),
    st.builds(Gossip, msgpack_values),
)


@st.composite
def mutated(draw, data: bytes) -> bytes:
    """``data`` with a few random edits: bytes flipped, inserted, deleted, a length
    field rewritten, the stream cut short."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "insert", "delete", "length", "cut", "type"]))
        at = draw(st.integers(0, max(0, len(buf) - 1)))
        if action == "flip" and buf:
            buf[at] ^= draw(st.integers(1, 255))
        elif action == "insert":
            buf[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete" and buf:
            del buf[at : at + draw(st.integers(1, 8))]
        elif action == "length" and len(buf) >= HEADER_SIZE:
            buf[4:8] = struct.pack(">I", draw(st.integers(0, 2 * LIMIT)))
        elif action == "cut":
            del buf[at:]
        elif action == "type" and len(buf) >= HEADER_SIZE:
            buf[3] = draw(st.integers(0, 255))
    return bytes(buf)


def feed_in_chunks(data: bytes, cuts: list[int], **kw) -> list:
    """Decode ``data`` fed in pieces; only ProtocolError may escape (it is
    returned, not raised, so the caller can look at it)."""
    decoder = FrameDecoder(LIMIT, **kw)
    out: list = []
    positions = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    t0 = time.perf_counter()
    try:
        for a, b in itertools.pairwise(positions):
            out.extend(decoder.feed(data[a:b]))
            # What is buffered never exceeds one frame (the limit) plus a header.
            assert decoder.pending <= LIMIT + HEADER_SIZE
        decoder.finish()
    except ProtocolError as e:
        out.append(e)
    assert time.perf_counter() - t0 < SLOW
    return out


chunk_cuts = st.lists(st.integers(0, 10**6), max_size=12)


@FUZZ
@given(st.binary(max_size=600), chunk_cuts)
def test_arbitrary_bytes(data, cuts):
    feed_in_chunks(data, cuts)
    feed_in_chunks(b"BK\x01" + data, cuts)  # past the magic, into the header checks


@FUZZ
@given(st.sampled_from(FrameType), st.binary(max_size=600), chunk_cuts)
def test_arbitrary_bodies_behind_a_valid_header(frame_type, body, cuts):
    data = struct.pack(">2sBBI", b"BK", 1, frame_type, len(body)) + body
    feed_in_chunks(data, cuts)


@FUZZ
@given(st.sampled_from(FrameType), msgpack_values, chunk_cuts)
def test_arbitrary_msgpack_bodies(frame_type, value, cuts):
    body = msgpack.packb(value)
    feed_in_chunks(struct.pack(">2sBBI", b"BK", 1, frame_type, len(body)) + body, cuts)


@FUZZ
@given(st.lists(frames, min_size=1, max_size=3), chunk_cuts)
def test_valid_frames_decode_whole_in_any_chunks(batch, cuts):
    data = b"".join(encode_frame(f) for f in batch)
    out = feed_in_chunks(data, cuts)
    decoded = [f for f in out if not isinstance(f, ProtocolError)]
    if len(decoded) == len(out):  # values the codec refuses (deep, too many items) aside
        # Compared as bytes: a NaN in a body is not equal to itself.
        assert b"".join(encode_frame(f) for f in decoded) == data


@FUZZ
@given(st.data(), st.lists(frames, min_size=1, max_size=3), chunk_cuts)
def test_mutated_frames(data, batch, cuts):
    stream = data.draw(mutated(b"".join(encode_frame(f) for f in batch)))
    for frame in feed_in_chunks(stream, cuts):
        if isinstance(frame, RaftBatch):  # what got through is valid: it re-encodes
            assert feed_in_chunks(encode_frame(frame), []) == [frame]


@FUZZ
@given(st.data(), frames)
def test_the_handshake_state_accepts_only_a_small_hello(data, frame):
    stream = data.draw(mutated(encode_frame(frame)) | st.just(encode_frame(frame)))
    for got in feed_in_chunks(stream, [], accept=wire.ACCEPTOR_HANDSHAKE):
        assert isinstance(got, Hello | ProtocolError)


containers = st.recursive(
    st.just([]) | st.just({}) | st.integers(0, 3),
    lambda children: (
        st.lists(children, max_size=80)
        | st.dictionaries(st.text(max_size=3), children, max_size=80)
    ),
    max_leaves=150,
)


def shape(value, depth: int = 1) -> tuple[int, int]:
    """(containers, depth) of a decoded value."""
    if type(value) not in (list, dict):
        return 0, depth - 1
    items = value.values() if type(value) is dict else value
    count, deepest = 1, depth
    for x in items:
        c, d = shape(x, depth + 1)
        count, deepest = count + c, max(deepest, d)
    return count, deepest


@FUZZ
@given(containers)
def test_a_decoded_request_is_small_in_structure(value):
    body = msgpack.packb([1, {"op": "x", "v": value}])
    out = feed_in_chunks(struct.pack(">2sBBI", b"BK", 1, FrameType.REQUEST, len(body)) + body, [])
    (got,) = out
    if not isinstance(got, ProtocolError):
        count, depth = shape(got.body)
        assert count <= wire.REQUEST_MAX_CONTAINERS
        assert depth <= wire.MAX_NESTING
