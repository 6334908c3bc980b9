"""broker.certs: the cluster CA, broker and client certificates, and their CLI."""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker import certs

CLUSTER = "dual region/1"  # a space and a slash: the URI must quote them
QUOTED = "dual%20region%2F1"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ca(tmp_path):
    r = certs.ensure_ca(CLUSTER, tmp_path / "ca.crt", tmp_path / "ca.key")
    assert r.changed
    return tmp_path / "ca.crt", tmp_path / "ca.key"


def issue_broker(tmp_path, ca, node_id=3, names=("brk-r1-h1", "127.0.0.1", "::1"), **kw):
    return certs.ensure_broker(
        CLUSTER,
        node_id,
        "region1",
        list(names),
        ca[0],
        ca[1],
        tmp_path / f"broker-{node_id}.crt",
        tmp_path / f"broker-{node_id}.key",
        **kw,
    )


def ext(cert, cls):
    return cert.extensions.get_extension_for_class(cls).value


def test_ca_identity_and_files(tmp_path, ca):
    cert = certs.load_cert(ca[0])
    assert cert.subject.rfc4514_string() == f"CN={CLUSTER} cluster CA"
    assert cert.issuer == cert.subject
    assert cert.signature_hash_algorithm.name == "sha256"
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    bc = ext(cert, x509.BasicConstraints)
    assert bc.ca and bc.path_length == 0
    ku = ext(cert, x509.KeyUsage)
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    assert 3649 <= certs.days_left(cert) <= 3650
    assert stat.S_IMODE(os.stat(ca[1]).st_mode) == 0o600
    assert certs.key_matches(ca[0], ca[1])


def test_new_directories_are_private(tmp_path):
    r = certs.ensure_ca(CLUSTER, tmp_path / "pki" / "ca.crt", tmp_path / "pki" / "ca.key")
    assert r.changed
    assert stat.S_IMODE((tmp_path / "pki").stat().st_mode) == 0o700


def test_existing_ca_is_never_replaced(tmp_path, ca):
    before = ca[0].read_bytes(), ca[1].read_bytes()
    r = certs.ensure_ca(CLUSTER, *ca)
    assert not r.changed and r.reason == "unchanged"
    assert (ca[0].read_bytes(), ca[1].read_bytes()) == before
    # another cluster's CA in place: an error, not a replacement
    with pytest.raises(certs.CertError, match="another cluster"):
        certs.ensure_ca("other", *ca)
    # half a CA: an error, the remaining file is kept
    ca[1].unlink()
    with pytest.raises(certs.CertError, match="half a CA"):
        certs.ensure_ca(CLUSTER, *ca)
    assert ca[0].read_bytes() == before[0]
    r = certs.ensure_ca(CLUSTER, *ca, overwrite=True)
    assert r.changed and ca[0].read_bytes() != before[0]
    assert certs.key_matches(*ca)


