"""Decoding limits of the wire codec: bodies are refused before they are
allocated, numbers out of range are refused naming the field (issue 12)."""

from __future__ import annotations

import struct
import time
import tracemalloc

import msgpack
import pytest

from broker import wire
from broker.raft.messages import (
    MAX_INDEX,
    MAX_NODE_ID,
    MAX_PARTITION_ID,
    MAX_TERM,
    MAX_VOTERS,
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
    HANDSHAKE_MAX_FRAME,
    FrameDecoder,
    FrameTooLarge,
    FrameType,
    Gossip,
    Hello,
    MalformedFrame,
    RaftBatch,
    Request,
    UnexpectedFrame,
    encode_frame,
)

CONFIG = Configuration.of([1, 2, 3], {1: 3, 2: 2})


def frame(frame_type: int, body: bytes) -> bytes:
    return struct.pack(">2sBBI", b"BK", 1, frame_type, len(body)) + body


def decode(data: bytes, **kw) -> list:
    return list(FrameDecoder(**kw).feed(data))


def empty_arrays(n: int) -> bytes:
    """A msgpack array of ``n`` empty arrays: 1 byte each on the wire, ~64 in memory."""
    return b"\xdd" + n.to_bytes(4, "big") + b"\x90" * n


def bounded(fn, max_seconds: float, max_bytes: int):
    """Run ``fn`` and fail if it takes longer or allocates more (peak) than given."""
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        try:
            fn()
        finally:
            elapsed = time.perf_counter() - t0
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < max_seconds, f"took {elapsed:.2f} s"
    assert peak < max_bytes, f"allocated {peak} bytes"


# --- finding 1: limits before allocation ----------------------------------------


def test_a_4_mib_hello_of_empty_arrays_is_refused_from_its_header():
    body = empty_arrays(4 * 1024 * 1024 - 5)
    data = frame(FrameType.HELLO, body)
    # Whatever the connection's limit, a HELLO is a small frame: refused from the
    # header, before its body is read.
    for decoder in (FrameDecoder(HANDSHAKE_MAX_FRAME), FrameDecoder(wire.MAX_FRAME_SIZE)):
        with pytest.raises(FrameTooLarge, match=f"limit of {HANDSHAKE_MAX_FRAME}"):
            list(decoder.feed(data[: wire.HEADER_SIZE]))


def test_a_hello_within_the_handshake_limit_must_have_the_hello_shape():
    with pytest.raises(MalformedFrame, match="max_array_len"):
        decode(frame(FrameType.HELLO, empty_arrays(HANDSHAKE_MAX_FRAME - 5)))
    with pytest.raises(MalformedFrame):
        decode(frame(FrameType.HELLO, msgpack.packb(["c", 1, 1, "peer", "extra"])))
    with pytest.raises(MalformedFrame, match="cluster name"):
        decode(encode_frame(Hello("x" * 256, 1, 1, "peer")))
    with pytest.raises(MalformedFrame, match="HELLO node_id"):
        decode(encode_frame(Hello("c", -2, 1, "client")))
    with pytest.raises(MalformedFrame, match="HELLO node_id"):
        decode(encode_frame(Hello("c", MAX_NODE_ID + 1, 1, "peer")))
    assert decode(encode_frame(Hello("c" * 255, -1, 1, "client"))) == [
        Hello("c" * 255, -1, 1, "client")
    ]
    assert decode(encode_frame(Hello("c", MAX_NODE_ID, 1, "peer")))[0].node_id == MAX_NODE_ID


def test_the_limit_is_raised_after_the_handshake_and_types_are_refused_by_state():
    decoder = FrameDecoder(HANDSHAKE_MAX_FRAME, accept=wire.ACCEPTOR_HANDSHAKE)
    request = encode_frame(Request(1, {"op": "append", "data": b"x" * 100_000}))
    with pytest.raises(UnexpectedFrame, match="unexpected REQUEST"):
        list(decoder.feed(request[: wire.HEADER_SIZE]))  # refused before the body
    decoder = FrameDecoder(HANDSHAKE_MAX_FRAME, accept=wire.ACCEPTOR_HANDSHAKE)
    (hello,) = decoder.feed(encode_frame(Hello("c", -1, 1, "client")))
    assert hello.role == "client"
    decoder.max_frame_size = wire.MAX_FRAME_SIZE
    decoder.accept = wire.FROM_CLIENT
    assert list(decoder.feed(request)) == [Request(1, {"op": "append", "data": b"x" * 100_000})]
    with pytest.raises(UnexpectedFrame, match="unexpected RAFT"):
        list(decoder.feed(encode_frame(RaftBatch([(1, TimeoutNow(1, 1, 2))]))))


