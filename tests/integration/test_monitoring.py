"""A real Prometheus (Debian's /usr/bin/prometheus) scrapes a running cluster with the
shipped alert rules: quiet while the cluster is healthy; BrokerRegionUnreachable firing,
naming the region, once every broker of one region is killed.

Only the `for:` of BrokerRegionUnreachable is shortened (in a copy of the rules), so the
test waits seconds, not the minute the shipped rule waits.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
import yaml

from broker.demo.localcluster import LocalCluster, free_ports
from tests.helpers import wait_until
from tests.integration.test_cluster import FAST
from tests.unit.test_alert_rules import RULES, alert_rules, require_tool

SIZE, PARTITIONS, RF = 4, 2, 4
INTERVAL = "500ms"  # scrape and rule evaluation


def get(base: str, path: str, **query) -> dict | None:
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def query(base: str, promql: str) -> list[dict]:
    doc = get(base, "/api/v1/query", query=promql)
    return doc["data"]["result"] if doc and doc.get("status") == "success" else []


def alerts(base: str) -> list[dict]:
    doc = get(base, "/api/v1/alerts")
    return doc["data"]["alerts"] if doc else []


@pytest.fixture
def cluster(tmp_path):
    c = LocalCluster(
        str(tmp_path / "cluster"), size=SIZE, partitions=PARTITIONS, replication_factor=RF,
        overrides=FAST,
    )  # fmt: skip
    try:
        yield c
    finally:
        c.stop_all()


@pytest.fixture
def prometheus(tmp_path, cluster):
    """Prometheus on 127.0.0.1 scraping every broker of ``cluster``; its base URL."""
    binary = require_tool("prometheus")
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == "BrokerRegionUnreachable":
                rule["for"] = "1s"
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(yaml.safe_dump(rules, sort_keys=False))
    targets = [
        {
            "targets": [f"127.0.0.1:{cluster.ports[i]['management']}"],
            "labels": {"region": f"region{i % 2}", "broker": str(i)},
        }
        for i in range(SIZE)
    ]
    config = {
        "global": {"scrape_interval": INTERVAL, "evaluation_interval": INTERVAL},
        "rule_files": [str(rules_file)],
        "scrape_configs": [
            {
                "job_name": "broker",
                "metrics_path": "/actuator/prometheus",
                "scrape_timeout": INTERVAL,
                "static_configs": targets,
            }
        ],
    }
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_ports(1)[0]
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def ready():
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            return get(base, "/api/v1/status/buildinfo")

        wait_until(ready, timeout=30, interval=0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def test_alerts_quiet_on_a_healthy_cluster_and_region_loss_fires_naming_the_region(
    cluster, prometheus
):
    started = time.monotonic()
    cluster.start()
    cluster.wait_leaders()
    base = prometheus

    def scraped_healthy():
        up = query(base, 'sum(up{job="broker"})')
        leaders = query(base, 'count(atomix_role{job="broker"} == 3)')
        healthy = query(base, 'sum(zeebe_health{job="broker"})')
        committed = query(base, 'count(zeebe_log_appender_last_committed_position{job="broker"})')
        return (
            up and float(up[0]["value"][1]) == SIZE
            and leaders and float(leaders[0]["value"][1]) == PARTITIONS
            and healthy and float(healthy[0]["value"][1]) == SIZE * PARTITIONS
            and committed and float(committed[0]["value"][1]) == PARTITIONS
        )  # fmt: skip

    wait_until(scraped_healthy, timeout=30, interval=0.2)
    # each leader sees its RF - 1 followers
    lag = query(base, 'broker_replication_lag_entries{job="broker"}')
    assert len(lag) == PARTITIONS * (RF - 1), lag

    def rules_evaluated():
        doc = get(base, "/api/v1/rules")
        rules = [r for g in doc["data"]["groups"] for r in g["rules"]] if doc else []
        bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] == "err"]
        assert not bad, bad
        evaluated = [r for r in rules if not r["lastEvaluation"].startswith("0001")]
        return len(evaluated) == len(alert_rules())

    wait_until(rules_evaluated, timeout=20, interval=0.2)
    # then nothing pending or firing on a healthy cluster (an election may still settle)
    wait_until(lambda: not alerts(base), timeout=20, interval=0.2)

    lost = [i for i in range(SIZE) if i % 2 == 1]  # region1
    killed_at = time.monotonic()
    for i in lost:
        cluster.kill(i)

    def region_alert():
        return [
            a
            for a in alerts(base)
            if a["labels"]["alertname"] == "BrokerRegionUnreachable" and a["state"] == "firing"
        ]

    firing = wait_until(region_alert, timeout=30, interval=0.2)
    assert [a["labels"]["region"] for a in firing] == ["region1"], firing
    assert firing[0]["labels"]["severity"] == "critical"
    assert "region1" in firing[0]["annotations"]["summary"]
    print(
        f"region alert firing {time.monotonic() - killed_at:.1f}s after the kill; "
        f"test {time.monotonic() - started:.1f}s"
    )