def test_broker_identity_names_and_usage(tmp_path, ca):
    r = issue_broker(tmp_path, ca, names=["brk-r1-h1", "Brk.Example.org", "10.0.0.5", "[::1]"])
    assert r.changed
    cert = certs.load_cert(r.cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        f"broker-3.{CLUSTER}"
    )
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == CLUSTER
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == (
        "region1"
    )
    assert certs.identity_uri(cert) == f"urn:broker:{QUOTED}:node:3"
    san = ext(cert, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == ["brk-r1-h1", "brk.example.org"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5", "::1"]
    eku = ext(cert, x509.ExtendedKeyUsage)
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not ext(cert, x509.BasicConstraints).ca
    assert cert.signature_hash_algorithm.name == "sha256"
    assert cert.public_key().curve.name == "secp256r1"
    assert 364 <= certs.days_left(cert) <= 365
    assert certs.signed_by(cert, certs.load_cert(ca[0]))
    assert certs.key_matches(r.cert, r.key)
    assert stat.S_IMODE(os.stat(r.key).st_mode) == 0o600
    # serials are random
    other = issue_broker(tmp_path, ca, node_id=5)
    assert certs.load_cert(other.cert).serial_number != cert.serial_number


def test_client_identity(tmp_path, ca):
    r = certs.ensure_client(CLUSTER, "ops", *ca, tmp_path / "ops.crt", tmp_path / "ops.key")
    cert = certs.load_cert(r.cert)
    assert cert.subject.rfc4514_string() == "CN=ops"
    assert certs.identity_uri(cert) == f"urn:broker:{QUOTED}:client:ops"
    assert list(ext(cert, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(certs.CertError, match="client name"):
        certs.ensure_client(CLUSTER, "a:b", *ca, tmp_path / "x.crt", tmp_path / "x.key")


def test_issuing_is_idempotent_and_reissues_on_every_difference(tmp_path, ca):
    first = issue_broker(tmp_path, ca)
    pem = Path(first.cert).read_bytes()
    again = issue_broker(tmp_path, ca, names=["::1", "127.0.0.1", "BRK-R1-H1"])  # same set
    assert not again.changed and again.reason == "unchanged"
    assert Path(first.cert).read_bytes() == pem

    # check mode reports the change without writing
    plan = issue_broker(tmp_path, ca, names=["brk-r1-h1"], check=True)
    assert plan.changed and "names differ" in plan.reason
    assert Path(first.cert).read_bytes() == pem

    assert "names differ" in issue_broker(tmp_path, ca, names=["brk-r1-h1"]).reason
    assert issue_broker(tmp_path, ca, names=["brk-r1-h1"], renew=True).reason == (
        "renewal asked for"
    )
    # renewal window: a cert with 365 days left is renewed when asked for 400 days' margin
    r = issue_broker(tmp_path, ca, names=["brk-r1-h1"], renew_before_days=400)
    assert r.changed and "days left" in r.reason
    # a key that is not the cert's
    key = Path(r.key)
    key.write_bytes(Path(ca[1]).read_bytes())
    r = issue_broker(tmp_path, ca, names=["brk-r1-h1"])
    assert r.changed and "is not the key of" in r.reason
    assert certs.key_matches(r.cert, r.key)
    # a new CA: every certificate of the old one is reissued
    new_ca = tmp_path / "new-ca.crt", tmp_path / "new-ca.key"
    certs.ensure_ca(CLUSTER, *new_ca)
    r = issue_broker(tmp_path, new_ca, names=["brk-r1-h1"])
    assert r.changed and r.reason == "signed by another CA"
    assert certs.signed_by(certs.load_cert(r.cert), certs.load_cert(new_ca[0]))
    # a garbage certificate in place is replaced, not an error
    Path(r.cert).write_text("garbage")
    assert issue_broker(tmp_path, new_ca, names=["brk-r1-h1"]).reason.startswith("unusable")


def test_short_validity_and_not_after(tmp_path, ca):
    r = issue_broker(tmp_path, ca, days=2, renew_before_days=1)
    na = certs.not_after(r.cert)
    assert abs(na - (dt.datetime.now(dt.UTC) + dt.timedelta(days=2))) < dt.timedelta(minutes=1)
    assert not issue_broker(tmp_path, ca, days=2, renew_before_days=1).changed
    assert issue_broker(tmp_path, ca, days=2, renew_before_days=3).changed


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"node_id": "x"}, "not an integer"),
        ({"node_id": -1}, "non-negative"),
        ({"names": ["bad name"]}, "neither an IP address nor a DNS name"),
        ({"names": [""]}, "empty name"),
        ({"days": 0}, "at least 1"),
    ],
)
def test_bad_input_is_refused_and_writes_nothing(tmp_path, ca, kwargs, match):
    with pytest.raises(certs.CertError, match=match):
        issue_broker(tmp_path, ca, **kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.crt", "ca.key"]


def test_ca_key_must_match_ca(tmp_path, ca):
    other = tmp_path / "o.crt", tmp_path / "o.key"
    certs.ensure_ca("other", *other)
    with pytest.raises(certs.CertError, match="is not the private key of"):
        issue_broker(tmp_path, (ca[0], other[1]))
    leaf = issue_broker(tmp_path, ca)
    with pytest.raises(certs.CertError, match="not a CA certificate"):
        issue_broker(tmp_path, (leaf.cert, leaf.key), node_id=4)


def run_cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "broker.certs", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )


