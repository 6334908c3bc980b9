"""The load generator behind ``brokerctl bench``: one thread, one selector.

A benchmark client must not be the bound it measures. ``BrokerClient`` is
made for applications (thread-safe, a Future and a deadline entry per
request, one ``sendall`` per frame), which costs more CPU per record than a
broker spends committing it. Here one thread keeps ``inflight`` appends
outstanding over one non-blocking connection per leader gateway, writes what
it has queued in one send, decodes answers in bulk and times each request.

Routing is the smart client's: the topology names each partition's leader
and every append goes straight to it (a partition whose leader is unknown
goes to the first address given, whose gateway forwards it).

With ``batch`` above 1, the records due for a partition when the loop comes
round go in one request (``records``), up to ``batch`` of them: a client that
batches what is ready, as Kafka's producer does, never waiting to fill a
batch. Each record still gets its own position and its own latency.

Latency is measured from the moment a record was due: paced runs (``rate``)
keep their schedule whatever the latency (an open loop), so a slow answer
delays nothing and is counted in full.
"""

from __future__ import annotations

import itertools
import os
import selectors
import socket
import ssl
import time
from dataclasses import dataclass, field

from broker.client import DEADLINE_MARGIN, _leaders_of, parse_addresses
from broker.transport import RECV_SIZE, connect_client
from broker.wire import (
    MAX_APPEND_RECORDS,
    MAX_FRAME_SIZE,
    FrameDecoder,
    ProtocolError,
    Request,
    Response,
    encode_frame,
)

SEND_CHUNK = 256 * 1024  # bytes handed to one send (a TLS write is whole or retried)
TICK = 0.05  # longest wait in select: deadlines and the end of the run are checked this often


@dataclass
class Load:
    """What to send: ``records`` appends of ``payload``, at most ``inflight``
    unanswered, for at most ``duration`` seconds, paced at ``rate`` records/s
    if given; to ``partition``, or round-robin over the partitions that have
    a leader; up to ``batch`` records per request."""

    records: int
    payload: bytes
    inflight: int
    duration: float
    timeout: float
    partition: int | None = None
    rate: float | None = None
    batch: int = 1

    def __post_init__(self):
        if not 1 <= self.batch <= MAX_APPEND_RECORDS:
            raise ValueError(f"batch must be 1..{MAX_APPEND_RECORDS}, got {self.batch}")


@dataclass
class Outcome:
    sent: int = 0  # records
    requests: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, of the committed
    errors: dict[str, int] = field(default_factory=dict)  # code -> records
    elapsed: float = 0.0
    cpu_s: float = 0.0  # this process's CPU time over the run

    def fail(self, code: str, n: int = 1) -> None:
        self.errors[code] = self.errors.get(code, 0) + n


class _Gateway:
    """One non-blocking, handshaken connection and what is queued for it."""

    def __init__(self, sock: socket.socket, decoder: FrameDecoder):
        sock.setblocking(False)
        self.sock = sock
        self.tls = isinstance(sock, ssl.SSLSocket)
        self.decoder = decoder  # the handshake's: it may hold the first answers already
        self.out = bytearray()
        self.retry = 0  # TLS: a write that wanted to wait is retried with the same length
        # req_id -> (when its first record was due, seconds between records' due
        # times, partition, records)
        self.waiting: dict[int, tuple[float, float, int, int]] = {}
        self.closed = False

    def send(self) -> None:
        """Hand the kernel what it takes now; a failed write closes the connection
        (a partial frame leaves the stream unusable)."""
        while self.out and not self.closed:
            size = self.retry or min(len(self.out), SEND_CHUNK)
            try:
                n = self.sock.send(self.out[:size])
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                self.retry = size if self.tls else 0
                return
            except OSError:
                self.closed = True
                return
            self.retry = 0
            del self.out[:n]

    def receive(self) -> list:
        """The frames readable now; a closed connection or a malformed frame closes
        it (the frames before are kept)."""
        frames = []
        while True:
            try:
                data = self.sock.recv(RECV_SIZE)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return frames
            except OSError:
                data = b""
            try:
                if not data:
                    raise ProtocolError("connection closed by the broker")
                frames.extend(self.decoder.feed(data))
            except ProtocolError:
                self.closed = True
                return frames
            if not self.tls and len(data) < RECV_SIZE:
                return frames  # drained (TLS reads a record at a time: on to WANT_READ)


def routes(topology: dict, load: Load, fallback: tuple[str, int]) -> dict[int, tuple[str, int]]:
    """partition -> the gateway to send its appends to."""
    count, leaders = _leaders_of(topology)
    wanted = [load.partition] if load.partition is not None else range(1, count + 1)
    return {p: leaders.get(p, fallback) for p in wanted} or {0: fallback}


def run(
    addresses: str,
    cluster_name: str,
    topology: dict,
    load: Load,
    ssl_context: ssl.SSLContext | None = None,
    connect_timeout: float = 5.0,
) -> Outcome:
    """Run ``load`` against the cluster ``topology`` describes; raises OSError (and the
    handshake's errors) if a gateway cannot be reached."""
    fallback = parse_addresses(addresses)[0]
    route = routes(topology, load, fallback)
    gateways: dict[tuple[str, int], _Gateway] = {}
    selector = selectors.DefaultSelector()
    try:
        for address in set(route.values()):
            decoder = FrameDecoder(MAX_FRAME_SIZE)
            sock, _ = connect_client(address, cluster_name, connect_timeout, decoder, ssl_context)
            gateways[address] = _Gateway(sock, decoder)
            selector.register(sock, selectors.EVENT_READ, gateways[address])
        return _drive(selector, [(p, gateways[a]) for p, a in sorted(route.items())], load)
    finally:
        selector.close()
        for g in gateways.values():
            g.sock.close()


