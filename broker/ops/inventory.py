"""Read an Ansible inventory of brokers into a ``Cluster``, with Ansible's own machinery.

The inventory is read by ansible-core (``InventoryManager``, ``VariableManager``,
``DataLoader`` with the vault secrets, ``Templar``), so fab, the ops library,
the ``broker_region`` action, the runbooks and the demo see what
``ansible-playbook -i PATH`` sees: a file or a directory, any inventory plugin,
``group_vars``/``host_vars`` next to it, variable precedence, vault-encrypted
values (``!vault``) and vault-encrypted files, Jinja templates (lookups too).
The layout is the project's (``inventories/local``, ``inventories/example``)::

    all:
      vars: {broker_partitions_count: 8, broker_replication_factor: 4, ...}
      children:
        brokers:
          children:
            region0:
              vars: {broker_region: region0, broker_region_id: 0}
              hosts:
                brk-r0-h0: {ansible_host: 10.0.0.1, broker_ordinal: 0}

Every host of the ``brokers`` group is a broker. Node id = ``broker_node_id``
if given, else ordinal * regions + region id. Below the inventory's variables,
the broker role's defaults for where things live on a host apply
(``ROLE_DEFAULT_KEYS``), as they do in a play of the role.

Vault: the password comes from ``vault_password_file=`` (fab:
``--vault-password-file``), ``ANSIBLE_VAULT_PASSWORD_FILE``,
``ANSIBLE_VAULT_IDENTITY_LIST`` or Ansible's configuration, or (inside
ansible-playbook) the play's own secrets. Every value that was vault-encrypted,
and the management token, is registered with ``broker.ops.report`` so that
outputs and audit records redact it.
"""

from __future__ import annotations

import functools
import os
import ssl
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.ops.report import register_secret

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
    "broker_process_log_max_size",
    "broker_process_log_keep",
    # TLS: whether it is on, and where the controller keeps the cluster CA
    "broker_cluster_name",
    "broker_project_dir",
    "broker_tls_enabled",
    "broker_tls_ca_dir",
    "broker_tls_ca_cert",
    "broker_tls_ca_key",
)
PROJECT_DIR = ROLE_DEFAULTS.parents[3]
OPS_CLIENT = "ops"  # the name in the client certificate ops issues itself
# Ansible's magic variables that are not a host's own (and are big): not in Broker.vars
SKIPPED_VARS = frozenset({"groups", "hostvars", "ansible_facts", "vars", "omit", "environment"})
VAULT_HINT = "set ANSIBLE_VAULT_PASSWORD_FILE or pass --vault-password-file"
# variable names whose string values are secrets even when not vault-encrypted
SECRET_NAME_PARTS = ("token", "password", "passwd", "secret", "private_key")
_LOCK = threading.RLock()  # Ansible's plugin loader and vault context are process-wide


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
        scheme = "https" if _truthy(self.vars.get("broker_tls_enabled")) else "http"
        return f"{scheme}://{self.host}:{self.management_port}"

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
class ClientTls:
    """How the controller speaks TLS to the brokers: the cluster CA it trusts and
    the client certificate it shows (needed when security.tls.clientAuth is
    required). Without a given certificate, one named ``ops`` is issued beside
    the CA on first use, when the controller holds the CA's key."""

    cluster: str
    ca: str
    ca_key: str | None = None
    cert: str | None = None
    key: str | None = None

    @functools.cached_property
    def files(self) -> tuple[str, str | None, str | None]:
        """(CA, client certificate, its key): what brokerctl takes as --tls-ca/-cert/-key."""
        cert, key = self.cert, self.key
        if not cert and self.ca_key and os.path.exists(self.ca_key):
            from broker import certs

            clients = os.path.join(os.path.dirname(self.ca), "clients")
            cert = os.path.join(clients, f"{OPS_CLIENT}.crt")
            key = os.path.join(clients, f"{OPS_CLIENT}.key")
            certs.ensure_client(self.cluster, OPS_CLIENT, self.ca, self.ca_key, cert, key)
        return self.ca, cert, key

    @functools.cached_property
    def context(self) -> ssl.SSLContext:
        from broker.tls import TlsSetupError, client_context

        try:
            return client_context(*self.files)
        except TlsSetupError as exc:
            raise InventoryError(f"TLS: {exc}") from None

    def environment(self) -> dict[str, str]:
        """brokerctl's BROKER_TLS_* variables for these files."""
        ca, cert, key = self.files
        env = {"BROKER_TLS_CA": ca}
        if cert and key:
            env.update(BROKER_TLS_CERT=cert, BROKER_TLS_KEY=key)
        return env


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
    token: str | None = field(default=None, repr=False)  # a secret: never in a repr
    source: str = ""  # the inventory file
    tls: ClientTls | None = None  # set when the inventory turns broker_tls_enabled on

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client TLS context for the brokers' gateways and management APIs."""
        return self.tls.context if self.tls is not None else None

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


