"""The nemesis: one fault at a time, drawn from a seed, injected while the clients run.

Faults come in rounds: every kind of the mix once per round, in an order drawn from the
seed (a region loss leads the first round: it takes longest). Each fault is applied, held
for a while, and undone; then a quiet gap. Every action is
written to the history as a ``nemesis`` line (start and stop, with what was done), so a
violation can be read next to the faults around it.

Kinds:
- ``kill``: kill -9 a broker, restart it on its data.
- ``pause``: SIGSTOP a broker (half the time a partition's leader) for longer than the
  election timeout, then SIGCONT: it wakes up to a newer term, its requests in flight.
- ``leader``: kill -9 the leader of a partition, restart it.
- ``restart``: kill -9 every broker, start them all again.
- ``cut``: drop all traffic between the regions (lab, nftables in the router), heal.
- ``oneway``: drop traffic from one region to the other only (lab), heal.
- ``disk``: fill the disk of the broker on a tmpfs, below its thresholds or to ENOSPC (root).
- ``failover``: lose region1 (kill -9 its brokers), run the operator's failover
  (broker.ops), keep going on region0 alone, then fail back with empty disks.
"""

from __future__ import annotations

import random
import threading
import time
import traceback

from tests.campaign.environment import ELECTION_TIMEOUT, MB, Environment
from tests.campaign.recorder import Recorder

KINDS = ("kill", "pause", "leader", "restart", "cut", "oneway", "disk", "failover")
MIXES = {
    "processes": ("kill", "pause", "leader", "restart"),
    "network": ("cut", "oneway", "pause"),
    "disk": ("disk", "kill", "leader"),
    "region": ("failover", "kill", "pause"),
    "all": KINDS,
}
FAILOVER_MIN_SECONDS = 20.0  # a failover and failback need about this much of a schedule


def needs(kind: str) -> str | None:
    """What a kind needs beyond local processes: "lab", "tmpfs" or nothing."""
    return {"cut": "lab", "oneway": "lab", "disk": "tmpfs"}.get(kind)


class Nemesis(threading.Thread):
    def __init__(
        self,
        env: Environment,
        kinds: tuple[str, ...],
        rng: random.Random,
        seconds: float,
        recorder: Recorder,
        stop: threading.Event,
    ):
        super().__init__(name="campaign-nemesis", daemon=True)
        self.env = env
        self.kinds = kinds
        self.rng = rng
        self.seconds = seconds
        self.recorder = recorder
        self.stop = stop
        self.counts: dict[str, int] = dict.fromkeys(kinds, 0)
        self.error: str | None = None  # a procedure that failed, or a crash here

    def run(self) -> None:
        deadline = time.monotonic() + self.seconds
        rounds = 0
        queue: list[str] = []
        try:
            while not self.stop.is_set():
                self.hold(self.rng.uniform(0.5, 1.5))
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if not queue:  # rounds: every kind once, in a seeded order, so each one runs
                    queue = list(self.kinds)
                    self.rng.shuffle(queue)
                    if rounds == 0 and "failover" in queue:  # it needs the most time: first
                        queue.remove("failover")
                        queue.insert(0, "failover")
                    rounds += 1
                kind = queue.pop(0)
                if kind == "failover" and left < FAILOVER_MIN_SECONDS:
                    continue
                self.inject(kind)
                if self.error:
                    break
        except Exception:
            self.error = traceback.format_exc()
        finally:
            self.env.heal_all()

    def hold(self, seconds: float) -> None:
        """The schedule's pace, not synchronisation: faults last this long."""
        self.stop.wait(seconds)

    def note(self, kind: str, phase: str, **fields) -> None:
        self.recorder.event("nemesis", f=kind, phase=phase, **fields)

    def inject(self, kind: str) -> None:
        self.counts[kind] += 1
        env, rng = self.env, self.rng
        members = env.members()
        if kind in ("kill", "leader"):
            node = rng.choice(members)
            if kind == "leader":
                partition = rng.randint(1, env.shape.partitions)
                node = env.leader_of(partition)
                if node is None or node not in members:
                    self.note(kind, "skip", partition=partition, why="no leader known")
                    return
            self.note(kind, "start", node=node)
            env.kill(node)
            self.hold(rng.uniform(0.3, 2.0))
            env.start([node])
            self.note(kind, "stop", node=node)
        elif kind == "pause":
            node = rng.choice(members)
            if rng.random() < 0.5:  # half the time a leader: its followers elect another
                leader = env.leader_of(rng.randint(1, env.shape.partitions))
                node = leader if leader in members else node
            self.note(kind, "start", node=node)
            env.pause(node)
            self.hold(rng.uniform(2 * ELECTION_TIMEOUT, 5 * ELECTION_TIMEOUT))
            env.resume_all()
            self.note(kind, "stop", node=node)
        elif kind == "restart":
            self.note(kind, "start", nodes=members)
            env.restart_all()
            self.note(kind, "stop", nodes=members)
        elif kind == "cut":
            self.note(kind, "start")
            env.cut()
            self.hold(rng.uniform(1.0, 3.0))
            env.heal_network()
            self.note(kind, "stop")
        elif kind == "oneway":
            source, destination = rng.choice((("region0", "region1"), ("region1", "region0")))
            self.note(kind, "start", source=source, destination=destination)
            env.cut_oneway(source, destination)
            self.hold(rng.uniform(1.0, 3.0))
            env.heal_network()
            self.note(kind, "stop")
        elif kind == "disk":
            leave = rng.choice((2 * MB, 0))
            filled = env.fill_disk(leave)
            self.note(kind, "start", node=env.tmpfs_broker, filler=filled, leave=leave)
            self.hold(rng.uniform(1.0, 3.0))
            env.free_disk()
            self.note(kind, "stop", node=env.tmpfs_broker)
        elif kind == "failover":
            self.region_loss()
        else:
            raise ValueError(f"unknown nemesis kind {kind!r}")

    def region_loss(self) -> None:
        env = self.env
        self.note("failover", "start", lost="region1")
        env.resume_all()  # a paused survivor would make the procedure refuse, rightly
        env.wait_up()  # the region is lost from a healthy cluster, not from the last fault
        env.lose_region("region1")
        results = env.failover("region1")
        self.note("failover", "failed-over", steps=_steps(results))
        if any(r.status == "failed" for r in results):
            self.error = f"fab failover failed: {_steps(results)}"
            return
        self.hold(self.rng.uniform(2.0, 4.0))  # region0 alone takes the load
        results = env.failback("region1")
        self.note("failover", "stop", steps=_steps(results))
        if any(r.status == "failed" for r in results):
            self.error = f"fab failback failed: {_steps(results)}"


def _steps(results) -> list[str]:
    return [
        f"{r.name}: {r.status}" + (f" ({r.saw})" if r.status == "failed" else "") for r in results
    ]
