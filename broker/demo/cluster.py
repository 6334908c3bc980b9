"""The demo's cluster: a private copy of the local inventory, deployed with Ansible.

``DemoCluster`` makes (or adopts) a local-format inventory, runs the real
``ansible-playbook playbooks/deploy.yml`` on it, knows every broker process
it started (by pid file and by the configuration path on its command line),
kills a region with SIGKILL, wipes a region's data directories (a rebuilt
region has empty disks) and cleans up: every process it started is stopped by
pid, and its working directory is deleted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from broker.daemon import pid_alive
from broker.demo.localcluster import free_ports
from broker.ops import Broker, Cluster, load_inventory
from broker.ops.view import answering_ports

PROJECT = Path(__file__).resolve().parents[2]
LOCAL_INVENTORY = PROJECT / "inventories" / "local"
STOP_TIMEOUT = 30.0


class DemoError(Exception):
    """Something the demo cannot go on from; the message says what and why."""


# --- processes -----------------------------------------------------------------------------


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [part.decode(errors="replace") for part in f.read().split(b"\0") if part]
    except OSError:
        return []


def broker_config_of(pid: int) -> str | None:
    """The --config of a ``broker run`` process, or None when ``pid`` is not one."""
    args = cmdline(pid)
    if "run" not in args or not any("broker" in a for a in args) or "--config" not in args:
        return None
    i = args.index("--config")
    return os.path.realpath(args[i + 1]) if i + 1 < len(args) else None


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval=0.05) -> None:
    """Poll ``check`` until it holds; DemoError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            raise DemoError(f"gave up after {timeout:g}s waiting for {what}")
        time.sleep(interval)  # polling a condition, bounded by the deadline


# --- the inventory -------------------------------------------------------------------------


def private_inventory(base: Path, source: Path = LOCAL_INVENTORY) -> Path:
    """Copy a local-format inventory into ``base/inventory`` with free ports, its brokers'
    directories under ``base/var`` and one shared file sink per exporter under
    ``base/var/export`` (so that failback can restore a region's sink). Returns hosts.yml."""
    hosts_doc = yaml.safe_load((source / "hosts.yml").read_text())
    group_vars = yaml.safe_load((source / "group_vars" / "brokers.yml").read_text()) or {}
    regions = hosts_doc["all"]["children"]["brokers"]["children"]
    names = [host for region in regions.values() for host in region["hosts"]]
    ports = iter(free_ports(3 * len(names)))
    for region in regions.values():
        for host_vars in region["hosts"].values():
            host_vars.update(
                broker_gateway_port=next(ports),
                broker_internal_port=next(ports),
                broker_management_port=next(ports),
            )
    var = base / "var"
    export = var / "export"
    hosts_doc["all"].setdefault("vars", {})["broker_export_sinks"] = {
        group["vars"]["broker_region"]: str(export / group["vars"]["broker_region"])
        for group in regions.values()
    }
    group_vars.update(
        broker_local_root=str(var),
        broker_export_dir=str(export),
        broker_project_dir=str(PROJECT),
        # a busy 2-core machine: give the deploy's leader check some slack
        broker_leader_retries=180,
    )
    inventory = base / "inventory"
    (inventory / "group_vars").mkdir(parents=True)
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts_doc, sort_keys=False))
    (inventory / "group_vars" / "brokers.yml").write_text(
        yaml.safe_dump(group_vars, sort_keys=False)
    )
    return inventory / "hosts.yml"


# --- the cluster ---------------------------------------------------------------------------


