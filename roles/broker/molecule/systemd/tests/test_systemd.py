"""Testinfra checks of the `systemd` scenario (4 lab hosts that boot systemd, one broker each,
logged into as `deploy` with sudo), run by `molecule verify` on every broker: the unit is
active and enabled with Restart=on-failure, sandboxed as the template says and as
`systemd-analyze security` rates it, its process runs as `broker`, its configuration is
readable by the broker's group only, its TLS key is the broker's alone, and its ports
listen and speak TLS.

The expected values are worked out here, not read back from what the role rendered.
"""

from __future__ import annotations

import os
import re

import pytest
import testinfra.utils.ansible_runner

RUNNER = testinfra.utils.ansible_runner.AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"])
testinfra_hosts = RUNNER.get_hosts("brokers")

PORTS = (26500, 26502, 9600)
# what `systemctl show broker` must say (properties of the hardened unit)
SANDBOX = {
    "User": "broker",
    "Restart": "on-failure",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "PrivateUsers": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "CapabilityBoundingSet": "",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "UMask": "0027",
    "LimitNOFILE": "65536",
    "SystemCallArchitectures": "native",
}
EXPOSURE_LIMIT = 3.0  # systemd-analyze's "OK" band ends at 3.9; the unit scores about 1.1


@pytest.fixture(scope="module")
def unit(host) -> dict[str, str]:
    out = host.check_output("systemctl show broker --no-pager")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_the_host_runs_systemd_and_we_are_deploy_with_sudo(host):
    assert host.check_output("systemctl is-system-running") in ("running", "degraded")
    assert host.user().name == "root"  # through become (sudo)
    assert host.run("sudo -u deploy sudo -n true").rc == 0


def test_unit_is_active_enabled_and_restarts_on_failure(host, unit):
    service = host.service("broker")
    assert service.is_running and service.is_enabled
    assert unit["ActiveState"] == "active" and unit["UnitFileState"] == "enabled"
    assert unit["Restart"] == "on-failure"
    proc = host.process.get(pid=int(unit["MainPID"]))
    assert proc.user == "broker", proc.user
    assert "broker run --config /etc/broker/broker.yaml" in proc.args


def test_unit_is_hardened(host, unit):
    # `systemctl show` leaves out empty properties (CapabilityBoundingSet=)
    wrong = {k: unit.get(k, "") for k, v in SANDBOX.items() if unit.get(k, "") != v}
    assert not wrong, wrong
    assert unit["ReadWritePaths"].split() == ["/var/lib/broker", "/var/lib/broker-export"]
    assert "@system-service" not in unit["SystemCallFilter"]  # shown expanded: a list of calls
    assert unit["SystemCallFilter"].split()  # but there is one
    out = host.check_output("systemd-analyze security broker --no-pager")
    score = float(re.search(r"Overall exposure level for broker\.service: ([\d.]+)", out)[1])
    print(f"{host.backend.get_hostname()}: systemd-analyze security broker: {score}")
    assert score < EXPOSURE_LIMIT, out


def test_the_sandbox_holds_for_the_running_broker(host, unit):
    pid = unit["MainPID"]
    status = host.file(f"/proc/{pid}/status").content_string
    caps = {k: v for k, v in re.findall(r"^(Cap\w+):\s+(\w+)$", status, re.M)}
    assert int(caps["CapEff"], 16) == 0 and int(caps["CapBnd"], 16) == 0, caps
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.M), status
    assert re.search(r"^Seccomp:\s+2$", status, re.M), status


def test_configuration_and_data_belong_to_the_broker(host):
    config = host.file("/etc/broker/broker.yaml")
    assert (config.mode, config.user, config.group) == (0o640, "root", "broker")
    for path in ("/var/lib/broker", "/var/lib/broker-export"):
        d = host.file(path)
        assert d.is_directory and (d.user, d.group, d.mode) == ("broker", "broker", 0o750)


def test_ports_listen(host):
    for port in PORTS:
        assert host.socket(f"tcp://0.0.0.0:{port}").is_listening, port


def test_tls_files_are_the_brokers_and_the_key_is_private(host):
    d = host.file("/etc/broker/tls")
    assert d.is_directory and (d.user, d.group, d.mode) == ("broker", "broker", 0o700)
    key = host.file("/etc/broker/tls/broker.key")
    assert (key.user, key.mode) == ("broker", 0o600)
    config = host.check_output("grep -A6 '^  tls:' /etc/broker/broker.yaml")
    assert "enabled: true" in config and "/etc/broker/tls/broker.crt" in config, config


FETCH = """
import ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[2]) if sys.argv[2] else None
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=5, context=ctx).read().decode())
except Exception as exc:
    print(f"refused: {exc}")
"""


def test_management_answers_https_only(host):
    """Plain HTTP gets no answer; HTTPS with the installed CA gets the health document
    (the certificate names the host's address, which the request is made to)."""
    address = host.ansible.get_variables()["ansible_host"]
    fetch = f"python3 -c '{FETCH}'"
    plain = host.check_output(f"{fetch} http://{address}:9600/actuator/health ''")
    assert plain.startswith("refused:"), plain
    ca = "/etc/broker/tls/ca.crt"
    tls = host.check_output(f"{fetch} https://{address}:9600/actuator/health {ca}")
    assert '"status"' in tls, tls
