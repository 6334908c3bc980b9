"""The history of a campaign run: what the clients asked for and what they were told.

The runner writes one JSON object per line. An ``invoke`` line opens an operation;
a completion line with the same ``id`` closes it:

- ``ok``: the operation took effect, and the line carries its result;
- ``fail``: it definitely did not take effect (a refused ``cas`` is still an
  observation of the value it found);
- ``info``: indeterminate; it may take effect at any time after its invocation,
  or never. An invocation that never completes (the run was cut short) is the same.

Any other ``type`` (``nemesis``, ``meta``, ``final``, ...) is not an operation: it
is kept aside in ``History.events`` for whoever wants to show it next to a verdict.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["ok", "fail", "info"]
COMPLETIONS: frozenset[str] = frozenset({"ok", "fail", "info"})

# Fields of a line that frame the operation rather than being its arguments or result.
_FRAME_FIELDS = frozenset({"type", "id", "process", "f", "time"})

# Result of an invocation that has no completion line at all.
NO_COMPLETION = "no completion (history cut short)"


@dataclass
class Op:
    """One operation, its invocation paired with its completion."""

    id: int
    process: int
    f: str
    args: dict[str, Any]
    start: float
    end: float | None  # None when indeterminate: it may take effect at any time after start
    status: Status
    result: dict[str, Any] = field(default_factory=dict)


@dataclass
class History:
    ops: list[Op]  # in invocation order
    events: list[dict[str, Any]]  # the lines that are not operations, in file order


def load_history(source: str | os.PathLike[str] | Iterable[str | Mapping[str, Any]]) -> History:
    """Pair invocations with completions.

    ``source`` is a path to a JSON-lines file, or an iterable of lines (text) or of
    already parsed records (dicts). Blank lines are skipped. A malformed line (not
    JSON, not an object, missing fields, a completion without invocation, a
    duplicate id) raises ValueError naming its line number.
    """
    if isinstance(source, str | os.PathLike):
        with open(source, encoding="utf-8") as lines:
            return _pair(lines)
    return _pair(source)


def _pair(lines: Iterable[str | Mapping[str, Any]]) -> History:
    ops: list[Op] = []
    events: list[dict[str, Any]] = []
    open_ops: dict[int, Op] = {}  # invoked, not yet completed
    closed_ids: set[int] = set()
    for number, line in enumerate(lines, start=1):
        record = _parse_line(number, line)
        if record is None:
            continue
        kind = record.get("type")
        if kind == "invoke":
            op = _invocation(number, record)
            if op.id in open_ops or op.id in closed_ids:
                raise ValueError(f"line {number}: duplicate operation id {op.id}")
            open_ops[op.id] = op
            ops.append(op)
        elif kind in COMPLETIONS:
            op_id = _require(number, record, "id", int)
            op = open_ops.pop(op_id, None)
            if op is None:
                why = "a second completion" if op_id in closed_ids else "a completion without"
                raise ValueError(f"line {number}: {why} invocation for id {op_id}")
            closed_ids.add(op_id)
            _complete(number, op, kind, record)
        elif isinstance(kind, str):
            events.append(record)
        else:
            raise ValueError(f"line {number}: no 'type' string in {_clip(record)}")
    # Invocations left open were cut short: they may or may not have happened.
    for op in open_ops.values():
        op.result = {"error": NO_COMPLETION}
    return History(ops=ops, events=events)


def _parse_line(number: int, line: str | Mapping[str, Any]) -> dict[str, Any] | None:
    if isinstance(line, Mapping):
        return dict(line)
    text = line.strip()
    if not text:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"line {number}: not JSON ({exc.msg}): {text[:80]}") from None
    if not isinstance(record, dict):
        raise ValueError(f"line {number}: not a JSON object: {text[:80]}")
    return record


def _invocation(number: int, record: dict[str, Any]) -> Op:
    args = {k: v for k, v in record.items() if k not in _FRAME_FIELDS}
    return Op(
        id=_require(number, record, "id", int),
        process=_require(number, record, "process", int | str),
        f=_require(number, record, "f", str),
        args=args,
        start=float(_require(number, record, "time", int | float)),
        end=None,
        status="info",  # until a completion says otherwise
    )


def _complete(number: int, op: Op, status: Status, record: dict[str, Any]) -> None:
    time = float(_require(number, record, "time", int | float))
    if time < op.start:
        raise ValueError(f"line {number}: id {op.id} completes at {time} before its invocation")
    op.status = status
    # An indeterminate operation has no end: it may still take effect later.
    op.end = None if status == "info" else time
    op.result = {k: v for k, v in record.items() if k not in _FRAME_FIELDS}


def _require(number: int, record: dict[str, Any], name: str, kind: Any) -> Any:
    value = record.get(name)
    # bool is an int in Python, but never a valid id, process or time
    if value is None or isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"line {number}: missing or invalid {name!r} in {_clip(record)}")
    return value


def _clip(record: Mapping[str, Any], limit: int = 120) -> str:
    text = json.dumps(record, separators=(",", ":"), default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(op: Op) -> str:
    """One readable line: id, process, call, outcome and time window of an operation."""
    call = ", ".join(f"{k}={_clip_value(v)}" for k, v in op.args.items())
    outcome = " ".join(f"{k}={_clip_value(v)}" for k, v in op.result.items())
    end = "?" if op.end is None else f"{op.end:.4f}"
    tail = f" {outcome}" if outcome else ""
    window = f"[{op.start:.4f}, {end}]"
    return f"op {op.id} (process {op.process}) {op.f}({call}) -> {op.status}{tail} {window}"


def _clip_value(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."