def test_cli(tmp_path):
    ca = ["--ca-cert", "ca.crt", "--ca-key", "ca.key"]
    out = run_cli("ca", "--cluster", "c1", "--cert", "ca.crt", "--key", "ca.key", cwd=tmp_path)
    assert out.returncode == 0 and "issued" in out.stdout, out
    out = run_cli("ca", "--cluster", "c1", "--cert", "ca.crt", "--key", "ca.key", cwd=tmp_path)
    assert out.returncode == 0 and "unchanged" in out.stdout, out
    broker = ["broker", "--cluster", "c1", "--node-id", "2", "--region", "region0", *ca]
    broker += ["--name", "h1", "--name", "127.0.0.1", "--cert", "b.crt", "--key", "b.key"]
    out = run_cli(*broker, cwd=tmp_path)
    assert out.returncode == 0 and "issued" in out.stdout, out
    out = run_cli(*broker, cwd=tmp_path)
    assert out.returncode == 0 and "unchanged" in out.stdout, out
    out = run_cli(*broker, "--renew", cwd=tmp_path)
    assert out.returncode == 0 and "issued" in out.stdout and "renewal" in out.stdout, out
    client = ["client", "--cluster", "c1", "--name", "ops", *ca]
    client += ["--cert", "c.crt", "--key", "c.key"]
    assert run_cli(*client, cwd=tmp_path).returncode == 0

    out = run_cli("show", "b.crt", cwd=tmp_path)
    assert out.returncode == 0, out
    assert "OU=region0,O=c1,CN=broker-2.c1" in out.stdout
    assert "urn:broker:c1:node:2, h1, 127.0.0.1" in out.stdout
    assert "days left: 364" in out.stdout or "days left: 365" in out.stdout
    assert "not after: " in out.stdout

    assert "ca,broker,client,show" in run_cli("--help", cwd=tmp_path).stdout
    for bad in (
        ["show", "missing.crt"],
        ["show", "b.key"],
        [*broker[:-4], "--cert", "x.crt", "--key", "x.key", "--node-id", "abc"],
        ["broker", "--cluster", "c1"],  # missing options
        [*client[:5], "--ca-cert", "b.crt", "--ca-key", "b.key", "--cert", "y", "--key", "z"],
        ["nope"],
    ):
        out = run_cli(*bad, cwd=tmp_path)
        assert out.returncode == 2, (bad, out)
        assert "Traceback" not in out.stderr and "error" in out.stderr, (bad, out.stderr)


def _contexts(tmp_path):
    ca = tmp_path / "ca.crt", tmp_path / "ca.key"
    certs.ensure_ca(CLUSTER, *ca)
    server = issue_broker(tmp_path, ca, node_id=1, names=["localhost", "127.0.0.1"])
    client = issue_broker(tmp_path, ca, node_id=2, names=["127.0.0.2"])
    srv = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    srv.load_cert_chain(server.cert, server.key)
    srv.load_verify_locations(cafile=str(ca[0]))
    srv.verify_mode = ssl.CERT_REQUIRED
    cli = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca[0]))
    cli.load_cert_chain(client.cert, client.key)
    return srv, cli


def test_mutual_tls_handshake_on_loopback_exposes_the_uri(tmp_path):
    srv_ctx, cli_ctx = _contexts(tmp_path)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]
    seen: dict = {}

    def serve():
        try:
            conn, _ = listener.accept()
            with srv_ctx.wrap_socket(conn, server_side=True) as tls:
                seen["client"] = tls.getpeercert()
                tls.sendall(b"ok")
        except Exception as e:  # reported by the assertion below
            seen["error"] = e

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        with cli_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            server_cert = tls.getpeercert()
            assert tls.recv(2) == b"ok"
        t.join(10)
    finally:
        listener.close()
    assert "error" not in seen, seen
    assert ("URI", f"urn:broker:{QUOTED}:node:1") in server_cert["subjectAltName"]
    assert ("IP Address", "127.0.0.1") in server_cert["subjectAltName"]
    assert ("URI", f"urn:broker:{QUOTED}:node:2") in seen["client"]["subjectAltName"]


def test_handshake_fails_without_a_client_certificate_or_with_another_ca(tmp_path):
    srv_ctx, _ = _contexts(tmp_path)
    # a client trusting another CA refuses the server's certificate
    other = tmp_path / "other"
    other.mkdir()
    certs.ensure_ca(CLUSTER, other / "ca.crt", other / "ca.key")
    stranger = ssl.create_default_context(cafile=str(other / "ca.crt"))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]

    def serve():
        try:
            conn, _ = listener.accept()
            with srv_ctx.wrap_socket(conn, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        with raw, pytest.raises(ssl.SSLCertVerificationError):
            stranger.wrap_socket(raw, server_hostname="127.0.0.1")
        t.join(10)
    finally:
        listener.close()
