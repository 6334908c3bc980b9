"""PySyncObj baseline: committed appends/s of a 3-node PySyncObj cluster.

DESIGN section 7 asks the broker's durable commit rate (3 brokers, RF 3, one
partition, 100-byte records, pipelined client) to be at least 1.5x this figure,
measured in the same run. ``run()`` returns it; ``python -m
bench.pysyncobj_peer run`` prints it as JSON.

The cluster: three ``SyncObj`` processes on 127.0.0.1 (``python -m
bench.pysyncobj_peer node ...``), each with PySyncObj's file journal
(``SyncObjConf(journalFile=..., fullDumpFile=...)``). That journal writes each
entry into an mmap'd file and never fsyncs (it msyncs only on shutdown), so a
PySyncObj commit is a quorum of copies in the page cache, while the broker's is
a quorum of fsynced ones. The files live on the project's disk
(``./var/bench-tmp``), like the broker's. The parent drives each node with JSON
lines on its stdin/stdout (``status``, ``load``, ``stop``).

How commands are submitted: PySyncObj has no client protocol. A command is a
call of a ``@replicated`` method on a ``SyncObj`` object, queued in that
process; a follower forwards it to the leader over the Raft connection, and a
process outside the cluster would have to join as a read-only node. We submit
at the leader itself, PySyncObj's cheapest path (no client hop, no forwarding),
so the baseline errs in PySyncObj's favour. The load runs in the leader's tick
thread (``addOnTickCallback`` for the first fill, then from the completion
callbacks), so nothing contends with it for the GIL, and it keeps ``window``
(1000, the broker gateway's in-flight cap) ``append(record, callback=...)``
calls outstanding: each completion submits a replacement in the same tick.

Configuration: library defaults except the journal files and
``appendEntriesPeriod``, cut from 0.1 s to 5 ms. In its default batch mode
the leader ships new entries only once per period, so with 1000 in flight the
default caps PySyncObj near 1000 commands per ~0.12 s (~8k/s on a 2-CPU
machine), whereas 5 ms reaches its CPU-bound rate (~30-50k/s there), the same
rate the default period reaches only with ~30,000 in flight. Pass
``append_entries_period=0.1`` for the untuned library. (``appendEntriesUseBatch
=False``, its other mode, did 11-20k/s with 1000 in flight.)

What is measured: a command counts when its callback reports
``FAIL_REASON.SUCCESS``: a quorum holds the entry and the leader applied it.
After ``warmup`` seconds of load (uncounted), ``rounds`` back-to-back windows of
``duration`` seconds are measured under continuous load; a round's rate is its
successes over its length (timed at the leader, from tick to tick), and the
result is the median round. Each command carries a distinct 100-byte record (a
sequence number, padded). The replicated state is a counter, the last record
and a running CRC of all records: small, so that PySyncObj's log compaction
(the state pickled every 5000 entries, by default) stays cheap, as the broker
does not keep its records in memory either.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

RECORD_BYTES = 100
# Outstanding commands at the leader: the broker gateway's default per-partition
# cap on requests awaiting commit (network.gateway.maxInflight), so both systems
# get the same pipeline depth.
WINDOW = 1000
# SyncObjConf.appendEntriesPeriod: the leader ships new entries at most this
# often (library default 0.1 s). At the default, 1000 commands in flight cap
# PySyncObj near 1000 per ~0.12 s cycle (~8k/s here), far below what it can do;
# 5 ms lets the same window reach the CPU-bound rate that the default period
# reaches only with ~30x more in flight. See the module doc.
APPEND_ENTRIES_PERIOD = 0.005
HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[1]  # so ``-m bench.pysyncobj_peer`` imports


# --------------------------------------------------------------------------- node side


def _node_main(self_port: int, partners: list[int], journal: str, period: float) -> None:
    """One cluster member; answers the parent's JSON-line commands on stdin/stdout."""
    # Imported here: the parent side of this module must not need pysyncobj.
    from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated

    class RecordLog(SyncObj):
        def __init__(self, conf: SyncObjConf):
            super().__init__(f"{HOST}:{self_port}", [f"{HOST}:{p}" for p in partners], conf)
            # Set after SyncObj.__init__: only attributes added later are the
            # replicated state that log compaction pickles.
            self.count = 0
            self.last = b""
            self.crc = 0

        @replicated
        def append(self, record: bytes) -> int:
            self.count += 1
            self.last = record
            self.crc = zlib.crc32(record, self.crc)
            return self.count

    def reply(**message) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    conf = SyncObjConf(
        journalFile=journal, fullDumpFile=journal + ".dump", appendEntriesPeriod=period
    )
    obj = RecordLog(conf)
    try:
        for line in sys.stdin:  # EOF (parent gone or done) ends the node too
            cmd = json.loads(line)
            leader = obj._getLeader()
            leader = leader and leader.address
            if cmd["cmd"] == "stop":
                break
            if cmd["cmd"] == "status":
                # isReady: caught up with the commit index of a known leader.
                reply(event="status", leader=leader, ready=obj.isReady())
            elif cmd["cmd"] == "load":
                if not obj._isLeader():
                    reply(event="not_leader", leader=leader)
                    continue
                load = _Load(obj, FAIL_REASON.SUCCESS, **cmd["args"])
                obj.addOnTickCallback(load.on_tick)
                finished = load.done.wait(load.total + 30.0)
                # Removed here, not from on_tick: PySyncObj holds its (non
                # reentrant) callback lock while it runs the callbacks.
                obj.removeOnTickCallback(load.on_tick)
                if finished:
                    reply(event="result", applied=obj.count, **load.result())
                else:
                    reply(event="error", reason="load did not finish in time")
    finally:
        obj.destroy_synchronous()  # closes sockets, msyncs and closes the journal


