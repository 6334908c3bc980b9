import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from broker.config import (
    GB,
    KB,
    MB,
    BrokerConfig,
    ConfigError,
    ExporterConfig,
    NetworkConfig,
    dual_region_warnings,
    format_duration,
    format_size,
    load_config,
    main_check,
    parse_duration,
    parse_size,
)

REPO = Path(__file__).resolve().parents[2]

# Section 5 of DESIGN.md, verbatim.
DESIGN_EXAMPLE = """\
cluster:
  nodeId: 0
  clusterSize: 8
  partitionsCount: 8
  replicationFactor: 4
  clusterName: dual-region
  region: region0                 # free-form zone name
  initialContactPoints: ["host-a:26502", "host-b:26502"]
  membership: {gossipInterval: 250ms, gossipFanout: 2, probeInterval: 1s,
               probeTimeout: 100ms, suspectProbes: 3, failureTimeout: 10s, syncInterval: 10s}
  raft: {electionTimeout: 1000ms, heartbeatInterval: 100ms,
         enablePriorityElection: true, flush: {enabled: true, delayTime: 0ms}}
network:
  host: 0.0.0.0
  advertisedHost: host-a          # what peers and clients are told
  gateway: {port: 26500}          # client API
  internal: {port: 26502}         # raft, gossip, forwarding
management: {host: 0.0.0.0, port: 9600, token: null}
data: {directory: /var/lib/broker, logSegmentSize: 64MB, snapshotPeriod: 5m,
       freeSpace: {processing: 2GB, replication: 1GB}}
exporters:
  region0: {type: file, args: {path: /var/lib/broker-export/region0}}
security: {tls: {enabled: false, certificate: null, privateKey: null, ca: null}}
"""

# Every key set to something other than its default.
FULL = """\
cluster:
  nodeId: 5
  clusterSize: 6
  partitionsCount: 3
  replicationFactor: 2
  clusterName: east-west
  region: eu-west
  initialContactPoints: ["a.example:7000", "[::1]:7001"]
  membership:
    gossipInterval: 300ms
    gossipFanout: 3
    probeInterval: 2s
    probeTimeout: 150ms
    suspectProbes: 4
    failureTimeout: 20s
    syncInterval: 1m
  raft:
    electionTimeout: 1.5s
    heartbeatInterval: 150ms
    enablePriorityElection: false
    flush: {enabled: false, delayTime: 5ms}
network:
  host: 10.0.0.5
  advertisedHost: broker-5.example
  maxFrameSize: 8MB
  gateway: {port: 27500, maxInflight: 50, requestTimeout: 30s}
  internal: {port: 27502}
management: {host: 127.0.0.1, port: 9700, token: s3cret}
data:
  directory: /srv/broker
  logSegmentSize: 512KB
  snapshotPeriod: 10m
  snapshotEntries: 5000
  freeSpace: {processing: 3GB, replication: 512MB}
exporters:
  region0: {type: file, args: {path: /export/r0}}
  region1: {type: http, args: {url: "https://sink.example/r1", batchSize: 100}}
security:
  tls: {enabled: false, certificate: null, privateKey: null, ca: null}
"""


@pytest.fixture(autouse=True)
def no_broker_env(monkeypatch):
    """Keep a developer's BROKER_* variables out of tests that read the process environment."""
    for name in [n for n in os.environ if n.startswith("BROKER_")]:
        monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "broker.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def config_error(data=None, env=None, *, yaml_text=None, tmp_path=None) -> ConfigError:
    """The ConfigError raised for ``data`` (a dict) or ``yaml_text``, checked to be one line."""
    with pytest.raises(ConfigError) as info:
        if yaml_text is None:
            if env is None:
                BrokerConfig.from_dict(data)
            else:
                load_config(None, env)
        else:
            load_config(write(tmp_path, yaml_text), env or {})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("config error: ")
    assert info.value.exit_code == 2
    return info.value


# -- defaults and the full structure ---------------------------------------------------------


