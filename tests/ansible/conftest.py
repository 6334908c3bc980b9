"""Fixtures for the Ansible tests: real ansible-playbook runs from the project's .venv.

Every run uses a temporary copy of an inventory (own var directory, free ports)
and a snapshot of the broker sources, so parallel runs and concurrent edits
of broker/ do not interfere. Brokers started by a test are stopped in a
finalizer, by their pid files (`broker stop --config`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from broker.daemon import pid_alive
from broker.demo.localcluster import free_ports

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
RECAP = re.compile(
    r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
    r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)",
    re.M,
)


def tool(name: str) -> str:
    path = VENV_BIN / name
    if not path.exists():
        pytest.skip(f"{path} is missing (run make setup)")
    return str(path)


def ansible_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(ROOT / ".venv"),
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_NOCOLOR="1",
        NO_COLOR="1",
        PY_COLORS="0",
    )
    env.update(extra)
    return env


@dataclass
class Run:
    args: list[str]
    returncode: int
    output: str
    seconds: float

    @property
    def recap(self) -> dict[str, dict[str, int]]:
        return {
            m["host"]: {k: int(m[k]) for k in ("ok", "changed", "unreachable", "failed")}
            for m in RECAP.finditer(self.output)
        }

    @property
    def changed(self) -> int:
        return sum(host["changed"] for host in self.recap.values())

    def flat(self) -> str:
        """The output with whitespace runs collapsed (long lines may wrap)."""
        return " ".join(self.output.split())

    def __str__(self) -> str:
        tail = "\n".join(self.output.splitlines()[-80:])
        return f"$ {' '.join(self.args)}\nexit {self.returncode} after {self.seconds:.1f}s\n{tail}"


def ansible_playbook(inventory: Path | str, playbook: str, *args: str, timeout=900) -> Run:
    cmd = [tool("ansible-playbook"), "-i", str(inventory), str(ROOT / playbook), *args]
    start = time.monotonic()
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        env=ansible_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Run(cmd, proc.returncode, proc.stdout, time.monotonic() - start)


@pytest.fixture(scope="session")
def broker_sources(tmp_path_factory) -> Path:
    """A snapshot of what the wheel is built from, taken once per session."""
    snap = tmp_path_factory.mktemp("project")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, snap / name)
    shutil.copytree(
        ROOT / "broker", snap / "broker", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    return snap


@dataclass
class LocalInventory:
    """A copy of inventories/local with its own var directory, ports and wheelhouse."""

    path: Path
    var: Path
    hosts: dict[str, dict] = field(default_factory=dict)  # host -> its vars as written
    tls_ca: Path | None = None  # the cluster CA the role makes, when TLS is on

    def url(self, host: str, path: str) -> str:
        """``path`` on the host's management API, as the deploy made it (http or https)."""
        scheme = "https" if self.tls_ca else "http"
        return f"{scheme}://127.0.0.1:{self.hosts[host]['broker_management_port']}{path}"

    def open(self, host: str, path: str, token: str | None = None, timeout: float = 5):
        """urlopen of ``url(host, path)``, trusting the cluster CA when TLS is on."""
        req = urllib.request.Request(self.url(host, path))
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        return urllib.request.urlopen(req, timeout=timeout, context=self.ssl_context())

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context trusting the cluster CA (brokers want no client certificate
        unless broker_tls_client_auth says so); None when TLS is off."""
        return ssl.create_default_context(cafile=str(self.tls_ca)) if self.tls_ca else None

    def host_dir(self, host: str) -> Path:
        return self.var / host

    def config(self, host: str) -> Path:
        return self.host_dir(host) / "config" / "broker.yaml"

    def broker_bin(self, host: str) -> Path:
        return self.host_dir(host) / "install" / "venv" / "bin" / "broker"

    def pid_file(self, host: str) -> Path:
        return self.host_dir(host) / "data" / "broker.pid"

    def pids(self) -> dict[str, int]:
        out = {}
        for host in self.hosts:
            with contextlib.suppress(OSError, ValueError):
                out[host] = int(self.pid_file(host).read_text().strip())
        return out

    def stop_all(self) -> None:
        """Stop every broker this inventory may have started (idempotent)."""
        for host in self.hosts:
            binary, config = self.broker_bin(host), self.config(host)
            if binary.exists() and config.exists():
                subprocess.run(
                    [str(binary), "stop", "--config", str(config)],
                    capture_output=True,
                    timeout=60,
                    check=False,
                )
        for pid in self.pids().values():  # a broker whose venv or config went away
            if pid_alive(pid) and _is_broker(pid):
                os.kill(pid, 15)


def _is_broker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            parts = f.read().split(b"\0")
    except OSError:
        return False
    return b"run" in parts and any(b"broker" in part for part in parts)


def make_local_inventory(
    base: Path,
    sources: Path,
    node_ids: dict[str, int] | None = None,
    cluster_vars: dict | None = None,
) -> LocalInventory:
    """Copy inventories/local into `base`, with var dir, wheelhouse and free ports of its own.

    `node_ids` adds explicit broker_node_id host vars; `cluster_vars` overrides all.vars.
    """
    inv_dir = base / "inventory"
    (inv_dir / "group_vars").mkdir(parents=True)
    var = base / "var"
    hosts_doc = yaml.safe_load((ROOT / "inventories/local/hosts.yml").read_text())
    group_vars = yaml.safe_load((ROOT / "inventories/local/group_vars/brokers.yml").read_text())

    regions = hosts_doc["all"]["children"]["brokers"]["children"]
    names = [host for region in regions.values() for host in region["hosts"]]
    ports = iter(free_ports(3 * len(names)))
    hosts: dict[str, dict] = {}
    for region in regions.values():
        for host, host_vars in region["hosts"].items():
            host_vars.update(
                broker_gateway_port=next(ports),
                broker_internal_port=next(ports),
                broker_management_port=next(ports),
            )
            if node_ids is not None:
                host_vars["broker_node_id"] = node_ids[host]
            hosts[host] = host_vars
    hosts_doc["all"]["vars"].update(cluster_vars or {})
    for key in cluster_vars or {}:  # group_vars/brokers.yml would win over all.vars
        group_vars.pop(key, None)
    every = {**group_vars, **hosts_doc["all"]["vars"]}
    tls = str(every.get("broker_tls_enabled", False)).lower() in ("true", "yes", "1")
    ca_dir = every.get("broker_tls_ca_dir", "")
    tls_ca = (Path(ca_dir) if "{{" not in str(ca_dir) else var / "tls") / "ca.crt"
    group_vars.update(
        broker_local_root=str(var),
        broker_project_dir=str(sources),
        broker_wheelhouse_dir=str(base / "wheels"),
        # a busy test machine: give elections some slack
        broker_leader_retries=180,
    )
    (inv_dir / "hosts.yml").write_text(yaml.safe_dump(hosts_doc, sort_keys=False))
    (inv_dir / "group_vars" / "brokers.yml").write_text(yaml.safe_dump(group_vars, sort_keys=False))
    return LocalInventory(inv_dir, var, hosts, tls_ca if tls else None)
