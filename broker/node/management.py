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
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import re
import socket
import sys
import threading
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
# Idle keep-alive connections and slow clients give up their thread after this.
CONNECTION_TIMEOUT = 60.0
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


def parse_int(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise HttpError(400, f"invalid value for {name}: {value!r} (expected an integer)") from None


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

    def query_int(self, name: str, default: int | None = None) -> int | None:
        value = self.query_str(name)
        return default if value is None else parse_int(f"query parameter {name}", value)

    def path_int(self, name: str) -> int:
        return parse_int(f"path parameter {name}", self.path_params[name])

    def json(self, *, required: bool = True) -> Any:
        """The body parsed as JSON; None for an empty body unless required."""
        if not self.body.strip():
            if required:
                raise HttpError(400, "request body required (JSON)")
            return None
        try:
            return json.loads(self.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise HttpError(400, f"invalid JSON body: {exc}") from None


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
        if key is None:
            up = bool(health["live"] and health["ready"] and health.get("healthy", True))
        else:
            up = bool(health[key])
        body = {"status": "UP" if up else "DOWN", "details": health.get("details", {})}
        return json_response(body, 200 if up else 503)

    return handler


def get_topology(source: ManagementSource, req: Request) -> Response:
    return json_response(source.topology())


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
    Route("GET", "/actuator/partitions", get_partitions),
    Route("GET", "/actuator/prometheus", get_prometheus),
)


# --- HTTP plumbing ------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: ManagementServer):
        self.app = app
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _RequestHandler)

    def process_request(self, request, client_address):
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Wake handler threads blocked on idle keep-alive connections."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], ConnectionError):
            log.debug("management connection from %s dropped", client_address, exc_info=True)
        else:
            log.exception("management connection from %s failed", client_address)


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class _RequestHandler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    # We never answer in HTTP/0.9, so even an unparseable request line gets a status line.
    default_request_version = "HTTP/1.0"
    server_version = "broker-management"
    sys_version = ""
    timeout = CONNECTION_TIMEOUT
    # Headers and body go out in separate writes; Nagle would delay the body on keep-alive.
    disable_nagle_algorithm = True

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
        presented = self.headers.get("Authorization", "").encode("latin-1")
        return hmac.compare_digest(presented, b"Bearer " + token.encode())

    def _has_body(self) -> bool:
        return "Transfer-Encoding" in self.headers or self.headers.get("Content-Length", "0") != "0"

    def _read_body(self) -> bytes:
        if "Transfer-Encoding" in self.headers:
            raise HttpError(411, "chunked bodies are not supported; send Content-Length")
        raw = self.headers.get("Content-Length")
        if raw is None:
            self._body_read = True
            return b""
        if not (raw.isascii() and raw.isdigit()):
            raise HttpError(400, f"invalid Content-Length: {raw!r}")
        length = int(raw)
        if length > MAX_BODY_SIZE:
            raise HttpError(413, f"request body too large: {length} bytes (limit {MAX_BODY_SIZE})")
        body = self.rfile.read(length)
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
    """The management API of one broker, served on its own threads."""

    def __init__(
        self,
        source: ManagementSource,
        host: str,
        port: int,
        token: str | None = None,
        *,
        routes: Sequence[Route] = ROUTES,
    ):
        self.source = source
        self.host = host
        self.port = port
        self.token = token
        self.routes = tuple(routes)
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
        log.info("management API listening on %s:%d", self.host, self.port)

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
