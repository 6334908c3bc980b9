#!/usr/bin/python
"""Build the broker wheel and collect its dependency wheels on the controller."""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: broker_wheelhouse
short_description: Build the broker wheel and its dependency wheels into a wheelhouse
description:
  - Builds the project's wheel from a clean copy of its sources (so the checkout
    is not written to), with C(SOURCE_DATE_EPOCH) fixed so that unchanged sources
    give a byte-identical wheel and its SHA-256 can decide whether hosts reinstall.
  - Puts the wheel into O(dest) only when its content changed, removing wheels of
    other versions of the same project, and makes sure every dependency wheel is
    in O(dest) too (resolved offline from O(dest) first; only missing ones are
    fetched with pip's configured index), so that hosts install with
    C(pip install --no-index --find-links) and need no network.
  - Meant to run once on the controller (C(run_once), C(delegate_to=localhost)).
    The wheelhouse is a controller-side cache, not managed state, so it is also
    brought up to date in check mode, where tasks that copy it to hosts need it.
  - Also packs exactly the wheels a host needs (the project's, its dependencies'
    and pip's, which installs them into a virtualenv created without pip) into
    one reproducible tar file, O(archive), so that a host receives one file and
    its checksum says whether anything changed.
  - With O(build=false) nothing is built or fetched; the module uses the newest
    wheel of O(package) already in O(dest) and the wheels there.
  - A stamp file in O(dest) records what the last build was made from (a digest of
    the sources, the interpreter and the options) and what it produced; when all of
    it still holds and every file it names is unchanged, pip is not run at all, which
    keeps an unchanged re-run of the playbook fast.
version_added: "0.1.0"
options:
  project_dir:
    description: The project checkout holding C(pyproject.toml). Required when O(build=true).
    type: path
  sources:
    description: Files and directories under O(project_dir) that the build needs.
    type: list
    elements: str
    default: [pyproject.toml, README.md, broker]
  dest:
    description: The wheelhouse directory on the controller.
    type: path
    required: true
  package:
    description: The distribution name of the project (wheel file name prefix).
    type: str
    default: broker
  build:
    description: Build the wheel and collect dependencies; false only indexes O(dest).
    type: bool
    default: true
  python:
    description: The Python interpreter whose pip builds the wheels (default the module's own).
    type: str
  archive:
    description: The tar file of the wheels to ship (default O(dest) with C(.tar) appended).
    type: path
  source_date_epoch:
    description: Timestamp written into every wheel entry, for reproducible wheels.
    type: int
    default: 315532800
author:
  - dual-region broker toolkit
"""

EXAMPLES = r"""
- name: Build the broker wheelhouse on the controller
  broker_wheelhouse:
    project_dir: "{{ playbook_dir | dirname }}"
    dest: "{{ playbook_dir | dirname }}/var/ansible/wheels"
  run_once: true
  delegate_to: localhost
  register: broker_wheelhouse_result
"""

RETURN = r"""
wheel:
  description: File name of the project's wheel in O(dest).
  type: str
  returned: always
  sample: broker-0.1.0-py3-none-any.whl
wheel_path:
  description: Absolute path of the project's wheel.
  type: str
  returned: always
sha256:
  description: SHA-256 of the project's wheel.
  type: str
  returned: always
wheels:
  description: The wheel file names packed into O(archive) (project, dependencies, pip), sorted.
  type: list
  elements: str
  returned: always
pip_wheel:
  description: File name of the pip wheel in O(archive) (run as C(python pip.whl/pip)).
  type: str
  returned: always
archive:
  description: Path of the tar file holding C(wheels/<file>) for every file in RV(wheels).
  type: str
  returned: always
archive_sha256:
  description: SHA-256 of O(archive); changes whenever any shipped wheel changes.
  type: str
  returned: always
added:
  description: Wheel file names this run put into or removed from O(dest), and the archive.
  type: list
  elements: str
  returned: always
"""


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _normalized(name):
    return re.sub(r"[-_.]+", "_", name).lower()


def _project_of(wheel):
    """The normalized distribution name of a wheel file name."""
    return _normalized(wheel.split("-", 1)[0])


def _wheels_of(dest, package):
    return sorted(
        os.path.basename(p)
        for p in glob.glob(os.path.join(dest, "*.whl"))
        if _project_of(os.path.basename(p)) == _normalized(package)
    )


def _version_key(wheel):
    version = wheel.split("-")[1]
    return [int(part) if part.isdigit() else -1 for part in re.split(r"[.+]", version)]


STAMP = ".broker-wheelhouse.json"
_IGNORED = ("__pycache__", ".egg-info", ".pyc")


def _source_digest(params, python):
    """What a build depends on: every source file (path and content), the interpreter
    and the options. Equal digests give byte-identical wheels (SOURCE_DATE_EPOCH)."""
    digest = hashlib.sha256()
    for key in ("package", "source_date_epoch"):
        digest.update(f"{key}={params[key]}\0".encode())
    real = os.path.realpath(shutil.which(python) or python)
    digest.update(
        f"python={real}:{os.path.getmtime(real) if os.path.exists(real) else 0}\0".encode()
    )
    for name in params["sources"]:
        path = os.path.join(params["project_dir"], name)
        files = [path] if os.path.isfile(path) else []
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.endswith(_IGNORED))
            files += [os.path.join(root, n) for n in sorted(names) if not n.endswith(_IGNORED)]
        if not files:
            return None  # a missing source: let the build report it
        for f in files:
            digest.update(os.path.relpath(f, params["project_dir"]).encode() + b"\0")
            digest.update(_sha256(f).encode())
    return digest.hexdigest()


def _read_stamp(dest, digest, archive):
    """The recorded result when the sources are unchanged and every file it lists is
    still there with the recorded content; None means build."""
    try:
        with open(os.path.join(dest, STAMP)) as f:
            stamp = json.load(f)
        if stamp["digest"] != digest or stamp["archive"] != archive:
            return None
        for name, sha in stamp["files"].items():
            if _sha256(os.path.join(dest, name)) != sha:
                return None
        if _sha256(archive) != stamp["archive_sha256"]:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return stamp


def _write_stamp(dest, digest, wheel, members, archive):
    files = {name: _sha256(os.path.join(dest, name)) for name in members}
    stamp = {"digest": digest, "wheel": wheel, "members": members, "files": files,
             "archive": archive, "archive_sha256": _sha256(archive)}  # fmt: skip
    _put(None, json.dumps(stamp, indent=1, sort_keys=True).encode(), os.path.join(dest, STAMP))


def _pip(python, args, env=None):
    cmd = [python, "-m", "pip", "--disable-pip-version-check", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    return proc.returncode, proc.stdout, proc.stderr, cmd


def _put(src_path, data, dest_path):
    """Write atomically: a concurrent reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest_path), prefix=".", suffix=".part")
    with os.fdopen(fd, "wb") as out:
        if src_path is not None:
            with open(src_path, "rb") as f:
                shutil.copyfileobj(f, out)
        else:
            out.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, dest_path)


