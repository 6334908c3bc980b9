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


def _run_module(args: dict, tmp_path) -> dict:
    """The module as Ansible runs it: its arguments in a JSON file, its result on stdout."""
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {k: str(v) for k, v in args.items()}}))
    proc = subprocess.run(
        [sys.executable, str(MODULE), str(args_file)],
        cwd=ROOT, env=ansible_env(), capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
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
