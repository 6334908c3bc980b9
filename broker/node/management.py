"""Management HTTP API (a Zeebe-compatible subset; see DESIGN section 5).

Requests are dispatched through ROUTES, a table of (method, path pattern,
handler). A handler takes the ManagementSource and a parsed Request and
returns a Response, or raises HttpError; any other exception becomes a 500.
To add an endpoint, write a handler and add a Route row, for example::

    def remove_broker(source: ManagementSource, req: Request) -> Response:
        change = source.remove_broker(req.path_int("id"), dry_run=req.query_bool("dryRun"))
        return json_response(change, status=202)

    Route("DELETE", "/actuator/cluster/brokers/{id}", remove_broker)

Every response body is JSON (errors are ``{"message": ...}``) except the
Prometheus scrape endpoint.

Limits (no input may cause a 500 or hold the server):
* a body over MAX_BODY_SIZE is refused with 413 before it is read; a body
  without Content-Length on an endpoint that needs one gets 411; chunked
  bodies get 411;
* JSON bodies: unparseable, nested deeper than MAX_JSON_DEPTH, integers of
  more than MAX_JSON_INT_DIGITS digits and non-finite numbers (NaN, Infinity,
  1e999) get 400;
* integer query and path parameters are bounded (32-bit by default) and
  checked before any handler work;
* at most ``max_connections`` connections are served at once: past the cap the
  longest-idle keep-alive connection is closed to make room, or else the new
  connection is answered 503 (plain HTTP) or closed (TLS), with a warning;
* a request (TLS handshake, request line, headers and body) must arrive within
  ``request_deadline`` seconds of its first byte (of the accept for the TLS
  handshake), else the connection is closed (408 once headers are in); an idle
  keep-alive connection is closed after ``idle_timeout`` seconds;
* with ``ssl_context`` every connection is TLS; the handshake runs in the
  connection's own thread, never in the accept loop.
"""

from __future__ import annotations

import contextlib
import hmac
import io
import json
import logging
import math
import re
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from broker.metrics import CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE
from broker.metrics import BrokerMetrics

log = logging.getLogger("broker.node.management")

MAX_BODY_SIZE = 1024 * 1024
MAX_QUERY_FIELDS = 100
# JSON bodies of the API nest 3 levels at most.
MAX_JSON_DEPTH = 16
# Enough for any 64-bit number; Python refuses int() of over 4300 digits anyway.
MAX_JSON_INT_DIGITS = 20
# Integer parameters (broker and partition ids, counts) are 32-bit, as in Zeebe.
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
# Connections (each one a thread) served at once.
MAX_CONNECTIONS = 32
# A whole request (TLS handshake, request line, headers, body) must arrive within this.
REQUEST_DEADLINE = 10.0
# Idle keep-alive connections give up their thread after this.
CONNECTION_TIMEOUT = 60.0
# Sending one response may take this long (a client that does not read).
WRITE_TIMEOUT = 30.0
# At most one "connection cap reached" warning per this many seconds.
CAP_LOG_INTERVAL = 10.0
STOP_TIMEOUT = 5.0
JSON_CONTENT_TYPE = "application/json"


class ManagementSource(Protocol):
    """What the management API reads from the broker.

    Called from the server's request threads, possibly concurrently.
    """

    metrics: BrokerMetrics

    def health(self) -> dict[str, Any]:
        """``{"startup": bool, "ready": bool, "live": bool, "healthy": bool (optional,
        default true: every partition healthy), "details": {...}}``."""
        ...

    def topology(self) -> dict[str, Any]:
        """The ``/v2/topology`` body: ``{brokers: [{nodeId, host, port, partitions:
        [{partitionId, role, health}]}], clusterSize, partitionsCount,
        replicationFactor, gatewayVersion}``."""
        ...

    def partitions(self) -> dict[str, Any]:
        """The ``/actuator/partitions`` body: ``{"<partitionId>": {role,
        processedPosition, exportedPosition, snapshotId, ...}}``."""
        ...