class _Load:
    """Closed-loop pipelined load; every method runs in the leader's tick thread."""

    def __init__(
        self, obj, success: int, *, window: int, warmup: float, duration: float, rounds: int
    ):
        self.obj = obj
        self.success = success
        self.window = window
        self.total = warmup + duration * rounds
        start = time.monotonic()
        self.boundaries = [start + warmup + i * duration for i in range(rounds + 1)]
        self.marks: list[tuple[float, int]] = []  # (time, successes so far) at each boundary
        self.outstanding = 0
        self.seq = 0
        self.ok = 0
        self.failed = 0
        self.done = threading.Event()
        self.pad = b"r" * (RECORD_BYTES - 12)

    def on_tick(self) -> None:
        now = time.monotonic()
        # Marks are taken at the first tick past a boundary; a round is timed
        # from mark to mark, so the tick granularity cancels out.
        while len(self.marks) < len(self.boundaries) and now >= self.boundaries[len(self.marks)]:
            self.marks.append((now, self.ok))
        if len(self.marks) == len(self.boundaries):
            self.done.set()
        self._top_up()  # the initial fill; afterwards on_result keeps the window full

    def on_result(self, _result, error: int) -> None:
        self.outstanding -= 1
        if error == self.success:
            self.ok += 1
        else:
            self.failed += 1
        # Replace the finished command at once: PySyncObj runs these callbacks
        # while applying entries, before it drains its command queue in the same
        # tick, so the replacement enters the log without waiting for the next
        # tick (which may idle in poll() for autoTickPeriod, 50 ms).
        self._top_up()

    def _top_up(self) -> None:
        while not self.done.is_set() and self.outstanding < self.window:
            self.seq += 1
            self.outstanding += 1
            self.obj.append(b"%012d" % self.seq + self.pad, callback=self.on_result)

    def result(self) -> dict:
        rounds = [
            {"commits": n1 - n0, "seconds": t1 - t0}
            for (t0, n0), (t1, n1) in zip(self.marks, self.marks[1:], strict=False)
        ]
        return {"rounds": rounds, "failed": self.failed}


# ------------------------------------------------------------------------- parent side


