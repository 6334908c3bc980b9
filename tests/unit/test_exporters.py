import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from broker.exporters import create
from broker.exporters.file import FileExporter
from broker.exporters.http import HttpExporter


class Sink:
    """A real HTTP endpoint on 127.0.0.1 that fails the first ``failures`` POSTs."""

    def __init__(self, failures: int = 0):
        self.failures = failures
        self.batches: list[dict] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if sink.failures:
                    sink.failures -= 1
                    self.send_response(503)
                else:
                    sink.batches.append(body)
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/records"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sink():
    sinks = []

    def make(failures=0):
        s = Sink(failures)
        sinks.append(s)
        return s

    yield make
    for s in sinks:
        s.close()


def test_http_exporter_posts_batches_in_order(sink):
    s = sink()
    ex = HttpExporter("region0", s.url, batch_size=2)
    records = [(p, f"r{p}".encode()) for p in range(1, 6)]
    assert ex.export(3, records) == 5
    assert [len(b["records"]) for b in s.batches] == [2, 2, 1]
    got = [(r["position"], base64.b64decode(r["data"])) for b in s.batches for r in b["records"]]
    assert got == records and all(b["partition"] == 3 for b in s.batches)


def test_http_exporter_raises_on_failure_so_the_runner_retries(sink):
    s = sink(failures=1)
    ex = HttpExporter("region0", s.url)
    with pytest.raises(OSError):
        ex.export(1, [(1, b"a")])
    assert ex.export(1, [(1, b"a")]) == 1  # the retry delivers it
    assert len(s.batches) == 1


def test_file_exporter_skips_what_the_sink_already_holds(tmp_path):
    a = FileExporter("region0", str(tmp_path))
    a.export(1, [(1, b"a"), (2, b"b")])
    b = FileExporter("region0", str(tmp_path))  # e.g. a new leader on the same sink
    assert b.last_position(1) == 2
    b.export(1, [(2, b"b"), (3, b"\xff")])
    lines = [json.loads(x) for x in (tmp_path / "partition-1.jsonl").read_text().splitlines()]
    assert [d["position"] for d in lines] == [1, 2, 3]
    assert lines[2]["base64"] is True and base64.b64decode(lines[2]["data"]) == b"\xff"


def test_a_line_torn_by_a_crash_is_cut_off_before_the_next_batch(tmp_path):
    FileExporter("x", str(tmp_path)).export(1, [(1, b"a"), (2, b"b")])
    with open(tmp_path / "partition-1.jsonl", "a") as f:
        f.write('{"partition":1,"posi')  # a crash in the middle of a write
    after = FileExporter("x", str(tmp_path))
    assert after.last_position(1) == 2
    after.export(1, [(3, b"c")])
    lines = [json.loads(x) for x in (tmp_path / "partition-1.jsonl").read_text().splitlines()]
    assert [d["position"] for d in lines] == [1, 2, 3]  # every line parses


def test_unknown_exporter_type_is_refused():
    with pytest.raises(ValueError, match="unknown type"):
        create("x", "kafka", {})
