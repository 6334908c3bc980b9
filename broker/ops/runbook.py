"""Executable runbooks: the markdown an operator reads at 3 a.m., run step by step.

A runbook is a markdown file in ``runbooks/`` written for a person first
(``runbooks/README.md`` describes the convention). Each ``## Step N: title``
section says what you see now, what you want, the command, how to verify it and
what to do if it fails, and whether it changes the cluster (``Destructive:``)::

    ## Step 2: Force the lost region out

    Destructive: yes

    **Current state:** ...
    **Desired state:** ...

    ```command
    fab failover --lost-region {lost_region} --yes --inventory {inventory}
    ```

    ```verify
    fab status --inventory {inventory}
    ```

    ```expect
    is not in the cluster
    ```

    **If it fails:** ...

``execute`` shows every step, asks before each destructive one (or refuses up
front when there is nobody to ask and no ``yes``), runs its commands and then
its verification, stops at the first failure printing the runbook's advice,
and writes a JSON audit record of what ran. ``dry_run`` prints the steps with
their commands substituted and runs nothing.

    from broker.ops.runbook import execute, load, resolve_parameters
    book = load("failover")
    params = resolve_parameters(book, {"lost_region": "region1"})
    record = execute(book, params, dry_run=True)
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from broker.ops.inventory import Cluster, InventoryError, load_inventory
from broker.ops.report import _operator, redact, write_audit

PROJECT = Path(__file__).resolve().parents[2]
RUNBOOK_DIR = PROJECT / "runbooks"
DEFAULT_INVENTORY = PROJECT / "inventories" / "local" / "hosts.yml"
DEFAULT_TIMEOUT = 3600.0  # seconds per command; a step can set its own with "Timeout:"
TAIL_LINES = 40  # of each command's output, kept in the audit record
TAIL_CHARS = 6000
READER_GRACE = 5.0  # after a command exits, how long its output may still drain
TOKEN_ENV = "BROKER_MANAGEMENT_TOKEN"  # brokerctl's: the inventory's token, for its commands
# inventory -> what brokerctl needs from it (BROKER_MANAGEMENT_TOKEN, BROKER_TLS_*)
_CLIENT_ENVS: dict[str, dict[str, str]] = {}

STEP_RE = re.compile(r"^##\s+Step\s+(\d+)\s*:\s*(.*?)\s*$", re.IGNORECASE)
HEADING_RE = re.compile(r"^(#{1,2})\s+(.*?)\s*$")
FENCE_RE = re.compile(r"^\s*```\s*([\w-]*)\s*$")
LABELS = {
    "destructive": "destructive",
    "current state": "current",
    "desired state": "desired",
    "command": "command",
    "verify": "verify",
    "verification": "verify",
    "if it fails": "if_fails",
    "timeout": "timeout",
}
LABEL_RE = re.compile(
    r"^\s*(?:\*\*)?(" + "|".join(LABELS) + r")(?:\s*:\s*\*\*|\*\*\s*:|\s*:)\s*(.*)$",
    re.IGNORECASE,
)
PARAM_RE = re.compile(
    r"^\s*[-*]\s+(`\{[a-z][a-z0-9_]*\}`(?:\s*,\s*`\{[a-z][a-z0-9_]*\}`)*)\s*:?\s*(.*)$"
)
INLINE_CODE_RE = re.compile(r"`([^`]+)`")
DEFAULT_RE = re.compile(r"\(default:?\s*`?([^`)]+?)`?\)")
PLACEHOLDER_RE = re.compile(r"\{([a-z][a-z0-9_]*)\}")
BLOCKS = ("command", "verify", "expect")

# Placeholders filled from the inventory (they need no option).
DERIVED = {
    "management": "every broker's management API URL, comma-separated",
    "gateways": "every broker's gateway address, comma-separated",
    "surviving_region": "the region that is not {lost_region} (or {region})",
    "surviving_management": "the management API URLs of the surviving region's brokers",
    "surviving_gateways": "the gateway addresses of the surviving region's brokers",
    "cluster_size": "the number of brokers",
    "partitions": "broker_partitions_count",
    "replication_factor": "broker_replication_factor",
}
REGION_PARAMETERS = ("lost_region", "region")
OPTIONS = {
    "lost_region": "--lost-region REGION",
    "region": "--region REGION",
    "api": "--api FORM",
    "inventory": "--inventory PATH",
}


class RunbookError(Exception):
    """A runbook that cannot be found, parsed, or run with the parameters given."""


class MissingParameters(RunbookError):
    def __init__(self, runbook: str, names: Iterable[str]):
        self.names = sorted(names)
        hints = "; ".join(f"{{{n}}}: {_hint(n)}" for n in self.names)
        super().__init__(f"runbook {runbook} needs {len(self.names)} more parameter(s): {hints}")


def _hint(name: str) -> str:
    if name in OPTIONS:
        return f"give {OPTIONS[name]}"
    if name == "surviving_region" or name.startswith("surviving_"):
        return "derived from the region: give --lost-region REGION (or --region REGION)"
    return f"give --param {name}=VALUE"


# --- the runbook as data -----------------------------------------------------------------


@dataclass(frozen=True)
class Parameter:
    name: str
    description: str
    default: str | None = None


@dataclass(frozen=True)
class Step:
    number: int
    title: str
    destructive: bool
    current: str
    desired: str
    commands: tuple[str, ...]
    verify: tuple[str, ...]
    if_fails: str
    expect: tuple[str, ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    notes: Mapping[str, str] = field(default_factory=dict)  # prose after Command:/Verify:
    line: int = 0

    def templates(self) -> tuple[str, ...]:
        return (*self.commands, *self.verify, *self.expect)

    def placeholders(self) -> set[str]:
        return {m for t in self.templates() for m in PLACEHOLDER_RE.findall(t)}


@dataclass(frozen=True)
class Runbook:
    name: str
    path: Path
    title: str
    summary: str
    parameters: Mapping[str, Parameter]
    steps: tuple[Step, ...]
    # the prose's inline code and illustrative blocks (```sh): commands an operator may
    # type by hand, never run by the runner; the tests check them like the steps' own
    mentions: tuple[str, ...] = ()

    def placeholders(self) -> set[str]:
        return set().union(*(s.placeholders() for s in self.steps))

    @property
    def destructive_steps(self) -> list[int]:
        return [s.number for s in self.steps if s.destructive]


def available(directory: str | os.PathLike = RUNBOOK_DIR) -> list[str]:
    """Runbook names (file names without .md; README.md is the convention, not a runbook)."""
    return sorted(p.stem for p in Path(directory).glob("*.md") if p.name.lower() != "readme.md")


def load(name: str, directory: str | os.PathLike = RUNBOOK_DIR) -> Runbook:
    """A runbook by name (``failover``) or by path (``/some/where/drill.md``)."""
    if name.endswith(".md") or os.sep in name:
        path = Path(name)
        if not path.is_file():
            raise RunbookError(f"no runbook file {name}")
    else:
        path = Path(directory) / f"{name}.md"
        if not path.is_file() or name.lower() == "readme":
            names = ", ".join(available(directory)) or "none"
            raise RunbookError(f"no runbook {name!r} in {directory} (available: {names})")
    return parse(path.read_text(), name=path.stem, path=path)


def parse(text: str, name: str = "runbook", path: str | os.PathLike = "<text>") -> Runbook:
    """Parse the markdown convention of runbooks/README.md; RunbookError names file:line."""
    path = Path(path)
    title = ""
    summary: list[str] = []
    parameters: dict[str, Parameter] = {}
    steps: list[Step] = []
    current: dict[str, Any] | None = None  # the step being read
    label: str | None = None  # the labelled part being read
    fence: str | None = None  # the fenced block being read (its info string)
    fence_lines: list[str] = []
    mentions: list[str] = []
    in_preamble = True

    def where(line: int) -> str:
        return f"{path}:{line}"

    def close_step() -> None:
        nonlocal current
        if current is not None:
            steps.append(_finish_step(current, where))
        current = None

    for lineno, raw in enumerate(text.splitlines(), 1):
        if fence is not None:
            if FENCE_RE.match(raw) and not FENCE_RE.match(raw).group(1):
                if current is not None and fence in BLOCKS:
                    current[fence].extend(_block_lines(fence_lines, fence, where(lineno)))
                elif fence not in BLOCKS:
                    mentions.extend(_block_lines(fence_lines, "illustration", where(lineno)))
                fence, fence_lines = None, []
            else:
                fence_lines.append(raw)
            continue
        mentions.extend(INLINE_CODE_RE.findall(raw))
        opened = FENCE_RE.match(raw)
        if opened:
            fence, fence_lines = opened.group(1).lower(), []
            label = None
            continue
        heading = HEADING_RE.match(raw)
        step_heading = STEP_RE.match(raw)
        if step_heading:
            close_step()
            in_preamble = False
            number, step_title = int(step_heading.group(1)), step_heading.group(2)
            current = {
                "number": number,
                "title": step_title,
                "line": lineno,
                "destructive": None,
                "timeout": DEFAULT_TIMEOUT,
                **{k: [] for k in ("current", "desired", "if_fails", *BLOCKS)},
                "notes": {"command": [], "verify": []},
            }
            label = None
            continue
        if heading:
            if heading.group(1) == "#" and not title:
                title = heading.group(2)
            elif current is not None or not in_preamble:
                close_step()  # another section (notes after the steps): not part of a step
                label = None
            continue
        if in_preamble:
            param = PARAM_RE.match(raw)
            if param:
                default = DEFAULT_RE.search(param.group(2))
                for pname in PLACEHOLDER_RE.findall(param.group(1)):
                    parameters[pname] = Parameter(
                        pname,
                        param.group(2).strip(),
                        default.group(1).strip() if default else None,
                    )
            elif title and not parameters:
                summary.append(raw.strip())
            continue
        if current is None:
            continue
        labelled = LABEL_RE.match(raw)
        if labelled:
            label = LABELS[labelled.group(1).lower()]
            rest = labelled.group(2).strip()
            if label == "destructive":
                value = rest.strip("*` .").lower()
                if value not in ("yes", "no"):
                    raise RunbookError(
                        f"{where(lineno)}: step {current['number']}: Destructive must be "
                        f"yes or no, not {rest!r}"
                    )
                current["destructive"] = value == "yes"
                label = None
            elif label == "timeout":
                try:
                    current["timeout"] = float(rest.strip("*` ").removesuffix("s"))
                except ValueError:
                    raise RunbookError(
                        f"{where(lineno)}: step {current['number']}: Timeout must be "
                        f"a number of seconds, not {rest!r}"
                    ) from None
                label = None
            elif label in ("command", "verify"):
                current["notes"][label].append(rest)
            elif rest:
                current[label].append(rest)
            continue
        if label is not None:
            target = current["notes"][label] if label in ("command", "verify") else current[label]
            target.append(raw.strip())
    if fence is not None:
        raise RunbookError(f"{path}: a fenced block (```{fence}) is never closed")
    close_step()
    if not title:
        raise RunbookError(f"{path}: no title (a first line '# ...')")
    if not steps:
        raise RunbookError(f"{path}: no steps (sections '## Step 1: ...')")
    for i, s in enumerate(steps, 1):
        if s.number != i:
            raise RunbookError(f"{where(s.line)}: step {s.number} should be step {i}")
    return Runbook(
        name,
        path,
        title,
        " ".join(_text(summary).split("\n\n")[0].split()),
        parameters,
        tuple(steps),
        tuple(mentions),
    )


def _block_lines(lines: list[str], kind: str, where: str) -> list[str]:
    """One command per line (``\\`` continues a line); blank lines and ``#`` comments
    are skipped. An ``expect`` block keeps every non-blank line as text to find."""
    if kind == "expect":
        return [ln.strip() for ln in lines if ln.strip()]
    out: list[str] = []
    pending = ""
    for ln in lines:
        stripped = ln.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        out.append((pending + stripped).strip())
        pending = ""
    if pending:
        out.append(pending.strip())
    for command in out if kind in BLOCKS else ():
        try:
            shlex.split(command)
        except ValueError as exc:
            raise RunbookError(f"{where}: cannot split {command!r}: {exc}") from None
    return out


LIST_ITEM_RE = re.compile(r"^([-*]|\d+\.)\s")


def _text(lines: list[str]) -> str:
    """Prose reflowed: a paragraph's lines joined into one, each list item one line,
    paragraphs separated by a blank line (the terminal wraps them again)."""
    out: list[str] = []
    for raw in lines:
        line = raw.strip()
        if not line:
            if out and out[-1]:
                out.append("")
        elif not out or not out[-1] or LIST_ITEM_RE.match(line):
            out.append(line)
        else:
            out[-1] += " " + line
    return "\n".join(out).strip()


def _finish_step(s: dict[str, Any], where: Callable[[int], str]) -> Step:
    missing = []
    if not s["title"]:
        missing.append("a title")
    if s["destructive"] is None:
        missing.append("a 'Destructive: yes' or 'Destructive: no' line")
    for key, what in (
        ("current", "a '**Current state:**' text"),
        ("desired", "a '**Desired state:**' text"),
        ("command", "a ```command block"),
        ("verify", "a ```verify block"),
        ("if_fails", "an '**If it fails:**' text"),
    ):
        if not _text(s[key]):
            missing.append(what)
    if missing:
        raise RunbookError(
            f"{where(s['line'])}: step {s['number']} ({s['title']}) lacks {'; '.join(missing)}"
        )
    return Step(
        number=s["number"],
        title=s["title"],
        destructive=s["destructive"],
        current=_text(s["current"]),
        desired=_text(s["desired"]),
        commands=tuple(s["command"]),
        verify=tuple(s["verify"]),
        if_fails=_text(s["if_fails"]),
        expect=tuple(s["expect"]),
        timeout=s["timeout"],
        notes={k: _text(v) for k, v in s["notes"].items() if _text(v)},
        line=s["line"],
    )


# --- parameters and commands ---------------------------------------------------------------


def default_inventory() -> str:
    return os.environ.get("BROKER_INVENTORY") or str(DEFAULT_INVENTORY)


def derived_parameters(cluster: Cluster, params: Mapping[str, str]) -> dict[str, str]:
    """What the inventory says: management URLs, gateways, the cluster's shape, and
    (given {lost_region} or {region}) the surviving region and its brokers."""
    out = {
        "management": ",".join(b.management_url for b in cluster.brokers),
        "gateways": ",".join(b.gateway for b in cluster.brokers),
        "cluster_size": str(len(cluster.brokers)),
        "partitions": str(cluster.partitions),
        "replication_factor": str(cluster.replication_factor),
    }
    region = params.get("lost_region") or params.get("region")
    if region:
        survivors = cluster.outside(region)
        out["surviving_region"] = cluster.other_region(region)
        out["surviving_management"] = ",".join(b.management_url for b in survivors)
        out["surviving_gateways"] = ",".join(b.gateway for b in survivors)
    return out


def resolve_parameters(
    runbook: Runbook,
    given: Mapping[str, Any],
    *,
    inventory: str | os.PathLike | None = None,
) -> dict[str, str]:
    """The values of every placeholder: given ones, then documented defaults, then what
    the inventory says. Names the missing ones; checks regions against the inventory."""
    params = {n: p.default for n, p in runbook.parameters.items() if p.default is not None}
    params.update({k: str(v) for k, v in given.items() if v is not None and v != ""})
    params["inventory"] = str(inventory or given.get("inventory") or default_inventory())
    needed = runbook.placeholders()
    wants_inventory = needed & DERIVED.keys()
    if wants_inventory or any(params.get(r) for r in REGION_PARAMETERS):
        try:
            cluster = load_inventory(params["inventory"])
        except InventoryError as exc:
            if wants_inventory:
                names = ", ".join(f"{{{n}}}" for n in sorted(wants_inventory))
                raise RunbookError(
                    f"runbook {runbook.name}: {names} come from the inventory, "
                    f"which cannot be read: {exc}"
                ) from None
        else:
            for r in REGION_PARAMETERS:
                if params.get(r):
                    try:
                        cluster.check_region(params[r])
                    except InventoryError as exc:
                        raise RunbookError(f"runbook {runbook.name}: {exc}") from None
            for key, value in derived_parameters(cluster, params).items():
                params.setdefault(key, value)
            _CLIENT_ENVS[params["inventory"]] = _client_env(cluster)
    missing = needed - params.keys()
    if missing:
        raise MissingParameters(runbook.name, missing)
    return params


def substitute(text: str, params: Mapping[str, str]) -> str:
    """Placeholders replaced where a value is known; unknown ones stay as they are."""
    return PLACEHOLDER_RE.sub(lambda m: params.get(m.group(1), m.group(0)), text)


def render(template: str, params: Mapping[str, str]) -> list[str]:
    """The command as argv. Split first, then substituted: a value is always one argument,
    whatever it holds (no shell, no injection)."""
    missing = set(PLACEHOLDER_RE.findall(template)) - params.keys()
    if missing:
        raise MissingParameters("command", missing)
    return [PLACEHOLDER_RE.sub(lambda m: params[m.group(1)], t) for t in shlex.split(template)]


def resolve_program(argv: list[str], inventory: str) -> list[str]:
    """``fab``, ``brokerctl``, ``ansible-playbook``... from this virtualenv (next to
    sys.executable) when there; ``python`` is sys.executable; ``fab`` gets the
    runbook's ``--inventory`` unless the command names one."""
    argv = list(argv)
    program = argv[0]
    if program in ("python", "python3"):
        argv[0] = sys.executable
    elif "/" not in program:
        sibling = Path(sys.executable).with_name(program)
        if sibling.exists():
            argv[0] = str(sibling)
    if program == "fab" and not any(
        a == "--inventory" or a.startswith("--inventory=") for a in argv
    ):
        argv += ["--inventory", inventory]
    return argv


