"""How a procedure shows itself: progress step by step, a summary table, an audit record.

Secrets (the management token, every vault-encrypted inventory value) are
registered here by the inventory reader and never shown: progress, tables,
audit records and ``--json`` outputs go through ``redact``.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from broker.ops.steps import Step, StepResult

STYLE = {"done": "green", "skipped": "cyan", "failed": "bold red"}
TABLE_LINES = 6  # longer texts (a dry run's plan) are cut in the table; progress shows them
REDACTED = "<redacted>"
MIN_SECRET_LENGTH = 4  # shorter values ("true", "1") would redact ordinary words
_SECRETS: set[str] = set()


def register_secret(value: Any) -> None:
    """From now on, ``redact`` replaces ``value`` wherever it appears in a text."""
    if isinstance(value, str) and len(value.strip()) >= MIN_SECRET_LENGTH:
        _SECRETS.add(value)
        if value.strip() != value:
            _SECRETS.add(value.strip())


def redact(value: Any) -> Any:
    """``value`` (a text, or dicts and lists of them) with every registered secret replaced."""
    if not _SECRETS:
        return value
    if isinstance(value, str):
        for secret in sorted(_SECRETS, key=len, reverse=True):
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {redact(k): redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value


class ConsoleProgress:
    """Prints each step as it starts and what it saw and did when it ends."""

    def __init__(self, console: Console | None = None, indent: str = ""):
        self.console = console or Console()
        self.indent = indent  # a procedure run inside another one's step is indented

    def started(self, index: int, total: int, step: Step) -> None:
        self.console.print(
            f"{self.indent}[bold][{index}/{total}][/bold] {escape(redact(step.title))} "
            f"({step.name}) ..."
        )

    def finished(self, index: int, total: int, result: StepResult) -> None:
        style = STYLE[result.status]
        pad = self.indent + "      "
        self.console.print(
            f"{pad}[{style}]{result.status.upper()}[/{style}] in {result.seconds:.1f}s"
        )
        self.console.print(f"{pad}saw: {escape(redact(result.saw))}", soft_wrap=True)
        self.console.print(f"{pad}did: {escape(redact(result.did))}", soft_wrap=True)


def steps_table(results: list[StepResult], title: str) -> Table:
    table = Table(title=title, show_lines=True)
    table.add_column("#", justify="right")
    table.add_column("step")
    table.add_column("status")
    table.add_column("seconds", justify="right")
    table.add_column("saw")
    table.add_column("did")
    for i, r in enumerate(results, 1):
        style = STYLE[r.status]
        table.add_row(
            str(i),
            r.name,
            f"[{style}]{r.status}[/{style}]",
            f"{r.seconds:.1f}",
            escape(_brief(redact(r.saw))),
            escape(_brief(redact(r.did))),
        )
    return table


def _brief(text: str) -> str:
    lines = text.splitlines()
    if len(lines) <= TABLE_LINES:
        return text
    shown = "\n".join(lines[: TABLE_LINES - 1])
    return f"{shown}\n... {len(lines) - TABLE_LINES + 1} more lines (shown above, and in the audit)"


def outcome(results: list[StepResult], total_steps: int) -> str:
    """completed, dry run, failed at <step>, or stopped after <step>."""
    if results and results[-1].failed:
        return f"failed at {results[-1].name}"
    if len(results) < total_steps:
        return f"stopped after {results[-1].name}" if results else "not started"
    return "completed"


def print_summary(
    results: list[StepResult],
    total_steps: int,
    title: str,
    console: Console | None = None,
    *,
    dry_run: bool = False,
) -> None:
    console = console or Console()
    console.print(steps_table(results, title))
    result = outcome(results, total_steps)
    if dry_run:
        title += " (DRY RUN: nothing was changed)"
    style = "bold red" if result.startswith("failed") else "bold green"
    seconds = sum(r.seconds for r in results)
    console.print(f"[{style}]{escape(title)}: {result}[/{style}] in {seconds:.1f}s")
    if result.startswith("failed"):
        console.print(
            "Fix what the failed step saw, then run the same command again: "
            "finished steps are skipped and the run resumes at the failed one."
        )


def audit_record(
    procedure: str,
    region: str,
    results: list[StepResult],
    total_steps: int,
    *,
    started_at: datetime,
    options: dict[str, Any] | None = None,
    inventory: str = "",
) -> dict[str, Any]:
    """Who ran what against which cluster, when, and what every step saw and did
    (secrets redacted: the record is printed by ``--json`` and written to disk)."""
    record = {
        "procedure": procedure,
        "region": region,
        "outcome": outcome(results, total_steps),
        "startedAt": started_at.isoformat(),
        "finishedAt": datetime.now(UTC).isoformat(),
        "seconds": round(sum(r.seconds for r in results), 3),
        "operator": _operator(),
        "controller": socket.gethostname(),
        "inventory": inventory,
        "options": options or {},
        "steps": [r.to_dict() for r in results],
    }
    return redact(record)


def write_audit(record: dict[str, Any], directory: str | os.PathLike) -> Path:
    """Write the record as JSON under ``directory``; returns the file's path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stamp = record["startedAt"].replace(":", "").replace("-", "").split(".")[0]
    dry = "-dry-run" if record["options"].get("dryRun") else ""
    name = f"{stamp}-{record['procedure']}-{record['region']}{dry}"
    path = directory / f"{name}.json"
    n = 1
    while path.exists():  # two runs in one second: keep both
        n += 1
        path = directory / f"{name}-{n}.json"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(redact(record), indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def _operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
