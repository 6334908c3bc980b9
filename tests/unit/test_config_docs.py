"""Every configuration key that docs/configuration.md or the broker role's template names
does something.

"Does something" is checked, not assumed: a real broker is started in this process with a
configuration built beforehand, while every read of a configuration field is recorded
together with the code that made it. A documented key passes when broker code outside
broker/config.py reads its field (validation alone is not an effect).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from pathlib import Path
from typing import Any, get_args, get_origin

import jinja2
import pytest
import yaml

import broker
from broker import config as config_mod
from broker.config import BrokerConfig, _schema
from broker.demo.localcluster import free_ports
from tests.tlsutil import ClusterCA

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "configuration.md"
TEMPLATE = REPO / "roles" / "broker" / "templates" / "broker.yaml.j2"
ROLE_DEFAULTS = REPO / "roles" / "broker" / "defaults" / "main.yml"
BROKER_DIR = os.path.dirname(os.path.abspath(broker.__file__)) + os.sep
CONFIG_PY = os.path.abspath(config_mod.__file__)

# --- what the documents name -----------------------------------------------------------------


def documented_keys() -> set[str]:
    """Key paths from the tables of docs/configuration.md (exporter ids as ``<id>``)."""
    keys, prefix = set(), None
    for line in DOCS.read_text().splitlines():
        heading = re.match(r"#{2,3} `([A-Za-z.]+)`", line)
        if heading:
            prefix = heading[1]
            continue
        if line.startswith("#"):
            prefix = None  # a section without a key table
            continue
        row = re.match(r"\| `([A-Za-z.]+)` \|", line)
        if row and prefix:
            middle = ".<id>" if prefix == "exporters" else ""
            keys.add(f"{prefix}{middle}.{row[1]}")
    return keys


def yaml_paths(doc: Any, prefix: str = "") -> set[str]:
    """Every key path of a configuration document (exporter ids as ``<id>``; exporter
    args are free-form, so the path stops at ``args``)."""
    paths = set()
    for key, value in doc.items():
        path = f"{prefix}{key}"
        if path == "exporters":
            for exporter in value.values():
                paths |= {f"exporters.<id>.{k}" for k in exporter}
            continue
        if isinstance(value, dict):
            paths |= yaml_paths(value, path + ".")
        else:
            paths.add(path)
    return paths


def docs_example_keys() -> set[str]:
    text = DOCS.read_text()
    example = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert example, "docs/configuration.md has no YAML example"
    return yaml_paths(yaml.safe_load(example[1]))


def rendered_role_config() -> dict:
    """roles/broker/templates/broker.yaml.j2 rendered with the role's defaults, Ansible's
    own filters, and the per-host facts the role computes (as the role would)."""
    from ansible.plugins.filter.core import FilterModule

    defaults = yaml.safe_load(ROLE_DEFAULTS.read_text())
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True)
    env.filters.update(FilterModule().filters())
    facts = {
        **defaults,
        "broker_node": {"node_id": 0},
        "broker_cluster_nodes": [{"node_id": i} for i in range(8)],
        "broker_region": "region0",
        "broker_contact_points": ["h0:26502", "h1:26502"],
        "broker_exporter_ids": ["region0", "region1"],
        "broker_advertised_host": "h0",
        "broker_management_bind_host": "0.0.0.0",
        "broker_venv_dir": "/opt/broker/venv",
        "broker_config_file": "/etc/broker/broker.yaml",
        "ansible_managed": "managed by Ansible",
        "broker_raft": {"flush": {"enabled": True, "delayTime": "5ms"}},
        "broker_membership": {"failureTimeout": "10s"},
    }
    return yaml.safe_load(env.from_string(TEMPLATE.read_text()).render(**facts))


# --- from a key path to the field that holds it -------------------------------------------------


def field_of(path: str) -> tuple[type, str]:
    """The (config dataclass, field name) that the camelCase ``path`` sets."""
    hint: Any = BrokerConfig
    owner, name = None, None
    for segment in path.split("."):
        if get_origin(hint) is dict:
            hint = get_args(hint)[1]  # a map key (an exporter id): the value's schema
            continue
        assert dataclasses.is_dataclass(hint), f"{path}: {segment} is below a scalar"
        schema = _schema(hint)
        assert segment in schema, f"{path}: no key {segment!r} in {hint.__name__}"
        f, sub = schema[segment]
        owner, name, hint = hint, f.name, sub
    return owner, name


def config_classes() -> list[type]:
    seen, todo = [], [BrokerConfig]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.append(cls)
        for _, hint in _schema(cls).values():
            for h in (hint, *get_args(hint)):
                if dataclasses.is_dataclass(h):
                    todo.append(h)
    return seen


# --- what the broker reads ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def reads(tmp_path_factory) -> dict[tuple[type, str], set[str]]:
    """Start and stop a real broker in this process with every documented section set,
    recording each config field read and the broker module (outside config.py) that read
    it. A read inside config.py (a property, validation) counts for its caller."""
    from broker.node.broker import Broker

    d = tmp_path_factory.mktemp("broker")
    gateway, internal, management = free_ports(3)
    cfg = BrokerConfig.from_dict(
        {
            "cluster": {
                "clusterSize": 1,
                "partitionsCount": 1,
                "replicationFactor": 1,
                "initialContactPoints": [f"127.0.0.1:{internal}"],
                "raft": {"flush": {"delayTime": "1ms"}},
            },
            "network": {
                "host": "127.0.0.1",
                "advertisedHost": "127.0.0.1",
                "gateway": {"port": gateway},
                "internal": {"port": internal},
            },
            "management": {"host": "127.0.0.1", "port": management, "token": "t"},
            "data": {
                "directory": str(d / "data"),
                "freeSpace": {"processing": 0, "replication": 0},
                "backup": {"store": "filesystem", "filesystem": {"directory": str(d / "b")}},
            },
            "exporters": {"region0": {"type": "file", "args": {"path": str(d / "x")}}},
            "security": {"tls": ClusterCA(d / "tls", "docs").tls_config(0)},
        }
    )
    seen: dict[tuple[type, str], set[str]] = {}
    saved = {}
    for cls in config_classes():
        names = {f.name for f in dataclasses.fields(cls)}
        names |= {n for n, v in vars(cls).items() if isinstance(v, property)}

        def getattribute(self, name, _cls=cls, _names=names):
            if name in _names:
                frame = sys._getframe(1)
                while frame is not None and frame.f_code.co_filename == CONFIG_PY:
                    frame = frame.f_back
                where = frame.f_code.co_filename if frame is not None else ""
                if where.startswith(BROKER_DIR):
                    seen.setdefault((_cls, name), set()).add(where[len(BROKER_DIR) :])
            return object.__getattribute__(self, name)

        saved[cls] = cls.__dict__.get("__getattribute__")
        cls.__getattribute__ = getattribute
    b = Broker(cfg)
    try:
        b.start()
        b.stop()
    finally:
        for cls, original in saved.items():
            if original is None:
                del cls.__getattribute__
            else:
                cls.__getattribute__ = original
    # A property read counts as a read of the fields it is made of.
    for prop, fields in {"effective_advertised_host": ("advertised_host", "host")}.items():
        for (cls, name), where in list(seen.items()):
            if name == prop:
                for f in fields:
                    seen.setdefault((cls, f), set()).update(where)
    return seen


def effect_of(path: str, reads) -> str | None:
    """Why ``path`` does something, or None."""
    where = reads.get(field_of(path))
    return f"read by {', '.join(sorted(where))}" if where else None


# --- the tests ---------------------------------------------------------------------------------


def test_the_docs_name_the_keys_of_every_section():
    keys = documented_keys()
    for path in ("cluster.nodeId", "cluster.raft.flush.delayTime", "data.freeSpace.replication"):
        assert path in keys
    assert "exporters.<id>.type" in keys and "security.tls.enabled" in keys
    assert docs_example_keys() <= keys, docs_example_keys() - keys


def test_every_key_the_docs_name_does_something(reads):
    keys = documented_keys() | docs_example_keys()
    for path in keys:
        field_of(path)  # every documented key exists in the schema
    idle = sorted(path for path in keys if effect_of(path, reads) is None)
    assert not idle, f"documented in docs/configuration.md but read by no broker code: {idle}"


def test_every_key_the_role_deploys_is_documented_and_does_something(reads):
    rendered = rendered_role_config()
    BrokerConfig.from_dict(rendered)  # what the role deploys is a valid configuration
    keys = yaml_paths(rendered)
    assert "data.freeSpace.processing" in keys and "cluster.raft.flush.delayTime" in keys
    undocumented = sorted(keys - documented_keys())
    assert not undocumented, f"the role deploys keys docs/configuration.md omits: {undocumented}"
    idle = sorted(path for path in keys if effect_of(path, reads) is None)
    assert not idle, f"the role deploys keys no broker code reads: {idle}"


def test_the_recorder_counts_broker_code_only(reads):
    """Validation in config.py reads every field; only reads by broker code count."""
    assert effect_of("cluster.raft.flush.delayTime", reads)
    assert effect_of("data.freeSpace.processing", reads)
    readers = {where for found in reads.values() for where in found}
    assert "config.py" not in readers and "node/broker.py" in readers
    tls = next(cls for cls in config_classes() if cls.__name__ == "TlsConfig")
    assert reads[(tls, "client_auth")] == {"node/broker.py"}