# --- running ---------------------------------------------------------------------------------


@dataclass
class CommandRun:
    phase: str  # command or verify
    command: str  # as the runbook reads, substituted
    argv: list[str]  # what was executed
    exit: int | None = None
    seconds: float = 0.0
    lines: list[str] = field(default_factory=list)
    timed_out: bool = False

    def tail(self) -> str:
        text = "\n".join(self.lines[-TAIL_LINES:])
        return text[-TAIL_CHARS:]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "phase": self.phase,
            "command": self.command,
            "argv": self.argv,
            "exit": self.exit,
            "seconds": round(self.seconds, 3),
            "outputTail": self.tail(),
            "outputLines": len(self.lines),
        }
        if self.timed_out:
            out["timedOut"] = True
        audits = [
            ln.split(":", 1)[1].strip() for ln in self.lines if ln.startswith("audit record:")
        ]
        if audits:
            out["auditRecords"] = audits
        return out


def run_command(
    run: CommandRun,
    *,
    cwd: str | os.PathLike,
    env: Mapping[str, str],
    timeout: float,
    echo: Callable[[str], None],
) -> CommandRun:
    """Run argv (no shell), echo its output line by line, keep it; kill it at timeout."""
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            run.argv,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,  # the runbook asked already; commands must not ask
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
    except OSError as exc:
        run.lines.append(f"cannot run {run.argv[0]}: {exc.strerror or exc}")
        echo(run.lines[-1])
        run.exit = 127
        run.seconds = time.monotonic() - started
        return run

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            run.lines.append(line)
            echo(line)

    reader = threading.Thread(target=pump, name="runbook-output", daemon=True)
    reader.start()
    try:
        run.exit = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        run.exit = proc.wait()
        run.timed_out = True
    except KeyboardInterrupt:
        proc.kill()
        proc.wait()
        raise
    finally:
        run.seconds = time.monotonic() - started
    # a daemon the command started may hold the pipe open: do not wait for it forever
    reader.join(READER_GRACE)
    if run.timed_out:
        run.lines.append(f"(killed after {timeout:.0f}s: the step's timeout)")
        echo(run.lines[-1])
    return run


