"""Starting and stopping brokers: the hands of `fence_region` and `start_region_brokers`.

A ``Control`` starts and stops one broker; drills also crash one (``kill``) and
rebuild its disk (``wipe``). ``InventoryControl`` picks how per
host from its inventory variables: on this machine (``ansible_connection:
local``) it runs ``broker start|stop --config <file>``; on other hosts the
same over SSH with Fabric (process mode), or ``systemctl start|stop`` when
``broker_service_manager`` is systemd (the default for real hosts).
Tests use their own Control (e.g. by pid over a LocalCluster).

Every command for a remote host goes through ``remote_command``, which applies the
host's ``ansible_become*`` variables as Ansible does (sudo to root by default), and
``run_on``, which connects as the host's ``ansible_user`` with its key and port.
"""

from __future__ import annotations

import getpass
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

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
    if action == "start":  # the role's log rotation, as `broker start` in the role passes it
        for flag, key in (
            ("--log-max-size", "broker_process_log_max_size"),
            ("--log-keep", "broker_process_log_keep"),
        ):
            if broker.vars.get(key) is not None:
                verb += [flag, str(broker.vars[key])]
    if local and (program is None or not os.path.exists(program)):
        return [sys.executable, "-m", "broker", *verb, "--config", config]
    return [program or "broker", *verb, "--config", config]


class InventoryControl:
    def start(self, broker: Broker) -> str:
        return self._run(broker, "start")

    def stop(self, broker: Broker) -> str:
        return self._run(broker, "stop")

    def kill(self, broker: Broker) -> str:
        if is_systemd(broker):
            unit = _unit(broker)
            run_on(
                broker, f"systemctl kill --signal=SIGKILL {unit}; systemctl stop {unit}", root=True
            )
            return f"killed broker {broker.node_id} over SSH"
        return self._run(broker, "kill")

    def wipe(self, broker: Broker) -> str:
        return self._run(broker, "wipe-data")

    def _run(self, broker: Broker, action: str) -> str:
        if broker.is_local:
            run_on(broker, shlex.join(_broker_command(broker, action, local=True)))
            return f"{PAST[action]} broker {broker.node_id} locally"
        systemctl = is_systemd(broker) and action in ("start", "stop")
        if systemctl:
            command = f"systemctl {action} {_unit(broker)}"
        else:
            command = shlex.join(_broker_command(broker, action, local=False))
        run_on(broker, command, root=systemctl)
        return f"{PAST[action]} broker {broker.node_id} over SSH"


def is_systemd(broker: Broker) -> bool:
    """The broker runs as a systemd unit on a remote host (else `broker start/stop`)."""
    return not broker.is_local and broker.vars.get("broker_service_manager", "systemd") == (
        "systemd"
    )


def _unit(broker: Broker) -> str:
    return shlex.quote(str(broker.vars.get("broker_service_name", "broker")))


# --- what runs on a host: the command, as Ansible would run it -----------------------------

ANSIBLE_TRUE = ("yes", "on", "true", "1", "y", "t")
ANSIBLE_FALSE = ("no", "off", "false", "0", "n", "f", "")
SUDO_PROMPT = "[broker.ops sudo] password: "
# what a command that lacked privileges says (systemctl, nft, coreutils, sudo)
DENIED = re.compile(
    r"permission denied|operation not permitted|access denied|interactive authentication"
    r"|must be root|not permitted|authentication is required",
    re.IGNORECASE,
)


def ansible_bool(value: Any, name: str, where: str) -> bool:
    """A boolean inventory variable as Ansible reads it: true/false, yes/no, on/off, 1/0."""
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    if isinstance(value, int):
        return value != 0
    text = str(value).strip().lower()
    if text in ANSIBLE_TRUE:
        return True
    if text in ANSIBLE_FALSE:
        return False
    raise StepFailed(f"{where}: {name} is {value!r}, not a boolean (true/false, yes/no)")


@dataclass(frozen=True)
class Remote:
    """What runs on a host for one command: the shell line and, when sudo is to be given
    a password, that password (never shown: not in repr, not in any message)."""

    line: str
    become_user: str | None = None
    password: str | None = field(default=None, repr=False)


