"""The HTTP exporter: POSTs ``{"partition": p, "records": [{"position", "data"}]}`` batches.

A failed POST raises; the exporter runner retries the same records later
with backoff, so the sink sees every record at least once, in order.
"""

from __future__ import annotations

import base64
import json
import urllib.request


class HttpExporter:
    def __init__(self, exporter_id: str, url: str, batch_size: int = 500, timeout: float = 5.0):
        self.id = exporter_id
        self.url = url
        self.batch_size = batch_size
        self.timeout = timeout

    def last_position(self, partition: int) -> int:
        return 0  # unknown: the replicated position decides where to continue

    def export(self, partition: int, records: list[tuple[int, bytes]]) -> int:
        for i in range(0, len(records), self.batch_size):
            chunk = records[i : i + self.batch_size]
            body = {
                "partition": partition,
                "records": [
                    {"position": pos, "data": base64.b64encode(data).decode()}
                    for pos, data in chunk
                ],
            }
            req = urllib.request.Request(
                self.url,
                data=json.dumps(body).encode(),
                method="POST",
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                if resp.status >= 300:
                    raise OSError(f"{self.url} answered {resp.status}")
        return records[-1][0] if records else 0

    def forget(self, partition: int) -> None:
        pass
