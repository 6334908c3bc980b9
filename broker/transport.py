"""TCP transport between brokers, and for clients (see docs/protocol.md).

Every node listens on one port. An inbound connection gets a short-lived
thread for its handshake (TLS, then HELLO, bounded by ``handshake_timeout``);
then the transport's I/O loop (``broker.ioloop``, one thread) reads and
writes it with every other connection. Outbound, each node dials each peer
once (from a small pool of dialer threads) and keeps the connection for its
own traffic to that peer: what is queued for the peer is written by the I/O
loop as few RAFT frames (one unless the size limit forces a split). Traffic
from the peer arrives on the connection the peer dialed, so outbound sockets
are never read after the handshake, except to notice that they closed.

Handlers (``on_raft``, ``on_request``, ``on_gossip``) run on the I/O loop's
thread: they must hand work on, never wait.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import select
import socket
import ssl
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from broker import batching
from broker.batching import SENDS
from broker.ioloop import IoLoop
from broker.tls import certified_node, describe_failure
from broker.wire import (
    ACCEPTOR_HANDSHAKE,
    DIALER_HANDSHAKE,
    FROM_CLIENT,
    FROM_GATEWAY,
    FROM_PEER,
    HANDSHAKE_MAX_FRAME,
    MAX_FRAME_SIZE,
    PROTOCOL_VERSION,
    ROLE_CLIENT,
    ROLE_PEER,
    FrameDecoder,
    Gossip,
    Hello,
    HelloOk,
    HelloReject,
    ProtocolError,
    RaftBatch,
    Request,
    Response,
    UnsupportedVersion,
    encode_frame,
    encode_response,
    pack_raft_item,
    raft_frame,
)

log = logging.getLogger("broker.transport")

RECV_SIZE = 256 * 1024
# Responses queued on one accepted connection and not yet written to its socket.
# A client that leaves more than this unread (it stopped reading its answers)
# loses its connection, so that its answers neither block the partition threads
# that produce them nor pile up in memory. Read responses are at most ~2 MiB.
MAX_OUTBOUND_BYTES = 64 * 1024 * 1024
WRITE_BATCH_BYTES = 1024 * 1024  # the writer joins queued frames into writes of about this
TLS_WRITE_CHUNK = 16 * 1024  # one TLS record: the unit of a non-blocking TLS write
# The ``reason`` label of broker_transport_bad_frames_total, from a fixed set.
BAD_FRAME_REASONS = {
    "FrameTooLarge": "oversized",
    "MalformedFrame": "malformed",
    "TruncatedFrame": "truncated",
    "BadMagic": "bad_magic",
    "UnsupportedVersion": "unsupported_version",
    "UnknownFrameType": "unknown_type",
    "UnexpectedFrame": "unexpected",
}
READ_PER_TURN = 1024 * 1024  # bytes read from one connection before the others' turn
DIALERS = 4  # threads that connect to peers, whatever the number of peers
# A frame must arrive whole within this many seconds of its first byte, so that a
# peer dripping bytes cannot hold a connection (and its thread) forever.
FRAME_TIMEOUT = 30.0
LOG_EVERY = 10.0  # repeated refusals of the same kind are logged at most this often
# A RAFT body is an array header (at most 5 bytes) followed by the packed items.
_ARRAY_HEADER_MAX = 5

STATS = (
    "frames_sent",  # counted once written, so possibly after the peer has read them
    "raft_sent",
    "gossip_sent",
    "dropped",  # messages never sent: queue full, peer unknown or unreachable, oversized
    "frames_received",
    "raft_received",
    "connection_errors",  # failed handshakes, protocol errors, lost connections
    "connections_refused",  # over max_connections, or failed authentication
)

RaftHandler = Callable[[int, list[tuple[int, Any]]], None]
RequestHandler = Callable[["Connection", int, dict], None]
GossipHandler = Callable[[int, Any], None]


class HandshakeRejected(ConnectionError):
    def __init__(self, reason: str):
        super().__init__(f"handshake rejected: {reason}")
        self.reason = reason


class _Throttled:
    """Logs a kind of refusal at most once per ``LOG_EVERY`` seconds, with the
    count of those left unlogged, so that a flood cannot flood the log."""

    def __init__(self):
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._quiet: Counter[str] = Counter()

    def log(self, kind: str, level: int, message: str, *args) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(kind, -LOG_EVERY) < LOG_EVERY:
                self._quiet[kind] += 1
                return
            self._last[kind] = now
            quiet = self._quiet.pop(kind, 0)
        if quiet:
            message += f" (and {quiet} more like it not logged)"
        log.log(level, message, *args)


def _fmt(address) -> str:
    return f"{address[0]}:{address[1]}"


def _nodelay(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _shutdown(sock: socket.socket) -> None:
    """Wake any thread blocked on ``sock``; its owner closes it afterwards."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _close_gently(sock: socket.socket, linger: float = 1.0) -> None:
    """End a refused TLS handshake so that the other side reads our alert (e.g. "a
    client certificate is required"): closing with its data unread would reset
    the connection, and a reset discards the alert. We send our end, then read
    (raw bytes, for at most ``linger`` seconds) until the other side closes too."""
    deadline = time.monotonic() + linger
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_WR)
        while (left := deadline - time.monotonic()) > 0:
            socket.socket.settimeout(sock, left)
            if not socket.socket.recv(sock, 4096):
                return


def recv_frame(sock: socket.socket, decoder: FrameDecoder):
    """The next frame from ``sock`` (frames already buffered in ``decoder`` first)."""
    data = b""
    while True:
        for frame in decoder.feed(data):
            return frame
        data = sock.recv(RECV_SIZE)
        if not data:
            decoder.finish()
            raise ConnectionError("connection closed by peer")


