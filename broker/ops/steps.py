"""Runbook steps and the procedure runner.

Every step of a runbook is one function that reads the current state, does
nothing when the desired state already holds, otherwise acts and then
verifies. It returns a ``StepResult`` saying what it saw and what it did:

* ``done``: the step acted and the desired state now holds; checks and waits
  always say ``done`` when they pass (a passed check is never "skipped");
* ``skipped``: a step that would act found its work done already (or a dry
  run changed nothing);
* ``failed``: the step refused or could not reach the desired state; the
  procedure stops there, and ``saw`` says why in words for the operator.

Because every step is idempotent, re-running a whole procedure after an
interruption skips the finished steps and resumes at the first unfinished one.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

from broker.client import BrokerError
from broker.ops.api import ApiError

Status = Literal["done", "skipped", "failed"]
POLL_INTERVAL = 0.1


@dataclass(frozen=True)
class StepResult:
    name: str
    status: Status
    saw: str
    did: str
    seconds: float
    data: dict[str, Any] = field(default_factory=dict)
    acted: bool = False  # a step that changes things (``@step(acts=True)``) said "done"

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Outcome(NamedTuple):
    """What a step function returns; ``@step`` adds the name and the time taken."""

    status: Status
    saw: str
    did: str
    data: dict[str, Any]


def done(saw: str, did: str, **data: Any) -> Outcome:
    return Outcome("done", saw, did, data)


def skipped(saw: str, did: str = "nothing to do", **data: Any) -> Outcome:
    return Outcome("skipped", saw, did, data)


def failed(saw: str, did: str = "changed nothing", **data: Any) -> Outcome:
    return Outcome("failed", saw, did, data)


class StepFailed(Exception):
    """Raised from deep inside a step to fail it with a message for the operator."""

    def __init__(self, saw: str, did: str = "changed nothing"):
        super().__init__(saw)
        self.saw = saw
        self.did = did


class WaitTimeout(TimeoutError):
    pass


def step(
    title: str, *, acts: bool = False
) -> Callable[[Callable[..., Outcome]], Callable[..., StepResult]]:
    """Make a function returning an ``Outcome`` into a timed step returning a ``StepResult``.

    A refusal of the management API, an unreachable broker, a deadline passed
    or a gateway error fails the step with its message; anything else is a bug
    and propagates. ``acts`` marks a step that changes the cluster, a sink or a process
    when it says "done" (checks and waits say "done" whenever they pass).
    """

    def wrap(fn: Callable[..., Outcome]) -> Callable[..., StepResult]:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> StepResult:
            started = time.monotonic()
            try:
                outcome = fn(*args, **kwargs)
            except StepFailed as exc:
                outcome = failed(exc.saw, exc.did)
            except (ApiError, WaitTimeout, BrokerError) as exc:
                outcome = failed(str(exc))
            seconds = time.monotonic() - started
            acted = acts and outcome.status == "done"
            return StepResult(fn.__name__, *outcome[:3], seconds, outcome[3], acted)

        run.title = title  # type: ignore[attr-defined]
        return run

    return wrap


def wait_until(
    check: Callable[[], tuple[bool, str]], timeout: float, what: str, interval=POLL_INTERVAL
) -> str:
    """Poll ``check`` (returning ``(holds, what it saw)``) until it holds; returns what it saw.

    Raises WaitTimeout naming ``what`` and the last observation. An ApiError
    while polling counts as "not yet" (a broker may be restarting) until the
    deadline.
    """
    deadline = time.monotonic() + timeout
    seen = "nothing yet"
    while True:
        try:
            holds, seen = check()
        except ApiError as exc:
            holds, seen = False, str(exc)
        if holds:
            return seen
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"gave up after {timeout:g}s waiting for {what}; last seen: {seen}")
        time.sleep(interval)


# --- running a procedure ------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    run: Callable[[], StepResult]


def plan(*steps: tuple[Callable[..., StepResult], Callable[[], StepResult]]) -> list[Step]:
    """Pair each step function with a call of it: ``plan((confirm, lambda: confirm(c, r)))``."""
    return [Step(fn.__name__, getattr(fn, "title", fn.__name__), call) for fn, call in steps]


class Progress(Protocol):
    def started(self, index: int, total: int, step: Step) -> None: ...

    def finished(self, index: int, total: int, result: StepResult) -> None: ...


def run_procedure(
    steps: Iterable[Step], progress: Progress | None = None, until: str | None = None
) -> list[StepResult]:
    """Run the steps in order; stop after the first failed one, or after ``until``."""
    steps = list(steps)
    names = [s.name for s in steps]
    if until is not None and until not in names:
        raise ValueError(f"no step {until!r}; the steps are {', '.join(names)}")
    results = []
    for index, s in enumerate(steps, 1):
        if progress:
            progress.started(index, len(steps), s)
        result = s.run()
        results.append(result)
        if progress:
            progress.finished(index, len(steps), result)
        if result.failed or s.name == until:
            break
    return results


def dry(fn: Callable[..., StepResult]) -> StepResult:
    """The result of a step a dry run does not run (it would only wait for nothing)."""
    return StepResult(fn.__name__, "skipped", "dry run", "not run: nothing was changed", 0.0)


def ask_or_refuse(yes: bool, confirm: Callable[[str], bool] | None) -> Callable[[str], bool]:
    """The approval a destructive step asks for: always yes with ``yes``; else ``confirm``;
    with neither, refuse (a destructive step never runs unasked)."""
    if yes:
        return lambda question: True
    if confirm is None:
        return lambda question: False
    return confirm


def ask_once(ask: Callable[[str], bool], question: Callable[[], str]) -> Callable[[str], bool]:
    """An approval for a walk of several acting steps: ``question()`` is asked once, at
    the first step that needs it, and its answer stands for every later step."""
    answer: dict[str, bool] = {}

    def approve(_step_question: str) -> bool:
        if "given" not in answer:
            answer["given"] = ask(question())
        return answer["given"]

    return approve
