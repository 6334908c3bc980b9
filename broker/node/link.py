"""Requests between brokers over the internal port: forwarded client requests and the
control commands of topology changes (reconfigure a Raft group, start an exporter at
another's position, rebalance).

Only peers reach the internal port (a client's handshake there is refused), so the
control commands are never accepted from clients: the gateway takes them only from
this link. A request and its answer travel as GOSSIP frames on the peer connections
(``{"rpc": "req" | "resp", "id": n, "body": {...}}``), one-way each: a lost frame
ends in a timeout. When the connection to or from a peer ends, its requests still
waiting fail at once with :class:`AnswerLost` (the peer may have acted on them): a
killed leader costs its forwarded writes an error at once, not their whole deadline.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from broker.node.seams import AnswerLost

log = logging.getLogger(__name__)

MAX_PENDING = 10_000  # requests awaiting an answer; beyond it new ones fail at once


class InternalLink:
    def __init__(
        self,
        node_id: int,
        send: Callable[[int, Any], bool],
        serve: Callable[[Any, int, dict], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        """``send(node, payload)`` queues a GOSSIP frame to a peer (False: no route);
        ``serve(conn, req_id, body)`` answers a request with ``conn.send_response``."""
        self.node_id = node_id
        self._send = send
        self.serve = serve
        self._clock = clock
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: dict[int, Future] = {}
        self._targets: dict[int, int] = {}  # request id -> the node it went to
        self._deadlines: list[tuple[float, int]] = []

    def request(self, node_id: int, body: dict, timeout: float) -> Future:
        """The answer of ``node_id`` to ``body``; TimeoutError after ``timeout``."""
        fut: Future = Future()
        with self._lock:
            self._expire()
            if len(self._pending) >= MAX_PENDING:
                fut.set_exception(ConnectionError("too many requests to other brokers"))
                return fut
            rid = next(self._ids)
            self._pending[rid] = fut
            self._targets[rid] = node_id
            heapq.heappush(self._deadlines, (self._clock() + timeout, rid))
        if not self._send(node_id, {"rpc": "req", "id": rid, "body": body}):
            self._resolve(rid, exc=ConnectionError(f"no connection to node {node_id}"))
        return fut

    def on_message(self, src: int, payload) -> bool:
        """A GOSSIP payload from ``src``; True when it was this link's."""
        if not isinstance(payload, dict) or payload.get("rpc") not in ("req", "resp"):
            return False
        rid, body = payload.get("id"), payload.get("body")
        if type(rid) is not int or not isinstance(body, dict):
            log.warning("node %d: malformed link message from node %d dropped", self.node_id, src)
            return True
        if payload["rpc"] == "resp":
            self._resolve(rid, result=body)
        elif self.serve is not None:
            self.serve(_Reply(self, src), rid, body)
        return True

    def lost(self, node_id: int) -> None:
        """The connection to or from ``node_id`` ended: its requests fail now."""
        with self._lock:
            rids = [rid for rid, target in self._targets.items() if target == node_id]
        for rid in rids:
            self._resolve(
                rid, exc=AnswerLost(f"lost the connection to node {node_id} before its answer")
            )

    def expire(self) -> None:
        """Fail the requests past their deadline (also done on every new request)."""
        with self._lock:
            self._expire()

    def _expire(self) -> None:
        now = self._clock()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, rid = heapq.heappop(self._deadlines)
            fut = self._pending.pop(rid, None)
            self._targets.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_exception(TimeoutError("no answer from the other broker in time"))

    def _resolve(self, rid: int, result: dict | None = None, exc: Exception | None = None):
        with self._lock:
            fut = self._pending.pop(rid, None)
            self._targets.pop(rid, None)
        if fut is None or fut.done():
            return  # late (expired) or duplicated
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)


class _Reply:
    """What the gateway answers through: the requesting broker, by its id."""

    def __init__(self, link: InternalLink, node_id: int):
        self._link = link
        self.node_id = node_id

    def send_response(self, req_id: int, body: dict) -> bool:
        return self._link._send(self.node_id, {"rpc": "resp", "id": req_id, "body": body})