class TlsStream:
    """A TLS connection that one thread reads while others write.

    OpenSSL allows one call at a time on a connection, and a blocking SSL_read would
    hold it while it waits (concurrent reads and writes corrupt the connection: seen
    as spurious "connection closed" on clients). So every SSL call is made under one
    lock, non-blocking, and the waiting (poll) happens outside the lock."""

    POLL_SLICE = 0.5  # bytes another thread's SSL call took in are invisible to poll

    def __init__(self, sock: ssl.SSLSocket):
        self.sock = sock
        self.lock = threading.Lock()

    def recv(self, size: int, timeout: float | None) -> bytes:
        """Up to ``size`` bytes (b"" at the end); TimeoutError after ``timeout``."""
        return self._call(lambda: self.sock.recv(size), _deadline(timeout), lambda: False, "idle")

    def sendall(self, data: bytes, timeout: float | None, closed=lambda: False) -> None:
        """All of ``data``; TimeoutError when no room came within ``timeout``,
        ConnectionError when ``closed()`` turns true meanwhile."""
        view, offset, deadline = memoryview(data), 0, _deadline(timeout)
        while offset < len(view):
            # After a WANT_WRITE, OpenSSL needs the same bytes again.
            chunk = view[offset : offset + TLS_WRITE_CHUNK]
            offset += self._call(lambda c=chunk: self.sock.send(c), deadline, closed, "write")

    def _call(self, call, deadline: float | None, closed, what: str):
        poller = select.poll()  # unlike select(), works for any fd number
        while True:
            if closed():
                raise ConnectionError("connection closed")
            with self.lock:
                before = self.sock.gettimeout()
                self.sock.settimeout(0.0)
                try:
                    return call()
                except (ssl.SSLWantReadError, BlockingIOError):
                    events = select.POLLIN
                except ssl.SSLWantWriteError:
                    events = select.POLLOUT
                finally:
                    with contextlib.suppress(OSError):
                        self.sock.settimeout(before)
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                raise TimeoutError(f"{what} timed out")
            poller.register(self.sock, events)
            slice_ = self.POLL_SLICE if wait is None else min(wait, self.POLL_SLICE)
            poller.poll(max(1, int(slice_ * 1000)))


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


