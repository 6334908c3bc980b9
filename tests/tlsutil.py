"""Certificates for tests, issued with broker.certs the way the role issues them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from broker import certs


@dataclass(frozen=True)
class Pair:
    cert: str
    key: str


@dataclass
class ClusterCA:
    """A cluster CA in ``directory``, issuing broker and client certificates."""

    directory: Path
    cluster: str

    def __post_init__(self):
        self.directory.mkdir(parents=True, exist_ok=True)
        self.cert = str(self.directory / "ca.pem")
        self.key = str(self.directory / "ca.key")
        certs.ensure_ca(self.cluster, self.cert, self.key)

    def broker(self, node_id: int, names=("127.0.0.1", "localhost"), region="region0") -> Pair:
        cert = self.directory / f"broker-{node_id}.pem"
        key = self.directory / f"broker-{node_id}.key"
        certs.ensure_broker(
            self.cluster, node_id, region, list(names), self.cert, self.key, cert, key
        )
        return Pair(str(cert), str(key))

    def client(self, name: str = "tester") -> Pair:
        cert = self.directory / f"client-{name}.pem"
        key = self.directory / f"client-{name}.key"
        certs.ensure_client(self.cluster, name, self.cert, self.key, cert, key)
        return Pair(str(cert), str(key))

    def tls_config(self, node_id: int, client_auth: str = "none") -> dict:
        """The ``security.tls`` section of broker ``node_id``'s configuration."""
        pair = self.broker(node_id)
        return {
            "enabled": True,
            "certificate": pair.cert,
            "privateKey": pair.key,
            "ca": self.cert,
            "clientAuth": client_auth,
        }