def load_inventory(
    path: str | os.PathLike,
    *,
    vault_password_file: str | os.PathLike | None = None,
    vault_secrets: Iterable[tuple[str, Any]] | None = None,
) -> Cluster:
    """Read an inventory (a file, a directory or any source an inventory plugin takes) as
    ansible-playbook would, with its group_vars/host_vars and vault-encrypted values.

    ``vault_password_file`` adds to the vault passwords Ansible would use anyway
    (``ANSIBLE_VAULT_PASSWORD_FILE``, ``ANSIBLE_VAULT_IDENTITY_LIST``, ansible.cfg);
    ``vault_secrets`` are already loaded ``(vault id, VaultSecret)`` pairs (a play's)."""
    source = os.fspath(path)
    if not os.path.exists(source):
        raise InventoryError(f"cannot read inventory {source}: No such file or directory")
    try:
        import ansible.inventory.manager  # noqa: F401
    except ImportError as exc:
        raise InventoryError(
            f"reading inventory {source} needs ansible-core, which cannot be imported ({exc}): "
            "install the ops extra (pip install -e '.[ops]', or make setup)"
        ) from None
    with _LOCK:
        hosts = _read(source, vault_password_file, list(vault_secrets or ()))
    if not hosts:
        raise InventoryError(f"inventory {source} has no hosts in a '{BROKER_GROUP}' group")
    region_count = len({v.get("broker_region_id") for _, v in hosts})
    brokers = [_broker(name, v, region_count, source) for name, v in hosts]
    return _cluster(brokers, hosts[0][1], source)


def _read(
    source: str, password_file: str | os.PathLike | None, given: list[tuple[str, Any]]
) -> list[tuple[str, HostVars]]:
    """(host name, resolved vars) for every host of the broker group, in inventory order."""
    from ansible.errors import AnsibleError
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.plugins.loader import init_plugin_loader
    from ansible.template import Templar
    from ansible.utils.collection_loader import AnsibleCollectionConfig
    from ansible.vars.manager import VariableManager

    if not AnsibleCollectionConfig.collection_finder:  # ansible-playbook has done it already
        init_plugin_loader()
    loader = DataLoader()
    have_secrets = _setup_vault(loader, password_file, given)
    try:
        inventory = InventoryManager(loader=loader, sources=[source])
        if not inventory._inventory.processed_sources:
            raise InventoryError(
                f"Ansible cannot read {source} as an inventory (its warnings above say why)"
            )
        group = inventory.groups.get(BROKER_GROUP)
        if group is None:
            return []
        variables = VariableManager(loader=loader, inventory=inventory)
        defaults = _role_defaults(loader)
        out = []
        for host in group.get_hosts():
            try:
                raw = variables.get_vars(host=host, include_hostvars=False)
            except AnsibleError as exc:
                raise _vault_or(
                    exc, f"{source}: a vars file of host {host.name}", have_secrets
                ) from None
            merged = {**defaults, **raw}  # the role's defaults below the inventory
            # The role's paths on the controller hang off the playbooks' directory.
            merged.setdefault("playbook_dir", str(PROJECT_DIR / "playbooks"))
            templar = Templar(loader=loader, variables=merged)
            out.append((host.name, HostVars(templar, merged, host.name, source, have_secrets)))
        return out
    except InventoryError:
        raise
    except AnsibleError as exc:
        raise _vault_or(exc, f"inventory {source}", have_secrets) from None


