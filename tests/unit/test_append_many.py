"""Appends of many records in one request (``records``): validated like one record,
proposed as one, committed in one entry at consecutive positions, answered once with
the first position and the count; stored exactly as appends sent one by one."""

from __future__ import annotations

import pytest

from broker import partition as sm
from broker import wire
from broker.client import BrokerClient, InvalidArgument
from broker.node.gateway import commands, parse_request
from broker.node.partitions import PartitionRunner
from broker.records import appends
from tests.helpers import wait_until
from tests.unit.test_gateway_validation import Conn, refused, two_gateways  # noqa: F401
from tests.unit.test_runner import FakeClock, Results, lead, make_runner

P = 3


def test_records_are_proposed_as_the_appends_of_each_one_back_to_back():
    body = {"op": "append", "records": [b"a", "é", b""], "partition": 2}
    req = parse_request(body, P)
    assert (req.partition, commands(body)) == (2, 3)
    assert req.command == b"".join(sm.encode(sm.APPEND, r) for r in (b"a", "é".encode(), b""))
    assert appends(req.command) == [b"a", "é".encode(), b""]  # the rule a replica reads back
    assert commands({"op": "append", "records": [b"a", b"b"]}) == 2
    assert commands({"op": "put", "key": "k", "value": b"v", "records": [b"a", b"b"]}) is None


@pytest.mark.parametrize(
    "records, match",
    [
        ([], r"list of 1\.\.10000"),
        ([b"x"] * (wire.MAX_APPEND_RECORDS + 1), r"list of 1\.\.10000"),
        (b"x", "'records' must be a list"),
        ({"a": b"x"}, "'records' must be a list"),
        (None, "'records' must be a list"),
        ([b"x", 1], "every record in 'records' must be bytes"),
        ([b"x", None], "every record in 'records' must be bytes"),
        ([b"x", [b"y"]], "every record in 'records' must be bytes"),
        (["ok", "\ud800"], "not valid UTF-8"),
    ],
)
def test_bad_records_are_refused_naming_the_field(records, match):
    refused({"op": "append", "records": records}, match)


def test_data_and_records_together_are_refused():
    refused({"op": "append", "data": b"x", "records": [b"y"]}, "'data' or 'records', not both")


def test_records_too_large_together_are_refused_naming_the_limit():
    limit = 1 << 16
    record = b"r" * 1000
    fits = wire.max_command_size(limit) // len(sm.encode(sm.APPEND, record))
    fitting = {"op": "append", "records": [record] * fits}
    assert appends(parse_request(fitting, P, limit).command) == [record] * fits
    message = refused(
        {"op": "append", "records": [record] * (fits + 1)}, "exceeds", max_frame_size=limit
    )
    assert str(wire.max_command_size(limit)) in message


def test_a_forwarded_append_of_many_records_reaches_the_leader_whole(two_gateways):  # noqa: F811
    gateway, leader, _ = two_gateways(1 << 16)
    conn = Conn()
    gateway.handle(conn, 1, {"op": "append", "records": [b"a", b"b", b"c"], "partition": 1})
    result = wait_until(lambda: conn.responses.get(1))
    assert result["ok"] is True, result
    (command,) = leader.commands
    assert appends(command) == [b"a", b"b", b"c"]


def committed(r: PartitionRunner, clock: FakeClock, results: Results, n: int) -> None:
    for _ in range(200):
        clock.advance(0.01)
        r.run_once(block=False)
        if len(results.got) == n:
            return
    raise AssertionError(f"{len(results.got)} of {n} answered: {results.got}")


def test_the_runner_answers_a_proposal_of_many_appends_once_with_its_first_position(tmp_path):
    clock = FakeClock()
    r = make_runner(tmp_path, clock=clock)
    try:
        lead(r, clock)
        results = Results()
        # one turn: a single record, three together, a put, two together
        r.propose(sm.encode(sm.APPEND, b"a"), results.done(0))
        r.propose(sm.encode_appends([b"b", b"c", b"d"]), results.done(1), 3)
        r.propose(sm.encode(sm.PUT, "k", b"v"), results.done(2))
        r.propose(sm.encode_appends([b"e", b"f"]), results.done(3), 2)
        committed(r, clock, results, 4)
        got = results.got
        assert got[0] == {"ok": True, "partition": 1, "position": 1}
        assert got[1] == {"ok": True, "partition": 1, "position": 2, "count": 3}
        assert got[2]["ok"] is True and "count" not in got[2]
        assert got[3] == {"ok": True, "partition": 1, "position": 5, "count": 2}
        records = r.state.records.read(1, 100, 1 << 20)
        assert [data for _, data in records] == [b"a", b"b", b"c", b"d", b"e", b"f"]
        assert r.state.records.last_position == 6
    finally:
        r.stop()


def test_the_client_checks_the_count_and_the_size_before_sending():
    client = BrokerClient("127.0.0.1:9", timeout=1, route=False)  # connects lazily
    try:
        with pytest.raises(ValueError, match=r"1\.\.10000 records"):
            client.append_many_async([])
        with pytest.raises(ValueError, match=r"1\.\.10000 records"):
            client.append_many_async([b"x"] * (wire.MAX_APPEND_RECORDS + 1))
        with pytest.raises(TypeError, match="record must be str or bytes"):
            client.append_many_async([b"x", 3])
        with pytest.raises(InvalidArgument, match="exceeds"):
            client.append_many([b"x" * 1000] * 5000)
        assert client._conn is None  # nothing was sent
    finally:
        client.close()
