"""Client requests: validate, pick the partition, route to its leader, answer.

Any broker accepts any request. Keyed requests go to partition
``crc32(key) % partitionsCount + 1``; unkeyed appends go round-robin over the
partitions that have a leader. If this broker leads the partition, the
command is proposed to the local Raft group and answered when applied;
otherwise it is forwarded to the leader over the internal link (one hop: a
forwarded request is never forwarded again, the leader answers NOT_LEADER
instead and this gateway retries). Retries on leader change continue until the
request deadline. Answers never block the connection's reader thread.

Control commands of topology changes (``_reconfigure``, ``_export_init``,
``_rebalance``) run on the partition's leader the same way, but are accepted
only from this broker (``control``) and from the internal link, never from a
client connection.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from broker import partition as sm
from broker.node.seams import AnswerLost, Link, Partitions
from broker.raft.core import ProposalRejected
from broker.raft.messages import MAX_NODE_ID, MAX_PRIORITY, MAX_VOTERS, Configuration
from broker.wire import MAX_APPEND_RECORDS, MAX_FRAME_SIZE, command_too_large, max_command_size

log = logging.getLogger(__name__)

RETRY_DELAY = 0.05  # between routing attempts while a partition has no known leader
SWEEP_INTERVAL = 0.05  # how often requests past their deadline are answered
MAX_READ = 10_000
MAX_TIMEOUT = 3600.0  # seconds; a request's own timeout is capped by request_timeout anyway
MAX_POSITION = 2**62 - 1  # record positions a read may start from
MAX_COUNT = 2**31 - 1  # the largest "max" of a read (then capped at MAX_READ)
MAX_PARTITIONS = 2**31 - 1
MAX_BACKUP_ID = 2**63 - 1  # Zeebe's backup ids are positive longs
# Client operations that add data: refused below data.freeSpace.processing.
WRITE_OPS = frozenset({"append", "put", "cas", "delete"})


class RequestError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _reconfigure(voters: dict[int, int]):
    """Make ``voters`` (broker -> priority) the group; reports whether it is committed."""

    def fn(core) -> dict:
        if not core.is_leader:
            return {"ok": False, "code": "NOT_LEADER", "leader": core.leader_id}
        target = Configuration.of(voters, voters)
        if core.config == target:
            return {"ok": True, "committed": core.config_index <= core.commit}
        try:
            core.propose_config(target)
        except ProposalRejected as exc:  # e.g. the previous change is not committed yet
            return {"ok": True, "committed": False, "message": str(exc)}
        except ValueError as exc:
            return _error("INVALID_ARGUMENT", str(exc))
        return {"ok": True, "committed": False}

    return fn


def _rebalance(core) -> dict:
    if not core.is_leader:
        return {"ok": False, "code": "NOT_LEADER", "leader": core.leader_id}
    return {"ok": True, "steppingDown": core.step_down_if_not_primary()}


def _retryable(result: dict) -> bool:
    """Only retry what is known not to have been committed (no duplicates)."""
    return result.get("code") == "NOT_LEADER" or bool(result.get("retry"))


def _error(code: str, message: str) -> dict:
    return {"ok": False, "code": code, "message": message}


def _show(value: Any) -> str:
    """``repr`` of a value taken from a request, short enough for an answer or a log."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _need(body: dict, name: str, kind, optional: bool = False):
    value = body.get(name)
    if value is None and optional:
        return None
    if type(value) is str and kind in (str, bytes):
        try:
            data = value.encode()
        except UnicodeEncodeError:
            raise RequestError("INVALID_ARGUMENT", f"{name!r} is not valid UTF-8") from None
        return data if kind is bytes else value
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise RequestError("INVALID_ARGUMENT", f"{name!r} must be {kind.__name__}")
    return value


def _need_int(body: dict, name: str, lo: int, hi: int, optional: bool = False) -> int | None:
    value = _need(body, name, int, optional)
    if value is not None and not lo <= value <= hi:
        raise RequestError("INVALID_ARGUMENT", f"{name!r} must be in {lo}..{hi}, got {value}")
    return value


