"""`molecule test` for every scenario of role broker (roles/broker/molecule/), as a real
subprocess from roles/broker with .venv/bin first on PATH and no stdin: lab hosts up over
SSH, converge, idempotence, verify with testinfra, destroy.

- default: 4 brokers, 2 on each of 2 lab hosts (the smallest layout preflight accepts);
  testinfra checks ports, configuration file, process user and health on every broker;
- cluster: 4 lab hosts, one broker each, 4 partitions RF 4; side_effect runs the role's
  verify entry point and testinfra checks RF/2 replicas per region on every partition;
- systemd: 4 lab hosts that boot systemd (`lab up --init systemd`), logged into as deploy
  with become, one broker each as the role's hardened unit; testinfra checks the unit is
  active, enabled, sandboxed (systemd-analyze security) and its ports listen. It takes
  minutes on a busy machine: the whole scenario runs with BROKER_LONG_TESTS=1, and
  `molecule syntax -s systemd` always.

Each run gets its own molecule ephemeral directory (MOLECULE_EPHEMERAL_DIRECTORY), which
holds its lab's keys and data. The lab is machine-wide: the tests hold the machine lock,
skip when a lab they did not bring up is up, and take down whatever is left afterwards.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from broker.lab import Lab, network, systemd, unavailable_reason
from tests.labutil import machine_lock, owned_lab, skip_for_foreign_lab

from .conftest import ROOT, ansible_env, tool

REASON = unavailable_reason()
if REASON:
    print(f"tests/ansible/test_molecule.py skipped: {REASON}")
    pytest.skip(REASON, allow_module_level=True)

# the lab is machine-wide: with `pytest -n --dist loadgroup` every lab test runs on one worker
pytestmark = [pytest.mark.xdist_group("brk-lab"), pytest.mark.slow]

ROLE = ROOT / "roles" / "broker"
# testinfra tests each scenario must have run (tests x hosts, plus host-less tests)
SCENARIOS = {"default": 5 * 4, "cluster": 2 * 4 + 1, "systemd": 8 * 4}
STEPS = {
    "default": ["destroy", "syntax", "create", "converge", "idempotence", "verify", "destroy"],
    "systemd": ["destroy", "syntax", "create", "converge", "idempotence", "verify", "destroy"],
    "cluster": [
        "destroy", "syntax", "create", "converge", "idempotence", "side_effect", "verify",
        "destroy",
    ],
}  # fmt: skip
PYTEST_SUMMARY = re.compile(r"=+ ((?:\d+ \w+(?:, )?)+) in [\d.]+s\b")


def molecule(scenario: str, command: str, ephemeral: Path, timeout: float) -> tuple[int, str]:
    env = ansible_env(
        MOLECULE_EPHEMERAL_DIRECTORY=str(ephemeral),
        # only this scenario's molecule.yml is loaded (they would share the directory's state)
        MOLECULE_GLOB=f"molecule/{scenario}/molecule.yml",
        COLUMNS="200",
        TERM="dumb",
    )
    env.pop("ANSIBLE_CONFIG")  # molecule writes its own ansible.cfg
    for name in [n for n in env if n.startswith("PYTEST_")]:  # testinfra runs its own pytest
        del env[name]
    proc = subprocess.run(
        [tool("molecule"), command, "-s", scenario],
        cwd=ROLE,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    return proc.returncode, proc.stdout


def summary_counts(output: str) -> dict[str, int]:
    """The testinfra pytest summary ("20 passed in 16.05s") as {outcome: count}."""
    found = PYTEST_SUMMARY.findall(output)
    assert len(found) == 1, f"expected one testinfra summary line, found {found}"
    return {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", found[0])}


SYSTEMD_FULL = os.environ.get("BROKER_LONG_TESTS") == "1"


def skip_unless_systemd_runs(scenario: str) -> None:
    if scenario != "systemd":
        return
    if not SYSTEMD_FULL:
        pytest.skip("molecule test -s systemd takes minutes: BROKER_LONG_TESTS=1")
    if reason := systemd.unavailable_reason():
        print(f"systemd lab hosts unavailable: {reason}")
        pytest.skip(reason)


def test_molecule_systemd_scenario_syntax(tmp_path):
    """The part of the systemd scenario that needs no lab: its playbooks parse."""
    rc, output = molecule("systemd", "syntax", tmp_path, timeout=300)
    assert rc == 0, output
    assert re.search(r"^systemd (?:➜|>) syntax: Executed: Successful$", output, re.M), output


@pytest.mark.timeout(1500)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_molecule_scenario_passes(scenario, tmp_path_factory, record_property):
    skip_unless_systemd_runs(scenario)
    ephemeral = tmp_path_factory.mktemp(f"mol-{scenario}")  # short: SSH control sockets live here
    with machine_lock():
        skip_for_foreign_lab()
        start = time.monotonic()
        with owned_lab(ephemeral / "lab"):  # the driver's lab (molecule/*/create.yml)
            try:
                rc, output = molecule(scenario, "test", ephemeral, timeout=1200)
            finally:
                seconds = time.monotonic() - start
                if network.netns_list():  # molecule did not destroy: everything brk is ours
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        molecule(scenario, "destroy", ephemeral, timeout=300)
                    Lab(ephemeral / "lab", inventory=ephemeral / "lab-hosts.yml").down(purge=True)
        record_property("seconds", round(seconds, 1))
        print(f"molecule test -s {scenario}: exit {rc} after {seconds:.1f}s")

    tail = "\n".join(output.splitlines()[-150:])
    assert rc == 0, f"molecule test -s {scenario} exited {rc}:\n{tail}"
    # every step ran and passed (idempotence: a second converge changed nothing)
    for step in STEPS[scenario]:
        done = re.compile(rf"^{scenario} (?:➜|>) {step}: Executed: Successful$", re.M)
        assert done.search(output), f"{step} did not pass:\n{tail}"
    counts = summary_counts(output)
    assert set(counts) == {"passed"}, (counts, tail)
    assert counts["passed"] >= SCENARIOS[scenario], (counts, tail)
    assert network.netns_list() == [], "molecule destroy left lab namespaces behind"
    assert not (ephemeral / "lab").exists(), "molecule destroy left the lab's keys and data"
