"""Client for the broker's gateway API (see docs/protocol.md and DESIGN.md section 4).

A ``BrokerClient`` pipelines: every request gets an id, any number may be
in flight, and a reader thread per connection resolves each response's
``Future`` by id, in whatever order they come back. Synchronous methods are
``*_async(...).result()``.

Routing: any gateway accepts any request and forwards it to the partition's
leader, but that costs a hop. So the client learns the leaders from the
``topology`` request (refreshed in the background when older than
``ROUTES_MAX_AGE`` or after a failure) and sends each request whose
partition it knows (given, computed from the key, or picked round-robin for
an unkeyed append) straight to the leader's gateway. Without that knowledge
it uses its given addresses, in turn.

Failures are explicit ``BrokerError`` subclasses named after the gateway's
codes. A lost connection fails every request in flight with ``Unavailable``
(the client cannot know whether a write was committed, so it never resends
one); the next request reconnects, trying the given addresses in turn.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, InvalidStateError
from typing import Any, NamedTuple

from broker.partition import APPEND, CAS, PUT, encode_appends, key_partition
from broker.partition import encode as encode_command
from broker.tls import describe_failure
from broker.transport import RECV_SIZE, TlsStream, connect_client
from broker.wire import (
    HEADER_SIZE,
    MAX_APPEND_RECORDS,
    MAX_FRAME_SIZE,
    FrameDecoder,
    ProtocolError,
    Request,
    Response,
    command_too_large,
    encode_frame,
    max_command_size,
)

DEFAULT_ADDRESS = "127.0.0.1:26500"
DEFAULT_PORT = 26500
DEFAULT_CLUSTER = "dual-region"
# The gateway answers DEADLINE_EXCEEDED itself at ``timeout``; the client
# waits a little longer so that answer, not a guess, is what callers see.
DEADLINE_MARGIN = 0.5
ROUTES_MAX_AGE = 1.0  # seconds before the leader map is refreshed


# --- errors -------------------------------------------------------------------


class BrokerError(Exception):
    """A request failed; ``code`` is the gateway's error code.

    ``sent`` is False when the request never left this client (no gateway could be
    reached): it certainly did not take effect. When True, a write that failed with
    UNAVAILABLE or DEADLINE_EXCEEDED may still have been committed."""

    code = "UNKNOWN"
    sent = True

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class Unavailable(BrokerError):
    """No leader or no quorum, or the broker cannot be reached."""

    code = "UNAVAILABLE"


class ResourceExhausted(BrokerError):
    """Backpressure or low disk: retry later."""

    code = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(BrokerError):
    """No answer in time; a write may or may not have been committed."""

    code = "DEADLINE_EXCEEDED"


class InvalidArgument(BrokerError):
    code = "INVALID_ARGUMENT"


class NotFound(BrokerError):
    code = "NOT_FOUND"


class FailedPrecondition(BrokerError):
    """A compare-and-set did not match; ``current`` is the value found (None: absent)."""

    code = "FAILED_PRECONDITION"

    def __init__(self, message: str, current: bytes | None = None):
        super().__init__(message)
        self.current = current


class OutOfRange(BrokerError):
    """The records asked for were compacted; ``first`` is the first one still kept."""

    code = "OUT_OF_RANGE"

    def __init__(self, message: str, first: int | None = None):
        super().__init__(message)
        self.first = first


_ERRORS: dict[str, type[BrokerError]] = {
    cls.code: cls
    for cls in (
        Unavailable,
        ResourceExhausted,
        DeadlineExceeded,
        InvalidArgument,
        NotFound,
        FailedPrecondition,
        OutOfRange,
    )
}


def error_from_response(body: dict) -> BrokerError:
    """The exception for a ``{"ok": false, ...}`` response body."""
    code = str(body.get("code", "UNKNOWN"))
    message = str(body.get("message", ""))
    if code == FailedPrecondition.code:
        return FailedPrecondition(message, body.get("current"))
    if code == OutOfRange.code:
        return OutOfRange(message, body.get("first"))
    cls = _ERRORS.get(code)
    return cls(message) if cls else BrokerError(message, code)


# --- results ------------------------------------------------------------------


class Appended(NamedTuple):
    partition: int
    position: int


class AppendedMany(NamedTuple):
    """Records appended by one request: at ``first`` .. ``first + count - 1``."""

    partition: int
    first: int
    count: int

    @property
    def positions(self) -> range:
        return range(self.first, self.first + self.count)


class Records(NamedTuple):
    partition: int
    records: list[tuple[int, bytes]]
    next: int  # the position to read from next


def _as_bytes(value: str | bytes | bytearray | memoryview, what: str) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{what} must be str or bytes, not {type(value).__name__}")


def _check_key(key: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"key must be str, not {type(key).__name__}")
    return key


def _command_size(body: dict) -> int:
    """Bytes of the command a gateway would propose for ``body`` (0: none that
    can be large), encoded as the gateway encodes it."""
    op = body.get("op")
    if op == "append" and "records" in body:
        return len(encode_appends(body["records"]))
    if op == "append":
        return len(encode_command(APPEND, body.get("data")))
    if op == "put":
        return len(encode_command(PUT, body.get("key"), body.get("value")))
    if op == "cas":
        return len(encode_command(CAS, body.get("key"), body.get("expected"), body.get("value")))
    return 0


def _too_large(body: dict) -> str | None:
    """The gateway's refusal of a command too large to replicate, said before
    anything is sent (with the default frame limit, as a gateway's)."""
    rough = sum(
        len(v) * (4 if type(v) is str else 1)
        for k in ("data", "key", "value", "expected")
        if isinstance(v := body.get(k), bytes | str)
    )
    records = body.get("records") or ()
    rough += sum(map(len, records)) + 16 * len(records)  # ~13 bytes of encoding each
    limit = max_command_size(MAX_FRAME_SIZE)
    if rough + 64 <= limit:  # the encoding adds at most ~20 bytes
        return None
    size = _command_size(body)
    return command_too_large(size, MAX_FRAME_SIZE) if size > limit else None


def parse_addresses(addresses: str | Iterable[str]) -> list[tuple[str, int]]:
    """``"h1:26500,h2"`` (or a list of such) as ``[(host, port), ...]``; port defaults to 26500."""
    items = addresses.split(",") if isinstance(addresses, str) else list(addresses)
    parsed = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or "]" in port:  # no port, or a bare [ipv6] literal
            host, port = item, str(DEFAULT_PORT)
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad broker address {item!r} (expected HOST:PORT)")
        parsed.append((host, int(port)))
    if not parsed:
        raise ValueError("no broker address given")
    return parsed


def _fmt(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


def _settle(fut: Future, result: Any = None, error: BaseException | None = None) -> None:
    # The deadline, a response and a lost connection race to settle a future;
    # the first one wins.
    with contextlib.suppress(InvalidStateError):
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)


# --- connection ---------------------------------------------------------------


class _Connection:
    """One handshaken gateway connection and the requests in flight on it."""

    def __init__(
        self,
        address: tuple[str, int],
        cluster_name: str,
        connect_timeout: float,
        io_timeout: float,
        on_lost: Callable[[_Connection], None],
        ssl_context: ssl.SSLContext | None = None,
    ):
        self.address = address
        self._on_lost = on_lost
        self._decoder = FrameDecoder(MAX_FRAME_SIZE)
        sock, _ = connect_client(address, cluster_name, connect_timeout, self._decoder, ssl_context)
        # Bounds a write to a gateway that stopped reading; the reader treats
        # the same timeout as idleness.
        sock.settimeout(io_timeout)
        self._sock = sock
        self._io_timeout = io_timeout
        # TLS: the reader and the senders must not be in OpenSSL at once
        self._tls = TlsStream(sock) if isinstance(sock, ssl.SSLSocket) else None
        self._lock = threading.Lock()  # pending, ids, closed
        self._send_lock = threading.Lock()  # one frame at a time on the socket
        self._pending: dict[int, tuple[Future, Callable[[dict], Any]]] = {}
        self._ids = itertools.count(1)
        self.closed = False
        self._reader = threading.Thread(
            target=self._read_loop, name=f"broker-client-{_fmt(address)}", daemon=True
        )
        self._reader.start()

    def submit(self, body: dict, fut: Future, convert: Callable[[dict], Any]) -> int | None:
        """Send ``body``; its response settles ``fut``. None if the connection
        was already closed (nothing was sent)."""
        with self._lock:
            if self.closed:
                return None
            req_id = next(self._ids)
            self._pending[req_id] = (fut, convert)
        try:
            frame = encode_frame(Request(req_id, body))
        except (TypeError, ValueError) as e:
            self.forget(req_id)
            _settle(fut, error=InvalidArgument(f"cannot encode request: {e}"))
            return req_id
        if len(frame) - HEADER_SIZE > MAX_FRAME_SIZE:
            self.forget(req_id)
            size = len(frame) - HEADER_SIZE
            error = InvalidArgument(f"request of {size} bytes exceeds the {MAX_FRAME_SIZE} limit")
            _settle(fut, error=error)
            return req_id
        try:
            with self._send_lock:
                if self._tls is not None:
                    self._tls.sendall(frame, self._io_timeout, closed=lambda: self.closed)
                else:
                    self._sock.sendall(frame)
        except OSError as e:
            # A partial write leaves the stream unusable.
            self.close(Unavailable(f"connection to {_fmt(self.address)} lost: {e}"))
        return req_id

    def forget(self, req_id: int) -> None:
        with self._lock:
            self._pending.pop(req_id, None)

    def _read_loop(self) -> None:
        try:
            data = b""
            while True:
                for frame in self._decoder.feed(data):
                    if type(frame) is not Response:
                        raise ProtocolError(f"expected RESPONSE, got {frame.TYPE.name}")
                    self._resolve(frame.req_id, frame.body)
                try:
                    if self._tls is not None:
                        data = self._tls.recv(RECV_SIZE, self._io_timeout)
                    else:
                        data = self._sock.recv(RECV_SIZE)
                except TimeoutError:
                    data = b""
                    continue
                if not data:
                    self._decoder.finish()
                    raise ConnectionError("connection closed by the broker")
        except (OSError, ProtocolError) as e:
            self.close(Unavailable(f"connection to {_fmt(self.address)} lost: {e}"))

    def _resolve(self, req_id: int, body: dict) -> None:
        with self._lock:
            entry = self._pending.pop(req_id, None)
        if entry is None:
            return  # its deadline passed; the late answer is dropped
        fut, convert = entry
        if convert is None:  # request_async: the caller reads the body itself
            _settle(fut, body)
            return
        if body.get("ok") is not True:
            _settle(fut, error=error_from_response(body))
            return
        try:
            result = convert(body)
        except (KeyError, TypeError, ValueError) as e:
            _settle(fut, error=BrokerError(f"malformed response: {e!r}"))
            return
        _settle(fut, result)

    def close(self, error: BrokerError) -> None:
        """Idempotent: fail everything in flight with ``error`` and wake the reader."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            pending = list(self._pending.values())
            self._pending.clear()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        for fut, _ in pending:
            _settle(fut, error=type(error)(error.message))
        self._on_lost(self)
        if threading.current_thread() is not self._reader:
            self._reader.join()
        with self._send_lock:
            self._sock.close()


class _Deadlines:
    """One thread failing the futures whose deadline passed, earliest first."""

    def __init__(self):
        self._heap: list = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(
            target=self._run, name="broker-client-deadlines", daemon=True
        )
        self._thread.start()

    def add(self, timeout: float, fut: Future, conn: _Connection, req_id: int) -> None:
        deadline = time.monotonic() + timeout + DEADLINE_MARGIN
        with self._cond:
            earliest = not self._heap or deadline < self._heap[0][0]
            heapq.heappush(self._heap, (deadline, next(self._seq), fut, conn, req_id, timeout))
            if earliest:  # else the thread already wakes up in time; saves a wake-up per request
                self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:  # close() from a done-callback
            self._thread.join()

    def _run(self) -> None:
        while True:
            expired = []
            with self._cond:
                if self._stopped:
                    return
                now = time.monotonic()
                while self._heap and (self._heap[0][0] <= now or self._heap[0][2].done()):
                    expired.append(heapq.heappop(self._heap))
                if not expired:
                    self._cond.wait(self._heap[0][0] - now if self._heap else None)
            # Settled outside the lock: done-callbacks may submit new requests.
            for _, _, fut, conn, req_id, timeout in expired:
                if not fut.done():
                    conn.forget(req_id)
                    msg = f"no answer from {_fmt(conn.address)} within {timeout:g}s"
                    _settle(fut, error=DeadlineExceeded(msg))


# --- client -------------------------------------------------------------------


class BrokerClient:
    """A thread-safe, pipelining client of the gateway API.

    ``address`` is ``"host:port"``, several of them comma-separated, or a
    list: on a connection failure the client moves on to the next one.
    ``timeout`` (seconds) is sent with every request as its deadline; the
    client gives up shortly after it with ``DeadlineExceeded``. Values may be
    ``str`` (sent as UTF-8) or ``bytes``; values returned are ``bytes``.
    """

    def __init__(
        self,
        address: str | Iterable[str] = DEFAULT_ADDRESS,
        cluster_name: str = DEFAULT_CLUSTER,
        timeout: float = 15.0,
        *,
        connect_timeout: float = 5.0,
        route: bool = True,
        ssl_context: ssl.SSLContext | None = None,
    ):
        """``route=False`` keeps every request on the given addresses (a
        gateway forwarding to a specific broker uses that). ``ssl_context``
        (see ``broker.tls.client_context``) speaks TLS to the gateways."""
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.addresses = parse_addresses(address)
        self.cluster_name = cluster_name
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.ssl_context = ssl_context
        self._lock = threading.Lock()  # connecting, _conn, _next, _closed, _direct
        self._conn: _Connection | None = None
        self._next = 0  # index of the address to try first
        self._closed = False
        self._deadlines: _Deadlines | None = None
        self._route = route
        self._direct: dict[tuple[str, int], _Connection] = {}  # leader gateways
        self._leaders: dict[int, tuple[str, int]] = {}  # partition -> leader gateway
        self._partitions_count = 0
        self._routes_at = -ROUTES_MAX_AGE  # monotonic time of the last refresh
        self._refreshing = False
        self._rr = itertools.count()

    # --- requests -------------------------------------------------------------

    def append_async(self, data: str | bytes, partition: int | None = None) -> Future:
        """Append a record; the future's result is ``Appended(partition, position)``
        once the record is committed."""
        if partition is None and self._route:
            partition = self._pick_partition()
        body = {"op": "append", "data": _as_bytes(data, "data"), "partition": partition}
        return self._submit(body, lambda r: Appended(r["partition"], r["position"]))

    def append(self, data: str | bytes, partition: int | None = None) -> Appended:
        return self.append_async(data, partition).result()

    def append_many_async(
        self, records: Iterable[str | bytes], partition: int | None = None
    ) -> Future:
        """Append records in one request (at most ``MAX_APPEND_RECORDS``): they commit
        together, at consecutive positions, on one partition; the future's result is
        ``AppendedMany(partition, first, count)``. One request costs the broker about
        what one record does, so batching what is ready is the fast way to write."""
        data = [_as_bytes(r, "record") for r in records]
        if not 1 <= len(data) <= MAX_APPEND_RECORDS:
            raise ValueError(f"append 1..{MAX_APPEND_RECORDS} records at a time, not {len(data)}")
        if partition is None and self._route:
            partition = self._pick_partition()
        body = {"op": "append", "records": data, "partition": partition}
        return self._submit(body, lambda r: AppendedMany(r["partition"], r["position"], r["count"]))

    def append_many(
        self, records: Iterable[str | bytes], partition: int | None = None
    ) -> AppendedMany:
        return self.append_many_async(records, partition).result()

    def read(self, partition: int, from_position: int = 1, max_records: int = 1000) -> Records:
        """Committed records from ``from_position`` on (positions start at 1)."""
        body = {"op": "read", "partition": partition, "from": from_position, "max": max_records}
        return self._call(body, _records)

    def put(self, key: str, value: str | bytes) -> int:
        """Set ``key``; returns the partition that holds it."""
        body = {"op": "put", "key": _check_key(key), "value": _as_bytes(value, "value")}
        return self._call(body, lambda r: r["partition"])

    def get(self, key: str) -> bytes | None:
        """The value of ``key``, or None when it is absent."""
        try:
            return self._call({"op": "get", "key": _check_key(key)}, lambda r: r["value"])
        except NotFound:
            return None

    def cas(self, key: str, expected: str | bytes | None, value: str | bytes) -> None:
        """Set ``key`` to ``value`` if it currently holds ``expected`` (None:
        if it is absent); else raise ``FailedPrecondition`` carrying ``current``."""
        body = {
            "op": "cas",
            "key": _check_key(key),
            "expected": None if expected is None else _as_bytes(expected, "expected"),
            "value": _as_bytes(value, "value"),
        }
        self._call(body, lambda r: None)

    def delete(self, key: str) -> bool:
        """Remove ``key``; returns whether it existed."""
        return self._call({"op": "delete", "key": _check_key(key)}, lambda r: r["existed"])

    def request_async(self, body: dict, timeout: float | None = None) -> Future:
        """Send a raw gateway request; the future's result is the response body
        as it came, failures included (used by gateways forwarding requests).
        Connection loss and the deadline still raise ``Unavailable`` and
        ``DeadlineExceeded``."""
        return self._submit(dict(body), None, timeout)

    def topology(self) -> dict:
        """The cluster topology as the gateway sees it (the ``/v2/topology`` document)."""
        return self._call({"op": "topology"}, lambda r: {k: v for k, v in r.items() if k != "ok"})

    # --- lifecycle ------------------------------------------------------------

    def close(self) -> None:
        """Fail whatever is in flight with ``Unavailable`` and stop the threads."""
        with self._lock:
            self._closed = True
            conns = [self._conn, *self._direct.values()]
            self._conn, self._direct = None, {}
            deadlines, self._deadlines = self._deadlines, None
        for conn in conns:
            if conn is not None:
                conn.close(Unavailable("client closed"))
        if deadlines is not None:
            deadlines.stop()

    def __enter__(self) -> BrokerClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- internals ------------------------------------------------------------

    def _call(self, body: dict, convert: Callable[[dict], Any]) -> Any:
        return self._submit(body, convert).result()

    def _submit(
        self, body: dict, convert: Callable[[dict], Any] | None, timeout: float | None = None
    ) -> Future:
        timeout = self.timeout if timeout is None else timeout
        body["timeout"] = timeout
        fut: Future = Future()
        refusal = _too_large(body)
        if refusal is not None:
            _settle(fut, error=InvalidArgument(refusal))
            return fut
        leader = self._leader_for(body) if self._route and body["op"] != "topology" else None
        # A connection found closed before anything was sent on it is replaced
        # once; a second loss in a row is reported.
        for _ in range(2):
            try:
                conn, deadlines = self._connection(leader)
            except Unavailable as e:
                e.sent = False
                _settle(fut, error=e)
                return fut
            req_id = conn.submit(body, fut, convert)
            if req_id is not None:
                if not fut.done():
                    deadlines.add(timeout, fut, conn, req_id)
                return fut
        lost = Unavailable(f"connection to {_fmt(conn.address)} lost before the request was sent")
        lost.sent = False
        _settle(fut, error=lost)
        return fut

    # --- routing ------------------------------------------------------------------

    def routes(self) -> dict[int, str]:
        """The partition leaders' gateways as last learnt (a refresh starts if stale)."""
        if time.monotonic() - self._routes_at > ROUTES_MAX_AGE:
            self._refresh_routes()
        return {p: _fmt(address) for p, address in sorted(self._leaders.items())}

    def _leader_for(self, body: dict) -> tuple[str, int] | None:
        """The gateway of the leader of the request's partition, when known."""
        if time.monotonic() - self._routes_at > ROUTES_MAX_AGE:
            self._refresh_routes()
        partition = body.get("partition")
        if partition is None and "key" in body and self._partitions_count:
            partition = key_partition(body["key"], self._partitions_count)
        return self._leaders.get(partition) if partition is not None else None

    def _pick_partition(self) -> int | None:
        if time.monotonic() - self._routes_at > ROUTES_MAX_AGE:
            self._refresh_routes()
        known = sorted(self._leaders)
        return known[next(self._rr) % len(known)] if known else None

    def _refresh_routes(self) -> None:
        """Ask any gateway for the topology, in the background."""
        with self._lock:
            if self._refreshing or self._closed:
                return
            self._refreshing = True
            self._routes_at = time.monotonic()
        try:
            conn, deadlines = self._connection(None)
        except Unavailable:
            with self._lock:
                self._refreshing = False
            return
        fut: Future = Future()
        body = {"op": "topology", "timeout": min(self.timeout, 5.0)}
        req_id = conn.submit(body, fut, _leaders_of)
        if req_id is not None and not fut.done():
            deadlines.add(min(self.timeout, 5.0), fut, conn, req_id)
        fut.add_done_callback(self._routes_refreshed)

    def _routes_refreshed(self, fut: Future) -> None:
        with self._lock:
            self._refreshing = False
            if fut.exception() is None:
                self._partitions_count, self._leaders = fut.result()
                self._routes_at = time.monotonic()
            else:
                self._leaders = {}

    def _connection(self, direct: tuple[str, int] | None = None) -> tuple[_Connection, _Deadlines]:
        with self._lock:
            if self._closed:
                raise Unavailable("client closed")
            if self._deadlines is None:
                self._deadlines = _Deadlines()
            default = self._conn if self._conn is not None and not self._conn.closed else None
            if direct is not None and default is not None and default.address == direct:
                direct = None  # the leader's gateway is the one we already talk to
            if direct is not None:
                conn = self._direct.get(direct)
                if conn is None or conn.closed:
                    try:
                        conn = _Connection(
                            direct,
                            self.cluster_name,
                            min(self.connect_timeout, self.timeout),
                            self.timeout,
                            self._lost,
                            self.ssl_context,
                        )
                    except (OSError, ProtocolError):
                        conn = None  # fall back to the given addresses
                    else:
                        self._direct[direct] = conn
                if conn is not None:
                    return conn, self._deadlines
            if self._conn is not None and not self._conn.closed:
                return self._conn, self._deadlines
            failures = []
            for i in range(len(self.addresses)):
                index = (self._next + i) % len(self.addresses)
                address = self.addresses[index]
                try:
                    conn = _Connection(
                        address,
                        self.cluster_name,
                        min(self.connect_timeout, self.timeout),
                        self.timeout,
                        self._lost,
                        self.ssl_context,
                    )
                except (OSError, ProtocolError) as e:
                    failures.append(f"{_fmt(address)}: {describe_failure(e)}")
                    continue
                self._conn, self._next = conn, index
                return conn, self._deadlines
        raise Unavailable("cannot connect to " + "; ".join(failures))

    def _lost(self, conn: _Connection) -> None:
        with self._lock:
            if self._direct.get(conn.address) is conn:
                del self._direct[conn.address]
                self._routes_at = -ROUTES_MAX_AGE  # the leader may have moved: relearn
                return
            if self._conn is conn:
                self._conn = None
                # The next connection starts with the next address, so a
                # broker that is gone costs one failed attempt, not one per call.
                self._next = (self.addresses.index(conn.address) + 1) % len(self.addresses)


def _leaders_of(topology: dict) -> tuple[int, dict[int, tuple[str, int]]]:
    """(partitionsCount, partition -> gateway address of its live leader) from a topology."""
    best: dict[int, tuple[int, tuple[str, int]]] = {}
    for b in topology.get("brokers", []):
        if not b.get("alive", True) or not b.get("port"):
            continue
        for p in b.get("partitions", []):
            if (
                p.get("role") == "leader"
                and p.get("term", 0) >= best.get(p["partitionId"], (-1, None))[0]
            ):
                best[p["partitionId"]] = (p.get("term", 0), (b["host"], b["port"]))
    return topology.get("partitionsCount", 0), {pid: addr for pid, (_, addr) in best.items()}


def _records(body: dict) -> Records:
    records = [(int(pos), bytes(data)) for pos, data in body["records"]]
    return Records(body["partition"], records, body["next"])