# What a client may ask (control commands come only from brokers), and the codes
# an answer may carry: the labels of broker_gateway_requests_total come from these
# sets only, so no request can add a time series.
CLIENT_OPS = frozenset({"append", "read", "put", "get", "cas", "delete", "topology"})
CONTROL_OPS = frozenset({"_reconfigure", "_export_init", "_rebalance", "_checkpoint"})
KNOWN_OPS = CLIENT_OPS | CONTROL_OPS
ERROR_CODES = frozenset(
    {
        "INVALID_ARGUMENT",
        "NOT_LEADER",
        "UNAVAILABLE",
        "DEADLINE_EXCEEDED",
        "RESOURCE_EXHAUSTED",
        "OUT_OF_RANGE",
        "NOT_FOUND",
        "FAILED_PRECONDITION",
    }
)
# The fields a forwarded request carries to the leader (besides "forwarded" and
# "timeout"): nothing else a client put in its body travels further.
FORWARDED_FIELDS = (
    "op",
    "data",
    "records",
    "partition",
    "from",
    "max",
    "key",
    "value",
    "expected",
    "replicas",
    "exporter",
    "backupId",
)


def op_label(body: Any, internal: bool = False) -> str:
    """The ``op`` label of a request's metrics: a known op or "unknown"."""
    op = body.get("op") if type(body) is dict else None
    if type(op) is str and (op in CLIENT_OPS or (internal and op in CONTROL_OPS)):
        return op
    return "unknown"


def code_label(result: dict) -> str:
    """The ``code`` label of an answer: "OK", a known error code or "UNKNOWN"."""
    if result.get("ok"):
        return "OK"
    code = result.get("code")
    return code if type(code) is str and code in ERROR_CODES else "UNKNOWN"


@dataclass(frozen=True, slots=True)
class Parsed:
    """A valid request: its op, partition (None: any, or topology), command (the
    bytes to propose, a function of the Raft core for control commands, None for
    topology) and its own timeout (None: the gateway's)."""

    op: str
    partition: int | None
    command: Any
    timeout: float | None


def commands(body: dict) -> int | None:
    """How many commands a validated append of ``records`` proposes (one per record,
    answered once with the first position and the count); None for any other
    request (one command, one result)."""
    records = body.get("records")
    return len(records) if type(records) is list and body.get("op") == "append" else None


def parse_request(
    body: Any, partitions_count: int, max_frame_size: int = MAX_FRAME_SIZE, internal: bool = False
) -> Parsed:
    """Validate a request body; ``RequestError`` (INVALID_ARGUMENT) names what is wrong.

    Whatever it accepts can be replicated: a command (an entry's data) larger
    than ``max_command_size(max_frame_size)`` is refused, as are numbers out of
    range, of the wrong type (a bool is not a number), NaN or infinite."""
    if type(body) is not dict:
        raise RequestError("INVALID_ARGUMENT", "a request is a map")
    op = op_label(body, internal)
    if op == "unknown":
        raise RequestError("INVALID_ARGUMENT", f"unknown op {_show(body.get('op'))}")
    timeout = body.get("timeout")
    if timeout is not None and (
        type(timeout) not in (int, float)
        or not math.isfinite(timeout)
        or not 0 <= timeout <= MAX_TIMEOUT
    ):
        raise RequestError(
            "INVALID_ARGUMENT", f"'timeout' must be a number of seconds in 0..{MAX_TIMEOUT:g}"
        )
    if op == "topology":
        return Parsed(op, None, None, timeout)
    if op == "append" and "records" in body:
        pid, command = _append_many(body, partitions_count)
    else:
        pid, command = _command(op, body, partitions_count)
    if type(command) is bytes:
        limit = max_command_size(max_frame_size)
        if len(command) > limit:
            raise RequestError("INVALID_ARGUMENT", command_too_large(len(command), max_frame_size))
    return Parsed(op, pid, command, timeout)


def _append_many(body: dict, p: int) -> tuple[int | None, bytes]:
    """An append of ``records`` (instead of ``data``): one append command per record,
    proposed as one (so they commit in one entry, at consecutive positions)."""
    if "data" in body:
        raise RequestError("INVALID_ARGUMENT", "an append carries 'data' or 'records', not both")
    records = body["records"]
    if type(records) is not list or not 1 <= len(records) <= MAX_APPEND_RECORDS:
        raise RequestError(
            "INVALID_ARGUMENT", f"'records' must be a list of 1..{MAX_APPEND_RECORDS} records"
        )
    pid = _partition(body, p, optional=True)
    kinds = set(map(type, records))
    if not kinds <= {bytes, str}:
        raise RequestError("INVALID_ARGUMENT", "every record in 'records' must be bytes")
    if str in kinds:
        records = [_need({"record": r}, "record", bytes) for r in records]
    return pid, sm.encode_appends(records)


