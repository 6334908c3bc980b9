"""Seeded random schedules for the simulator.

One seed fixes everything: the cluster shape, the network's loss, duplication
and delay, and a sequence of faults (crashes, restarts, partitions, a clean
two-region split, leadership transfers, membership changes, or a region loss
followed by a force reconfigure of the survivors). Each schedule ends with a
quiet phase (network healed, crashed nodes restarted) after which the
cluster must converge and every acknowledged write must be present.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from broker.raft.core import RaftConfig
from broker.raft.messages import Configuration

from .cluster import TICK, SafetyViolation, SimCluster


@dataclass
class Outcome:
    seed: int
    kind: str
    violation: str | None
    proposals: int
    acked: int
    messages: int


UNSAFE_RULES = {
    "figure8": "unsafe_commit_earlier_terms",
    "vote": "unsafe_vote_ignores_log",
}


def run_schedule(seed: int, unsafe: str | None = None, verbose: bool = False) -> Outcome:
    """Run one schedule; ``unsafe`` names a safety rule to break (test-only)."""
    rng = random.Random(seed)
    kind = rng.choice(["faults", "faults", "membership", "region_loss"])
    cfg = RaftConfig(
        election_ticks=10,
        heartbeat_ticks=1,
        priority_election=rng.random() < 0.5,
        max_batch_entries=rng.choice([1, 4, 64]),
        max_inflight=rng.choice([1, 4, 16]),
        snapshot_chunk_size=rng.choice([64, 256, 4096]),
        snapshot_window=rng.choice([1, 4]),
    )
    # Entries read back from disk (released data, committed entries handed out in
    # parts): drawn from a generator of its own, so every seed keeps its schedule.
    storage = random.Random(f"storage-{seed}")
    release_log = storage.random() < 0.5
    if release_log:
        cfg.max_apply_bytes = storage.choice([40, 200, 1 << 20])
        cfg.max_batch_bytes = storage.choice([40, 200, 1 << 20])
    if unsafe:
        setattr(cfg, UNSAFE_RULES[unsafe], True)
    if kind == "region_loss":
        n = rng.choice([4, 6])
    else:
        n = rng.choice([3, 5]) if kind == "faults" else 5
    voters = list(range(n)) if kind != "membership" else [0, 1, 2]
    priorities = {v: len(voters) - k for k, v in enumerate(voters)}
    c = SimCluster(
        n=n,
        seed=seed,
        voters=voters,
        cfg=cfg,
        loss=rng.choice([0.0, 0.02, 0.1]),
        duplicate=rng.choice([0.0, 0.02]),
        delay=(1, rng.choice([3, 10, 25])),
        fsync_delay=(1, rng.choice([2, 8])),
        priorities=priorities,
        snapshot_every=rng.choice([0, 8, 30]),
        release_log=release_log,
    )
    violation = None
    try:
        _drive(c, rng, kind, verbose)
    except SafetyViolation as exc:
        violation = str(exc)
    except Exception as exc:  # a crash of the core is a bug too
        import traceback

        frame = traceback.extract_tb(exc.__traceback__)[-1]
        violation = f"t={c.now}: {type(exc).__name__}: {exc} at {frame.filename}:{frame.lineno}"
    return Outcome(seed, kind, violation, c.proposals, len(c.acked), c.messages_sent)


def _log(verbose: bool, c: SimCluster, what: str) -> None:
    if verbose:
        roles = " ".join(
            f"{i}:{'X' if not n.alive else n.core.role.value[0]}{n.core.term}"
            for i, n in c.nodes.items()
        )
        print(f"t={c.now:6d} {what:40s} [{roles}]")


def _drive(c: SimCluster, rng: random.Random, kind: str, verbose: bool) -> None:
    counter = 0
    lost_region: list[int] = []
    forced: list[Configuration] = []

    def restart(node: int) -> None:
        c.restart(node)
        if forced:
            # the topology layer persisted the force operation and re-applies it
            # at start, in case the crash beat the hard state's fsync
            c.call(node, lambda core: core.force_reconfigure(forced[0]))

    phase_end = 2500
    while c.now < phase_end:
        c.run(rng.randint(1, 3 * TICK))
        if rng.random() < 0.6:
            for _ in range(rng.randint(1, 4)):
                counter += 1
                c.propose(f"w{counter}".encode())
        r = rng.random()
        alive = [i for i, n in c.nodes.items() if n.alive and i not in lost_region]
        dead = [i for i, n in c.nodes.items() if not n.alive and i not in lost_region]
        if r < 0.04 and len(alive) > 1:
            victim = rng.choice(alive)
            c.crash(victim)
            _log(verbose, c, f"crash {victim}")
        elif r < 0.08 and dead:
            node = rng.choice(dead)
            restart(node)
            _log(verbose, c, f"restart {node}")
        elif r < 0.10:
            nodes = [i for i in c.nodes if i not in lost_region]
            rng.shuffle(nodes)
            cut = rng.randint(1, len(nodes) - 1)
            c.partition(nodes[:cut], nodes[cut:])
            _log(verbose, c, f"partition {sorted(nodes[:cut])} | {sorted(nodes[cut:])}")
        elif r < 0.11:
            region0 = [i for i in c.nodes if i % 2 == 0]
            c.partition(region0, [i for i in c.nodes if i % 2 == 1])
            _log(verbose, c, "split regions")
        elif r < 0.14:
            c.heal()
            _log(verbose, c, "heal")
        elif r < 0.15:
            for leader in c.leaders():
                c.call(leader, lambda core: core.step_down_if_not_primary())
                _log(verbose, c, f"rebalance at {leader}")
        elif kind == "membership" and r < 0.19:
            _change_membership(c, rng, verbose)
        if kind == "region_loss" and not lost_region and c.now > 800 and rng.random() < 0.05:
            lost_region, config = _lose_region_and_force(c, rng, verbose)
            forced.append(config)
    # quiet phase: heal, restart, and the cluster must converge
    c.heal()
    for i, n in c.nodes.items():
        if not n.alive and i not in lost_region:
            restart(i)
    _log(verbose, c, "quiet phase")
    ok = c.run_until(c.converged, limit=6000)
    if not ok:
        # a leader of the current term commits only once it has a fresh entry
        c.propose(b"final")
        ok = c.run_until(c.converged, limit=4000)
    if not ok:
        leaders = c.leaders()
        raise SafetyViolation(f"liveness: no convergence after healing (leaders {leaders})")
    c.checker.check_final()


def _change_membership(c: SimCluster, rng: random.Random, verbose: bool) -> None:
    leaders = c.leaders()
    if not leaders:
        return
    leader = c.nodes[leaders[0]].core
    voters = set(leader.config.voters)
    candidates = [i for i, n in c.nodes.items() if n.alive and i not in voters]
    if candidates and (len(voters) < 3 or rng.random() < 0.5):
        voters.add(rng.choice(candidates))
    elif len(voters) > 2:
        voters.discard(rng.choice(sorted(voters)))
    else:
        return
    new = Configuration.of(voters, {v: 1 for v in voters})
    try:
        c.call(leaders[0], lambda core: core.propose_config(new))
        _log(verbose, c, f"config -> {sorted(voters)}")
    except Exception as exc:  # refused while another change is pending: fine
        _log(verbose, c, f"config refused: {exc}")


def _lose_region_and_force(c: SimCluster, rng: random.Random, verbose: bool):
    """Kill one region for good, then force the survivors to be the whole group.

    Only done when the group is still the bootstrap group, so that every
    committed entry sits on a quorum of it and hence on at least one survivor.
    """
    lost = rng.choice([0, 1])
    lost_region = [i for i in c.nodes if i % 2 == lost]
    survivors = [i for i in c.nodes if i % 2 != lost]
    for i in lost_region:
        c.crash(i)
    _log(verbose, c, f"lose region {lost}: {lost_region}")
    for i in survivors:
        c.restart(i)
    c.heal()
    forced = Configuration.of(survivors, {s: len(survivors) - k for k, s in enumerate(survivors)})
    for i in survivors:
        c.run(rng.randint(0, 5 * TICK))
        c.call(i, lambda core: core.force_reconfigure(forced))
        if rng.random() < 0.3:  # an operator retries the same request
            c.call(i, lambda core: core.force_reconfigure(forced))
        _log(verbose, c, f"force {i} -> {survivors}")
    return lost_region, forced
