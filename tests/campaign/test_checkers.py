"""Checking the checkers: a checker that cannot fail proves nothing.

Every history here is small and written by hand (or generated from a simulated
register, so linearizable by construction) and goes through ``load_history``, so
the loader is exercised too. Each bad history breaks one rule and must be caught;
each good one must pass, including the awkward but legal cases (indeterminate
writes that do or do not show up, re-exports, foreign and compacted records).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

import pytest

from tests.campaign.history import NO_COMPLETION, Op, describe, load_history
from tests.campaign.linearizable import DEFAULT_BUDGET, check_kv
from tests.campaign.logcheck import FinalLogs, check_log

# --- building histories ---------------------------------------------------------------


Time = float
Records = list[tuple[int, str]]
_NOT_GIVEN: Any = object()  # a refused cas that does not say what it found


class Recording:
    """Writes history lines the way the campaign runner does, then loads them back.

    ``end=None`` with ``status="info"`` leaves the invocation without completion (the
    run was cut short); an ``info`` with an end writes an ``info`` line at that time.
    Each method returns the operation's id.
    """

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []
        self._ids = 0

    def op(
        self,
        process: int,
        f: str,
        start: Time,
        end: Time | None,
        status: str = "ok",
        args: dict[str, Any] | None = None,
        result: dict[str, Any] | None = None,
    ) -> int:
        self._ids += 1
        invoke = {"type": "invoke", "id": self._ids, "process": process, "f": f, "time": start}
        self.lines.append({**invoke, **(args or {})})
        if end is not None:
            extra = {"error": "timeout"} if status == "info" else {}
            completion = {"type": status, "id": self._ids, "time": end}
            self.lines.append({**completion, **extra, **(result or {})})
        return self._ids

    def put(self, p: int, key: str, value: str, start: Time, end: Time | None, status="ok") -> int:
        return self.op(p, "put", start, end, status, {"key": key, "value": value})

    def get(self, p: int, key: str, value: str | None, start: Time, end: Time, status="ok") -> int:
        result = {"value": value} if status == "ok" else {}
        return self.op(p, "get", start, end, status, {"key": key}, result)

    def cas(
        self,
        p: int,
        key: str,
        expected: str | None,
        value: str,
        start: Time,
        end: Time | None,
        status: str = "ok",
        current: str | None = _NOT_GIVEN,
    ) -> int:
        result = {} if current is _NOT_GIVEN else {"current": current}
        args = {"key": key, "expected": expected, "value": value}
        return self.op(p, "cas", start, end, status, args, result)

    def delete(
        self, p: int, key: str, existed: bool | None, start: Time, end: Time | None, status="ok"
    ) -> int:
        result = {"existed": existed} if status == "ok" else {}
        return self.op(p, "delete", start, end, status, {"key": key}, result)

    def append(
        self,
        p: int,
        data: str,
        start: Time,
        end: Time | None,
        status: str = "ok",
        partition: int = 1,
        position: int | None = None,
    ) -> int:
        result = {"partition": partition, "position": position} if status == "ok" else {}
        return self.op(p, "append", start, end, status, {"data": data}, result)

    def read(
        self,
        p: int,
        partition: int,
        start_position: int,
        records: Records,
        start: Time,
        end: Time,
        next_position: int | None = None,
        at_end: bool = True,
    ) -> int:
        if next_position is None:
            next_position = records[-1][0] + 1 if records else start_position
        args = {"partition": partition, "from": start_position, "max": 100}
        result = {"records": [list(r) for r in records], "next": next_position, "end": at_end}
        return self.op(p, "read", start, end, "ok", args, result)

    def jsonl(self) -> list[str]:
        # in time order, as the runner writes; the sort is stable, so an invocation
        # stays before its own completion at the same time
        ordered = sorted(self.lines, key=lambda line: line["time"])
        return [json.dumps(line) for line in ordered]

    def ops(self) -> list[Op]:
        return load_history(self.jsonl()).ops


# --- the history format -----------------------------------------------------------------

HISTORY_TEXT = """\
{"type": "meta", "seed": 7, "time": 0.0}
{"type": "invoke", "id": 1, "process": 0, "f": "put", "key": "k", "value": "a", "time": 0.1}
{"type": "invoke", "id": 2, "process": 1, "f": "get", "key": "k", "time": 0.2}
{"type": "ok", "id": 1, "time": 0.3}

