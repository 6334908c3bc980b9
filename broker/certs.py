"""The cluster's certificates: a cluster CA, broker certificates, client certificates.

Identity format (broker/tls.py checks exactly this):

- keys are EC P-256, certificates are signed with SHA-256;
- the cluster CA is self-signed, CN "<cluster> cluster CA", a CA with
  path length 0 (keyCertSign, cRLSign), 10 years by default;
- a broker's certificate: CN "broker-<node id>.<cluster>", O "<cluster>",
  OU "<region>"; subject alternative names: the URI
  ``urn:broker:<quoted cluster>:node:<node id>`` plus every DNS name and IP
  address the broker is reached by; extended key usage serverAuth and
  clientAuth; 1 year by default, random serial;
- a client's certificate (brokerctl, ops tooling, tests): CN "<name>", the URI
  ``urn:broker:<quoted cluster>:client:<name>``, extended key usage clientAuth.

Issuing is idempotent: when the certificate in place was signed by the given
CA, names the same identity and the same DNS names and addresses, matches its
key and has more than ``renew_before_days`` left, nothing is written
("unchanged") unless a renewal is asked for. Keys are written 0600, atomically
(a crash leaves the old pair or a mismatched pair, which the next run replaces).

Command line (``python -m broker.certs --help``)::

    python -m broker.certs ca --cluster NAME --cert ca.crt --key ca.key
    python -m broker.certs broker --cluster NAME --node-id 3 --region region1 \\
        --name brk-r1-h1 --name 10.0.0.5 --ca-cert ca.crt --ca-key ca.key \\
        --cert broker.crt --key broker.key
    python -m broker.certs client --cluster NAME --name ops --ca-cert ... --cert ... --key ...
    python -m broker.certs show broker.crt
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker.fsutil import atomic_write, make_private_dirs
from broker.tls import URN_PREFIX
from broker.tls import identity_uri as identity_uri_of

CA_DAYS = 3650
CERT_DAYS = 365
RENEW_BEFORE_DAYS = 30
# Backdate notBefore a little: clocks of the hosts are never exactly the controller's.
BACKDATE = dt.timedelta(minutes=5)


class CertError(Exception):
    """Bad input or an unusable file; the message says which and why."""


@dataclass(frozen=True)
class Result:
    """What an ensure/issue call did (or, in check mode, would do)."""

    changed: bool
    reason: str  # why it was (or would be) issued, or "unchanged"
    cert: str
    key: str
    info: dict = field(default_factory=dict)  # describe() of the certificate in place


# --- identities -------------------------------------------------------------


def node_uri(cluster: str, node_id: int | str) -> str:
    return identity_uri_of(cluster, "node", int(node_id))


def client_uri(cluster: str, name: str) -> str:
    return identity_uri_of(cluster, "client", name)


def split_names(names: list[str] | tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) from a list of host names and addresses, deduplicated."""
    dns: list[str] = []
    ips: list[str] = []
    for raw in names:
        name = str(raw).strip()
        if not name:
            raise CertError(f"empty name in {list(names)!r}")
        if name.startswith("[") and name.endswith("]"):
            name = name[1:-1]
        try:
            ip = str(ipaddress.ip_address(name))
        except ValueError:
            if not _dns_name_ok(name):
                raise CertError(f"{name!r} is neither an IP address nor a DNS name") from None
            if name.lower() not in dns:
                dns.append(name.lower())
        else:
            if ip not in ips:
                ips.append(ip)
    return dns, ips


def _dns_name_ok(name: str) -> bool:
    if any(c.isspace() or c in "/:@" for c in name):
        return False
    try:
        name.encode("idna")
    except UnicodeError:
        return False
    return True


def _check_cluster(cluster: str) -> None:
    if not cluster or not cluster.strip():
        raise CertError("the cluster name is empty")


def _check_client_name(name: str) -> None:
    if not name or not name.strip() or any(c in name for c in ":/ \t\n"):
        raise CertError(f"client name {name!r}: must be non-empty, without ':', '/' or spaces")


