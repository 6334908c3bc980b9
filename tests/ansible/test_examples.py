"""Every inventory a reader is shown passes the preflight deploy.yml runs first.

Inventories: ``inventories/local`` and ``inventories/example`` (directories, and
their hosts.yml), the lab's as ``broker.lab.inventory.render`` writes it (2 and
4 hosts per region), and every inventory snippet (a ```yaml block with a top-level
``all``) in README.md and roles/*/README.md. Each must load with
``ansible-inventory --list`` (the example's vault-encrypted values with the test-only
vault password file under tests/data) and pass the role's own facts and preflight
tasks (``tests/ansible/preflight.yml``: the placement filter over the hosts' facts).
No host is contacted: the only preflight task that runs on hosts (the Python
version probe) is skipped by its tag, and the connection is forced to local.
"""

from __future__ import annotations

import inspect
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from broker.lab import hosts as lab_hosts
from broker.lab import inventory as lab_inventory

from .conftest import ROOT, ansible_env, ansible_playbook, tool

DOCS = [ROOT / "README.md", *sorted((ROOT / "roles").glob("*/README.md"))]
YAML_BLOCK = re.compile(r"^```ya?ml[ \t]*\n(.*?)^```", re.S | re.M)


def vault_password_file() -> Path | None:
    """The example's test-only vault password (tests/data), when the example uses vault."""
    example = ROOT / "inventories" / "example"
    if not any("$ANSIBLE_VAULT" in p.read_text() for p in example.rglob("*.yml")):
        return None
    found = sorted((ROOT / "tests" / "data").glob("*vault*"))
    assert found, "inventories/example is vault-encrypted but tests/data has no vault password"
    return found[0]


def snippets() -> list[tuple[str, str]]:
    """(doc:line, text) of every ```yaml block in the docs that is an inventory."""
    out = []
    for doc in DOCS:
        text = doc.read_text()
        for match in YAML_BLOCK.finditer(text):
            block = match.group(1)
            parsed = yaml.safe_load(block)  # a broken yaml block in the docs fails here
            if isinstance(parsed, dict) and "all" in parsed:
                line = text.count("\n", 0, match.start()) + 1
                out.append((f"{doc.relative_to(ROOT)}:{line}", block))
    return out


def lab_inventories(base: Path) -> dict[str, Path]:
    out = {}
    kinds = [{}]
    if "init" in inspect.signature(lab_inventory.render).parameters:
        kinds.append({"init": "systemd"})
    for per_region in (2, 4):
        for kind in kinds:
            name = f"lab-{per_region}-per-region" + (f"-{kind['init']}" if kind else "")
            path = base / name / "hosts.yml"
            path.parent.mkdir(parents=True)
            text = lab_inventory.render(
                lab_hosts.layout(per_region), base / "lab-key", per_region, base / "export", **kind
            )
            path.write_text(text)
            out[name] = path
    return out


def ansible_inventory_list(inventory: Path, env: dict) -> dict:
    proc = subprocess.run(
        [tool("ansible-inventory"), "-i", str(inventory), "--list"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"ansible-inventory -i {inventory} --list\n{proc.stderr}"
    return json.loads(proc.stdout)


def brokers_of(listing: dict) -> set[str]:
    hosts, todo = set(), ["brokers"]
    while todo:
        group = listing.get(todo.pop(), {})
        hosts.update(group.get("hosts", []))
        todo += group.get("children", [])
    return hosts


def inventory_env() -> dict:
    password = vault_password_file()
    return ansible_env(**({"ANSIBLE_VAULT_PASSWORD_FILE": str(password)} if password else {}))


def check_inventory(inventory: Path, expected_brokers: int | None = None) -> None:
    password = vault_password_file()
    listing = ansible_inventory_list(inventory, inventory_env())
    brokers = brokers_of(listing)
    assert len(brokers) >= 4, f"{inventory}: brokers {sorted(brokers)}"
    if expected_brokers is not None:
        assert len(brokers) == expected_brokers, f"{inventory}: brokers {sorted(brokers)}"
    args = ["--skip-tags", "broker_python_check", "-e", "ansible_connection=local"]
    if password:
        args += ["--vault-password-file", str(password)]
    run = ansible_playbook(inventory, "tests/ansible/preflight.yml", *args, timeout=300)
    assert run.returncode == 0, f"{inventory} is refused by the preflight\n{run}"
    assert re.search(r"placement ok \(layout\): \d+ partitions", run.output), str(run)
    assert set(run.recap) == brokers, str(run)
    assert "broker-python-version" not in run.output, str(run)  # the probe was skipped


@pytest.mark.parametrize("inventory", ["inventories/local", "inventories/example"])
def test_the_repositorys_inventories_pass_the_preflight(inventory):
    check_inventory(ROOT / inventory, 8)
    # its hosts.yml alone is the same inventory (group_vars sit next to it)
    listing = ansible_inventory_list(ROOT / inventory / "hosts.yml", inventory_env())
    assert len(brokers_of(listing)) == 8


def test_the_lab_inventories_pass_the_preflight(tmp_path):
    for name, path in lab_inventories(tmp_path).items():
        per_region = int(name.split("-")[1])
        if name.endswith("systemd"):  # the same layout, another login: it loads
            assert len(brokers_of(ansible_inventory_list(path, inventory_env()))) == 2 * per_region
        else:
            check_inventory(path, 2 * per_region)


def test_the_docs_show_inventories():
    found = [where for where, _ in snippets()]
    assert any(where.startswith("roles/broker/README.md") for where in found), found


@pytest.mark.parametrize("where,block", snippets(), ids=[w for w, _ in snippets()])
def test_every_inventory_snippet_in_the_docs_passes_the_preflight(where, block, tmp_path):
    path = tmp_path / "hosts.yml"
    path.write_text(block)
    check_inventory(path)
