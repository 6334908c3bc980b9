"""One small lab (2 hosts per region) for the module, always torn down.

Network namespaces are machine-wide, so only one lab can exist at a time: the fixture takes a
machine lock (another pytest worker waits for it) and refuses to touch a lab it did not make.
"""

from __future__ import annotations

import contextlib
import fcntl
import time

import pytest

from broker.lab import Lab, network

HOSTS_PER_REGION = 2
TEST_LOCK = "/run/lock/brk-lab-tests.lock"


@contextlib.contextmanager
def machine_lock(timeout: float = 300.0):
    with open(TEST_LOCK, "a") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another lab test run held {TEST_LOCK} for {timeout:g}s")
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with machine_lock():
        if existing := network.netns_list():
            reason = (
                f"a lab is already up ({', '.join(existing)}); not touching it "
                "(`python -m broker.lab down` removes it)"
            )
            print(reason)
            pytest.skip(reason)
        root = tmp_path_factory.mktemp("lab")
        lab = Lab(root / "var-lab", inventory=root / "inventories" / "lab" / "hosts.yml")
        try:
            lab.up(HOSTS_PER_REGION)
            yield lab
        finally:
            lab.down(purge=True)


@pytest.fixture
def live(lab):
    """The module lab, repaired if an earlier test broke it (``up`` is idempotent)."""
    lab.up(HOSTS_PER_REGION)
    return lab
