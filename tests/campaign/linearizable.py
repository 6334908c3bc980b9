"""Linearizability of the key-value operations: put, get, cas and delete.

The model is one register per key, holding a string or nothing (absent). A history
is linearizable when every operation can be given a point in time inside its window
(invocation to completion) such that replaying the operations in the order of those
points through the model reproduces every result the clients saw.

Keys are independent registers, so each key is checked on its own (linearizability
is compositional, Herlihy & Wing 1990): many small searches instead of one huge one.

The search is the Wing & Gong algorithm with Lowe's cache ("Testing for
linearizability", 2016; the porcupine checker does the same): walk the invocation
and completion events in time order as a doubly linked list; linearize a pending
operation by unlinking ("lifting") its two events; reaching a completion whose
operation is still unlinearized means the choices so far were wrong, so backtrack.
A configuration (set of linearized operations, register state) already explored is
never explored again, which turns an exponential search into a practical one.

Indeterminate writes are what makes such searches blow up (each may take effect at
any point after its invocation, or never), so three exact reductions keep them cheap:

- optional calls are tried only after every required candidate, and the cache
  treats a configuration as covered by one with a subset of its optional calls;
- written values that no operation ever compares the register against are merged
  into one state (they are indistinguishable to the model), which makes most
  indeterminate writes interchangeable: only the earliest of equal ones is tried;
- an optional call is never directly followed by an optional blind write, which
  would erase it (dropping it gives an equally valid linearization).

The randomized tests check all this against a brute-force search of the definition.

How each outcome constrains the register:

- ``ok``: took effect once, inside [start, end];
- ``info`` put, cas and delete: may have taken effect at any time after start, or
  never. They get no completion event, so nothing forces them in; reaching the end
  of the event list with only those left means the rest simply never happened;
- ``info``/``fail`` get, and ``fail`` put/delete: no constraint, dropped;
- ``fail`` cas with ``current``: the cas ran and found another value: an
  observation inside its window that the state is ``current``, not ``expected``;
- ``fail`` cas without ``current``: refused before it ran (never sent, invalid
  argument): no constraint, dropped.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from tests.campaign.history import Op, describe

KV_FUNCTIONS = frozenset({"put", "get", "cas", "delete"})

# Search steps (candidates tried, events passed, backtracks) allowed per key, about
# half a microsecond each. A key of 300 operations, ~10 of them concurrent at any
# time and 10 indeterminate writes, takes a few hundred thousand; the campaign's keys
# (about 120 operations, less contention) far fewer. Beyond this a key is undecided.
DEFAULT_BUDGET = 2_000_000

Value = str | None  # the register: a string, or None when the key is absent

# What linearizing one operation does to the register (the model's step function).
_SET = 0  # put: state := a
_READ = 1  # get: state must be a
_SWAP = 2  # applied cas: state must be a; state := b
_REFUSED = 3  # refused cas: state must differ from a, and be b
_DELETE = 4  # delete: state must be present iff a (unless a is None); state := absent


class _Unread:
    """The register state standing for every written value that no operation reads."""

    def __repr__(self) -> str:
        return "<unread>"


_UNREAD = _Unread()
_State = Value | _Unread  # the register as the search sees it


@dataclass
class KvReport:
    keys: int = 0  # keys checked
    ops: int = 0  # key-value operations in the history, any outcome
    violations: dict[str, str] = field(default_factory=dict)  # key -> explanation
    undecided: list[str] = field(default_factory=list)  # keys whose search ran out of budget

    @property
    def ok(self) -> bool:
        """Passed: no violation, and every key decided (undecided is never a pass)."""
        return not self.violations and not self.undecided

    def summary(self) -> str:
        lines = [
            f"key-value: {self.ops} operations on {self.keys} keys, "
            f"{len(self.violations)} not linearizable, {len(self.undecided)} undecided"
        ]
        lines += [f"key {_show(k)}: {why}" for k, why in sorted(self.violations.items())]
        if self.undecided:
            lines.append("undecided (search budget exhausted): " + ", ".join(self.undecided))
        return "\n".join(lines)


@dataclass
class _Call:
    """One constraining operation, reduced to what the search needs."""

    op: Op
    step: int  # one of _SET, _READ, _SWAP, _REFUSED, _DELETE
    a: object
    b: object
    start: float
    end: float | None  # None: optional (indeterminate), no deadline


def check_kv(ops: Iterable[Op], budget: int = DEFAULT_BUDGET) -> KvReport:
    """Check every key's operations (put, get, cas, delete) for linearizability.

    Other operations in ``ops`` are ignored. ``budget`` bounds the search steps per
    key; a key that exceeds it is reported ``undecided``, neither passed nor failed.
    """
    report = KvReport()
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if op.f in KV_FUNCTIONS:
            report.ops += 1
            by_key[_arg(op, "key")].append(op)
    report.keys = len(by_key)
    for key in sorted(by_key):
        try:
            explanation = _check_key(key, by_key[key], budget)
        except _OutOfBudget:
            report.undecided.append(key)
            continue
        if explanation is not None:
            report.violations[key] = explanation
    return report


class _OutOfBudget(Exception):
    """The search of one key took more steps than allowed: no verdict."""


def _check_key(key: str, ops: list[Op], budget: int) -> str | None:
    """None when the key's history is linearizable, else an explanation why not."""
    calls = [call for op in ops if (call := _constraint(op)) is not None]
    calls.sort(key=lambda c: c.start)
    impossible = _value_never_written(key, calls)
    if impossible is not None:
        return impossible
    calls, unread = _merge_unread_values(calls)
    return _Search(key, calls, budget, unread).run()


