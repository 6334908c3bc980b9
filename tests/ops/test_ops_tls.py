"""The ops library over TLS: an inventory with broker_tls_enabled speaks HTTPS to the
management APIs and TLS to the gateways, showing a client certificate it issues
itself beside the controller's CA when the brokers require one."""

from __future__ import annotations

import os

import pytest
import yaml

from broker.demo.localcluster import LocalCluster
from broker.ops.checks import verify_writes
from broker.ops.inventory import load_inventory
from broker.ops.view import api_of
from tests.integration.test_cluster import FAST


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("ops-tls")
    c = LocalCluster(
        str(root / "c"),
        size=4,
        partitions=2,
        replication_factor=2,
        overrides=FAST,
        tls=True,
        client_auth="required",
    )
    try:
        c.start()
        c.wait_leaders()
        yield c
    finally:
        c.stop_all()


def inventory(c: LocalCluster, path, **extra) -> str:
    ca_dir = os.path.join(c.root, "tls")
    hosts = {
        r: {
            "vars": {"broker_region": f"region{r}", "broker_region_id": r},
            "hosts": {
                f"b{i}": {
                    "ansible_host": "127.0.0.1",
                    "ansible_connection": "local",
                    "broker_node_id": i,
                    "broker_gateway_port": c.ports[i]["gateway"],
                    "broker_internal_port": c.ports[i]["internal"],
                    "broker_management_port": c.ports[i]["management"],
                }
                for i in range(c.size)
                if i % 2 == r
            },
        }
        for r in (0, 1)
    }
    doc = {
        "all": {
            "vars": {
                "broker_cluster_name": c.cluster_name,
                "broker_partitions_count": c.partitions,
                "broker_replication_factor": c.replication_factor,
                "broker_tls_enabled": True,
                "broker_tls_ca_cert": os.path.join(ca_dir, "ca.pem"),
                "broker_tls_ca_key": os.path.join(ca_dir, "ca.key"),
                **extra,
            },
            "children": {"brokers": {"children": {f"region{r}": hosts[r] for r in (0, 1)}}},
        }
    }
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_ops_speaks_tls_with_a_client_certificate_it_issues_itself(tls_cluster, tmp_path):
    c = tls_cluster
    cluster = load_inventory(inventory(c, tmp_path / "hosts.yml"))
    assert cluster.brokers[0].management_url.startswith("https://")
    doc = api_of(cluster, cluster.brokers[0]).cluster()
    assert sorted(b["id"] for b in doc["brokers"]) == [0, 1, 2, 3]
    issued = os.path.join(c.root, "tls", "clients", "ops.crt")
    assert os.path.exists(issued)
    outcome = verify_writes(cluster, cluster.brokers)
    assert outcome.status == "done", outcome


def test_without_the_ca_key_or_a_client_certificate_a_required_client_auth_refuses(
    tls_cluster, tmp_path
):
    c = tls_cluster
    path = inventory(c, tmp_path / "hosts.yml", broker_tls_ca_key=str(tmp_path / "absent.key"))
    cluster = load_inventory(path)
    outcome = verify_writes(cluster, cluster.brokers, timeout=3)
    assert outcome.status == "failed", outcome
    assert "client certificate is required" in str(outcome), outcome


def test_verify_reports_the_days_left_on_every_certificate(tls_cluster, tmp_path):
    from broker.ops.checks import check_certificates

    c = tls_cluster
    cluster = load_inventory(inventory(c, tmp_path / "hosts.yml"))
    result = check_certificates(cluster, cluster.brokers)
    assert result.status == "done", result
    # Issued for a year by default: 364 or 365 days left, on every broker.
    assert "365 days left" in result.saw or "364 to 365" in result.saw, result
    assert "over 30 days left" in result.did


def test_a_runbooks_brokerctl_steps_speak_tls_from_the_inventory(tls_cluster, tmp_path):
    """`fab runbook verify-placement` on a TLS inventory: its brokerctl commands get the
    CA and the ops client certificate (BROKER_TLS_*) from the inventory (the brokers
    require a client certificate: without them every brokerctl step would fail)."""
    from tests.ops.test_runbooks import fab

    path = inventory(tls_cluster, tmp_path / "hosts.yml")
    assert not any(k.startswith("BROKER_TLS_") for k in os.environ)
    audit = tmp_path / "audit"
    done = fab(
        "runbook", "verify-placement", "--inventory", path, "--yes",
        env={"BROKER_OPS_AUDIT_DIR": str(audit)},
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "verify-placement: completed" in done.stdout, out[-4000:]
    assert "brokerctl --management https://" in " ".join(out.split()), out[-4000:]