def _drive(selector: selectors.BaseSelector, targets: list, load: Load) -> Outcome:
    out = Outcome()
    ids = itertools.count(1)
    rr = itertools.cycle(targets)
    unanswered = 0  # records
    # Each partition gets its share of the window: a partition that lags would
    # otherwise gather all of it, past what its gateway accepts in flight.
    share = _share(load.inflight, targets)
    busy = dict.fromkeys((p for p, _ in targets), 0)  # partition -> records in flight
    step = 1 / load.rate if load.rate else 0.0
    give_up = load.timeout + DEADLINE_MARGIN
    cpu0 = _cpu()
    start = time.perf_counter()
    stop_at = start + load.duration
    next_sweep = start + TICK
    watching: dict[_Gateway, int] = {}  # the events asked of the selector per gateway
    while targets:
        now = time.perf_counter()
        # 1. queue what is due: up to the window, on schedule when paced
        due_limit = load.records
        if load.rate:
            due_limit = min(due_limit, int((now - start) * load.rate) + 1)
        while out.sent < due_limit and unanswered < load.inflight and now < stop_at:
            for _ in targets:
                partition, g = next(rr)
                if busy[partition] < share:
                    break
            else:
                break  # every partition has its share in flight
            n = min(
                load.batch,
                due_limit - out.sent,
                load.inflight - unanswered,
                share - busy[partition],
            )
            busy[partition] += n
            req_id = next(ids)
            body = {"op": "append", "timeout": load.timeout}
            if load.batch == 1:
                body["data"] = load.payload
            else:
                body["records"] = [load.payload] * n
            if partition:
                body["partition"] = partition
            g.out += encode_frame(Request(req_id, body))
            g.waiting[req_id] = (start + out.sent * step if step else now, step, partition, n)
            out.sent += n
            out.requests += 1
            unanswered += n
        finished = out.sent >= load.records or now >= stop_at
        if finished and not unanswered:
            break
        # 2. write, then wait for answers (or room in the socket, or the next send)
        for g in {g for _, g in targets}:
            g.send()
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if g.out else 0)
            if watching.get(g) != events:
                selector.modify(g.sock, events, g)
                watching[g] = events
        wait = TICK
        if load.rate and not finished and unanswered < load.inflight:
            wait = max(0.0, min(wait, start + out.sent / load.rate - now))
        for key, mask in selector.select(wait):
            g = key.data
            if mask & selectors.EVENT_WRITE:
                g.send()
            if mask & selectors.EVENT_READ:
                unanswered -= _answers(g, out, busy)
        if any(g.closed for _, g in targets):  # its requests failed: go on without it
            for g in {g for _, g in targets if g.closed}:
                lost = sum(w[3] for w in g.waiting.values())
                unanswered -= lost
                out.fail("UNAVAILABLE", lost)
                g.waiting.clear()
                selector.unregister(g.sock)
            targets = [(p, g) for p, g in targets if not g.closed]
            rr = itertools.cycle(targets)
            share = _share(load.inflight, targets)
        # 3. requests past their deadline count as failed
        now = time.perf_counter()
        if now >= next_sweep:
            next_sweep = now + TICK
            for g in {g for _, g in targets}:
                late = [r for r, w in g.waiting.items() if now - w[0] > give_up]
                for r in late:
                    _, _, partition, n = g.waiting.pop(r)
                    busy[partition] -= n
                    unanswered -= n
                    out.fail("DEADLINE_EXCEEDED", n)
    out.elapsed = time.perf_counter() - start
    out.cpu_s = _cpu() - cpu0
    return out


def _share(inflight: int, targets: list) -> int:
    """Requests one partition may have in flight: its part of the window, rounded up."""
    return -(-inflight // len(targets)) if targets else inflight


def _answers(g: _Gateway, out: Outcome, busy: dict[int, int]) -> int:
    """Settle the answers readable on ``g``; returns how many records they settled."""
    now, settled = time.perf_counter(), 0
    for frame in g.receive():
        if type(frame) is not Response:
            continue
        waiting = g.waiting.pop(frame.req_id, None)
        if waiting is None:
            continue  # counted as late already
        due, step, partition, n = waiting
        busy[partition] -= n
        settled += n
        body = frame.body
        if type(body) is dict and body.get("ok") is True and body.get("count", 1) == n:
            if n == 1:
                out.latencies.append(now - due)
            else:
                out.latencies.extend([now - due - k * step for k in range(n)])
        elif type(body) is dict and body.get("ok") is True:
            out.fail("WRONG_COUNT", n)  # a broker that appended another number of records
        else:
            out.fail(str(body.get("code", "UNKNOWN")) if type(body) is dict else "UNKNOWN", n)
    return settled


def _cpu() -> float:
    t = os.times()
    return t.user + t.system
