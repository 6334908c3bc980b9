"""deploy.yml refuses, before installing anything, a layout that lets one region commit
alone and a host whose Python is older than the broker needs."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT, ansible_playbook, make_local_inventory

pytestmark = pytest.mark.slow

# 0-3 in region0 and 4-7 in region1: the contiguous layout DESIGN section 2 warns about
CONTIGUOUS = {
    **{f"brk-r0-h{i}": i for i in range(4)},
    **{f"brk-r1-h{i}": 4 + i for i in range(4)},
}


def assert_nothing_installed(inv, run):
    assert not inv.var.exists() or not any(inv.var.iterdir()), (
        f"preflight failed but {inv.var} has {sorted(p.name for p in inv.var.iterdir())}\n{run}"
    )
    wheelhouse = inv.path.parent / "wheels"
    assert not wheelhouse.exists(), f"the wheel was built before preflight passed\n{run}"
    assert not inv.pids(), f"brokers were started: {inv.pids()}\n{run}"


def test_preflight_refuses_contiguous_ids_before_installing(tmp_path, broker_sources):
    inv = make_local_inventory(tmp_path, broker_sources, node_ids=CONTIGUOUS)

    run = ansible_playbook(inv.path, "playbooks/deploy.yml")

    assert run.returncode != 0, f"deploy accepted a contiguous layout\n{run}"
    assert "Preflight refused the inventory layout" in run.output, str(run)
    out = run.flat()
    # the explicit ids break the parity rule, host by host
    for host, node_id in CONTIGUOUS.items():
        region_id, ordinal = int(host[5]), int(host[-1])  # brk-r<region>-h<ordinal>
        if node_id != ordinal * 2 + region_id:
            assert f"{host}: broker_node_id {node_id} is not broker_ordinal" in out, str(run)
    assert "PARITY_MISMATCH: parity rule broken by brokers 1,3,4,6" in out, str(run)
    # and the partitions that would sit (a quorum of them) in one region are named
    for partition, where in {
        1: "region0 alone holds 4 of 4 replicas",
        2: "region0 alone holds 3 of 4 replicas",
        4: "region1 alone holds 3 of 4 replicas",
        5: "region1 alone holds 4 of 4 replicas",
        6: "region1 alone holds 3 of 4 replicas",
        8: "region0 alone holds 3 of 4 replicas",
    }.items():
        assert f"QUORUM_IN_ONE_REGION: partition {partition}: {where}" in out, str(run)
    for partition in (3, 7):  # these two happen to straddle both regions
        assert f"partition {partition}:" not in out, str(run)
    assert "(region0: -; region1: 4,5,6,7)" in out, str(run)
    assert_nothing_installed(inv, run)


def test_preflight_refuses_odd_replication_factor_before_installing(tmp_path, broker_sources):
    inv = make_local_inventory(
        tmp_path, broker_sources, cluster_vars={"broker_replication_factor": 3}
    )

    run = ansible_playbook(inv.path, "playbooks/deploy.yml")

    assert run.returncode != 0, f"deploy accepted replication factor 3\n{run}"
    out = run.flat()
    assert "RF_ODD: replicationFactor 3 is odd" in out, str(run)
    # parity ids are fine here; with 3 replicas one region always holds 2 = the quorum
    assert "NODE_ID_MISMATCH" not in out and "PARITY_MISMATCH" not in out, str(run)
    for partition in range(1, 9):
        assert f"QUORUM_IN_ONE_REGION: partition {partition}: " in out, str(run)
    assert "enough for the quorum of 2 (region0: 0,2; region1: 1)" in out, str(run)
    assert_nothing_installed(inv, run)


# --- the hosts' Python -------------------------------------------------------------------


def _version(python: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return tuple(int(x) for x in out.strip().split("."))


def older_python(minimum: tuple[int, int]) -> tuple[str, str] | None:
    """A real Python older than ``minimum`` on this machine (pyenv, /usr/bin), if any."""
    patterns = ["/root/.pyenv/versions/3.*/bin/python3.*", "~/.pyenv/versions/3.*/bin/python3.*"]
    patterns += ["/usr/bin/python3.*", "/usr/local/bin/python3.*"]
    candidates = [p for pattern in patterns for p in sorted(glob.glob(os.path.expanduser(pattern)))]
    for path in candidates:
        if not re.fullmatch(r"python3\.\d+", os.path.basename(path)):
            continue
        version = _version(path)
        if version and (3, 8) <= version[:2] < minimum:
            return path, ".".join(map(str, version))
    return None


def required_python() -> tuple[int, int]:
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    major, minor = re.fullmatch(r">=\s*(\d+)\.(\d+)", spec).groups()
    return int(major), int(minor)


def test_the_roles_python_minimum_is_the_projects():
    text = (ROOT / "roles/broker/tasks/preflight.yml").read_text()
    assert f'broker_python_minimum: "{".".join(map(str, required_python()))}"' in text


def test_preflight_refuses_hosts_whose_python_is_too_old_or_missing(tmp_path, broker_sources):
    minimum = required_python()
    found = older_python(minimum)
    if found:
        python, version = found
    else:  # no older Python here: a stand-in the role runs exactly as it would run one
        python, version = str(tmp_path / "python3.9"), "3.9.18"
        Path(python).write_text(f"#!/bin/sh\necho broker-python-version={version}\n")
        os.chmod(python, 0o755)
        print(f"no Python older than {minimum} on this machine: using a stand-in {python}")
    missing = str(tmp_path / "no-such-python3")
    inv = make_local_inventory(tmp_path, broker_sources)
    hosts = yaml.safe_load((inv.path / "hosts.yml").read_text())
    regions = hosts["all"]["children"]["brokers"]["children"]
    regions["region1"]["hosts"]["brk-r1-h2"]["broker_python"] = python
    regions["region0"]["hosts"]["brk-r0-h1"]["broker_python"] = missing
    (inv.path / "hosts.yml").write_text(yaml.safe_dump(hosts, sort_keys=False))

    run = ansible_playbook(inv.path, "playbooks/deploy.yml")

    assert run.returncode != 0, f"deploy accepted Python {version}\n{run}"
    out = run.flat()
    want = ".".join(map(str, minimum))
    assert (
        f"brk-r1-h2: broker_python {python} is Python {version}; the broker needs "
        f"Python >= {want} (requires-python in pyproject.toml)"
    ) in out, str(run)
    assert f"brk-r0-h1: broker_python {missing} is not a working Python" in out, str(run)
    failed = {host for host, recap in run.recap.items() if recap["failed"]}
    assert failed == {"brk-r1-h2", "brk-r0-h1"}, str(run)
    # the placement check passed before; nothing was installed anywhere
    assert "placement ok (layout): 8 partitions" in out, str(run)
    assert_nothing_installed(inv, run)