class Connection:
    """An accepted connection that completed its handshake, served by its
    transport's I/O loop (``broker.ioloop``): the loop reads it, hands its frames
    to the transport, and writes what was queued for it.

    Sends never block the caller (a partition thread answering a committed
    request must not wait for a client's socket): ``send_frame`` queues the
    encoded frame and asks the loop to write. A peer that leaves more than
    ``MAX_OUTBOUND_BYTES`` unread, or whose socket accepts nothing for
    ``io_timeout`` seconds while answers wait, loses its connection.
    """

    def __init__(
        self,
        sock: socket.socket,
        address,
        hello: Hello,
        loop: IoLoop,
        transport: Transport | None = None,
        decoder: FrameDecoder | None = None,
        number: int = -1,
        io_timeout: float | None = None,
    ):
        self.address = address
        self.node_id = hello.node_id
        self.role = hello.role
        self.number = number  # the transport's connection number
        self.sock = sock
        sock.setblocking(False)  # only the loop's thread uses it from now on
        self._tls = isinstance(sock, ssl.SSLSocket)
        self._loop = loop
        self._transport = transport
        self._decoder = decoder if decoder is not None else FrameDecoder()
        self._io_timeout = io_timeout
        self._idle_limit = (
            transport.idle_timeout if transport is not None and self.role == ROLE_CLIENT else None
        )
        self.closed = False
        # The outbound queue; _lock guards it, `closed` and `_flagged`.
        self._lock = threading.Lock()
        self._out: deque[bytes] = deque()
        self._out_bytes = 0  # queued or being written, not yet handed to the kernel
        self._flagged = False  # the loop was asked to write and has not started yet
        # The loop's thread only:
        self._writing = memoryview(b"")  # taken from _out, partly written
        self._retry = 0  # TLS: a write that would block is retried with the same length
        self._blocked_since: float | None = None  # output waits and the socket takes none
        now = time.monotonic()
        self._last_frame = self._partial_since = now
        self._started = False
        self._released = False

    # --- any thread ---------------------------------------------------------------------

    def send_response(self, req_id: int, body: dict) -> bool:
        """Thread-safe; False if the connection is gone (the response is lost)."""
        if self.closed:
            return False
        return self._send(encode_response(req_id, body))

    def send_frame(self, frame) -> bool:
        """Queue ``frame``; thread-safe and never blocks on the socket.

        True once queued (not yet written; inside a ``SENDS.turn()``, gathered
        and queued when the turn ends); False if the connection is closed, or is
        closed now because its peer left more than ``MAX_OUTBOUND_BYTES`` unread."""
        if self.closed:
            return False
        return self._send(encode_frame(frame))

    def _send(self, data: bytes) -> bool:
        if SENDS.add(self, data):
            return True
        return self._queue([data], len(data))

    def take(self, items: list[bytes]) -> None:
        """The frames one ``SENDS`` turn gathered for this connection."""
        self._queue(items, sum(map(len, items)))

    def _queue(self, frames: list[bytes], size: int) -> bool:
        with self._lock:
            if self.closed:
                return False
            unread = self._out_bytes + size
            if unread <= MAX_OUTBOUND_BYTES:
                self._out.extend(frames)
                self._out_bytes = unread
                wake, self._flagged = not self._flagged, True
            else:
                wake = None
        if wake is None:
            log.info(
                "closing connection from %s: slow consumer: %d bytes of responses unread",
                _fmt(self.address),
                unread,
            )
            self.close()
            return False
        if wake:
            self._loop.want_write(self)
        return True

    def close(self) -> None:
        """Thread-safe and idempotent: queued frames are dropped and the loop closes
        the socket."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._out.clear()
            self._out_bytes = 0
        self._loop.remove(self)

    # --- the loop's thread (broker.ioloop.Channel) --------------------------------------

    def readable(self) -> None:
        if not self._started:  # frames pipelined behind the HELLO may be buffered already
            self._started = True
            self._feed(b"")
        # TLS hands over one record (16 KiB at most) per recv: what is readable now is
        # gathered and decoded as one buffer, so its requests reach each partition in
        # one turn, as they do over plain TCP.
        chunks, read, end = [], 0, None
        while not self.closed:
            try:
                data = self.sock.recv(RECV_SIZE)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            except OSError as e:
                end = e
                break
            if not data:
                end = EOFError()
                break
            chunks.append(data)
            read += len(data)
            if self._tls and self.sock.pending():
                continue  # decrypted bytes the selector cannot see
            if read >= READ_PER_TURN or (not self._tls and len(data) < RECV_SIZE):
                break  # drained, or others' turn: the selector calls again
        if chunks and not self.closed:
            self._feed(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if end is None or self.closed:
            return
        if isinstance(end, EOFError):
            self._ended()
            return
        log.info("connection from %s failed: %s", _fmt(self.address), end)
        self.close()

    def _ended(self) -> None:
        if not self.closed:
            try:
                self._decoder.finish()
            except ProtocolError as e:
                self._protocol_error(e)
                return
            log.debug("connection from %s closed by peer", _fmt(self.address))
        self.close()

    def _feed(self, data: bytes) -> None:
        t = self._transport
        now = time.monotonic()
        frames = raft = 0  # counted once per buffer: the stats lock is not per frame
        try:
            with batching.turn():  # a buffer of requests reaches each partition at once
                for frame in self._decoder.feed(data):
                    frames += 1
                    if type(frame) is RaftBatch:
                        raft += len(frame.messages)
                    if t is not None:
                        t._dispatch(self, frame)
                    if self.closed:
                        break
        except ProtocolError as e:
            self._protocol_error(e)
        finally:
            if frames:
                self._last_frame = now
                if t is not None:
                    t._count(frames_received=frames, raft_received=raft)
        if not self._decoder.pending:
            self._partial_since = now

    def _protocol_error(self, e: ProtocolError) -> None:
        if self._transport is not None:
            self._transport._count(connection_errors=1)
            self._transport._bad_frame(e)
        log.warning("closing connection from %s: %s", _fmt(self.address), e.reason)
        self.close()

    def writable(self) -> bool:
        with self._lock:
            self._flagged = False
        while not self.closed:
            if not self._writing:
                with self._lock:
                    if not self._out:
                        self._blocked_since = None
                        return False
                    batch, size = [], 0
                    while self._out and size < WRITE_BATCH_BYTES:
                        data = self._out.popleft()
                        batch.append(data)
                        size += len(data)
                self._writing = memoryview(batch[0] if len(batch) == 1 else b"".join(batch))
            size = self._retry or (
                min(len(self._writing), TLS_WRITE_CHUNK) if self._tls else len(self._writing)
            )
            try:
                n = self.sock.send(self._writing[:size])
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                self._retry = size if self._tls else 0
                if self._blocked_since is None:
                    self._blocked_since = time.monotonic()
                return True
            except OSError as e:
                if not self.closed:
                    # A partial write leaves the stream unusable.
                    log.info("closing connection from %s: write failed: %s", _fmt(self.address), e)
                self.close()
                return False
            self._retry = 0
            self._blocked_since = None
            self._writing = self._writing[n:]
            with self._lock:
                self._out_bytes -= n
        return False

    def tick(self, now: float) -> None:
        t, peer = self._transport, _fmt(self.address)
        if self.closed:
            return
        if self._decoder.pending and t is not None and now - self._partial_since > t.frame_timeout:
            self._protocol_error(
                ProtocolError(
                    f"a frame took over {t.frame_timeout:g} s to arrive "
                    f"({self._decoder.pending} bytes so far)"
                )
            )
        elif self._idle_limit is not None and now - self._last_frame > self._idle_limit:
            log.info("closing connection from %s: idle for %.0f s", peer, self._idle_limit)
            self.close()
        elif (
            self._blocked_since is not None
            and self._io_timeout is not None
            and now - self._blocked_since > self._io_timeout
        ):
            log.info(
                "closing connection from %s: write failed: no progress for %.0f s",
                peer,
                self._io_timeout,
            )
            self.close()

    def released(self) -> None:
        if self._released:
            return
        self._released = True
        with self._lock:
            self.closed = True
            self._out.clear()
            self._out_bytes = 0
        _shutdown(self.sock)
        self.sock.close()
        if self._transport is not None:
            self._transport._closed(self)

    def __repr__(self) -> str:
        return f"Connection({self.role} {self.node_id} at {_fmt(self.address)})"


class Transport:
    """One node's listener plus its outbound connections to peers.

    Callbacks run on the reader thread of the connection the frame came in
    on: ``on_raft(src_node, [(partition_id, msg), ...])``,
    ``on_gossip(src_node, payload)`` and ``on_request(conn, req_id, body)``.
    A handler that blocks stalls only that connection; a request handler that
    waits for work should answer later with ``conn.send_response`` from
    another thread, so that pipelined requests keep flowing.
    """

    def __init__(
        self,
        node_id: int,
        cluster_name: str,
        host: str,
        port: int,
        on_raft: RaftHandler,
        on_request: RequestHandler | None = None,
        on_gossip: GossipHandler | None = None,
        max_frame_size: int = MAX_FRAME_SIZE,
        ssl_context: ssl.SSLContext | None = None,
        *,
        client_ssl_context: ssl.SSLContext | None = None,
        queue_limit: int = 4096,
        connect_timeout: float = 1.0,
        io_timeout: float = 10.0,
        handshake_timeout: float = 5.0,
        backoff: tuple[float, float] = (0.05, 2.0),
        authenticate_peers: bool = False,
        max_connections: int = 1024,
        idle_timeout: float | None = None,
        frame_timeout: float = FRAME_TIMEOUT,
        on_peer_lost: Callable[[int], None] | None = None,
        on_bad_frame: Callable[[str], None] | None = None,
    ):
        """``ssl_context`` serves inbound connections and, unless
        ``client_ssl_context`` is given, also dials peers. ``io_timeout``
        bounds a blocked write; ``backoff`` is the (first, maximum) delay
        between reconnect attempts.

        ``authenticate_peers`` (mutual TLS): every connection, either way,
        must present a certificate of this cluster naming a node, and a peer's
        HELLO must claim the node its certificate names. ``handshake_timeout``
        bounds the whole handshake (TLS and HELLO); ``max_connections`` caps
        the inbound connections open at once; ``idle_timeout`` closes a client
        connection that sent no frame for that long; ``frame_timeout`` bounds
        how long one frame may take to arrive. ``on_peer_lost(node_id)``: a
        connection to or from that peer ended, or dialing it failed (what was
        sent to it may never be answered). ``on_bad_frame(reason)``: a malformed or
        oversized frame closed a connection; ``reason`` is one of BAD_FRAME_REASONS."""
        if authenticate_peers and (ssl_context is None or client_ssl_context is None):
            raise ValueError("authenticate_peers needs server and client TLS contexts")
        self.node_id = node_id
        self.cluster_name = cluster_name
        self.host = host
        self.port = port
        self.on_raft = on_raft
        self.on_request = on_request
        self.on_gossip = on_gossip
        self.on_peer_lost = on_peer_lost
        self.on_bad_frame = on_bad_frame
        self.max_frame_size = max_frame_size
        self.server_ssl = ssl_context
        self.client_ssl = client_ssl_context or ssl_context
        self.queue_limit = queue_limit
        self.connect_timeout = connect_timeout
        self.io_timeout = io_timeout
        self.handshake_timeout = handshake_timeout
        self.backoff = backoff
        self.authenticate_peers = authenticate_peers
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.frame_timeout = frame_timeout
        self._throttled = _Throttled()
        # connection number -> (deadline, socket) while its handshake runs
        self._handshaking: dict[int, tuple[float, socket.socket]] = {}

        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._started = False
        self._listener: socket.socket | None = None
        self._peers: dict[int, _Peer] = {}
        self._inbound: dict[int, socket.socket] = {}  # by connection number, for stop()
        self._conn_numbers = itertools.count()
        self._threads: set[threading.Thread] = set()
        self._stats: Counter[str] = Counter(dict.fromkeys(STATS, 0))
        self._stats_lock = threading.Lock()
        # Every connection that completed its handshake is read and written here;
        # the dialer threads connect to peers (a blocking connect and handshake).
        self._loop = IoLoop(f"transport-{node_id}-io")
        self._dialer = ThreadPoolExecutor(DIALERS, thread_name_prefix=f"transport-{node_id}-dial")

    # --- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """Bind and start serving; a Transport starts at most once."""
        if self._started or self._stopping.is_set():
            raise RuntimeError("a Transport can only be started once")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self.host, self.port))
            listener.listen(128)
        except OSError:
            listener.close()
            raise
        listener.settimeout(0.5)  # bounds how long stop() waits for accept() on any OS
        self._listener = listener
        self.port = listener.getsockname()[1]
        with self._lock:
            self._started = True
            self._loop.start()
            self._spawn(self._accept_loop, f"transport-{self.node_id}-accept")
            for peer in self._peers.values():
                peer.start()
        log.info("node %d listening on %s:%d", self.node_id, self.host, self.port)

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listener and every connection, and join the threads."""
        self._stopping.set()
        if self._listener is not None:
            _shutdown(self._listener)
            self._listener.close()
        with self._lock:
            peers = list(self._peers.values())
            self._peers.clear()
            inbound = list(self._inbound.values())
            threads = list(self._threads)
        for peer in peers:
            peer.retire()
        for sock in inbound:
            _shutdown(sock)
        deadline = time.monotonic() + timeout
        self._loop.stop(timeout)  # releases the connections it serves
        # A dial in progress ends within connect_timeout (a handshake at once: retired).
        self._dialer.shutdown(wait=True, cancel_futures=True)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in threads if t.is_alive()]
        if alive:
            log.warning("node %d: threads still running after stop: %s", self.node_id, alive)

    def _spawn(self, target, name: str, *args) -> threading.Thread:
        def run():
            try:
                target(*args)
            finally:
                with self._lock:
                    self._threads.discard(threading.current_thread())

        t = threading.Thread(target=run, name=name, daemon=True)
        self._threads.add(t)  # callers hold self._lock
        t.start()
        return t

    def stats(self) -> dict[str, int]:
        """A snapshot of the counters named in ``STATS``."""
        with self._stats_lock:
            return dict(self._stats)

    def _bad_frame(self, e: ProtocolError) -> None:
        if self.on_bad_frame is not None:
            try:
                self.on_bad_frame(BAD_FRAME_REASONS.get(type(e).__name__, "other"))
            except Exception:
                log.exception("node %d: on_bad_frame failed", self.node_id)

    def _count(self, **deltas: int) -> None:
        stats = self._stats
        with self._stats_lock:  # Counter.update is much slower on this per-frame path
            for name, n in deltas.items():
                stats[name] += n

    # --- outbound -----------------------------------------------------------

    def set_peer(self, node_id: int, host: str, port: int) -> None:
        with self._lock:
            old = self._peers.get(node_id)
            if old is not None and old.address == (host, port):
                return
            if self._stopping.is_set():
                return
            peer = _Peer(self, node_id, (host, port))
            self._peers[node_id] = peer
            if self._started:
                peer.start()
        if old is not None:
            old.retire()

    def remove_peer(self, node_id: int) -> None:
        with self._lock:
            peer = self._peers.pop(node_id, None)
        if peer is not None:
            peer.retire()

    def is_connected(self, node_id: int) -> bool:
        """Whether the outbound connection to ``node_id`` is up (handshake done)."""
        peer = self._peers.get(node_id)
        return peer is not None and peer.connected

    def identify(self, host: str, port: int, timeout: float) -> int:
        """The node id of whoever listens on ``host:port``, by a client handshake
        made the way this node dials peers (with TLS, authenticated by its
        certificate). Raises HandshakeRejected, ProtocolError or OSError."""
        sock, node_id = connect_client(
            (host, port), self.cluster_name, timeout, FrameDecoder(), self.client_ssl
        )
        try:
            if self.authenticate_peers and certified_node(sock, self.cluster_name) != node_id:
                raise ProtocolError(
                    f"{host}:{port} answered as node {node_id} without its certificate"
                )
        finally:
            sock.close()
        return node_id

    def send_raft(self, node_id: int, partition_id: int, msg) -> bool:
        """Queue ``msg`` for ``node_id``; False if it was dropped at once."""
        return self._enqueue(node_id, (partition_id, msg))

    def send_gossip(self, node_id: int, payload: Any) -> bool:
        return self._enqueue(node_id, Gossip(payload))

    def _enqueue(self, node_id: int, item) -> bool:
        peer = self._peers.get(node_id)
        if peer is not None and peer.enqueue(item):
            return True
        self._count(dropped=1)
        return False

    # --- inbound ------------------------------------------------------------

    def _accept_loop(self) -> None:
        listener = self._listener
        while not self._stopping.is_set():
            self._expire_handshakes()
            try:
                sock, address = listener.accept()
            except TimeoutError:
                continue
            except OSError as e:
                if self._stopping.is_set():
                    return
                log.error("node %d: accept failed: %s", self.node_id, e)
                self._stopping.wait(0.1)  # e.g. out of file descriptors: do not spin
                continue
            with self._lock:
                if self._stopping.is_set():
                    sock.close()
                    return
                full = len(self._inbound) >= self.max_connections
                if not full:
                    number = next(self._conn_numbers)
                    self._inbound[number] = sock
                    deadline = time.monotonic() + self.handshake_timeout
                    self._handshaking[number] = (deadline, sock)
                    name = f"transport-{self.node_id}-conn-{_fmt(address)}"
                    self._spawn(self._serve, name, sock, address, number)
            if full:
                self._count(connections_refused=1)
                self._throttled.log(
                    "full",
                    logging.WARNING,
                    "node %d: refusing connection from %s on port %d: %d connections open, "
                    "the most allowed",
                    self.node_id,
                    _fmt(address),
                    self.port,
                    self.max_connections,
                )
                sock.close()

    def _expire_handshakes(self) -> None:
        """Shut down connections whose whole handshake overran its deadline
        (a per-read timeout alone lets a peer drip bytes forever)."""
        now = time.monotonic()
        with self._lock:
            late = [n for n, (deadline, _) in self._handshaking.items() if deadline <= now]
            socks = [self._handshaking.pop(n)[1] for n in late]
        for sock in socks:
            self._count(connection_errors=1)
            self._throttled.log(
                "slow-handshake",
                logging.WARNING,
                "node %d: closing a connection whose handshake took over %.1f s",
                self.node_id,
                self.handshake_timeout,
            )
            _shutdown(sock)

    def _serve(self, sock: socket.socket, address, number: int) -> None:
        """The handshake of one inbound connection (this thread ends with it); then
        the I/O loop serves the connection."""
        peer = _fmt(address)
        served = False
        try:
            _nodelay(sock)
            sock.settimeout(self.handshake_timeout)
            if self.server_ssl is not None:
                sock = self.server_ssl.wrap_socket(
                    sock, server_side=True, do_handshake_on_connect=False
                )
                with self._lock:
                    self._inbound[number] = sock  # the raw socket was detached
                    if number in self._handshaking:
                        self._handshaking[number] = (self._handshaking[number][0], sock)
                try:
                    sock.do_handshake()
                except ssl.SSLError as e:
                    self._refuse_tls(peer, e)
                    _close_gently(sock)
                    return
            # Before its handshake a connection may send only a HELLO, a small frame.
            decoder = FrameDecoder(
                min(self.max_frame_size, HANDSHAKE_MAX_FRAME), accept=ACCEPTOR_HANDSHAKE
            )
            hello = self._handshake(sock, decoder, peer)
            with self._lock:
                in_time = self._handshaking.pop(number, None) is not None
            if hello is None or not in_time or self._stopping.is_set():
                return
            decoder.max_frame_size = self.max_frame_size
            decoder.accept = FROM_CLIENT if hello.role == ROLE_CLIENT else FROM_PEER
            conn = Connection(
                sock, address, hello, self._loop, self, decoder, number, self.io_timeout
            )
            served = True
            self._loop.add(conn)  # it reads what the decoder or TLS already buffered
        except ProtocolError as e:
            self._count(connection_errors=1)
            self._bad_frame(e)
            log.warning("closing connection from %s: %s", peer, e.reason)
        except (OSError, ValueError) as e:
            if not self._stopping.is_set():
                log.info("connection from %s failed: %s", peer, e)
        finally:
            if not served:
                with self._lock:
                    self._inbound.pop(number, None)
                    self._handshaking.pop(number, None)
                sock.close()

    def _closed(self, conn: Connection) -> None:
        """A served connection ended (the loop released it)."""
        with self._lock:
            self._inbound.pop(conn.number, None)
        if conn.role == ROLE_PEER:
            self._peer_lost(conn.node_id)

    def _peer_lost(self, node_id: int) -> None:
        if self.on_peer_lost is None or self._stopping.is_set():
            return
        try:
            self.on_peer_lost(node_id)
        except Exception:
            log.exception("node %d: on_peer_lost(%d) failed", self.node_id, node_id)

    def _refuse_tls(self, peer: str, error: ssl.SSLError) -> None:
        self._count(connection_errors=1)
        self._throttled.log(
            "tls",
            logging.WARNING,
            "node %d: refused a connection from %s on TLS port %d: %s",
            self.node_id,
            peer,
            self.port,
            describe_failure(error),
        )

    def _handshake(self, sock: socket.socket, decoder: FrameDecoder, peer: str) -> Hello | None:
        try:
            hello = recv_frame(sock, decoder)
        except UnsupportedVersion as e:
            self._reject(sock, peer, e.reason)
            return None
        if not isinstance(hello, Hello):
            raise ProtocolError(f"expected HELLO, got {hello.TYPE.name}")
        reason = self._check_hello(hello)
        if reason:
            self._reject(sock, peer, reason)
            return None
        if self.authenticate_peers:
            certified = certified_node(sock, self.cluster_name)
            if certified is None or (hello.role == ROLE_PEER and hello.node_id != certified):
                # The details go to our log only; the other side learns nothing.
                self._count(connections_refused=1)
                self._throttled.log(
                    "auth",
                    logging.WARNING,
                    "node %d: refused %s claiming %s %d: its certificate names %s",
                    self.node_id,
                    peer,
                    hello.role,
                    hello.node_id,
                    "no node of this cluster" if certified is None else f"node {certified}",
                )
                with contextlib.suppress(OSError):
                    sock.sendall(encode_frame(HelloReject("authentication failed")))
                return None
        sock.sendall(encode_frame(HelloOk(self.node_id)))
        log.debug("node %d accepted %s %d from %s", self.node_id, hello.role, hello.node_id, peer)
        return hello

    def _check_hello(self, hello: Hello) -> str | None:
        if hello.version != PROTOCOL_VERSION:
            return (
                f"protocol version mismatch: node {self.node_id} speaks "
                f"{PROTOCOL_VERSION}, got {hello.version}"
            )
        if hello.cluster != self.cluster_name:
            # Never say which cluster this is: the name is what strangers lack.
            return f"cluster name mismatch: not a member of cluster {hello.cluster!r}"
        if (hello.role == ROLE_PEER) != (hello.node_id >= 0):
            return f"invalid node id {hello.node_id} for role {hello.role}"
        return None

    def _reject(self, sock: socket.socket, peer: str, reason: str) -> None:
        self._count(connection_errors=1)
        log.warning("node %d rejected handshake from %s: %s", self.node_id, peer, reason)
        with contextlib.suppress(OSError):
            sock.sendall(encode_frame(HelloReject(reason)))

    def _dispatch(self, conn: Connection, frame) -> None:
        peer = conn.role == ROLE_PEER
        try:
            if type(frame) is RaftBatch and peer:
                self.on_raft(conn.node_id, frame.messages)
            elif type(frame) is Gossip and peer:
                if self.on_gossip is not None:
                    self.on_gossip(conn.node_id, frame.payload)
            elif type(frame) is Request and self.on_request is not None:
                self.on_request(conn, frame.req_id, frame.body)
            else:
                raise ProtocolError(f"unexpected {frame.TYPE.name} frame from a {conn.role}")
        except ProtocolError:
            raise
        except Exception:
            # A failing handler is a bug on this side, not the peer's fault.
            log.exception(
                "node %d: handler failed on %s from %r", self.node_id, frame.TYPE.name, conn
            )


