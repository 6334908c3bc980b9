"""Every link and repository path in the docs points to a file that exists, inside the
repository: README.md, docs/*.md, roles/*/README.md, runbooks/*.md.

Checked: markdown links ``[text](target)`` (not URLs or in-page anchors), relative to
the document; and paths written in backticks that start at a top-level directory of
the repository (``docs/design.md``, ``roles/broker/defaults/main.yml``) or climb out
of the document's directory (``../runbooks/README.md``), relative to the repository
root or to the document. Paths that only exist at run time (what ``python -m
broker.lab up`` or the ops tasks write) are named in RUNTIME. Nothing may point
outside the repository (``../shared/...``): a reader of a clone does not have it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted(
    [
        ROOT / "README.md",
        *(ROOT / "docs").glob("*.md"),
        *(ROOT / "roles").glob("*/README.md"),
        *(ROOT / "runbooks").glob("*.md"),
    ]
)
TOP_LEVEL = sorted(p.name for p in ROOT.iterdir() if not p.name.startswith("."))
RUNTIME = ("inventories/lab/", "var/")  # written by `lab up`, by deploys and by fab
LINK = re.compile(r"\[[^\]]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
CODE = re.compile(r"`([^`\s]+)`")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
PLACEHOLDER = re.compile(r"[<>{}*$]")


def links(text: str) -> list[tuple[int, str, str]]:
    """(line, kind, target) for every link and repository path in a document's text."""
    prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    out = []
    for lineno, line in enumerate(prose.splitlines(), 1):
        for target in LINK.findall(line):
            if not re.match(r"[a-z][a-z0-9+.-]*:|#", target):
                out.append((lineno, "link", target.split("#")[0]))
        for token in CODE.findall(line):
            if PLACEHOLDER.search(token) or token.startswith("/"):
                continue
            first = token.split("/")[0]
            if token.startswith("../") or ("/" in token and first in TOP_LEVEL):
                out.append((lineno, "path", token))
    return out


def resolve(doc: Path, kind: str, target: str) -> list[Path]:
    if kind == "link":
        return [doc.parent / target]
    return [ROOT / target, doc.parent / target]


def test_the_docs_are_found():
    names = [d.relative_to(ROOT).as_posix() for d in DOCS]
    assert "README.md" in names and "roles/broker/README.md" in names, names
    assert any(n.startswith("docs/") for n in names) and any(
        n.startswith("runbooks/") for n in names
    )


@pytest.mark.parametrize("doc", DOCS, ids=[d.relative_to(ROOT).as_posix() for d in DOCS])
def test_every_link_and_path_points_into_the_repository(doc):
    broken = []
    for lineno, kind, target in links(doc.read_text()):
        if kind == "path" and target.startswith(RUNTIME):
            continue
        candidates = [p.resolve() for p in resolve(doc, kind, target)]
        inside = [p for p in candidates if p.is_relative_to(ROOT)]
        where = f"{doc.relative_to(ROOT)}:{lineno}: {target}"
        if not inside:
            broken.append(f"{where} points outside the repository")
        elif not any(p.exists() for p in inside):
            broken.append(f"{where} does not exist")
    assert not broken, "\n".join(broken)


def test_the_check_catches_a_path_outside_and_a_missing_file():
    text = (
        "See `../shared/DESIGN.md`, `docs/nope.md` and [x](nope.md); `broker.yaml`\n"
        "and `var/x/<host>` are not repository paths.\n```sh\ncat docs/nope.md\n```\n"
    )
    assert links(text) == [
        (1, "link", "nope.md"),
        (1, "path", "../shared/DESIGN.md"),
        (1, "path", "docs/nope.md"),
    ]
    outside = [p.resolve() for p in resolve(ROOT / "README.md", "path", "../shared/DESIGN.md")]
    assert not any(p.is_relative_to(ROOT) for p in outside)