def test_defaults_are_the_design_values():
    cfg = load_config(None, {})
    assert cfg == BrokerConfig()
    c = cfg.cluster
    assert (c.node_id, c.cluster_size, c.partitions_count, c.replication_factor) == (0, 8, 8, 4)
    assert (c.cluster_name, c.region, c.initial_contact_points) == ("dual-region", "region0", ())
    m = c.membership
    assert (m.gossip_interval, m.gossip_fanout, m.probe_interval, m.probe_timeout) == (
        0.25,
        2,
        1.0,
        0.1,
    )
    assert (m.suspect_probes, m.failure_timeout, m.sync_interval) == (3, 10.0, 10.0)
    r = c.raft
    assert (r.election_timeout, r.heartbeat_interval, r.enable_priority_election) == (
        1.0,
        0.1,
        True,
    )
    assert (r.flush.enabled, r.flush.delay_time) == (True, 0.0)
    n = cfg.network
    assert (n.host, n.advertised_host, n.max_frame_size) == ("0.0.0.0", None, 4 * MB)
    assert (n.gateway.port, n.gateway.max_inflight, n.gateway.request_timeout) == (
        26500,
        1000,
        15.0,
    )
    assert n.internal.port == 26502
    assert (cfg.management.host, cfg.management.port, cfg.management.token) == (
        "0.0.0.0",
        9600,
        None,
    )
    d = cfg.data
    assert (d.directory, d.log_segment_size, d.snapshot_period, d.snapshot_entries) == (
        "/var/lib/broker",
        64 * MB,
        300.0,
        100_000,
    )
    assert (d.free_space.processing, d.free_space.replication) == (2 * GB, 1 * GB)
    assert cfg.exporters == {}
    tls = cfg.security.tls
    assert (tls.enabled, tls.certificate, tls.private_key, tls.ca) == (False, None, None, None)


def test_the_design_example_loads(tmp_path):
    cfg = load_config(write(tmp_path, DESIGN_EXAMPLE), {})
    assert cfg.cluster.initial_contact_points == ("host-a:26502", "host-b:26502")
    assert cfg.network.advertised_host == "host-a"
    assert cfg.exporters == {
        "region0": ExporterConfig(type="file", args={"path": "/var/lib/broker-export/region0"})
    }
    defaults = BrokerConfig()
    assert cfg.cluster.raft == defaults.cluster.raft
    assert cfg.cluster.membership == defaults.cluster.membership
    assert cfg.data == defaults.data


def test_every_key_is_read_from_yaml(tmp_path):
    cfg = load_config(write(tmp_path, FULL), {})
    c = cfg.cluster
    assert (c.node_id, c.cluster_size, c.partitions_count, c.replication_factor) == (5, 6, 3, 2)
    assert (c.cluster_name, c.region) == ("east-west", "eu-west")
    assert c.initial_contact_points == ("a.example:7000", "[::1]:7001")
    m = c.membership
    assert (m.gossip_interval, m.gossip_fanout, m.probe_interval, m.probe_timeout) == (
        0.3,
        3,
        2.0,
        0.15,
    )
    assert (m.suspect_probes, m.failure_timeout, m.sync_interval) == (4, 20.0, 60.0)
    r = c.raft
    assert (r.election_timeout, r.heartbeat_interval, r.enable_priority_election) == (
        1.5,
        0.15,
        False,
    )
    assert (r.flush.enabled, r.flush.delay_time) == (False, 0.005)
    n = cfg.network
    assert (n.host, n.advertised_host, n.max_frame_size) == ("10.0.0.5", "broker-5.example", 8 * MB)
    assert (n.gateway.port, n.gateway.max_inflight, n.gateway.request_timeout) == (27500, 50, 30.0)
    assert n.internal.port == 27502
    assert (cfg.management.host, cfg.management.port, cfg.management.token) == (
        "127.0.0.1",
        9700,
        "s3cret",
    )
    d = cfg.data
    assert (d.directory, d.log_segment_size, d.snapshot_period, d.snapshot_entries) == (
        "/srv/broker",
        512 * KB,
        600.0,
        5000,
    )
    assert (d.free_space.processing, d.free_space.replication) == (3 * GB, 512 * MB)
    assert cfg.exporters["region1"] == ExporterConfig(
        type="http", args={"url": "https://sink.example/r1", "batchSize": 100}
    )
    tls = cfg.security.tls
    assert (tls.enabled, tls.certificate, tls.private_key, tls.ca) == (False, None, None, None)


