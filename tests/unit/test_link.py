"""InternalLink: requests between brokers as GOSSIP payloads, answered, timed out,
refused without a route; malformed messages are dropped, never raised."""

from __future__ import annotations

import pytest

from broker.node.link import InternalLink
from broker.node.seams import AnswerLost


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def pair():
    """Two links wired back to back, as two brokers' transports would."""
    clock = Clock()
    links: dict[int, InternalLink] = {}

    def sender(src):
        def send(dst, payload):
            if dst not in links:
                return False
            links[dst].on_message(src, payload)
            return True

        return send

    served = []

    def serve(conn, req_id, body):
        served.append((conn.node_id, body))
        conn.send_response(req_id, {"ok": True, "echo": body["x"]})

    links[1] = InternalLink(1, sender(1), serve, clock=clock)
    links[2] = InternalLink(2, sender(2), serve, clock=clock)
    return links, served, clock


def test_a_request_is_served_by_the_other_broker_and_answered():
    links, served, _ = pair()
    fut = links[1].request(2, {"x": 7}, timeout=1)
    assert fut.result(0) == {"ok": True, "echo": 7}
    assert served == [(1, {"x": 7})]  # served on broker 2, answered to broker 1


def test_no_route_fails_at_once_and_a_lost_answer_times_out():
    links, _, clock = pair()
    with pytest.raises(ConnectionError, match="no connection to node 9"):
        links[1].request(9, {"x": 1}, timeout=1).result(0)
    links[2].serve = lambda conn, req_id, body: None  # never answers
    fut = links[1].request(2, {"x": 1}, timeout=1)
    assert not fut.done()
    clock.now += 1.5
    links[1].expire()
    with pytest.raises(TimeoutError):
        fut.result(0)
    # a late answer to an expired request is ignored
    links[1].on_message(2, {"rpc": "resp", "id": 2, "body": {"ok": True}})


def test_a_lost_connection_fails_that_nodes_requests_at_once_and_only_those():
    links, _, _ = pair()
    links[3] = InternalLink(3, lambda dst, payload: True)  # a third broker, never answering
    links[2].serve = lambda conn, req_id, body: None
    to_2 = [links[1].request(2, {"x": i}, timeout=30) for i in range(3)]
    to_3 = links[1].request(3, {"x": 9}, timeout=30)
    links[1].lost(2)
    for fut in to_2:
        with pytest.raises(AnswerLost, match="lost the connection to node 2 before its answer"):
            fut.result(0)
    assert not to_3.done()
    links[1].lost(2)  # again (a dial that keeps failing): nothing left to fail
    links[1].on_message(2, {"rpc": "resp", "id": 1, "body": {"ok": True}})  # late: ignored
    assert not to_3.done()


@pytest.mark.parametrize(
    "payload",
    [
        {"rpc": "req", "id": "one", "body": {}},
        {"rpc": "req", "id": 1, "body": [1]},
        {"rpc": "resp", "id": 99, "body": {}},  # answers nothing
    ],
)
def test_malformed_or_unknown_messages_are_dropped(payload):
    links, served, _ = pair()
    assert links[2].on_message(1, payload) is True
    assert served == []


def test_other_gossip_is_not_the_links():
    links, _, _ = pair()
    assert links[1].on_message(2, {"topology": {}}) is False
    assert links[1].on_message(2, ["swim", 1]) is False