@dataclass
class DemoCluster:
    """The brokers of one inventory, as the demo deploys, breaks and removes them."""

    workdir: Path  # the demo's own directory (logs, Ansible temp; the private inventory)
    inventory: Path  # hosts.yml
    private: bool  # a private copy: everything it holds lives under workdir
    cluster: Cluster = field(init=False)
    started: dict[int, str] = field(default_factory=dict)  # pid -> config path
    foreign: set[int] = field(default_factory=set)  # brokers of these configs before the demo
    deployed: bool = False  # the deploy ran (so the inventory's directories are the demo's)

    def __post_init__(self) -> None:
        self.cluster = load_inventory(self.inventory)
        for b in self.cluster.brokers:
            if not b.is_local or b.vars.get("broker_service_manager") != "process":
                raise DemoError(
                    f"{self.inventory}: {b.label()} is not a local process-mode broker "
                    "(ansible_connection: local, broker_service_manager: process); the demo "
                    "runs only on this machine"
                )
            if not b.config_path or "{{" in b.config_path or "{{" in self.data_dir(b):
                raise DemoError(f"{self.inventory}: cannot work out {b.label()}'s paths")
        self.foreign = set(self._scan())  # never adopted, never stopped

    @classmethod
    def create(cls, workdir: Path, inventory: Path | None) -> DemoCluster:
        if inventory is None:
            return cls(workdir, private_inventory(workdir), private=True)
        path = inventory / "hosts.yml" if inventory.is_dir() else inventory
        return cls(workdir, path.resolve(), private=False)

    # --- paths ---------------------------------------------------------------------------

    def config(self, b: Broker) -> str:
        return os.path.realpath(str(b.config_path))

    def data_dir(self, b: Broker) -> str:
        return str(b.vars.get("broker_data_dir", ""))

    def pid_file(self, b: Broker) -> str:
        return os.path.join(self.data_dir(b), "broker.pid")

    def log_file(self, b: Broker) -> str:
        return os.path.join(self.data_dir(b), "broker.log")

    def configs(self) -> set[str]:
        return {self.config(b) for b in self.cluster.brokers}

    def gateways(self, brokers: Iterable[Broker] | None = None) -> str:
        return ",".join(b.gateway for b in (brokers or self.cluster.brokers))

    # --- before the deploy ------------------------------------------------------------------

    def check_free(self) -> None:
        """Refuse to deploy over anything: no port of the inventory may answer already."""
        if self.foreign:
            raise DemoError(
                f"brokers of this inventory run already (pids {sorted(self.foreign)}); the "
                "demo deploys only a cluster of its own: stop them, or use another inventory"
            )
        busy = answering_ports(self.cluster.brokers, timeout=0.3)
        if busy:
            raise DemoError(
                "ports of the inventory are in use already: "
                + "; ".join(busy[:4])
                + ("; ..." if len(busy) > 4 else "")
                + ". Something runs there; the demo deploys only onto free ports"
            )

    # --- Ansible ---------------------------------------------------------------------------

    def ansible_env(self) -> dict[str, str]:
        env = dict(os.environ)
        tmp = self.workdir / "ansible-tmp"
        tmp.mkdir(exist_ok=True)
        bin_dir = str(Path(sys.executable).parent)
        env.update(
            PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
            ANSIBLE_CONFIG=str(PROJECT / "ansible.cfg"),
            ANSIBLE_LOCAL_TEMP=str(tmp / "local"),
            ANSIBLE_REMOTE_TEMP=str(tmp / "remote"),
            ANSIBLE_FORCE_COLOR="0",
            ANSIBLE_NOCOLOR="1",
            PYTHONUNBUFFERED="1",
        )
        return env

    def playbook(self, name: str, *args: str, on_line: Callable[[str], None], log: Path) -> int:
        """Run ``ansible-playbook -i <inventory> playbooks/<name> ARGS``; every output line
        goes to ``log`` and to ``on_line``. Returns the exit code."""
        program = Path(sys.executable).with_name("ansible-playbook")
        if not program.exists():
            raise DemoError(f"{program} is missing: install the ops extra (make setup)")
        cmd = [str(program), "-i", str(self.inventory), str(PROJECT / "playbooks" / name), *args]
        self.deployed = self.deployed or name == "deploy.yml"
        with open(log, "a") as out:
            out.write(f"$ {' '.join(cmd)}\n")
            proc = subprocess.Popen(
                cmd,
                cwd=PROJECT,
                env=self.ansible_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
            )
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    out.write(line)
                    on_line(line.rstrip("\n"))
                return proc.wait()
            finally:
                if proc.poll() is None:  # interrupted: Ansible must not go on starting brokers
                    proc.terminate()
                    try:
                        proc.wait(15)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                self.track()  # whatever it started so far

    # --- the processes it started -----------------------------------------------------------

    def running(self, brokers: Iterable[Broker] | None = None) -> dict[int, int]:
        """node id -> pid of the broker running with this inventory's configuration,
        read from its pid file and checked against the process's command line."""
        out = {}
        for b in brokers or self.cluster.brokers:
            try:
                pid = int(Path(self.pid_file(b)).read_text().strip())
            except (OSError, ValueError):
                continue
            if pid_alive(pid) and broker_config_of(pid) == self.config(b):
                out[b.node_id] = pid
        return out

    def _scan(self) -> dict[int, str]:
        """Every live ``broker run`` process with one of this inventory's configurations
        (a broker whose pid file was not written yet, or was wiped)."""
        configs = self.configs()
        found = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                config = broker_config_of(int(entry))
                if config in configs and pid_alive(int(entry)):
                    found[int(entry)] = config
        return found

    def track(self) -> dict[int, str]:
        """Remember every broker process of this inventory now running (it was started by
        the demo: the ports were free before the deploy). Returns the new ones."""
        new = {
            pid: c
            for pid, c in self._scan().items()
            if pid not in self.started and pid not in self.foreign
        }
        self.started.update(new)
        return new

    def kill_region(self, region: str) -> dict[int, int]:
        """kill -9 every broker of ``region`` (by pid); returns node id -> pid killed."""
        brokers = self.cluster.in_region(region)
        victims = self.running(brokers)
        missing = [b.node_id for b in brokers if b.node_id not in victims]
        if missing:
            raise DemoError(f"brokers {missing} of {region} are not running: nothing to kill")
        for pid in victims.values():
            os.kill(pid, signal.SIGKILL)
        wait_until(
            lambda: not any(pid_alive(p) for p in victims.values()),
            10,
            f"the killed brokers of {region} to be gone",
        )
        return victims

    def wipe_region(self, region: str) -> list[str]:
        """Empty the data directories of ``region``'s brokers (which must be stopped): a
        rebuilt region's brokers start on fresh disks. Returns the directories."""
        wiped = []
        for b in self.cluster.in_region(region):
            if self.running([b]):
                raise DemoError(f"{b.label()} runs: refusing to wipe its data directory")
            directory = Path(self.data_dir(b)).resolve()
            if len(directory.parts) < 4 or (self.private and self.workdir not in directory.parents):
                raise DemoError(f"refusing to wipe {directory}: not a demo data directory")
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
            wiped.append(str(directory))
        return wiped

    def stop_all(self, timeout: float = STOP_TIMEOUT) -> tuple[list[int], list[int]]:
        """SIGTERM every broker process the demo started, SIGKILL what is left after
        ``timeout``. Returns (pids stopped, pids still alive: none unless something is
        badly wrong)."""
        self.track()
        ours = {pid for pid, config in self.started.items() if broker_config_of(pid) == config}
        for pid in ours:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(pid_alive(p) for p in ours) and time.monotonic() < deadline:
            time.sleep(0.05)  # waiting for other processes to exit, bounded by the deadline
        for pid in ours:
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(DemoError):
            wait_until(lambda: not any(pid_alive(p) for p in ours), 10, "the brokers to exit")
        alive = [p for p, c in self.started.items() if pid_alive(p) and broker_config_of(p) == c]
        return sorted(self.started), sorted(alive)

    def log_tail(self, b: Broker, lines: int = 15) -> str:
        try:
            with open(self.log_file(b), errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""