class HttpError(Exception):
    """Raised by handlers and helpers; rendered as ``{"message": message}``."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def json_response(
    obj: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    body = json.dumps(obj, separators=(",", ":")).encode()
    return Response(status, body, JSON_CONTENT_TYPE, dict(headers or {}))


def empty_response(status: int = 204) -> Response:
    return Response(status)


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return json_response({"message": message}, status, headers)


def parse_bool(name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise HttpError(400, f"invalid value for {name}: {value!r} (expected true or false)")


_INTEGER = re.compile(r"[+-]?[0-9]+\Z")


def _shorten(value: str, limit: int = 40) -> str:
    return value if len(value) <= limit else f"{value[:limit]}... ({len(value)} characters)"


def parse_int(name: str, value: str, minimum: int = INT32_MIN, maximum: int = INT32_MAX) -> int:
    """A decimal integer in [minimum, maximum]; anything else is a 400 naming ``name``."""
    if not _INTEGER.match(value):
        raise HttpError(400, f"invalid value for {name}: {_shorten(value)!r} (expected an integer)")
    # Measure before int(): it refuses (ValueError) strings of over 4300 digits.
    if len(value.lstrip("+-").lstrip("0")) > 20 or not minimum <= int(value) <= maximum:
        raise HttpError(
            400, f"{name} must be between {minimum} and {maximum}, got {_shorten(value)}"
        )
    return int(value)


class _BadNumber(ValueError):
    pass


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise _BadNumber(f"integer {_shorten(text)} has more than {MAX_JSON_INT_DIGITS} digits")
    return int(text)


def _json_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BadNumber(f"number {_shorten(text)} is out of range")
    return value


def _json_constant(text: str) -> float:
    raise _BadNumber(f"{text} is not a JSON number")


def _json_depth(value: Any) -> int:
    """How deeply arrays and objects nest in ``value`` (a scalar is 0)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_JSON_DEPTH:
            break
        stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_json(body: bytes) -> Any:
    """``body`` as strict JSON (UTF-8; no NaN or Infinity; bounded numbers and nesting)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HttpError(400, f"invalid JSON body: not UTF-8 ({exc})") from None
    try:
        value = json.loads(
            text, parse_int=_json_int, parse_float=_json_float, parse_constant=_json_constant
        )
    except _BadNumber as exc:
        raise HttpError(400, f"invalid JSON body: {exc}") from None
    except RecursionError:
        raise HttpError(
            400, f"invalid JSON body: nested deeper than {MAX_JSON_DEPTH} levels"
        ) from None
    except ValueError as exc:  # JSONDecodeError, and int()'s digit limit
        raise HttpError(400, f"invalid JSON body: {exc}") from None
    if _json_depth(value) > MAX_JSON_DEPTH:
        raise HttpError(400, f"invalid JSON body: nested deeper than {MAX_JSON_DEPTH} levels")
    return value


@dataclass
class Request:
    method: str
    path: str
    path_params: dict[str, str]
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: bytes

    def query_str(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def query_bool(self, name: str, default: bool = False) -> bool:
        value = self.query_str(name)
        return default if value is None else parse_bool(f"query parameter {name}", value)

    def query_int(
        self,
        name: str,
        default: int | None = None,
        minimum: int = INT32_MIN,
        maximum: int = INT32_MAX,
    ) -> int | None:
        value = self.query_str(name)
        if value is None:
            return default
        return parse_int(f"query parameter {name}", value, minimum, maximum)

    def path_int(self, name: str, minimum: int = INT32_MIN, maximum: int = INT32_MAX) -> int:
        return parse_int(f"path parameter {name}", self.path_params[name], minimum, maximum)

    def json(self, *, required: bool = True) -> Any:
        """The body parsed as JSON; None for an empty body unless required."""
        if not self.body.strip():
            if required:
                if self.headers.get("Content-Length") is None:
                    raise HttpError(411, "request body required (JSON) with a Content-Length")
                raise HttpError(400, "request body required (JSON)")
            return None
        return parse_json(self.body)


Handler = Callable[[ManagementSource, Request], Response]


@dataclass(frozen=True)
class Route:
    """``pattern`` is a path where ``{name}`` matches one non-empty segment."""

    method: str
    pattern: str
    handler: Handler
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = re.split(r"\{(\w+)\}", self.pattern)
        # re.split alternates literal text and parameter names.
        regex = "".join(
            re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^/]+)" for i, part in enumerate(parts)
        )
        object.__setattr__(self, "regex", re.compile(regex + r"\Z"))


def match_route(
    routes: Sequence[Route], method: str, path: str
) -> tuple[Route | None, dict[str, str], list[str]]:
    """The route for ``method path`` and its decoded path parameters, or None
    and the methods the path does accept (empty when the path is unknown)."""
    allowed = []
    for route in routes:
        m = route.regex.match(path)
        if m is None:
            continue
        if route.method == method:
            return route, {k: unquote(v) for k, v in m.groupdict().items()}, []
        allowed.append(route.method)
    return None, {}, sorted(set(allowed))


# --- handlers -----------------------------------------------------------------


def _probe(key: str | None) -> Handler:
    """Health handler for one probe; None means status (live, ready and every
    partition healthy)."""

    def handler(source: ManagementSource, req: Request) -> Response:
        health = source.health()
        # UP only for a real True: a missing key, None or a string such as "false" is DOWN.
        if key is None:
            up = all(health.get(k) is True for k in ("live", "ready")) and (
                health.get("healthy", True) is True
            )
        else:
            up = health.get(key) is True
        body = {"status": "UP" if up else "DOWN", "details": health.get("details", {})}
        return json_response(body, 200 if up else 503)

    return handler


def get_topology(source: ManagementSource, req: Request) -> Response:
    return json_response(source.topology())


def get_status(source: ManagementSource, req: Request) -> Response:
    """Camunda's ``GET /v2/status``: 204 when every partition (1..partitionsCount) has a
    healthy leader in this broker's ``/v2/topology`` view of the cluster, else 503
    naming the partitions without a leader and those whose leader is not healthy."""
    topology = source.topology()
    leader_health: dict[int, list[str]] = {}  # partition -> health of each leader
    for broker in topology.get("brokers", []):
        for part in broker.get("partitions", []):
            if part.get("role") == "leader":
                leader_health.setdefault(part.get("partitionId"), []).append(part.get("health"))
    partitions = range(1, topology.get("partitionsCount", 0) + 1)
    leaderless = [p for p in partitions if p not in leader_health]
    unhealthy = [
        f"{p} ({'/'.join(map(str, leader_health[p]))})"
        for p in partitions
        if p in leader_health and "healthy" not in leader_health[p]
    ]
    if not leaderless and not unhealthy:
        return empty_response(204)
    problems = []
    if leaderless:
        problems.append("no leader for partition(s) " + ", ".join(map(str, leaderless)))
    if unhealthy:
        problems.append("the leader is not healthy for partition(s) " + ", ".join(unhealthy))
    return error_response(503, "; ".join(problems))


def get_partitions(source: ManagementSource, req: Request) -> Response:
    return json_response(source.partitions())


def get_prometheus(source: ManagementSource, req: Request) -> Response:
    return Response(200, source.metrics.render(), PROMETHEUS_CONTENT_TYPE)


ROUTES: tuple[Route, ...] = (
    Route("GET", "/actuator/health", _probe(None)),
    Route("GET", "/actuator/health/status", _probe(None)),
    Route("GET", "/actuator/health/startup", _probe("startup")),
    Route("GET", "/actuator/health/readiness", _probe("ready")),
    Route("GET", "/actuator/health/liveness", _probe("live")),
    Route("GET", "/v2/topology", get_topology),
    Route("GET", "/v2/status", get_status),
    Route("GET", "/actuator/partitions", get_partitions),
    Route("GET", "/actuator/prometheus", get_prometheus),
)


# --- HTTP plumbing ------------------------------------------------------------


class _Connection:
    """One accepted connection: the socket to shut to wake its thread (the TLS
    socket once wrapped) and since when it has been idle between requests."""

    __slots__ = ("evicted", "idle_since", "sock")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.idle_since: float | None = None
        self.evicted = False

    def shut(self) -> None:
        # socket.socket's own shutdown: SSLSocket.shutdown would drop the TLS
        # object under the thread that is blocked reading from it.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)


def _drain(sock: socket.socket) -> None:
    """Read what the peer already sent without blocking, so that closing sends a
    FIN (which lets the peer read our answer) rather than a reset."""
    with contextlib.suppress(OSError):
        for _ in range(16):
            if not sock.recv(65536, socket.MSG_DONTWAIT):
                return


_BUSY_BODY = json.dumps({"message": "too many management connections; try again later"}).encode()
_BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n" % len(_BUSY_BODY)
) + _BUSY_BODY


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], app: ManagementServer):
        self.app = app
        self._connections: dict[socket.socket, _Connection] = {}
        self._connections_lock = threading.Lock()
        self._refused = 0
        self._last_cap_log = -math.inf
        super().__init__(address, _RequestHandler)

    def process_request(self, request, client_address):
        with self._connections_lock:
            admitted = self._admit(request)
        if not admitted:
            self._refuse(request, client_address)
            return
        super().process_request(request, client_address)

    def _admit(self, request: socket.socket) -> bool:
        """Under the lock: take a slot, closing the longest-idle keep-alive
        connection if the cap is reached; False if every slot is busy."""
        live = [c for c in self._connections.values() if not c.evicted]
        if len(live) >= self.app.max_connections:
            idle = [c for c in live if c.idle_since is not None]
            if not idle:
                return False
            oldest = min(idle, key=lambda c: c.idle_since)
            oldest.evicted = True
            oldest.shut()
        self._connections[request] = _Connection(request)
        return True

    def _refuse(self, request: socket.socket, client_address) -> None:
        self._refused += 1
        now = time.monotonic()
        if now - self._last_cap_log >= CAP_LOG_INTERVAL:
            log.warning(
                "management API: connection cap of %d reached (all busy); refused %d "
                "connection(s), the latest from %s",
                self.app.max_connections,
                self._refused,
                client_address[0],
            )
            self._last_cap_log, self._refused = now, 0
        if self.app.ssl_context is None:  # a TLS client cannot read a plain answer
            _drain(request)
            with contextlib.suppress(OSError):
                request.send(_BUSY_RESPONSE, socket.MSG_DONTWAIT)
            with contextlib.suppress(OSError):
                request.shutdown(socket.SHUT_WR)
            _drain(request)
        with contextlib.suppress(OSError):
            request.close()

    def connection(self, request: socket.socket) -> _Connection | None:
        with self._connections_lock:
            return self._connections.get(request)

    def shutdown_request(self, request):
        with self._connections_lock:
            self._connections.pop(request, None)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Wake handler threads blocked on idle keep-alive connections."""
        with self._connections_lock:
            connections = list(self._connections.values())
        for conn in connections:
            conn.shut()

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], ConnectionError | ssl.SSLError):
            log.debug("management connection from %s dropped", client_address, exc_info=True)
        else:
            log.exception("management connection from %s failed", client_address)


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class _DeadlineReader(io.RawIOBase):
    """Reads from a socket waiting at most ``idle_timeout`` for the first byte of a
    request, then only until the request's deadline (so a client that drips one
    byte at a time cannot hold the connection)."""

    def __init__(self, sock: socket.socket, idle_timeout: float):
        self._sock = sock
        self.idle_timeout = idle_timeout
        self.deadline: float | None = None  # None: waiting for a request

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.deadline is None:
            timeout = self.idle_timeout
        else:
            timeout = self.deadline - time.monotonic()
            if timeout <= 0:
                raise TimeoutError("request not received within its deadline")
        self._sock.settimeout(timeout)
        return self._sock.recv_into(buffer)