def _constraint(op: Op) -> _Call | None:
    """What ``op`` tells about its key's register, or None when it tells nothing."""
    required = op.status == "ok"
    end = op.end if required else None
    if op.f == "put":
        if op.status == "fail":
            return None  # definitely not applied
        return _Call(op, _SET, _arg(op, "value"), None, op.start, end)
    if op.f == "get":
        if not required:
            return None  # a read that did not answer observed nothing
        return _Call(op, _READ, _result(op, "value"), None, op.start, op.end)
    if op.f == "cas":
        expected = _arg(op, "expected")
        if op.status == "fail":
            if "current" not in op.result:
                return None  # refused before it was applied (never sent, invalid): no effect
            return _Call(op, _REFUSED, expected, op.result["current"], op.start, op.end)
        # ok: applied. info: applied or not; not applied changes nothing, which is
        # the same as leaving the optional call out, so only the applied case is modelled.
        return _Call(op, _SWAP, expected, _arg(op, "value"), op.start, end)
    if op.f == "delete":
        if op.status == "fail":
            return None
        existed = _result(op, "existed") if required else None
        return _Call(op, _DELETE, existed, None, op.start, end)
    raise AssertionError(op.f)


def _value_never_written(key: str, calls: list[_Call]) -> str | None:
    """A cheap, exact shortcut: an observed value no put or cas ever wrote.

    It is also the clearest explanation for the commonest corruption, and it saves
    a search that would have to exhaust every ordering before giving up.
    """
    written = {c.a if c.step == _SET else c.b for c in calls if c.step in (_SET, _SWAP)}
    for c in calls:
        if c.step == _READ or (c.step == _SWAP and c.end is not None):
            seen = c.a
        elif c.step == _REFUSED:
            seen = c.b
        else:
            continue
        if seen is not None and seen not in written:
            never = f"which no put or cas of {_show(key)} wrote"
            return f"{describe(c.op)} observed {_show(seen)}, {never}"
    return None


