"""The campaign's clients: threads that each drive their own BrokerClient on a small set of
keys (put, get, cas, delete) and on the record log (append, read), recording every
operation before it is sent and when it completes.

Keys live in a few slots; after ``ops_per_key`` operations a slot moves on to a fresh key
(Jepsen's "independent keys"), so each key's history stays short enough to check
exhaustively while the cluster sees steady contention on every slot.

Outcomes: ``ok`` (took effect, with its result), ``fail`` (definitely did not: a cas that
found another value, a request refused as invalid or out of range, one that never left the
client because no gateway could be reached), ``info`` (anything else:
a timeout or a lost connection leaves it unknown whether the write happened). After an
``info`` the thread continues as a new process, as Jepsen does, because the old one may
still have a request in flight.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

from broker.client import (
    BrokerClient,
    BrokerError,
    FailedPrecondition,
    InvalidArgument,
    OutOfRange,
    Unavailable,
)
from tests.campaign.recorder import Recorder

# how often each operation is chosen
MIX = (("get", 28), ("put", 18), ("cas", 24), ("delete", 5), ("append", 20), ("read", 5))
READ_MAX = 50
BACKOFF = 0.05  # seconds a client waits after UNAVAILABLE, as a real client would


def text(data: bytes | None) -> str | None:
    """Values and records as the history holds them (the campaign writes UTF-8 only;
    others' records survive as escapes)."""
    return None if data is None else bytes(data).decode("utf-8", "backslashreplace")


@dataclass
class WorkloadOptions:
    threads: int = 8
    key_slots: int = 6
    ops_per_key: int = 120
    timeout: float = 2.0  # each request's deadline (seconds)


class KeySlots:
    """Which key each slot works on now; every key ever used, for the final reads."""

    def __init__(self, slots: int, ops_per_key: int):
        self._ops_per_key = ops_per_key
        self._generation = [0] * slots
        self._count = [0] * slots
        self._lock = threading.Lock()
        self.used: set[str] = set()
        self.known: dict[str, str | None] = {}  # last value a client saw: cas guesses it

    def pick(self, rng: random.Random) -> str:
        with self._lock:
            slot = rng.randrange(len(self._count))
            self._count[slot] += 1
            if self._count[slot] > self._ops_per_key:
                self._generation[slot] += 1
                self._count[slot] = 1
            key = f"k{slot}.{self._generation[slot]}"
            self.used.add(key)
            return key


class Client(threading.Thread):
    def __init__(
        self,
        number: int,
        gateways: str,
        cluster_name: str,
        recorder: Recorder,
        keys: KeySlots,
        options: WorkloadOptions,
        partitions: int,
        seed: int,
        stop: threading.Event,
        ssl_context=None,
    ):
        super().__init__(name=f"campaign-client-{number}", daemon=True)
        self.number = number
        self.process = number
        self.recorder = recorder
        self.keys = keys
        self.options = options
        self.partitions = partitions
        self.rng = random.Random(seed * 1000 + number)
        self.stop = stop
        self.client = BrokerClient(
            gateways, cluster_name, timeout=options.timeout, ssl_context=ssl_context
        )
        self.counter = 0
        self.read_from: dict[int, int] = {}  # partition -> a recent position seen
        self.error: BaseException | None = None
        ops, weights = zip(*MIX, strict=True)
        self._ops, self._weights = ops, weights

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.step(self.rng.choices(self._ops, self._weights)[0])
        except BaseException as exc:
            self.error = exc
        finally:
            self.client.close()

    def unique(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.number}.{self.counter}"

    def step(self, f: str) -> None:
        if f in ("append", "read"):
            getattr(self, f)()
            return
        key = self.keys.pick(self.rng)
        if f == "get":
            self.perform(f, {"key": key}, lambda: {"value": text(self.client.get(key))})
        elif f == "put":
            value = self.unique("v")
            self.perform(f, {"key": key, "value": value}, lambda: self.client.put(key, value))
        elif f == "cas":
            expected = self.keys.known.get(key) if self.rng.random() < 0.85 else None
            value = self.unique("v")
            self.perform(
                f,
                {"key": key, "expected": expected, "value": value},
                lambda: self.client.cas(key, expected, value),
            )
        elif f == "delete":
            self.perform(f, {"key": key}, lambda: {"existed": self.client.delete(key)})

    def append(self) -> None:
        data = self.unique("a")

        def call() -> dict:
            done = self.client.append(data)
            self.read_from[done.partition] = done.position
            return {"partition": done.partition, "position": done.position}

        self.perform("append", {"data": data}, call)

    def read(self) -> None:
        partition = self.rng.randint(1, self.partitions)
        start = max(1, self.read_from.get(partition, 1) - self.rng.randint(0, 30))

        def call() -> dict:
            got = self.client.read(partition, start, READ_MAX)
            records = [[pos, text(data)] for pos, data in got.records]
            return {"records": records, "next": got.next, "end": len(records) < READ_MAX}

        self.perform("read", {"partition": partition, "from": start, "max": READ_MAX}, call)

    def perform(self, f: str, args: dict, call) -> None:
        op_id = self.recorder.invoke(self.process, f, **args)
        try:
            result = call()
        except FailedPrecondition as exc:
            self.recorder.complete(op_id, "fail", error=str(exc), current=text(exc.current))
            self.keys.known[args["key"]] = text(exc.current)
            return
        except (InvalidArgument, OutOfRange) as exc:
            self.recorder.complete(op_id, "fail", error=str(exc))
            return
        except BrokerError as exc:
            error = f"{type(exc).__name__}: {exc}"
            if not exc.sent:  # no gateway reachable: nothing happened
                self.recorder.complete(op_id, "fail", error=error)
            else:
                self.recorder.complete(op_id, "info", error=error)
                self.process += self.options.threads  # the old one may still be in flight
            if isinstance(exc, Unavailable):
                self.stop.wait(BACKOFF)  # pace, not synchronisation: the cluster is recovering
            return
        result = result if isinstance(result, dict) else {}
        self.recorder.complete(op_id, "ok", **result)
        if f in ("put", "cas"):
            self.keys.known[args["key"]] = args["value"]
        elif f == "get":
            self.keys.known[args["key"]] = result["value"]
        elif f == "delete":
            self.keys.known[args["key"]] = None


def final_reads(
    client: BrokerClient, recorder: Recorder, keys: set[str], process: int, deadline: float
) -> list[str]:
    """After the faults heal: read every key once more, through the log like any get, so a
    lost write shows up as a linearizability violation. Retries until each read is ok or the
    deadline passes; returns the keys that could not be read."""
    unread = []
    for key in sorted(keys):
        while True:
            op_id = recorder.invoke(process, "get", key=key)
            try:
                value = client.get(key)
            except BrokerError as exc:
                recorder.complete(op_id, "info", error=f"{type(exc).__name__}: {exc}")
                process += 1000
                if time.monotonic() > deadline:
                    unread.append(key)
                    break
                time.sleep(0.1)  # back off: the cluster is still settling
                continue
            recorder.complete(op_id, "ok", value=text(value))
            break
    return unread
