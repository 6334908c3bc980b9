"""The runbooks in runbooks/: they parse, every command in them exists and parses, the
destructive marks are right; the runner (broker/ops/runbook.py) with tiny fixture
runbooks of harmless commands; and one real run of `fab runbook verify-placement`
against 4 real brokers (the `dual` fixture)."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from invoke import Collection
from invoke.parser import ParseError, Parser
from rich.console import Console

from broker.cli import brokerctl_main
from broker.ops import runbook as rb
from broker.ops.view import members

PROJECT = Path(__file__).resolve().parents[2]
FAB = Path(sys.executable).with_name("fab")
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
LOCAL_INVENTORY = PROJECT / "inventories" / "local" / "hosts.yml"
RUNBOOKS = ("failback", "failover", "rolling-restart", "verify-placement")
PROGRAMS = ("fab", "brokerctl", "ansible-playbook", "python")

# Commands that change the cluster, its hosts or its network (unless told not to).
CHANGING_FAB = {
    "failover",
    "failback",
    "stop-region",
    "start-region",
    "isolate-region",
    "heal-region",
    "rolling-restart",
    "drill",
}
READ_ONLY_PLAYBOOKS = {"verify.yml"}
CHANGING_BROKERCTL = {
    ("cluster", "add"),
    ("cluster", "remove"),
    ("cluster", "scale"),
    ("cluster", "force-remove"),
    ("exporters", "enable"),
    ("exporters", "disable"),
    ("exporters", "pause"),
    ("exporters", "resume"),
}


def fab(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(FAB), *args],
        cwd=PROJECT,
        capture_output=True,
        stdin=subprocess.DEVNULL,  # no terminal: nobody to confirm
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


# --- every runbook parses -------------------------------------------------------------------


def load_all() -> dict[str, rb.Runbook]:
    return {name: rb.load(name) for name in rb.available()}


def sample_parameters(book: rb.Runbook) -> dict[str, str]:
    """The placeholders filled as `fab runbook` would, against the local inventory."""
    params = rb.resolve_parameters(
        book, {"lost_region": "region1", "region": "region1"}, inventory=LOCAL_INVENTORY
    )
    return {**params, "inventory": str(LOCAL_INVENTORY.relative_to(PROJECT))}


def test_the_four_runbooks_are_there_and_every_step_is_complete():
    books = load_all()
    assert set(RUNBOOKS) <= set(books), books.keys()
    for name, book in books.items():
        assert book.title and book.summary, name
        assert [s.number for s in book.steps] == list(range(1, len(book.steps) + 1))
        for s in book.steps:
            where = f"{name} step {s.number}"
            assert s.title, where
            assert s.current and s.desired, where
            assert s.commands and all(c.strip() for c in s.commands), where
            assert s.verify and all(c.strip() for c in s.verify), where
            assert len(s.if_fails) > 40, f"{where}: advice too thin: {s.if_fails!r}"
            assert isinstance(s.destructive, bool), where


def test_every_placeholder_is_documented_and_filled():
    for name, book in load_all().items():
        undocumented = book.placeholders() - set(book.parameters)
        assert not undocumented, f"{name}: document {sorted(undocumented)} under Parameters"
        params = sample_parameters(book)
        for s in book.steps:
            for t in s.templates():
                assert "{" not in rb.substitute(t, params), (name, s.number, t)


def test_the_destructive_marks_match_the_commands():
    """A step is destructive exactly when one of its commands changes something; a
    verification never changes anything."""
    for name, book in load_all().items():
        params = sample_parameters(book)
        for s in book.steps:
            changing = [t for t in s.commands if changes_something(rb.render(t, params))]
            assert bool(changing) == s.destructive, (
                f"{name} step {s.number} ({s.title}): Destructive: "
                f"{'yes' if s.destructive else 'no'}, but changing commands: {changing}"
            )
            for t in s.verify:
                assert not changes_something(rb.render(t, params)), (name, s.number, t)


def changes_something(argv: list[str]) -> bool:
    words = argv[1:]
    if argv[0] == "fab":
        task = next((w for w in words if not w.startswith("-")), "")
        return task in CHANGING_FAB and "--dry-run" not in words
    if argv[0] == "ansible-playbook":
        playbook = next(w for w in words if w.startswith("playbooks/"))
        dry = {"--check", "-C", "--syntax-check"} & set(words)
        return Path(playbook).name not in READ_ONLY_PLAYBOOKS and not dry
    if argv[0] == "brokerctl":
        ns = parse_brokerctl(argv)
        action = (ns.command, getattr(ns, f"{ns.command}_action", None))
        return action in CHANGING_BROKERCTL and not getattr(ns, "dry_run", False)
    raise AssertionError(f"unexpected program in a runbook: {argv}")


# --- every command exists and parses ----------------------------------------------------------


def all_commands() -> list[tuple[str, str, list[str]]]:
    """(runbook, where, argv) for the steps' commands and verifications, and for the
    commands the prose mentions (inline code, ```sh blocks) that an operator may type."""
    out: dict[tuple[str, str], tuple[str, str, list[str]]] = {}
    for name, book in load_all().items():
        params = sample_parameters(book)
        for s in book.steps:
            for phase, templates in (("command", s.commands), ("verify", s.verify)):
                for t in templates:
                    argv = rb.render(t, params)
                    out.setdefault(
                        (name, shlex.join(argv)), (name, f"step{s.number}.{phase}", argv)
                    )
        for text in book.mentions:
            words = shlex.split(rb.substitute(text, params))
            if len(words) > 1 and words[0] in PROGRAMS:
                out.setdefault((name, shlex.join(words)), (name, "prose", words))
    return list(out.values())


COMMANDS = all_commands()


def command_id(item) -> str:
    name, where, argv = item
    return f"{name}:{where}:{' '.join(argv)[:70]}"


@pytest.fixture(scope="module")
def fab_tasks() -> set[str]:
    listed = fab("-l", timeout=60)
    assert listed.returncode == 0, listed.stderr
    return {
        line.split()[0]
        for line in listed.stdout.splitlines()
        if line.startswith("  ") and not line.startswith("    ") and line.strip()
    }


@pytest.fixture(scope="module")
def fab_collection() -> Collection:
    spec = importlib.util.spec_from_file_location("fabfile_for_runbooks", PROJECT / "fabfile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return Collection.from_module(module)


def check_fab(argv: list[str], tasks: set[str], collection: Collection) -> None:
    words = argv[1:]
    if words[:1] == ["--inventory"]:  # the leading form the fabfile takes off itself
        words = words[2:]
    task = words[0]
    assert task in tasks, (
        f"fab task {task!r} is not in `fab -l` (tasks: {', '.join(sorted(tasks))})"
    )
    try:
        parsed = Parser(contexts=collection.to_contexts()).parse_argv(words)
    except ParseError as exc:
        pytest.fail(f"fab {shlex.join(words)}: {exc}")
    assert [c.name for c in parsed] == [task], parsed
    context = parsed[0]
    for word in words[1:]:
        if word.startswith("-"):
            flag = word.split("=", 1)[0]
            assert flag in context.flags or flag in context.inverse_flags, (
                f"fab {task} has no option {flag} (it has {sorted(context.flags)})"
            )
    for arg in context.positional_args:
        assert not str(arg.value).startswith("-"), (
            f"fab {task}: positional {arg.name} took {arg.value!r}: an unknown option?"
        )
    if task == "runbook":
        assert context.args["name"].value in rb.available(), argv


def check_ansible(argv: list[str], tmp: Path) -> None:
    playbooks = [w for w in argv if w.endswith(".yml") and w.startswith("playbooks/")]
    assert len(playbooks) == 1, f"one playbook per command: {argv}"
    assert (PROJECT / playbooks[0]).is_file(), f"{playbooks[0]} does not exist"
    checked = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), *argv[1:], "--syntax-check"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "ANSIBLE_LOCAL_TEMP": str(tmp), "ANSIBLE_NOCOLOR": "1"},
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


class Parsed(Exception):
    pass


def parse_brokerctl(argv: list[str]) -> argparse.Namespace:
    """brokerctl's own argument parser accepts it (parsed in-process, nothing run)."""
    args = argv[3:] if argv[:3] == ["python", "-m", "broker.cli"] else argv[1:]
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, *a, **kw):
        raise Parsed(original(self, *a, **kw))

    errors = io.StringIO()
    with (
        mock.patch.object(argparse.ArgumentParser, "parse_args", parse_then_stop),
        contextlib.redirect_stderr(errors),
    ):
        try:
            brokerctl_main(args)
        except Parsed as parsed:
            namespace = parsed.args[0]
            assert callable(getattr(namespace, "func", None)), args
            return namespace
        except SystemExit as exc:
            pytest.fail(f"brokerctl {shlex.join(args)}: exit {exc.code}: {errors.getvalue()}")
    pytest.fail(f"brokerctl {shlex.join(args)} was not parsed")


def check_brokerctl(argv: list[str]) -> None:
    parse_brokerctl(argv)


@pytest.mark.parametrize("item", COMMANDS, ids=[command_id(c) for c in COMMANDS])
def test_every_command_exists_and_parses(item, fab_tasks, fab_collection, tmp_path):
    name, where, argv = item
    program = argv[0]
    if program == "fab":
        check_fab(argv, fab_tasks, fab_collection)
    elif program == "ansible-playbook":
        check_ansible(argv, tmp_path)
    elif program == "brokerctl" or argv[:3] == ["python", "-m", "broker.cli"]:
        check_brokerctl(argv)
    else:
        pytest.fail(f"{name} {where}: no check for {argv}")


def test_the_commands_cover_every_program_and_the_new_fab_tasks():
    """The parametrized check above sees what it should (it would pass vacuously otherwise)."""
    programs = {argv[0] for _, _, argv in COMMANDS}
    assert programs == {"fab", "ansible-playbook", "brokerctl"}
    tasks = {argv[1] for _, _, argv in COMMANDS if argv[0] == "fab"}
    assert {"rolling-restart", "heal-region", "isolate-region", "drill", "runbook"} <= tasks
    assert {"failover", "failback", "status", "verify", "stop-region", "start-region"} <= tasks


# --- the runner, with fixture runbooks of harmless commands -------------------------------------

HELPER = """\
import pathlib, sys
action, *rest = sys.argv[1:]
if action == "mark":
    pathlib.Path(rest[0]).write_text("ran")
    print("marked", rest[0])
elif action == "say":
    print(" ".join(rest))
elif action == "fail":
    print(" ".join(rest[1:]))
    sys.exit(int(rest[0]))
"""


def step_md(
    n: int,
    title: str,
    command: str,
    verify: str,
    *,
    destructive: bool = False,
    expect: str = "",
    advice: str = "Call the on-call lead.",
) -> str:
    expect_block = f"```expect\n{expect}\n```\n\n" if expect else ""
    return (
        f"## Step {n}: {title}\n\n"
        f"Destructive: {'yes' if destructive else 'no'}\n\n"
        f"**Current state:** before {title}.\n\n"
        f"**Desired state:** after {title}.\n\n"
        f"```command\n{command}\n```\n\n"
        f"```verify\n{verify}\n```\n\n"
        f"{expect_block}"
        f"**If it fails:** {advice}\n\n"
    )


@pytest.fixture
def book(tmp_path):
    """write(*steps) -> (Runbook, params): a runbook file in tmp_path, with {dir} and a
    helper script its commands call (`python {dir}/helper.py mark|say|fail ...`)."""
    (tmp_path / "helper.py").write_text(HELPER)

    def write(*steps: str) -> tuple[rb.Runbook, dict[str, str]]:
        text = (
            "# Fixture runbook\n\nA runbook of harmless commands.\n\n"
            "## Parameters\n\n- `{dir}`: a scratch directory\n\n" + "".join(steps)
        )
        path = tmp_path / "fixture.md"
        path.write_text(text)
        runbook = rb.load(str(path))
        params = rb.resolve_parameters(
            runbook, {"dir": str(tmp_path)}, inventory=tmp_path / "hosts.yml"
        )
        return runbook, params

    return write


def mark(name: str) -> str:
    return f"python {{dir}}/helper.py mark {{dir}}/{name}.ran"


def say(text: str) -> str:
    return f"python {{dir}}/helper.py say {text}"


def run(runbook, params, tmp_path, **kw) -> tuple[dict, str]:
    out = io.StringIO()
    record = rb.execute(
        runbook,
        params,
        console=Console(file=out, width=200),
        audit_directory=tmp_path / "audit",
        **kw,
    )
    return record, out.getvalue()


def ran(tmp_path) -> list[str]:
    return sorted(p.stem for p in tmp_path.glob("*.ran"))


def the_audit(tmp_path) -> dict:
    files = sorted((tmp_path / "audit").glob("*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


def test_the_run_stops_at_the_first_failing_verification_and_prints_the_advice(book, tmp_path):
    runbook, params = book(
        step_md(1, "first", mark("s1"), say("all good"), expect="all good"),
        step_md(
            2,
            "second",
            mark("s2"),
            "python {dir}/helper.py fail 3 the disk is full",
            advice="Free space on {dir} and resume with --from-step 2.",
        ),
        step_md(3, "third", mark("s3"), say("fine")),
    )
    record, out = run(runbook, params, tmp_path)
    assert ran(tmp_path) == ["s1", "s2"]  # step 3 never ran
    assert record["outcome"].startswith("failed at step 2: verify"), record["outcome"]
    assert f"Free space on {tmp_path} and resume with --from-step 2." in " ".join(out.split())
    audit = the_audit(tmp_path)
    assert audit == {k: v for k, v in record.items() if k != "auditFile"}
    assert [s["status"] for s in audit["steps"]] == ["done", "failed"]
    failed = audit["steps"][1]
    assert [(c["phase"], c["exit"]) for c in failed["commands"]] == [("command", 0), ("verify", 3)]
    assert "the disk is full" in failed["commands"][1]["outputTail"]
    assert failed["advice"] == f"Free space on {tmp_path} and resume with --from-step 2."


def test_an_expected_text_missing_from_the_verification_fails_the_step(book, tmp_path):
    runbook, params = book(
        step_md(1, "count", mark("s1"), say("3 brokers answer"), expect="4 brokers answer"),
        step_md(2, "after", mark("s2"), say("ok")),
    )
    record, _ = run(runbook, params, tmp_path)
    assert ran(tmp_path) == ["s1"]
    assert record["outcome"].startswith("failed at step 1"), record["outcome"]
    assert record["steps"][0]["missingExpected"] == ["4 brokers answer"]


def test_a_destructive_step_without_a_terminal_or_yes_runs_nothing_at_all(book, tmp_path):
    runbook, params = book(
        step_md(1, "look", mark("s1"), say("ok")),
        step_md(2, "change", mark("s2"), say("ok"), destructive=True),
    )
    record, out = run(runbook, params, tmp_path, confirm=None, yes=False)
    assert ran(tmp_path) == []  # not even the harmless step 1
    assert record["outcome"].startswith("refused: step 2 changes the cluster")
    assert "nothing was run" in out
    assert the_audit(tmp_path)["steps"] == []


def test_a_declined_destructive_step_stops_the_run_there_and_yes_runs_all(book, tmp_path):
    runbook, params = book(
        step_md(1, "look", mark("s1"), say("ok")),
        step_md(2, "change", mark("s2"), say("ok"), destructive=True),
        step_md(3, "after", mark("s3"), say("ok")),
    )
    asked: list[str] = []
    record, _ = run(runbook, params, tmp_path, confirm=lambda q: asked.append(q) or False)
    assert ran(tmp_path) == ["s1"]
    assert record["outcome"] == "stopped at step 2: not confirmed"
    assert len(asked) == 1 and f"{tmp_path}/s2.ran" in asked[0], asked
    assert record["steps"][-1]["commands"] == []

    record, _ = run(runbook, params, tmp_path, yes=True, confirm=lambda q: pytest.fail(q))
    assert record["outcome"] == "completed"
    assert ran(tmp_path) == ["s1", "s2", "s3"]
    assert record["steps"][1]["confirmed"] == "--yes"


def test_a_dry_run_shows_the_commands_filled_in_and_runs_nothing(book, tmp_path):
    runbook, params = book(
        step_md(1, "look", mark("s1"), say("ok")),
        step_md(2, "change", mark("s2"), say("ok"), destructive=True, expect="ok"),
    )
    record, out = run(runbook, params, tmp_path, dry_run=True)
    assert ran(tmp_path) == []
    assert not (tmp_path / "audit").exists()
    assert record["outcome"] == "dry run"
    flat = " ".join(out.split())
    assert f"$ python {tmp_path}/helper.py mark {tmp_path}/s2.ran" in flat
    assert "DESTRUCTIVE" in out and "DRY RUN: 2 steps shown, nothing was run" in flat


def test_the_audit_record_holds_every_command_with_exit_output_and_duration(book, tmp_path):
    runbook, params = book(
        step_md(1, "one", mark("s1"), say("first output")),
        step_md(2, "two", f"{say('second')}\n{mark('s2')}", say("checked {dir}")),
    )
    record, _ = run(runbook, params, tmp_path)
    assert record["outcome"] == "completed"
    audit = the_audit(tmp_path)
    assert audit["runbook"] == "fixture" and audit["procedure"] == "runbook-fixture"
    assert audit["operator"] and audit["controller"]
    assert audit["parameters"]["dir"] == str(tmp_path)
    assert audit["options"] == {"dryRun": False, "yes": False, "fromStep": 1}
    assert audit["startedAt"] <= audit["finishedAt"]
    commands = [c for s in audit["steps"] for c in s["commands"]]
    assert [(c["phase"], c["exit"]) for c in commands] == [
        ("command", 0),
        ("verify", 0),
        ("command", 0),
        ("command", 0),
        ("verify", 0),
    ]
    assert commands[0]["command"] == f"python {tmp_path}/helper.py mark {tmp_path}/s1.ran"
    assert commands[0]["argv"][0] == sys.executable  # python is this interpreter
    assert commands[1]["outputTail"] == "first output"
    assert commands[4]["outputTail"] == f"checked {tmp_path}"
    assert all(c["seconds"] >= 0 for c in commands)
    assert all(s["seconds"] >= sum(c["seconds"] for c in s["commands"]) for s in audit["steps"])


def test_a_run_resumes_from_a_step(book, tmp_path):
    runbook, params = book(
        step_md(1, "one", mark("s1"), say("ok")),
        step_md(2, "two", mark("s2"), say("ok")),
    )
    record, _ = run(runbook, params, tmp_path, from_step=2)
    assert ran(tmp_path) == ["s2"] and record["outcome"] == "completed"
    with pytest.raises(rb.RunbookError, match="has steps 1 to 2, not 3"):
        run(runbook, params, tmp_path, from_step=3)


def test_a_command_that_cannot_start_fails_its_step(book, tmp_path):
    runbook, params = book(step_md(1, "missing", "no-such-program-here --now", say("ok")))
    record, _ = run(runbook, params, tmp_path)
    assert record["outcome"].startswith("failed at step 1: command")
    assert record["steps"][0]["commands"][0]["exit"] == 127


# --- parse errors, names and parameters --------------------------------------------------------


def test_parse_errors_name_the_file_line_and_what_is_missing(tmp_path):
    no_verify = (
        "# T\n\n## Step 1: look\n\nDestructive: no\n\n**Current state:** a\n\n"
        "**Desired state:** b\n\n```command\nfab status\n```\n\n**If it fails:** c\n"
    )
    with pytest.raises(rb.RunbookError, match=r"x\.md:3: step 1 \(look\) lacks a ```verify"):
        rb.parse(no_verify, path="x.md")
    with pytest.raises(rb.RunbookError, match="Destructive must be yes or no, not 'maybe'"):
        rb.parse(no_verify.replace("Destructive: no", "Destructive: maybe"), path="x.md")
    complete = no_verify.replace("**If it", "```verify\nfab verify\n```\n\n**If it")
    assert len(rb.parse(complete).steps) == 1
    with pytest.raises(rb.RunbookError, match=r"x\.md:3: step 2 should be step 1"):
        rb.parse(complete.replace("Step 1", "Step 2"), path="x.md")
    with pytest.raises(rb.RunbookError, match="no steps"):
        rb.parse("# Only a title\n\nprose\n", path="x.md")


def test_the_bold_and_plain_label_forms_parse_alike():
    text = (
        "# T\n\n## Step 1: look\n\n**Destructive:** yes\n\nCurrent state: a\nwrapped\n\n"
        "**Desired state**: b\n\n**Command:** say it\n\n```command\nfab status \\\n"
        "  --inventory x\n# a comment\n```\n\n**Verify:**\n\n```verify\nfab verify\n```\n\n"
        "**If it fails:**\n- one\n- two\n\n## Notes\n\nnot a step\n"
    )
    step = rb.parse(text).steps[0]
    assert step.destructive is True
    assert (step.current, step.desired) == ("a wrapped", "b")
    assert step.commands == ("fab status --inventory x",)
    assert step.if_fails == "- one\n- two"
    assert step.notes == {"command": "say it"}


def test_unknown_runbooks_and_missing_parameters_are_named():
    with pytest.raises(rb.RunbookError, match=r"no runbook 'fail-over'.*available: failback"):
        rb.load("fail-over")
    failover = rb.load("failover")
    with pytest.raises(rb.MissingParameters, match=r"\{lost_region\}: give --lost-region"):
        rb.resolve_parameters(failover, {}, inventory=LOCAL_INVENTORY)
    with pytest.raises(rb.RunbookError, match="no region 'region9' in the inventory"):
        rb.resolve_parameters(failover, {"lost_region": "region9"}, inventory=LOCAL_INVENTORY)
    with pytest.raises(rb.RunbookError, match=r"\{management\}.* cannot be read"):
        rb.resolve_parameters(rb.load("verify-placement"), {}, inventory="/nonexistent.yml")


def test_fab_is_this_virtualenvs_with_the_runbooks_inventory():
    argv = rb.resolve_program(["fab", "status"], "/inv.yml")
    assert argv == [str(FAB), "status", "--inventory", "/inv.yml"]
    argv = rb.resolve_program(["fab", "status", "--inventory", "other.yml"], "/inv.yml")
    assert argv[-2:] == ["--inventory", "other.yml"]
    # a value substituted into a placeholder is one argument, whatever it holds
    assert rb.render("brokerctl get {key}", {"key": "a b; rm -rf /"}) == [
        "brokerctl",
        "get",
        "a b; rm -rf /",
    ]


def test_fab_runbook_errors_refusals_and_dry_run(tmp_path, book):
    unknown = fab("runbook", "nosuch")
    assert unknown.returncode == 2
    assert "no runbook 'nosuch'" in unknown.stderr and "verify-placement" in unknown.stderr
    missing = fab("runbook", "failover", "--inventory", str(LOCAL_INVENTORY))
    assert missing.returncode == 2 and "{lost_region}: give --lost-region" in missing.stderr

    shown = fab(
        "runbook", "failover", "--lost-region", "region1", "--dry-run",
        "--inventory", str(LOCAL_INVENTORY),
    )  # fmt: skip
    assert shown.returncode == 0, shown.stdout + shown.stderr
    flat = " ".join(shown.stdout.split())
    failover = f"fab failover --lost-region region1 --yes --api 8.6 --inventory {LOCAL_INVENTORY}"
    assert f"$ {failover}" in flat
    assert "DRY RUN: 4 steps shown, nothing was run (destructive steps: 3)" in flat

    runbook, _ = book(
        step_md(1, "look", mark("s1"), say("ok")),
        step_md(2, "change", mark("s2"), say("ok"), destructive=True),
    )
    env = {"BROKER_OPS_AUDIT_DIR": str(tmp_path / "audit")}
    refused = fab("runbook", str(runbook.path), "--param", f"dir={tmp_path}", env=env)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "no terminal to confirm on and no --yes; nothing was run" in " ".join(
        refused.stdout.split()
    )
    assert ran(tmp_path) == []
    assert the_audit(tmp_path)["outcome"].startswith("refused")


# --- a real run against real brokers -----------------------------------------------------------


def test_fab_runbook_verify_placement_against_a_real_cluster(dual, tmp_path):
    audit_dir = tmp_path / "audit"
    done = fab(
        "runbook", "verify-placement", "--inventory", str(dual.inventory),
        env={"BROKER_OPS_AUDIT_DIR": str(audit_dir)},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verify-placement: completed" in done.stdout
    files = list(audit_dir.glob("*-runbook-verify-placement-cluster.json"))
    assert len(files) == 1, list(audit_dir.iterdir())
    record = json.loads(files[0].read_text())
    assert record["outcome"] == "completed"
    assert record["inventory"] == str(dual.inventory)
    params = record["parameters"]
    assert (params["cluster_size"], params["partitions"], params["replication_factor"]) == (
        "4",
        "4",
        "4",
    )
    assert params["management"] == ",".join(b.management_url for b in dual.cluster.brokers)
    assert [(s["number"], s["status"]) for s in record["steps"]] == [
        (1, "done"),
        (2, "done"),
        (3, "done"),
    ]
    for s in record["steps"]:
        assert [c["exit"] for c in s["commands"]] == [0, 0], s
        assert s["seconds"] > 0
    layout, members, running = (s["commands"] for s in record["steps"])
    assert "placement ok (layout): 4 partitions" in layout[0]["outputTail"]
    assert record["steps"][0]["expect"] == ['"ok": true']  # found in the whole output
    assert "missingExpected" not in record["steps"][0]
    assert layout[1]["outputLines"] > 40  # the record keeps only the tail
    assert "Pending change: none" in members[1]["outputTail"]
    assert members[0]["argv"][0] == str(FAB)
    assert running[0]["command"] == f"fab verify --inventory {dual.inventory}"
    assert "verify dual-region: completed" in running[0]["outputTail"]
    assert "placement ok (runtime): 4 partitions" in running[1]["outputTail"]


def test_fab_runbook_failover_after_a_real_region_loss(dual, tmp_path):
    """The destructive runbook, end to end: its expected texts match what the tools print."""
    dual.lose("region1")
    audit_dir = tmp_path / "audit"
    done = fab(
        "runbook", "failover", "--lost-region", "region1", "--yes",
        "--inventory", str(dual.inventory), env={"BROKER_OPS_AUDIT_DIR": str(audit_dir)},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    [path] = audit_dir.glob("*-runbook-failover-region1.json")
    record = json.loads(path.read_text())
    assert record["outcome"] == "completed"
    assert [s["status"] for s in record["steps"]] == ["done"] * 4
    failover = record["steps"][2]
    assert failover["destructive"] is True and failover["confirmed"] == "--yes"
    # the nested `fab failover` wrote its own record; the runbook's points to it
    [nested] = failover["commands"][0]["auditRecords"]
    assert json.loads(Path(nested).read_text())["outcome"] == "completed"
    assert record["steps"][3]["expect"] == ["region1 DISABLED", "region0 ENABLED"]
    assert set(members(dual.api_doc(0))) == {0, 2}  # region1 is out of the cluster
