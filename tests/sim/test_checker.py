"""Checking the checker: a simulator that cannot fail proves nothing.

Each test breaks one of Raft's safety rules through a test-only switch of
``RaftConfig`` and asserts that the simulator reports a violation, and that
the same run with the rule intact is clean.
"""

from __future__ import annotations

import pytest

from broker.raft.core import RaftConfig, Role
from tests.sim import run
from tests.sim.cluster import SafetyViolation, SimCluster
from tests.sim.schedules import run_schedule


def _leader_among(c: SimCluster, nodes, above_term: int = 0) -> int | None:
    """A leader among ``nodes`` of a term above ``above_term`` (not a stale one)."""
    found = [i for i in c.leaders() if i in nodes and c.nodes[i].core.term > above_term]
    return found[0] if found else None


def figure8(unsafe: bool, seed: int) -> SimCluster:
    """Raft paper, figure 8, scripted with partitions on 5 nodes.

    An entry X of term 1 sits on two nodes; a leader of term 3 replicates X
    to a third node and is cut off right after counting it. With the rule
    broken it has already committed X by counting replicas; a node whose log
    ends with a term-2 entry at X's index then wins and overwrites X.
    """
    cfg = RaftConfig(
        election_ticks=10,
        priority_election=False,
        max_batch_entries=1,
        max_inflight=1,
        unsafe_commit_earlier_terms=unsafe,
    )
    c = SimCluster(n=5, seed=seed, cfg=cfg, delay=(1, 3))
    first = c.one_leader()
    if first != 0:
        c.call(first, lambda core: core.transfer_leadership(0))
        assert c.run_until(lambda: c.leaders() == [0], 2000)
    assert c.wait_committed(b"base", 5) is not None

    # term 1: X reaches node 1 only
    c.partition([0, 1], [2], [3], [4])
    k = c.propose(b"X", node=0)
    assert c.run_until(lambda: c.nodes[1].core.log.last_index >= k, 500)

    # term 2: a leader among 2, 3, 4 appends its no-op at index k, then is cut off
    c.partition([0], [1], [2, 3, 4])
    term1 = c.nodes[0].core.term
    assert c.run_until(lambda: _leader_among(c, {2, 3, 4}, term1) is not None, 3000)
    stale = _leader_among(c, {2, 3, 4}, term1)
    a, b = sorted({2, 3, 4} - {stale})
    c.partition([0], [1], [stale], [a, b])  # drops the no-op still in flight
    assert c.nodes[stale].core.log.term_at(k) == c.nodes[stale].core.term

    # term 3: node 0 or 1 leads again with a's vote; its no-op (k+1) reaches
    # only the other of 0 and 1; then a gets X and is counted as its third copy
    c.partition([0, 1, a], [b], [stale])
    term2 = c.nodes[stale].core.term
    assert c.run_until(lambda: _leader_among(c, {0, 1}, term2) is not None, 3000)
    third = _leader_among(c, {0, 1}, term2)
    other = 1 - third
    c.partition([0, 1], [a], [b], [stale])
    leader = c.nodes[third].core
    assert c.run_until(lambda: leader.progress[other].match > k, 2000)
    c.partition([0, 1, a], [b], [stale])
    assert c.run_until(lambda: leader.progress[a].match >= k, 2000)
    c.partition([third], [other], [a], [b], [stale])  # cut off before k+1 reaches a

    # the term-2 node comes back: with the rule intact it cannot win
    c.partition([stale, a, b], [0], [1])
    c.run(3000)
    c.heal()
    assert c.run_until(c.converged, 8000)
    c.checker.check_final()
    return c


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_figure8_with_the_rule_intact_is_clean(seed):
    c = figure8(unsafe=False, seed=seed)
    leader = c.nodes[c.leaders()[0]].core
    assert leader.role is Role.LEADER


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_committing_an_earlier_term_by_counting_replicas_is_caught(seed):
    with pytest.raises(SafetyViolation, match=r"leader completeness|state machine safety"):
        figure8(unsafe=True, seed=seed)


def test_voting_without_the_log_check_is_caught_by_random_schedules():
    outcomes = [run_schedule(s, unsafe="vote") for s in range(60)]
    violations = [o for o in outcomes if o.violation]
    assert violations, "the simulator let a broken election restriction pass"
    assert all(
        any(p in o.violation for p in ("leader completeness", "state machine", "durability"))
        for o in violations
    )


def test_the_same_schedules_are_clean_with_the_rules_intact():
    outcomes = [run_schedule(s) for s in range(60)]
    assert [o.violation for o in outcomes if o.violation] == []
    assert sum(o.acked for o in outcomes) > 1000  # the schedules did real work


def test_runner_reports_violations_with_replay_commands(capsys):
    rc = run.main(["--seeds", "20", "--unsafe", "vote"])
    out, err = capsys.readouterr()
    assert rc == 1
    last = out.strip().splitlines()[-1]
    assert last.startswith("sim: 20 schedules, ") and not last.endswith(" 0 violations")
    assert "replay: python -m tests.sim.run --seed " in err
    assert "--unsafe vote" in err


def test_runner_summary_line_when_clean(capsys):
    rc = run.main(["--seeds", "5"])
    out, _ = capsys.readouterr()
    assert rc == 0
    assert out.strip().splitlines()[-1] == "sim: 5 schedules, 0 violations"


def test_replaying_a_seed_is_deterministic():
    a, b = run_schedule(123), run_schedule(123)
    assert (a.kind, a.proposals, a.acked, a.messages) == (b.kind, b.proposals, b.acked, b.messages)