def test_to_dict_round_trips_through_yaml(tmp_path):
    cfg = load_config(write(tmp_path, FULL), {})
    dumped = cfg.to_dict()
    assert dumped["cluster"]["raft"]["electionTimeout"] == "1500ms"
    assert dumped["cluster"]["membership"]["syncInterval"] == "1m"
    assert dumped["data"]["logSegmentSize"] == "512KB"
    assert dumped["cluster"]["initialContactPoints"] == ["a.example:7000", "[::1]:7001"]
    assert dumped["security"]["tls"] == {
        "enabled": False,
        "certificate": None,
        "privateKey": None,
        "ca": None,
        "clientAuth": "none",
    }
    again = load_config(write(tmp_path, yaml.safe_dump(dumped), "again.yaml"), {})
    assert again == cfg
    assert BrokerConfig.from_dict(BrokerConfig().to_dict()) == BrokerConfig()


def test_to_dict_is_a_copy():
    cfg = BrokerConfig.from_dict({"exporters": {"r0": {"type": "file", "args": {"path": "/x"}}}})
    cfg.to_dict()["exporters"]["r0"]["args"]["path"] = "/changed"
    assert cfg.exporters["r0"].args["path"] == "/x"


def test_config_is_frozen():
    cfg = BrokerConfig()
    with pytest.raises(AttributeError):
        cfg.cluster.node_id = 3  # type: ignore[misc]


def test_empty_file_and_empty_sections_mean_defaults(tmp_path):
    assert load_config(write(tmp_path, ""), {}) == BrokerConfig()
    assert load_config(write(tmp_path, "cluster:\nsecurity:\n", "b.yaml"), {}) == BrokerConfig()


def test_bare_numbers_are_milliseconds_and_bytes():
    cfg = BrokerConfig.from_dict(
        {"cluster": {"raft": {"electionTimeout": 2000}}, "data": {"logSegmentSize": 4096}}
    )
    assert cfg.cluster.raft.election_timeout == 2.0
    assert cfg.data.log_segment_size == 4096


@pytest.mark.parametrize(
    ("advertised", "host", "expected"),
    [("pub.example", "10.0.0.1", "pub.example"), (None, "10.0.0.1", "10.0.0.1")],
)
def test_effective_advertised_host(advertised, host, expected):
    network = NetworkConfig(host=host, advertised_host=advertised)
    assert network.effective_advertised_host == expected


def test_effective_advertised_host_for_a_wildcard_is_the_machine_name():
    assert NetworkConfig().effective_advertised_host == socket.gethostname()


# -- environment overrides -------------------------------------------------------------------


def test_env_overrides_nested_keys_with_their_types():
    cfg = load_config(
        None,
        {
            "BROKER_CLUSTER_NODEID": "3",
            "BROKER_CLUSTER_RAFT_ELECTIONTIMEOUT": "500ms",
            "BROKER_CLUSTER_RAFT_FLUSH_ENABLED": "false",
            "BROKER_CLUSTER_MEMBERSHIP_GOSSIPFANOUT": "4",
            "BROKER_NETWORK_GATEWAY_MAXINFLIGHT": "20",
            "BROKER_NETWORK_GATEWAY_REQUESTTIMEOUT": "2s",
            "BROKER_NETWORK_MAXFRAMESIZE": "3MB",
            "BROKER_NETWORK_ADVERTISEDHOST": "me.example",
            "BROKER_DATA_FREESPACE_REPLICATION": "512MB",
            "BROKER_DATA_SNAPSHOTENTRIES": "10",
            "BROKER_MANAGEMENT_TOKEN": "tok",
        },
    )
    assert cfg.cluster.node_id == 3
    assert cfg.cluster.raft.election_timeout == 0.5
    assert cfg.cluster.raft.flush.enabled is False
    assert cfg.cluster.membership.gossip_fanout == 4
    assert cfg.network.gateway.max_inflight == 20
    assert cfg.network.gateway.request_timeout == 2.0
    assert cfg.network.max_frame_size == 3 * MB
    assert cfg.network.advertised_host == "me.example"
    assert cfg.data.free_space.replication == 512 * MB
    assert cfg.data.snapshot_entries == 10
    assert cfg.management.token == "tok"


def test_env_wins_over_the_file(tmp_path):
    path = write(tmp_path, "cluster: {nodeId: 1, clusterName: from-file}\n")
    cfg = load_config(path, {"BROKER_CLUSTER_NODEID": "2"})
    assert (cfg.cluster.node_id, cfg.cluster.cluster_name) == (2, "from-file")


