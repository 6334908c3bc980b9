"""The file exporter: ``<path>/partition-<id>.jsonl``, one JSON object per record.

Each line is ``{"partition": p, "position": n, "data": text}`` (``"base64":
true`` and base64 data when the record is not UTF-8). Batches are appended
and fsynced before the position is acknowledged.
"""

from __future__ import annotations

import base64
import json
import os


class FileExporter:
    def __init__(self, exporter_id: str, path: str):
        self.id = exporter_id
        self.path = path
        self._last: dict[int, int] = {}

    def _file(self, partition: int) -> str:
        return os.path.join(self.path, f"partition-{partition}.jsonl")

    def last_position(self, partition: int) -> int:
        """The last position the sink holds (read once from the file's tail; a line
        torn by a crash is cut off first, so the next batch starts on a line of its own)."""
        if partition not in self._last:
            path = self._file(partition)
            _cut_torn_tail(path)
            self._last[partition] = _last_line_position(path)
        return self._last[partition]

    def export(self, partition: int, records: list[tuple[int, bytes]]) -> int:
        """Append the records the sink does not hold yet; returns the last position."""
        fresh = [(pos, data) for pos, data in records if pos > self.last_position(partition)]
        if fresh:
            os.makedirs(self.path, exist_ok=True)
            lines = "".join(_line(partition, pos, data) for pos, data in fresh)
            with open(self._file(partition), "a", encoding="utf-8") as f:
                f.write(lines)
                f.flush()
                os.fsync(f.fileno())
            self._last[partition] = fresh[-1][0]
        return self.last_position(partition)

    def forget(self, partition: int) -> None:
        """Re-read the file next time (another broker may have appended to a shared sink)."""
        self._last.pop(partition, None)


def _line(partition: int, position: int, data: bytes) -> str:
    try:
        doc = {"partition": partition, "position": position, "data": data.decode("utf-8")}
    except UnicodeDecodeError:
        doc = {
            "partition": partition,
            "position": position,
            "data": base64.b64encode(data).decode(),
            "base64": True,
        }
    return json.dumps(doc, separators=(",", ":")) + "\n"


def _cut_torn_tail(path: str) -> None:
    try:
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(max(0, size - 65536))
            tail = f.read()
            if tail.endswith(b"\n"):
                return
            keep = size - len(tail) + tail.rfind(b"\n") + 1
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
    except FileNotFoundError:
        pass


def _last_line_position(path: str) -> int:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 65536))
            tail = f.read().splitlines()
    except FileNotFoundError:
        return 0
    for raw in reversed(tail):
        try:
            return int(json.loads(raw)["position"])
        except (ValueError, KeyError):
            continue  # a torn last line from a crash: the one before counts
    return 0
