"""What every lab-using test shares, in tests/lab and tests/ansible alike.

Network namespaces are machine-wide, so only one lab can exist at a time. Every test that
brings one up is marked ``pytest.mark.xdist_group("brk-lab")`` (with ``--dist loadgroup`` they
all run on one worker, one after another) and holds :func:`machine_lock` while its lab exists,
so a second pytest run on the same machine waits instead of tearing it down. While a test's
lab is up, :func:`owned_lab` keeps a note of it beside the lock; a lab that a killed test run
left up (the note names a process that is gone) is taken down by the next run. Any other lab
is never touched: :func:`foreign_lab` names it and the test skips.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from pathlib import Path

import pytest

from broker.lab import Lab, LabError, network
from broker.lab.hosts import exclusive

TEST_LOCK = "/run/lock/brk-lab-tests.lock"
OWNER = Path("/run/lock/brk-lab-tests.owner")  # {"dir", "pid"}: the test lab that is up


@contextlib.contextmanager
def machine_lock(timeout: float = 300.0):
    try:
        with exclusive(TEST_LOCK, timeout, "another lab test run"):
            yield
    except LabError as exc:
        if "held " + TEST_LOCK not in str(exc):
            raise
        pytest.fail(str(exc))


def foreign_lab() -> str | None:
    """Why a lab that is up must be left alone, or None (call it holding the lock). A lab
    that a test run brought up and never took down (it was killed) is taken down first."""
    if network.netns_list() and (left := _left_over()):
        print(f"taking down the lab that test run pid {left['pid']} left up ({left['dir']})")
        lab_dir = Path(left["dir"])
        Lab(lab_dir if lab_dir.is_dir() else None).down(purge=lab_dir.is_dir())
        OWNER.unlink(missing_ok=True)
    if existing := network.netns_list():
        return (
            f"a lab is already up ({', '.join(existing)}); not touching it "
            "(`python -m broker.lab down` removes it)"
        )
    return None


def _left_over() -> dict | None:
    """The note of a test lab whose process is gone, or None."""
    try:
        note = json.loads(OWNER.read_text())
        pid, _ = int(note["pid"]), str(note["dir"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return note
    except PermissionError:
        return None
    return None  # its process still runs: not ours to take down


@contextlib.contextmanager
def owned_lab(lab_dir: Path):
    """Note, for as long as it is up, that the lab under ``lab_dir`` is this test run's
    (hold the lock; enter before ``up`` and leave after ``down``)."""
    OWNER.write_text(json.dumps({"dir": str(lab_dir), "pid": os.getpid()}))
    try:
        yield
    finally:
        OWNER.unlink(missing_ok=True)


def skip_for_foreign_lab() -> None:
    if reason := foreign_lab():
        print(reason)
        pytest.skip(reason)


def apply_xdist_groups(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Make ``xdist_group`` marks group tests again under ``--dist loadgroup``.

    pytest-xdist (3.8) groups a test by appending ``@<group>`` to ``item._nodeid`` on the
    worker; pytest 9 derives ``Node.nodeid`` from ``Node._id`` instead, so the suffix is lost,
    every lab test is its own work unit and two workers bring labs up at once (one of them
    then waits on the machine lock, or times out). This applies the suffix where pytest 9
    keeps the id; it does nothing where the id already carries it (xdist ran first and worked).
    """
    if not getattr(config.option, "loadgroup", False):
        return
    try:
        from _pytest.nodeid import NodeId
    except ImportError:  # an older pytest: xdist's own suffix works there
        return
    for item in items:
        names = {
            str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
            for mark in item.iter_markers("xdist_group")
        }
        old = getattr(item, "_id", None)
        if not names or not isinstance(old, NodeId) or "@" in old.names[-1]:
            continue
        # the whole tail in the last name, so that str(), .rest and copies all read the same
        params = "" if old.params is None else f"[{old.params}]"
        last = f"{old.names[-1]}{params}@{'_'.join(sorted(names))}"
        item._id = NodeId(path=old.path, names=(*old.names[:-1], last))


def longest_stall(acks, start: float, end: float) -> float:
    """The longest time between ``start`` and ``end`` without an acknowledgement (``acks``:
    :class:`broker.ops.load.Ack`, times from ``time.monotonic()``)."""
    times = [start, *sorted(a.acked for a in acks if start <= a.acked <= end), end]
    return max(b - a for a, b in itertools.pairwise(times))
