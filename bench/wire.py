"""Micro-benchmark of the wire codec on its hot path: AppendRequests carrying
batches of entries, encoded into RAFT frames and decoded back."""

from __future__ import annotations

import statistics
import time

from broker.raft.messages import AppendRequest, Entry
from broker.wire import FrameDecoder, pack_raft_item, raft_frame

ENTRIES = 64
ENTRY_SIZE = 100


def _sample_message() -> AppendRequest:
    entries = tuple(Entry(1000 + i, 7, data=bytes(ENTRY_SIZE)) for i in range(ENTRIES))
    return AppendRequest(7, 1, 2, 999, 7, entries, 1000)


def bench_codec(duration: float = 0.5, rounds: int = 5) -> dict:
    """Encode + decode rate of one AppendRequest (64 x 100 B entries) per frame.

    Runs ``rounds`` timed rounds of about ``duration`` seconds and reports the
    median rate, in messages per second.
    """
    msg = _sample_message()
    decoder = FrameDecoder()
    rates = []
    for _ in range(rounds):
        n = 0
        start = time.perf_counter()
        deadline = start + duration
        while time.perf_counter() < deadline:
            for _ in range(100):
                frame = raft_frame([pack_raft_item(1, msg)])
                for decoded in decoder.feed(frame):
                    assert decoded.messages[0][1].commit == msg.commit
            n += 100
        rates.append(n / (time.perf_counter() - start))
    rate = statistics.median(rates)
    return {
        "case": f"AppendRequest, {ENTRIES} x {ENTRY_SIZE} B entries",
        "frame_bytes": len(raft_frame([pack_raft_item(1, msg)])),
        "messages_s": rate,
        "entries_s": rate * ENTRIES,
    }


TITLE = "Wire codec: encode + decode of RAFT frames (median of 5 rounds)"
COLUMNS = [
    ("case", "case", "{}"),
    ("frame_bytes", "frame bytes", "{:,}"),
    ("messages_s", "messages/s", "{:,.0f}"),
    ("entries_s", "entries/s", "{:,.0f}"),
]


def run() -> list[dict]:
    return [bench_codec()]


def summary(rows: list[dict]) -> list[str]:
    return [f"wire codec: {rows[0]['entries_s']:,.0f} entries/s encoded and decoded"]
