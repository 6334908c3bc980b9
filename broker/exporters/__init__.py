"""Exporters: copy each partition's committed records, in order, to an external sink.

``file`` writes JSON lines (one file per partition); ``http`` POSTs batches.
An exporter only runs on the partition's leader. Its acknowledged position is
replicated through Raft, so a new leader continues from there (at least
once); the file sink also skips what it already holds, so it has no
duplicates.
"""

from __future__ import annotations

from broker.exporters.file import FileExporter
from broker.exporters.http import HttpExporter


def create(exporter_id: str, kind: str, args: dict):
    if kind == "file":
        return FileExporter(exporter_id, args["path"])
    if kind == "http":
        return HttpExporter(exporter_id, args["url"], int(args.get("batchSize", 500)))
    raise ValueError(f"exporter {exporter_id}: unknown type {kind!r}")