class _Peer:
    """The outbound side towards one peer: a bounded queue, a connection dialed by
    the transport's dialer threads and then served by its I/O loop, which writes
    everything queued as few RAFT frames. A lost connection is dialed again after
    a backoff; what was queued meanwhile is dropped (Raft and SWIM resend)."""

    def __init__(self, transport: Transport, node_id: int, address: tuple[str, int]):
        self.t = transport
        self.node_id = node_id
        self.address = address
        self.queue: deque = deque()
        self.cond = threading.Condition()  # queue, retired, connected, sock, _flagged
        self.retired = False
        self.connected = False
        self.sock: socket.socket | None = None
        self._last_failure: str | None = None
        self._delay = transport.backoff[0]
        self._flagged = False  # the loop was asked to write and has not started yet
        # The loop's thread only, while connected:
        self._writing = memoryview(b"")
        self._retry = 0
        self._blocked_since: float | None = None
        self._released = True

    def __repr__(self) -> str:
        return f"peer {self.node_id} at {_fmt(self.address)}"

    def start(self) -> None:
        self._dial()

    def retire(self) -> None:
        with self.cond:
            self.retired = True
            self.queue.clear()
            sock, connected = self.sock, self.connected
        if connected:
            self.t._loop.remove(self)
        elif sock is not None:
            _shutdown(sock)  # interrupts a handshake in progress

    def enqueue(self, item) -> bool:
        with self.cond:
            if self.retired or len(self.queue) >= self.t.queue_limit:
                return False
            self.queue.append(item)
            wake = self.connected and not self._flagged
            if wake:
                self._flagged = True
        if wake:
            self.t._loop.want_write(self)
        return True

    # --- dialing (a dialer thread) ------------------------------------------------------

    def _dial(self) -> None:
        with contextlib.suppress(RuntimeError):  # the transport stopped
            self.t._dialer.submit(self._dial_once)

    def _dial_once(self) -> None:
        if self.retired:
            return
        sock = self._connect()
        if sock is None:
            self._drop_queued()
            self.t._peer_lost(self.node_id)
            self._redial_later()
            return
        self._delay = self.t.backoff[0]
        sock.setblocking(False)
        with self.cond:
            if self.retired:
                self.sock = None
                sock.close()
                return
            self.sock = sock
            self.connected = True
            self._released = False
            self._flagged = True  # the loop writes what was queued while dialing
            self._writing, self._retry, self._blocked_since = memoryview(b""), 0, None
        self.t._loop.add(self)

    def _redial_later(self) -> None:
        if self.retired:
            return
        # Jitter keeps a restarted node from being hit by every peer at once.
        delay = self._delay * random.uniform(0.5, 1.0)
        self._delay = min(self._delay * 2, self.t.backoff[1])
        self.t._loop.call_later(delay, self._dial)

    # --- the loop's thread (broker.ioloop.Channel) --------------------------------------

    def readable(self) -> None:
        # Peers never write on a connection we dialed once the handshake is over,
        # so readable means EOF, an error, or (TLS) a session ticket.
        try:
            data = self.sock.recv(RECV_SIZE)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except OSError as e:
            self._lost(str(e))
            return
        self._lost("connection closed by peer" if not data else "unexpected data from the peer")

    def writable(self) -> bool:
        with self.cond:
            self._flagged = False
        while self.connected:
            if not self._writing:
                with self.cond:
                    items = list(self.queue)
                    self.queue.clear()
                if not items:
                    self._blocked_since = None
                    return False
                data, frames, raft, gossip = self._encode(items)
                self.t._count(frames_sent=frames, raft_sent=raft, gossip_sent=gossip)
                self._writing = memoryview(data)
                continue
            tls = isinstance(self.sock, ssl.SSLSocket)
            size = self._retry or (
                min(len(self._writing), TLS_WRITE_CHUNK) if tls else len(self._writing)
            )
            try:
                n = self.sock.send(self._writing[:size])
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                self._retry = size if tls else 0
                if self._blocked_since is None:
                    self._blocked_since = time.monotonic()
                return True
            except OSError as e:
                self._lost(str(e))
                return False
            self._retry = 0
            self._blocked_since = None
            self._writing = self._writing[n:]
        return False

    def tick(self, now: float) -> None:
        if self._blocked_since is not None and now - self._blocked_since > self.t.io_timeout:
            self._lost(f"no write progress for {self.t.io_timeout:g} s")

    def _lost(self, why: str) -> None:
        if not self.retired:
            self.t._count(connection_errors=1)
            log.info("node %d lost connection to %r: %s", self.t.node_id, self, why)
        self.t._loop.remove(self)

    def released(self) -> None:
        with self.cond:
            if self._released:
                return
            self._released = True
            sock, self.sock = self.sock, None
            self.connected = False
            self._writing = memoryview(b"")
        if sock is not None:
            _shutdown(sock)
            sock.close()
        if not self.retired and not self.t._stopping.is_set():
            self.t._peer_lost(self.node_id)
            self._redial_later()

    def _failed(self, what: str, level: int = logging.WARNING) -> None:
        # Repeated identical failures during backoff are logged once.
        if what == self._last_failure:
            level = logging.DEBUG
        self._last_failure = what
        log.log(level, "node %d: %r: %s", self.t.node_id, self, what)

    def _connect(self) -> socket.socket | None:
        t = self.t
        try:
            sock = socket.create_connection(self.address, timeout=t.connect_timeout)
        except OSError as e:
            self._failed(f"cannot connect: {e}", logging.INFO)
            return None
        with self.cond:
            if self.retired:
                sock.close()
                return None
            self.sock = sock  # lets retire() interrupt the handshake
        try:
            _nodelay(sock)
            sock.settimeout(t.handshake_timeout)
            if t.client_ssl is not None:
                sock = t.client_ssl.wrap_socket(
                    sock, server_hostname=self.address[0], do_handshake_on_connect=False
                )
                with self.cond:
                    self.sock = sock  # the raw socket was detached
                sock.do_handshake()
            sock.sendall(
                encode_frame(Hello(t.cluster_name, t.node_id, PROTOCOL_VERSION, ROLE_PEER))
            )
            reply = recv_frame(sock, FrameDecoder(HANDSHAKE_MAX_FRAME, accept=DIALER_HANDSHAKE))
            if type(reply) is HelloReject:
                raise HandshakeRejected(reply.reason)
            if type(reply) is not HelloOk:
                raise ProtocolError(f"expected HELLO_OK, got {reply.TYPE.name}")
            if reply.node_id != self.node_id:
                raise ProtocolError(f"answered as node {reply.node_id}, expected {self.node_id}")
            if t.authenticate_peers:
                certified = certified_node(sock, t.cluster_name)
                if certified != self.node_id:
                    named = "no node of this cluster" if certified is None else f"node {certified}"
                    raise ProtocolError(f"its certificate names {named}, not node {self.node_id}")
        except ssl.SSLError as e:
            if not self.retired:
                t._count(connection_errors=1)
                self._failed(f"TLS handshake failed: {describe_failure(e)}")
            with self.cond:
                self.sock = None
            sock.close()
            return None
        except (OSError, ValueError, ProtocolError) as e:
            if not self.retired:
                t._count(connection_errors=1)
                rejected = isinstance(e, HandshakeRejected)
                self._failed(str(e) if rejected else f"handshake failed: {e}")
            with self.cond:
                self.sock = None
            sock.close()
            return None
        log.info("node %d connected to %r", t.node_id, self)
        self._last_failure = None
        return sock

    def _drop_queued(self) -> None:
        with self.cond:
            n = len(self.queue)
            self.queue.clear()
        if n:
            self.t._count(dropped=n)

    def _encode(self, items: list) -> tuple[bytes, int, int, int]:
        """All queued items as frames: consecutive Raft messages share a RAFT frame."""
        limit = self.t.max_frame_size - _ARRAY_HEADER_MAX
        chunks: list[bytes] = []
        batch: list[bytes] = []
        size = raft = gossip = 0
        for item in items:
            try:
                data = encode_frame(item) if type(item) is Gossip else pack_raft_item(*item)
            except Exception:
                # A value the codec cannot encode is the caller's bug; the
                # sender thread must survive it.
                log.exception("node %d: cannot encode %r for %r", self.t.node_id, item, self)
                self.t._count(dropped=1)
                continue
            if type(item) is Gossip:
                if len(data) > self.t.max_frame_size:
                    self._drop_oversized("gossip payload", len(data))
                    continue
                if batch:
                    chunks.append(raft_frame(batch))
                    batch, size = [], 0
                chunks.append(data)
                gossip += 1
                continue
            if len(data) > limit:
                self._drop_oversized(type(item[1]).__name__, len(data))
                continue
            if size + len(data) > limit:
                chunks.append(raft_frame(batch))
                batch, size = [], 0
            batch.append(data)
            size += len(data)
            raft += 1
        if batch:
            chunks.append(raft_frame(batch))
        return b"".join(chunks), len(chunks), raft, gossip

    def _drop_oversized(self, what: str, size: int) -> None:
        self.t._count(dropped=1)
        log.error(
            "node %d: dropping %s of %d bytes for %r: over the frame limit of %d",
            self.t.node_id,
            what,
            size,
            self,
            self.t.max_frame_size,
        )


