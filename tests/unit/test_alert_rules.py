"""The Prometheus alert rules and the Grafana dashboard in monitoring/.

promtool checks the rules and runs their unit tests (broker-alerts.test.yml), which must
cover every alert both firing and not firing; every metric the rules and the dashboard
use must be one the broker exports (a rendered BrokerMetrics), so a renamed metric
cannot leave a dashboard panel or an alert silently empty.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from broker.metrics import BrokerMetrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "monitoring" / "prometheus" / "broker-alerts.yml"
RULE_TESTS = ROOT / "monitoring" / "prometheus" / "broker-alerts.test.yml"
DASHBOARD = ROOT / "monitoring" / "grafana" / "broker-dashboard.json"
# Series Prometheus makes itself for every target (not the broker's).
PROMETHEUS_OWN = {"up"}
OUR_PREFIXES = ("broker_", "zeebe_", "atomix_")


def require_tool(name: str) -> str:
    """The path of a tool of Debian's prometheus package. Missing: a failure for root
    (``make setup`` installs it), a skip for others (they cannot install it)."""
    path = shutil.which(name)
    if path:
        return path
    if os.geteuid() == 0:
        pytest.fail(f"{name} is missing: run `make setup` as root (Debian package prometheus)")
    reason = f"{name} is missing and only root can install it (`make setup` as root)"
    print(f"skipped: {reason}")
    pytest.skip(reason)


def exported_names() -> set[str]:
    """Every series name a broker's /actuator/prometheus can carry, from a rendering."""
    text = BrokerMetrics().render().decode()
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"}
        elif kind == "counter":
            base = name.removesuffix("_total")
            names |= {f"{base}_total", f"{base}_created"}
        else:
            names.add(name)
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana query) refers to."""
    no_strings = re.sub(r'"[^"]*"', '""', expr)
    tokens = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", no_strings))
    return {t for t in tokens if t.startswith(OUR_PREFIXES) or t in PROMETHEUS_OWN}


def alert_rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    for v in board["templating"]["list"]:
        if v["type"] == "query":
            exprs.append(v["query"]["query"] if isinstance(v["query"], dict) else v["query"])
    return exprs


def test_promtool_accepts_the_rules():
    result = subprocess.run(
        [require_tool("promtool"), "check", "rules", str(RULES)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass_and_cover_every_alert_both_ways():
    fired, quiet = set(), set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {r["alert"] for r in alert_rules()}
    assert alerts - fired == set(), "alerts never shown firing in broker-alerts.test.yml"
    assert alerts - quiet == set(), "alerts never shown quiet in broker-alerts.test.yml"
    result = subprocess.run(
        [require_tool("promtool"), "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_severity_for_and_annotations():
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_the_rules_use_only_metrics_the_broker_exports():
    exported = exported_names() | PROMETHEUS_OWN
    for rule in alert_rules():
        used = metric_names(rule["expr"])
        assert used, rule["alert"]
        assert used <= exported, (rule["alert"], used - exported)


def test_the_dashboard_uses_only_metrics_the_broker_exports():
    exported = exported_names() | PROMETHEUS_OWN
    exprs = dashboard_exprs()
    assert len(exprs) >= 15
    for expr in exprs:
        used = metric_names(expr)
        assert used, expr
        assert used <= exported, (expr, used - exported)


def test_the_name_check_would_catch_a_renamed_metric():
    assert "broker_partition_role" not in exported_names()  # renamed to atomix_role
    assert metric_names('max by (partition) (broker_partition_role{job="broker"}) < 3') == {
        "broker_partition_role"
    }


def test_the_dashboard_is_a_grafana_model_with_datasource_region_and_instance_variables():
    board = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"region", "instance"} <= set(variables)
    titles = " ".join(p["title"].lower() for p in board["panels"])
    for topic in (
        "throughput",
        "commit latency",
        "leaders per broker",
        "health",
        "replication lag",
        "exporter lag",
        "disk free",
        "compaction",
        "certificate",
    ):
        assert topic in titles, topic
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for p in board["panels"]:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
            assert 'region=~"$region"' in t["expr"], (p["title"], t["expr"])