def test_env_list_is_comma_separated():
    env = {"BROKER_CLUSTER_INITIALCONTACTPOINTS": "a:26502, b:26502,"}
    assert load_config(None, env).cluster.initial_contact_points == ("a:26502", "b:26502")
    env = {"BROKER_CLUSTER_INITIALCONTACTPOINTS": ""}
    assert load_config(None, env).cluster.initial_contact_points == ()


@pytest.mark.parametrize(("text", "value"), [("true", True), ("YES", True), ("0", False)])
def test_env_booleans(text, value):
    env = {"BROKER_CLUSTER_RAFT_ENABLEPRIORITYELECTION": text}
    assert load_config(None, env).cluster.raft.enable_priority_election is value


def test_env_empty_value_clears_an_optional_key(tmp_path):
    path = write(tmp_path, "management: {token: abc}\n")
    assert load_config(path, {"BROKER_MANAGEMENT_TOKEN": ""}).management.token is None


def test_env_defines_exporters_with_lowercased_ids():
    cfg = load_config(
        None,
        {
            "BROKER_EXPORTERS_REGION0_TYPE": "file",
            "BROKER_EXPORTERS_REGION0_ARGS_PATH": "/x",
            "BROKER_EXPORTERS_DR_SINK_TYPE": "http",
            "BROKER_EXPORTERS_DR_SINK_ARGS_URL": "http://sink:8080/in",
        },
    )
    assert cfg.exporters == {
        "region0": ExporterConfig(type="file", args={"path": "/x"}),
        "dr_sink": ExporterConfig(type="http", args={"url": "http://sink:8080/in"}),
    }


def test_env_overrides_exporters_from_the_file_matching_ids_and_args_case_insensitively(tmp_path):
    path = write(
        tmp_path,
        """\
        exporters:
          regionA: {type: http, args: {url: "http://old", batchSize: 10}}
        """,
    )
    env = {
        "BROKER_EXPORTERS_REGIONA_ARGS_URL": "https://new",
        "BROKER_EXPORTERS_REGIONA_ARGS_BATCHSIZE": "20",
    }
    cfg = load_config(path, env)
    # Free-form exporter args stay strings when set from the environment.
    assert cfg.exporters == {
        "regionA": ExporterConfig(type="http", args={"url": "https://new", "batchSize": "20"})
    }


def test_env_exporter_without_type_is_an_error():
    err = config_error(env={"BROKER_EXPORTERS_REGION1_ARGS_PATH": "/x"})
    assert err.key == "exporters.region1.type"
    assert "missing" in str(err)


def test_unrelated_broker_variables_are_ignored():
    assert load_config(None, {"BROKER_INVENTORY": "x.yml", "PATH": "/bin"}) == BrokerConfig()


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("BROKER_CLUSTER_NODID", "BROKER_CLUSTER_NODEID"),
        ("BROKER_CLUSTR_NODEID", "BROKER_CLUSTER_NODEID"),
        ("BROKER_CLUSTER_RAFT_ELECTIONTIMEOUT_MS", "BROKER_CLUSTER_RAFT_ELECTIONTIMEOUT"),
    ],
)
def test_unknown_env_setting_is_an_error_with_a_suggestion(name, suggestion):
    err = config_error(env={name: "3"})
    assert str(err) == f"config error: {name}: unknown setting (did you mean {suggestion}?)"


def test_bad_env_value_names_key_value_and_variable():
    err = config_error(env={"BROKER_CLUSTER_RAFT_ELECTIONTIMEOUT": "10h"})
    assert str(err).startswith(
        "config error: cluster.raft.electionTimeout = '10h' "
        "(from BROKER_CLUSTER_RAFT_ELECTIONTIMEOUT): expected a duration"
    )
    err = config_error(env={"BROKER_CLUSTER_NODEID": "three"})
    assert str(err) == (
        "config error: cluster.nodeId = 'three' (from BROKER_CLUSTER_NODEID): expected an integer"
    )
    err = config_error(env={"BROKER_SECURITY_TLS_ENABLED": "maybe"})
    assert err.key == "security.tls.enabled"


def test_env_range_error_names_the_variable():
    err = config_error(env={"BROKER_CLUSTER_NODEID": "8"})
    assert str(err) == (
        "config error: cluster.nodeId = 8 (from BROKER_CLUSTER_NODEID): "
        "must be between 0 and cluster.clusterSize - 1 (7)"
    )


