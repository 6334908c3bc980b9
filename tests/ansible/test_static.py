"""Static checks of the Ansible content: syntax, lint, rendered files, packaging."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from tests.tlsutil import ClusterCA

from .conftest import ROOT, ansible_env, ansible_playbook, tool

PLAYBOOKS = [
    "deploy.yml",
    "verify.yml",
    "restart.yml",
    "remove.yml",
    "failover.yml",
    "failback.yml",
    "rotate-certs.yml",
]
EXAMPLE = ROOT / "inventories" / "example"


def run(cmd: list[str], env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd,
        cwd=ROOT,
        env=env or ansible_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        **kw,
    )


@pytest.mark.parametrize("playbook", PLAYBOOKS)
@pytest.mark.parametrize("inventory", ["inventories/local", "inventories/example"])
def test_playbook_syntax(playbook, inventory):
    result = ansible_playbook(ROOT / inventory, f"playbooks/{playbook}", "--syntax-check")
    assert result.returncode == 0, str(result)


def test_ansible_lint_clean():
    result = run([tool("ansible-lint")])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Profile 'production' was required, and it passed" in output, output
    assert not (ROOT / ".ansible").exists(), "ansible-lint left a .ansible cache in the repo"


def test_yamllint_clean():
    result = run([tool("yamllint"), "-s", "."])
    assert result.returncode == 0, result.stdout + result.stderr


def render(inventory, out, *extra: str):
    result = ansible_playbook(
        inventory,
        "tests/ansible/render.yml",
        "-e",
        f"render_dir={out}",
        "-e",
        "ansible_become=false",
        # the example's token is vault-encrypted; this is its test-only password
        "--vault-password-file",
        str(ROOT / "tests" / "data" / "example-vault-password.test-only.txt"),
        *extra,
    )
    assert result.returncode == 0, str(result)
    return result


def test_example_inventory_renders_valid_configs(tmp_path):
    render(EXAMPLE, tmp_path)
    hosts = yaml.safe_load((EXAMPLE / "hosts.yml").read_text())["all"]["children"]["brokers"]
    addresses = {}
    for region in hosts["children"].values():
        for host, host_vars in region["hosts"].items():
            addresses[host] = host_vars["ansible_host"]
    assert len(addresses) == 8
    ca = ClusterCA(tmp_path / "tls", "dual-region")
    ids = {}
    for host, address in addresses.items():
        path = tmp_path / f"{host}-broker.yaml"
        cfg = yaml.safe_load(path.read_text())
        # TLS on, with the files the role installs: config check loads them, so stand
        # real ones of a test CA in for the host's (BROKER_* overrides, as documented)
        assert cfg["security"]["tls"] == {
            "enabled": True,
            "certificate": "/etc/broker/tls/broker.crt",
            "privateKey": "/etc/broker/tls/broker.key",
            "ca": "/etc/broker/tls/ca.crt",
            "clientAuth": "none",
        }
        pair = ca.broker(cfg["cluster"]["nodeId"], names=[address])
        files = {
            "BROKER_SECURITY_TLS_CERTIFICATE": pair.cert,
            "BROKER_SECURITY_TLS_PRIVATEKEY": pair.key,
            "BROKER_SECURITY_TLS_CA": ca.cert,
        }
        check = run(
            [tool("broker"), "config", "check", "--config", str(path)],
            env={**ansible_env(), **files},
        )
        assert check.returncode == 0, f"{path}: {check.stdout}{check.stderr}"
        region_id = int(host[5])
        assert cfg["cluster"]["region"] == f"region{region_id}"
        assert cfg["cluster"]["nodeId"] % 2 == region_id
        assert cfg["network"]["advertisedHost"] == address
        assert sorted(cfg["cluster"]["initialContactPoints"]) == sorted(
            f"{a}:26502" for a in addresses.values()
        )
        assert cfg["exporters"] == {
            f"region{i}": {"type": "file", "args": {"path": f"/var/lib/broker-export/region{i}"}}
            for i in (0, 1)
        }
        ids[host] = cfg["cluster"]["nodeId"]
    assert sorted(ids.values()) == list(range(8))


def test_rendered_systemd_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the rendered unit was not verified")
    install = tmp_path / "opt-broker"
    (install / "venv" / "bin").mkdir(parents=True)
    os.symlink(tool("broker"), install / "venv" / "bin" / "broker")
    render(EXAMPLE, tmp_path, "-e", f"broker_install_dir={install}")
    unit = tmp_path / "broker.service"
    shutil.copy(tmp_path / "brk-r0-h1-broker.service", unit)
    text = unit.read_text()
    assert f"ExecStart={install}/venv/bin/broker run --config /etc/broker/broker.yaml" in text
    assert "User=broker" in text and "RestartPreventExitStatus=2" in text
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broker.service" not in result.stderr, result.stderr  # no warnings about the unit


def test_galaxy_collection_builds(tmp_path):
    result = run([tool("ansible-galaxy"), "collection", "build", "--output-path", str(tmp_path)])
    assert result.returncode == 0, result.stdout + result.stderr
    tarball = tmp_path / "dualregion-broker-0.1.0.tar.gz"
    assert tarball.exists(), result.stdout
    names = subprocess.run(
        ["tar", "tzf", str(tarball)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "roles/broker/tasks/main.yml" in names
    assert "plugins/filter/placement.py" in names
    assert "plugins/modules/broker_wheelhouse.py" in names
    assert "playbooks/deploy.yml" in names
    assert not [n for n in names if n.startswith(("broker/", "tests/", ".venv", "var/"))]


def test_every_default_is_documented_in_the_argument_spec():
    defaults = yaml.safe_load((ROOT / "roles/broker/defaults/main.yml").read_text())
    specs = yaml.safe_load((ROOT / "roles/broker/meta/argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    assert set(defaults) <= set(options), set(defaults) - set(options)
    for name, spec in options.items():
        assert spec.get("type") and spec.get("description"), name
        templated = isinstance(defaults.get(name), str) and "{{" in defaults[name]
        if name in defaults and not templated:
            assert spec.get("default") == defaults[name], (name, spec.get("default"))
    for entry in ("verify", "restart", "remove"):
        assert specs["argument_specs"][entry]["options"] == options
