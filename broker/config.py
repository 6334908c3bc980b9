"""Typed broker configuration: a YAML file, then ``BROKER_*`` environment overrides.

The dataclasses below are the schema: a YAML key is its attribute name in
camelCase (``cluster.raft.electionTimeout`` is ``cfg.cluster.raft.election_timeout``).
Durations are float seconds and sizes int bytes. Every problem raises
:class:`ConfigError`, one line naming the key, the value and what is allowed;
the broker exits with its ``exit_code`` (2). Reference: docs/configuration.md.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import functools
import os
import re
import socket
import sys
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Annotated, Any, NoReturn, get_args, get_origin, get_type_hints

import yaml

KB, MB, GB = 1024, 1024**2, 1024**3

Duration = Annotated[float, "duration"]  # seconds
Size = Annotated[int, "size"]  # bytes

EXPORTER_TYPES = ("file", "http")
TLS_CLIENT_AUTH = ("none", "optional", "required")
BACKUP_STORES = ("none", "filesystem")
# network.maxFrameSize: Raft batches of up to 1MB (and snapshot chunks of 1MB) must
# fit in a frame, or replication would stall on frames the sender drops.
MIN_FRAME_SIZE = 2 * MB
MAX_FRAME_SIZE_LIMIT = 64 * MB
ENV_PREFIX = "BROKER_"

DURATION_HELP = (
    "expected a duration: a non-negative number with unit ms, s or m "
    "(e.g. 100ms, 1.5s, 5m; a bare number means ms)"
)
SIZE_HELP = (
    "expected a size: a non-negative whole number with unit KB, MB or GB "
    "(1024-based, e.g. 64MB; a bare number means bytes)"
)


class ConfigError(ValueError):
    """A configuration problem; ``str()`` is one line fit for stderr."""

    exit_code = 2

    def __init__(self, message: str, key: str | None = None):
        super().__init__(" ".join(message.splitlines()))
        self.key = key


# -- schema ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MembershipConfig:
    gossip_interval: Duration = 0.25
    gossip_fanout: int = 2
    probe_interval: Duration = 1.0
    probe_timeout: Duration = 0.1
    suspect_probes: int = 3
    failure_timeout: Duration = 10.0
    sync_interval: Duration = 10.0


@dataclass(frozen=True)
class FlushConfig:
    enabled: bool = True
    delay_time: Duration = 0.0


@dataclass(frozen=True)
class RaftConfig:
    election_timeout: Duration = 1.0
    heartbeat_interval: Duration = 0.1
    enable_priority_election: bool = True
    flush: FlushConfig = field(default_factory=FlushConfig)


@dataclass(frozen=True)
class ClusterConfig:
    node_id: int = 0
    cluster_size: int = 8
    partitions_count: int = 8
    replication_factor: int = 4
    cluster_name: str = "dual-region"
    region: str = "region0"
    initial_contact_points: tuple[str, ...] = ()
    membership: MembershipConfig = field(default_factory=MembershipConfig)
    raft: RaftConfig = field(default_factory=RaftConfig)


@dataclass(frozen=True)
class GatewayConfig:
    port: int = 26500
    max_inflight: int = 1000  # ours: per-partition cap on requests awaiting commit
    request_timeout: Duration = 15.0  # ours: client request deadline, as Zeebe's gateway


@dataclass(frozen=True)
class InternalConfig:
    port: int = 26502


@dataclass(frozen=True)
class NetworkConfig:
    host: str = "0.0.0.0"
    advertised_host: str | None = None
    max_frame_size: Size = 4 * MB  # ours
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    internal: InternalConfig = field(default_factory=InternalConfig)

    @property
    def effective_advertised_host(self) -> str:
        """What peers and clients are told: advertisedHost, else host, else this machine's name."""
        if self.advertised_host:
            return self.advertised_host
        if self.host not in ("0.0.0.0", "::", ""):
            return self.host
        return socket.gethostname()


@dataclass(frozen=True)
class ManagementConfig:
    host: str = "0.0.0.0"
    port: int = 9600
    token: str | None = None


@dataclass(frozen=True)
class FreeSpaceConfig:
    processing: Size = 2 * GB
    replication: Size = 1 * GB


@dataclass(frozen=True)
class FilesystemBackupConfig:
    directory: str | None = None


@dataclass(frozen=True)
class BackupConfig:
    store: str = "none"  # none|filesystem (see broker.backup.store for others)
    filesystem: FilesystemBackupConfig = field(default_factory=FilesystemBackupConfig)


