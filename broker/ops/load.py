"""A steady write load that remembers every acknowledged record: the proof of "no data lost".

A background thread appends unique records at a steady rate while a region is lost,
failed over and failed back (``fab drill``, ``make demo``).

Every acknowledged append is kept as ``Ack(partition, position, payload, sent,
acked)``; a failed one (UNAVAILABLE, DEADLINE_EXCEEDED, a lost connection) is
only counted: the client cannot know whether it was committed, and the cluster
promises only what it acknowledged. ``read_back`` reads every partition from
its lowest acknowledged position and checks each acknowledged record is there,
at its position, with its payload.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from broker.client import BrokerClient, BrokerError, OutOfRange

READ_BATCH = 1000


@dataclass(frozen=True)
class Ack:
    partition: int
    position: int
    payload: bytes
    sent: float  # time.monotonic() when sent
    acked: float  # ... and when acknowledged


class WriteLoad:
    """``rate`` appends per second, at most ``window`` in flight, for at most
    ``max_seconds``; ``stop()`` ends it and waits for the answers in flight."""

    def __init__(
        self,
        gateways: str,
        *,
        prefix: str,
        rate: float = 100.0,
        window: int = 16,
        timeout: float = 5.0,
        max_seconds: float = 600.0,
        cluster_name: str = "dual-region",
        ssl_context: ssl.SSLContext | None = None,
    ):
        self.gateways = gateways
        self.prefix = prefix
        self.rate = rate
        self.window = window
        self.timeout = timeout
        self.max_seconds = max_seconds
        self.cluster_name = cluster_name
        self.ssl_context = ssl_context
        self.acks: list[Ack] = []
        self.failed = 0
        self.errors: Counter[str] = Counter()
        self.sent = 0
        self.started_at = 0.0
        self.stopped_at = 0.0
        self._cond = threading.Condition()
        self._slots = threading.Semaphore(window)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{prefix}-write-load", daemon=True)
        self.crash: BaseException | None = None

    # --- control ----------------------------------------------------------------------------

    def start(self) -> None:
        self.started_at = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.timeout + 30)
        self.stopped_at = self.stopped_at or time.monotonic()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def wait_for(self, holds: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait (on the load's condition, woken at every answer) until ``holds()``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not holds():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"gave up after {timeout:g}s waiting for {what}")
                if not self._thread.is_alive():
                    raise RuntimeError(f"the write load stopped ({self.crash!r}) before {what}")
                self._cond.wait(min(left, 1.0))

    # --- what it saw ---------------------------------------------------------------------------

    def snapshot(self) -> list[Ack]:
        with self._cond:
            return list(self.acks)

    def partitions_acked_since(self, since: float) -> set[int]:
        """Partitions with an acknowledged record that was sent at or after ``since``."""
        with self._cond:
            return {a.partition for a in self.acks if a.sent >= since}

    def first_acks_after(self, since: float) -> dict[int, float]:
        """Partition -> seconds from ``since`` to the first acknowledgement of a record
        sent at or after ``since``."""
        first: dict[int, float] = {}
        for a in self.snapshot():
            if a.sent >= since:
                first[a.partition] = min(first.get(a.partition, a.acked), a.acked)
        return {p: t - since for p, t in first.items()}

    def acked_between(self, start: float, end: float) -> int:
        return sum(1 for a in self.snapshot() if start <= a.acked <= end)

    # --- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            with BrokerClient(
                self.gateways,
                cluster_name=self.cluster_name,
                timeout=self.timeout,
                ssl_context=self.ssl_context,
            ) as client:
                self._loop(client)
                # every request in flight ends by its deadline: take all the slots back
                deadline = time.monotonic() + self.timeout + 5
                for _ in range(self.window):
                    if not self._slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
                        break
        except BaseException as exc:  # reported through wait_for / the summary
            self.crash = exc
        finally:
            self.stopped_at = time.monotonic()
            with self._cond:
                self._cond.notify_all()

    def _loop(self, client: BrokerClient) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        end = self.started_at + self.max_seconds
        seq = 0
        while not self._stop.is_set() and time.monotonic() < end:
            if not self._slots.acquire(timeout=0.2):
                continue
            wait = next_at - time.monotonic()
            if wait > 0 and self._stop.wait(wait):  # pacing; returns at once on stop
                self._slots.release()
                break
            next_at = max(next_at + interval, time.monotonic() - 1.0)
            payload = f"{self.prefix}-{seq:07d}".encode()
            seq += 1
            sent = time.monotonic()
            self.sent += 1
            try:
                fut = client.append_async(payload)
            except (BrokerError, OSError) as exc:
                self._failed(exc)
                continue
            fut.add_done_callback(lambda f, p=payload, t=sent: self._answered(f, p, t))

    def _answered(self, fut: Future, payload: bytes, sent: float) -> None:
        exc = fut.exception()
        if exc is not None:
            self._failed(exc)
            return
        r = fut.result()
        with self._cond:
            self.acks.append(Ack(r.partition, r.position, payload, sent, time.monotonic()))
            self._cond.notify_all()
        self._slots.release()

    def _failed(self, exc: BaseException) -> None:
        with self._cond:
            self.failed += 1
            self.errors[getattr(exc, "code", type(exc).__name__)] += 1
            self._cond.notify_all()
        self._slots.release()


@dataclass
class ReadBack:
    acknowledged: int
    found: int
    lost: list[Ack] = field(default_factory=list)
    unacknowledged_committed: int = 0  # failed appends that were committed anyway
    records: int = 0  # records read in all
    # acknowledged records the partition had compacted before they were read: a broker
    # compacts only what every exporter has, so they were exported, not lost
    compacted: list[Ack] = field(default_factory=list)


def read_back(
    gateways: str,
    acks: list[Ack],
    partitions: int,
    prefix: str,
    timeout: float = 15.0,
    *,
    cluster_name: str = "dual-region",
    ssl_context: ssl.SSLContext | None = None,
) -> ReadBack:
    """Read each partition from its lowest acknowledged position (not from 1: a cluster
    weeks old holds gigabytes before the load began) and check each acknowledged record.
    Where the partition compacted past that position, read from its first kept record."""
    found: dict[tuple[int, int], bytes] = {}
    first_kept: dict[int, int] = {}
    lowest: dict[int, int] = {}
    for a in acks:
        lowest[a.partition] = min(lowest.get(a.partition, a.position), a.position)
    with BrokerClient(gateways, cluster_name, timeout=timeout, ssl_context=ssl_context) as client:
        for partition in range(1, partitions + 1):
            position = lowest.get(partition)
            while position is not None:
                try:
                    r = client.read(partition, position, READ_BATCH)
                except OutOfRange as exc:
                    if exc.first is None or exc.first <= position:
                        raise
                    first_kept[partition] = position = exc.first
                    continue
                if not r.records:
                    break
                for pos, data in r.records:
                    found[(partition, pos)] = data
                position = r.next
    compacted, lost = [], []
    for a in acks:
        if found.get((a.partition, a.position)) == a.payload:
            continue
        below = a.position < first_kept.get(a.partition, 0)
        (compacted if below else lost).append(a)
    acked_payloads = {a.payload for a in acks}
    mine = prefix.encode() + b"-"
    extra = sum(1 for d in found.values() if d.startswith(mine) and d not in acked_payloads)
    found_count = len(acks) - len(lost) - len(compacted)
    return ReadBack(len(acks), found_count, lost, extra, len(found), compacted)
