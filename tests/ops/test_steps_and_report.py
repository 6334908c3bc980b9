"""The step machinery and the report, without a cluster."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pytest
from rich.console import Console

from broker.ops.api import ApiError, ManagementApi, count_operations, format_operations
from broker.ops.report import audit_record, print_summary, write_audit
from broker.ops.steps import (
    ask_or_refuse,
    done,
    failed,
    plan,
    run_procedure,
    skipped,
    step,
)


@step("look")
def look(state: dict):
    return skipped("it is there") if state.get("there") else done("it was not there", "put it")


@step("refuse")
def refuse():
    return failed("the region answers", "refused")


@step("call an API that is down")
def call_down_api():
    ManagementApi("http://127.0.0.1:9", timeout=0.5).cluster()


def test_a_step_is_timed_and_named_and_an_api_error_fails_it_with_its_message():
    r = look({})
    assert (r.name, r.status, r.saw, r.did) == ("look", "done", "it was not there", "put it")
    assert r.seconds >= 0 and look.title == "look"
    down = call_down_api()
    assert down.status == "failed" and "not reachable" in down.saw
    assert "GET http://127.0.0.1:9/actuator/cluster" in down.saw


def test_a_procedure_stops_at_the_first_failure_or_after_until():
    state = {"there": True}
    steps = plan((look, lambda: look(state)), (refuse, refuse), (look, lambda: look(state)))
    assert [r.status for r in run_procedure(steps)] == ["skipped", "failed"]
    assert [r.name for r in run_procedure(steps, until="look")] == ["look"]
    with pytest.raises(ValueError, match="no step 'nope'"):
        run_procedure(steps, until="nope")


def test_destructive_steps_are_refused_unless_confirmed():
    assert ask_or_refuse(True, None)("go?") is True
    assert ask_or_refuse(False, None)("go?") is False
    assert ask_or_refuse(False, lambda q: q == "go?")("go?") is True


def test_the_summary_and_the_audit_record(tmp_path):
    results = [look({}), refuse()]
    out = io.StringIO()
    print_summary(results, 3, "failover of region1", Console(file=out, width=160))
    text = out.getvalue()
    assert "failover of region1: failed at refuse" in text
    assert "run the same command again" in text

    started = datetime.now(UTC)
    record = audit_record("failover", "region1", results, 3, started_at=started)
    first, second = write_audit(record, tmp_path), write_audit(record, tmp_path)
    assert first != second  # two runs in one second keep two records
    saved = json.loads(first.read_text())
    assert saved["outcome"] == "failed at refuse"
    assert [s["name"] for s in saved["steps"]] == ["look", "refuse"]


def test_the_apis_plan_reads_well():
    ops = [
        {
            "operation": "PARTITION_FORCE_RECONFIGURE",
            "brokerId": 0,
            "partitionId": 1,
            "brokers": [0, 2],
        },
        {"operation": "BROKER_FORCE_REMOVE", "brokerId": 3},
        {"operation": "BROKER_FORCE_REMOVE", "brokerId": 1},
    ]
    lines = format_operations(ops)
    assert "partition 1 -> replicas 0,2" in lines[0]
    assert count_operations(ops) == (
        "1 PARTITION_FORCE_RECONFIGURE, 2 BROKER_FORCE_REMOVE (brokers 1,3)"
    )
    assert str(ApiError("POST", "http://h/x", "refusing", 400)) == (
        "POST http://h/x answered HTTP 400: refusing"
    )