@dataclass(frozen=True)
class DataConfig:
    directory: str = "/var/lib/broker"
    log_segment_size: Size = 64 * MB
    snapshot_period: Duration = 300.0
    snapshot_entries: int = 100_000  # ours: also snapshot after this many applied entries
    free_space: FreeSpaceConfig = field(default_factory=FreeSpaceConfig)
    backup: BackupConfig = field(default_factory=BackupConfig)


@dataclass(frozen=True)
class ExporterConfig:
    type: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TlsConfig:
    enabled: bool = False
    certificate: str | None = None
    private_key: str | None = None
    ca: str | None = None
    client_auth: str = "none"  # gateway and management clients: none|optional|required


@dataclass(frozen=True)
class SecurityConfig:
    tls: TlsConfig = field(default_factory=TlsConfig)


@dataclass(frozen=True)
class BrokerConfig:
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    management: ManagementConfig = field(default_factory=ManagementConfig)
    data: DataConfig = field(default_factory=DataConfig)
    exporters: dict[str, ExporterConfig] = field(default_factory=dict)
    security: SecurityConfig = field(default_factory=SecurityConfig)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> BrokerConfig:
        """Build and validate from the camelCase structure (no file, no environment)."""
        return _Builder(None).finish(copy.deepcopy(dict(data or {})))

    def to_dict(self) -> dict[str, Any]:
        """The camelCase structure, with durations and sizes in their written form."""
        return _dump(BrokerConfig, self)