def _node_id(node_id) -> int:
    try:
        value = int(node_id)
    except (TypeError, ValueError):
        raise CertError(f"node id {node_id!r} is not an integer") from None
    if value < 0 or str(node_id).strip() != str(value):
        raise CertError(f"node id {node_id!r}: expected a non-negative integer")
    return value


# --- files ------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    make_private_dirs(path.parent)  # a new PKI directory is private
    atomic_write(path, data, mode)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_cert(path: str | os.PathLike) -> x509.Certificate:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CertError(f"cannot read certificate {path}: {e.strerror or e}") from None
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise CertError(f"{path} is not a PEM certificate") from None


def load_certs(path: str | os.PathLike) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle (a CA bundle: old + new CA)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CertError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CertError(f"{path} holds no PEM certificate") from None


def load_key(path: str | os.PathLike) -> ec.EllipticCurvePrivateKey:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CertError(f"cannot read private key {path}: {e.strerror or e}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise CertError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{path} is not an EC private key")
    return key


# --- reading ----------------------------------------------------------------


def not_after(cert: x509.Certificate | str | os.PathLike) -> dt.datetime:
    cert = cert if isinstance(cert, x509.Certificate) else load_cert(cert)
    return cert.not_valid_after_utc


def days_left(cert: x509.Certificate | str | os.PathLike, now: dt.datetime | None = None) -> float:
    now = now or dt.datetime.now(dt.UTC)
    return (not_after(cert) - now).total_seconds() / 86400


def _san(cert: x509.Certificate) -> x509.SubjectAlternativeName | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None


def identity_uri(cert: x509.Certificate | str | os.PathLike) -> str | None:
    """The certificate's ``urn:broker:...`` URI subject alternative name, if any."""
    cert = cert if isinstance(cert, x509.Certificate) else load_cert(cert)
    san = _san(cert)
    if san is None:
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(URN_PREFIX):
            return uri
    return None


def cert_names(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) of the certificate's subject alternative names."""
    san = _san(cert)
    if san is None:
        return [], []
    dns = [n.lower() for n in san.get_values_for_type(x509.DNSName)]
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return dns, ips


def key_matches(
    cert: x509.Certificate | str | os.PathLike, key: ec.EllipticCurvePrivateKey | str | os.PathLike
) -> bool:
    cert = cert if isinstance(cert, x509.Certificate) else load_cert(cert)
    key = key if isinstance(key, ec.EllipticCurvePrivateKey) else load_key(key)
    der = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    return cert.public_key().public_bytes(enc, der) == key.public_key().public_bytes(enc, der)


def signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    if cert.issuer != ca.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def describe(cert: x509.Certificate | str | os.PathLike) -> dict:
    """Subject, issuer, SANs, validity and identity of a certificate, JSON-friendly."""
    cert = cert if isinstance(cert, x509.Certificate) else load_cert(cert)
    dns, ips = cert_names(cert)
    san = _san(cert)
    uris = list(san.get_values_for_type(x509.UniformResourceIdentifier)) if san else []
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = bc.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "ca": is_ca,
        "uris": uris,
        "identity": identity_uri(cert),
        "dns_names": dns,
        "ip_addresses": ips,
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "days_left": int(days_left(cert) // 1),
        "sha256": cert.fingerprint(hashes.SHA256()).hex(":"),
    }


# --- building ---------------------------------------------------------------


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _serial() -> int:
    return secrets.randbits(159) | 1  # positive, at most 20 octets, never 0


def _validity(builder: x509.CertificateBuilder, days: int) -> x509.CertificateBuilder:
    if int(days) < 1:
        raise CertError(f"validity of {days} days: expected at least 1")
    now = dt.datetime.now(dt.UTC)
    return builder.not_valid_before(now - BACKDATE).not_valid_after(now + dt.timedelta(days=days))


def build_ca(
    cluster: str, days: int = CA_DAYS
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    _check_cluster(cluster)
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{cluster} cluster CA")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_serial())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
    )
    cert = _validity(builder, days).sign(key, hashes.SHA256())
    return cert, key