def test_a_4_mib_request_of_empty_arrays_costs_neither_memory_nor_time():
    size = 4 * 1024 * 1024 - 16
    bodies = [
        b"\x92\x01\x81\xa1a" + empty_arrays(size),  # [1, {"a": [[], [], ...]}]
        b"\x92\x01\x81\xa1a" + b"\x91" * 600 + b"\x90",  # deep
        b"\x92\x01\x81\xa1a" + b"\x9f" + (b"\x9f" + b"\x90" * 15) * 15,  # many containers
    ]
    for body in bodies:
        data = frame(FrameType.REQUEST, body)

        def run(data=data):
            with pytest.raises(MalformedFrame):
                decode(data)

        # The body itself is in the buffer (4 MiB, twice while copied); decoding
        # may not add a structure ~64 times the size (330 MB before the fix).
        bounded(run, max_seconds=0.5, max_bytes=3 * len(data) + (1 << 20))


def test_any_body_is_bounded_by_the_frame_size_for_the_unpacker():
    # An array header claiming more elements than the body has bytes is refused
    # before the unpacker allocates the list.
    body = b"\xdd" + (1 << 31).to_bytes(4, "big") + b"\x90" * 10
    for t in (FrameType.GOSSIP, FrameType.RAFT, FrameType.RESPONSE, FrameType.REQUEST):
        with pytest.raises(MalformedFrame, match="exceeds max_array_len"):
            decode(frame(t, body))


def test_nesting_is_bounded():
    def nested(depth: int):
        value: object = []
        for _ in range(depth - 1):
            value = [value]
        return value

    assert decode(encode_frame(Gossip(nested(wire.MAX_NESTING))))[0] == Gossip(
        nested(wire.MAX_NESTING)
    )
    with pytest.raises(MalformedFrame, match="nested deeper"):
        decode(encode_frame(Gossip(nested(wire.MAX_NESTING + 1))))
    with pytest.raises(MalformedFrame, match="nested deeper"):
        decode(encode_frame(Gossip({"a": nested(wire.MAX_NESTING)})))
    deep = {"op": "append", "x": nested(wire.MAX_NESTING)}
    with pytest.raises(MalformedFrame, match="nested deeper"):
        decode(encode_frame(Request(1, deep)))