# -- durations and sizes --------------------------------------------------------------------

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-zA-Z]*)")
_DURATION_UNITS = {"": Decimal("0.001"), "ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60)}
_SIZE_RE = re.compile(r"(\d+)\s*([a-zA-Z]*)")
_SIZE_UNITS = {"": 1, "b": 1, "kb": KB, "mb": MB, "gb": GB}


def parse_duration(value: str | int | float) -> float:
    """Seconds from ``100ms``, ``1.5s``, ``5m`` or a bare number of milliseconds.

    Raises ValueError (saying what is allowed) for anything else.
    """
    match = None if isinstance(value, bool) else _DURATION_RE.fullmatch(str(value).strip())
    unit = match and _DURATION_UNITS.get(match[2].lower())
    if unit is None:
        raise ValueError(DURATION_HELP)
    # Decimal keeps "100ms" exactly 0.1 s and makes format_duration round-trip.
    return float(Decimal(match[1]) * unit)


def format_duration(seconds: float) -> str:
    """The shortest exact written form of ``seconds``: ``5m``, ``10s``, ``250ms``, ``0.5ms``."""
    ms = Decimal(repr(float(seconds))) * 1000
    if ms != ms.to_integral_value():
        return f"{ms.normalize():f}ms"
    n = int(ms)
    for unit, per in (("m", 60_000), ("s", 1000)):
        if n and n % per == 0:
            return f"{n // per}{unit}"
    return f"{n}ms"


def parse_size(value: str | int) -> int:
    """Bytes from ``512KB``, ``64MB``, ``2GB`` (1024-based) or a bare number of bytes.

    Raises ValueError (saying what is allowed) for anything else.
    """
    match = None if isinstance(value, bool) else _SIZE_RE.fullmatch(str(value).strip())
    unit = match and _SIZE_UNITS.get(match[2].lower())
    if unit is None:
        raise ValueError(SIZE_HELP)
    return int(match[1]) * unit


def format_size(n: int) -> str:
    """The largest exact unit: ``64MB``, ``3KB``, else the bare byte count."""
    for unit, per in (("GB", GB), ("MB", MB), ("KB", KB)):
        if n and n % per == 0:
            return f"{n // per}{unit}"
    return str(n)


# -- loading --------------------------------------------------------------------------------


def load_config(path: str | None, env: Mapping[str, str] | None = None) -> BrokerConfig:
    """The YAML file at ``path`` (None: defaults only), then ``BROKER_*`` overrides, validated.

    ``env`` defaults to the process environment; pass ``{}`` to ignore it.
    """
    raw: Any = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                raw = yaml.load(f, Loader=_StrictLoader)
        except OSError as e:
            raise ConfigError(f"config error: {path}: cannot read: {e.strerror or e}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"config error: {path}: invalid YAML{_yaml_where(e)}") from e
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(
                f"config error: {path}: expected a mapping of sections "
                f"(cluster, network, ...), got {_type_name(raw)}"
            )
    _apply_env(raw, os.environ if env is None else env)
    return _Builder(path).finish(raw)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys, which PyYAML would silently overwrite."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # SafeLoader reports unhashable keys itself
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_where(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"{at}: {problem}"


@dataclass(frozen=True)
class _EnvValue:
    name: str
    text: str


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(p.capitalize() for p in rest)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls, include_extras=True)


@functools.cache
def _schema(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    """camelCase key -> (field, type hint)."""
    return {_camel(f.name): (f, _hints(cls)[f.name]) for f in dataclasses.fields(cls)}


def _apply_env(raw: dict, env: Mapping[str, str]) -> None:
    sections = [k.upper() for k in _schema(BrokerConfig)]
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX):
            continue
        segments = name[len(ENV_PREFIX) :].split("_")
        if segments[0] not in sections and not difflib.get_close_matches(
            segments[0], sections, n=1, cutoff=0.8
        ):
            continue  # another tool's variable, e.g. BROKER_INVENTORY for fab
        keys = _env_target(BrokerConfig, segments, raw)
        if keys is None:
            close = difflib.get_close_matches(name, _env_names(BrokerConfig, "BROKER"), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"config error: {name}: unknown setting{hint}", key=name)
        node = raw
        for i, key in enumerate(keys[:-1]):
            if node.get(key) is None:
                node[key] = {}
            elif not isinstance(node[key], dict):
                path = ".".join(keys[: i + 1])
                raise ConfigError(
                    f"config error: {path} = {node[key]!r}: expected a mapping (set by {name})",
                    key=path,
                )
            node = node[key]
        node[keys[-1]] = _EnvValue(name, env[name])


def _env_target(hint: Any, segments: list[str], raw: Any) -> list[str] | None:
    """The key path in ``raw`` that upper-cased env ``segments`` name, or None if none.

    Map keys (exporter ids, exporter args) may contain ``_``; the longest id
    that leaves a valid remainder wins. They match an existing key
    case-insensitively, else are lower-cased.
    """
    if dataclasses.is_dataclass(hint):
        if not segments:
            return None
        for key, (_, sub) in _schema(hint).items():
            if key.upper() == segments[0]:
                rest = _env_target(sub, segments[1:], _child(raw, key))
                return None if rest is None else [key, *rest]
        return None
    if get_origin(hint) is dict:
        value_hint = get_args(hint)[1]
        for k in range(len(segments), 0, -1):
            wanted = "_".join(segments[:k])
            existing = raw if isinstance(raw, dict) else {}
            key = next((x for x in existing if str(x).upper() == wanted), wanted.lower())
            rest = _env_target(value_hint, segments[k:], _child(raw, key))
            if rest is not None:
                return [key, *rest]
        return None
    return [] if not segments else None


def _child(raw: Any, key: str) -> Any:
    return raw.get(key) if isinstance(raw, dict) else None


def _env_names(hint: Any, prefix: str) -> list[str]:
    if dataclasses.is_dataclass(hint):
        return [
            n for k, (_, sub) in _schema(hint).items() for n in _env_names(sub, f"{prefix}_{k}")
        ]
    return [] if get_origin(hint) is dict else [prefix.upper()]


# -- building and validation ----------------------------------------------------------------

_MISSING = object()
_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True}
_BOOL_WORDS |= {"false": False, "no": False, "off": False, "0": False}


def _type_name(value: Any) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}
    names |= {int: "an integer", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    """A value as the operator wrote it (YAML spelling for true/false/null)."""
    if isinstance(value, _EnvValue):
        return repr(value.text)
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return repr(value)


class _Builder:
    """Turns the raw (YAML + env) structure into a BrokerConfig; remembers env-set keys."""

    def __init__(self, file: str | None):
        self.file = file
        self.env_sources: dict[str, str] = {}

    def fail(self, path: str, value: Any, allowed: str) -> NoReturn:
        if path in self.env_sources:
            where = f" (from {self.env_sources[path]})"
        else:
            where = f" (in {self.file})" if self.file else ""
        if value is _MISSING:
            raise ConfigError(f"config error: {path} is missing{where}: {allowed}", key=path)
        raise ConfigError(f"config error: {path} = {value}{where}: {allowed}", key=path)

    def finish(self, raw: dict) -> BrokerConfig:
        cfg = self.build(BrokerConfig, raw, "")
        _validate(cfg, self.fail)
        return cfg

    def build(self, hint: Any, raw: Any, path: str) -> Any:
        if isinstance(raw, _EnvValue):
            self.env_sources[path] = raw.name
            return self.from_env(hint, raw, path)
        if dataclasses.is_dataclass(hint):
            return self.build_section(hint, raw, path)
        origin, kind = get_origin(hint), _kind(hint)
        if kind in ("duration", "size"):
            parse = parse_duration if kind == "duration" else parse_size
            if isinstance(raw, bool) or not isinstance(raw, int | float | str):
                self.fail(path, _show(raw), DURATION_HELP if kind == "duration" else SIZE_HELP)
            try:
                return parse(raw)
            except ValueError as e:
                self.fail(path, _show(raw), str(e))
        if origin is dict:
            if raw is None:
                return {}
            if not isinstance(raw, dict):
                self.fail(path, _show(raw), f"expected a mapping, got {_type_name(raw)}")
            value_hint = get_args(hint)[1]
            return {str(k): self.build(value_hint, v, f"{path}.{k}") for k, v in raw.items()}
        if origin is tuple:
            if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
                self.fail(path, _show(raw), "expected a list of strings")
            return tuple(raw)
        if hint is Any:
            return raw
        if raw is None and _optional(hint):
            return None
        want = _scalar(hint)
        if isinstance(raw, want) and not (want is int and isinstance(raw, bool)):
            return raw
        allowed = {bool: "true or false", int: "an integer", str: "a string (quote it in YAML)"}
        self.fail(path, _show(raw), f"expected {allowed[want]}, got {_type_name(raw)}")

    def build_section(self, cls: type, raw: Any, path: str) -> Any:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            self.fail(path, _show(raw), f"expected a mapping, got {_type_name(raw)}")
        schema = _schema(cls)
        prefix = f"{path}." if path else ""
        for key in raw:
            if key not in schema:
                self.fail_unknown(prefix, str(key), list(schema))
        values = {}
        for key, (f, sub) in schema.items():
            if key in raw:
                values[f.name] = self.build(sub, raw[key], prefix + key)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                self.fail(prefix + key, _MISSING, "this key is required")
        return cls(**values)

    def fail_unknown(self, prefix: str, key: str, known: list[str]) -> NoReturn:
        lowered = {k.lower(): k for k in known}
        norm = key.lower().replace("_", "").replace("-", "")
        close = difflib.get_close_matches(norm, lowered, n=1)
        match = norm if norm in lowered else (close[0] if close else None)
        if match:
            hint = f"did you mean {prefix}{lowered[match]}?"
        else:
            hint = f"known keys here: {', '.join(known)}"
        where = f" (in {self.file})" if self.file else ""
        raise ConfigError(
            f"config error: {prefix}{key}{where}: unknown key; {hint}", key=prefix + key
        )

    def from_env(self, hint: Any, value: _EnvValue, path: str) -> Any:
        text = value.text.strip()
        kind = _kind(hint)
        if kind == "duration" or kind == "size":
            return self.build(hint, text, path)
        if get_origin(hint) is tuple:
            return tuple(x.strip() for x in text.split(",") if x.strip())
        if _optional(hint) and not text:
            return None
        want = _scalar(hint)
        if want is bool:
            if text.lower() not in _BOOL_WORDS:
                self.fail(path, _show(value), "expected true or false")
            return _BOOL_WORDS[text.lower()]
        if want is int:
            try:
                return int(text)
            except ValueError:
                self.fail(path, _show(value), "expected an integer")
        return text  # a string, or a free-form exporter arg


def _kind(hint: Any) -> str | None:
    return get_args(hint)[1] if get_origin(hint) is Annotated else None


def _optional(hint: Any) -> bool:
    return type(None) in get_args(hint)


def _scalar(hint: Any) -> type:
    return next(a for a in get_args(hint) if a is not type(None)) if _optional(hint) else hint


_EXPORTER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_HOST_PORT_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+):(\d{1,5})")


