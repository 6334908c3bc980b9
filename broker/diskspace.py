"""Free disk space of the data directory, watched like Zeebe's DiskSpaceUsageMonitor.

One thread per broker calls ``statvfs`` on the data directory every
``interval`` seconds and publishes three facts that the partitions and the
gateway read without locking (each an attribute assignment):

* ``free_bytes``: space available to the broker (``f_bavail * f_frsize``);
* ``processing_ok``: free >= ``data.freeSpace.processing``; below it, new
  writes (append, put, cas, delete) are refused with RESOURCE_EXHAUSTED,
  reads and exports continue;
* ``replication_ok``: free >= ``data.freeSpace.replication``; below it, a
  follower stops persisting replicated entries and its partitions report
  unhealthy, and the leader refuses every client request.

Both thresholds at ``0`` turn the refusals off (free space is never below 0),
which is how tests make a real ENOSPC happen. ``check()`` may be called from
any thread to refresh at once (after an I/O error, for instance).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from broker.config import format_size

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 0.5


def free_bytes_of(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def describe(n: int) -> str:
    """A size for messages: ``12.3 MB (12897484 bytes)``."""
    for unit, per in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if n >= per:
            return f"{n / per:.1f} {unit} ({n} bytes)"
    return f"{n} bytes"


class DiskSpaceMonitor:
    def __init__(
        self,
        directory: str,
        processing: int,
        replication: int,
        interval: float = DEFAULT_INTERVAL,
        metrics=None,
        statvfs_free: Callable[[str], int] = free_bytes_of,
    ):
        self.directory = directory
        self.processing = processing
        self.replication = replication
        self.interval = interval
        self.metrics = metrics
        self._free_of = statvfs_free
        self.free_bytes: int | None = None
        self.processing_ok = True
        self.replication_ok = True
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="disk-space", daemon=True)
        self.check()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # never let the monitor die; the next round retries
                log.exception("disk space check of %s failed", self.directory)

    def check(self) -> int | None:
        """Measure now; returns the free bytes (None when the directory cannot be read)."""
        with self._lock:
            try:
                free = self._free_of(self.directory)
            except OSError as exc:
                log.warning("disk space of %s unknown: %s", self.directory, exc)
                return None
            processing_ok = free >= self.processing
            replication_ok = free >= self.replication
            if processing_ok != self.processing_ok or self.free_bytes is None:
                if not processing_ok:
                    log.warning("%s; writes are refused until space returns", self.why(free))
                elif self.free_bytes is not None:
                    log.info("disk space back: %s free; writes accepted", describe(free))
            if replication_ok != self.replication_ok and not replication_ok:
                log.warning(
                    "only %s free in %s, below data.freeSpace.replication (%s): "
                    "replicated entries are refused and partitions report unhealthy",
                    describe(free),
                    self.directory,
                    format_size(self.replication),
                )
            elif replication_ok != self.replication_ok:
                log.info("disk space back above data.freeSpace.replication: replicating again")
            self.free_bytes = free
            self.processing_ok = processing_ok
            self.replication_ok = replication_ok
            if self.metrics is not None:
                self.metrics.disk_free.set(free)
                self.metrics.disk_processing_paused.set(0 if processing_ok else 1)
                self.metrics.disk_replication_paused.set(0 if replication_ok else 1)
                self.metrics.disk_processing_watermark.set(self.processing)
                self.metrics.disk_replication_watermark.set(self.replication)
            return free

    def why(self, free: int | None = None) -> str:
        """Why writes are refused: the free space and the threshold it is below."""
        free = self.free_bytes if free is None else free
        if free is not None and free < self.replication:
            key, threshold = "data.freeSpace.replication", self.replication
        else:
            key, threshold = "data.freeSpace.processing", self.processing
        return (
            f"disk space low in {self.directory}: {describe(free or 0)} free, "
            f"below {key} ({format_size(threshold)})"
        )

    def status(self) -> dict:
        return {
            "directory": self.directory,
            "freeBytes": self.free_bytes,
            "processingThresholdBytes": self.processing,
            "replicationThresholdBytes": self.replication,
            "processing": "ok" if self.processing_ok else "paused",
            "replication": "ok" if self.replication_ok else "paused",
        }