def _merge_unread_values(calls: list[_Call]) -> tuple[list[_Call], list[Value]]:
    """Replace every written value that no operation compares the register against
    by the single state _UNREAD; return the calls and the values so replaced.

    Exact, not a heuristic: the model only ever tests the state for equality with a
    read, expected or current value, or for presence, and all those tests give the
    same answer for any two values outside that set. Merging them shrinks the cache
    keys, and makes indeterminate writes of such values interchangeable (see
    ``_Search``), which they typically are: an indeterminate write nobody read.
    """
    compared: set[object] = set()
    for c in calls:
        if c.step in (_READ, _SWAP, _REFUSED):
            compared.add(c.a)
        if c.step == _REFUSED:
            compared.add(c.b)
    merged, unread = [], []
    for c in calls:
        if c.step == _SET and c.a not in compared:
            unread.append(c.a)
            c = replace(c, a=_UNREAD)
        elif c.step == _SWAP and c.b not in compared:
            unread.append(c.b)
            c = replace(c, b=_UNREAD)
        merged.append(c)
    return merged, unread


class _Search:
    """The just-in-time linearization search for one key (Wing & Gong, Lowe's cache).

    Required calls (with a completion) live in the time-ordered event list. Optional
    calls (indeterminate, no completion) are kept aside and tried only after every
    required candidate of a configuration: they are candidates from their
    invocation on, forever, and trying them first would explore every configuration
    once with and once without them. Tried last, the configuration without them is
    usually explored first and the cache (see ``run``) prunes the one with them.
    """

    def __init__(self, key: str, calls: list[_Call], budget: int, unread: list[Value]):
        self.key = key
        self.calls = calls
        self.budget = budget
        self.unread = unread
        required = [i for i, c in enumerate(calls) if c.end is not None]
        self.optional = [i for i, c in enumerate(calls) if c.end is None]  # by start
        # Optional calls with the same effect are interchangeable once invoked (no
        # deadline either): only the earliest not yet placed is ever tried, so the
        # placed ones of each kind are always the earliest. twin_before[k]: the
        # previous optional call with the same effect as the k-th, or -1.
        self.twin_before: list[int] = []
        last_of_effect: dict[tuple[int, object, object], int] = {}
        for k, i in enumerate(self.optional):
            effect = (calls[i].step, calls[i].a, calls[i].b)
            self.twin_before.append(last_of_effect.get(effect, -1))
            last_of_effect[effect] = k
        # The event list: a call event at start and a completion event at end of each
        # required call. At equal times a call sorts before a completion, so two
        # operations that merely touch count as concurrent: the clocks cannot tell.
        events = [(calls[i].start, 0, i) for i in required]
        events += [(calls[i].end, 1, i) for i in required]
        events.sort()
        # Nodes 1..len(events) in time order; 0 is the head, len + 1 the end sentinel.
        self.end_node = len(events) + 1
        self.next = [*range(1, self.end_node + 1), self.end_node]
        self.prev = [0, *range(0, self.end_node)]
        self.node_call = [-1, *(i for _, _, i in events), -1]
        self.node_time = [0.0, *(t for t, _, _ in events), 0.0]
        self.is_call = [False, *(kind == 0 for _, kind, _ in events), False]
        self.completion_node = [0] * len(calls)
        for node, (_, kind, i) in enumerate(events, start=1):
            if kind == 1:
                self.completion_node[i] = node
        self.required_mask = sum(1 << i for i in required)
        self.optional_mask = sum(1 << i for i in self.optional)
        # For the explanation: the deepest point reached, by required calls linearized.
        self.best_depth = -1
        self.best_prefix: list[int] = []
        self.best_states: set[_State] = set()
        self.best_blocked: set[int] = set()
        self.steps = 0  # search steps taken (calls tried and backtracks)

    def _lift(self, node: int) -> None:
        """Unlink a required call and its completion: the operation is linearized."""
        nxt, prv = self.next, self.prev
        nxt[prv[node]] = nxt[node]
        prv[nxt[node]] = prv[node]
        done = self.completion_node[self.node_call[node]]
        nxt[prv[done]] = nxt[done]
        prv[nxt[done]] = prv[done]

    def _unlift(self, node: int) -> None:
        """Relink in the reverse order of _lift (dancing links)."""
        nxt, prv = self.next, self.prev
        done = self.completion_node[self.node_call[node]]
        nxt[prv[done]] = done
        prv[nxt[done]] = done
        nxt[prv[node]] = node
        prv[nxt[node]] = node

    def run(self) -> str | None:
        """None when a linearization exists, else an explanation; may raise _OutOfBudget."""
        calls, nxt, node_call, is_call = self.calls, self.next, self.node_call, self.is_call
        optional_calls, twin_before = self.optional, self.twin_before
        optional_start = [calls[i].start for i in optional_calls]
        steps_of = [c.step for c in calls]
        a_of = [c.a for c in calls]
        b_of = [c.b for c in calls]
        required_mask, optional_mask = self.required_mask, self.optional_mask
        end_node, budget = self.end_node, self.budget
        # An optional call right before an optional blind write (a put, or a delete
        # whose answer is unknown) is pointless: the write erases its effect, and
        # leaving it out gives a linearization as valid. So after an optional call
        # the search is "restricted": no optional blind write may follow. Without
        # this, each dead end would try every chain of indeterminate puts.
        blind = [
            c.end is None and (c.step == _SET or (c.step == _DELETE and c.a is None)) for c in calls
        ]
        restricted_bit = 1 << len(calls)
        # Lowe's cache: (required calls linearized, state) -> the sets of optional calls
        # linearized with them already explored (plus the restricted bit). Optional
        # calls have no deadline, so leaving one out never loses a future, and an
        # unrestricted configuration has every future of a restricted one: a
        # configuration is redundant when one with the same required set and state,
        # a subset of its optional calls and a subset of its restriction was seen.
        explored: dict[tuple[int, _State], list[int]] = {}

        def linearize(i: int, state: _State, linearized: int) -> tuple[bool, _State, int]:
            """Apply call i to the register; False if illegal or already explored."""
            step, a = steps_of[i], a_of[i]
            if step == _SET:
                legal, after = True, a
            elif step == _READ:
                legal, after = state == a, state
            elif step == _SWAP:
                legal, after = state == a, b_of[i]
            elif step == _REFUSED:
                b = b_of[i]
                legal, after = state != a and state == b, state
            else:  # _DELETE
                legal, after = a is None or a == (state is not None), None
            if not legal:
                return False, state, linearized
            grown = linearized | (1 << i)
            optional = grown & optional_mask
            if optional_mask >> i & 1:
                optional |= restricted_bit
            cache_key = (grown & required_mask, after)
            seen = explored.get(cache_key)
            if seen is None:
                explored[cache_key] = [optional]
            elif all(earlier & ~optional for earlier in seen):
                seen.append(optional)
            else:
                return False, state, linearized
            return True, after, grown

        state: _State = None  # every key starts absent
        linearized = 0  # bitset of linearized calls
        # Each frame: (position, state before, linearized before, deadline node). The
        # position is a node of the event list for a required call, or -1 - k for the
        # k-th optional call, tried while the completion at the deadline node waited.
        stack: list[tuple[int, _State, int, int]] = []
        node = nxt[0]  # scanning the event list for required candidates...
        k = -1  # ...or, when >= 0, the optional calls from the k-th on
        deadline = 0  # the completion that ended the scan
        node_time = self.node_time
        steps = 0
        while True:
            steps += 1
            if steps > budget:
                self.steps = steps
                raise _OutOfBudget
            if k < 0:
                if node == end_node:
                    self.steps = steps
                    return None  # every required call placed; optional ones left never happened
                if is_call[node]:
                    legal, after, grown = linearize(node_call[node], state, linearized)
                    if legal:
                        stack.append((node, state, linearized, 0))
                        state, linearized = after, grown
                        self._lift(node)
                        self._note_progress(stack, linearized, state)
                        node = nxt[0]
                    else:
                        node = nxt[node]
                    continue
                # The completion of a required call not yet placed: nothing later can go
                # first. Before giving up here, try the optional calls invoked by then.
                deadline, k = node, 0
                continue
            if k < len(optional_calls) and optional_start[k] <= node_time[deadline]:
                i, twin = optional_calls[k], twin_before[k]
                restricted = stack and stack[-1][0] < 0  # the last call placed is optional
                if (
                    not linearized >> i & 1
                    and not (restricted and blind[i])
                    and (twin < 0 or linearized >> optional_calls[twin] & 1)
                ):
                    legal, after, grown = linearize(i, state, linearized)
                    if legal:
                        stack.append((-1 - k, state, linearized, deadline))
                        state, linearized = after, grown
                        self._note_progress(stack, linearized, state)
                        node, k = nxt[0], -1
                        continue
                k += 1
                continue
            # Every candidate of this configuration failed: backtrack.
            self._note_dead_end(stack, linearized, state, node_call[deadline])
            if not stack:
                self.steps = steps
                return self._explain()
            position, state, linearized, deadline = stack.pop()
            if position > 0:
                self._unlift(position)
                node, k = nxt[position], -1
            else:
                k = -position  # the optional call after the one undone

    def _call_of(self, position: int) -> int:
        return self.node_call[position] if position > 0 else self.optional[-1 - position]

    def _note_progress(
        self, stack: list[tuple[int, _State, int, int]], linearized: int, state: _State
    ):
        depth = (linearized & self.required_mask).bit_count()
        if depth > self.best_depth:
            self.best_depth = depth
            self.best_prefix = [self._call_of(position) for position, _, _, _ in stack]
            self.best_states = {state}
            self.best_blocked = set()

    def _note_dead_end(
        self, stack: list[tuple[int, _State, int, int]], linearized: int, state: _State, i: int
    ):
        depth = (linearized & self.required_mask).bit_count()
        if depth > self.best_depth:  # only at the very start: nothing linearized yet
            self._note_progress(stack, linearized, state)
        if depth == self.best_depth:
            self.best_states.add(state)
            self.best_blocked.add(i)

    def _show_state(self, state: _State) -> str:
        if state is not _UNREAD:
            return _show(state)
        if len(self.unread) == 1:
            return _show(self.unread[0])
        examples = ", ".join(_show(v) for v in self.unread[:3])
        more = ", ..." if len(self.unread) > 3 else ""
        return f"a value no operation read ({examples}{more})"

    def _explain(self) -> str:
        required = self.required_mask.bit_count()
        lines = [
            f"not linearizable: at most {self.best_depth} of the {required} completed "
            f"operations on {_show(self.key)} can be put in a valid order"
        ]
        if self.best_prefix:
            shown = self.best_prefix[-5:]
            skipped = len(self.best_prefix) - len(shown)
            lines.append(
                "  longest valid order found ends with"
                + (f" (after {skipped} earlier operations):" if skipped else ":")
            )
            lines += [f"    {describe(self.calls[i].op)}" for i in shown]
        else:
            lines.append("  no operation can come first")
        states = sorted(self._show_state(s) for s in self.best_states)
        lines.append(f"  possible value(s) there: {', '.join(states[:5])}")
        blocked = sorted(self.best_blocked, key=lambda i: self.calls[i].end or 0.0)
        lines.append("  from there, no valid order lets this take effect before it completed:")
        lines += [f"    {describe(self.calls[i].op)}" for i in blocked[:3]]
        if len(blocked) > 3:
            lines.append(f"    ... and {len(blocked) - 3} more")
        return "\n".join(lines)


def _arg(op: Op, name: str) -> object:
    if name not in op.args:
        raise ValueError(f"{describe(op)}: no {name!r} argument")
    return op.args[name]


def _result(op: Op, name: str) -> object:
    if name not in op.result:
        raise ValueError(f"{describe(op)}: no {name!r} in the result")
    return op.result[name]


def _show(value: object) -> str:
    return "absent" if value is None else json.dumps(value)
