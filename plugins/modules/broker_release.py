#!/usr/bin/python
"""Switch the broker's virtualenv symlink to an installed release, and prune old releases."""

from __future__ import annotations

import os
import shutil

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: broker_release
short_description: Point the broker's virtualenv link at one of its installed releases
description:
  - Releases are installed side by side under C(<install_dir>/releases/<name>/) (their
    wheels and virtualenv), each marked complete by a C(.complete) file written last.
    O(link) (the role's C(broker_venv_dir)) is a symlink to the current release's venv.
  - With O(state=switched) the link is pointed at O(release) atomically (a temporary
    symlink renamed over it), so every reader sees the old or the new release. A link
    that is still a real directory (the layout before releases) is moved aside, replaced
    and deleted, with the wheels and checksum file of that layout.
  - With O(state=pruned) releases beyond the O(keep) most recently installed ones are
    deleted, never the current one nor O(release). Incomplete releases (an interrupted
    install) other than O(release) are deleted too.
  - With O(state=query) nothing changes; the current release and the installed ones
    are returned.
  - Supports check mode (reports what would change) and diff mode.
version_added: "0.1.0"
options:
  install_dir:
    description: The install directory holding C(releases/).
    type: path
    required: true
  link:
    description: The symlink to the current release's venv (C(broker_venv_dir)).
    type: path
    required: true
  release:
    description: The release name (C(<version>-<first 12 hex of the archive sha256>)).
    type: str
  state:
    description: What to do.
    type: str
    choices: [switched, pruned, query]
    default: switched
  keep:
    description: Releases kept by O(state=pruned), the current one and O(release) included.
    type: int
    default: 3
author:
  - dual-region broker toolkit
"""

EXAMPLES = r"""
- name: Switch the broker to a staged release
  broker_release:
    install_dir: /opt/broker
    link: /opt/broker/venv
    release: 0.1.1-0123456789ab
"""

RETURN = r"""
previous:
  description: The release the link pointed at before (C(legacy) a real directory, null none).
  type: str
  returned: always
current:
  description: The release the link points at now (in check mode, would point at).
  type: str
  returned: always
switched:
  description: Whether the link was (or in check mode would be) changed.
  type: bool
  returned: always
migrated:
  description: Whether a real venv directory of the layout before releases was replaced.
  type: bool
  returned: always
removed:
  description: Releases deleted (or that would be) by O(state=pruned).
  type: list
  elements: str
  returned: always
releases:
  description: Complete releases installed, most recent first (before pruning).
  type: list
  elements: str
  returned: always
"""

COMPLETE = ".complete"
LEGACY = "legacy"


def _releases_dir(install_dir):
    return os.path.join(install_dir, "releases")


def _venv_of(install_dir, release):
    return os.path.join(_releases_dir(install_dir), release, "venv")


def _complete(install_dir, release):
    return os.path.isfile(os.path.join(_releases_dir(install_dir), release, COMPLETE))


def _current(install_dir, link):
    """The release the link names, LEGACY for a real directory, None when absent."""
    if os.path.islink(link):
        target = os.path.normpath(os.path.join(os.path.dirname(link), os.readlink(link)))
        parent = os.path.dirname(target)
        if os.path.dirname(parent) == os.path.normpath(_releases_dir(install_dir)):
            return os.path.basename(parent)
        return target  # a link somewhere else: named by its path
    if os.path.isdir(link):
        return LEGACY
    return None


def _installed(install_dir):
    """Complete releases, most recently installed first; and the incomplete ones."""
    root = _releases_dir(install_dir)
    if not os.path.isdir(root):
        return [], []
    complete, partial = [], []
    for name in os.listdir(root):
        if not os.path.isdir(os.path.join(root, name)):
            continue
        marker = os.path.join(root, name, COMPLETE)
        if os.path.isfile(marker):
            complete.append((os.path.getmtime(marker), name))
        else:
            partial.append(name)
    return [name for _, name in sorted(complete, reverse=True)], sorted(partial)


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _switch(install_dir, link, release):
    """Point ``link`` at the release's venv: a temporary symlink renamed over it."""
    directory = os.path.dirname(link)
    target = os.path.relpath(_venv_of(install_dir, release), directory)
    tmp = f"{link}.tmp-{os.getpid()}"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    migrated = False
    if os.path.isdir(link) and not os.path.islink(link):
        # the layout before releases: rename cannot replace a directory with a symlink,
        # so the old venv is moved aside for the instant between the two renames
        aside = f"{link}.legacy-{os.getpid()}"
        os.rename(link, aside)
        os.rename(tmp, link)
        shutil.rmtree(aside)
        shutil.rmtree(os.path.join(install_dir, "wheels"), ignore_errors=True)
        old_marker = os.path.join(install_dir, "installed-wheels.sha256")
        if os.path.exists(old_marker):
            os.unlink(old_marker)
        migrated = True
    else:
        os.replace(tmp, link)
    _fsync_dir(directory)
    return migrated


def main():
    module = AnsibleModule(
        argument_spec={
            "install_dir": {"type": "path", "required": True},
            "link": {"type": "path", "required": True},
            "release": {"type": "str"},
            "state": {
                "type": "str",
                "default": "switched",
                "choices": ["switched", "pruned", "query"],
            },
            "keep": {"type": "int", "default": 3},
        },
        required_if=[("state", "switched", ("release",)), ("state", "pruned", ("release",))],
        supports_check_mode=True,
    )
    p = module.params
    install_dir, link, release = p["install_dir"].rstrip("/"), p["link"].rstrip("/"), p["release"]
    previous = _current(install_dir, link)
    releases, partial = _installed(install_dir)
    result = {
        "changed": False,
        "previous": previous,
        "current": previous,
        "switched": False,
        "migrated": False,
        "removed": [],
        "releases": releases,
    }
    if p["state"] == "query":
        module.exit_json(**result)
    if p["state"] == "switched":
        # in check mode a release is not installed before it would be switched to
        if not _complete(install_dir, release) and not module.check_mode:
            module.fail_json(
                msg=f"release {release} is not installed in {_releases_dir(install_dir)} "
                f"(installed: {', '.join(releases) or 'none'}); stage it first",
                **result,
            )
        if previous != release:
            result.update(changed=True, switched=True, current=release)
            result["migrated"] = previous == LEGACY
            result["diff"] = {
                "before": f"{link} -> {previous}\n",
                "after": f"{link} -> {release}\n",
            }
            if not module.check_mode:
                _switch(install_dir, link, release)
        module.exit_json(**result)
    # pruned
    keep = max(p["keep"], 1)
    protect = {release, previous}
    protected = [name for name in releases if name in protect]
    others = [name for name in releases if name not in protect]
    room = max(keep - len(protected), 0)
    kept, removed = protected + others[:room], others[room:]
    removed += [name for name in partial if name not in protect]
    if removed:
        result.update(changed=True, removed=removed)
        result["diff"] = {"before": "".join(f"{n}\n" for n in releases + partial),
                          "after": "".join(f"{n}\n" for n in kept)}  # fmt: skip
        if not module.check_mode:
            for name in removed:
                shutil.rmtree(os.path.join(_releases_dir(install_dir), name))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