def _normalized(text: str) -> str:
    return " ".join(text.split())


def missing_expected(expect: Iterable[str], output: str) -> list[str]:
    """Expected texts absent from the output (whitespace-insensitive: wrapping is fine)."""
    seen = _normalized(output)
    return [e for e in expect if _normalized(e) not in seen]


def confirmation_word(params: Mapping[str, str]) -> str:
    """What the operator types to run a destructive step: the region, else ``yes``."""
    for r in REGION_PARAMETERS:
        if params.get(r):
            return params[r]
    return "yes"


def terminal_confirm(word: str, console: Console | None = None) -> Callable[[str], bool] | None:
    """Asks on the terminal for ``word``; None when there is no terminal to ask on."""
    if not sys.stdin.isatty():
        return None
    console = console or Console()

    def confirm(question: str) -> bool:
        console.print(f"[bold yellow]{escape(question)}[/bold yellow]")
        try:
            answer = input(f"Type {word!r} to run this step, anything else stops: ")
        except EOFError:
            return False
        return answer.strip() == word

    return confirm


def audit_dir() -> Path:
    return Path(os.environ.get("BROKER_OPS_AUDIT_DIR") or PROJECT / "var" / "ops" / "audit")


class Runner:
    """Runs one runbook; ``execute`` is the way in."""

    def __init__(
        self,
        runbook: Runbook,
        params: Mapping[str, str],
        *,
        yes: bool,
        confirm: Callable[[str], bool] | None,
        console: Console,
        cwd: str | os.PathLike,
        env: Mapping[str, str] | None,
        resume: str,
    ):
        self.runbook = runbook
        self.params = dict(params)
        self.yes = yes
        self.confirm = confirm
        self.console = console
        self.cwd = cwd
        self.resume = resume
        width = max(console.width - 6, 120)
        self.env = {
            **os.environ,
            "COLUMNS": str(width),
            "PYTHONUNBUFFERED": "1",
            "BROKER_INVENTORY": self.params["inventory"],
            **(env or {}),
        }
        # brokerctl steps talk to brokers that want the token and TLS the inventory gives
        for name, value in _inventory_client_env(self.params["inventory"]).items():
            if not self.env.get(name):
                self.env[name] = value

    # what the operator sees

    def show_step(self, step: Step, total: int, *, plan: bool = False) -> None:
        """The step as the operator reads it; ``plan`` adds its commands, filled in."""
        mark = "  [bold red]DESTRUCTIVE[/bold red]" if step.destructive else ""
        self.console.rule(
            f"[bold]Step {step.number}/{total}: {escape(step.title)}[/bold]{mark}", align="left"
        )
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="dim", no_wrap=True)
        grid.add_column()
        grid.add_row("now", escape(substitute(step.current, self.params)))
        grid.add_row("want", escape(substitute(step.desired, self.params)))
        if plan:
            for label, templates in (("run", step.commands), ("verify", step.verify)):
                for t in templates:
                    grid.add_row(label, "$ " + escape(shlex.join(render(t, self.params))))
            for e in step.expect:
                grid.add_row("expect", escape(repr(substitute(e, self.params))))
            grid.add_row("if it fails", escape(substitute(step.if_fails, self.params)))
        self.console.print(grid)

    def echo(self, line: str) -> None:
        self.console.print(f"    {redact(line)}", markup=False, highlight=False, soft_wrap=True)

    # running

    def run_phase(
        self, step: Step, phase: str, templates: Iterable[str], record: dict, seen: list[str]
    ) -> bool:
        """Each command in turn; False at the first that does not exit 0."""
        for template in templates:
            argv = render(template, self.params)
            run = CommandRun(
                phase, shlex.join(argv), resolve_program(argv, self.params["inventory"])
            )
            label = "run" if phase == "command" else "verify"
            self.console.print(f"[bold]{label}:[/bold] $ {escape(run.command)}")
            try:
                run_command(run, cwd=self.cwd, env=self.env, timeout=step.timeout, echo=self.echo)
            finally:
                record["commands"].append(run.to_dict())
            style = "green" if run.exit == 0 else "bold red"
            self.console.print(f"    [{style}]exit {run.exit}[/{style}] in {run.seconds:.1f}s")
            if run.exit != 0:
                what = "timed out" if run.timed_out else f"exited {run.exit}"
                record["failure"] = f"{phase} {run.command!r} {what}"
                return False
            seen.extend(run.lines)
        return True

    def run_step(self, step: Step, total: int) -> dict[str, Any]:
        record: dict[str, Any] = {
            "number": step.number,
            "title": step.title,
            "destructive": step.destructive,
            "status": "running",
            "seconds": 0.0,
            "commands": [],
        }
        self.show_step(step, total)
        if step.destructive:
            if self.yes:
                record["confirmed"] = "--yes"
            else:
                assert self.confirm is not None
                commands = "\n".join(
                    f"  $ {shlex.join(render(t, self.params))}" for t in step.commands
                )
                question = f"Step {step.number} changes the cluster:\n{commands}\nRun it?"
                try:
                    agreed = self.confirm(question)
                except KeyboardInterrupt:  # Ctrl-C at the question is a no
                    agreed = False
                if not agreed:
                    record["status"] = "declined"
                    record["confirmed"] = False
                    return record
                record["confirmed"] = True
        started = time.monotonic()
        verified: list[str] = []  # the verification's output, for the expected texts
        try:
            ok = self.run_phase(step, "command", step.commands, record, []) and self.run_phase(
                step, "verify", step.verify, record, verified
            )
            if ok and step.expect:
                expected = [substitute(e, self.params) for e in step.expect]
                absent = missing_expected(expected, "\n".join(verified))
                record["expect"] = expected
                if absent:
                    record["missingExpected"] = absent
                    record["failure"] = "the verification's output lacks: " + "; ".join(
                        repr(a) for a in absent
                    )
                    ok = False
        except KeyboardInterrupt:
            record["status"] = "interrupted"
            return record
        finally:
            record["seconds"] = round(time.monotonic() - started, 3)
        record["status"] = "done" if ok else "failed"
        if ok:
            self.console.print(
                f"[green]Step {step.number} done[/green] in {record['seconds']:.1f}s"
            )
        else:
            record["advice"] = substitute(step.if_fails, self.params)
            self.console.print(
                f"[bold red]Step {step.number} FAILED: {escape(record['failure'])}[/bold red]"
            )
            self.console.print(
                Panel(escape(record["advice"]), title="If it fails", border_style="red")
            )
        return record