def _same(path_a, path_b):
    return os.path.exists(path_b) and _sha256(path_a) == _sha256(path_b)


def _resolve(module, python, dest, requirements, work):
    """Wheels for `requirements`, offline from `dest` when it has them all, else with
    pip's configured index; new ones are added to `dest`. Returns the resolved file names."""
    out = os.path.join(work, "resolved")
    rc, stdout, stderr, cmd = _pip(
        python, ["wheel", "--no-index", "--find-links", dest, "-w", out, *requirements]
    )
    if rc != 0:
        shutil.rmtree(out, ignore_errors=True)
        rc, stdout, stderr, cmd = _pip(
            python, ["wheel", "--find-links", dest, "-w", out, *requirements]
        )
        if rc != 0:
            module.fail_json(
                msg=f"collecting wheels for {requirements} failed",
                cmd=cmd,
                stdout=stdout,
                stderr=stderr,
            )
    added = []
    for path in sorted(glob.glob(os.path.join(out, "*.whl"))):
        target = os.path.join(dest, os.path.basename(path))
        if not _same(path, target):
            _put(path, None, target)
            added.append(os.path.basename(path))
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(out, "*.whl"))), added


def build(module, params, dest, work):
    project, package = params["project_dir"], params["package"]
    python = params["python"] or sys.executable
    if not project or not os.path.isfile(os.path.join(project, "pyproject.toml")):
        module.fail_json(msg=f"project_dir {project!r} holds no pyproject.toml")
    src = os.path.join(work, "src")
    os.makedirs(src)
    for name in params["sources"]:
        path = os.path.join(project, name)
        if os.path.isdir(path):
            shutil.copytree(
                path,
                os.path.join(src, name),
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
            )
        elif os.path.isfile(path):
            shutil.copy2(path, os.path.join(src, name))
        else:
            module.fail_json(msg=f"build source {path} does not exist")
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(params["source_date_epoch"]))
    out = os.path.join(work, "out")
    rc, stdout, stderr, cmd = _pip(python, ["wheel", "--no-deps", "-w", out, src], env)
    if rc != 0:
        module.fail_json(msg="building the wheel failed", cmd=cmd, stdout=stdout, stderr=stderr)
    built = glob.glob(os.path.join(out, "*.whl"))
    if len(built) != 1:
        module.fail_json(msg=f"expected one wheel from the build, got {built}")
    wheel = os.path.basename(built[0])
    added = []
    if not _same(built[0], os.path.join(dest, wheel)):
        _put(built[0], None, os.path.join(dest, wheel))
        added.append(wheel)
    for old in _wheels_of(dest, package):
        if old != wheel:
            os.unlink(os.path.join(dest, old))
            added.append(old)
    return wheel, added


