"""Smoke tests of the PySyncObj baseline (bench/pysyncobj_peer.py): real processes, ~3 s each."""

import os

import pytest

from bench import pysyncobj_peer

pytest.importorskip("pysyncobj")  # the node processes need the bench extra


@pytest.fixture
def started(monkeypatch):
    """The node processes that ``run`` starts, to check afterwards that they are gone."""
    nodes = []
    real = pysyncobj_peer.start_cluster

    def recording(*args, **kwargs):
        nodes.extend(real(*args, **kwargs))
        return nodes

    monkeypatch.setattr(pysyncobj_peer, "start_cluster", recording)
    return nodes


def assert_gone(nodes):
    for node in nodes:
        assert node.returncode is not None, f"{node.address} (pid {node.pid}) still running"
        with pytest.raises(ProcessLookupError):  # reaped, so the pid no longer exists
            os.kill(node.pid, 0)


@pytest.mark.timeout(90)
def test_three_nodes_elect_commit_and_clean_up(tmp_path, started):
    result = pysyncobj_peer.run(duration=1.0, warmup=0.3, rounds=1, workdir=tmp_path)

    assert len(started) == 3 and result["nodes"] == 3
    assert result["leader"] in {node.address for node in started}
    assert result["committed"] > 0 and result["commits_per_s"] > 0
    assert len(result["rounds"]) == 1
    # Every counted success was applied to the leader's replicated state.
    assert result["applied"] >= result["committed"]
    assert (result["record_bytes"], result["fsync"]) == (100, False)
    assert_gone(started)
    assert list(tmp_path.iterdir()) == []  # journals, dumps and logs removed


@pytest.mark.timeout(90)
def test_nodes_are_stopped_when_the_load_fails(tmp_path, started, monkeypatch):
    def broken_load(leader, *args, **kwargs):
        raise RuntimeError("load exploded")

    monkeypatch.setattr(pysyncobj_peer, "load", broken_load)
    with pytest.raises(RuntimeError, match="load exploded"):
        pysyncobj_peer.run(duration=1.0, workdir=tmp_path)

    assert len(started) == 3
    assert_gone(started)
    assert list(tmp_path.iterdir()) == []