def test_load_config_reads_the_process_environment_by_default(monkeypatch):
    monkeypatch.setenv("BROKER_CLUSTER_NODEID", "6")
    assert load_config(None).cluster.node_id == 6
    assert load_config(None, {}).cluster.node_id == 0


# -- durations and sizes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("100ms", 0.1),
        ("0ms", 0.0),
        ("1s", 1.0),
        ("1.5s", 1.5),
        ("5m", 300.0),
        ("250", 0.25),
        (250, 0.25),
        (0.5, 0.0005),
        (" 10 s ", 10.0),
        ("2S", 2.0),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["10h", "1d", "-1s", "1e3ms", "ms", "", "1.s", "fast", True, -5])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        (4096, 4096),
        ("100B", 100),
        ("512KB", 512 * 1024),
        ("64MB", 64 * 1024 * 1024),
        ("2GB", 2 * 1024**3),
        ("1 gb", 1024**3),
    ],
)
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["1.5GB", "10TB", "1KiB", "-1", "MB", "", "big", False, -1])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="expected a size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0, "0ms"), (0.25, "250ms"), (1.0, "1s"), (90.0, "90s"), (300.0, "5m"), (0.0005, "0.5ms")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("size", "text"), [(0, "0"), (1000, "1000"), (3 * KB, "3KB"), (64 * MB, "64MB"), (GB, "1GB")]
)
def test_format_size(size, text):
    assert format_size(size) == text


@given(st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False))
def test_duration_format_parse_round_trip(seconds):
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(min_value=0, max_value=10**9), st.sampled_from(["", "ms", "s", "m"]))
def test_written_durations_survive_format(n, unit):
    seconds = parse_duration(f"{n}{unit}")
    assert seconds == {"": n / 1000, "ms": n / 1000, "s": float(n), "m": float(n * 60)}[unit]
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(min_value=0, max_value=2**60))
def test_size_format_parse_round_trip(size):
    assert parse_size(format_size(size)) == size


@given(st.integers(min_value=0, max_value=2**30), st.sampled_from(["KB", "MB", "GB"]))
def test_written_sizes_are_1024_based(n, unit):
    assert parse_size(f"{n}{unit}") == n * {"KB": 1024, "MB": 1024**2, "GB": 1024**3}[unit]


# -- validation ------------------------------------------------------------------------------

