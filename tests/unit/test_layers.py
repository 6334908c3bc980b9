"""The package layering (docs/architecture.md, "Layers"), read from the import graph.

Each module of ``broker`` belongs to one layer; it may import from its own layer and
the ones below, never from a higher one. The pure cores also import no I/O, thread or
clock module, so that the simulator can run them deterministically.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# lowest first; a module's layer is the first prefix that matches it
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "pure cores",
        (
            "broker.raft.core",
            "broker.raft.log",
            "broker.raft.messages",
            "broker.membership.swim",
            "broker.topology.model",
            "broker.topology.distribution",
            "broker.placement",
            "broker.catchup",
            "broker.records",
            "broker.partition",
            "broker.peers",
        ),
    ),
    (
        "storage, wire and settings",
        (
            "broker.raft",
            "broker.membership",
            "broker.topology",
            "broker.fsutil",
            "broker.dataformat",
            "broker.wire",
            "broker.tls",
            "broker.certs",
            "broker.config",
            "broker.metrics",
            "broker.diskspace",
            "broker.exporters",
            "broker.backup.store",
        ),
    ),
    (
        "network and client",
        ("broker.transport", "broker.client", "broker.batching", "broker.ioloop"),
    ),
    ("node", ("broker.node", "broker.daemon", "broker.backup")),
    ("toolkit", ("broker.ops", "broker.lab", "broker.ctl", "broker.demo")),
    ("entry points", ("broker.cli", "broker.__main__")),
]
PURE_FORBIDDEN = {
    "socket",
    "ssl",
    "select",
    "selectors",
    "threading",
    "queue",
    "concurrent",
    "asyncio",
    "subprocess",
    "time",
    "os",
}  # random is allowed: the cores take an injected, seeded generator


def layer_of(module: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and to the docs")


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / "broker").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(name: str, path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names), also inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            # "from broker import partition" imports the module broker.partition
            found.update(f"{module}.{a.name}" for a in node.names)
    return found


MODULES = modules()


def test_every_module_has_a_layer():
    for name in MODULES:
        if name != "broker":
            layer_of(name)


@pytest.mark.parametrize("name", sorted(set(MODULES) - {"broker"}))
def test_no_module_imports_from_a_higher_layer(name):
    mine = layer_of(name)
    wrong = []
    for imported in sorted(imports(name, MODULES[name])):
        if imported in MODULES and imported != "broker" and layer_of(imported) > mine:
            wrong.append(f"{imported} ({LAYERS[layer_of(imported)][0]})")
    assert not wrong, f"{name} ({LAYERS[mine][0]}) imports from above: {wrong}"


@pytest.mark.parametrize(
    "name", sorted(n for n in MODULES if n != "broker" and layer_of(n) == 0)
)  # fmt: skip
def test_pure_cores_import_no_io_threads_or_clocks(name):
    used = {i.split(".")[0] for i in imports(name, MODULES[name])}
    assert not used & PURE_FORBIDDEN, f"{name} imports {sorted(used & PURE_FORBIDDEN)}"
    outside = {i.split(".")[0] for i in imports(name, MODULES[name])} - {"broker"}
    third_party = outside - set(sys.stdlib_module_names) - {"__future__"}
    assert third_party <= {"msgpack"}, f"{name} imports {sorted(third_party)}"


def test_the_checker_catches_an_upward_import(tmp_path):
    fake = tmp_path / "core.py"
    fake.write_text("import threading\nfrom broker.node.broker import Broker\n")
    assert "broker.node.broker" in imports("broker.raft.core", fake)
    assert layer_of("broker.node.broker") > layer_of("broker.raft.core")
    assert "threading" in {i.split(".")[0] for i in imports("broker.raft.core", fake)}
