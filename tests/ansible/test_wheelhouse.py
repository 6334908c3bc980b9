"""broker_wheelhouse on the controller: an unchanged re-run does not run pip at all."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile

from tests.ansible.conftest import ROOT, ansible_env

MODULE = ROOT / "plugins" / "modules" / "broker_wheelhouse.py"


def _run_module(args: dict, tmp_path, ok: bool = True) -> dict:
    """The module as Ansible runs it: its arguments in a JSON file, its result on stdout."""
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {k: str(v) for k, v in args.items()}}))
    proc = subprocess.run(
        [sys.executable, str(MODULE), str(args_file)],
        cwd=ROOT, env=ansible_env(), capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert (proc.returncode == 0) == ok, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def test_unchanged_sources_skip_pip_and_a_changed_source_rebuilds(broker_sources, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(broker_sources, project)
    # a python that logs each call, so the test sees whether pip ran
    calls = tmp_path / "pip-calls.log"
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    wheels = tmp_path / "wheels"
    args = {"project_dir": project, "dest": wheels, "python": python}

    first = _run_module(args, tmp_path)
    assert first["changed"] and first["wheel"].startswith("broker-")
    assert (wheels / ".broker-wheelhouse.json").is_file()
    runs_after_first = calls.read_text().count("pip")
    assert runs_after_first >= 2  # the build and the resolve

    second = _run_module(args, tmp_path)
    assert not second["changed"], second["added"]
    assert calls.read_text().count("pip") == runs_after_first, "pip ran for unchanged sources"
    for key in ("wheel", "sha256", "wheels", "archive_sha256", "pip_wheel"):
        assert second[key] == first[key], key

    # a changed source file: rebuilt, a new wheel and archive
    (project / "broker" / "__init__.py").write_text(
        (project / "broker" / "__init__.py").read_text() + "\n# changed\n"
    )
    third = _run_module(args, tmp_path)
    assert third["changed"] and third["sha256"] != first["sha256"]
    assert third["archive_sha256"] != first["archive_sha256"]
    assert calls.read_text().count("pip") > runs_after_first
    with tarfile.open(third["archive"]) as tar:
        assert f"wheels/{third['wheel']}" in tar.getnames()

    # the archive damaged behind the module's back: the stamp no longer holds, it is rebuilt
    os.truncate(third["archive"], 10)
    fourth = _run_module(args, tmp_path)
    assert os.path.basename(third["archive"]) in fourth["added"]
    assert fourth["archive_sha256"] == third["archive_sha256"]


def test_versions_are_kept_selected_by_version_and_a_missing_one_is_named(broker_sources, tmp_path):
    wheels = tmp_path / "wheels"
    built = {}
    for version in ("0.1.0", "0.1.1"):
        project = tmp_path / f"project-{version}"
        shutil.copytree(broker_sources, project)
        for name, old in (
            ("pyproject.toml", 'version = "0.1.0"'),
            ("broker/__init__.py", '"0.1.0"'),
        ):
            path = project / name
            path.write_text(path.read_text().replace(old, old.replace("0.1.0", version), 1))
        built[version] = _run_module({"project_dir": project, "dest": wheels}, tmp_path)
        assert built[version]["version"] == version
    # both stay; each has its own archive
    assert {p.name for p in wheels.glob("broker-*.whl")} == {
        "broker-0.1.0-py3-none-any.whl",
        "broker-0.1.1-py3-none-any.whl",
    }
    assert built["0.1.0"]["archive"] != built["0.1.1"]["archive"]

    chosen = _run_module({"dest": wheels, "build": False, "version": "0.1.0"}, tmp_path)
    assert chosen["wheel"] == "broker-0.1.0-py3-none-any.whl"
    assert chosen["archive_sha256"] == built["0.1.0"]["archive_sha256"]  # same release
    assert not chosen["changed"]
    newest = _run_module({"dest": wheels, "build": False}, tmp_path)
    assert newest["version"] == "0.1.1"

    missing = _run_module({"dest": wheels, "build": False, "version": "7.0.0"}, tmp_path, ok=False)
    assert missing["failed"]
    assert "broker 7.0.0 is not in the wheelhouse" in missing["msg"]
    assert "it holds 0.1.0, 0.1.1" in missing["msg"]

    # beyond keep_versions the oldest goes, never the one chosen
    pruned = _run_module(
        {"dest": wheels, "build": False, "version": "0.1.0", "keep_versions": 1}, tmp_path
    )
    assert "broker-0.1.1-py3-none-any.whl" in pruned["added"]
    assert [p.name for p in wheels.glob("broker-*.whl")] == ["broker-0.1.0-py3-none-any.whl"]


RELEASE_MODULE = ROOT / "plugins" / "modules" / "broker_release.py"


def _release(args: dict, tmp_path, check: bool = False) -> dict:
    args_file = tmp_path / "release-args.json"
    module_args = {k: str(v) for k, v in args.items()}
    if check:
        module_args["_ansible_check_mode"] = True
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": module_args}))
    proc = subprocess.run(
        [sys.executable, str(RELEASE_MODULE), str(args_file)],
        cwd=ROOT, env=ansible_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return json.loads(proc.stdout)


def _fake_release(install, name, age):
    venv = install / "releases" / name / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "broker").write_text(name)
    marker = install / "releases" / name / ".complete"
    marker.write_text("sha\n")
    os.utime(marker, (1_000_000 + age, 1_000_000 + age))


def test_release_switch_migrates_the_old_layout_and_prunes(tmp_path):
    install = tmp_path / "install"
    link = install / "venv"
    # the layout before releases: a real venv, its wheels and checksum file
    (link / "bin").mkdir(parents=True)
    (link / "bin" / "broker").write_text("legacy")
    (install / "wheels").mkdir()
    (install / "installed-wheels.sha256").write_text("x\n")
    for age, name in enumerate(["0.1.0-aaaaaaaaaaaa", "0.1.1-bbbbbbbbbbbb", "0.1.2-cccccccccccc"]):
        _fake_release(install, name, age)
    base = {"install_dir": install, "link": link}

    query = _release({**base, "state": "query"}, tmp_path)
    assert query["previous"] == "legacy" and not query["changed"]
    assert query["releases"] == ["0.1.2-cccccccccccc", "0.1.1-bbbbbbbbbbbb", "0.1.0-aaaaaaaaaaaa"]

    would = _release({**base, "release": "0.1.0-aaaaaaaaaaaa"}, tmp_path, check=True)
    assert would["changed"] and would["migrated"] and not link.is_symlink()  # check mode

    switched = _release({**base, "release": "0.1.0-aaaaaaaaaaaa"}, tmp_path)
    assert switched["changed"] and switched["migrated"] and switched["previous"] == "legacy"
    assert link.is_symlink() and os.readlink(link) == "releases/0.1.0-aaaaaaaaaaaa/venv"
    assert (link / "bin" / "broker").read_text() == "0.1.0-aaaaaaaaaaaa"
    assert not (install / "wheels").exists() and not (install / "installed-wheels.sha256").exists()
    assert not [p for p in install.iterdir() if ".tmp-" in p.name or ".legacy-" in p.name]

    again = _release({**base, "release": "0.1.0-aaaaaaaaaaaa"}, tmp_path)
    assert not again["changed"]

    missing = _release({**base, "release": "9.9.9-dddddddddddd"}, tmp_path)
    assert missing["failed"] and "is not installed" in missing["msg"]

    # keep 2: the current (oldest) and the one being switched to stay, the rest goes
    (install / "releases" / "0.1.3-eeeeeeeeeeee").mkdir()  # an interrupted install
    pruned = _release(
        {**base, "release": "0.1.1-bbbbbbbbbbbb", "state": "pruned", "keep": 2}, tmp_path
    )
    assert sorted(pruned["removed"]) == ["0.1.2-cccccccccccc", "0.1.3-eeeeeeeeeeee"]
    assert sorted(os.listdir(install / "releases")) == ["0.1.0-aaaaaaaaaaaa", "0.1.1-bbbbbbbbbbbb"]
