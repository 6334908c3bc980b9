"""A steady write load that remembers every acknowledged record: the proof of "no data lost".

A drill (or the demo) keeps writing while a region is lost, failed over and
failed back. Only acknowledged records count: a write that failed or timed out
may or may not have been kept, but an acknowledged one must be readable at the
position it was acknowledged at, afterwards, forever.

    load = WriteLoad(gateways, partitions=8, rate=200)
    load.start(); ...; load.stop()
    found, lost = load.read_back(gateways)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, wait
from dataclasses import dataclass, field

from broker.client import BrokerClient, BrokerError

MAX_IN_FLIGHT = 64
REQUEST_TIMEOUT = 5.0


@dataclass
class LoadTally:
    acked: dict[bytes, tuple[int, int]] = field(default_factory=dict)  # record -> (p, position)
    failed: int = 0
    last_ack: dict[int, float] = field(default_factory=dict)  # partition -> monotonic time
    bytes_acked: int = 0


class WriteLoad:
    """``rate`` records per second, round-robin over the partitions, at most
    ``MAX_IN_FLIGHT`` outstanding; stops by itself after ``max_seconds``."""

    def __init__(
        self,
        gateways: str,
        partitions: int,
        *,
        rate: float = 200.0,
        label: str = "load",
        max_seconds: float = 900.0,
        record_bytes: int = 100,
    ):
        self.gateways = gateways
        self.partitions = partitions
        self.rate = rate
        self.label = label
        self.max_seconds = max_seconds
        self.record_bytes = record_bytes
        self.tally = LoadTally()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self) -> WriteLoad:
        self._thread = threading.Thread(target=self._run, name=f"{self.label}-load", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> LoadTally:
        """Stop submitting, wait for the outstanding answers, return the tally."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(REQUEST_TIMEOUT * 3)
        if self._error is not None:
            raise RuntimeError(f"the write load crashed: {self._error!r}") from self._error
        return self.tally

    def acked_since(self, since: float) -> list[int]:
        """Partitions with an acknowledgement at or after the monotonic time ``since``."""
        with self._lock:
            return sorted(p for p, t in self.tally.last_ack.items() if t >= since)

    def count(self) -> int:
        with self._lock:
            return len(self.tally.acked)

    def _record(self, n: int) -> bytes:
        head = f"{self.label} {n:09d} "
        return (head + "x" * max(0, self.record_bytes - len(head))).encode()

    def _run(self) -> None:
        try:
            self._write()
        except BaseException as exc:  # reported by stop()
            self._error = exc

    def _write(self) -> None:
        started = time.monotonic()
        in_flight = threading.Semaphore(MAX_IN_FLIGHT)
        outstanding: set[Future] = set()
        n = 0
        with BrokerClient(self.gateways, timeout=REQUEST_TIMEOUT) as client:
            while not self._stop.is_set() and time.monotonic() - started < self.max_seconds:
                due = started + n / self.rate
                if (ahead := due - time.monotonic()) > 0 and self._stop.wait(ahead):
                    break
                if not in_flight.acquire(timeout=REQUEST_TIMEOUT):
                    continue  # everything in flight is stuck (an outage): try again
                data = self._record(n)
                partition = n % self.partitions + 1
                n += 1
                fut = client.append_async(data, partition)
                outstanding.add(fut)
                fut.add_done_callback(lambda f, d=data: (self._answered(f, d), in_flight.release()))
                outstanding = {f for f in outstanding if not f.done()}
            wait(outstanding, REQUEST_TIMEOUT * 2)  # answers are counted in _answered

    def _answered(self, fut: Future, data: bytes) -> None:
        try:
            appended = fut.result()
        except BrokerError:
            with self._lock:
                self.tally.failed += 1
            return
        with self._lock:
            self.tally.acked[data] = (appended.partition, appended.position)
            self.tally.last_ack[appended.partition] = time.monotonic()
            self.tally.bytes_acked += len(data)

    def read_back(self, gateways: str) -> tuple[int, list[bytes]]:
        """(acknowledged records found at their positions, the ones that are not)."""
        with self._lock:
            acked = dict(self.tally.acked)
        found = read_partitions(gateways, {p for p, _ in acked.values()})
        lost = [rec for rec, (p, pos) in acked.items() if found[p].get(pos) != rec]
        return len(acked) - len(lost), lost


def read_partitions(gateways: str, partitions: Iterable[int]) -> dict[int, dict[int, bytes]]:
    """Every committed record of the partitions: partition -> {position: data}."""
    out: dict[int, dict[int, bytes]] = {}
    with BrokerClient(gateways, timeout=30.0) as client:
        for p in partitions:
            records, position = {}, 1
            while True:
                page = client.read(p, position, 1000)
                if not page.records:
                    break
                records.update(page.records)
                position = page.next
            out[p] = records
    return out