def _setup_vault(loader: Any, password_file: Any, given: list[tuple[str, Any]]) -> bool:
    """Give ``loader`` (for vault-encrypted files) and Ansible's process-wide vault context
    (for ``!vault`` values) every secret; True if there is at least one."""
    from ansible import constants as C
    from ansible.cli import CLI
    from ansible.errors import AnsibleError
    from ansible.parsing.vault import VaultSecretsContext

    files = [os.fspath(password_file)] if password_file else []
    env_file = os.environ.get("ANSIBLE_VAULT_PASSWORD_FILE")
    if env_file and env_file not in files:
        files.append(env_file)
    ids = list(C.DEFAULT_VAULT_IDENTITY_LIST or [])
    ids += [i.strip() for i in os.environ.get("ANSIBLE_VAULT_IDENTITY_LIST", "").split(",")]
    ids = [i for i in dict.fromkeys(ids) if i]
    try:
        secrets = CLI.setup_vault_secrets(
            loader,
            vault_ids=ids,
            vault_password_files=files,
            ask_vault_pass=False,
            auto_prompt=False,
            initialize_context=False,
        )
    except AnsibleError as exc:
        raise InventoryError(f"vault password: {_first_line(exc)}") from None
    secrets = [*given, *secrets]
    context = VaultSecretsContext.current(optional=True)
    if context is None:
        VaultSecretsContext.initialize(VaultSecretsContext(list(secrets)))
    else:  # inside ansible-playbook, or read before in this process: add ours to them
        context.secrets.extend(s for s in secrets if s not in context.secrets)
        secrets = [*secrets, *(s for s in context.secrets if s not in secrets)]
    loader.set_vault_secrets(secrets)
    return bool(secrets)


def _role_defaults(loader: Any) -> dict[str, Any]:
    try:
        defaults = loader.load_from_file(str(ROLE_DEFAULTS), trusted_as_template=True) or {}
    except Exception:  # installed without the roles (a wheel): the inventory must say
        return {}
    return {k: defaults[k] for k in ROLE_DEFAULT_KEYS if k in defaults}


class HostVars(Mapping[str, Any]):
    """A host's variables as Ansible resolves them: each rendered by Ansible's Templar on
    first use (a lookup runs only if its variable is used), as plain Python values. A
    value that cannot render outside a play (it names a fact) is kept as written.
    Vault-encrypted values, and values of secret-looking names, are decrypted and
    rendered at once, so that a missing vault password fails the load, and registered
    as secrets."""

    def __init__(
        self, templar: Any, variables: dict[str, Any], host: str, source: str, have_secrets: bool
    ):
        self._templar = templar
        self._raw = {k: v for k, v in variables.items() if k not in SKIPPED_VARS}
        self._raw.setdefault("inventory_hostname", host)
        self._done: dict[str, Any] = {}
        self._where = f"{source}: host {host}"
        self._have_secrets = have_secrets
        from ansible.parsing.vault import VaultHelper

        for key, value in self._raw.items():
            vaulted = _holds_ciphertext(value, VaultHelper) or _from_vault_file(value)
            if vaulted or any(part in key.lower() for part in SECRET_NAME_PARTS):
                rendered = self[key]
                if isinstance(rendered, str) and (vaulted or "{{" not in rendered):
                    register_secret(rendered)

    def __getitem__(self, key: str) -> Any:
        if key in self._done:
            return self._done[key]
        value = self._raw[key]
        from ansible.errors import AnsibleError

        with _LOCK:
            try:
                plain = _plain(self._templar.template(value))
            except AnsibleError as exc:
                if _is_vault_error(exc):
                    raise _vault_or(exc, f"{self._where}: {key}", self._have_secrets) from None
                plain = _plain_raw(value)
        self._done[key] = plain
        return plain

    def __iter__(self):
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __contains__(self, key: object) -> bool:
        return key in self._raw

    def __repr__(self) -> str:  # never the values: some are secrets
        return f"HostVars({len(self._raw)} variables of {self._where})"

    def __reduce__(self):  # copies and pickles are plain dicts, rendered
        return (dict, (dict(self.items()),))


def _from_vault_file(value: Any) -> bool:
    """Was ``value`` read from a vault-encrypted vars file? (Ansible tags every value
    with its origin: the file it came from.)"""
    try:
        from ansible.module_utils._internal._datatag import AnsibleTagHelper

        paths = [getattr(t, "path", None) for t in AnsibleTagHelper.tags(value)]
    except Exception:  # another ansible-core: no origin tags to go by
        return False
    return any(_is_vault_file(p) for p in paths if p)


@functools.lru_cache(maxsize=256)
def _is_vault_file(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(b"$ANSIBLE_VAULT")) == b"$ANSIBLE_VAULT"
    except OSError:
        return False