TLS_CERT = {"certificate": "/c.pem", "privateKey": "/k.pem"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"cluster": {"nodeId": 8}},
            "cluster.nodeId = 8: must be between 0 and cluster.clusterSize - 1 (7)",
        ),
        ({"cluster": {"nodeId": -1}}, "cluster.nodeId = -1: must be between 0"),
        (
            {"cluster": {"clusterSize": 0, "nodeId": 0}},
            "cluster.clusterSize = 0: must be at least 1",
        ),
        ({"cluster": {"partitionsCount": 0}}, "cluster.partitionsCount = 0: must be at least 1"),
        (
            {"cluster": {"replicationFactor": 9}},
            "cluster.replicationFactor = 9: must be between 1 and cluster.clusterSize (8)",
        ),
        ({"cluster": {"replicationFactor": 0}}, "cluster.replicationFactor = 0: must be between"),
        (
            {"cluster": {"raft": {"heartbeatInterval": "1s", "electionTimeout": "1s"}}},
            "cluster.raft.heartbeatInterval = 1s: "
            "must be less than cluster.raft.electionTimeout (1s)",
        ),
        (
            {"cluster": {"raft": {"electionTimeout": "0ms"}}},
            "cluster.raft.electionTimeout = 0ms: must be greater than 0ms",
        ),
        (
            {"cluster": {"membership": {"gossipFanout": 0}}},
            "cluster.membership.gossipFanout = 0: must be at least 1",
        ),
        (
            {"cluster": {"membership": {"suspectProbes": 0}}},
            "cluster.membership.suspectProbes = 0: must be at least 1",
        ),
        (
            {"cluster": {"initialContactPoints": ["host-a"]}},
            "cluster.initialContactPoints = 'host-a': each entry must be host:port",
        ),
        (
            {"cluster": {"initialContactPoints": ["a:1", "b:70000"]}},
            "cluster.initialContactPoints = 'b:70000': each entry must be host:port",
        ),
        (
            {"cluster": {"initialContactPoints": ["::1:26502"]}},
            "cluster.initialContactPoints = '::1:26502': each entry must be host:port",
        ),
        ({"cluster": {"clusterName": " "}}, "cluster.clusterName = ' ': must not be empty"),
        (
            {"network": {"gateway": {"port": 0}}},
            "network.gateway.port = 0: a port number between 1 and 65535",
        ),
        (
            {"network": {"internal": {"port": 65536}}},
            "network.internal.port = 65536: a port number between 1 and 65535",
        ),
        (
            {"management": {"port": 70000}},
            "management.port = 70000: a port number between 1 and 65535",
        ),
        (
            {"network": {"internal": {"port": 26500}}},
            "network.internal.port = 26500: must differ from network.gateway.port",
        ),
        ({"management": {"port": 26502}}, "management.port = 26502: must differ from"),
        ({"management": {"token": ""}}, "management.token = '': must not be empty"),
        (
            {"network": {"gateway": {"maxInflight": 0}}},
            "network.gateway.maxInflight = 0: must be at least 1",
        ),
        (
            {"network": {"gateway": {"requestTimeout": 0}}},
            "network.gateway.requestTimeout = 0ms: must be greater than 0ms",
        ),
        (
            {"network": {"maxFrameSize": 1}},
            "network.maxFrameSize = 1: between 2MB (a replication batch of 1MB must fit) and 64MB",
        ),
        ({"network": {"maxFrameSize": "1GB"}}, "network.maxFrameSize = 1GB: between 2MB"),
        ({"data": {"snapshotEntries": 0}}, "data.snapshotEntries = 0: must be at least 1"),
        ({"data": {"snapshotPeriod": "0s"}}, "data.snapshotPeriod = 0ms: must be greater than 0ms"),
        (
            {"data": {"freeSpace": {"processing": "1GB", "replication": "2GB"}}},
            "data.freeSpace.processing = 1GB: must be at least data.freeSpace.replication (2GB)",
        ),
        (
            {"exporters": {"r0": {"type": "kafka", "args": {}}}},
            "exporters.r0.type = 'kafka': one of: file, http",
        ),
        (
            {"exporters": {"r0": {"type": "file"}}},
            "exporters.r0.args.path is missing: the file exporter needs args.path",
        ),
        (
            {"exporters": {"r0": {"type": "file", "args": {"path": ""}}}},
            "exporters.r0.args.path = '': a directory path",
        ),
        (
            {"exporters": {"r1": {"type": "http", "args": {"path": "/x"}}}},
            "exporters.r1.args.url is missing: the http exporter needs args.url",
        ),
        (
            {"exporters": {"r1": {"type": "http", "args": {"url": "sink:80"}}}},
            "exporters.r1.args.url = 'sink:80': an http:// or https:// URL",
        ),
        (
            {"exporters": {"bad id": {"type": "file", "args": {"path": "/x"}}}},
            "exporters.bad id = 'bad id': an exporter id is letters, digits",
        ),
        ({"exporters": {"r0": {"args": {"path": "/x"}}}}, "exporters.r0.type is missing"),
        (
            {"security": {"tls": {"enabled": True, **TLS_CERT}}},
            "security.tls.ca = None: a PEM file path (needed when security.tls.enabled is true)",
        ),
        (
            {"security": {"tls": {"enabled": True, "ca": "/ca.pem"}}},
            "security.tls.certificate = None: a PEM file path",
        ),
        (
            {"security": {"tls": {"enabled": True, "ca": "/ca.pem", "certificate": "/c.pem"}}},
            "security.tls.privateKey = None: a PEM file path",
        ),
        (
            {"security": {"tls": {"clientAuth": "sometimes"}}},
            "security.tls.clientAuth = 'sometimes': one of none, optional, required",
        ),
    ],
)
def test_validation_rule(data, message):
    assert str(config_error(data)).startswith(f"config error: {message}")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"cluster": {"nodeId": "3"}}, "cluster.nodeId = '3': expected an integer, got a string"),
        (
            {"cluster": {"nodeId": True}},
            "cluster.nodeId = true: expected an integer, got a boolean",
        ),
        ({"cluster": {"nodeId": None}}, "cluster.nodeId = null: expected an integer, got null"),
        (
            {"cluster": {"region": 1}},
            "cluster.region = 1: expected a string (quote it in YAML), got an integer",
        ),
        (
            {"cluster": {"raft": {"flush": {"enabled": "no"}}}},
            "cluster.raft.flush.enabled = 'no': expected true or false, got a string",
        ),
        (
            {"cluster": {"initialContactPoints": "a:1"}},
            "cluster.initialContactPoints = 'a:1': expected a list of strings",
        ),
        ({"cluster": {"raft": "fast"}}, "cluster.raft = 'fast': expected a mapping, got a string"),
        ({"exporters": ["r0"]}, "exporters = ['r0']: expected a mapping, got a list"),
        (
            {"cluster": {"raft": {"electionTimeout": "10h"}}},
            "cluster.raft.electionTimeout = '10h': expected a duration: "
            "a non-negative number with unit ms, s or m",
        ),
        (
            {"data": {"logSegmentSize": "64TB"}},
            "data.logSegmentSize = '64TB': expected a size: "
            "a non-negative whole number with unit KB, MB or GB (1024-based",
        ),
        (
            {"data": {"logSegmentSize": [1]}},
            "data.logSegmentSize = [1]: expected a size",
        ),
    ],
)
def test_type_errors_name_key_value_and_allowed(data, message):
    assert str(config_error(data)).startswith(f"config error: {message}")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"cluster": {"raft": {"electonTimeout": "1s"}}},
            "cluster.raft.electonTimeout: unknown key; did you mean cluster.raft.electionTimeout?",
        ),
        ({"cluster": {"node_id": 1}}, "cluster.node_id: unknown key; did you mean cluster.nodeId?"),
        ({"cluster": {"nodeid": 1}}, "cluster.nodeid: unknown key; did you mean cluster.nodeId?"),
        ({"clustr": {}}, "clustr: unknown key; did you mean cluster?"),
        (
            {"exporters": {"r0": {"type": "file", "arg": {"path": "/x"}}}},
            "exporters.r0.arg: unknown key; did you mean exporters.r0.args?",
        ),
        (
            {"security": {"tls": {"zzz": 1}}},
            "security.tls.zzz: unknown key; known keys here: "
            "enabled, certificate, privateKey, ca, clientAuth",
        ),
    ],
)
def test_unknown_key_names_it_and_suggests_the_closest(data, message):
    err = config_error(data)
    assert str(err) == f"config error: {message}"
    assert err.key == message.split(":")[0]


