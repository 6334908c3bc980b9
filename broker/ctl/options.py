"""brokerctl's connection options and the argument types its commands share."""

from __future__ import annotations

import argparse
import os
import ssl
import urllib.parse

from broker.client import DEFAULT_ADDRESS, DEFAULT_CLUSTER, parse_addresses
from broker.tls import TlsSetupError, client_context
from broker.wire import MAX_APPEND_RECORDS

DEFAULT_MANAGEMENT = "http://127.0.0.1:9600"


def positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def records_per_request(text: str) -> int:
    value = count(text)
    if value > MAX_APPEND_RECORDS:
        raise argparse.ArgumentTypeError(f"at most {MAX_APPEND_RECORDS} records per request")
    return value


def _addresses(text: str) -> str:
    try:
        parse_addresses(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def parse_management_urls(text: str) -> list[str]:
    """``URL[,URL...]`` as base URLs; ``HOST:PORT`` means ``http://HOST:PORT``."""
    urls = []
    for part in text.split(","):
        part = part.strip().rstrip("/")
        if not part:
            continue
        if "://" not in part:
            part = "http://" + part
        split = urllib.parse.urlsplit(part)
        if split.scheme not in ("http", "https") or not split.hostname:
            raise ValueError(f"not an http(s) URL: {part!r}")
        try:
            _ = split.port  # raises ValueError for a bad port
        except ValueError:
            raise ValueError(f"bad port in {part!r}") from None
        urls.append(part)
    if not urls:
        raise ValueError("no management URL given")
    return urls


def _management_urls(text: str) -> str:
    try:
        parse_management_urls(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def broker_id(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"not a broker id: {text!r}")
    return int(text)


def broker_ids(text: str) -> list[int]:
    """``0,1,2,3`` as a list of broker ids."""
    ids = [broker_id(part.strip()) for part in text.split(",") if part.strip()]
    if not ids:
        raise argparse.ArgumentTypeError("expected broker ids like 0,1,2,3")
    return ids


def tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The client's TLS context from --tls-ca/--tls-cert/--tls-key, or None (plaintext
    gateway; https:// management URLs then trust the system's CAs)."""
    ca, cert, key = args.tls_ca, args.tls_cert, args.tls_key
    if not (ca or cert or key):
        return None
    if bool(cert) != bool(key):
        raise TlsSetupError("--tls-cert", "--tls-cert and --tls-key go together")
    return client_context(ca, cert, key)


def connection_options(parser: argparse.ArgumentParser, default) -> None:
    """--address, --cluster-name, --timeout, --management, --management-token and the
    --tls-* files; with ``default`` (argparse.SUPPRESS) for the copies accepted after
    the command."""

    def pick(value):
        return value if default is None else default

    parser.add_argument(
        "--address",
        type=_addresses,
        default=pick(os.environ.get("BROKER_ADDRESS", DEFAULT_ADDRESS)),
        metavar="HOST:PORT[,HOST:PORT]",
        help="gateway(s) to talk to, tried in turn on connection failure "
        f"(default: $BROKER_ADDRESS or {DEFAULT_ADDRESS})",
    )
    parser.add_argument(
        "--cluster-name",
        default=pick(DEFAULT_CLUSTER),
        metavar="NAME",
        help=f"must match the brokers' cluster.clusterName (default: {DEFAULT_CLUSTER})",
    )
    parser.add_argument(
        "--timeout",
        type=positive,
        default=pick(15.0),
        metavar="S",
        help="request deadline in seconds (default: 15)",
    )
    parser.add_argument(
        "--management",
        type=_management_urls,
        default=pick(os.environ.get("BROKER_MANAGEMENT", DEFAULT_MANAGEMENT)),
        metavar="URL[,URL]",
        help="management API of one or more brokers; the first that answers is used "
        f"(default: $BROKER_MANAGEMENT or {DEFAULT_MANAGEMENT})",
    )
    parser.add_argument(
        "--management-token",
        default=pick(os.environ.get("BROKER_MANAGEMENT_TOKEN")),
        metavar="TOKEN",
        help="bearer token for the management API, when the brokers set management.token "
        "(default: $BROKER_MANAGEMENT_TOKEN)",
    )
    parser.add_argument(
        "--tls-ca",
        default=pick(os.environ.get("BROKER_TLS_CA")),
        metavar="FILE",
        help="the cluster CA (PEM) to trust; given, the gateway is spoken to over TLS "
        "(default: $BROKER_TLS_CA)",
    )
    parser.add_argument(
        "--tls-cert",
        default=pick(os.environ.get("BROKER_TLS_CERT")),
        metavar="FILE",
        help="client certificate (PEM), for brokers with security.tls.clientAuth "
        "optional or required (default: $BROKER_TLS_CERT)",
    )
    parser.add_argument(
        "--tls-key",
        default=pick(os.environ.get("BROKER_TLS_KEY")),
        metavar="FILE",
        help="the client certificate's private key (default: $BROKER_TLS_KEY)",
    )
