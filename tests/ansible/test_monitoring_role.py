"""roles/broker_monitoring on this machine (connection local, files under tmp_path):
off by default; when enabled it installs the rules and a scrape job that promtool
accepts, naming every broker of the inventory with its region and node id; a re-run
changes nothing; check mode changes nothing."""

from __future__ import annotations

import getpass
import grp
import json
import os
import subprocess

import yaml

from tests.ansible.conftest import RECAP, ROOT, ansible_env, tool
from tests.unit.test_alert_rules import RULES, require_tool

INVENTORY = ROOT / "inventories" / "local" / "hosts.yml"


def run(tmp_path, *extra: str, enabled: bool = True) -> tuple[str, dict]:
    playbook = tmp_path / "monitoring.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "Broker monitoring",
                    "hosts": "localhost",
                    "gather_facts": False,
                    "roles": ["broker_monitoring"],
                }
            ]
        )
    )
    variables = {
        "ansible_connection": "local",
        "ansible_python_interpreter": str(ROOT / ".venv" / "bin" / "python"),
        "broker_monitoring_enabled": enabled,
        "broker_monitoring_rules_dir": str(tmp_path / "rules"),
        "broker_monitoring_scrape_dir": str(tmp_path / "scrape.d"),
        "broker_monitoring_owner": getpass.getuser(),
        "broker_monitoring_group": grp.getgrgid(os.getgid()).gr_name,
    }
    result = subprocess.run(
        [
            tool("ansible-playbook"),
            "-i",
            str(INVENTORY),
            str(playbook),
            "-e",
            json.dumps(variables),
            *extra,
        ],
        capture_output=True,
        text=True,
        env=ansible_env(ANSIBLE_ROLES_PATH=str(ROOT / "roles")),
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    recap = {m["host"]: m.groupdict() for m in RECAP.finditer(result.stdout)}
    return result.stdout, recap["localhost"]


def test_off_by_default_installs_nothing(tmp_path):
    _, recap = run(tmp_path, enabled=False)
    assert recap["changed"] == "0"
    assert not (tmp_path / "rules").exists() and not (tmp_path / "scrape.d").exists()


def test_installs_rules_and_a_scrape_job_promtool_accepts_idempotently(tmp_path):
    _, check = run(tmp_path, "--check", "--diff")
    assert int(check["changed"]) == 4
    assert not (tmp_path / "rules").exists()  # check mode wrote nothing
    _, first = run(tmp_path)
    assert int(first["changed"]) == 4
    _, second = run(tmp_path)
    assert second["changed"] == "0"

    installed = tmp_path / "rules" / "broker-alerts.yml"
    assert installed.read_text() == RULES.read_text()
    targets = yaml.safe_load((tmp_path / "scrape.d" / "broker-targets.yml").read_text())
    inventory = yaml.safe_load(INVENTORY.read_text())
    regions = inventory["all"]["children"]["brokers"]["children"]
    expected = {
        str(h["broker_ordinal"] * 2 + r["vars"]["broker_region_id"]): r["vars"]["broker_region"]
        for r in regions.values()
        for h in r["hosts"].values()
    }
    assert {t["labels"]["broker"]: t["labels"]["region"] for t in targets} == expected
    job = yaml.safe_load((tmp_path / "scrape.d" / "broker-scrape-job.yml").read_text())
    assert job["scrape_configs"][0]["job_name"] == "broker"  # what the rules select

    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"rule_files": [str(tmp_path / "rules" / "*.yml")], **job}))
    result = subprocess.run(
        [require_tool("promtool"), "check", "config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 12 rules found" in result.stdout