def test_errors_from_a_file_name_the_file(tmp_path):
    err = config_error(yaml_text="cluster:\n  nodeId: 12\n", tmp_path=tmp_path)
    path = tmp_path / "broker.yaml"
    assert str(err) == (
        f"config error: cluster.nodeId = 12 (in {path}): "
        "must be between 0 and cluster.clusterSize - 1 (7)"
    )


def test_valid_non_default_setups_pass():
    cfg = BrokerConfig.from_dict(
        {
            "cluster": {"clusterSize": 1, "replicationFactor": 1, "partitionsCount": 1},
            "network": {"gateway": {"port": 1}, "internal": {"port": 65535}},
            "security": {"tls": {"enabled": False}},
            "data": {"freeSpace": {"processing": 0, "replication": 0}},
        }
    )
    assert cfg.data.free_space.processing == 0


# -- files -----------------------------------------------------------------------------------


def test_yaml_syntax_error_names_the_file_and_line(tmp_path):
    err = config_error(yaml_text="cluster:\n  nodeId: [1\n", tmp_path=tmp_path)
    assert str(err).startswith(f"config error: {tmp_path / 'broker.yaml'}: invalid YAML at line 3")


def test_duplicate_yaml_key_is_an_error(tmp_path):
    err = config_error(yaml_text="cluster:\n  nodeId: 1\n  nodeId: 2\n", tmp_path=tmp_path)
    assert str(err) == (
        f"config error: {tmp_path / 'broker.yaml'}: invalid YAML at line 3, column 3: "
        "duplicate key 'nodeId'"
    )


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    text = """\
        cluster:
          raft:
            <<: {electionTimeout: 2s, heartbeatInterval: 300ms}
            heartbeatInterval: 200ms
        """
    raft = load_config(write(tmp_path, text), {}).cluster.raft
    assert (raft.election_timeout, raft.heartbeat_interval) == (2.0, 0.2)


