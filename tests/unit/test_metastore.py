import os

import msgpack
import pytest

from broker.fsutil import CorruptFileError, write_checked
from broker.raft.messages import Configuration, HardState
from broker.raft.metastore import MetaStore

FORCED = HardState(term=7, vote=3, forced=Configuration.of({1, 2, 3}, {1: 3, 2: 2}), forced_term=6)


def test_load_without_file_gives_initial_state(tmp_path):
    assert MetaStore(tmp_path / "meta-dir").load() == HardState()


@pytest.mark.parametrize(
    "hs", [HardState(), HardState(term=5, vote=None), HardState(term=9, vote=0), FORCED]
)
def test_save_load_round_trip_across_reopen(tmp_path, hs):
    MetaStore(tmp_path).save(hs)
    assert MetaStore(tmp_path).load() == hs


def test_save_overwrites_previous_state(tmp_path):
    store = MetaStore(tmp_path)
    store.save(FORCED)
    store.save(HardState(term=8, vote=1))

    assert store.load() == HardState(term=8, vote=1)
    assert os.listdir(tmp_path) == ["meta"]


def test_half_written_temp_file_from_a_crash_does_not_affect_load(tmp_path):
    MetaStore(tmp_path).save(FORCED)
    # A crash inside atomic_write leaves a partial temp file next to the real one.
    (tmp_path / "meta.k3j2h1.tmp").write_bytes(b"BRKF\x01\x00\x00")

    store = MetaStore(tmp_path)

    assert store.load() == FORCED
    assert os.listdir(tmp_path) == ["meta"]


def test_failed_save_keeps_previous_state(tmp_path, monkeypatch):
    store = MetaStore(tmp_path)
    store.save(FORCED)

    def crash(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        store.save(HardState(term=100, vote=2))
    monkeypatch.undo()

    assert MetaStore(tmp_path).load() == FORCED


def test_corrupt_file_raises_instead_of_resetting(tmp_path):
    store = MetaStore(tmp_path)
    store.save(FORCED)
    blob = bytearray((tmp_path / "meta").read_bytes())
    blob[-1] ^= 0xFF
    (tmp_path / "meta").write_bytes(bytes(blob))

    with pytest.raises(CorruptFileError, match="checksum"):
        store.load()


def test_truncated_file_raises(tmp_path):
    store = MetaStore(tmp_path)
    store.save(FORCED)
    (tmp_path / "meta").write_bytes((tmp_path / "meta").read_bytes()[:-4])

    with pytest.raises(CorruptFileError):
        store.load()


@pytest.mark.parametrize(
    "payload",
    [
        b"\xc1",  # not msgpack
        msgpack.packb([1, 2]),  # wrong shape
        msgpack.packb({"term": 1, "vote": None, "forced": None}),  # missing key
        msgpack.packb({"term": "1", "vote": None, "forced": None, "forced_term": 0}),
        msgpack.packb({"term": 1, "vote": None, "forced": b"\x01", "forced_term": 0}),
    ],
)
def test_well_framed_but_undecodable_state_raises(tmp_path, payload):
    write_checked(tmp_path / "meta", payload)

    with pytest.raises(CorruptFileError, match="undecodable"):
        MetaStore(tmp_path).load()
