"""TLS for the broker's three channels, and who a certificate says its holder is.

A broker's certificate is signed by the cluster CA and names the broker in a
URI subject alternative name, ``urn:broker:<cluster>:node:<id>`` (the cluster
name percent-quoted); tools and clients get ``urn:broker:<cluster>:client:<name>``
(see broker/certs.py, which issues both). The internal port requires such a
certificate from every connection and accepts a peer's HELLO only when the
node id it claims is the one its certificate names, so Raft and gossip
messages come from the node they say they come from. The gateway and the
management API ask clients for a certificate as ``security.tls.clientAuth``
says, and prove their own name to clients by the usual host name check.
"""

from __future__ import annotations

import dataclasses
import ssl
from typing import Any
from urllib.parse import quote, unquote

URN_PREFIX = "urn:broker:"
CLIENT_AUTH = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}


class TlsSetupError(ValueError):
    """A TLS setting that cannot be honoured; ``key`` names the setting."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


@dataclasses.dataclass(frozen=True)
class Identity:
    cluster: str
    kind: str  # "node" or "client"
    name: str  # a node id for kind "node"

    @property
    def node_id(self) -> int | None:
        if self.kind != "node" or not self.name.isdigit():
            return None
        return int(self.name)

    def __str__(self) -> str:
        return identity_uri(self.cluster, self.kind, self.name)


def identity_uri(cluster: str, kind: str, name: str | int) -> str:
    return f"{URN_PREFIX}{quote(cluster, safe='')}:{kind}:{name}"


def parse_identity(uri: str) -> Identity | None:
    if not uri.startswith(URN_PREFIX):
        return None
    parts = uri[len(URN_PREFIX) :].split(":")
    if len(parts) != 3 or parts[1] not in ("node", "client") or not parts[2]:
        return None
    return Identity(unquote(parts[0]), parts[1], parts[2])


def peer_identities(peercert: dict[str, Any] | None) -> list[Identity]:
    """The broker identities named by a verified certificate (``getpeercert()``)."""
    if not peercert:
        return []
    found = []
    for kind, value in peercert.get("subjectAltName", ()):
        if kind == "URI":
            ident = parse_identity(value)
            if ident is not None:
                found.append(ident)
    return found


def certified_node(sock: ssl.SSLSocket, cluster: str) -> int | None:
    """The node id the peer's verified certificate names for ``cluster``, if any."""
    for ident in peer_identities(sock.getpeercert()):
        if ident.cluster == cluster and ident.node_id is not None:
            return ident.node_id
    return None