def _leaf(
    subject: x509.Name,
    uri: str,
    dns: list[str],
    ips: list[str],
    eku: list,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    days: int,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    general: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    general += [x509.DNSName(n) for n in dns]
    general += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(_serial())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        # the URI names the holder; the subject is informative, hence not critical
        .add_extension(x509.SubjectAlternativeName(general), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    cert = _validity(builder, days).sign(ca_key, hashes.SHA256())
    return cert, key


def broker_subject(cluster: str, node_id: int, region: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"broker-{node_id}.{cluster}"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, region),
        ]
    )


def client_subject(name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


# --- ensure (idempotent) ----------------------------------------------------


def _load_ca_pair(ca_cert: str | os.PathLike, ca_key: str | os.PathLike):
    cert = load_cert(ca_cert)
    key = load_key(ca_key)
    if not key_matches(cert, key):
        raise CertError(f"{ca_key} is not the private key of {ca_cert}")
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise CertError(f"{ca_cert} is not a CA certificate")
    if days_left(cert) <= 0:
        raise CertError(f"the CA {ca_cert} expired on {not_after(cert).isoformat()}")
    return cert, key


def _why_reissue(
    cert_path: Path,
    key_path: Path,
    ca: x509.Certificate,
    subject: x509.Name,
    uri: str,
    dns: list[str],
    ips: list[str],
    renew_before_days: float,
) -> tuple[str | None, dict]:
    """None when the pair in place is fine, else the reason to issue a new one."""
    if not cert_path.exists():
        return f"{cert_path} does not exist", {}
    if not key_path.exists():
        return f"{key_path} does not exist", {}
    try:
        cert = load_cert(cert_path)
        key = load_key(key_path)
    except CertError as e:
        return f"unusable: {e}", {}
    info = describe(cert)
    if not key_matches(cert, key):
        return f"{key_path} is not the key of {cert_path}", info
    if not signed_by(cert, ca):
        return "signed by another CA", info
    if cert.subject != subject:
        return f"subject {cert.subject.rfc4514_string()} differs", info
    if identity_uri(cert) != uri:
        return f"identity {identity_uri(cert)} differs from {uri}", info
    have_dns, have_ips = cert_names(cert)
    if sorted(have_dns) != sorted(dns) or sorted(have_ips) != sorted(ips):
        return "names differ: has " + ", ".join(have_dns + have_ips), info
    left = days_left(cert)
    if left <= renew_before_days:
        return f"{left:.0f} days left (renewal at {renew_before_days:g} or fewer)", info
    return None, info


def _ensure_leaf(
    *,
    cert: str | os.PathLike,
    key: str | os.PathLike,
    ca_cert: str | os.PathLike,
    ca_key: str | os.PathLike,
    subject: x509.Name,
    uri: str,
    dns: list[str],
    ips: list[str],
    eku: list,
    days: int,
    renew_before_days: float,
    renew: bool,
    check: bool,
) -> Result:
    cert_path, key_path = Path(cert), Path(key)
    if cert_path.resolve() == key_path.resolve():
        raise CertError("the certificate and the key must be two different files")
    ca, signer = _load_ca_pair(ca_cert, ca_key)
    if int(days) < 1:
        raise CertError(f"validity of {days} days: expected at least 1")
    reason, info = _why_reissue(cert_path, key_path, ca, subject, uri, dns, ips, renew_before_days)
    if reason is None and renew:
        reason = "renewal asked for"
    if reason is None:
        return Result(False, "unchanged", str(cert_path), str(key_path), info)
    if check:
        return Result(True, reason, str(cert_path), str(key_path), info)
    new_cert, new_key = _leaf(subject, uri, dns, ips, eku, ca, signer, days)
    _write_atomic(key_path, _key_pem(new_key), 0o600)
    _write_atomic(cert_path, new_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return Result(True, reason, str(cert_path), str(key_path), describe(new_cert))


def ensure_ca(
    cluster: str,
    cert: str | os.PathLike,
    key: str | os.PathLike,
    days: int = CA_DAYS,
    overwrite: bool = False,
    check: bool = False,
) -> Result:
    """Create the cluster CA unless it exists; an existing CA is never replaced
    unless ``overwrite`` (a half-present or foreign CA is an error, not replaced)."""
    _check_cluster(cluster)
    cert_path, key_path = Path(cert), Path(key)
    if cert_path.resolve() == key_path.resolve():
        raise CertError("the certificate and the key must be two different files")
    present = [p for p in (cert_path, key_path) if p.exists()]
    if present and not overwrite:
        if len(present) == 1:
            raise CertError(
                f"{present[0]} exists but {({cert_path, key_path} - set(present)).pop()} does not;"
                " refusing to replace half a CA (restore the missing file, or pass --force)"
            )
        ca, _ = _load_ca_pair(cert_path, key_path)
        expected = f"{cluster} cluster CA"
        cn = [a.value for a in ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if cn != [expected]:
            raise CertError(
                f"{cert_path} is the CA {ca.subject.rfc4514_string()}, not CN={expected}"
                " (another cluster's CA?); pass --force to replace it"
            )
        return Result(False, "unchanged", str(cert_path), str(key_path), describe(ca))
    reason = "replacing the CA (overwrite)" if present else f"{cert_path} does not exist"
    if check:
        return Result(True, reason, str(cert_path), str(key_path), {})
    ca, ca_key = build_ca(cluster, days)
    _write_atomic(key_path, _key_pem(ca_key), 0o600)
    _write_atomic(cert_path, ca.public_bytes(serialization.Encoding.PEM), 0o644)
    return Result(True, reason, str(cert_path), str(key_path), describe(ca))


def ensure_broker(
    cluster: str,
    node_id: int,
    region: str,
    names: list[str],
    ca_cert: str | os.PathLike,
    ca_key: str | os.PathLike,
    cert: str | os.PathLike,
    key: str | os.PathLike,
    days: int = CERT_DAYS,
    renew_before_days: float = RENEW_BEFORE_DAYS,
    renew: bool = False,
    check: bool = False,
) -> Result:
    """Issue broker ``node_id``'s certificate and key unless a valid one is in place."""
    _check_cluster(cluster)
    node = _node_id(node_id)
    if not region or not str(region).strip():
        raise CertError("the region is empty")
    dns, ips = split_names(list(names))
    return _ensure_leaf(
        cert=cert,
        key=key,
        ca_cert=ca_cert,
        ca_key=ca_key,
        subject=broker_subject(cluster, node, str(region)),
        uri=node_uri(cluster, node),
        dns=dns,
        ips=ips,
        eku=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        days=days,
        renew_before_days=renew_before_days,
        renew=renew,
        check=check,
    )


def ensure_client(
    cluster: str,
    name: str,
    ca_cert: str | os.PathLike,
    ca_key: str | os.PathLike,
    cert: str | os.PathLike,
    key: str | os.PathLike,
    days: int = CERT_DAYS,
    renew_before_days: float = RENEW_BEFORE_DAYS,
    renew: bool = False,
    check: bool = False,
) -> Result:
    """Issue client ``name``'s certificate and key unless a valid one is in place."""
    _check_cluster(cluster)
    _check_client_name(name)
    return _ensure_leaf(
        cert=cert,
        key=key,
        ca_cert=ca_cert,
        ca_key=ca_key,
        subject=client_subject(name),
        uri=client_uri(cluster, name),
        dns=[],
        ips=[],
        eku=[ExtendedKeyUsageOID.CLIENT_AUTH],
        days=days,
        renew_before_days=renew_before_days,
        renew=renew,
        check=check,
    )


# --- command line -----------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # exit 2 with one line, like every broker command
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m broker.certs",
        description=(
            "Create the cluster CA and issue broker and client certificates (EC P-256, "
            "SHA-256). Issuing is idempotent: a valid certificate with the same identity "
            "and names and more than --renew-before days left is kept ('unchanged')."
        ),
        epilog="Exit status: 0 done or unchanged, 2 bad input or unusable file.",
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ca = sub.add_parser("ca", help="create the cluster CA (never replaces one without --force)")
    ca.add_argument("--cluster", required=True, help="cluster name (cluster.clusterName)")
    ca.add_argument("--cert", required=True, help="CA certificate file to write")
    ca.add_argument("--key", required=True, help="CA private key file to write (mode 0600)")
    ca.add_argument("--days", type=int, default=CA_DAYS, help=f"validity (default {CA_DAYS})")
    ca.add_argument("--force", action="store_true", help="replace an existing CA")

    def leaf(cmd, help_, days_help):
        s = sub.add_parser(cmd, help=help_)
        s.add_argument("--cluster", required=True, help="cluster name (cluster.clusterName)")
        s.add_argument("--ca-cert", required=True, help="the cluster CA certificate")
        s.add_argument("--ca-key", required=True, help="the cluster CA private key")
        s.add_argument("--cert", required=True, help="certificate file to write")
        s.add_argument("--key", required=True, help="private key file to write (mode 0600)")
        s.add_argument("--days", type=int, default=CERT_DAYS, help=days_help)
        s.add_argument(
            "--renew-before",
            type=float,
            default=RENEW_BEFORE_DAYS,
            metavar="DAYS",
            help=f"reissue when at most DAYS are left (default {RENEW_BEFORE_DAYS})",
        )
        s.add_argument("--renew", action="store_true", help="issue a new one even if valid")
        return s

    b = leaf("broker", "issue a broker's certificate", f"validity (default {CERT_DAYS})")
    b.add_argument("--node-id", required=True, help="the broker's node id (cluster.nodeId)")
    b.add_argument("--region", required=True, help="the broker's region (cluster.region)")
    b.add_argument(
        "--name",
        dest="names",
        action="append",
        default=[],
        metavar="HOST_OR_IP",
        help="a DNS name or IP address the broker is reached by (repeat)",
    )

    c = leaf("client", "issue a client's certificate", f"validity (default {CERT_DAYS})")
    c.add_argument("--name", required=True, help="the client's name (CN and identity URI)")

    s = sub.add_parser("show", help="print a certificate's subject, SANs, not-after, days left")
    s.add_argument("cert", help="a PEM certificate file")
    s.add_argument("--json", action="store_true", help="one JSON object")
    return p


def _print_result(what: str, result: Result) -> None:
    if result.changed:
        info = result.info
        print(f"{what}: issued {result.cert} ({result.reason})")
        if info:
            print(f"  {info['subject']}, until {info['not_after']}")
    else:
        print(f"{what}: unchanged {result.cert}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "ca":
            r = ensure_ca(args.cluster, args.cert, args.key, args.days, overwrite=args.force)
            _print_result("ca", r)
        elif args.command == "broker":
            r = ensure_broker(
                args.cluster,
                args.node_id,
                args.region,
                args.names,
                args.ca_cert,
                args.ca_key,
                args.cert,
                args.key,
                days=args.days,
                renew_before_days=args.renew_before,
                renew=args.renew,
            )
            _print_result("broker", r)
        elif args.command == "client":
            r = ensure_client(
                args.cluster,
                args.name,
                args.ca_cert,
                args.ca_key,
                args.cert,
                args.key,
                days=args.days,
                renew_before_days=args.renew_before,
                renew=args.renew,
            )
            _print_result("client", r)
        else:
            info = describe(args.cert)
            if args.json:
                print(json.dumps(info, indent=2))
            else:
                sans = [*info["uris"], *info["dns_names"], *info["ip_addresses"]]
                print(f"subject:   {info['subject']}")
                print(f"issuer:    {info['issuer']}")
                print(f"SANs:      {', '.join(sans) or '-'}")
                print(f"not after: {info['not_after']}")
                print(f"days left: {info['days_left']}")
    except CertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
