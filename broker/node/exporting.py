"""Runs the configured exporters for the partitions this broker leads.

Every turn, for each led partition and each exporter whose state is ENABLED
for this replica (and exporting not paused cluster-wide), the records after
the exporter's position are handed to the sink, and the new position is
committed through Raft. A failing sink is retried with backoff; it never
blocks the partition.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from broker import partition as sm
from broker.exporters import create
from broker.node.seams import Partitions
from broker.records import OutOfRange
from broker.topology.model import ENABLED, ClusterConfig

log = logging.getLogger(__name__)

TURN = 0.1
BATCH = 1000
BATCH_BYTES = 4 * 1024 * 1024
MAX_BACKOFF = 10.0


class ExporterRunner:
    def __init__(
        self,
        node_id: int,
        configured: dict,
        partitions: Partitions,
        topology: Callable[[], ClusterConfig],
    ):
        """``configured``: the ``exporters`` section (id -> type and args);
        ``partitions``: the handles of the partitions hosted here (a live mapping);
        ``topology``: the current cluster configuration (exporter states, pause)."""
        self.node_id = node_id
        self.partitions = partitions
        self.topology = topology
        self.exporters = {i: create(i, ex.type, ex.args) for i, ex in configured.items()}
        self._position: dict[tuple[int, str], int] = {}  # exported, maybe not yet committed
        self._retry_at: dict[tuple[int, str], tuple[float, float]] = {}  # -> (when, backoff)
        self._led: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"exporters-{node_id}", daemon=True)

    def start(self) -> None:
        if self.exporters:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(TURN):
            try:
                self._turn()
            except Exception:
                log.exception("exporter turn failed")

    def _turn(self) -> None:
        config = self.topology()
        me = config.members.get(self.node_id)
        led = {pid for pid, r in list(self.partitions.items()) if r.is_leader}
        for pid in led - self._led:  # newly led: start from the replicated positions
            for ex_id, exporter in self.exporters.items():
                self._position.pop((pid, ex_id), None)
                exporter.forget(pid)
        self._led = led
        if config.exporting_paused or me is None:
            return
        for pid in sorted(led):
            runner = self.partitions.get(pid)
            part = me.partitions.get(pid)
            if runner is None or part is None:
                continue
            for ex_id, exporter in self.exporters.items():
                if part.exporters.get(ex_id) == ENABLED:
                    self._export(runner, pid, ex_id, exporter)

    def _export(self, runner, pid: int, ex_id: str, exporter) -> None:
        key = (pid, ex_id)
        when, backoff = self._retry_at.get(key, (0.0, 0.0))
        if time.monotonic() < when:
            return
        status = runner.status  # a copy the partition thread refreshes every turn
        committed = status.get("exported", {}).get(ex_id, 0)
        last = status.get("lastPosition", 0)
        position = max(self._position.get(key, 0), committed)
        if key not in self._position:
            position = max(position, min(exporter.last_position(pid), last))
        if position >= last:
            records = []
        else:
            try:  # from the journal, on the partition thread that owns it
                records = runner.read_records(position + 1, BATCH, BATCH_BYTES)
            except (OutOfRange, TimeoutError, RuntimeError, OSError, ValueError) as exc:
                # OutOfRange cannot happen for an exporter that holds the log; a
                # stopped partition answers later
                log.warning("exporter %s, p%d: read at %d: %s", ex_id, pid, position + 1, exc)
                return
        if records:
            try:
                position = exporter.export(pid, records)
            except OSError as exc:
                backoff = min(MAX_BACKOFF, max(0.2, backoff * 2))
                self._retry_at[key] = (time.monotonic() + backoff, backoff)
                log.warning("exporter %s, p%d: %s; retry in %.1fs", ex_id, pid, exc, backoff)
                return
            self._retry_at.pop(key, None)
        self._position[key] = position
        if position > committed:
            runner.propose(sm.encode(sm.EXPORTED, ex_id, position), lambda result: None)
