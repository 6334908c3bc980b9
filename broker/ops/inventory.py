"""Read an Ansible inventory of brokers (YAML) into a ``Cluster``, without Ansible.

The format is the project's (``inventories/local``, ``inventories/lab``)::

    all:
      vars: {broker_partitions_count: 8, broker_replication_factor: 4, ...}
      children:
        brokers:
          children:
            region0:
              vars: {broker_region: region0, broker_region_id: 0}
              hosts:
                brk-r0-h0: {ansible_host: 10.0.0.1, broker_ordinal: 0}

Node id = ``broker_node_id`` if given, else ordinal * regions + region id.
Variables come, lowest precedence first, from ``all``, each group on the way
down to the host (inline ``vars`` then ``group_vars/<group>.yml``), then the
host (inline, then ``host_vars/<host>.yml``); below all of them, the broker
role's defaults for where things live on a host (``ROLE_DEFAULT_KEYS``), as
Ansible would apply them. Values written as Jinja
templates (``"{{ 26600 + broker_local_node_id | int }}"``) are rendered with
jinja2 when it is installed (it comes with the ops extra); templates that need
Ansible itself (``lookup(...)``) stay unrendered and are not used here.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

BROKER_GROUP = "brokers"
DEFAULT_PORTS = {"gateway": 26500, "internal": 26502, "management": 9600}
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
ROLE_DEFAULTS = Path(__file__).resolve().parents[2] / "roles" / "broker" / "defaults" / "main.yml"
# where the role puts the config, the virtualenv and the data; how it names the service
ROLE_DEFAULT_KEYS = (
    "broker_config_dir",
    "broker_config_file",
    "broker_install_dir",
    "broker_venv_dir",
    "broker_data_dir",
    "broker_service_name",
)


def _role_defaults() -> dict[str, Any]:
    try:
        defaults = yaml.safe_load(ROLE_DEFAULTS.read_text()) or {}
    except OSError:  # installed without the roles (a wheel): the inventory must say
        return {}
    return {k: defaults[k] for k in ROLE_DEFAULT_KEYS if k in defaults}


class InventoryError(Exception):
    pass


@dataclass(frozen=True)
class Broker:
    node_id: int
    name: str  # the inventory host name
    region: str
    host: str  # address the controller uses
    gateway_port: int
    internal_port: int
    management_port: int
    vars: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def management_url(self) -> str:
        return f"http://{self.host}:{self.management_port}"

    @property
    def gateway(self) -> str:
        return f"{self.host}:{self.gateway_port}"

    @property
    def ports(self) -> dict[str, int]:
        return {
            "management": self.management_port,
            "gateway": self.gateway_port,
            "internal": self.internal_port,
        }

    @property
    def config_path(self) -> str | None:
        if self.vars.get("broker_config_file"):
            return str(self.vars["broker_config_file"])
        if self.vars.get("broker_config_dir"):
            return os.path.join(str(self.vars["broker_config_dir"]), "broker.yaml")
        return None

    @property
    def is_local(self) -> bool:
        return self.vars.get("ansible_connection") == "local" or (
            self.host in LOCAL_HOSTS and "ansible_user" not in self.vars
        )

    def label(self) -> str:
        return f"broker {self.node_id} ({self.name}, {self.host})"


@dataclass(frozen=True)
class Cluster:
    brokers: tuple[Broker, ...]
    regions: tuple[str, ...]  # by region id
    replication_factor: int
    partitions: int
    name: str = "dual-region"
    # exporter id -> the directory of its file sink, when one shared sink exists per
    # exporter (inventory var broker_export_sinks); used to restore a sink on failback
    sinks: Mapping[str, str] = field(default_factory=dict)
    token: str | None = None
    source: str = ""  # the inventory file

    def broker(self, node_id: int) -> Broker:
        for b in self.brokers:
            if b.node_id == node_id:
                return b
        raise KeyError(f"no broker {node_id} in the inventory")

    def in_region(self, region: str) -> list[Broker]:
        self.check_region(region)
        return [b for b in self.brokers if b.region == region]

    def outside(self, region: str) -> list[Broker]:
        """The brokers of every other region (the survivors when ``region`` is lost)."""
        self.check_region(region)
        return [b for b in self.brokers if b.region != region]

    def ids(self, brokers: Iterable[Broker] | None = None) -> list[int]:
        return sorted(b.node_id for b in (self.brokers if brokers is None else brokers))

    def regions_of(self) -> dict[int, str]:
        return {b.node_id: b.region for b in self.brokers}

    def other_region(self, region: str) -> str:
        others = [r for r in self.regions if r != self.check_region(region)]
        if len(others) != 1:
            raise InventoryError(f"expected exactly two regions, found {list(self.regions)}")
        return others[0]

    def exporter_of(self, region: str) -> str:
        """Exporters are named after the region whose sink they write (DESIGN section 4)."""
        return self.check_region(region)

    def check_region(self, region: str) -> str:
        if region not in self.regions:
            known = ", ".join(self.regions)
            raise InventoryError(f"no region {region!r} in the inventory (regions: {known})")
        return region


def load_inventory(path: str | os.PathLike) -> Cluster:
    """Read an inventory file (hosts.yml) and its group_vars/host_vars directories."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InventoryError(f"cannot read inventory {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise InventoryError(f"inventory {path} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("all"), dict):
        raise InventoryError(f"inventory {path} has no top-level 'all' group")
    hosts = _hosts_under(doc["all"], "all", [_role_defaults()], path.parent, inside=False)
    if not hosts:
        raise InventoryError(f"inventory {path} has no hosts in a '{BROKER_GROUP}' group")
    region_count = len({v.get("broker_region_id") for _, v in hosts})
    brokers = [_broker(name, v, region_count, path) for name, v in hosts]
    return _cluster(brokers, hosts[0][1], str(path))


def _hosts_under(group: dict, name: str, inherited: list[dict], root: Path, inside: bool):
    """(host name, merged vars) for every host of the broker group under ``group``."""
    group = group or {}
    chain = [*inherited, group.get("vars") or {}, _vars_file(root / "group_vars", name)]
    inside = inside or name == BROKER_GROUP
    out = []
    if inside:
        for host, host_vars in (group.get("hosts") or {}).items():
            merged: dict[str, Any] = {}
            for layer in [*chain, host_vars or {}, _vars_file(root / "host_vars", host)]:
                merged.update(layer)
            merged.setdefault("inventory_hostname", host)
            merged.setdefault("inventory_dir", str(root.resolve()))
            merged.setdefault("ansible_playbook_python", sys.executable)
            out.append((host, _render(merged)))
    for child, child_group in (group.get("children") or {}).items():
        out += _hosts_under(child_group, child, chain, root, inside)
    return out


def _vars_file(directory: Path, name: str) -> dict:
    for candidate in (directory / f"{name}.yml", directory / f"{name}.yaml", directory / name):
        if candidate.is_file():
            return yaml.safe_load(candidate.read_text()) or {}
    return {}


def _broker(name: str, v: Mapping[str, Any], region_count: int, path: Path) -> Broker:
    def need(key: str) -> Any:
        if key not in v:
            raise InventoryError(f"{path}: host {name} has no {key}")
        return v[key]

    region_id = int(need("broker_region_id"))
    node_id = v.get("broker_node_id")
    node_id = (
        int(node_id)
        if node_id is not None
        else int(need("broker_ordinal")) * region_count + region_id
    )
    return Broker(
        node_id=node_id,
        name=name,
        region=str(need("broker_region")),
        host=str(v.get("ansible_host", name)),
        gateway_port=_port(v, "gateway", name, path),
        internal_port=_port(v, "internal", name, path),
        management_port=_port(v, "management", name, path),
        vars=dict(v),
    )


def _port(v: Mapping[str, Any], which: str, host: str, path: Path) -> int:
    value = v.get(f"broker_{which}_port", DEFAULT_PORTS[which])
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InventoryError(
            f"{path}: host {host}: broker_{which}_port is {value!r}, not a port number"
            + (" (a Jinja template: install jinja2 to read it)" if "{{" in str(value) else "")
        ) from None


def _cluster(brokers: list[Broker], first_vars: Mapping[str, Any], source: str) -> Cluster:
    ids = [b.node_id for b in brokers]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise InventoryError(f"{source}: node ids {dupes} are used by more than one host")
    regions: dict[int, str] = {}
    for b in brokers:
        regions.setdefault(int(b.vars["broker_region_id"]), b.region)
    return Cluster(
        brokers=tuple(sorted(brokers, key=lambda b: b.node_id)),
        regions=tuple(regions[i] for i in sorted(regions)),
        replication_factor=int(first_vars.get("broker_replication_factor", 4)),
        partitions=int(first_vars.get("broker_partitions_count", 8)),
        name=str(first_vars.get("broker_cluster_name", "dual-region")),
        sinks=dict(first_vars.get("broker_export_sinks") or {}),
        token=first_vars.get("broker_management_token") or None,
        source=source,
    )


# --- Jinja values ----------------------------------------------------------------------


def _render(variables: dict[str, Any]) -> dict[str, Any]:
    """Render templated string values against the plain ones, until nothing more renders."""
    pending = {k for k, v in variables.items() if isinstance(v, str) and "{{" in v}
    if not pending:
        return variables
    try:
        import jinja2
    except ImportError:
        return variables
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    env.filters["dirname"] = os.path.dirname
    env.filters["basename"] = os.path.basename
    values = dict(variables)
    while pending:
        plain = {k: v for k, v in values.items() if k not in pending}
        rendered = {}
        for key in pending:
            try:
                rendered[key] = _typed(env.from_string(values[key]).render(plain))
            except Exception:  # an undefined name (maybe not yet rendered) or an Ansible-only call
                continue
        if not rendered:
            break
        values.update(rendered)
        pending -= set(rendered)
    return values


def _typed(text: str) -> Any:
    """Ansible turns a rendered "26601" back into 26601; so do we (ints and bools only)."""
    stripped = text.strip()
    if stripped.lstrip("-").isdigit():
        return int(stripped)
    if stripped in ("True", "False"):
        return stripped == "True"
    return text
