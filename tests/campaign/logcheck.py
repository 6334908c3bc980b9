"""The record log: appends, reads of the log, and the logs left on every replica and
in every exporter's output once the run has settled.

The committed log read through the gateway at the end (``FinalLogs.log``) is the
reference; everything else is judged against it:

- appends: an acknowledged append is in the final log exactly once, at the position
  it was told; a failed one never is; an indeterminate one at most once;
- reads: agree with the final log, are contiguous, and when they claim to have
  reached the end, include every append acknowledged before they began and no
  append begun after they ended;
- replicas: hold the final log's records in the same order, with no gap, not
  behind it and not beyond it;
- exporters: export every record at its position, in order, possibly several times
  (at-least-once after a leader change), never skipping one.

Records whose data no append of the history wrote are foreign (other tools wrote
them): they take up positions and must agree everywhere like any other record, but
are not counted.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import pairwise

from tests.campaign.history import Op, describe

# Detailed messages per replica / exporter / read before the rest is only counted:
# a replica shifted by one disagrees at every position, and one line says enough.
MAX_DETAILS = 10

Record = tuple[int, str]  # (position, data)


@dataclass
class FinalLogs:
    """The state of the logs after the run, once everything has settled."""

    # partition -> the committed log read through the gateway, ascending positions;
    # it may start after 1 (compaction) but has no gaps
    log: dict[int, list[Record]] = field(default_factory=dict)
    # replica name -> partition -> {position: data}, read from that replica's disk
    replicas: dict[str, dict[int, dict[int, str]]] = field(default_factory=dict)
    # exporter name -> partition -> (position, data) lines in file order
    exporters: dict[str, dict[int, list[Record]]] = field(default_factory=dict)


@dataclass
class LogReport:
    appends_ok: int = 0
    appends_info: int = 0
    appends_fail: int = 0
    reads: int = 0  # ok reads checked
    violations: list[str] = field(default_factory=list)
    lost_appends: list[Op] = field(default_factory=list)  # missing from the final log

    @property
    def lost(self) -> int:
        return len(self.lost_appends)

    @property
    def ok(self) -> bool:
        """No violation and no acknowledged append lost."""
        return not self.violations and not self.lost

    def summary(self) -> str:
        lines = [
            f"log: {self.appends_ok} appends ok, {self.appends_info} indeterminate, "
            f"{self.appends_fail} failed, {self.reads} reads; {self.lost} lost, "
            f"{len(self.violations)} violations"
        ]
        lines += [f"lost: {describe(op)}" for op in self.lost_appends]
        lines += self.violations
        return "\n".join(lines)


def check_log(ops: Iterable[Op], final: FinalLogs) -> LogReport:
    """Check the appends and reads of ``ops`` (other operations are ignored) against
    the final logs of the gateway, the replicas and the exporters."""
    return _LogChecker(list(ops), final).run()


@dataclass
class _Partition:
    """The final log of one partition, indexed."""

    records: list[Record]
    by_position: dict[int, str]
    first: int  # first retained position; 1 when empty
    last: int  # last committed position; 0 when empty


class _LogChecker:
    def __init__(self, ops: list[Op], final: FinalLogs):
        self.final = final
        self.report = LogReport()
        self.appends = [op for op in ops if op.f == "append"]
        self.reads = [op for op in ops if op.f == "read" and op.status == "ok"]
        self.append_of: dict[str, Op] = {}  # data -> the append that wrote it
        for op in self.appends:
            data = _field(op, op.args, "data")
            if data in self.append_of:
                raise ValueError(f"{describe(op)}: data {data!r} is not unique in the history")
            self.append_of[data] = op
        self.partitions = {p: _index(records) for p, records in final.log.items()}
        # data of the history -> every (partition, position) where the final log holds it
        self.found: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for p, part in self.partitions.items():
            for position, data in part.records:
                if data in self.append_of:
                    self.found[data].append((p, position))
        # Where each append is known to be: acknowledged position, or else where the
        # final log holds it (an indeterminate append that did happen).
        self.placed: dict[int, tuple[int, int]] = {}  # op id -> (partition, position)
        # Acknowledged records below the final log's first position (compacted away):
        # the acknowledgement is then the only reference for those positions.
        self.compacted: dict[int, dict[int, str]] = defaultdict(dict)

    def run(self) -> LogReport:
        self._check_final_log_contiguous()
        self._check_appends()
        for op in self.reads:
            self._check_read(op)
        for name, partitions in sorted(self.final.replicas.items()):
            for p, held in sorted(partitions.items()):
                self._check_replica(name, p, held)
        for name, partitions in sorted(self.final.exporters.items()):
            # every partition with committed records must be exported, even if the
            # exporter's output has no line of it at all
            wanted = {p for p, part in self.partitions.items() if part.records} | set(partitions)
            for p in sorted(wanted):
                self._check_exporter(name, p, partitions.get(p, []))
        return self.report

    # --- helpers -------------------------------------------------------------------

    def _violation(self, text: str) -> None:
        self.report.violations.append(text)

    def _reference(self, p: int, position: int) -> str | None:
        """The data known to be at a position: the final log's, else an acknowledged
        append's when compaction removed it from the final log; None when unknown."""
        part = self.partitions.get(p)
        if part is not None and position in part.by_position:
            return part.by_position[position]
        return self.compacted.get(p, {}).get(position)

    def _origin(self, data: str) -> str:
        op = self.append_of.get(data)
        return f"op {op.id}" if op is not None else "foreign"

    def _record(self, p: int, position: int, data: str) -> str:
        return f"partition {p} position {position} {json.dumps(data)} ({self._origin(data)})"

    def _emit_capped(self, prefix: str, problems: list[str]) -> None:
        for problem in problems[:MAX_DETAILS]:
            self._violation(f"{prefix}: {problem}")
        if len(problems) > MAX_DETAILS:
            self._violation(f"{prefix}: ... and {len(problems) - MAX_DETAILS} more like these")

    # --- the final log -------------------------------------------------------------

    def _check_final_log_contiguous(self) -> None:
        for p, part in sorted(self.partitions.items()):
            problems = []
            for (before, _), (position, data) in pairwise(part.records):
                if position != before + 1:
                    gap = "a gap" if position > before + 1 else "out of order"
                    record = f"{json.dumps(data)} ({self._origin(data)})"
                    problems.append(f"position {position} {record} follows {before}: {gap}")
            self._emit_capped(f"final log partition {p}", problems)

    # --- appends -------------------------------------------------------------------

    def _check_appends(self) -> None:
        for op in self.appends:
            data = op.args["data"]
            found = self.found.get(data, [])
            where = ", ".join(f"partition {p} position {pos}" for p, pos in found)
            if len(found) > 1:
                self._violation(f"duplicate: {json.dumps(data)} ({describe(op)}) is at {where}")
            if op.status == "ok":
                self.report.appends_ok += 1
                self._check_acknowledged(op, data, found, where)
            elif op.status == "info":
                self.report.appends_info += 1
                self._check_partition_argument(op, found)
                if found:
                    self.placed[op.id] = found[0]
            else:
                self.report.appends_fail += 1
                if found:
                    self._violation(f"failed append is in the final log at {where}: {describe(op)}")

    def _check_acknowledged(self, op: Op, data: str, found: list[tuple[int, int]], where: str):
        p = _field(op, op.result, "partition")
        position = _field(op, op.result, "position")
        self.placed[op.id] = (p, position)
        requested = op.args.get("partition")
        if requested is not None and requested != p:
            self._violation(f"appended to partition {p}, not the requested one: {describe(op)}")
        part = self.partitions.get(p)
        if part is not None and part.records and position < part.first:
            # compacted: the final log cannot confirm it, the acknowledgement is all
            # there is (replicas and exporters are checked against it)
            self.compacted[p][position] = data
            if found:
                self._violation(
                    f"acknowledged at compacted position {position} of partition {p}, "
                    f"but the final log holds it at {where}: {describe(op)}"
                )
            return
        if not found:
            self.report.lost_appends.append(op)
        elif (p, position) not in found:
            self._violation(
                f"wrong position: acknowledged at partition {p} position {position}, "
                f"the final log holds it at {where}: {describe(op)}"
            )

    def _check_partition_argument(self, op: Op, found: list[tuple[int, int]]) -> None:
        requested = op.args.get("partition")
        for p, position in found:
            if requested is not None and p != requested:
                self._violation(
                    f"indeterminate append landed in partition {p} position {position}, "
                    f"not in the requested partition {requested}: {describe(op)}"
                )

    # --- reads ---------------------------------------------------------------------

    def _check_read(self, op: Op) -> None:
        self.report.reads += 1
        p = _field(op, op.args, "partition")
        start = _field(op, op.args, "from")
        records = [(int(pos), str(data)) for pos, data in _field(op, op.result, "records")]
        next_position = _field(op, op.result, "next")
        reached_end = bool(_field(op, op.result, "end"))
        part = self.partitions.get(p)
        problems: list[str] = []

        # agreement with the final log, and no failed append observed
        for position, data in records:
            reference = self._reference(p, position)
            if part is not None and position > part.last:
                # served as committed, so it cannot be missing once everything settled
                problems.append(
                    f"returned {self._record(p, position, data)} beyond the final log's "
                    f"end {part.last}: the final log lost it, or the read saw an uncommitted one"
                )
            elif reference is not None and reference != data:
                problems.append(
                    f"returned {self._record(p, position, data)}, the final log holds "
                    f"{json.dumps(reference)} ({self._origin(reference)}) there"
                )
            writer = self.append_of.get(data)
            if writer is not None and writer.status == "fail":
                problems.append(f"returned the data of a failed append: {describe(writer)}")

        # contiguity from `from`; a later first position only if compaction may have
        # removed the positions in between (they are below the final log's first)
        if records:
            first = records[0][0]
            first_retained = part.first if part is not None else 1
            if first < start or (first > start and first > first_retained):
                problems.append(f"asked from position {start}, the first returned is {first}")
            for (before, _), (position, _) in pairwise(records):
                if position != before + 1:
                    problems.append(f"position {position} follows {before} (not contiguous)")
            expected_next = records[-1][0] + 1
        else:
            expected_next = start
        if next_position != expected_next:
            problems.append(f"next is {next_position}, expected {expected_next}")

        if reached_end:
            problems += self._stale_or_future(op, p, start, next_position, records)
        self._emit_capped(f"read {describe(op)}", problems)

    def _stale_or_future(
        self, read: Op, p: int, start: int, next_position: int, records: list[Record]
    ) -> list[str]:
        """A read that reached the end of the committed log must cover every append
        acknowledged before it began, and nothing appended after it ended."""
        assert read.end is not None
        problems = []
        future: set[int] = set()
        for op in self.appends:
            where = self.placed.get(op.id)
            if where is None or where[0] != p:
                continue
            position = where[1]
            if (
                op.status == "ok"
                and op.end is not None
                and op.end < read.start
                and start <= position
                and position >= next_position
            ):
                problems.append(
                    f"stale read: ended at {next_position} but position {position} was "
                    f"acknowledged before it began: {describe(op)}"
                )
            if op.start > read.end and position < next_position:
                future.add(op.id)
                problems.append(
                    f"future read: covers position {position} of an append invoked after "
                    f"it completed: {describe(op)}"
                )
        # data of a later append returned at an unplaced (e.g. compacted) position
        for position, data in records:
            op = self.append_of.get(data)
            if op is not None and op.id not in future and op.start > read.end:
                future.add(op.id)
                problems.append(
                    f"future read: returned position {position} {json.dumps(data)} of an "
                    f"append invoked after it completed: {describe(op)}"
                )
        return problems

    # --- replicas ------------------------------------------------------------------

    def _check_replica(self, name: str, p: int, held: dict[int, str]) -> None:
        prefix = f"replica {name} partition {p}"
        part = self.partitions.get(p)
        if part is None:
            if held:
                self._violation(
                    f"{prefix}: holds {len(held)} records of a partition absent from the final log"
                )
            return
        problems = []
        for position in sorted(held):
            data = held[position]
            if position > part.last:
                continue  # reported below, as one range
            reference = self._reference(p, position)
            if reference is not None and reference != data:
                problems.append(
                    f"position {position} holds {json.dumps(data)} ({self._origin(data)}), the "
                    f"final log {json.dumps(reference)} ({self._origin(reference)})"
                )
        self._emit_capped(prefix, problems)
        if not held:
            # the runner leaves out partitions a broker does not host and replicas whose
            # records all went into a snapshot: an empty one here lost its records
            if part.last:
                self._violation(f"{prefix}: holds none of the final log's records")
            return
        first, last = min(held), max(held)
        missing = [pos for pos in range(first, min(last, part.last) + 1) if pos not in held]
        if missing:
            self._violation(f"{prefix}: gap, missing position(s) {_ranges(missing)}")
        if last < part.last:
            self._violation(
                f"{prefix}: behind, holds up to {last}, the final log ends at {part.last}"
            )
        beyond = [pos for pos in held if pos > part.last]
        if beyond:
            self._violation(
                f"{prefix}: holds position(s) {_ranges(sorted(beyond))} beyond the final "
                f"log's end {part.last}, first {self._record(p, min(beyond), held[min(beyond)])}"
            )

    # --- exporters -----------------------------------------------------------------

    def _check_exporter(self, name: str, p: int, lines: list[Record]) -> None:
        prefix = f"exporter {name} partition {p}"
        part = self.partitions.get(p)
        first_allowed = {1} if part is None else {1, part.first}
        last = part.last if part is not None else 0
        exported: dict[int, str] = {}  # position -> data first exported there
        highest = 0
        problems = []
        for number, (position, data) in enumerate(lines, start=1):
            at = f"line {number}"
            if not exported and position not in first_allowed:
                allowed = " or ".join(str(pos) for pos in sorted(first_allowed))
                problems.append(f"{at}: starts at position {position}, not {allowed}")
            elif exported and position > highest + 1:
                skipped = _ranges(list(range(highest + 1, position)))
                problems.append(f"{at}: skips from {highest} to {position} (missing {skipped})")
            if position in exported and exported[position] != data:
                problems.append(
                    f"{at}: re-exported {self._record(p, position, data)}, first exported "
                    f"as {json.dumps(exported[position])}"
                )
            reference = self._reference(p, position)
            if reference is not None and reference != data:
                problems.append(
                    f"{at}: exported {self._record(p, position, data)}, the final log holds "
                    f"{json.dumps(reference)} ({self._origin(reference)})"
                )
            if position > last:
                record = self._record(p, position, data)
                problems.append(f"{at}: exported {record} beyond the final log's end {last}")
            exported.setdefault(position, data)
            highest = max(highest, position)
        self._emit_capped(prefix, problems)

        acknowledged = [
            (self.placed[op.id][1], op)
            for op in self.appends
            if op.status == "ok" and self.placed[op.id][0] == p
        ]
        if highest < last:
            behind = sum(1 for position, _ in acknowledged if position > highest)
            self._violation(
                f"{prefix}: behind, exported up to {highest}, the final log ends at {last} "
                f"({behind} acknowledged appends not exported)"
            )
        missing = [
            f"lacks acknowledged position {position} {json.dumps(op.args['data'])}: {describe(op)}"
            for position, op in sorted(acknowledged, key=lambda pair: pair[0])
            if position <= highest and position not in exported
        ]
        self._emit_capped(prefix, missing)


def _index(records: list[Record]) -> _Partition:
    records = [(int(position), str(data)) for position, data in records]
    return _Partition(
        records=records,
        by_position=dict(records),
        first=records[0][0] if records else 1,
        last=records[-1][0] if records else 0,
    )


def _field(op: Op, fields: dict, name: str):
    if name not in fields:
        raise ValueError(f"{describe(op)}: no {name!r}")
    return fields[name]


def _ranges(positions: list[int]) -> str:
    """Ascending positions as compact ranges: 3, 5-9, 12."""
    parts = []
    run_start = previous = positions[0]
    for position in [*positions[1:], None]:
        if position is not None and position == previous + 1:
            previous = position
            continue
        parts.append(str(run_start) if run_start == previous else f"{run_start}-{previous}")
        if position is not None:
            run_start = previous = position
    return ", ".join(parts)