def _partition(body: dict, p: int, optional: bool = False) -> int | None:
    pid = _need_int(body, "partition", -MAX_PARTITIONS, MAX_PARTITIONS, optional)
    if pid is not None and not 1 <= pid <= p:
        raise RequestError("INVALID_ARGUMENT", f"partition must be 1..{p}, got {pid}")
    return pid


def _command(op: str, body: dict, p: int) -> tuple[int | None, Any]:
    if op == "append":
        data = _need(body, "data", bytes)
        return _partition(body, p, optional=True), sm.encode(sm.APPEND, data)
    if op == "read":
        pid = _partition(body, p)
        start = _need_int(body, "from", 0, MAX_POSITION, optional=True) or 1
        count = _need_int(body, "max", 0, MAX_COUNT, optional=True) or 1000
        return pid, sm.encode(sm.READ, start, max(1, min(count, MAX_READ)))
    if op in ("put", "get", "cas", "delete"):
        key = _need(body, "key", str)
        pid = sm.key_partition(key, p)
        if op == "put":
            return pid, sm.encode(sm.PUT, key, _need(body, "value", bytes))
        if op == "get":
            return pid, sm.encode(sm.GET, key)
        if op == "delete":
            return pid, sm.encode(sm.DELETE, key)
        expected = _need(body, "expected", bytes, optional=True)
        return pid, sm.encode(sm.CAS, key, expected, _need(body, "value", bytes))
    if op == "_reconfigure":  # internal: topology changes (PARTITION_JOIN, ...)
        pid = _partition(body, p)
        replicas = _need(body, "replicas", dict)
        try:
            voters = {int(b): int(prio) for b, prio in replicas.items()}
        except (TypeError, ValueError, OverflowError):
            voters = None
        if (
            voters is None
            or len(voters) > MAX_VOTERS
            or not all(0 <= b <= MAX_NODE_ID and 0 <= v <= MAX_PRIORITY for b, v in voters.items())
        ):
            raise RequestError("INVALID_ARGUMENT", "'replicas' maps broker ids to priorities")
        return pid, _reconfigure(voters)
    if op == "_export_init":  # internal: enable an exporter with initializeFrom
        pid = _partition(body, p)
        exporter, source = _need(body, "exporter", str), _need(body, "from", str)
        return pid, sm.encode(sm.EXPORT_INIT, exporter, source)
    if op == "_checkpoint":  # internal: POST /actuator/backups
        pid = _partition(body, p)
        return pid, sm.encode(sm.CHECKPOINT, _need_int(body, "backupId", 1, MAX_BACKUP_ID))
    if op == "_rebalance":  # internal: POST /actuator/rebalance
        return _partition(body, p), _rebalance
    raise RequestError("INVALID_ARGUMENT", f"unknown op {_show(op)}")


class Scheduler:
    """One thread running delayed callbacks (retries), earliest first."""

    def __init__(self, name: str):
        self._heap: list = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), fn))
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                if self._stopped:
                    return
                _, _, fn = heapq.heappop(self._heap)
            try:
                fn()
            except Exception:
                log.exception("scheduled callback failed")