def _base(purpose: ssl.Purpose) -> ssl.SSLContext:
    ctx = ssl.create_default_context(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _readable(path: str, key: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise TlsSetupError(key, f"cannot read {path}: no such file") from None
    except IsADirectoryError:
        raise TlsSetupError(key, f"cannot read {path}: a directory, not a PEM file") from None
    except PermissionError:
        raise TlsSetupError(key, f"cannot read {path}: permission denied") from None


def _load_chain(
    ctx: ssl.SSLContext, certificate: str, private_key: str, names: dict[str, str]
) -> None:
    _readable(certificate, names["certificate"])
    _readable(private_key, names["privateKey"])
    try:
        ctx.load_cert_chain(certificate, private_key)
    except ssl.SSLError as e:
        raise TlsSetupError(
            names["privateKey"],
            f"{private_key} is not the private key of {certificate}, or either is not PEM "
            f"({e.reason or e})",
        ) from None


def _load_ca(ctx: ssl.SSLContext, ca: str, names: dict[str, str]) -> None:
    _readable(ca, names["ca"])
    try:
        ctx.load_verify_locations(cafile=ca)
    except ssl.SSLError as e:
        reason = e.reason or e
        raise TlsSetupError(names["ca"], f"{ca} holds no PEM certificate ({reason})") from None


@dataclasses.dataclass(frozen=True)
class BrokerTls:
    """The contexts a broker serves and dials with."""

    gateway: ssl.SSLContext  # server side, clients verified per clientAuth
    internal_server: ssl.SSLContext  # mutual TLS: peers must present a cluster cert
    internal_client: ssl.SSLContext  # dialing peers, presenting our own cert
    management: ssl.SSLContext  # HTTPS, clients verified per clientAuth


def broker_contexts(
    certificate: str,
    private_key: str,
    ca: str,
    client_auth: str = "none",
    where: str = "security.tls",
) -> BrokerTls:
    """Build every context a broker needs; TlsSetupError names the bad key."""
    names = {k: f"{where}.{k}" for k in ("certificate", "privateKey", "ca")}
    if client_auth not in CLIENT_AUTH:
        raise TlsSetupError(f"{where}.clientAuth", f"expected one of {', '.join(CLIENT_AUTH)}")

    def server(verify: int) -> ssl.SSLContext:
        ctx = _base(ssl.Purpose.CLIENT_AUTH)
        _load_chain(ctx, certificate, private_key, names)
        _load_ca(ctx, ca, names)
        ctx.verify_mode = verify
        return ctx

    internal_client = _base(ssl.Purpose.SERVER_AUTH)
    # Peers are dialed by address and authenticated by the node id their
    # certificate names (checked after the handshake), not by host name.
    internal_client.check_hostname = False
    _load_chain(internal_client, certificate, private_key, names)
    _load_ca(internal_client, ca, names)
    internal_client.verify_mode = ssl.CERT_REQUIRED
    return BrokerTls(
        gateway=server(CLIENT_AUTH[client_auth]),
        internal_server=server(ssl.CERT_REQUIRED),
        internal_client=internal_client,
        management=server(CLIENT_AUTH[client_auth]),
    )


def client_context(
    ca: str | None = None,
    certificate: str | None = None,
    private_key: str | None = None,
    *,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """A client's context: trust ``ca`` (else the system's), present a cert if given.
    TlsSetupError names brokerctl's option (``--tls-ca``, ``--tls-cert``, ``--tls-key``)."""
    names = {"ca": "--tls-ca", "certificate": "--tls-cert", "privateKey": "--tls-key"}
    ctx = _base(ssl.Purpose.SERVER_AUTH)
    if ca:
        _load_ca(ctx, ca, names)
    if certificate or private_key:
        if not (certificate and private_key):
            raise TlsSetupError("--tls-cert", "a client certificate needs both cert and key")
        _load_chain(ctx, certificate, private_key, names)
    ctx.check_hostname = check_hostname
    return ctx


def describe_failure(error: BaseException) -> str:
    """An operator's reading of a failed handshake (unknown CA, name, expiry)."""
    if isinstance(error, ssl.SSLCertVerificationError):
        code = getattr(error, "verify_code", None)
        message = getattr(error, "verify_message", "") or str(error)
        hints = {
            10: "the certificate has expired",
            9: "the certificate is not valid yet",
            18: "the certificate is self-signed and not trusted (wrong --tls-ca?)",
            19: "the certificate was signed by an unknown CA (wrong --tls-ca?)",
            20: "the certificate was signed by an unknown CA (wrong --tls-ca?)",
            62: "the host name does not match the certificate",
            64: "the IP address does not match the certificate",
        }
        return f"TLS: {hints.get(code, message)} ({message})"
    if isinstance(error, ssl.SSLError):
        reason = error.reason or str(error)
        if reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "HTTP_REQUEST"):
            return f"TLS: the other side does not speak TLS ({reason})"
        if "CERTIFICATE_REQUIRED" in reason or "PEER_DID_NOT_RETURN" in reason:
            return f"TLS: a client certificate is required ({reason})"
        if "UNKNOWN_CA" in reason or "BAD_CERTIFICATE" in reason:
            return f"TLS: the other side refused our certificate ({reason})"
        return f"TLS: {reason}"
    return str(error)
