"""Starting and stopping brokers: the hands of `fence_region` and `start_region_brokers`.

A ``Control`` starts and stops one broker. ``InventoryControl`` picks how per
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
PAST = {"start": "started", "stop": "stopped"}


class Control(Protocol):
    def start(self, broker: Broker) -> str:
        """Start the broker; returns what was done, in a few words. Idempotent."""
        ...

    def stop(self, broker: Broker) -> str:
        """Stop the broker (and keep it stopped). Idempotent."""
        ...


def _broker_command(broker: Broker, action: str, local: bool) -> list[str]:
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
    if local and (program is None or not os.path.exists(program)):
        return [sys.executable, "-m", "broker", action, "--config", config]
    return [program or "broker", action, "--config", config]


class InventoryControl:
    def start(self, broker: Broker) -> str:
        return self._run(broker, "start")

    def stop(self, broker: Broker) -> str:
        return self._run(broker, "stop")

    def _run(self, broker: Broker, action: str) -> str:
        if broker.is_local:
            argv = _broker_command(broker, action, local=True)
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
            if proc.returncode != 0:
                raise StepFailed(
                    f"`{shlex.join(argv)}` failed (exit {proc.returncode}): "
                    f"{(proc.stderr or proc.stdout).strip()[-500:]}"
                )
            return f"{PAST[action]} broker {broker.node_id} locally"
        return self._ssh(broker, action)

    def _ssh(self, broker: Broker, action: str) -> str:
        from fabric import Connection  # the ops extra; only needed for remote hosts

        if broker.vars.get("broker_service_manager", "systemd") == "systemd":
            unit = broker.vars.get("broker_service_name", "broker")
            command = f"systemctl {action} {shlex.quote(str(unit))}"
        else:
            command = shlex.join(_broker_command(broker, action, local=False))
        key = broker.vars.get("ansible_ssh_private_key_file")
        connect_kwargs = {"key_filename": str(key)} if key else {}
        with Connection(
            broker.host,
            user=broker.vars.get("ansible_user"),
            port=int(broker.vars.get("ansible_port", 22)),
            connect_kwargs=connect_kwargs,
            connect_timeout=10,
        ) as conn:
            result = conn.run(command, hide=True, warn=True, timeout=COMMAND_TIMEOUT)
        if not result.ok:
            raise StepFailed(
                f"{broker.label()}: `{command}` failed (exit {result.exited}): "
                f"{(result.stderr or result.stdout).strip()[-500:]}"
            )
        return f"{PAST[action]} broker {broker.node_id} over SSH"