class _SocketWriter(io.BufferedIOBase):
    def __init__(self, sock: socket.socket):
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._sock.settimeout(WRITE_TIMEOUT)
        self._sock.sendall(data)
        with memoryview(data) as view:
            return view.nbytes


class _RequestHandler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    # We never answer in HTTP/0.9, so even an unparseable request line gets a status line.
    default_request_version = "HTTP/1.0"
    server_version = "broker-management"
    sys_version = ""

    def setup(self) -> None:
        """Runs in the connection's own thread: the TLS handshake happens here."""
        app = self.server.app
        accepted = time.monotonic()
        self._tls: ssl.SSLSocket | None = None
        self._failed = False
        self._conn = self.server.connection(self.request)
        sock = self.request
        with contextlib.suppress(OSError):
            # Headers and body go out in separate writes; Nagle would delay the body.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        if app.ssl_context is not None:
            sock = self._handshake(app.ssl_context, accepted + app.request_deadline)
        self.connection = sock
        self._reader = _DeadlineReader(sock, app.idle_timeout)
        self._reader.deadline = accepted + app.request_deadline
        self._served = False
        self.rfile = io.BufferedReader(self._reader)
        self.wfile = _SocketWriter(sock)

    def _handshake(self, context: ssl.SSLContext, deadline: float) -> ssl.SSLSocket:
        peer = self.client_address[0]
        tls = context.wrap_socket(self.request, server_side=True, do_handshake_on_connect=False)
        self._tls = tls
        if self._conn is not None:
            self._conn.sock = tls
            if self._conn.evicted:  # stopped while wrapping
                self._conn.shut()
        try:
            tls.settimeout(max(deadline - time.monotonic(), 0.001))
            tls.do_handshake()
        except ssl.SSLError as exc:
            self._failed = True
            if exc.reason == "HTTP_REQUEST":
                log.warning("management API: plain HTTP request from %s on the TLS port", peer)
            else:
                log.info("management API: TLS handshake with %s failed: %s", peer, exc)
        except TimeoutError:
            self._failed = True
            log.info("management API: TLS handshake with %s not done within its deadline", peer)
        except OSError as exc:
            self._failed = True
            log.info("management API: TLS handshake with %s failed: %s", peer, exc)
        return tls

    def handle(self) -> None:
        if self._failed:
            return
        try:
            super().handle()
        except (ConnectionError, ssl.SSLError) as exc:
            log.debug("management connection from %s dropped: %s", self.client_address[0], exc)

    def handle_one_request(self) -> None:
        # The first request must arrive within the request deadline of the accept
        # (a connection that sends nothing is no idle keep-alive client). Later,
        # wait up to the idle timeout for the first byte of the next request
        # (the connection counts as idle meanwhile and may be closed to make
        # room); from then on the whole request must arrive within the deadline.
        if self._served:
            self._reader.deadline = None
            if self._conn is not None:
                self._conn.idle_since = time.monotonic()
        try:
            first = self.rfile.peek(1)
        except (TimeoutError, OSError):
            first = b""
        if self._conn is not None:
            self._conn.idle_since = None
        if not first or (self._conn is not None and self._conn.evicted):
            self.close_connection = True
            return
        if self._served:
            self._reader.deadline = time.monotonic() + self.server.app.request_deadline
        self._served = True
        super().handle_one_request()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self._tls is not None:
                with contextlib.suppress(OSError):
                    self._tls.close()

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _dispatch(self) -> None:
        self._body_read = False
        try:
            response = self._handle()
        except HttpError as exc:
            response = error_response(exc.status, exc.message, exc.headers)
        except Exception as exc:
            log.exception("management handler failed: %s %s", self.command, self.path)
            response = error_response(500, f"internal error: {type(exc).__name__}: {exc}")
        if not self._body_read and self._has_body():
            # The unread body would be parsed as the next request.
            self.close_connection = True
        self._send(response)

    def _handle(self) -> Response:
        app = self.server.app
        if app.token is not None and not self._authorized(app.token):
            raise HttpError(401, "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"})
        url = urlsplit(self.path)
        route, params, allowed = match_route(app.routes, self.command, url.path)
        if route is None:
            if allowed:
                raise HttpError(
                    405,
                    f"method {self.command} not allowed for {url.path}",
                    {"Allow": ", ".join(allowed)},
                )
            raise HttpError(404, f"no such endpoint: {self.command} {url.path}")
        try:
            query = parse_qs(url.query, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)
        except ValueError as exc:
            raise HttpError(400, f"invalid query string: {exc}") from None
        request = Request(self.command, url.path, params, query, self.headers, self._read_body())
        return route.handler(app.source, request)

    def _authorized(self, token: str) -> bool:
        presented = self.headers.get("Authorization", "").encode("latin-1", "replace")
        return hmac.compare_digest(presented, b"Bearer " + token.encode())

    def _has_body(self) -> bool:
        return "Transfer-Encoding" in self.headers or self.headers.get("Content-Length", "0") != "0"

    def _content_length(self) -> int | None:
        """The announced body length, checked before anything is read."""
        if "Transfer-Encoding" in self.headers:
            raise HttpError(411, "chunked bodies are not supported; send Content-Length")
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            return None
        raw = lengths[0].strip()
        if any(other.strip() != raw for other in lengths[1:]):
            raise HttpError(400, "conflicting Content-Length headers")
        if not (raw.isascii() and raw.isdigit()):
            raise HttpError(400, f"invalid Content-Length: {_shorten(raw)!r}")
        # Compare as text first: int() of a 5000-digit string raises ValueError.
        if len(raw.lstrip("0")) > len(str(MAX_BODY_SIZE)) or int(raw) > MAX_BODY_SIZE:
            raise HttpError(
                413, f"request body too large: {_shorten(raw)} bytes (limit {MAX_BODY_SIZE})"
            )
        return int(raw)

    def handle_expect_100(self) -> bool:
        """Invite the body (100 Continue) only if it will be accepted."""
        try:
            self._content_length()
        except HttpError as exc:
            self.close_connection = True
            self._send(error_response(exc.status, exc.message, exc.headers))
            return False
        return super().handle_expect_100()

    def _read_body(self) -> bytes:
        length = self._content_length()
        if length is None:
            self._body_read = True
            return b""
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            self.close_connection = True
            self._body_read = True
            log.info(
                "management API: request body from %s not received within %.0fs; closing",
                self.client_address[0],
                self.server.app.request_deadline,
            )
            raise HttpError(
                408, f"request not received within {self.server.app.request_deadline:g}s"
            ) from None
        self._body_read = True
        if len(body) < length:
            self.close_connection = True
            raise HttpError(400, "request body shorter than Content-Length")
        return body

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if response.status not in (204, 304):
            self.send_header("Content-Type", response.content_type or JSON_CONTENT_TYPE)
            self.send_header("Content-Length", str(len(response.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if response.status not in (204, 304):
            self.wfile.write(response.body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors raised by the stdlib parser (bad request line, headers, method), as JSON."""
        self.log_error("%s %s", code, message)
        self.close_connection = True
        try:
            reason = HTTPStatus(code).phrase
        except ValueError:
            reason = ""
        body = json.dumps({"message": message or reason}).encode()
        self.send_response(code)
        self.send_header("Content-Type", JSON_CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def log_error(self, format: str, *args: Any) -> None:
        log.info("%s " + format, self.address_string(), *args)


class ManagementServer:
    """The management API of one broker, served on its own threads.

    ``ssl_context`` (server side) makes it HTTPS; ``max_connections``,
    ``request_deadline`` and ``idle_timeout`` bound what clients can hold (see
    the module docstring)."""

    def __init__(
        self,
        source: ManagementSource,
        host: str,
        port: int,
        token: str | None = None,
        *,
        routes: Sequence[Route] = ROUTES,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = MAX_CONNECTIONS,
        request_deadline: float = REQUEST_DEADLINE,
        idle_timeout: float = CONNECTION_TIMEOUT,
    ):
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.source = source
        self.host = host
        self.port = port
        self.token = token
        self.routes = tuple(routes)
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self.request_deadline = request_deadline
        self.idle_timeout = idle_timeout
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._httpd is not None:
            raise RuntimeError("management server already started")
        server_class = _HTTPServer6 if ":" in self.host else _HTTPServer
        self._httpd = server_class((self.host, self.port), self)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"management-{self.port}",
            daemon=True,
        )
        self._thread.start()
        log.info(
            "management API listening on %s:%d (%s)",
            self.host,
            self.port,
            "https" if self.ssl_context is not None else "http",
        )

    def stop(self) -> None:
        httpd, thread = self._httpd, self._thread
        if httpd is None or thread is None:
            return
        self._httpd = self._thread = None
        httpd.shutdown()
        httpd.server_close()
        httpd.close_connections()
        thread.join(STOP_TIMEOUT)
        if thread.is_alive():
            log.warning("management server thread did not stop within %.1fs", STOP_TIMEOUT)

    def __enter__(self) -> ManagementServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
