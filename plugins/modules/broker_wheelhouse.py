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
  - Puts the wheel into O(dest) only when its content changed. Wheels of other
    versions of the project stay (an upgrade and its rollback install either), up to
    O(keep_versions) of them, newest first; older ones are removed. It makes sure every
    dependency wheel is
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
  - With O(build=false) nothing is built or fetched; the module uses the wheel of
    O(version) (default the newest) of O(package) already in O(dest) and the wheels
    there. A missing O(version) fails naming the versions O(dest) holds.
  - A stamp file in O(dest) records what recent runs were made from (a digest of
    the sources, or of the selected wheel, the interpreter and the options) and what
    they produced; when all of it still holds and every file it names is unchanged,
    pip is not run at all, which keeps an unchanged re-run of the playbook fast.
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
  version:
    description:
      - The version of O(package) to pack (its wheel must be in O(dest) after the build,
        if any); default the one just built, or with O(build=false) the newest.
    type: str
  keep_versions:
    description: Wheels of this many versions of O(package) are kept in O(dest), newest first.
    type: int
    default: 5
  python:
    description: The Python interpreter whose pip builds the wheels (default the module's own).
    type: str
  archive:
    description: The tar file of the wheels to ship (default O(dest) + C(-<version>.tar)).
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
version:
  description: The version of the project's wheel packed into O(archive).
  type: str
  returned: always
  sample: 0.1.0
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


def _version_of(wheel):
    return wheel.split("-")[1]


def _version_key(wheel):
    return _key_of_version(_version_of(wheel))


def _key_of_version(version):
    return [int(part) if part.isdigit() else -1 for part in re.split(r"[.+]", version)]


STAMP = ".broker-wheelhouse.json"
STAMP_ENTRIES = 16
_IGNORED = ("__pycache__", ".egg-info", ".pyc")


def _source_digest(params, python):
    """What a build depends on: every source file (path and content), the interpreter
    and the options. Equal digests give byte-identical wheels (SOURCE_DATE_EPOCH)."""
    digest = hashlib.sha256()
    for key in ("package", "source_date_epoch", "keep_versions"):
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


def _stamps(dest):
    try:
        with open(os.path.join(dest, STAMP)) as f:
            entries = json.load(f)["entries"]
        return entries if isinstance(entries, dict) else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _read_stamp(dest, digest, archive):
    """The recorded result when the inputs are unchanged and every file it lists is
    still there with the recorded content; None means build. ``archive`` None: the
    default path, whichever version it names."""
    try:
        stamp = _stamps(dest)[digest]
        if archive is not None and stamp["archive"] != archive:
            return None
        for name, sha in stamp["files"].items():
            if _sha256(os.path.join(dest, name)) != sha:
                return None
        if _sha256(stamp["archive"]) != stamp["archive_sha256"]:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return stamp


def _write_stamp(dest, digest, wheel, members, archive):
    """Records this run among the recent ones; entries whose wheel is gone are dropped."""
    files = {name: _sha256(os.path.join(dest, name)) for name in members}
    entries = {
        key: entry
        for key, entry in _stamps(dest).items()
        if key != digest
        and isinstance(entry, dict)
        and os.path.exists(os.path.join(dest, str(entry.get("wheel"))))
    }
    entries = dict(list(entries.items())[-(STAMP_ENTRIES - 1) :])  # the most recent ones
    entries[digest] = {"wheel": wheel, "members": members, "files": files,
                       "archive": archive, "archive_sha256": _sha256(archive)}  # fmt: skip
    doc = {"entries": entries}
    _put(None, json.dumps(doc, indent=1, sort_keys=True).encode(), os.path.join(dest, STAMP))


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
    project = params["project_dir"]
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
    return wheel, added


def _prune(dest, package, keep, protect):
    """Keep the wheels of the ``keep`` newest versions of ``package`` (and ``protect``);
    the default-path archives of the removed ones go too. Returns what was removed."""
    removed = []
    others = [w for w in sorted(_wheels_of(dest, package), key=_version_key, reverse=True)
              if w not in protect]  # fmt: skip
    for old in others[max(max(keep, 1) - len(protect), 0) :]:
        os.unlink(os.path.join(dest, old))
        removed.append(old)
        tar = f"{dest}-{_version_of(old)}.tar"
        if os.path.exists(tar):
            os.unlink(tar)
            removed.append(os.path.basename(tar))
    return removed


def _select(module, dest, package, version):
    """The wheel of ``version`` in ``dest`` (default the newest); fails naming what is there."""
    found = _wheels_of(dest, package) if os.path.isdir(dest) else []
    if version is None:
        if not found:
            module.fail_json(msg=f"no {package} wheel in {dest} (and build=false)")
        return max(found, key=_version_key)
    matching = [w for w in found if _version_of(w) == version]
    if not matching:
        have = ", ".join(sorted({_version_of(w) for w in found}, key=_key_of_version))
        module.fail_json(
            msg=f"{package} {version} is not in the wheelhouse {dest}; it holds "
            f"{have or 'no version'}. Build it there first (run the playbook from a checkout "
            f"of {version} with broker_version unset), or pick one of those versions"
        )
    return max(matching, key=lambda w: os.path.getmtime(os.path.join(dest, w)))


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
            "version": {"type": "str"},
            "keep_versions": {"type": "int", "default": 5},
            "python": {"type": "str"},
            "source_date_epoch": {"type": "int", "default": 315532800},
        },
        required_if=[("build", True, ("project_dir",))],
        supports_check_mode=True,
    )
    params, dest = module.params, module.params["dest"].rstrip("/")
    package, version = params["package"], params["version"] or None
    python = params["python"] or sys.executable
    added = []
    work = tempfile.mkdtemp(prefix="broker-wheelhouse-")
    if params["build"]:  # with a version to select after the build: no stamp, pip decides
        digest = _source_digest(params, python) if version is None else None
    else:  # a selection: what it packs follows from the chosen wheel and the options
        chosen = _select(module, dest, package, version)
        digest = hashlib.sha256(
            f"select={chosen}:{_sha256(os.path.join(dest, chosen))}:{python}:"
            f"{params['source_date_epoch']}:{params['keep_versions']}".encode()
        ).hexdigest()
    stamp = _read_stamp(dest, digest, params["archive"]) if digest else None
    try:
        if stamp:  # nothing changed since the last run: no pip at all
            wheel, members = stamp["wheel"], stamp["members"]
            pip_wheels = [name for name in members if _project_of(name) == "pip"]
        else:
            if params["build"]:
                os.makedirs(dest, exist_ok=True)
                wheel, added = build(module, params, dest, work)
            if version is not None or not params["build"]:
                wheel = _select(module, dest, package, version)
            added += _prune(dest, package, params["keep_versions"], {wheel})
        archive = params["archive"] or f"{dest}-{_version_of(wheel)}.tar"
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
        version=_version_of(wheel),
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
