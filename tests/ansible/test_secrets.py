"""A vault-encrypted management token in the local inventory: in use, and in no output.

One cluster (a private copy of inventories/local: 8 brokers on 127.0.0.1, free
ports) is deployed with ``broker_management_token`` written as an ``!vault``
value, ``ANSIBLE_VAULT_PASSWORD_FILE`` pointing at a password made for the test.
The management API then answers 401 without the token, so every tool that works
afterwards proves it decrypted the vault value. Every output is kept and
searched for the token: ``deploy.yml --check --diff -vvv`` (after a real deploy,
with a changed setting, so that the config template has a diff to show),
a runbook run (its steps run ``fab status``, ``fab verify`` and ``brokerctl``
with the token), ``fab stop-region``, ``playbooks/failover.yml -vvv``, ``fab
failover`` and ``fab failback``, the audit records and the brokers' logs.

Bounded: one deploy, one check run and a handful of fast steps.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from broker.demo.localcluster import wait_for

from .conftest import (
    ROOT,
    LocalInventory,
    Run,
    ansible_env,
    make_local_inventory,
    pid_alive,
    tool,
)

pytestmark = pytest.mark.slow

FAB = Path(sys.executable).with_name("fab")


def vault_encrypt(password_file: Path, name: str, value: str) -> str:
    """``ansible-vault encrypt_string`` output: ``name: !vault |`` and the ciphertext."""
    proc = subprocess.run(
        [
            tool("ansible-vault"),
            "encrypt_string",
            "--vault-password-file",
            str(password_file),
            "--name",
            name,
            value,
        ],
        cwd=ROOT,
        env=ansible_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "!vault" in proc.stdout and value not in proc.stdout, proc.stdout
    return proc.stdout


class Outputs:
    """Every command's output, kept to be searched for the token."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.runs: list[Run] = []

    def run(self, *argv: str, timeout: float = 900) -> Run:
        start = time.monotonic()
        proc = subprocess.run(
            list(argv),
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
        run = Run(list(argv), proc.returncode, proc.stdout, time.monotonic() - start)
        self.runs.append(run)
        return run

    def fab(self, inventory: Path, *args: str) -> Run:
        return self.run(str(FAB), "--inventory", str(inventory), *args)

    def playbook(self, inventory: Path, name: str, *args: str) -> Run:
        return self.run(tool("ansible-playbook"), "-i", str(inventory), f"playbooks/{name}", *args)


def management(inv: LocalInventory, host: str, path: str, token: str | None) -> int:
    try:
        with inv.open(host, path, token) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def files_holding(root: Path, text: str, pattern: str) -> list[Path]:
    return [p for p in root.rglob(pattern) if p.is_file() and text in p.read_text(errors="replace")]


@pytest.fixture
def vaulted(tmp_path, broker_sources):
    """The local inventory copy with its token vault-encrypted; stopped at the end."""
    inv = make_local_inventory(tmp_path, broker_sources)
    password = tmp_path / "vault-pass"
    password.write_text(secrets.token_urlsafe(24) + "\n")
    token = "tok-" + secrets.token_hex(20)
    group_vars = inv.path / "group_vars" / "brokers.yml"
    group_vars.write_text(
        group_vars.read_text() + vault_encrypt(password, "broker_management_token", token)
    )
    assert token not in group_vars.read_text()
    audit = tmp_path / "audit"
    env = ansible_env(
        ANSIBLE_VAULT_PASSWORD_FILE=str(password),
        BROKER_OPS_AUDIT_DIR=str(audit),
        COLUMNS="200",
    )
    env.pop("BROKER_MANAGEMENT_TOKEN", None)
    try:
        yield inv, token, Outputs(env), audit
    finally:
        inv.stop_all()


def set_snapshot_period(inv: LocalInventory, value: str) -> None:
    hosts = inv.path / "hosts.yml"
    doc = yaml.safe_load(hosts.read_text())
    doc["all"]["vars"]["broker_snapshot_period"] = value
    hosts.write_text(yaml.safe_dump(doc, sort_keys=False))


@pytest.mark.timeout(2400)
def test_a_vaulted_token_is_used_and_never_shown(vaulted, record_property):
    inv, token, out, audit = vaulted

    # --- deploy: the vault value is decrypted into every broker's config --------------
    run = out.playbook(inv.path, "deploy.yml")
    assert run.returncode == 0, str(run)
    for host in inv.hosts:
        assert yaml.safe_load(inv.config(host).read_text())["management"]["token"] == token
    # and the management API wants it: what works below used the decrypted value
    assert management(inv, "brk-r0-h0", "/actuator/cluster", None) == 401
    assert management(inv, "brk-r0-h0", "/actuator/cluster", token) == 200

    # --- check mode with a changed setting: the config template has a diff to show ----
    set_snapshot_period(inv, "7m")
    run = out.playbook(inv.path, "deploy.yml", "--check", "--diff", "-vvv")
    assert run.returncode == 0, str(run)
    assert "TASK [broker : Write the broker configuration]" in run.output, str(run)
    assert run.changed > 0, str(run)  # the template would change: a diff existed
    assert "snapshotPeriod: 5m" in inv.config("brk-r0-h0").read_text()  # check mode
    assert "snapshotPeriod: 7m" not in run.output  # the config's diff is not shown
    assert "hidden due to the fact that 'no_log: true'" in run.flat().replace("''", "'")

    # --- a runbook (fab status, fab verify and brokerctl, as its steps) ---------------
    run = out.fab(inv.path, "runbook", "verify-placement", "--yes")
    assert run.returncode == 0, str(run)
    for command in ("fab status", "fab verify", "brokerctl --management"):
        assert command in run.output, str(run)

    # --- lose region1, fail over (the playbook, then fab: idempotent), fail back ------
    run = out.fab(inv.path, "stop-region", "--region", "region1", "--yes")
    assert run.returncode == 0, str(run)
    region1 = [h for h in inv.hosts if h.startswith("brk-r1")]
    wait_for(lambda: not any(pid_running(inv, h) for h in region1), 60, "region1 to stop")
    run = out.playbook(
        inv.path,
        "failover.yml",
        "-vvv",
        "-e",
        "broker_lost_region=region1",
        "-e",
        "broker_failover_confirm=region1",
    )
    assert run.returncode == 0, str(run)
    assert "failover of region1: completed" in run.output, str(run)
    run = out.fab(inv.path, "failover", "--lost-region", "region1", "--yes")
    assert run.returncode == 0, str(run)
    failback = out.fab(inv.path, "failback", "--region", "region1", "--yes")

    # --- the token is in no output, no audit record, no log ----------------------------
    for run in out.runs:
        assert token not in run.output, f"the token is in the output of {' '.join(run.args)}"
    records = sorted(audit.glob("*.json"))
    procedures = {json.loads(p.read_text())["procedure"] for p in records}
    assert {"failover", "runbook-verify-placement"} <= procedures, procedures
    assert files_holding(audit, token, "*.json") == []
    logs = list(inv.var.rglob("*.log*"))
    assert logs, f"no broker logs under {inv.var}"
    assert files_holding(inv.var, token, "*.log*") == []
    record_property("seconds", {" ".join(r.args[1:3]): round(r.seconds, 1) for r in out.runs})
    # last: the failback completes on the local inventory (its export sinks are shared)
    assert failback.returncode == 0, str(failback)
    assert management(inv, "brk-r1-h0", "/actuator/cluster", token) == 200


def pid_running(inv: LocalInventory, host: str) -> bool:
    pid = inv.pids().get(host)
    return pid is not None and pid_alive(pid)