{"type": "nemesis", "action": "kill", "node": 2, "time": 0.35}
{"type": "ok", "id": 2, "value": "a", "time": 0.4}
{"type":"invoke","id":3,"process":0,"f":"cas","key":"k","expected":"x","value":"b","time":0.5}
{"type": "fail", "id": 3, "current": "a", "time": 0.6}
{"type": "invoke", "id": 4, "process": 1, "f": "delete", "key": "k", "time": 0.7}
{"type": "info", "id": 4, "error": "timeout", "time": 1.7}
{"type": "invoke", "id": 5, "process": 2, "f": "append", "data": "r1", "time": 1.8}
"""


def test_load_pairs_invocations_with_completions():
    history = load_history(HISTORY_TEXT.splitlines())
    assert [op.id for op in history.ops] == [1, 2, 3, 4, 5]
    put, get, cas, delete, append = history.ops
    assert (put.f, put.args, put.status, put.start, put.end) == (
        "put",
        {"key": "k", "value": "a"},
        "ok",
        0.1,
        0.3,
    )
    assert get.result == {"value": "a"} and get.process == 1
    assert (cas.status, cas.end, cas.result) == ("fail", 0.6, {"current": "a"})
    # indeterminate: no end, whatever time the info line carries
    assert (delete.status, delete.end, delete.result) == ("info", None, {"error": "timeout"})
    # never completed: indeterminate as well
    assert (append.status, append.end, append.result) == ("info", None, {"error": NO_COMPLETION})
    assert [e["type"] for e in history.events] == ["meta", "nemesis"]
    # already parsed records load the same
    parsed = load_history(json.loads(line) for line in HISTORY_TEXT.splitlines() if line)
    assert parsed == history
    assert "op 3 (process 0) cas(" in describe(cas) and "[0.5000, 0.6000]" in describe(cas)


def test_load_from_a_path(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text(HISTORY_TEXT, encoding="utf-8")
    assert len(load_history(path).ops) == len(load_history(str(path)).ops) == 5


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            [
                '{"type": "invoke", "id": 1, "process": 0, "f": "get", "key": "k", "time": 0}',
                "{oops",
            ],
            "line 2: not JSON",
        ),
        (
            ['{"type": "ok", "id": 9, "time": 1}'],
            "line 1: a completion without invocation for id 9",
        ),
        (
            [
                '{"type": "invoke", "id": 1, "process": 0, "f": "get", "time": 0}',
                '{"type": "invoke", "id": 1, "process": 1, "f": "get", "time": 1}',
            ],
            "line 2: duplicate operation id 1",
        ),
        (
            [
                '{"type": "invoke", "id": 1, "process": 0, "f": "get", "time": 0}',
                '{"type": "ok", "id": 1, "value": null, "time": 1}',
                '{"type": "ok", "id": 1, "value": null, "time": 2}',
            ],
            "line 3: a second completion",
        ),
        (["[1, 2]"], "line 1: not a JSON object"),
        (
            ['{"type": "invoke", "id": 1, "f": "get", "time": 0}'],
            "line 1: missing or invalid 'process'",
        ),
        (['{"id": 1}'], "line 1: no 'type'"),
    ],
)
def test_load_rejects_bad_lines(lines, message):
    with pytest.raises(ValueError, match=message):
        load_history(lines)


# --- linearizability of the keys ----------------------------------------------------------


def test_clean_concurrent_history_passes():
    h = Recording()
    h.put(0, "x", "a", 0.0, 1.0)
    h.get(1, "x", "a", 0.5, 1.5)  # overlaps the put, sees it: fine
    h.get(2, "x", None, 0.2, 0.6)  # overlaps the put, does not see it: fine too
    h.put(0, "x", "b", 2.0, 3.0)
    h.cas(1, "x", "b", "c", 2.5, 3.5)  # concurrent with the put, ordered after it
    h.get(2, "x", "c", 4.0, 4.5)
    h.delete(0, "x", True, 5.0, 6.0)
    h.delete(1, "x", False, 5.5, 6.5)  # concurrent deletes: one of them found it
    h.cas(2, "x", None, "d", 7.0, 7.5)  # expected absent
    h.get(0, "x", "d", 8.0, 8.1)
    h.put(1, "y", "e", 0.0, 1.0)  # another key, checked on its own
    h.get(2, "y", "e", 1.2, 1.3)
    report = check_kv(h.ops())
    assert report.ok, report.summary()
    assert (report.keys, report.ops, report.undecided) == (2, 12, [])


def test_stale_read_fails():
    h = Recording()
    h.put(0, "x", "old", 0.0, 1.0)
    h.put(0, "x", "new", 2.0, 3.0)
    stale = h.get(1, "x", "old", 4.0, 5.0)  # the new value was acknowledged before
    report = check_kv(h.ops())
    assert not report.ok
    assert list(report.violations) == ["x"]
    why = report.violations["x"]
    assert f"op {stale} " in why and "not linearizable" in why
    assert '"new"' in why  # the value the key held there


def test_lost_write_fails():
    h = Recording()
    h.put(0, "x", "a", 0.0, 1.0)
    h.put(1, "x", "b", 2.0, 3.0)  # acknowledged, nothing overwrites it
    h.get(0, "x", "a", 10.0, 10.5)  # the final read misses it
    assert "x" in check_kv(h.ops()).violations


def test_failed_cas_whose_expected_value_was_current_fails():
    h = Recording()
    h.put(0, "x", "a", 0.0, 1.0)
    h.cas(1, "x", "a", "b", 2.0, 3.0, status="fail", current="a")
    assert "x" in check_kv(h.ops()).violations


def test_failed_cas_without_current_was_refused_before_it_ran():
    # invalid, or never sent: not an observation, and it did not take effect
    h = Recording()
    h.put(0, "x", "a", 0.0, 1.0)
    h.cas(1, "x", "a", "b", 2.0, 3.0, status="fail")
    h.get(0, "x", "a", 4.0, 5.0)
    assert check_kv(h.ops()).ok


def test_failed_cas_is_a_legal_observation():
    h = Recording()
    h.put(0, "x", "a", 0.0, 1.0)
    h.cas(1, "x", "z", "b", 2.0, 3.0, status="fail", current="a")
    h.cas(1, "x", None, "b", 4.0, 5.0, status="fail", current="a")  # expected absent
    h.get(0, "x", "a", 6.0, 7.0)  # a refused cas changed nothing
    assert check_kv(h.ops()).ok


def test_info_write_that_later_shows_up_is_accepted():
    h = Recording()
    h.put(0, "x", "a", 0.0, 1.0)
    h.put(1, "x", "b", 2.0, 3.0, status="info")  # timed out...
    h.get(2, "x", "a", 4.0, 5.0)
    h.get(2, "x", "b", 30.0, 31.0)  # ...and took effect long after its info
    h.cas(0, "x", "b", "c", 40.0, None, status="info")  # cut short, took effect
    h.get(2, "x", "c", 50.0, 51.0)
    assert check_kv(h.ops()).ok


def test_info_write_that_never_shows_up_is_accepted():
    h = Recording()
    h.put(0, "x", "a", 0.0, 1.0)
    h.put(1, "x", "b", 2.0, 3.0, status="info")
    h.delete(1, "x", None, 3.5, None, status="info")
    h.cas(1, "x", "a", "c", 3.6, None, status="info")
    h.get(2, "x", "a", 4.0, 5.0)
    h.get(2, "x", "a", 30.0, 31.0)
    assert check_kv(h.ops()).ok


def test_info_write_cannot_take_effect_before_its_invocation():
    h = Recording()
    h.put(0, "x", "a", 0.0, 1.0)
    h.get(2, "x", "b", 2.0, 3.0)  # "b" is only invoked afterwards
    h.put(1, "x", "b", 4.0, 5.0, status="info")
    assert "x" in check_kv(h.ops()).violations


def test_failed_and_unanswered_operations_constrain_nothing():
    h = Recording()
    h.put(0, "x", "a", 0.0, 1.0)
    h.put(1, "x", "b", 2.0, 3.0, status="fail")  # definitely not applied
    h.delete(1, "x", None, 3.0, 3.5, status="fail")
    h.get(2, "x", None, 4.0, 5.0, status="fail")  # a read without answer saw nothing
    h.get(2, "x", None, 6.0, 7.0, status="info")
    h.get(0, "x", "a", 8.0, 9.0)
    assert check_kv(h.ops()).ok
    h.get(0, "x", "b", 10.0, 11.0)  # ...so the failed put must not show up
    assert "x" in check_kv(h.ops()).violations


def test_read_of_a_value_never_written_fails():
    h = Recording()
    h.put(0, "x", "a", 0.0, 1.0)
    bad = h.get(1, "x", "ghost", 2.0, 3.0)
    why = check_kv(h.ops()).violations["x"]
    assert f"op {bad} " in why and '"ghost"' in why and "no put or cas" in why


def test_delete_must_report_whether_the_key_existed():
    h = Recording()
    h.put(0, "x", "a", 0.0, 1.0)
    h.delete(1, "x", False, 2.0, 3.0)  # it did exist
    assert "x" in check_kv(h.ops()).violations
    h2 = Recording()
    h2.delete(1, "x", False, 0.0, 1.0)
    h2.put(0, "x", "a", 2.0, 3.0)
    h2.delete(1, "x", True, 4.0, 5.0)
    h2.get(0, "x", None, 6.0, 7.0)
    assert check_kv(h2.ops()).ok


def test_out_of_budget_key_is_undecided_not_passed():
    h = Recording()
    for i in range(40):  # 40 concurrent writes: far more orders than 50 steps can explore
        h.put(i, "x", f"v{i}", 0.0, 10.0)
    h.get(0, "x", "v7", 11.0, 12.0)
    h.put(0, "y", "a", 0.0, 1.0)  # a small key is still decided
    h.get(1, "y", "b", 2.0, 3.0)
    report = check_kv(h.ops(), budget=50)
    assert report.undecided == ["x"] and list(report.violations) == ["y"]
    assert not report.ok
    assert "undecided (search budget exhausted): x" in report.summary()


# --- generated histories: linearizable by construction --------------------------------------


@dataclass
class _Planned:
    process: int
    f: str
    key: str
    args: dict[str, Any]
    start: float
    end: float
    fate: str  # "ok": takes effect in its window; "fail": never; "info": maybe, any time later
    point: float | None = None  # when it took effect, None if it never did
    status: str = "ok"
    result: dict[str, Any] | None = None


def simulated_history(
    rng: random.Random,
    processes: int,
    ops_per_process: int,
    keys: list[str],
    info_writes: int,
    values: list[str] | None = None,
    cut_short: float = 0.5,
) -> Recording:
    """A history of registers simulated with a real clock: each operation takes
    effect at a random point of its window (an info one at any point after its
    invocation, or never), so the history is linearizable by construction.

    ``values``: draw written values from this list (repeats!) instead of unique ones.
    """
    planned: list[_Planned] = []
    written: list[str] = []
    fresh = iter(range(1_000_000))
    for process in range(processes):
        clock = rng.uniform(0.0, 1.0)
        for _ in range(ops_per_process):
            start, end = clock, clock + rng.uniform(0.05, 2.0)
            clock = end + rng.uniform(0.0, 0.2)
            key = rng.choice(keys)
            f = rng.choices(["put", "get", "cas", "delete"], weights=[4, 5, 3, 1])[0]
            value = rng.choice(values) if values else f"v{next(fresh)}"
            if f == "put":
                args = {"key": key, "value": value}
            elif f == "cas":
                recent = [*written[-4:], None]
                args = {"key": key, "expected": rng.choice(recent), "value": value}
            else:
                args = {"key": key}
            if f in ("put", "cas"):
                written.append(value)
            # a failed put or delete did not happen; a cas only fails by finding
            # another value, which the replay below decides
            fate = "fail" if f in ("put", "delete") and rng.random() < 0.05 else "ok"
            planned.append(_Planned(process, f, key, args, start, end, fate))
    writes = [p for p in planned if p.f != "get"]
    for chosen in rng.sample(writes, min(info_writes, len(writes))):
        chosen.fate = "info"
    for p in planned:
        if p.fate == "ok":
            p.point = rng.uniform(p.start, p.end)
        elif p.fate == "info" and rng.random() < 0.5:
            p.point = p.start + rng.uniform(0.0, 20.0)  # maybe long after it timed out

    # Replay in the order the operations took effect, through the register model.
    state: dict[str, str | None] = {}
    for p in sorted((p for p in planned if p.point is not None), key=lambda p: p.point):
        current = state.get(p.key)
        if p.f == "put":
            state[p.key] = p.args["value"]
            p.result = {}
        elif p.f == "get":
            p.result = {"value": current}
        elif p.f == "cas" and current == p.args["expected"]:
            state[p.key] = p.args["value"]
            p.result = {}
        elif p.f == "cas":
            p.status, p.result = "fail", {"current": current}  # a definite observation
        else:
            state[p.key] = None
            p.result = {"existed": current is not None}
    h = Recording()
    for p in sorted(planned, key=lambda p: p.start):
        if p.fate == "ok":
            h.op(p.process, p.f, p.start, p.end, p.status, p.args, p.result)
        elif p.fate == "fail":
            h.op(p.process, p.f, p.start, p.end, "fail", p.args)
        else:  # the client never learned the outcome; sometimes not even a line
            end = None if rng.random() < cut_short else p.end
            h.op(p.process, p.f, p.start, end, "info", p.args)
    return h


def test_generated_linearizable_histories_pass_and_their_corruptions_fail():
    rng = random.Random(20240515)
    corrupted = 0
    for _ in range(200):
        h = simulated_history(
            rng,
            processes=rng.randint(2, 6),
            ops_per_process=rng.randint(3, 12),
            keys=["a", "b", "c"][: rng.randint(1, 3)],
            info_writes=rng.randint(0, 4),
        )
        report = check_kv(h.ops())
        assert report.ok, report.summary() + "\n" + "\n".join(h.jsonl())
        # corrupt one observed value into one nobody wrote: must be caught
        gets = [line for line in h.lines if line["type"] == "ok" and "value" in line]
        if gets:
            rng.choice(gets)["value"] = "never-written"
            assert not check_kv(h.ops()).ok, "\n".join(h.jsonl())
            corrupted += 1
    assert corrupted > 150


def test_a_busy_key_with_info_writes_is_decided_within_the_default_budget():
    # 300 operations on one key by 10 processes always busy (about 10 concurrent at
    # any time), 10 of the writes indeterminate
    rng = random.Random(7)
    h = simulated_history(rng, processes=10, ops_per_process=30, keys=["hot"], info_writes=10)
    ops = h.ops()
    assert len(ops) == 300 and sum(op.status == "info" for op in ops) >= 10
    report = check_kv(ops, budget=DEFAULT_BUDGET)
    assert report.undecided == [] and report.ok, report.summary()
    # with room to spare: a fifth of the budget is enough
    assert check_kv(ops, budget=DEFAULT_BUDGET // 5).ok


# --- differential test against a brute-force oracle -----------------------------------------


def brute_force_linearizable(ops: list[Op]) -> bool:
    """The definition, searched naively: some order of the ok operations and the
    cas refused for finding another value, plus any subset of the indeterminate
    writes, that respects real time (a before b when a ended before b began) and
    the register model."""
    refused = [op for op in ops if op.f == "cas" and op.status == "fail" and "current" in op.result]
    required = [op for op in ops if op.status == "ok"] + refused
    optional = [op for op in ops if op.status == "info" and op.f != "get"]

    def step(op: Op, state: str | None) -> tuple[bool, str | None]:
        if op.f == "put":
            return True, op.args["value"]
        if op.f == "get":
            return state == op.result["value"], state
        if op.f == "delete":
            return op.status != "ok" or op.result["existed"] == (state is not None), None
        if op.status == "fail":
            return state != op.args["expected"] and state == op.result["current"], state
        if state == op.args["expected"]:
            return True, op.args["value"]
        return op.status == "info", state  # an indeterminate cas that found another value

    def search(left: list[Op], maybe: list[Op], state: str | None) -> bool:
        if not left:
            return True  # the remaining indeterminate writes never happened
        for op in left + maybe:
            if any(r.end < op.start for r in left if r is not op):
                continue  # something that had to come first is still waiting
            legal, after = step(op, state)
            if legal and search(
                [r for r in left if r is not op], [m for m in maybe if m is not op], after
            ):
                return True
        return False

    return search(required, optional, None)


def mutate(rng: random.Random, h: Recording) -> None:
    """Change one observed outcome: a get's value, a delete's `existed`, or a cas's
    verdict. Whether that breaks linearizability is for the oracle to say."""
    completions = {line["id"]: line for line in h.lines if line["type"] in ("ok", "fail")}
    invocations = {line["id"]: line for line in h.lines if line["type"] == "invoke"}
    candidates = [
        i
        for i, line in completions.items()
        if invocations[i]["f"] in ("get", "delete", "cas") and line["type"] != "info"
    ]
    if not candidates:
        return
    i = rng.choice(candidates)
    line, f = completions[i], invocations[i]["f"]
    if f == "get":
        written = [line["value"] for line in invocations.values() if "value" in line]
        line["value"] = rng.choice([*written, "a", None])
    elif f == "delete" and line["type"] == "ok":
        line["existed"] = not line["existed"]
    elif f == "cas" and line["type"] == "ok":
        written = [line["value"] for line in invocations.values() if "value" in line]
        line["type"], line["current"] = "fail", rng.choice([*written, None])
    elif f == "cas":
        line["type"] = "ok"
        line.pop("current", None)


def test_checker_agrees_with_brute_force_on_small_histories():
    # Half with repeated values (three of them): the checker may not rely on
    # uniqueness. Half with unique ones: most values are then never read, which
    # exercises the merging of unread values and of interchangeable info writes.
    rng = random.Random(99)
    verdicts = {True: 0, False: 0}
    for _ in range(600):
        h = simulated_history(
            rng,
            processes=rng.randint(2, 4),
            ops_per_process=rng.randint(2, 3),
            keys=["k"],
            info_writes=rng.randint(0, 4),
            values=["a", "b", "c"] if rng.random() < 0.5 else None,
        )
        if rng.random() < 0.7:
            mutate(rng, h)
        ops = h.ops()
        expected = brute_force_linearizable(ops)
        assert check_kv(ops).ok == expected, "\n".join(h.jsonl())
        verdicts[expected] += 1
    assert min(verdicts.values()) > 50  # both kinds of verdict are well exercised


# --- the record log --------------------------------------------------------------------------


def clean_log() -> tuple[Recording, FinalLogs]:
    """Two partitions, concurrent appends (one failed, one indeterminate that landed,
    one indeterminate that did not), a foreign record, reads, three replicas and two
    exporters, one of which re-exported after a leader change."""
    h = Recording()
    h.append(0, "r1", 0.0, 1.0, position=1)
    h.append(1, "r2", 0.5, 1.5, position=3)  # the foreign record took 2
    h.append(2, "r3", 2.0, 3.0, status="fail")
    h.append(2, "r4", 3.5, 4.0, status="info")  # landed at 4
    h.append(0, "r5", 3.6, None, status="info")  # never landed
    h.append(1, "q1", 1.0, 2.0, partition=2, position=1)
    h.read(3, 1, 1, [(1, "r1"), (2, "foreign")], 0.9, 1.2, at_end=False)  # cut by max
    h.read(3, 1, 1, [(1, "r1"), (2, "foreign"), (3, "r2")], 1.6, 1.8)
    h.read(3, 1, 3, [(3, "r2"), (4, "r4")], 5.0, 5.5)
    h.read(3, 2, 1, [(1, "q1")], 6.0, 6.5)
    log = {1: [(1, "r1"), (2, "foreign"), (3, "r2"), (4, "r4")], 2: [(1, "q1")]}
    full = {p: dict(records) for p, records in log.items()}
    final = FinalLogs(
        log=log,
        replicas={
            "broker-0": full,
            "broker-1": {1: {3: "r2", 4: "r4"}, 2: {1: "q1"}},  # compacted up to 2
            "broker-2": {1: full[1]},  # does not host partition 2: the runner leaves it out
        },
        exporters={
            "file": {1: list(log[1]), 2: list(log[2])},
            "http": {
                1: [(1, "r1"), (2, "foreign"), (3, "r2"), (2, "foreign"), (3, "r2"), (4, "r4")],
                2: [(1, "q1")],
            },
        },
    )
    return h, final


def test_a_hosted_replica_that_holds_nothing_fails():
    h, final = clean_log()
    final.replicas["broker-2"][2] = {}
    report = check_log(h.ops(), final)
    assert not report.ok
    assert any("broker-2 partition 2: holds none" in v for v in report.violations)


def test_clean_log_passes():
    h, final = clean_log()
    report = check_log(h.ops(), final)
    assert report.ok, report.summary()
    assert (report.appends_ok, report.appends_info, report.appends_fail, report.reads) == (
        3,
        2,
        1,
        4,
    )


def test_duplicate_append_fails():
    h, final = clean_log()
    final.log[2].append((2, "r1"))  # r1 again, in the other partition
    report = check_log(h.ops(), final)
    assert any(v.startswith("duplicate") and '"r1"' in v for v in report.violations), (
        report.summary()
    )


def test_failed_append_in_the_log_fails():
    h, final = clean_log()
    final.log[2].append((2, "r3"))
    report = check_log(h.ops(), final)
    assert any("failed append" in v and "op 3 " in v for v in report.violations), report.summary()


def test_append_at_another_position_fails():
    h, final = clean_log()
    final.log[1][0], final.log[1][2] = (1, "r2"), (3, "r1")
    final.replicas.clear()
    final.exporters.clear()
    report = check_log(h.ops(), final)
    assert any("wrong position" in v for v in report.violations), report.summary()


def test_acknowledged_append_missing_from_the_final_log_counts_as_lost():
    h = Recording()
    h.append(0, "r1", 0.0, 1.0, position=1)
    lost = h.append(1, "r2", 0.5, 1.5, position=2)
    report = check_log(h.ops(), FinalLogs(log={1: [(1, "r1")]}))
    assert report.lost == 1 and [op.id for op in report.lost_appends] == [lost]
    assert not report.ok and f"op {lost} " in report.summary()


def test_compacted_acknowledged_append_is_not_lost():
    h = Recording()
    h.append(0, "r1", 0.0, 1.0, position=1)
    h.append(0, "r2", 2.0, 3.0, position=2)
    final = FinalLogs(
        log={1: [(2, "r2")]},  # position 1 compacted away
        replicas={"broker-0": {1: {2: "r2"}}},
        exporters={"file": {1: [(1, "r1"), (2, "r2")]}, "late": {1: [(2, "r2")]}},
    )
    report = check_log(h.ops(), final)
    # the late exporter starts at the final log's first position, but lacks r1
    assert report.lost == 0
    assert report.violations == [
        f'exporter late partition 1: lacks acknowledged position 1 "r1": {describe(h.ops()[0])}'
    ]


def test_replicas_with_records_swapped_fail():
    h, final = clean_log()
    final.replicas["broker-1"][1] = {3: "r4", 4: "r2"}
    report = check_log(h.ops(), final)
    assert any(v.startswith("replica broker-1 partition 1: position 3") for v in report.violations)
    assert any(v.startswith("replica broker-1 partition 1: position 4") for v in report.violations)


def test_replica_with_a_gap_behind_or_beyond_fails():
    h, final = clean_log()
    final.replicas["broker-0"][1] = {1: "r1", 3: "r2"}
    final.replicas["broker-1"][2] = {1: "q1", 2: "uncommitted"}
    report = check_log(h.ops(), final)
    assert "replica broker-0 partition 1: gap, missing position(s) 2" in report.violations
    assert "replica broker-0 partition 1: behind, holds up to 3, the final log ends at 4" in (
        report.violations
    )
    assert any(
        v.startswith("replica broker-1 partition 2: holds position(s) 2 beyond")
        for v in report.violations
    )


def test_exporter_with_records_swapped_fails():
    h, final = clean_log()
    final.exporters["file"][1] = [(1, "r1"), (2, "foreign"), (3, "r4"), (4, "r2")]
    report = check_log(h.ops(), final)
    assert any(
        v.startswith("exporter file partition 1: line 3: exported") for v in report.violations
    )


def test_exporter_that_exports_out_of_order_fails():
    h, final = clean_log()
    final.exporters["file"][1] = [(1, "r1"), (3, "r2"), (2, "foreign"), (4, "r4")]
    report = check_log(h.ops(), final)
    assert "exporter file partition 1: line 2: skips from 1 to 3 (missing 2)" in report.violations


def test_exporter_gap_fails():
    h, final = clean_log()
    final.exporters["http"][1] = [(1, "r1"), (2, "foreign"), (4, "r4")]
    report = check_log(h.ops(), final)
    assert "exporter http partition 1: line 3: skips from 2 to 4 (missing 3)" in report.violations
    assert any("lacks acknowledged position 3" in v for v in report.violations)


def test_exporter_behind_or_starting_late_fails():
    h, final = clean_log()
    final.exporters["file"][1] = [(2, "foreign"), (3, "r2")]
    del final.exporters["http"][2]
    report = check_log(h.ops(), final)
    assert "exporter file partition 1: line 1: starts at position 2, not 1" in report.violations
    assert any(
        v.startswith("exporter file partition 1: behind, exported up to 3")
        for v in report.violations
    )
    assert any(
        v.startswith("exporter http partition 2: behind, exported up to 0")
        for v in report.violations
    )


def test_stale_log_read_fails():
    h, final = clean_log()
    # invoked after r2 (position 3) was acknowledged, claims the end is before it
    stale = h.read(3, 1, 1, [(1, "r1"), (2, "foreign")], 2.0, 2.2)
    report = check_log(h.ops(), final)
    assert any(v.startswith(f"read op {stale} ") and "stale read" in v for v in report.violations)


def test_future_log_read_fails():
    h = Recording()
    h.append(0, "r1", 0.0, 1.0, position=1)
    future = h.read(1, 1, 1, [(1, "r1"), (2, "r2")], 1.5, 2.0)
    h.append(0, "r2", 3.0, 4.0, position=2)  # invoked after the read had returned it
    report = check_log(h.ops(), FinalLogs(log={1: [(1, "r1"), (2, "r2")]}))
    assert any(v.startswith(f"read op {future} ") and "future read" in v for v in report.violations)


def test_read_that_disagrees_skips_or_miscounts_fails():
    h, final = clean_log()
    h.read(3, 1, 1, [(1, "r1"), (2, "r2")], 7.0, 7.5, at_end=False)  # r2 is at 3
    h.read(3, 1, 1, [(1, "r1"), (3, "r2")], 8.0, 8.5, at_end=False)  # 2 skipped
    h.read(3, 1, 2, [(3, "r2")], 9.0, 9.5, at_end=False)  # starts late
    h.read(3, 1, 1, [(1, "r1")], 10.0, 10.5, next_position=5, at_end=False)
    h.read(3, 2, 2, [(2, "q2")], 11.0, 11.5)  # the final log of partition 2 ends at 1
    text = "\n".join(check_log(h.ops(), final).violations)
    assert 'returned partition 1 position 2 "r2" (op 2), the final log holds "foreign"' in text
    assert "position 3 follows 1 (not contiguous)" in text
    assert "asked from position 2, the first returned is 3" in text
    assert "next is 5, expected 2" in text
    assert 'returned partition 2 position 2 "q2" (foreign) beyond the final log\'s end 1' in text


def test_final_log_with_a_gap_fails():
    h = Recording()
    h.append(0, "r1", 0.0, 1.0, position=1)
    report = check_log(h.ops(), FinalLogs(log={1: [(1, "r1"), (3, "other")]}))
    expected = 'final log partition 1: position 3 "other" (foreign) follows 1: a gap'
    assert report.violations == [expected]
