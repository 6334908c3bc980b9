"""Real broker processes on 127.0.0.1, for the demo, integration tests and benchmarks.

Each broker gets its own ports and data directory under ``root`` and runs as
``python -m broker.cli run --config <root>/broker-<id>.yaml`` in its own
process, so it can be killed with SIGKILL and restarted on the same data.
With ``tls=True`` a cluster CA and one certificate per broker are issued under
``<root>/tls`` (broker.certs, as the role does) and every channel uses TLS;
``client()`` and the management calls then speak TLS with a client certificate.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import yaml

from broker import certs
from broker.client import BrokerClient
from broker.tls import client_context


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval=0.05):
    """Poll ``predicate`` until it returns something truthy; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class LocalCluster:
    def __init__(
        self,
        root: str,
        size: int = 3,
        partitions: int = 1,
        replication_factor: int = 3,
        regions: int = 2,
        overrides: dict | None = None,
        cluster_name: str = "dual-region",
        tls: bool = False,
        client_auth: str = "none",
        members: int | None = None,
        hosts: list[str] | None = None,
        launcher: Callable[[int, list[str]], list[str]] | None = None,
    ):
        """``members``: only brokers 0..members-1 form the cluster at first (their
        config says so); the others are configured for the full ``size``, as a scale-out
        deploys them, and join only once a topology change adds them.

        ``hosts``: the address each broker binds and advertises (default 127.0.0.1 for
        all), and ``launcher(i, argv)``: the command line that runs ``argv`` for broker
        ``i`` (e.g. inside a lab host's namespaces; it must exec, so the pid is the
        broker's)."""
        self.root = os.path.abspath(root)
        self.hosts = list(hosts) if hosts is not None else ["127.0.0.1"] * size
        if len(self.hosts) != size:
            raise ValueError(f"{len(self.hosts)} hosts for {size} brokers")
        self.launcher = launcher
        self.size = size
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.cluster_name = cluster_name
        os.makedirs(self.root, exist_ok=True)
        ports = free_ports(3 * size)
        names = ("gateway", "internal", "management")
        self.ports = {i: dict(zip(names, ports[3 * i :], strict=False)) for i in range(size)}
        self.procs: dict[int, subprocess.Popen] = {}
        self.tls = tls
        self._ssl: ssl.SSLContext | None = None
        self._clients: list[BrokerClient] = []  # made by client(), closed by stop_all()
        if tls:
            self._issue_certificates()
        first = size if members is None else members
        for i in range(size):
            known = first if i < first else size
            contact = [f"{self.hosts[n]}:{self.ports[n]['internal']}" for n in range(known)]
            cfg = {
                "cluster": {
                    "nodeId": i,
                    "clusterSize": known,
                    "partitionsCount": partitions,
                    "replicationFactor": replication_factor,
                    "clusterName": cluster_name,
                    "region": f"region{i % regions}",
                    "initialContactPoints": contact,
                },
                "network": {
                    "host": self.hosts[i],
                    "advertisedHost": self.hosts[i],
                    "gateway": {"port": self.ports[i]["gateway"]},
                    "internal": {"port": self.ports[i]["internal"]},
                },
                "management": {"host": self.hosts[i], "port": self.ports[i]["management"]},
                "data": {"directory": self.data_dir(i)},
            }
            if tls:
                cfg["security"] = {
                    "tls": {
                        "enabled": True,
                        "certificate": self._tls_path(f"broker-{i}.pem"),
                        "privateKey": self._tls_path(f"broker-{i}.key"),
                        "ca": self._tls_path("ca.pem"),
                        "clientAuth": client_auth,
                    }
                }
            _merge(cfg, overrides or {})
            with open(self.config_path(i), "w") as f:
                yaml.safe_dump(cfg, f, sort_keys=False)

    # --- certificates -------------------------------------------------------------

    def _tls_path(self, name: str) -> str:
        return os.path.join(self.root, "tls", name)

    def _issue_certificates(self) -> None:
        ca, ca_key = self._tls_path("ca.pem"), self._tls_path("ca.key")
        certs.ensure_ca(self.cluster_name, ca, ca_key)
        for i in range(self.size):
            certs.ensure_broker(
                self.cluster_name,
                i,
                f"region{i % 2}",
                sorted({self.hosts[i], "127.0.0.1", "localhost"}),
                ca,
                ca_key,
                self._tls_path(f"broker-{i}.pem"),
                self._tls_path(f"broker-{i}.key"),
            )
        certs.ensure_client(
            self.cluster_name,
            "local-ops",
            ca,
            ca_key,
            self._tls_path("client.pem"),
            self._tls_path("client.key"),
        )

    @property
    def tls_files(self) -> dict[str, str] | None:
        """``{"ca", "cert", "key"}`` a client presents, or None without TLS."""
        if not self.tls:
            return None
        names = {"ca": "ca.pem", "cert": "client.pem", "key": "client.key"}
        return {k: self._tls_path(v) for k, v in names.items()}

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client's context for this cluster (trusting its CA, with a client cert)."""
        if self.tls and self._ssl is None:
            f = self.tls_files
            self._ssl = client_context(f["ca"], f["cert"], f["key"])
        return self._ssl

    def client(self, nodes=None, **kw) -> BrokerClient:
        """A client of the gateways of ``nodes`` (all by default), with TLS if on;
        closed by ``stop_all`` if not before."""
        kw.setdefault("cluster_name", self.cluster_name)
        client = BrokerClient(self.gateways(nodes), ssl_context=self.ssl_context(), **kw)
        self._clients.append(client)
        return client

    # --- paths and addresses ------------------------------------------------------

    def config_path(self, i: int) -> str:
        return os.path.join(self.root, f"broker-{i}.yaml")

    def data_dir(self, i: int) -> str:
        return os.path.join(self.root, f"data-{i}")

    def gateway(self, i: int) -> str:
        return f"{self.hosts[i]}:{self.ports[i]['gateway']}"

    def gateways(self, nodes=None) -> str:
        return ",".join(self.gateway(i) for i in (nodes if nodes is not None else range(self.size)))

    def management(self, i: int) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.hosts[i]}:{self.ports[i]['management']}"

    # --- processes ----------------------------------------------------------------------

    def start(self, nodes=None, wait: bool = True) -> None:
        nodes = list(range(self.size)) if nodes is None else list(nodes)
        for i in nodes:
            if i in self.procs and self.procs[i].poll() is None:
                continue
            argv = [sys.executable, "-m", "broker", "run", "--config", self.config_path(i)]
            if self.launcher is not None:
                argv = self.launcher(i, argv)
            with open(os.path.join(self.root, f"broker-{i}.log"), "ab") as log:
                self.procs[i] = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        if wait:
            for i in nodes:
                self.wait_started(i)
            if 0 in self.running():
                # only broker 0 builds a new cluster's configuration; the others take
                # it from gossip a moment later (not ready until then)
                for i in nodes:
                    wait_for(lambda i=i: self._configured(i), 30, f"broker {i}'s configuration")

    def _configured(self, i: int) -> bool:
        doc = self.get_json(i, "/actuator/cluster")
        return bool(doc) and doc.get("version", 0) > 0

    def wait_started(self, i: int, timeout: float = 60) -> None:
        """Until broker ``i`` reports startup UP; a broker that exits, or does not get
        there in time, fails with its exit code or state and the end of its log."""

        def up() -> bool:
            proc = self.procs.get(i)
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(
                    f"broker {i} exited with code {proc.returncode} before startup; its log "
                    f"ends:\n{self.log_tail(i, 40)}"
                )
            return self.health(i, "startup") == "UP"

        try:
            wait_for(up, timeout, f"broker {i} startup")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; its log ends:\n{self.log_tail(i, 40)}") from None

    def kill(self, i: int) -> None:
        """kill -9: no goodbye, no flush."""
        proc = self.procs.pop(i, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    def stop(self, i: int, timeout: float = 20) -> None:
        proc = self.procs.pop(i, None)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def stop_all(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()
        for i in list(self.procs):
            self.stop(i)

    def running(self) -> list[int]:
        return [i for i, p in self.procs.items() if p.poll() is None]

    # --- observing ------------------------------------------------------------------------

    def get_json(self, i: int, path: str):
        try:
            url = self.management(i) + path
            with urllib.request.urlopen(url, timeout=2, context=self.ssl_context()) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read() or b"{}")
        except (OSError, ValueError):
            return None

    def health(self, i: int, what: str = "readiness") -> str | None:
        doc = self.get_json(i, f"/actuator/health/{what}")
        return doc.get("status") if doc else None

    def leaders(self, via: int | None = None) -> dict[int, int]:
        """partition -> leader node id, as one running broker sees it: the live
        claim of the highest term (a deposed leader's claim may linger)."""
        nodes = [via] if via is not None else self.running()
        for i in nodes:
            topo = self.get_json(i, "/v2/topology")
            if not topo:
                continue
            best: dict[int, tuple[int, int]] = {}
            for b in topo["brokers"]:
                for p in b["partitions"]:
                    pid, term = p["partitionId"], p.get("term", 0)
                    live_leader = p["role"] == "leader" and b.get("alive", True)
                    if live_leader and term >= best.get(pid, (-1, -1))[0]:
                        best[pid] = (term, b["nodeId"])
            return {pid: node for pid, (_, node) in best.items()}
        return {}

    def wait_leaders(self, timeout: float = 30, exclude=()) -> dict[int, int]:
        def ready():
            leaders = self.leaders()
            ok = len(leaders) == self.partitions and not set(leaders.values()) & set(exclude)
            return leaders if ok else None

        return wait_for(ready, timeout, f"a leader for all {self.partitions} partitions")

    def log_tail(self, i: int, lines: int = 30) -> str:
        try:
            with open(os.path.join(self.root, f"broker-{i}.log"), errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()


def _merge(into: dict, extra: dict) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v
