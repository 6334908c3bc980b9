import os
import stat
import struct

import pytest

from broker import fsutil
from broker.fsutil import (
    CorruptFileError,
    atomic_write,
    read_checked,
    remove_temp_files,
    write_checked,
)


def test_atomic_write_replaces_content_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "f"
    atomic_write(path, b"old")
    atomic_write(path, b"new")

    assert path.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["f"]


def test_atomic_write_syncs_file_before_rename_and_directory_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    def replace(src, dst):
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic_write(tmp_path / "f", b"data")

    assert events == ["file", "rename", "dir"]


def test_failed_atomic_write_keeps_old_file_and_removes_temp(tmp_path, monkeypatch):
    path = tmp_path / "f"
    atomic_write(path, b"old")

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        atomic_write(path, b"new")

    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]


def test_checked_round_trip(tmp_path):
    for payload in (b"", b"x", os.urandom(100_000)):
        write_checked(tmp_path / "f", payload)
        assert read_checked(tmp_path / "f") == payload


def test_read_checked_missing_file_is_not_corruption(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_checked(tmp_path / "absent")


def _damage(blob: bytes, how: str) -> bytes:
    if how == "truncated-payload":
        return blob[:-1]
    if how == "truncated-header":
        return blob[:10]
    if how == "empty":
        return b""
    if how == "flipped-bit":
        return blob[:-3] + bytes([blob[-3] ^ 0x01]) + blob[-2:]
    if how == "trailing-bytes":
        return blob + b"\0"
    if how == "bad-magic":
        return b"XXXX" + blob[4:]
    if how == "future-version":
        return blob[:4] + struct.pack("<H", 99) + blob[6:]
    raise AssertionError(how)


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("truncated-payload", "header says"),
        ("truncated-header", "truncated header"),
        ("empty", "truncated header"),
        ("flipped-bit", "checksum mismatch"),
        ("trailing-bytes", "header says"),
        ("bad-magic", "bad magic"),
        ("future-version", "unsupported format version 99"),
    ],
)
def test_read_checked_detects_damage(tmp_path, how, reason):
    path = tmp_path / "f"
    write_checked(path, b"some payload worth keeping")
    path.write_bytes(_damage(path.read_bytes(), how))

    with pytest.raises(CorruptFileError) as err:
        read_checked(path)

    assert err.value.path == str(path)
    assert reason in err.value.reason
    assert str(path) in str(err.value)


def test_remove_temp_files_only_removes_stale_temps_of_the_prefix(tmp_path):
    for name in ("meta", "meta.a1b2.tmp", "meta.zz.tmp", "other.a1.tmp", "metadata"):
        (tmp_path / name).write_bytes(b"")

    assert remove_temp_files(tmp_path, "meta.") == 2
    assert sorted(os.listdir(tmp_path)) == ["meta", "metadata", "other.a1.tmp"]


def test_fsync_dir_rejects_a_regular_file(tmp_path):
    (tmp_path / "f").write_bytes(b"")
    fsutil.fsync_dir(tmp_path)
    with pytest.raises(NotADirectoryError):
        fsutil.fsync_dir(tmp_path / "f")
