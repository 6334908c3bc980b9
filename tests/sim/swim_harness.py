"""Deterministic simulator for the SWIM core (broker/membership/swim.py).

Every node runs the real ``Swim`` object. Around it the harness simulates a
network with per-message loss and random delay (hence reordering) that
carries messages through msgpack as the real wire does, crashes, restarts,
muted nodes (everything they send is lost) and cuts between groups.

Time is a float clock in seconds driven by one event heap: a node is ticked
exactly at its ``next_deadline()`` and whenever a message reaches it, so
simulated minutes cost little. All randomness comes from one seeded
``random.Random`` (each node's own rng is drawn from it), so a seed fixes
the whole run, and ``trace`` records every membership event as
(time, observer, event).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable

import msgpack

from broker.membership.swim import DEAD, Event, Swim, SwimConfig


def initial_meta(node_id: int) -> dict:
    return {
        "region": f"region{node_id % 2}",
        "host": "127.0.0.1",
        "internal": 26502 + node_id,
        "partitions": {str(p): {"role": "follower", "term": 1} for p in range(1, 3)},
    }


class SwimSim:
    def __init__(
        self,
        n: int = 8,
        seed: int = 0,
        loss: float = 0.0,
        delay: tuple[float, float] = (0.001, 0.03),
        config: SwimConfig | None = None,
        stagger: float = 1.0,
    ):
        """``n`` nodes that start within ``stagger`` seconds, each joining through node 0."""
        self.n = n
        self.rng = random.Random(seed)
        self.loss = loss
        self.delay = delay
        self.config = config or SwimConfig()
        self.now = 0.0
        self.nodes: dict[int, Swim] = {}
        self.up: set[int] = set()
        self.muted: set[int] = set()
        self.cuts: list[tuple[set[int], set[int]]] = []
        self.trace: list[tuple[float, int, Event]] = []
        self.sent = self.lost = 0
        self._heap: list = []
        self._order = 0
        self._tick_token: dict[int, int] = {}
        for i in range(n):
            self._push(self.rng.uniform(0, stagger), ("start", i, [0] if i else [], 0))

    # --- faults -------------------------------------------------------------

    def start(
        self,
        node_id: int,
        contact_points: list[int],
        incarnation: int = 0,
        meta: dict | None = None,
    ) -> None:
        """(Re)start a node with fresh state, as after a crash."""
        node = Swim(
            node_id,
            meta or initial_meta(node_id),
            self.config,
            random.Random(self.rng.getrandbits(64)),
            now=self.now,
            incarnation=incarnation,
        )
        self.nodes[node_id] = node
        self.up.add(node_id)
        node.join(contact_points)
        self._after(node_id)

    def kill(self, node_id: int) -> None:
        self.up.discard(node_id)

    def cut(self, a: set[int], b: set[int]) -> None:
        """Drop every message between groups ``a`` and ``b`` until ``heal``."""
        self.cuts.append((set(a), set(b)))

    def heal(self) -> None:
        self.cuts.clear()
        self.muted.clear()

    def set_meta(self, node_id: int, meta: dict) -> None:
        self.nodes[node_id].set_meta(meta)
        self._after(node_id)

    # --- running --------------------------------------------------------------

    def run_until(self, t: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= t:
            at, _, ev = heapq.heappop(heap)
            self.now = at
            kind, i = ev[0], ev[1]
            if kind == "start":
                self.start(i, ev[2], ev[3])
            elif i not in self.up:
                continue
            elif kind == "tick":
                if ev[2] == self._tick_token[i]:
                    self.nodes[i].tick(at)
                    self._after(i)
            else:  # a message arriving at i
                node = self.nodes[i]
                node.tick(at)
                node.receive(ev[2], msgpack.unpackb(ev[3]))
                self._after(i)
        self.now = max(self.now, t)

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def wait_for(self, predicate: Callable[[], bool], limit: float, step: float = 0.05) -> float:
        """Run until ``predicate`` holds (checked every ``step``); return the time taken."""
        start = self.now
        while not predicate():
            assert self.now - start < limit, f"t={self.now:.2f}: not within {limit}s"
            self.run_for(step)
        return self.now - start

    def _push(self, at: float, ev: tuple) -> None:
        self._order += 1
        heapq.heappush(self._heap, (at, self._order, ev))

    def _after(self, i: int) -> None:
        """Route what node ``i`` produced, and schedule its next tick."""
        node = self.nodes[i]
        messages, events = node.drain()
        self.trace.extend((self.now, i, e) for e in events)
        for dst, msg in messages:
            self.sent += 1
            if self._dropped(i, dst) or self.rng.random() < self.loss:
                self.lost += 1
                continue
            at = self.now + self.rng.uniform(*self.delay)
            self._push(at, ("msg", dst, i, msgpack.packb(msg)))
        token = self._tick_token[i] = self._tick_token.get(i, 0) + 1
        self._push(max(node.next_deadline(), self.now), ("tick", i, token))

    def _dropped(self, src: int, dst: int) -> bool:
        if src in self.muted:
            return True
        return any((src in a and dst in b) or (src in b and dst in a) for a, b in self.cuts)

    # --- views ------------------------------------------------------------------

    def state(self, observer: int, node_id: int) -> str | None:
        m = self.nodes[observer].members.get(node_id)
        return m.state if m else None

    def converged(self) -> bool:
        """Every live node sees every live node ALIVE, with its newest metadata."""
        if len(self.nodes) < self.n:
            return False  # not all started yet
        for i in self.up:
            members = self.nodes[i].members
            for j in self.up:
                own, seen = self.nodes[j].me, members.get(j)
                if seen is None or seen.state != "ALIVE" or seen.incarnation != own.incarnation:
                    return False
                if seen.version != own.version or seen.meta != own.meta:
                    return False
        return True

    def dead_events(self, node_id: int | None = None, since: float = 0.0) -> list:
        return [
            (t, obs, e)
            for t, obs, e in self.trace
            if t >= since and e.kind == DEAD and (node_id is None or e.node_id == node_id)
        ]

    def detection_time(self, victim: int, killed_at: float) -> float | None:
        """Kill to DEAD on every other live node, or None if someone has not seen it."""
        first: dict[int, float] = {}
        for t, obs, _ in self.dead_events(victim, killed_at):
            first.setdefault(obs, t)
        others = self.up - {victim}
        if not others <= first.keys():
            return None
        return max(first[o] for o in others) - killed_at