def _holds_ciphertext(value: Any, helper: Any) -> bool:
    if helper.get_ciphertext(value, with_tags=False) is not None:
        return True
    if isinstance(value, Mapping):
        return any(_holds_ciphertext(v, helper) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_ciphertext(v, helper) for v in value)
    return False


def _plain(value: Any) -> Any:
    """Ansible's tagged values as the built-in types (vaulted strings decrypted)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if type(value).__name__ == "EncryptedString":
        return str(value)  # decrypts, or raises
    return value


def _plain_raw(value: Any) -> Any:
    try:
        return _plain(value)
    except Exception:
        return None


def _is_vault_error(exc: BaseException) -> bool:
    from ansible.parsing.vault import AnsibleVaultError

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, AnsibleVaultError) or "decrypt" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _vault_or(exc: BaseException, what: str, have_secrets: bool) -> InventoryError:
    if not _is_vault_error(exc):
        return InventoryError(f"{what}: {_first_line(exc)}")
    if not have_secrets:
        return InventoryError(f"{what} is vault-encrypted: {VAULT_HINT}")
    return InventoryError(
        f"{what} is vault-encrypted and cannot be decrypted with the vault password(s) given "
        f"({_first_line(exc)})"
    )


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _broker(name: str, v: Mapping[str, Any], region_count: int, source: str) -> Broker:
    def need(key: str) -> Any:
        if v.get(key) is None:
            raise InventoryError(f"{source}: host {name} has no {key}")
        return v[key]

    try:
        region_id = int(need("broker_region_id"))
        node_id = v.get("broker_node_id")
        node_id = (
            int(node_id)
            if node_id is not None
            else int(need("broker_ordinal")) * region_count + region_id
        )
    except (TypeError, ValueError) as exc:
        raise InventoryError(
            f"{source}: host {name}: a node id part is not a number ({exc})"
        ) from None
    return Broker(
        node_id=node_id,
        name=name,
        region=str(need("broker_region")),
        host=str(v.get("ansible_host", name)),
        gateway_port=_port(v, "gateway", name, source),
        internal_port=_port(v, "internal", name, source),
        management_port=_port(v, "management", name, source),
        vars=v,
    )


def _port(v: Mapping[str, Any], which: str, host: str, source: str) -> int:
    value = v.get(f"broker_{which}_port", DEFAULT_PORTS[which])
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InventoryError(
            f"{source}: host {host}: broker_{which}_port is {value!r}, not a port number"
        ) from None


def _cluster(brokers: list[Broker], first_vars: Mapping[str, Any], source: str) -> Cluster:
    ids = [b.node_id for b in brokers]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise InventoryError(f"{source}: node ids {dupes} are used by more than one host")
    regions: dict[int, str] = {}
    for b in brokers:
        regions.setdefault(int(b.vars["broker_region_id"]), b.region)
    token = first_vars.get("broker_management_token") or None
    if token is not None:
        token = str(token)
        register_secret(token)
    return Cluster(
        brokers=tuple(sorted(brokers, key=lambda b: b.node_id)),
        regions=tuple(regions[i] for i in sorted(regions)),
        replication_factor=int(first_vars.get("broker_replication_factor", 4)),
        partitions=int(first_vars.get("broker_partitions_count", 8)),
        name=str(first_vars.get("broker_cluster_name", "dual-region")),
        sinks=dict(first_vars.get("broker_export_sinks") or {}),
        token=token,
        source=source,
        tls=_client_tls(first_vars, source),
    )


def _client_tls(v: Mapping[str, Any], source: str) -> ClientTls | None:
    if not _truthy(v.get("broker_tls_enabled")):
        return None
    ca = v.get("broker_tls_ca_cert")
    if not ca or "{{" in str(ca):
        raise InventoryError(
            f"{source}: broker_tls_enabled is on but the CA's path is unknown "
            f"(broker_tls_ca_cert = {ca!r})"
        )
    ca_key = v.get("broker_tls_ca_key")
    return ClientTls(
        cluster=str(v.get("broker_cluster_name", "dual-region")),
        ca=str(ca),
        ca_key=str(ca_key) if ca_key and "{{" not in str(ca_key) else None,
        cert=v.get("broker_tls_client_cert") or None,
        key=v.get("broker_tls_client_key") or None,
    )


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)
