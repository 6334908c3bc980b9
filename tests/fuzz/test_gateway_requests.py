"""The gateway's request validation under arbitrary bodies: a valid request within
its bounds, or RequestError with a known code; never another exception."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker import wire
from broker.node.gateway import (
    ERROR_CODES,
    FORWARDED_FIELDS,
    KNOWN_OPS,
    MAX_TIMEOUT,
    Gateway,
    RequestError,
    parse_request,
)
from tests.fuzz import EDGES, FUZZ, msgpack_values, scalars

P = 4
LIMIT = 1 << 12  # a small frame limit, so that generated values can exceed it

names = st.sampled_from([*FORWARDED_FIELDS, "timeout", "forwarded"]) | st.text(max_size=8)
values = (
    msgpack_values
    | st.sampled_from([*EDGES, math.nan, math.inf, -math.inf, -0.0, 1e300, True, False])
    | st.binary(min_size=LIMIT - 200, max_size=LIMIT + 50)
)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "op": st.sampled_from(sorted(KNOWN_OPS)) | scalars | msgpack_values,
        "partition": st.integers(-2, P + 2) | values,
        "timeout": st.floats(-1, MAX_TIMEOUT + 1) | values,
        "key": st.text(max_size=30) | values,
    },
).flatmap(
    lambda fixed: st.dictionaries(names, values, max_size=6).map(lambda more: {**more, **fixed})
)


def check(body: dict, internal: bool) -> None:
    try:
        req = parse_request(body, P, LIMIT, internal)
    except RequestError as e:
        assert e.code in ERROR_CODES
        assert isinstance(e.message, str) and len(e.message) < 300
        return
    assert req.op in KNOWN_OPS and (internal or not req.op.startswith("_"))
    assert req.timeout is None or (
        type(req.timeout) in (int, float)
        and math.isfinite(req.timeout)
        and 0 <= req.timeout <= MAX_TIMEOUT
    )
    assert req.partition is None or 1 <= req.partition <= P
    if req.op == "topology":
        assert req.command is None
    elif type(req.command) is bytes:
        assert len(req.command) <= wire.max_command_size(LIMIT)
    else:
        assert callable(req.command) and req.op.startswith("_")


@FUZZ
@given(bodies, st.booleans())
def test_parse_request_answers_or_refuses_with_a_known_code(body, internal):
    check(body, internal)


@FUZZ
@given(msgpack_values)
def test_parse_request_takes_any_value(body):
    check(body, False)


class Conn:
    def __init__(self):
        self.answers: list[dict] = []

    def send_response(self, req_id: int, body: dict) -> bool:
        self.answers.append(body)
        return True


class NoLink:
    def request(self, node_id, body, timeout):
        raise AssertionError("no request may be forwarded: the deadline is 0")


@pytest.fixture(scope="module")
def gateway():
    # request_timeout 0: a valid request meets its deadline at once, so every
    # request is answered synchronously by handle() itself.
    gw = Gateway(1, P, {}, lambda pid: None, NoLink(), lambda: {}, 0.0, 10, None, LIMIT)
    yield gw
    gw.stop()


@FUZZ
@given(bodies)
def test_the_gateway_answers_every_body_once_with_a_known_code(gateway, body):
    conn = Conn()
    gateway.handle(conn, 1, body)  # raises nothing
    (answer,) = conn.answers
    if answer.get("ok") is not True:
        assert answer["code"] in ERROR_CODES
