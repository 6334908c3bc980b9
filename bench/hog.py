"""A CPU hog: one busy-loop process pinned to one core, which the bench starts and stops
itself, to measure how much of its idle throughput a system keeps when it must share the
machine (DESIGN section 7: at least 60%)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator

LIMIT = 900.0  # seconds: the hog ends by itself even if the bench is killed

BUSY_LOOP = f"""
import time
end = time.monotonic() + {LIMIT}
while time.monotonic() < end:
    pass
"""


@contextlib.contextmanager
def cpu_hog(core: int = 0) -> Iterator[int]:
    """Run a busy loop on ``core`` (when the machine has it) while the block runs;
    yields its pid. The process is killed and reaped when the block ends."""
    proc = subprocess.Popen(
        [sys.executable, "-c", BUSY_LOOP], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    )
    try:
        if core in os.sched_getaffinity(0):
            os.sched_setaffinity(proc.pid, {core})
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(timeout=10)
