"""Writes a campaign's history as JSON lines (the format tests/campaign/history.py reads).

An operation is two lines: its invocation, written before the request leaves, and its
completion (ok / fail / info) once the answer is in. A run cut short leaves invocations
without completions, which the checkers treat as indeterminate, so the file is useful even
after a crash. Times are seconds since the recorder started (monotonic clock).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from pathlib import Path


class Recorder:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 (closed by close())
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._t0 = time.monotonic()
        self.operations = 0  # completions written

    def now(self) -> float:
        return round(time.monotonic() - self._t0, 6)

    def invoke(self, process: int, f: str, **args) -> int:
        with self._lock:
            op_id = next(self._ids)
            self._write({"type": "invoke", "id": op_id, "process": process, "f": f, **args})
        return op_id

    def complete(self, op_id: int, status: str, **result) -> None:
        with self._lock:
            self.operations += 1
            self._write({"type": status, "id": op_id, **result})

    def event(self, kind: str, **fields) -> None:
        """A line the checkers skip: nemesis actions, the run's parameters."""
        with self._lock:
            self._write({"type": kind, **fields})

    def _write(self, line: dict) -> None:
        line["time"] = self.now()
        self._file.write(json.dumps(line, separators=(",", ":")) + "\n")

    def close(self) -> None:
        with self._lock:
            self._file.close()