class _Node(subprocess.Popen):
    """A node process plus a reader thread that turns its stdout into messages."""

    def __init__(self, args, *, address: str, log: Path):
        self.address = address
        self.log = log
        self.messages: queue.Queue[dict | None] = queue.Queue()
        with open(log, "wb") as err:
            super().__init__(
                args, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True
            )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.stdout:
            self.messages.put(json.loads(line))
        self.messages.put(None)  # EOF: the process is gone

    def send(self, **cmd) -> None:
        self.stdin.write(json.dumps(cmd) + "\n")
        self.stdin.flush()

    def expect(self, deadline: float) -> dict:
        try:
            msg = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError(f"node {self.address} silent; log: {self._tail()}") from None
        if msg is None:
            raise RuntimeError(f"node {self.address} exited ({self.poll()}): {self._tail()}")
        return msg

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-2000:] or "(empty)"
        return "(unreadable)"


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports the kernel considers free right now (all held until chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def start_cluster(
    workdir,
    n: int = 3,
    base_port: int | None = None,
    *,
    append_entries_period: float = APPEND_ENTRIES_PERIOD,
) -> list[subprocess.Popen]:
    """Spawn ``n`` node processes (journals in ``workdir``); see ``wait_leader``."""
    workdir = Path(workdir)
    ports = free_ports(n) if base_port is None else list(range(base_port, base_port + n))
    nodes: list[subprocess.Popen] = []
    try:
        for port in ports:
            args = [sys.executable, "-m", "bench.pysyncobj_peer", "node", "--self", str(port)]
            args += ["--partners", ",".join(str(p) for p in ports if p != port)]
            args += ["--journal", str(workdir / f"node-{port}.journal")]
            args += ["--append-entries-period", str(append_entries_period)]
            nodes.append(_Node(args, address=f"{HOST}:{port}", log=workdir / f"node-{port}.log"))
    except BaseException:
        stop_cluster(nodes)
        raise
    return nodes


def wait_leader(nodes: list[subprocess.Popen], timeout: float = 30.0) -> subprocess.Popen:
    """Poll until every node is caught up with the same elected leader; return that node."""
    deadline = time.monotonic() + timeout
    while True:
        views = {}
        for node in nodes:
            node.send(cmd="status")
            views[node.address] = node.expect(deadline)
        leaders = {v["leader"] for v in views.values()}
        if len(leaders) == 1 and None not in leaders and all(v["ready"] for v in views.values()):
            return next(node for node in nodes if node.address in leaders)
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no agreed leader within {timeout}s: {views}")
        time.sleep(0.02)  # poll interval; an election takes 0.4-1.4 s


class LeaderChanged(RuntimeError):
    """The node told to run the load was no longer the leader."""


def load(
    leader: subprocess.Popen,
    duration: float,
    *,
    warmup: float = 1.0,
    rounds: int = 3,
    window: int = WINDOW,
) -> dict:
    """Have ``leader`` run the pipelined load; return its report (see the module doc)."""
    args = {"window": window, "warmup": warmup, "duration": duration, "rounds": rounds}
    leader.send(cmd="load", args=args)
    msg = leader.expect(time.monotonic() + warmup + duration * rounds + 60.0)
    if msg["event"] == "not_leader":
        raise LeaderChanged(f"{leader.address} is not the leader; it follows {msg['leader']}")
    if msg["event"] != "result":
        raise RuntimeError(f"load failed on {leader.address}: {msg}")
    return msg


def stop_cluster(nodes: list[subprocess.Popen], timeout: float = 10.0) -> None:
    """Ask each node to stop, then terminate and finally kill (by pid) any that linger."""
    for node in nodes:
        with contextlib.suppress(OSError, ValueError):
            node.send(cmd="stop")
            node.stdin.close()
    deadline = time.monotonic() + timeout
    for node in nodes:
        # Popen.terminate/kill signal this node's own pid, and never a reaped one.
        try:
            node.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            node.terminate()
            try:
                node.wait(2.0)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait(5.0)
        with contextlib.suppress(OSError, ValueError):
            node.stdout.close()


def run(
    duration: float = 5.0,
    *,
    warmup: float = 1.0,
    rounds: int = 3,
    window: int = WINDOW,
    append_entries_period: float = APPEND_ENTRIES_PERIOD,
    workdir=None,
) -> dict:
    """Start a 3-node cluster, measure committed appends/s, clean everything up."""
    base = Path(workdir) if workdir is not None else ROOT / "var" / "bench-tmp"
    base.mkdir(parents=True, exist_ok=True)
    work = base / f"pysyncobj-{os.getpid()}-{time.monotonic_ns()}"
    work.mkdir()
    nodes: list[subprocess.Popen] = []
    try:
        nodes = start_cluster(work, append_entries_period=append_entries_period)
        for attempt in range(3):  # a re-election between status and load is rare, not fatal
            leader = wait_leader(nodes)
            try:
                report = load(leader, duration, warmup=warmup, rounds=rounds, window=window)
                break
            except LeaderChanged:
                if attempt == 2:
                    raise
    finally:
        stop_cluster(nodes)
        shutil.rmtree(work, ignore_errors=True)
        if workdir is None:  # ./var/bench-tmp and ./var too, unless something else lives there
            with contextlib.suppress(OSError):
                base.rmdir()
                base.parent.rmdir()
    rates = [r["commits"] / r["seconds"] for r in report["rounds"]]
    return {
        "commits_per_s": statistics.median(rates),
        "rounds": rates,
        "record_bytes": RECORD_BYTES,
        "nodes": len(nodes),
        "fsync": False,
        "window": window,
        "append_entries_period": append_entries_period,
        "committed": sum(r["commits"] for r in report["rounds"]),
        "failed": report["failed"],
        "applied": report["applied"],
        "leader": leader.address,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pysyncobj_peer", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="mode", required=True)
    node = sub.add_parser("node", help="one cluster member (started by run)")
    node.add_argument("--self", dest="self_port", type=int, required=True)
    node.add_argument("--partners", required=True, help="comma-separated ports")
    node.add_argument("--journal", required=True)
    node.add_argument("--append-entries-period", type=float, default=APPEND_ENTRIES_PERIOD)
    bench = sub.add_parser("run", help="measure and print the result as JSON")
    bench.add_argument("--duration", type=float, default=5.0, help="seconds per round")
    bench.add_argument("--warmup", type=float, default=1.0)
    bench.add_argument("--rounds", type=int, default=3)
    bench.add_argument("--window", type=int, default=WINDOW, help="outstanding commands")
    bench.add_argument(
        "--append-entries-period",
        type=float,
        default=APPEND_ENTRIES_PERIOD,
        help="SyncObjConf.appendEntriesPeriod (library default 0.1)",
    )
    args = parser.parse_args(argv)
    if args.mode == "node":
        ports = [int(p) for p in args.partners.split(",") if p]
        _node_main(args.self_port, ports, args.journal, args.append_entries_period)
    else:
        result = run(
            args.duration,
            warmup=args.warmup,
            rounds=args.rounds,
            window=args.window,
            append_entries_period=args.append_entries_period,
        )
        print(json.dumps(result))


if __name__ == "__main__":
    main()