def test_requests_are_limited_in_items_and_containers():
    ok = {"op": "put", **{f"k{i}": i for i in range(wire.REQUEST_MAX_ITEMS - 1)}}
    assert decode(encode_frame(Request(1, ok))) == [Request(1, ok)]
    too_many = {"op": "put", **{f"k{i}": i for i in range(wire.REQUEST_MAX_ITEMS)}}
    with pytest.raises(MalformedFrame, match="max_map_len"):
        decode(encode_frame(Request(1, too_many)))
    containers = {f"k{i}": [[]] for i in range(wire.REQUEST_MAX_CONTAINERS // 2)}
    with pytest.raises(MalformedFrame, match="more than the allowed maps and arrays"):
        decode(encode_frame(Request(1, containers)))


def test_extension_types_are_refused():
    for ext in (msgpack.ExtType(1, b""), msgpack.ExtType(5, b"abcd"), msgpack.Timestamp(1)):
        body = msgpack.packb([1, {"op": ext}])
        for t in (FrameType.REQUEST, FrameType.GOSSIP, FrameType.RESPONSE):
            with pytest.raises(MalformedFrame):
                decode(frame(t, body))


def test_raft_bodies_have_no_maps_and_no_strings():
    for bad in ([[1, {"a": 1}]], [[1, [7, "x", 1, 2]]]):
        with pytest.raises(MalformedFrame, match=r"max_(map|str)_len"):
            decode(frame(FrameType.RAFT, msgpack.packb(bad)))


# --- finding 2: numbers in range --------------------------------------------------

BIG = 2**64 - 1
ENTRY = Entry(5, 2, EntryKind.NORMAL, b"x")
META = SnapshotMeta(100, 3, CONFIG, 2)


def raft(msg, pid: int = 1) -> bytes:
    return wire.raft_frame([wire.pack_raft_item(pid, msg)])


@pytest.mark.parametrize(
    ("msg", "field"),
    [
        (VoteRequest(BIG, 1, 2, 1, 1), "VoteRequest.term"),
        (VoteRequest(MAX_TERM + 1, 1, 2, 1, 1), "VoteRequest.term"),
        (VoteRequest(1, -1, 2, 1, 1), "VoteRequest.src"),
        (VoteRequest(1, 1, MAX_NODE_ID + 1, 1, 1), "VoteRequest.dst"),
        (VoteRequest(1, 1, 2, -1, 1), "VoteRequest.last_index"),
        (VoteRequest(1, 1, 2, 1, BIG), "VoteRequest.last_term"),
        (VoteResponse(BIG, 1, 2, True), "VoteResponse.term"),
        (AppendRequest(1, 1, 2, MAX_INDEX + 1, 1, (), 0), "AppendRequest.prev_index"),
        (AppendRequest(1, 1, 2, 4, 1, (), -1), "AppendRequest.commit"),
        (AppendRequest(1, 1, 2, 4, 1, (Entry(5, BIG),), 5), "entry term"),
        (AppendRequest(1, 1, 2, 4, 1, (Entry(-5, 1),), 5), "entry index"),
        (AppendResponse(1, 2, 1, True, match_index=-3), "AppendResponse.match_index"),
        (AppendResponse(1, 2, 1, False, hint_term=BIG), "AppendResponse.hint_term"),
        (InstallSnapshot(1, 1, 2, META, -1, b"", False), "InstallSnapshot.offset"),
        (
            InstallSnapshot(1, 1, 2, SnapshotMeta(BIG, 3, CONFIG), 0, b"", True),
            "snapshot meta index",
        ),
        (
            InstallSnapshot(1, 1, 2, SnapshotMeta(1, 3, CONFIG, -1), 0, b"", True),
            "snapshot meta config_term",
        ),
        (InstallSnapshotResponse(1, 2, 1, 100, -2), "InstallSnapshotResponse.next_offset"),
        (InstallSnapshotResponse(1, 2, 1, -100, 0), "InstallSnapshotResponse.snapshot_index"),
        (TimeoutNow(BIG, 1, 2), "TimeoutNow.term"),
    ],
)
def test_numbers_out_of_range_are_refused_naming_the_field(msg, field):
    with pytest.raises(MalformedFrame, match=field.replace(".", r"\.")):
        decode(raft(msg))


def test_the_largest_values_in_range_round_trip():
    top = AppendRequest(
        MAX_TERM,
        MAX_NODE_ID,
        0,
        MAX_INDEX - 1,
        MAX_TERM,
        (Entry(MAX_INDEX, MAX_TERM),),
        MAX_INDEX,
    )
    meta = SnapshotMeta(MAX_INDEX, MAX_TERM, Configuration.of([MAX_NODE_ID]), MAX_TERM)
    msgs = [
        top,
        InstallSnapshot(MAX_TERM, 0, MAX_NODE_ID, meta, MAX_INDEX, b"", True),
        InstallSnapshotResponse(MAX_TERM, 1, 2, MAX_INDEX, -1, True),
        VoteRequest(MAX_TERM, 1, 2, MAX_INDEX, MAX_TERM, True, True),
    ]
    for msg in msgs:
        batch = RaftBatch([(MAX_PARTITION_ID, msg)])
        assert decode(encode_frame(batch)) == [batch]


def test_partition_ids_are_31_bit():
    with pytest.raises(MalformedFrame, match="partition_id"):
        decode(raft(TimeoutNow(1, 1, 2), pid=MAX_PARTITION_ID + 1))
    with pytest.raises(MalformedFrame, match="partition_id"):
        decode(raft(TimeoutNow(1, 1, 2), pid=-1))


def test_booleans_are_booleans():
    raw = wire.encode_message(VoteResponse(1, 2, 1, True))
    raw[4] = 1  # granted
    with pytest.raises(MalformedFrame, match="VoteResponse"):
        decode(frame(FrameType.RAFT, msgpack.packb([[1, raw]])))
    raw = wire.encode_message(VoteRequest(1, 1, 2, 3, 1))
    raw[1] = True  # a bool where the term belongs
    with pytest.raises(MalformedFrame, match="VoteRequest"):
        decode(frame(FrameType.RAFT, msgpack.packb([[1, raw]])))


def test_entries_follow_prev_index_and_have_known_kinds():
    msg = AppendRequest(1, 1, 2, 4, 1, (Entry(5, 1), Entry(7, 1)), 5)
    with pytest.raises(MalformedFrame, match="entry 1 has index 7, expected 6"):
        decode(raft(msg))
    raw = msgpack.unpackb(
        msgpack.packb(wire.encode_message(AppendRequest(1, 1, 2, 4, 1, (ENTRY,), 5)))
    )
    raw[6][0][2] = 9  # kind
    with pytest.raises(MalformedFrame, match="unknown kind 9"):
        decode(frame(FrameType.RAFT, msgpack.packb([[1, raw]])))


def test_configurations_are_checked_in_metadata_and_in_entries():
    def config_entry(data: bytes) -> AppendRequest:
        return AppendRequest(1, 1, 2, 4, 1, (Entry(5, 1, EntryKind.CONFIG, data),), 5)

    bad = [
        msgpack.packb([[-1, 2], []]),
        msgpack.packb([[1, MAX_NODE_ID + 1], []]),
        msgpack.packb([[1, 2], [[1, -5]]]),
        msgpack.packb([[1, 2], [[1, 2, 3]]]),
        msgpack.packb([list(range(MAX_VOTERS + 1)), []]),
        msgpack.packb([[True], []]),
        b"\xc1",
        msgpack.packb("x"),
    ]
    for data in bad:
        with pytest.raises(MalformedFrame, match="configuration"):
            decode(raft(config_entry(data)))
        with pytest.raises(ValueError, match="configuration"):
            Configuration.decode(data)
    good = config_entry(CONFIG.encode())
    assert decode(raft(good)) == [RaftBatch([(1, good)])]
    meta = wire.encode_message(InstallSnapshot(1, 1, 2, META, 0, b"", True))
    meta[4][2][0] = [1, -2]  # voters
    with pytest.raises(MalformedFrame, match="configuration voter -2"):
        decode(frame(FrameType.RAFT, msgpack.packb([[1, meta]])))


# --- finding 3: what is accepted can be replicated ----------------------------------


@pytest.mark.parametrize("limit", [wire.MAX_FRAME_SIZE, 1 << 16, 1 << 20])
def test_the_largest_command_fits_in_a_replication_frame(limit):
    size = wire.max_command_size(limit)
    entry = Entry(MAX_INDEX, MAX_TERM, EntryKind.NORMAL, b"x" * size)
    msg = AppendRequest(
        MAX_TERM, MAX_NODE_ID, MAX_NODE_ID, MAX_INDEX - 1, MAX_TERM, (entry,), MAX_INDEX
    )
    item = wire.pack_raft_item(MAX_PARTITION_ID, msg)
    # The transport puts an item in a frame when it is at most limit - 5 bytes
    # (room for the batch's array header); the frame's body is within the limit.
    assert len(item) <= limit - 5
    data = wire.raft_frame([item])
    assert len(data) - wire.HEADER_SIZE <= limit
    assert decode(data, max_frame_size=limit) == [RaftBatch([(MAX_PARTITION_ID, msg)])]
    # The overhead is measured, not guessed: with the widest bin header (data of
    # 64 KiB or more) it is exactly what the encoder adds.
    if size >= 1 << 16:
        assert len(item) + 5 - size == wire.REPLICATION_OVERHEAD


def test_the_refusal_names_the_limit():
    message = wire.command_too_large(5_000_000)
    assert str(wire.max_command_size()) in message and "exceeds" in message


def test_a_small_request_with_too_many_containers_is_refused_after_decoding():
    # Bodies up to SMALL_REQUEST bytes are decoded without the counting hooks and
    # counted afterwards: the limit and the message are the same.
    body = {"op": "put", "a": [[] for _ in range(wire.REQUEST_MAX_ITEMS - 1)]}
    frame = encode_frame(Request(1, body))
    assert len(frame) < wire.SMALL_REQUEST
    with pytest.raises(MalformedFrame, match="more than the allowed maps and arrays"):
        decode(frame)
    fits = {"op": "put", "a": [[] for _ in range(wire.REQUEST_MAX_CONTAINERS - 3)]}
    assert decode(encode_frame(Request(1, fits))) == [Request(1, fits)]