def _validate(cfg: BrokerConfig, fail) -> None:
    def need(ok: bool, path: str, value: Any, allowed: str) -> None:
        if not ok:
            fail(path, value, allowed)

    def at_least(minimum: int, ints: dict[str, int]) -> None:
        for path, n in ints.items():
            need(n >= minimum, path, n, f"must be at least {minimum}")

    def positive(durations: dict[str, float]) -> None:
        for path, seconds in durations.items():
            need(seconds > 0, path, format_duration(seconds), "must be greater than 0ms")

    def ports(numbers: dict[str, int]) -> None:
        for path, n in numbers.items():
            need(1 <= n <= 65535, path, n, "a port number between 1 and 65535")

    def not_blank(texts: dict[str, str | None]) -> None:
        for path, value in texts.items():
            need(value is None or value.strip() != "", path, repr(value), "must not be empty")

    c, m, r = cfg.cluster, cfg.cluster.membership, cfg.cluster.raft
    n, mg, d, t = cfg.network, cfg.management, cfg.data, cfg.security.tls
    at_least(
        1, {"cluster.clusterSize": c.cluster_size, "cluster.partitionsCount": c.partitions_count}
    )
    need(
        0 <= c.node_id < c.cluster_size,
        "cluster.nodeId",
        c.node_id,
        f"must be between 0 and cluster.clusterSize - 1 ({c.cluster_size - 1})",
    )
    need(
        1 <= c.replication_factor <= c.cluster_size,
        "cluster.replicationFactor",
        c.replication_factor,
        f"must be between 1 and cluster.clusterSize ({c.cluster_size})",
    )
    not_blank({"cluster.clusterName": c.cluster_name, "cluster.region": c.region})
    for point in c.initial_contact_points:
        match = _HOST_PORT_RE.fullmatch(point)
        need(
            bool(match) and 1 <= int(match[2]) <= 65535,
            "cluster.initialContactPoints",
            repr(point),
            "each entry must be host:port (or [ipv6]:port) with a port between 1 and 65535",
        )

    positive(
        {
            "cluster.membership.gossipInterval": m.gossip_interval,
            "cluster.membership.probeInterval": m.probe_interval,
            "cluster.membership.probeTimeout": m.probe_timeout,
            "cluster.membership.failureTimeout": m.failure_timeout,
            "cluster.membership.syncInterval": m.sync_interval,
            "cluster.raft.electionTimeout": r.election_timeout,
            "cluster.raft.heartbeatInterval": r.heartbeat_interval,
            "network.gateway.requestTimeout": n.gateway.request_timeout,
            "data.snapshotPeriod": d.snapshot_period,
        }
    )
    at_least(
        1,
        {
            "cluster.membership.gossipFanout": m.gossip_fanout,
            "cluster.membership.suspectProbes": m.suspect_probes,
            "network.gateway.maxInflight": n.gateway.max_inflight,
            "data.logSegmentSize": d.log_segment_size,
            "data.snapshotEntries": d.snapshot_entries,
        },
    )
    need(
        MIN_FRAME_SIZE <= n.max_frame_size <= MAX_FRAME_SIZE_LIMIT,
        "network.maxFrameSize",
        format_size(n.max_frame_size),
        f"between {format_size(MIN_FRAME_SIZE)} (a replication batch of 1MB must fit) "
        f"and {format_size(MAX_FRAME_SIZE_LIMIT)}",
    )
    need(
        r.heartbeat_interval < r.election_timeout,
        "cluster.raft.heartbeatInterval",
        format_duration(r.heartbeat_interval),
        f"must be less than cluster.raft.electionTimeout ({format_duration(r.election_timeout)})",
    )

    not_blank(
        {
            "network.host": n.host,
            "network.advertisedHost": n.advertised_host,
            "management.host": mg.host,
            "management.token": mg.token,
            "data.directory": d.directory,
        }
    )
    ports(
        {
            "network.gateway.port": n.gateway.port,
            "network.internal.port": n.internal.port,
            "management.port": mg.port,
        }
    )
    need(
        n.internal.port != n.gateway.port,
        "network.internal.port",
        n.internal.port,
        "must differ from network.gateway.port",
    )
    need(
        mg.port not in (n.gateway.port, n.internal.port),
        "management.port",
        mg.port,
        "must differ from network.gateway.port and network.internal.port",
    )
    # Processing stops first so that replication can still catch followers up.
    b = d.backup
    need(
        b.store in BACKUP_STORES,
        "data.backup.store",
        repr(b.store),
        f"one of {', '.join(BACKUP_STORES)}",
    )
    if b.store == "filesystem":
        directory = b.filesystem.directory
        need(
            directory is not None and directory.strip() != "" and os.path.isabs(directory),
            "data.backup.filesystem.directory",
            repr(directory),
            "an absolute directory path (needed when data.backup.store is filesystem)",
        )
    need(
        d.free_space.processing >= d.free_space.replication,
        "data.freeSpace.processing",
        format_size(d.free_space.processing),
        f"must be at least data.freeSpace.replication ({format_size(d.free_space.replication)})",
    )

    for ident, exporter in cfg.exporters.items():
        path = f"exporters.{ident}"
        need(
            bool(_EXPORTER_ID_RE.fullmatch(ident)),
            path,
            repr(ident),
            "an exporter id is letters, digits, '-' and '_', starting with a letter or digit",
        )
        need(
            exporter.type in EXPORTER_TYPES,
            f"{path}.type",
            repr(exporter.type),
            f"one of: {', '.join(EXPORTER_TYPES)}",
        )
        arg = "path" if exporter.type == "file" else "url"
        value = exporter.args.get(arg, _MISSING)
        if value is _MISSING:
            fail(f"{path}.args.{arg}", _MISSING, f"the {exporter.type} exporter needs args.{arg}")
        if arg == "path":
            ok, allowed = isinstance(value, str) and value.strip() != "", "a directory path"
        else:
            ok = isinstance(value, str) and value.startswith(("http://", "https://"))
            allowed = "an http:// or https:// URL"
        need(ok, f"{path}.args.{arg}", repr(value), allowed)

    need(
        t.client_auth in TLS_CLIENT_AUTH,
        "security.tls.clientAuth",
        repr(t.client_auth),
        f"one of {', '.join(TLS_CLIENT_AUTH)}",
    )
    if t.enabled:
        # Refuse rather than serve plaintext to someone who asked for TLS.
        for key, value in (
            ("certificate", t.certificate),
            ("privateKey", t.private_key),
            ("ca", t.ca),
        ):
            need(
                value is not None and value.strip() != "",
                f"security.tls.{key}",
                repr(value),
                "a PEM file path (needed when security.tls.enabled is true)",
            )


