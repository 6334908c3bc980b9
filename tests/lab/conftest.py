"""One small lab (2 hosts per region) for the module, always torn down; ``systemd_lab``: the
same with hosts that boot systemd; ``big_lab``: 4 hosts per region.

Network namespaces are machine-wide, so only one lab can exist at a time: the fixture takes a
machine lock (another pytest worker waits for it) and refuses to touch a lab it did not make.
"""

from __future__ import annotations

import pytest

from broker.lab import Lab, systemd
from tests.ansible.conftest import broker_sources  # noqa: F401 (the shared source snapshot)
from tests.labutil import (
    TEST_LOCK,
    apply_xdist_groups,
    machine_lock,
    owned_lab,
    skip_for_foreign_lab,
)

__all__ = ["HOSTS_PER_REGION", "TEST_LOCK", "machine_lock"]

HOSTS_PER_REGION = 2


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    # every lab test on one worker, one after another (see tests/labutil.py)
    apply_xdist_groups(config, items)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with machine_lock():
        skip_for_foreign_lab()
        root = tmp_path_factory.mktemp("lab")
        lab = Lab(root / "var-lab", inventory=root / "inventories" / "lab" / "hosts.yml")
        with owned_lab(lab.dir):
            # the one plaintext scenario kept (test_lab_deploy, test_lab_ops: deploy, rolling
            # restart under load, verify, drill over SSH); the systemd lab, the demo and
            # inventories/local use TLS, as `lab up` does by default
            try:
                lab.up(HOSTS_PER_REGION, tls=False)
                yield lab
            finally:
                lab.down(purge=True)


@pytest.fixture(scope="module")
def big_lab(tmp_path_factory):
    """8 hosts (4 per region, 8 partitions, RF 4), plaintext, no broker deployed: the
    scale and upgrade runs of make test-long."""
    with machine_lock():
        skip_for_foreign_lab()
        root = tmp_path_factory.mktemp("lab-8")
        lab = Lab(root / "var-lab", inventory=root / "inventories" / "lab" / "hosts.yml")
        with owned_lab(lab.dir):
            try:
                lab.up(4, tls=False)
                yield lab
            finally:
                lab.down(purge=True)


@pytest.fixture(scope="module")
def systemd_lab(tmp_path_factory):
    """The same, with hosts that boot systemd (``init="systemd"``): SSH as deploy + sudo."""
    if reason := systemd.unavailable_reason():
        print(f"systemd lab hosts unavailable: {reason}")
        pytest.skip(reason)
    with machine_lock():
        skip_for_foreign_lab()
        root = tmp_path_factory.mktemp("lab-systemd")
        lab = Lab(
            root / "var-lab", inventory=root / "inventories" / "lab" / "hosts.yml", init="systemd"
        )
        with owned_lab(lab.dir):
            try:
                lab.up(HOSTS_PER_REGION, timeout=120)
                yield lab
            finally:
                lab.down(purge=True)


@pytest.fixture
def live(lab):
    """The module lab, repaired if an earlier test broke it (``up`` is idempotent)."""
    lab.up(HOSTS_PER_REGION)
    return lab
