"""broker.batching: per-thread batches handed over once per turn."""

from __future__ import annotations

import threading

from broker.batching import Batches


class Target:
    def __init__(self, fail: bool = False):
        self.got: list[list] = []
        self.fail = fail

    def take(self, items: list) -> None:
        if self.fail:
            raise RuntimeError("boom")
        self.got.append(items)


def test_outside_a_turn_nothing_is_gathered():
    b, t = Batches("test"), Target()
    assert b.add(t, 1) is False
    assert t.got == []


def test_a_turn_hands_each_target_its_items_once_in_order_when_it_ends():
    b, t1, t2 = Batches("test"), Target(), Target()
    with b.turn():
        for i in range(5):
            assert b.add(t1 if i % 2 else t2, i)
        with b.turn():  # a nested turn joins the outer one
            assert b.add(t1, "nested")
        assert t1.got == [] and t2.got == []
    assert t1.got == [[1, 3, "nested"]]
    assert t2.got == [[0, 2, 4]]
    assert b.add(t1, "after") is False  # the turn is over


def test_one_failing_target_loses_only_its_own_items(caplog):
    b, bad, good = Batches("test"), Target(fail=True), Target()
    with b.turn():
        b.add(bad, 1)
        b.add(good, 2)
    assert good.got == [[2]]
    assert "1 items for" in caplog.text and "lost" in caplog.text


def test_turns_are_per_thread():
    b, t = Batches("test"), Target()
    other: list[bool] = []
    with b.turn():
        th = threading.Thread(target=lambda: other.append(b.add(t, "other thread")))
        th.start()
        th.join()
        b.add(t, "mine")
    assert other == [False]
    assert t.got == [["mine"]]


def test_a_connection_queues_the_answers_of_a_turn_together_and_in_order():
    import socket

    from broker import batching
    from broker.ioloop import IoLoop
    from broker.transport import Connection
    from broker.wire import FrameDecoder, Hello, Response

    a, b = socket.socketpair()
    b.settimeout(5)
    loop = IoLoop("test-io")
    conn = Connection(a, ("127.0.0.1", 1), Hello("c", -1, 1, "client"), loop)
    loop.add(conn)
    loop.start()
    try:
        with batching.turn():
            for i in range(100):
                assert conn.send_response(i, {"ok": True, "i": i})
            assert not conn._out  # gathered, not queued yet
        decoder, got = FrameDecoder(), []
        while len(got) < 100:
            got += list(decoder.feed(b.recv(65536)))
        assert got == [Response(i, {"ok": True, "i": i}) for i in range(100)]
    finally:
        conn.close()
        loop.stop()
        b.close()