def connect_client(
    address: tuple[str, int],
    cluster_name: str,
    timeout: float,
    decoder: FrameDecoder,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[socket.socket, int]:
    """Connect and do the client handshake; returns the socket and the node's id.

    With TLS the node's certificate must name the host dialed (unless the
    context does not check host names). Raises HandshakeRejected (with the node's reason),
    ProtocolError, ssl.SSLError (see broker.tls.describe_failure) or OSError.
    """
    sock = socket.create_connection(address, timeout=timeout)
    try:
        _nodelay(sock)
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(sock, server_hostname=address[0])
        sock.sendall(encode_frame(Hello(cluster_name, -1, PROTOCOL_VERSION, ROLE_CLIENT)))
        decoder.accept = DIALER_HANDSHAKE
        reply = recv_frame(sock, decoder)
        decoder.accept = FROM_GATEWAY
        if type(reply) is HelloReject:
            log.warning("%s rejected handshake: %s", _fmt(address), reply.reason)
            raise HandshakeRejected(reply.reason)
        if type(reply) is not HelloOk:
            raise ProtocolError(f"expected HELLO_OK, got {reply.TYPE.name}")
    except BaseException:
        sock.close()
        raise
    return sock, reply.node_id


class FramedClient:
    """A blocking client connection: handshake, then requests and responses.

    Not thread-safe. ``send_request``/``recv_response`` pipeline; ``request``
    waits for its own response and keeps others for ``recv_response``.
    """

    def __init__(
        self,
        host: str,
        port: int,
        cluster_name: str,
        timeout: float = 15.0,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_frame_size: int = MAX_FRAME_SIZE,
    ):
        self.address = (host, port)
        self._decoder = FrameDecoder(max_frame_size)
        self._next_id = 1
        self._early: dict[int, dict] = {}  # responses read while waiting for another
        sock, self.node_id = connect_client(
            self.address, cluster_name, timeout, self._decoder, ssl_context
        )
        self._sock = sock

    def send_request(self, body: dict) -> int:
        req_id = self._next_id
        self._next_id += 1
        self._sock.sendall(encode_frame(Request(req_id, body)))
        return req_id

    def recv_response(self) -> tuple[int, dict]:
        if self._early:
            req_id = next(iter(self._early))
            return req_id, self._early.pop(req_id)
        return self._read_response()

    def request(self, body: dict) -> dict:
        req_id = self.send_request(body)
        while True:
            got, response = self._read_response()
            if got == req_id:
                return response
            self._early[got] = response

    def _read_response(self) -> tuple[int, dict]:
        frame = recv_frame(self._sock, self._decoder)
        if type(frame) is not Response:
            raise ProtocolError(f"expected RESPONSE, got {frame.TYPE.name}")
        return frame.req_id, frame.body

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> FramedClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