def execute(
    runbook: Runbook,
    params: Mapping[str, str],
    *,
    yes: bool = False,
    confirm: Callable[[str], bool] | None = None,
    dry_run: bool = False,
    from_step: int = 1,
    console: Console | None = None,
    audit_directory: str | os.PathLike | None = None,
    cwd: str | os.PathLike = PROJECT,
    env: Mapping[str, str] | None = None,
    resume: str | None = None,
) -> dict[str, Any]:
    """Run the runbook from ``from_step``; returns the audit record (``outcome``
    ``completed`` when every step ran and verified). Destructive steps ask
    ``confirm(question)`` unless ``yes``; with neither, nothing at all is run.
    ``dry_run`` prints the steps, commands substituted, runs nothing and writes
    no record. ``resume`` is the command line to print for resuming."""
    console = console or Console()
    if "inventory" not in params:
        raise RunbookError("parameters must include 'inventory' (see resolve_parameters)")
    total = len(runbook.steps)
    if not 1 <= from_step <= total:
        raise RunbookError(f"runbook {runbook.name} has steps 1 to {total}, not {from_step}")
    steps = [s for s in runbook.steps if s.number >= from_step]
    missing = set().union(*(s.placeholders() for s in steps)) - params.keys()
    if missing:  # checked before anything runs
        raise MissingParameters(runbook.name, missing)
    runner = Runner(
        runbook,
        params,
        yes=yes,
        confirm=confirm,
        console=console,
        cwd=cwd,
        env=env,
        resume=resume or f"fab runbook {runbook.name} ...",
    )
    started_at = datetime.now(UTC)
    shown = {k: v for k, v in params.items() if k not in DERIVED}
    console.print(
        Panel(
            f"{escape(runbook.summary)}\n\n[dim]{runbook.path}[/dim]\n"
            + "\n".join(f"{{{k}}} = {escape(v)}" for k, v in sorted(shown.items())),
            title=f"[bold]{escape(runbook.title)}[/bold]"
            + (" (DRY RUN: nothing will run)" if dry_run else ""),
        )
    )
    record: dict[str, Any] = {
        "procedure": f"runbook-{runbook.name}",
        "runbook": runbook.name,
        "title": runbook.title,
        "file": str(runbook.path),
        "region": confirmation_word(params) if confirmation_word(params) != "yes" else "cluster",
        "outcome": "not started",
        "startedAt": started_at.isoformat(),
        "finishedAt": None,
        "seconds": 0.0,
        "operator": _operator(),
        "controller": socket.gethostname(),
        "inventory": params["inventory"],
        "parameters": dict(params),
        "options": {"dryRun": dry_run, "yes": yes, "fromStep": from_step},
        "steps": [],
    }
    destructive = [s.number for s in steps if s.destructive]
    if dry_run:
        for s in steps:
            runner.show_step(s, total, plan=True)
        marks = ", ".join(map(str, destructive)) or "none"
        console.print(
            f"[bold]DRY RUN[/bold]: {len(steps)} steps shown, nothing was run "
            f"(destructive steps: {marks})"
        )
        record["outcome"] = "dry run"
        record["finishedAt"] = datetime.now(UTC).isoformat()
        return record
    if destructive and not yes and confirm is None:
        which = (
            f"step {destructive[0]} changes"
            if len(destructive) == 1
            else f"steps {', '.join(map(str, destructive))} change"
        )
        record["outcome"] = (
            f"refused: {which} the cluster and there is no terminal to confirm on "
            "and no --yes; nothing was run"
        )
        console.print(f"[bold red]{escape(record['outcome'])}[/bold red]")
    else:
        record["outcome"] = "completed"
        for s in steps:
            result = runner.run_step(s, total)
            record["steps"].append(result)
            if result["status"] == "declined":
                record["outcome"] = f"stopped at step {s.number}: not confirmed"
            elif result["status"] == "interrupted":
                record["outcome"] = f"interrupted at step {s.number}"
            elif result["status"] == "failed":
                record["outcome"] = f"failed at step {s.number}: {result['failure']}"
            if record["outcome"] != "completed":
                break
    record["finishedAt"] = datetime.now(UTC).isoformat()
    record["seconds"] = round(sum(s["seconds"] for s in record["steps"]), 3)
    record = redact(record)  # commands' output may hold a secret: the record never does
    _summary(runner, record, total)
    path = write_audit(record, audit_directory or audit_dir())
    record["auditFile"] = str(path)
    console.print(f"audit record: {path}")
    return record