def remote_command(
    command: str, hostvars: Mapping[str, Any], *, where: str = "host", needs_root: bool = False
) -> Remote:
    """The one place that turns a shell command and a host's inventory variables into
    what runs over SSH, as Ansible runs a task there.

    Without ``ansible_become`` the command runs as the login user (``ansible_user``);
    with it, ``sudo -H -u <ansible_become_user, default root> -- sh -c '<command>'``:
    non-interactive (``-n``, a sudo that asks for a password fails at once) unless
    ``ansible_become_password``/``ansible_become_pass`` is given, then ``-S`` with a
    prompt of our own that ``run_on`` answers. Only ``ansible_become_method: sudo``
    is supported; any other method is refused rather than run without privileges.
    ``needs_root``: the command cannot work unprivileged (systemctl, nft); refused at
    once when it would run as a user other than root."""
    become = ansible_bool(hostvars.get("ansible_become", False), "ansible_become", where)
    if not become:
        login = str(hostvars.get("ansible_user") or getpass.getuser())
        if needs_root and login != "root":
            raise StepFailed(
                f"{where}: `{command}` needs root, and this host is reached as {login!r} "
                "without become: set ansible_become: true for it in the inventory "
                "(with passwordless sudo for that user, or ansible_become_password)"
            )
        return Remote(command)
    method = str(hostvars.get("ansible_become_method") or "sudo")
    if method != "sudo":
        raise StepFailed(
            f"{where}: ansible_become_method {method!r} is not supported by broker.ops "
            "(only sudo); refusing to run anything there without it"
        )
    user = str(hostvars.get("ansible_become_user") or "root")
    if needs_root and user != "root":
        raise StepFailed(
            f"{where}: `{command}` needs root, but ansible_become_user is {user!r}: "
            "leave ansible_become_user unset (root) for this host"
        )
    password = hostvars.get("ansible_become_password", hostvars.get("ansible_become_pass"))
    shell = f"sh -c {shlex.quote(command)}"
    if password is None or str(password) == "":
        return Remote(f"sudo -n -H -u {shlex.quote(user)} -- {shell}", user)
    prompt = shlex.quote(SUDO_PROMPT)
    return Remote(f"sudo -S -p {prompt} -H -u {shlex.quote(user)} -- {shell}", user, str(password))


def run_on(
    broker: Broker, command: str, timeout: float = COMMAND_TIMEOUT, *, root: bool = False
) -> str:
    """Run a shell command on the broker's host and return its output: here as it is
    (``ansible_connection: local``), or over SSH with the inventory's ``ansible_host``,
    ``ansible_user``, ``ansible_port`` and ``ansible_ssh_private_key_file``, through
    ``remote_command`` (become). ``root``: the command needs root (see remote_command).
    A non-zero exit fails the step with the command's own words."""
    if broker.is_local:
        proc = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise StepFailed(
                f"{broker.label()}: `{command}` failed (exit {proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[-500:]}"
            )
        return proc.stdout
    remote = remote_command(command, broker.vars, where=broker.label(), needs_root=root)
    ok, code, out, err = _ssh(broker, remote, timeout)
    if ok:
        return out
    err = err.replace(SUDO_PROMPT, "")
    text = (err or out).strip()
    as_whom = f"as {remote.become_user} via sudo" if remote.become_user else "without become"
    if remote.become_user and code == 127 and "sudo" in text and "not found" in text:
        hint = "sudo is not installed on the host"
    elif remote.become_user and "a password is required" in text:
        hint = (
            f"sudo asks {_login(broker)!r} for a password: allow it passwordless sudo "
            "(NOPASSWD) or set ansible_become_password"
        )
    elif remote.become_user and "not in the sudoers" in text:
        hint = f"{_login(broker)!r} may not use sudo there (not in the sudoers file)"
    elif not remote.become_user and DENIED.search(text):
        hint = (
            f"it ran as {_login(broker)!r} without become: "
            "set ansible_become: true for this host in the inventory"
        )
    else:
        hint = ""
    raise StepFailed(
        f"{broker.label()}: `{command}` over SSH ({as_whom}) failed (exit {code}): "
        f"{text[-500:]}" + (f" [{hint}]" if hint else "")
    )


def _login(broker: Broker) -> str:
    return str(broker.vars.get("ansible_user") or getpass.getuser())


def _ssh(broker: Broker, remote: Remote, timeout: float) -> tuple[bool, int, str, str]:
    from fabric import Connection  # the ops extra; only needed for remote hosts
    from invoke.exceptions import Failure, ResponseNotAccepted
    from invoke.watchers import FailingResponder

    v = broker.vars
    connect: dict[str, Any] = {}
    if v.get("ansible_ssh_private_key_file"):
        connect["key_filename"] = os.path.expanduser(str(v["ansible_ssh_private_key_file"]))
    password = v.get("ansible_password", v.get("ansible_ssh_pass"))
    if password:
        connect["password"] = str(password)
    watchers = []
    if remote.password is not None:
        watchers.append(
            FailingResponder(
                pattern=re.escape(SUDO_PROMPT),
                response=remote.password + "\n",
                sentinel="Sorry, try again.",
            )
        )
    with Connection(
        broker.host,
        user=str(v["ansible_user"]) if v.get("ansible_user") else None,
        port=int(v.get("ansible_port") or 22),
        connect_kwargs=connect,
        connect_timeout=10,
    ) as conn:
        try:
            result = conn.run(
                remote.line,
                hide=True,
                warn=True,
                timeout=timeout,
                in_stream=False,
                watchers=watchers,
            )
        except Failure as exc:
            if isinstance(exc.reason, ResponseNotAccepted):
                raise StepFailed(
                    f"{broker.label()}: sudo refused the ansible_become_password of "
                    f"{_login(broker)!r} (nothing was run)"
                ) from None
            raise
    return result.ok, result.exited, result.stdout, result.stderr