def _archive(members, dest, archive, mtime):
    """A reproducible tar of wheels/<name>: sorted, fixed owner, mode and time."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        entries = [("wheels", None)] + [(f"wheels/{name}", name) for name in sorted(members)]
        for arcname, name in entries:
            info = tarfile.TarInfo(arcname)
            info.mtime, info.uid, info.gid, info.uname, info.gname = mtime, 0, 0, "", ""
            if name is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.mode = 0o644
                path = os.path.join(dest, name)
                info.size = os.path.getsize(path)
                with open(path, "rb") as f:
                    tar.addfile(info, f)
    data = buf.getvalue()
    if os.path.exists(archive) and hashlib.sha256(data).hexdigest() == _sha256(archive):
        return False
    _put(None, data, archive)
    return True


def main():
    module = AnsibleModule(
        argument_spec={
            "project_dir": {"type": "path"},
            "sources": {
                "type": "list",
                "elements": "str",
                "default": ["pyproject.toml", "README.md", "broker"],
            },
            "dest": {"type": "path", "required": True},
            "archive": {"type": "path"},
            "package": {"type": "str", "default": "broker"},
            "build": {"type": "bool", "default": True},
            "python": {"type": "str"},
            "source_date_epoch": {"type": "int", "default": 315532800},
        },
        required_if=[("build", True, ("project_dir",))],
        supports_check_mode=True,
    )
    params, dest = module.params, module.params["dest"].rstrip("/")
    archive = params["archive"] or dest + ".tar"
    python = params["python"] or sys.executable
    added = []
    work = tempfile.mkdtemp(prefix="broker-wheelhouse-")
    digest = _source_digest(params, python) if params["build"] and params["project_dir"] else None
    stamp = _read_stamp(dest, digest, archive) if digest else None
    try:
        if stamp:  # nothing changed since the last build: no pip at all
            wheel, members = stamp["wheel"], stamp["members"]
            pip_wheels = [name for name in members if _project_of(name) == "pip"]
        elif params["build"]:
            os.makedirs(dest, exist_ok=True)
            wheel, added = build(module, params, dest, work)
        else:
            found = _wheels_of(dest, params["package"]) if os.path.isdir(dest) else []
            if not found:
                module.fail_json(msg=f"no {params['package']} wheel in {dest} (and build=false)")
            wheel = max(found, key=_version_key)
        if not stamp:
            requirements = [os.path.join(dest, wheel), "pip"]
            members, more = _resolve(module, python, dest, requirements, work)
            added += more
            pip_wheels = [name for name in members if _project_of(name) == "pip"]
            if _archive(members, dest, archive, params["source_date_epoch"]):
                added.append(os.path.basename(archive))
            if digest:
                _write_stamp(dest, digest, wheel, members, archive)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = os.path.join(dest, wheel)
    module.exit_json(
        changed=bool(added),
        wheel=wheel,
        wheel_path=path,
        sha256=_sha256(path),
        wheels=members,
        pip_wheel=pip_wheels[0],
        archive=archive,
        archive_sha256=_sha256(archive),
        added=added,
    )


if __name__ == "__main__":
    main()