def _client_env(cluster: Cluster) -> dict[str, str]:
    env = {TOKEN_ENV: cluster.token} if cluster.token else {}
    if cluster.tls is not None:
        env.update(cluster.tls.environment())
    return env


def _inventory_client_env(inventory: str) -> dict[str, str]:
    """brokerctl's token and TLS variables for the inventory (read by resolve_parameters,
    else now); none when it cannot be read (the commands then say what is missing)."""
    if inventory not in _CLIENT_ENVS:
        try:
            _CLIENT_ENVS[inventory] = _client_env(load_inventory(inventory))
        except (InventoryError, OSError):
            _CLIENT_ENVS[inventory] = {}
    return _CLIENT_ENVS[inventory]


def _summary(runner: Runner, record: dict[str, Any], total: int) -> None:
    console = runner.console
    if record["steps"]:
        table = Table(title=f"{record['title']}")
        for col in ("step", "title", "status", "seconds"):
            table.add_column(col)
        style = {"done": "green", "failed": "bold red"}
        for s in record["steps"]:
            st = style.get(s["status"], "yellow")
            table.add_row(
                f"{s['number']}/{total}",
                escape(s["title"]),
                f"[{st}]{s['status']}[/{st}]",
                f"{s['seconds']:.1f}",
            )
        console.print(table)
    ok = record["outcome"] == "completed"
    style = "bold green" if ok else "bold red"
    console.print(f"[{style}]{escape(record['runbook'])}: {escape(record['outcome'])}[/{style}]")
    if not ok and record["steps"]:
        last = record["steps"][-1]["number"]
        console.print(
            f"When step {last} is sorted out, resume there: "
            f"{escape(runner.resume)} --from-step {last}"
        )