def check_tls_files(cfg: BrokerConfig) -> None:
    """Load the certificate, key and CA the way the broker will; ConfigError names the key.

    Not part of ``validate``: a config is also checked where its files do not
    live (on the controller); the broker and ``broker config check`` call this."""
    from broker.tls import TlsSetupError, broker_contexts

    t = cfg.security.tls
    if not t.enabled:
        return
    try:
        broker_contexts(t.certificate, t.private_key, t.ca, t.client_auth)
    except TlsSetupError as e:
        raise ConfigError(f"config error: {e}", key=e.key) from None


def _dump(hint: Any, value: Any) -> Any:
    if dataclasses.is_dataclass(hint):
        return {k: _dump(sub, getattr(value, f.name)) for k, (f, sub) in _schema(hint).items()}
    if value is None:
        return None
    kind = _kind(hint)
    if kind == "duration":
        return format_duration(value)
    if kind == "size":
        return format_size(value)
    if get_origin(hint) is tuple:
        return list(value)
    if get_origin(hint) is dict:
        return {k: _dump(get_args(hint)[1], v) for k, v in value.items()}
    return copy.deepcopy(value)


# -- dual-region checks and the command line ------------------------------------------------


def dual_region_warnings(cfg: BrokerConfig) -> list[str]:
    """What breaks the dual-region rules; the broker logs these at start but still runs."""
    c = cfg.cluster
    warnings = []
    if c.cluster_size < 4 or c.cluster_size % 2:
        warnings.append(
            f"cluster.clusterSize = {c.cluster_size}: a dual-region cluster needs a multiple "
            "of 2 and at least 4 brokers, so that each region holds half of them"
        )
    if c.replication_factor % 2:
        warnings.append(
            f"cluster.replicationFactor = {c.replication_factor}: a dual-region cluster needs "
            "an even replication factor, so that each region holds half of every partition"
        )
    return warnings


def main_check(argv: list[str] | None = None) -> int:
    """Validate a config file (with BROKER_* overrides): 0 and "config ok", or 2 and the error."""
    parser = argparse.ArgumentParser(
        prog="python -m broker.config", description="Check a broker configuration."
    )
    parser.add_argument("--config", metavar="FILE", help="YAML file (default: built-in defaults)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
        check_tls_files(cfg)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return e.exit_code
    for warning in dual_region_warnings(cfg):
        print(f"warning: {warning}", file=sys.stderr)
    print("config ok")
    return 0


if __name__ == "__main__":
    sys.exit(main_check())
