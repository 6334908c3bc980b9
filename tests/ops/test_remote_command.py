"""How broker.ops turns a command and a host's inventory variables into what runs there
(``remote_command``): become as Ansible reads it, sudo's flags, the quoting of the command,
and the refusals (another become method, root commands without become, bad booleans).

The quoting is checked by running the produced line for real: as root, ``sudo -n -u root``
works on this machine, so the wrapped command must print exactly what the bare one prints.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess

import pytest

from broker.ops.control import SUDO_PROMPT, Remote, ansible_bool, remote_command, run_on
from broker.ops.inventory import Broker
from broker.ops.steps import StepFailed

BECOME = {"ansible_user": "deploy", "ansible_become": True}

TRICKY = [
    "echo plain",
    "echo 'single quoted' \"double quoted\"",
    'echo "it\'s"; echo two',
    "x='a b'; echo \"$x\" | tr a-z A-Z",
    "printf '%s\\n' 'back\\slash' '$HOME' '`id`' '!bang'",
    "printf %s 'table inet t {\n  chain c { ip saddr { 1.2.3.4 } drop; }\n}\n'",
    "false || echo fell through && echo and on",
    "echo $((6 * 7)) > /dev/null; echo done",
]


def broker(**vars_) -> Broker:
    """A remote host (it has an ansible_user) on loopback port 1: a refusal that came too
    late would show as a refused connection, never as traffic leaving the machine."""
    vars_ = {"ansible_port": 1, **vars_}
    return Broker(0, "brk-r0-h0", "region0", "127.0.0.1", 26500, 26502, 9600, vars=vars_)


# --- Ansible's booleans ---------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, "yes", "Yes", "true", "True", "on", "1", 1, "y"])
def test_become_true_in_every_ansible_spelling(value):
    assert ansible_bool(value, "ansible_become", "h") is True
    remote = remote_command("id -u", {**BECOME, "ansible_become": value})
    assert remote.line.startswith("sudo -n -H -u root -- sh -c ")
    assert remote.become_user == "root"


@pytest.mark.parametrize("value", [False, "no", "false", "False", "off", "0", 0, None, ""])
def test_become_false_runs_the_command_as_it_is(value):
    remote = remote_command("id -u; echo 'x'", {"ansible_user": "root", "ansible_become": value})
    assert remote == Remote("id -u; echo 'x'")


def test_an_unreadable_boolean_is_refused_naming_the_host():
    with pytest.raises(StepFailed, match=r"host h: ansible_become is 'maybe', not a boolean"):
        remote_command("id", {"ansible_become": "maybe"}, where="host h")
    with pytest.raises(StepFailed, match="not a boolean"):
        remote_command("id", {"ansible_become": "{{ become_it }}"})  # an unrendered template


# --- sudo's command line --------------------------------------------------------------------


def test_sudo_is_non_interactive_and_the_command_one_quoted_word():
    remote = remote_command("systemctl stop 'broker'; echo $HOME", BECOME)
    argv = shlex.split(remote.line)
    assert argv == [
        "sudo", "-n", "-H", "-u", "root", "--", "sh", "-c", "systemctl stop 'broker'; echo $HOME"
    ]  # fmt: skip
    assert remote.password is None


def test_become_user_is_honoured_and_quoted():
    remote = remote_command("id -un", {**BECOME, "ansible_become_user": "broker"})
    assert shlex.split(remote.line)[:5] == ["sudo", "-n", "-H", "-u", "broker"]
    odd = remote_command("id", {**BECOME, "ansible_become_user": "a b;rm"})
    assert shlex.split(odd.line)[4] == "a b;rm"


@pytest.mark.parametrize("key", ["ansible_become_password", "ansible_become_pass"])
def test_a_become_password_is_answered_never_written_into_the_line(key):
    secret = "s3cr3t 'quoted' $pw"
    remote = remote_command("id -u", {**BECOME, key: secret})
    argv = shlex.split(remote.line)
    assert argv[:3] == ["sudo", "-S", "-p"] and argv[3] == SUDO_PROMPT
    assert argv[4:] == ["-H", "-u", "root", "--", "sh", "-c", "id -u"]
    assert remote.password == secret
    assert secret not in remote.line and secret not in repr(remote)


@pytest.mark.parametrize("method", ["su", "doas", "pbrun", "runas"])
def test_another_become_method_is_refused_naming_host_and_method(method):
    with pytest.raises(StepFailed) as exc:
        remote_command(
            "id", {**BECOME, "ansible_become_method": method}, where="broker 3 (brk-r1-h1)"
        )
    assert "broker 3 (brk-r1-h1)" in exc.value.saw
    assert f"ansible_become_method {method!r} is not supported" in exc.value.saw


def test_method_sudo_spelled_out_is_the_default():
    assert remote_command("id", {**BECOME, "ansible_become_method": "sudo"}) == remote_command(
        "id", BECOME
    )


def test_a_method_is_irrelevant_without_become():
    assert remote_command("id", {"ansible_become_method": "su"}).line == "id"


# --- commands that need root ----------------------------------------------------------------


def test_root_command_as_a_user_without_become_says_to_set_ansible_become():
    with pytest.raises(StepFailed) as exc:
        remote_command(
            "systemctl stop broker", {"ansible_user": "deploy"}, where="h1", needs_root=True
        )
    assert "h1: `systemctl stop broker` needs root" in exc.value.saw
    assert "'deploy'" in exc.value.saw and "set ansible_become: true" in exc.value.saw


def test_root_command_as_root_or_with_become_runs():
    assert remote_command("nft list tables", {"ansible_user": "root"}, needs_root=True).line == (
        "nft list tables"
    )
    assert remote_command("nft list tables", BECOME, needs_root=True).become_user == "root"


def test_root_command_with_a_non_root_become_user_is_refused():
    with pytest.raises(StepFailed, match="ansible_become_user is 'broker'"):
        remote_command(
            "nft list tables", {**BECOME, "ansible_become_user": "broker"}, needs_root=True
        )


def test_run_on_refuses_before_connecting():
    with pytest.raises(StepFailed, match="needs root"):
        run_on(broker(ansible_user="deploy"), "systemctl stop broker", root=True)
    with pytest.raises(StepFailed, match="'su' is not supported"):
        run_on(broker(**BECOME, ansible_become_method="su"), "id")


def test_local_hosts_run_as_today_whatever_become_says():
    local = Broker(
        0, "l", "region0", "127.0.0.1", 1, 2, 3,
        vars={"ansible_connection": "local", "ansible_become": True,
              "ansible_become_method": "su"},
    )  # fmt: skip
    assert run_on(local, "echo here") == "here\n"


# --- the quoting, for real ------------------------------------------------------------------

needs_sudo = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("sudo"),
    reason="running a sudo line needs root and sudo (apt-get install sudo)",
)


def sh(line: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", line], capture_output=True, text=True, timeout=30)


@needs_sudo
@pytest.mark.parametrize("command", TRICKY)
def test_the_wrapped_command_prints_what_the_bare_one_prints(command):
    bare = sh(command)
    wrapped = sh(remote_command(command, BECOME).line)
    assert wrapped.returncode == bare.returncode == 0, wrapped.stderr
    assert wrapped.stdout == bare.stdout
    assert bare.stdout.strip()


@needs_sudo
def test_the_wrapped_command_keeps_its_exit_code_and_runs_as_the_become_user():
    assert sh(remote_command("exit 3", BECOME).line).returncode == 3
    assert sh(remote_command("id -un", BECOME).line).stdout == "root\n"
    nobody = sh(remote_command("id -un", {**BECOME, "ansible_become_user": "nobody"}).line)
    assert nobody.stdout == "nobody\n", nobody.stderr


def test_broker_start_passes_the_roles_log_rotation():
    """`broker start` from the ops library rotates its log as the role's start does."""
    from broker.ops.control import _broker_command

    b = broker(
        broker_config_file="/etc/broker/broker.yaml",
        broker_venv_dir="/opt/broker/venv",
        broker_process_log_max_size="16MB",
        broker_process_log_keep=3,
    )
    argv = _broker_command(b, "start", local=False)
    assert argv[:2] == ["/opt/broker/venv/bin/broker", "start"]
    assert argv[argv.index("--log-max-size") + 1] == "16MB"
    assert argv[argv.index("--log-keep") + 1] == "3"
    assert "--log-keep" not in _broker_command(b, "stop", local=False)
