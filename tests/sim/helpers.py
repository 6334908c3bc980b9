"""Small helpers shared by the simulator scenario tests.

They wrap ``SimCluster`` with the questions the MIT 6.5840 lab tester asks
(checkOneLeader, checkNoLeader, one(), nCommitted) and with a message
recorder, so each test reads as the scenario it plays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from broker.raft.core import NotLeader, ProposalRejected, Role
from broker.raft.messages import AppendResponse

from .cluster import TICK, SimCluster


def set_connected(c: SimCluster, connected: Iterable[int]) -> None:
    """The lab's network model: the ``connected`` nodes talk to each other, every
    other node is cut off from everyone. (``SimCluster.connect`` instead opens
    all of a node's links, including those to nodes that are cut off.)"""
    c.partition(sorted(connected))


def timeout_units(c: SimCluster) -> int:
    """One (base) election timeout in clock units."""
    return TICK * c.cfg.election_ticks


def group_leaders(c: SimCluster, group: Iterable[int] | None = None) -> list[int]:
    members = set(c.nodes if group is None else group)
    return [i for i in c.leaders() if i in members]


def check_one_leader(c: SimCluster, group: Iterable[int] | None = None, limit: int = 3000) -> int:
    """Run until exactly one live node of ``group`` (default: all) is leader and
    every live member of ``group`` follows it in its term; return it. (A leader
    that was cut off may briefly survive its rejoining: it does not count until
    the group agrees on one.)"""
    group = [i for i in (c.nodes if group is None else group)]

    def settled() -> bool:
        ls = group_leaders(c, group)
        if len(ls) != 1:
            return False
        core = c.nodes[ls[0]].core
        return all(
            c.nodes[i].core.term == core.term and c.nodes[i].core.leader_id == ls[0]
            for i in group
            if c.nodes[i].alive
        )

    ok = c.run_until(settled, limit)
    assert ok, f"t={c.now}: no single leader among {group}: {group_leaders(c, group)}"
    return group_leaders(c, group)[0]


def check_no_leader(c: SimCluster, group: Iterable[int] | None = None) -> None:
    group = list(c.nodes if group is None else group)
    assert group_leaders(c, group) == [], f"t={c.now}: unexpected leader in {group}"


def terms(c: SimCluster, group: Iterable[int] | None = None) -> dict[int, int]:
    group = c.nodes if group is None else group
    return {i: c.nodes[i].core.term for i in group if c.nodes[i].alive}


def one(
    c: SimCluster,
    data: bytes,
    expected: int,
    group: Iterable[int] | None = None,
    limit: int = 4000,
    retry: bool = True,
) -> int:
    """The lab's ``one()``: propose ``data`` at the leader of ``group`` until
    ``expected`` live nodes applied it at the same index; return that index.

    Unlike ``SimCluster.wait_committed`` it never proposes at a stale leader
    outside ``group`` (one that is cut off and has not noticed yet).
    """
    group = list(c.nodes if group is None else group)
    deadline = c.now + limit
    proposed = False
    while c.now < deadline:
        index = None
        ls = group_leaders(c, group)
        if ls and (retry or not proposed):
            leader = max(ls, key=lambda i: c.nodes[i].core.term)
            try:
                index = c.call(leader, lambda core: core.propose(data))
            except (NotLeader, ProposalRejected):
                index = None
        if index is None:
            c.run(TICK)
            continue
        proposed = True
        c.proposals += 1
        stop = c.now + 30 * TICK
        while c.now < stop:
            c.step()
            got = c.checker.applied.get(index)
            if got is not None and got[1] != data:
                break  # another entry won that index: propose again
            if got is not None and c.committed_count(index)[0] >= expected:
                return index
    raise AssertionError(f"t={c.now}: {data!r} not applied on {expected} nodes")


def n_committed(c: SimCluster, index: int) -> int:
    """How many live nodes applied ``index``."""
    return c.committed_count(index)[0]


def applied_data(c: SimCluster, node: int) -> list[bytes]:
    return [d for _, _, d in c.nodes[node].applied]


def applied_everywhere(c: SimCluster, nodes: Iterable[int], index: int) -> bool:
    return all(c.nodes[i].alive and c.nodes[i].applied_index >= index for i in nodes)


def same_state(c: SimCluster, nodes: Iterable[int]) -> bool:
    """All these live nodes applied the same entries, up to the same index."""
    states = {(c.nodes[i].applied_index, tuple(c.nodes[i].applied)) for i in nodes}
    return len(states) == 1


def settle(c: SimCluster, limit: int = 6000) -> int:
    """Run until one leader exists and every voter applied its commit, then check
    that every acknowledged write survived. Returns the leader."""
    assert c.run_until(c.converged, limit), f"t={c.now}: no convergence, leaders {c.leaders()}"
    c.checker.check_final()
    (leader,) = c.leaders()
    return leader


def record_sends(c: SimCluster) -> list:
    """Record every message the cores send (before loss/partition); returns the list."""
    sent: list = []
    original = c._send

    def send(m) -> None:
        sent.append(m)
        original(m)

    c._send = send
    return sent


def rewrite_messages(c: SimCluster, fn: Callable[[object], object]) -> Callable[[], None]:
    """Send ``fn(m)`` instead of every message ``m`` (None: lose it); returns
    the undo."""
    original = c._send

    def send(m) -> None:
        m = fn(m)
        if m is not None:
            original(m)

    c._send = send

    def undo() -> None:
        c._send = original

    return undo


def backoff_rounds(sent: list, since: int = 0) -> int:
    """Distinct (follower, refused prev_index) AppendRequest rejections: the
    number of back-off round trips (retransmitted probes are counted once).
    Rejections because of a stale term are not counted."""
    return len(
        {
            (m.src, m.dst, m.term, m.match_index)
            for m in sent[since:]
            if isinstance(m, AppendResponse) and not m.success and m.hint_index > 0
        }
    )


def caught_up(c: SimCluster, leader: int, group: Iterable[int]) -> bool:
    """Every live member of ``group`` holds the leader's last entry."""
    log = c.nodes[leader].core.log
    for i in group:
        n = c.nodes[i]
        if n.alive and n.core.log.term_at(log.last_index) != log.last_term:
            return False
    return True


def followers_of(c: SimCluster, leader: int) -> list[int]:
    return sorted(m for m in c.nodes[leader].core.config.voters if m != leader)


def role(c: SimCluster, node: int) -> Role:
    return c.nodes[node].core.role
