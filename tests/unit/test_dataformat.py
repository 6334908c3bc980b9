"""The data directory's format marker and ``broker check-data``: a broker never runs data
written in a newer format than it reads, and says what to do instead."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from broker import __version__, dataformat
from broker.demo.localcluster import LocalCluster
from broker.fsutil import StorageError


def write_marker(directory, fmt: int, version: str = "9.9.9") -> None:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, dataformat.FORMAT_FILE), "w") as f:
        json.dump({"format": fmt, "brokerVersion": version}, f)


def marker_of(directory) -> dict:
    with open(os.path.join(directory, dataformat.FORMAT_FILE)) as f:
        return json.load(f)


def tree(directory) -> dict[str, tuple[int, int]]:
    """Every entry under ``directory`` with its size and mtime: 'changes nothing' is this."""
    out = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            out[os.path.relpath(path, directory)] = (st.st_size, st.st_mtime_ns)
    return out


def test_absent_directory_and_empty_directory_are_fresh(tmp_path):
    assert dataformat.check(str(tmp_path / "nothing")).format is None
    (tmp_path / "empty").mkdir()
    assert dataformat.check(str(tmp_path / "empty")).format is None
    assert not (tmp_path / "nothing").exists(), "check created the directory"


def test_ensure_writes_the_marker_when_absent_and_raises_an_older_one(tmp_path):
    data = str(tmp_path)
    (tmp_path / "partitions").mkdir()  # data from before the marker existed: format 1
    before = dataformat.check(data)
    assert (before.format, before.marked) == (dataformat.UNMARKED_FORMAT, False)
    dataformat.ensure(data)
    assert marker_of(data) == {"format": dataformat.DATA_FORMAT, "brokerVersion": __version__}
    assert oct(os.stat(os.path.join(data, dataformat.FORMAT_FILE)).st_mode & 0o777) == "0o600"

    # the same format written by another version: left as it is (it names the first
    # version that wrote this format, the one to install at least)
    write_marker(data, dataformat.DATA_FORMAT, "0.0.7")
    dataformat.ensure(data)
    assert marker_of(data)["brokerVersion"] == "0.0.7"


def test_an_older_format_is_raised_to_this_builds(tmp_path, monkeypatch):
    monkeypatch.setattr(dataformat, "DATA_FORMAT", 2)  # as a build with a new format
    write_marker(tmp_path, 1, "0.1.0")
    assert dataformat.check(str(tmp_path)).format == 1  # readable: older
    dataformat.ensure(str(tmp_path))
    assert marker_of(tmp_path) == {"format": 2, "brokerVersion": __version__}


def test_newer_format_is_refused_with_what_to_do(tmp_path):
    write_marker(tmp_path, dataformat.DATA_FORMAT + 1, "7.0.0")
    with pytest.raises(dataformat.NewerDataError) as err:
        dataformat.ensure(str(tmp_path))
    text = str(err.value)
    assert "\n" not in text
    for part in (
        str(tmp_path),
        f"format {dataformat.DATA_FORMAT + 1}",
        "written by broker 7.0.0",
        f"this broker {__version__}",
        f"format {dataformat.DATA_FORMAT} at most",
        "install broker 7.0.0 or newer",
        "restore a backup",
    ):
        assert part in text, (part, text)
    assert marker_of(tmp_path)["format"] == dataformat.DATA_FORMAT + 1  # untouched


def test_a_damaged_marker_is_a_storage_error(tmp_path):
    (tmp_path / dataformat.FORMAT_FILE).write_text("{not json")
    with pytest.raises(StorageError, match="format marker"):
        dataformat.check(str(tmp_path))


def broker_cli(config: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "broker", *args, "--config", config],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def single(tmp_path):
    c = LocalCluster(str(tmp_path / "c"), size=1, replication_factor=1)
    yield c
    c.stop_all()


def test_check_data_absent_older_same_newer(single):
    cfg, data = single.config_path(0), single.data_dir(0)
    if os.path.exists(data):
        os.rmdir(data)
    absent = broker_cli(cfg, "check-data")
    assert absent.returncode == 0, absent.stderr
    assert "no data yet" in absent.stdout and not os.path.exists(data)

    os.makedirs(os.path.join(data, "partitions"))  # unmarked: data from before markers
    older = broker_cli(cfg, "check-data")
    assert older.returncode == 0 and "no format marker" in older.stdout, older
    assert not os.path.exists(os.path.join(data, dataformat.FORMAT_FILE)), "check-data wrote"

    write_marker(data, dataformat.DATA_FORMAT, __version__)
    same = broker_cli(cfg, "check-data")
    assert same.returncode == 0 and f"data format {dataformat.DATA_FORMAT}" in same.stdout

    write_marker(data, dataformat.DATA_FORMAT + 1, "3.1.4")
    newer = broker_cli(cfg, "check-data")
    assert newer.returncode == 2
    lines = newer.stderr.strip().splitlines()
    assert len(lines) == 1, newer.stderr
    assert data in lines[0] and "written by broker 3.1.4" in lines[0]
    assert "install broker 3.1.4 or newer" in lines[0] and __version__ in lines[0]


def test_a_broker_on_newer_data_exits_2_and_changes_nothing(single):
    cfg, data = single.config_path(0), single.data_dir(0)
    single.start()
    single.client().append("kept")
    single.stop(0)
    marker = marker_of(data)
    assert marker == {"format": dataformat.DATA_FORMAT, "brokerVersion": __version__}
    write_marker(data, dataformat.DATA_FORMAT + 1, "5.0.0")
    before = tree(data)

    for args in (["run"], ["run", "--log-file", os.path.join(data, "run.log")], ["start"]):
        r = broker_cli(cfg, *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "install broker 5.0.0 or newer" in lines[0], r.stderr
        assert tree(data) == before, f"`broker {' '.join(args)}` changed the data directory"
