"""become over a real SSH login as a non-root user, with the real sudo.

An sshd on loopback runs in a private mount namespace whose /etc/passwd, /etc/group,
/etc/shadow and /etc/sudoers.d carry two extra accounts (the machine's files are not
touched): ``deploy``, with passwordless sudo (as the lab's systemd hosts and the example
inventory have it), and ``deploy2``, whose sudo asks for its password. ``run_on`` logs in as
them with a key, as it logs in to any inventory host.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from broker.ops.control import run_on
from broker.ops.inventory import Broker
from broker.ops.steps import StepFailed
from tests.helpers import wait_until

TOOLS = ("sudo", "unshare", "ssh-keygen", "openssl", "mount")
SSHD = "/usr/sbin/sshd"
PASSWORD = "Pa55 'w0rd' $x"
UIDS = {"deploy": 47110, "deploy2": 47111}


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (a mount namespace and an sshd)"
    absent = [t for t in TOOLS if not shutil.which(t)] + ([] if os.path.exists(SSHD) else [SSHD])
    return f"missing {', '.join(absent)} (apt-get install sudo openssh-server)" if absent else None


REASON = _missing()
if REASON:
    print(f"tests/ops/test_become_ssh.py skipped: {REASON}")
    pytest.skip(REASON, allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd():
    root = Path(tempfile.mkdtemp(prefix="brk-become-", dir="/tmp"))
    root.chmod(0o755)  # the users read their keys below it
    proc = None
    try:
        key = root / "id_ed25519"
        for path in (key, root / "host_key"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True
            )
        pw_hash = subprocess.run(
            ["openssl", "passwd", "-6", "-stdin"],
            input=PASSWORD, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        (root / "keys").mkdir()
        passwd, group, shadow = (
            Path(f"/etc/{n}").read_text() for n in ("passwd", "group", "shadow")
        )
        for user, uid in UIDS.items():
            home = root / "home" / user
            home.mkdir(parents=True)
            os.chown(home, uid, uid)
            (root / "keys" / user).write_text((root / "id_ed25519.pub").read_text())
            passwd += f"{user}:x:{uid}:{uid}::{home}:/bin/sh\n"
            group += f"{user}:x:{uid}:\n"
            shadow += f"{user}:{pw_hash if user == 'deploy2' else '*'}:20000:0:99999:7:::\n"
        etc = root / "etc"
        etc.mkdir()
        (etc / "passwd").write_text(passwd)
        (etc / "group").write_text(group)
        (etc / "shadow").write_text(shadow)
        (etc / "shadow").chmod(0o640)
        sudoers = etc / "sudoers.d"
        shutil.copytree("/etc/sudoers.d", sudoers)
        (sudoers / "brk-become").write_text(
            "deploy ALL=(ALL:ALL) NOPASSWD: ALL\ndeploy2 ALL=(ALL:ALL) ALL\n"
        )
        (sudoers / "brk-become").chmod(0o440)
        port = _free_port()
        (root / "sshd_config").write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\n"
            f"PidFile {root / 'sshd.pid'}\nAuthorizedKeysFile {root / 'keys'}/%u\n"
            "PubkeyAuthentication yes\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nUseDNS no\n"
            "PermitRootLogin no\nAllowUsers deploy deploy2\nMaxStartups 50\nMaxSessions 50\n"
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation
        binds = " && ".join(
            f"mount --bind {etc / n} /etc/{n}" for n in ("passwd", "group", "shadow", "sudoers.d")
        )
        proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
             f"{binds} && exec {SSHD} -D -e -f {root / 'sshd_config'}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(root / "sshd.log", "wb"),  # noqa: SIM115 (closed with the process)
        )  # fmt: skip

        def listening() -> bool:
            assert proc.poll() is None, (root / "sshd.log").read_text()
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_until(listening, 10, interval=0.05)
        yield {"port": port, "key": str(key), "root": root}
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)


def host(sshd, user: str = "deploy", **vars_) -> Broker:
    base = {
        "ansible_host": "127.0.0.1",
        "ansible_user": user,
        "ansible_port": sshd["port"],
        "ansible_ssh_private_key_file": sshd["key"],
    }
    return Broker(1, "brk-r1-h0", "region1", "127.0.0.1", 1, 2, 3, vars={**base, **vars_})


def test_without_become_commands_run_as_the_login_user(sshd):
    assert run_on(host(sshd), "id -un") == "deploy\n"


def test_with_become_commands_run_as_root_and_keep_their_shell_syntax(sshd):
    b = host(sshd, ansible_become=True)
    assert run_on(b, 'id -un; echo "$(id -u)" | tr 0 Z') == "root\nZ\n"
    assert run_on(b, "printf '%s|' 'it''s' \"a b\" '$HOME'") == "its|a b|$HOME|"
    assert run_on(host(sshd, ansible_become="yes"), "id -u", root=True) == "0\n"


def test_become_user_is_honoured(sshd):
    assert run_on(host(sshd, ansible_become=True, ansible_become_user="deploy2"), "id -un") == (
        "deploy2\n"
    )


def test_a_denied_command_without_become_says_to_set_ansible_become(sshd):
    with pytest.raises(StepFailed) as exc:
        run_on(host(sshd), "cat /etc/shadow")
    assert "Permission denied" in exc.value.saw
    assert "without become" in exc.value.saw and "set ansible_become: true" in exc.value.saw
    assert run_on(host(sshd, ansible_become=True), "head -c 5 /etc/shadow") == "root:"


def test_a_root_command_without_become_is_refused_before_it_runs(sshd, tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(StepFailed, match="set ansible_become: true"):
        run_on(host(sshd), f"touch {marker}", root=True)
    assert not marker.exists()


def test_a_sudo_that_asks_for_a_password_fails_fast_and_clearly(sshd):
    started = time.monotonic()
    with pytest.raises(StepFailed) as exc:
        run_on(host(sshd, "deploy2", ansible_become=True), "id -u")
    assert time.monotonic() - started < 15
    assert "a password is required" in exc.value.saw
    assert "'deploy2'" in exc.value.saw and "ansible_become_password" in exc.value.saw


@pytest.mark.parametrize("key", ["ansible_become_password", "ansible_become_pass"])
def test_a_become_password_is_given_to_sudo_and_never_shown(sshd, key):
    b = host(sshd, "deploy2", ansible_become=True, **{key: PASSWORD})
    assert run_on(b, "id -un; whoami") == "root\nroot\n"
    with pytest.raises(StepFailed) as exc:
        run_on(b, "echo out; echo err >&2; exit 4")
    assert "exit 4" in exc.value.saw and "err" in exc.value.saw
    assert PASSWORD not in exc.value.saw and "password:" not in exc.value.saw


def test_a_wrong_become_password_is_reported_and_not_shown(sshd):
    wrong = "not-the-password"
    b = host(sshd, "deploy2", ansible_become=True, ansible_become_password=wrong)
    started = time.monotonic()
    with pytest.raises(StepFailed) as exc:
        run_on(b, "id -u")
    assert time.monotonic() - started < 30
    assert "sudo refused the ansible_become_password of 'deploy2'" in exc.value.saw
    assert wrong not in exc.value.saw


def test_another_become_method_runs_nothing(sshd, tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(StepFailed, match="ansible_become_method 'su' is not supported"):
        run_on(host(sshd, ansible_become=True, ansible_become_method="su"), f"touch {marker}")
    assert not marker.exists()