class Gateway:
    def __init__(
        self,
        node_id: int,
        partitions_count: int,
        partitions: Partitions,
        leader_of: Callable[[int], int | None],
        link: Link,
        topology: Callable[[], dict],
        request_timeout: float,
        max_inflight: int,
        metrics=None,
        max_frame_size: int = MAX_FRAME_SIZE,
    ):
        """``partitions``: the handles of the partitions hosted here (a live mapping);
        ``leader_of``: who leads a partition not hosted here (the membership view);
        ``link``: requests to other brokers; ``topology``: the ``/v2/topology`` body;
        ``max_frame_size``: the transport's frame limit, which bounds what is accepted
        (anything accepted must fit in a replication frame)."""
        self.node_id = node_id
        self.max_frame_size = max_frame_size
        self.partitions = partitions
        self.leader_of = leader_of
        self.link = link
        self.topology = topology
        self.partitions_count = partitions_count
        self.request_timeout = request_timeout
        self.max_inflight = max_inflight
        self.metrics = metrics
        self.scheduler = Scheduler(f"gateway-{node_id}")
        self._rr = itertools.count()
        self._inflight: dict[int, int] = {}
        self._lock = threading.Lock()
        # Unanswered requests only (a per-request timer would keep every
        # request's closure alive for the whole deadline): token -> (deadline, reply)
        self._waiting: dict[int, Callable[[dict], None]] = {}
        self._deadlines: list[tuple[float, int]] = []  # heap; answered tokens are skipped
        # Requests with the gateway's own timeout, in arrival order (so in deadline
        # order): appended by the I/O loop, popped by the sweep, no lock needed.
        self._fifo_deadlines: deque[tuple[float, int]] = deque()
        self._tokens = itertools.count()
        self._children: dict = {}  # (op, code) -> metric child
        if metrics:
            metrics.sample_on_render(self._sample_inflight)
        self.scheduler.call_later(SWEEP_INTERVAL, self._sweep)

    def stop(self) -> None:
        self.scheduler.stop()

    # Labelled metric children, looked up once: labels() costs more than the
    # update itself on the per-request path.
    def _answered(self, op: str, code: str):
        child = self._children.get((op, code))
        if child is None:
            child = self._children[(op, code)] = self.metrics.requests.labels(op, code)
        return child

    def _sample_inflight(self) -> None:
        with self._lock:
            inflight = list(self._inflight.items())
        for pid, n in inflight:
            self.metrics.inflight_requests.labels(str(pid)).set(n)

    # --- entry point (transport reader thread) --------------------------------

    def control(self, body: dict, timeout: float) -> Future:
        """Run a control command on the partition's leader, here or elsewhere; the
        future holds its answer (topology changes, rebalance)."""
        fut: Future = Future()
        self.handle(_FutureReply(fut), 0, {**body, "timeout": timeout}, internal=True)
        return fut

    def handle(self, conn, req_id: int, body: dict, internal: bool = False) -> None:
        """A request from a client connection, or (``internal``) from this broker or
        another one over the internal link: only those may send control commands and
        forwarded requests."""
        start = time.monotonic()
        op = op_label(body, internal)  # control commands are unknown to clients
        token = next(self._tokens)

        def reply(result: dict) -> None:
            if self._waiting.pop(token, None) is None:
                return  # answered already (a request gets exactly one answer)
            if self.metrics:
                self._answered(op, code_label(result)).inc()
            conn.send_response(req_id, result)

        self._waiting[token] = reply
        try:
            req = parse_request(body, self.partitions_count, self.max_frame_size, internal)
        except RequestError as exc:
            reply(_error(exc.code, exc.message))
            return
        if req.op == "topology":
            reply({"ok": True, **self.topology()})
            return
        forwarded = internal and body.get("forwarded") is True
        if req.timeout is None or req.timeout >= self.request_timeout:
            # The gateway's own timeout: deadlines come in arrival order (no lock)
            deadline = start + self.request_timeout
            self._fifo_deadlines.append((deadline, token))
        else:
            deadline = start + req.timeout
            with self._lock:
                heapq.heappush(self._deadlines, (deadline, token))
        self._route(req.partition, req.command, body, deadline, forwarded, reply)

    def _sweep(self) -> None:
        now, expired = time.monotonic(), []
        fifo = self._fifo_deadlines
        while fifo and fifo[0][0] <= now:
            expired.append(fifo.popleft()[1])
        with self._lock:
            while self._deadlines and self._deadlines[0][0] <= now:
                expired.append(heapq.heappop(self._deadlines)[1])
        for token in expired:
            reply = self._waiting.get(token)
            if reply is not None:
                reply(_error("DEADLINE_EXCEEDED", "not committed in time; it may still commit"))
        expire = getattr(self.link, "expire", None)
        if expire is not None:
            expire()  # requests to other brokers past their deadline
        self.scheduler.call_later(SWEEP_INTERVAL, self._sweep)

    # --- routing ------------------------------------------------------------------

    def _leader(self, partition_id: int) -> int | None:
        local = self.partitions.get(partition_id)
        if local is not None:
            status = local.status
            if status.get("role") == "leader":
                return self.node_id
            if status.get("leader") is not None:
                return status["leader"]
        return self.leader_of(partition_id)

    def _pick_partition(self) -> int | None:
        n = self.partitions_count
        offset = next(self._rr)
        for k in range(n):
            pid = (offset + k) % n + 1
            if self._leader(pid) is not None:
                return pid
        return None

    def _route(self, pid, command, body, deadline, forwarded, reply) -> None:
        if time.monotonic() >= deadline:
            where = f"partition {pid}" if pid else "any partition"
            reply(_error("DEADLINE_EXCEEDED", f"no answer from the leader of {where} in time"))
            return
        target = pid if pid is not None else self._pick_partition()
        leader = self._leader(target) if target is not None else None
        # what a retry needs; the function itself is made only when one is due
        attempt = (pid, command, body, deadline, forwarded, reply, leader)
        if leader is None:
            self._retry(
                attempt, f"no leader for {f'partition {target}' if target else 'any partition'}"
            )
            return
        if leader == self.node_id:
            self._propose(target, command, body, attempt)
        elif forwarded:
            self._retry(attempt, f"node {self.node_id} does not lead partition {target}")
        else:
            self._forward(
                leader, target, body, deadline, reply, lambda why: self._retry(attempt, why)
            )

    def _retry(self, attempt: tuple, reason: str) -> None:
        pid, command, body, deadline, forwarded, reply, leader = attempt
        if forwarded:  # the origin gateway retries; we only answer for ourselves
            reply({"ok": False, "code": "NOT_LEADER", "leader": leader, "message": reason})
            return
        if time.monotonic() + RETRY_DELAY >= deadline:
            reply(_error("UNAVAILABLE", reason))  # never committed: safe for the client
            return
        self.scheduler.call_later(
            RETRY_DELAY, lambda: self._route(pid, command, body, deadline, False, reply)
        )

    def _propose(self, pid, command, body, attempt: tuple) -> None:
        reply = attempt[5]
        runner = self.partitions.get(pid)
        if runner is None:  # removed meanwhile (a topology change)
            self._retry(attempt, f"node {self.node_id} no longer hosts partition {pid}")
            return
        if not callable(command) and not str(body.get("op", "")).startswith("_"):
            refusal = runner.refusal(write=body.get("op") in WRITE_OPS)
            if refusal is not None:  # disk low or partition stopped: at once, no retry
                reply(refusal)
                return
        with self._lock:
            n = self._inflight.get(pid, 0)
            if n >= self.max_inflight:
                reply(_error("RESOURCE_EXHAUSTED", f"partition {pid}: {n} requests in flight"))
                return
            self._inflight[pid] = n + 1

        def done(result: dict) -> None:
            with self._lock:
                self._inflight[pid] -= 1
            if _retryable(result):
                why = result.get("message") or f"node {self.node_id} does not lead {pid}"
                self._retry(attempt, why)
            else:
                reply(result)

        if callable(command):  # an internal operation on the Raft core itself

            def called(fut) -> None:
                exc = fut.exception()
                done(_error("UNAVAILABLE", str(exc)) if exc else fut.result())

            runner.call(command).add_done_callback(called)
        else:
            count = commands(body)
            if count is None:
                runner.propose(command, done)
            else:
                runner.propose(command, done, count)

    def _forward(self, leader, pid, body, deadline, reply, retry) -> None:
        remaining = max(0.0, deadline - time.monotonic())
        fwd = {k: body[k] for k in FORWARDED_FIELDS if k in body}
        fwd.update(partition=pid, forwarded=True, timeout=remaining)
        fut = self.link.request(leader, fwd, timeout=remaining)

        def done(f) -> None:
            try:
                result = f.result()
            except AnswerLost as exc:  # it may have been proposed: not retried here
                reply(_error("DEADLINE_EXCEEDED", f"{exc}; it may still commit"))
                return
            except Exception as exc:
                retry(f"forwarding to node {leader} failed: {exc}")
                return
            if _retryable(result):
                retry(result.get("message") or f"node {leader} does not lead partition {pid}")
            else:
                reply(result)

        fut.add_done_callback(done)


class _FutureReply:
    """A connection stand-in for ``control``: the answer completes a future."""

    def __init__(self, fut: Future):
        self._fut = fut

    def send_response(self, req_id: int, body: dict) -> bool:
        if not self._fut.done():
            self._fut.set_result(body)
        return True
