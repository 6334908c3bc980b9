"""broker.ops.load_inventory reads inventories as ansible-playbook does (ansible-core's
InventoryManager, VariableManager, vault and Templar). No cluster: only loading.

The vault-less cases run in a subprocess (fab, or python -c): Ansible keeps the vault
secrets it was given process-wide, so a load in this process after one with a
password could still decrypt.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from broker.ops import InventoryError, load_inventory
from broker.ops.report import REDACTED, audit_record, redact

PROJECT = Path(__file__).resolve().parents[2]
EXAMPLE = PROJECT / "inventories" / "example"
LOCAL = PROJECT / "inventories" / "local"
EXAMPLE_PASSWORD = PROJECT / "tests" / "data" / "example-vault-password.test-only.txt"
EXAMPLE_TOKEN = "example-management-token-replace-me"
VENV_BIN = Path(sys.executable).parent
VAULT_HINT = "set ANSIBLE_VAULT_PASSWORD_FILE or pass --vault-password-file"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_VAULT")}
    env.pop("BROKER_INVENTORY", None)
    env.update(COLUMNS="200", ANSIBLE_CONFIG=str(PROJECT / "ansible.cfg"), **extra)
    return env


def vault(*args: str) -> str:
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-vault"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        check=True,
    )
    return proc.stdout


def fab(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VENV_BIN / "fab"), *args],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(**env),
    )


def load_in_subprocess(path: Path, **env: str) -> subprocess.CompletedProcess:
    code = textwrap.dedent(
        f"""
        from broker.ops import InventoryError, load_inventory
        try:
            c = load_inventory({str(path)!r})
        except InventoryError as exc:
            print("InventoryError:", exc)
        else:
            print("loaded", len(c.brokers))
        """
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(**env),
    )


def brokers_inventory(directory: Path, hosts: dict, **all_vars) -> Path:
    """A small two-region inventory directory: hosts.yml, group_vars/, host_vars/."""
    regions: dict[str, dict] = {}
    for name, host_vars in hosts.items():
        region = "region1" if "-r1-" in name else "region0"
        regions.setdefault(
            region,
            {"vars": {"broker_region": region, "broker_region_id": int(region[-1])}, "hosts": {}},
        )["hosts"][name] = host_vars
    doc = {"all": {"vars": all_vars, "children": {"brokers": {"children": regions}}}}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "group_vars").mkdir(exist_ok=True)
    (directory / "host_vars").mkdir(exist_ok=True)
    (directory / "hosts.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return directory


FOUR = {
    f"brk-r{r}-h{o}": {"ansible_host": "127.0.0.1", "broker_ordinal": o}
    for o in (0, 1)
    for r in (0, 1)
}


# --- the repository's inventories --------------------------------------------------------


def test_the_example_directory_with_its_vaulted_token():
    cluster = load_inventory(EXAMPLE, vault_password_file=EXAMPLE_PASSWORD)
    assert len(cluster.brokers) == 8 and cluster.replication_factor == 4
    assert cluster.regions == ("region0", "region1")
    for b in cluster.brokers:  # parity ids from the ordinals
        assert b.node_id == b.vars["broker_ordinal"] * 2 + cluster.regions.index(b.region)
        assert b.vars["ansible_user"] == "deploy" and b.vars["ansible_become"] is True
        assert b.vars["broker_service_manager"] == "systemd" and not b.is_local
        assert b.config_path == "/etc/broker/broker.yaml"  # the role's default, rendered
    assert cluster.token == EXAMPLE_TOKEN
    assert all(b.vars["broker_management_token"] == EXAMPLE_TOKEN for b in cluster.brokers)
    # a secret from now on: in no repr, redacted from texts and audit records
    assert EXAMPLE_TOKEN not in repr(cluster) and EXAMPLE_TOKEN not in repr(cluster.brokers[0].vars)
    assert redact(f"Bearer {EXAMPLE_TOKEN}") == f"Bearer {REDACTED}"
    record = audit_record(
        "failover", "region1", [], 0, started_at=_now(), options={"t": EXAMPLE_TOKEN}
    )
    assert EXAMPLE_TOKEN not in str(record)


def test_the_local_inventory_renders_as_ansible_does(record_property):
    started = time.perf_counter()
    cluster = load_inventory(LOCAL)  # the directory, as ansible-playbook -i takes it
    record_property("load_seconds_local", round(time.perf_counter() - started, 3))
    assert [b.management_port for b in cluster.brokers] == [26800 + i for i in range(8)]
    first = cluster.brokers[0]
    assert first.vars["broker_data_dir"] == str(PROJECT / "var" / "local" / "brk-r0-h0" / "data")
    assert first.config_path == str(
        PROJECT / "var" / "local" / "brk-r0-h0" / "config" / "broker.yaml"
    )
    assert first.vars["broker_user"] == getpass.getuser()  # a lookup('pipe', 'id -un')
    assert first.vars["ansible_python_interpreter"] == sys.executable or os.path.isabs(
        first.vars["ansible_python_interpreter"]
    )
    assert first.is_local
    # the file, as the runbooks and fab's default name it, is the same inventory
    assert load_inventory(LOCAL / "hosts.yml").brokers == cluster.brokers


# --- vault -------------------------------------------------------------------------------


def test_without_the_vault_password_fab_says_how_to_give_it():
    shown = fab("--inventory", str(EXAMPLE), "runbook", "verify-placement", "--dry-run")
    assert shown.returncode == 2, shown
    assert "broker_management_token is vault-encrypted" in shown.stderr, shown.stderr
    assert VAULT_HINT in shown.stderr and "Traceback" not in shown.stderr + shown.stdout
    # with it: the leading option, or Ansible's environment variable (no cluster is
    # contacted: a dry run only fills the runbook's commands from the inventory)
    for args, env in (
        (["--vault-password-file", str(EXAMPLE_PASSWORD)], {}),
        ([], {"ANSIBLE_VAULT_PASSWORD_FILE": str(EXAMPLE_PASSWORD)}),
    ):
        given = fab(
            "--inventory", str(EXAMPLE), *args, "runbook", "verify-placement", "--dry-run", **env
        )
        assert given.returncode == 0, given.stderr
        assert "https://10.10.1.10:9600" in given.stdout and EXAMPLE_TOKEN not in given.stdout


def test_a_wrong_vault_password_is_named(tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    shown = load_in_subprocess(EXAMPLE, ANSIBLE_VAULT_PASSWORD_FILE=str(wrong))
    assert "cannot be decrypted with the vault password" in shown.stdout, shown
    missing = load_in_subprocess(EXAMPLE, ANSIBLE_VAULT_PASSWORD_FILE=str(tmp_path / "nope"))
    assert "vault password file" in missing.stdout and "was not found" in missing.stdout, missing


def test_a_vault_encrypted_vars_file(tmp_path):
    inv = brokers_inventory(tmp_path / "inv", FOUR, broker_replication_factor=4)
    password = tmp_path / "pass"
    password.write_text("a-password-for-this-test\n")
    secret_file = inv / "group_vars" / "all.yml"
    secret_file.write_text(
        "broker_management_token: from-an-encrypted-file\nbroker_partitions_count: 3\n"
    )
    vault("encrypt", "--vault-password-file", str(password), str(secret_file))
    assert secret_file.read_text().startswith("$ANSIBLE_VAULT")
    shown = load_in_subprocess(inv)
    assert "is vault-encrypted" in shown.stdout and VAULT_HINT in shown.stdout, shown
    cluster = load_inventory(inv, vault_password_file=password)
    assert cluster.token == "from-an-encrypted-file" and cluster.partitions == 3
    assert redact("from-an-encrypted-file") == REDACTED


def test_vault_identity_list(tmp_path):
    inv = brokers_inventory(tmp_path / "inv", FOUR)
    password = tmp_path / "ops-pass"
    password.write_text("identity-password\n")
    block = vault(
        "encrypt_string",
        "--vault-id",
        f"ops@{password}",
        "--name",
        "broker_management_token",
        "by-id",
    )
    (inv / "group_vars" / "brokers.yml").write_text(block)
    loaded = load_in_subprocess(inv, ANSIBLE_VAULT_IDENTITY_LIST=f"ops@{password}")
    assert loaded.stdout.strip() == "loaded 4", loaded


# --- what Ansible does and a hand-written reader did not ----------------------------------


def test_variable_precedence_and_files_next_to_the_inventory(tmp_path):
    inv = brokers_inventory(tmp_path / "inv", FOUR, broker_management_port=9000)
    (inv / "group_vars" / "brokers.yml").write_text(
        "broker_management_port: 9100\nbroker_x: brokers\n"
    )
    (inv / "group_vars" / "region1.yml").write_text("broker_management_port: 9200\n")
    (inv / "host_vars" / "brk-r1-h1.yml").write_text("broker_management_port: 9300\n")
    ports = {b.name: b.management_port for b in load_inventory(inv).brokers}
    assert ports == {"brk-r0-h0": 9100, "brk-r0-h1": 9100, "brk-r1-h0": 9200, "brk-r1-h1": 9300}


def test_an_ini_inventory_and_templates_with_ansible_filters(tmp_path):
    (tmp_path / "hosts.ini").write_text(
        textwrap.dedent(
            """
            [region0]
            brk-r0-h0 ansible_host=127.0.0.1 broker_ordinal=0
            brk-r0-h1 ansible_host=127.0.0.1 broker_ordinal=1
            [region0:vars]
            broker_region=region0
            broker_region_id=0
            [region1]
            brk-r1-h0 ansible_host=127.0.0.1 broker_ordinal=0
            brk-r1-h1 ansible_host=127.0.0.1 broker_ordinal=1
            [region1:vars]
            broker_region=region1
            broker_region_id=1
            [brokers:children]
            region0
            region1
            [brokers:vars]
            broker_gateway_port="{{ 27000 + broker_ordinal | int * 2 + broker_region_id | int }}"
            broker_config_dir="{{ '/srv' | ansible.builtin.path_join }}/{{ inventory_hostname }}"
            """
        )
    )
    cluster = load_inventory(tmp_path / "hosts.ini")
    assert [b.gateway_port for b in cluster.brokers] == [27000, 27001, 27002, 27003]
    assert cluster.brokers[3].config_path == "/srv/brk-r1-h1/broker.yaml"


def test_errors_name_the_host_and_what_is_wrong(tmp_path):
    with pytest.raises(InventoryError, match="No such file"):
        load_inventory(tmp_path / "absent.yml")
    no_region = dict(FOUR)
    inv = brokers_inventory(tmp_path / "a", no_region)
    doc = yaml.safe_load((inv / "hosts.yml").read_text())
    del doc["all"]["children"]["brokers"]["children"]["region1"]["vars"]["broker_region_id"]
    (inv / "hosts.yml").write_text(yaml.safe_dump(doc))
    with pytest.raises(InventoryError, match="host brk-r1-h0 has no broker_region_id"):
        load_inventory(inv)
    dupes = {**FOUR, "brk-r0-h1": {"ansible_host": "127.0.0.1", "broker_node_id": 0}}
    with pytest.raises(InventoryError, match=r"node ids \[0\] are used by more than one host"):
        load_inventory(brokers_inventory(tmp_path / "b", dupes))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "hosts.yml").write_text("all:\n  hosts:\n    web1: {}\n")
    with pytest.raises(InventoryError, match="no hosts in a 'brokers' group"):
        load_inventory(tmp_path / "c")
    shutil.rmtree(tmp_path / "c")


def _now():
    from datetime import UTC, datetime

    return datetime.now(UTC)