def test_file_that_is_not_a_mapping(tmp_path):
    err = config_error(yaml_text="- cluster\n", tmp_path=tmp_path)
    assert str(err) == (
        f"config error: {tmp_path / 'broker.yaml'}: "
        "expected a mapping of sections (cluster, network, ...), got a list"
    )


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {})
    assert str(info.value) == f"config error: {path}: cannot read: No such file or directory"
    assert info.value.exit_code == 2


# -- dual-region warnings --------------------------------------------------------------------


def test_reference_setup_has_no_dual_region_warnings():
    assert dual_region_warnings(BrokerConfig()) == []
    assert dual_region_warnings(BrokerConfig.from_dict({"cluster": {"clusterSize": 4}})) == []


@pytest.mark.parametrize(
    ("cluster", "keys"),
    [
        ({"clusterSize": 3, "replicationFactor": 2}, ["cluster.clusterSize = 3"]),
        ({"clusterSize": 2, "replicationFactor": 2}, ["cluster.clusterSize = 2"]),
        ({"clusterSize": 9, "replicationFactor": 4}, ["cluster.clusterSize = 9"]),
        ({"clusterSize": 8, "replicationFactor": 3}, ["cluster.replicationFactor = 3"]),
        (
            {"clusterSize": 3, "replicationFactor": 3},
            ["cluster.clusterSize = 3", "cluster.replicationFactor = 3"],
        ),
    ],
)
def test_dual_region_warnings(cluster, keys):
    warnings = dual_region_warnings(BrokerConfig.from_dict({"cluster": cluster}))
    assert [w.split(":")[0] for w in warnings] == keys


# -- the check command -----------------------------------------------------------------------


def test_main_check_accepts_a_good_file(tmp_path, capsys):
    assert main_check(["--config", write(tmp_path, DESIGN_EXAMPLE)]) == 0
    out = capsys.readouterr()
    assert (out.out, out.err) == ("config ok\n", "")


def test_main_check_prints_dual_region_warnings(tmp_path, capsys):
    path = write(tmp_path, "cluster: {clusterSize: 3, replicationFactor: 3}\n")
    assert main_check(["--config", path]) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in err] == ["warning", "warning"]


def test_main_check_rejects_a_bad_file(tmp_path, capsys):
    path = write(tmp_path, "cluster: {nodeId: 9}\n")
    assert main_check(["--config", path]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.startswith("config error: cluster.nodeId = 9")


def test_module_exits_2_with_one_line_on_a_bad_config(tmp_path):
    path = write(tmp_path, "cluster:\n  raft: {electionTimeout: 10h}\n", "bad.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    result = subprocess.run(
        [sys.executable, "-m", "broker.config", "--config", path],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        f"config error: cluster.raft.electionTimeout = '10h' (in {path}): expected a duration"
    )


def test_module_says_ok_on_a_good_config(tmp_path):
    path = write(tmp_path, DESIGN_EXAMPLE, "good.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    result = subprocess.run(
        [sys.executable, "-m", "broker.config", "--config", path],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "config ok\n", "")


@pytest.mark.parametrize(
    "command", [["config", "check"], ["run"], ["start"]], ids=["config-check", "run", "start"]
)
def test_tls_files_that_cannot_be_loaded_stop_the_broker_before_it_binds(tmp_path, command):
    """TLS asked for but impossible: exit 2 naming the key, rather than serve plaintext."""
    text = (
        f"data: {{directory: {tmp_path / 'data'}}}\n"
        "security:\n  tls: {enabled: true, certificate: /nonexistent/cert.pem,\n"
        "    privateKey: /nonexistent/key.pem, ca: /nonexistent/ca.pem}\n"
    )
    path = write(tmp_path, text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    result = subprocess.run(
        [sys.executable, "-m", "broker", *command, "--config", path],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0] == (
        "config error: security.tls.certificate: cannot read /nonexistent/cert.pem: no such file"
    )
    assert not (tmp_path / "data").exists()  # nothing started, nothing written


def test_tls_enabled_from_the_environment_needs_its_files():
    err = config_error(env={"BROKER_SECURITY_TLS_ENABLED": "true"})
    assert err.key == "security.tls.certificate"
    assert "needed when security.tls.enabled is true" in str(err)
