"""Starting and stopping brokers: the hands of `fence_region` and `start_region_brokers`.

A ``Control`` starts and stops one broker; drills also crash one (``kill``) and
rebuild its disk (``wipe``). ``InventoryControl`` picks how per
host from its inventory variables: on this machine (``ansible_connection:
local``) it runs ``broker start|stop --config <file>``; on other hosts the
same over SSH with Fabric (process mode), or ``systemctl start|stop`` when
``broker_service_manager`` is systemd (the default for real hosts).
Tests use their own Control (e.g. by pid over a LocalCluster).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from typing import Protocol

from broker.ops.inventory import Broker
from broker.ops.steps import StepFailed

COMMAND_TIMEOUT = 90.0
PAST = {"start": "started", "stop": "stopped", "kill": "killed", "wipe-data": "wiped the data of"}


class Control(Protocol):
    def start(self, broker: Broker) -> str:
        """Start the broker; returns what was done, in a few words. Idempotent."""
        ...

    def stop(self, broker: Broker) -> str:
        """Stop the broker (and keep it stopped). Idempotent."""
        ...


class DrillControl(Control, Protocol):
    def kill(self, broker: Broker) -> str:
        """Crash the broker (SIGKILL): a region loss, as a drill makes it. Idempotent."""
        ...

    def wipe(self, broker: Broker) -> str:
        """Empty the stopped broker's data directory: the host was rebuilt."""
        ...


def _broker_command(broker: Broker, action: str, local: bool) -> list[str]:
    """``broker start|stop|stop --kill|wipe-data --config FILE`` for this broker."""
    config = broker.config_path
    if not config:
        raise StepFailed(
            f"{broker.label()}: no broker_config_dir/broker_config_file in the inventory"
        )
    venv = broker.vars.get("broker_venv_dir") or (
        os.path.join(str(broker.vars["broker_install_dir"]), "venv")
        if broker.vars.get("broker_install_dir")
        else None
    )
    program = os.path.join(str(venv), "bin", "broker") if venv else None
    verb = ["stop", "--kill"] if action == "kill" else [action]
    if local and (program is None or not os.path.exists(program)):
        return [sys.executable, "-m", "broker", *verb, "--config", config]
    return [program or "broker", *verb, "--config", config]


class InventoryControl:
    def start(self, broker: Broker) -> str:
        return self._run(broker, "start")

    def stop(self, broker: Broker) -> str:
        return self._run(broker, "stop")

    def kill(self, broker: Broker) -> str:
        if self._systemd(broker):
            unit = _unit(broker)
            run_on(broker, f"systemctl kill --signal=SIGKILL {unit}; systemctl stop {unit}")
            return f"killed broker {broker.node_id} over SSH"
        return self._run(broker, "kill")

    def wipe(self, broker: Broker) -> str:
        return self._run(broker, "wipe-data")

    @staticmethod
    def _systemd(broker: Broker) -> bool:
        return not broker.is_local and broker.vars.get("broker_service_manager", "systemd") == (
            "systemd"
        )

    def _run(self, broker: Broker, action: str) -> str:
        if broker.is_local:
            run_on(broker, shlex.join(_broker_command(broker, action, local=True)))
            return f"{PAST[action]} broker {broker.node_id} locally"
        if self._systemd(broker) and action in ("start", "stop"):
            command = f"systemctl {action} {_unit(broker)}"
        else:
            command = shlex.join(_broker_command(broker, action, local=False))
        run_on(broker, command)
        return f"{PAST[action]} broker {broker.node_id} over SSH"


def _unit(broker: Broker) -> str:
    return shlex.quote(str(broker.vars.get("broker_service_name", "broker")))


def run_on(broker: Broker, command: str, timeout: float = COMMAND_TIMEOUT) -> str:
    """Run a shell command on the broker's host (here, or over SSH with the inventory's
    user and key); returns its output; a non-zero exit fails the step with it."""
    if broker.is_local:
        proc = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=timeout)
        ok, code, out, err = proc.returncode == 0, proc.returncode, proc.stdout, proc.stderr
    else:
        from fabric import Connection  # the ops extra; only needed for remote hosts

        key = broker.vars.get("ansible_ssh_private_key_file")
        with Connection(
            broker.host,
            user=broker.vars.get("ansible_user"),
            port=int(broker.vars.get("ansible_port", 22)),
            connect_kwargs={"key_filename": str(key)} if key else {},
            connect_timeout=10,
        ) as conn:
            result = conn.run(command, hide=True, warn=True, timeout=timeout, in_stream=False)
        ok, code, out, err = result.ok, result.exited, result.stdout, result.stderr
    if not ok:
        where = "" if broker.is_local else " over SSH"
        raise StepFailed(
            f"{broker.label()}: `{command}`{where} failed (exit {code}): "
            f"{(err or out).strip()[-500:]}"
        )
    return out
