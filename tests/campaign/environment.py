"""The real cluster a campaign runs against, and the faults it can inject into it.

Local: broker processes on 127.0.0.1 (no root needed). Lab (root): the same processes
inside the lab's network namespaces (brk-r<region>-h<n>, 198.18.0.0/15), so that nftables in
the lab router can cut the regions apart, both ways or one way. As root, one broker's data
directory sits on a small tmpfs that the disk nemesis fills up.

Two regions, brokers alternating between them (broker i in region i % 2), a file exporter
per region, and an inventory in the project's format so that the real ``broker.ops``
failover and failback procedures run against it, as an operator would run them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from broker.client import BrokerClient, OutOfRange
from broker.demo.localcluster import LocalCluster, wait_for
from broker.lab import Lab, network
from broker.lab import hosts as lab_hosts
from broker.ops import load_inventory, run_failback, run_failover
from broker.ops.checks import wait_caught_up
from tests.campaign.workload import text
from tests.integration.test_cluster import FAST
from tests.integration.test_disk_full import fill
from tests.integration.test_exporters import sink
from tests.ops.conftest import REGIONS, PidControl, write_inventory

MB = 1024 * 1024
TMPFS_SIZE = 48 * MB
# with these, the disk nemesis drives the broker through both refusals and real ENOSPC
FREE_SPACE = {"processing": "6MB", "replication": "3MB"}
TMPFS_BROKER = 2  # region0, not the coordinating broker 0


@dataclass(frozen=True)
class Shape:
    brokers: int = 4
    partitions: int = 2
    replication_factor: int = 4


ELECTION_TIMEOUT = 0.5  # seconds, FAST's: pauses hold longer than this


def lab_unavailable() -> str | None:
    return lab_hosts.unavailable_reason()


def tmpfs_unavailable() -> str | None:
    return None if os.geteuid() == 0 else "not root: cannot mount a tmpfs for the disk nemesis"


class Environment:
    """A started cluster plus its fault switches. Use as a context manager."""

    def __init__(self, root: Path, shape: Shape, lab: Lab | None = None, tmpfs: bool = False):
        self.root = Path(root)
        self.shape = shape
        self.lab = lab
        self.sinks = {r: str(self.root / "export" / r) for r in REGIONS}
        overrides = {
            **FAST,
            "exporters": {r: {"type": "file", "args": {"path": self.sinks[r]}} for r in REGIONS},
            "data": {"logSegmentSize": "1MB", "freeSpace": FREE_SPACE},
        }
        hosts = launcher = None
        if lab is not None:
            names = [f"brk-r{i % 2}-h{i // 2}" for i in range(shape.brokers)]
            hosts = [lab.host(n).address for n in names]

            def launcher(i: int, argv: list[str]) -> list[str]:
                return lab.exec_argv(names[i], argv)

        self.c = LocalCluster(
            str(self.root / "cluster"),
            size=shape.brokers,
            partitions=shape.partitions,
            replication_factor=shape.replication_factor,
            overrides=overrides,
            hosts=hosts,
            launcher=launcher,
        )
        self.inventory = write_inventory(self.c, self.root / "hosts.yml", self.sinks)
        self.cluster = load_inventory(self.inventory)
        self.control = PidControl(self.c)
        self.tmpfs_broker = TMPFS_BROKER if tmpfs and shape.brokers > TMPFS_BROKER else None
        self.paused: set[int] = set()
        self.filler: str | None = None
        self.lost_region: str | None = None
        self._mounted: list[str] = []

    # --- lifecycle --------------------------------------------------------------------

    def __enter__(self) -> Environment:
        try:
            if self.tmpfs_broker is not None:
                self._mount(self.c.data_dir(self.tmpfs_broker))
            self.c.start()
            self.c.wait_leaders(60)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.resume_all()
        if self.lab is not None:
            with contextlib.suppress(Exception):
                self.lab.heal()
        self.c.stop_all()
        self.free_disk()
        for path in self._mounted:
            if subprocess.run(["umount", path], capture_output=True).returncode:
                subprocess.run(["umount", "-l", path], capture_output=True)
        self._mounted.clear()

    def _mount(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0755", "tmpfs", path],
            capture_output=True,
            text=True,
        )
        if res.returncode:
            raise RuntimeError(f"cannot mount a tmpfs on {path}: {res.stderr.strip()}")
        self._mounted.append(path)

    @property
    def gateways(self) -> str:
        return self.c.gateways()

    def client(self, nodes=None, timeout: float = 5.0) -> BrokerClient:
        return BrokerClient(self.c.gateways(nodes), self.c.cluster_name, timeout=timeout)

    def region_of(self, node: int) -> str:
        return REGIONS[node % len(REGIONS)]

    def members(self) -> list[int]:
        """The brokers that belong to the cluster now (a lost region's do not)."""
        return [i for i in range(self.shape.brokers) if self.region_of(i) != self.lost_region]

    # --- process faults -----------------------------------------------------------------

    def kill(self, node: int) -> None:
        self.paused.discard(node)
        self.c.kill(node)

    def start(self, nodes: list[int]) -> None:
        self.c.start(nodes, wait=False)

    def pause(self, node: int) -> None:
        proc = self.c.procs.get(node)
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGSTOP)
            self.paused.add(node)

    def resume_all(self) -> None:
        for node in sorted(self.paused):
            proc = self.c.procs.get(node)
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
        self.paused.clear()

    def leader_of(self, partition: int) -> int | None:
        return self.c.leaders().get(partition)

    def restart_all(self) -> None:
        """kill -9 every broker, then start them all on their data."""
        for node in self.c.running():
            self.kill(node)
        self.start(self.members())

    # --- network faults (lab) -------------------------------------------------------------

    def cut(self) -> None:
        assert self.lab is not None
        self.lab.cut("region1")

    def cut_oneway(self, source: str, destination: str) -> None:
        assert self.lab is not None
        self.lab.cut_oneway(source, destination)

    def heal_network(self) -> None:
        if self.lab is not None and (network.cut_regions() or network.oneway_cuts()):
            self.lab.heal()

    # --- disk full (tmpfs) --------------------------------------------------------------

    def fill_disk(self, leave: int) -> int:
        """Fill the tmpfs broker's disk until ``leave`` bytes are free (0: until ENOSPC)."""
        assert self.tmpfs_broker is not None
        directory = self.c.data_dir(self.tmpfs_broker)
        self.filler = fill(directory, leave)
        return os.path.getsize(self.filler)

    def free_disk(self) -> None:
        if self.filler is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.filler)
            self.filler = None

    # --- region loss and the operator's procedures ------------------------------------------

    def lose_region(self, region: str) -> None:
        for b in self.cluster.in_region(region):
            self.kill(b.node_id)
        self.lost_region = region

    def failover(self, region: str) -> list:
        return run_failover(self.cluster, region, yes=True)

    def failback(self, region: str) -> list:
        """The region comes back empty (recreated), as the runbook assumes."""
        for b in self.cluster.in_region(region):
            wipe(self.c.data_dir(b.node_id))
        results = run_failback(self.cluster, region, yes=True, control=self.control)
        if all(r.status != "failed" for r in results):
            self.lost_region = None
        return results

    # --- settling and reading back ----------------------------------------------------------

    def heal_all(self) -> None:
        """Every fault undone: processes resumed, network healed, disk freed, brokers started."""
        self.resume_all()
        self.heal_network()
        self.free_disk()
        down = [i for i in self.members() if i not in self.c.running()]
        if down:
            self.start(down)

    def wait_up(self, timeout: float = 60) -> None:
        """Every member broker started and every partition led."""
        for i in self.members():
            self.c.wait_started(i, timeout)
        self.c.wait_leaders(timeout)

    def settle(self, timeout: float = 90) -> str | None:
        """Up, and every replica holds what its leader holds; None, or what is still wrong."""
        self.wait_up(timeout)
        brokers = [self.cluster.broker(i) for i in self.members()]
        result = wait_caught_up(self.cluster, brokers, timeout=timeout)
        return None if result.status != "failed" else f"replicas did not catch up: {result.saw}"

    def final_log(self, client: BrokerClient, partition: int) -> list[tuple[int, str]]:
        """The whole committed record log of a partition, read through the gateway."""
        out: list[tuple[int, str]] = []
        position = 1
        while True:
            try:
                got = client.read(partition, position, 1000)
            except OutOfRange as exc:
                position = exc.first or position + 1
                continue
            out.extend((pos, text(data)) for pos, data in got.records)
            if not got.records:
                return out
            position = got.next

    def exporter_positions(self) -> dict[str, dict[int, int]]:
        """exporter -> partition -> highest position its sink holds."""
        out: dict[str, dict[int, int]] = {}
        for exporter, directory in self.sinks.items():
            out[exporter] = {}
            for p, lines in sink(directory).items():
                out[exporter][p] = max((pos for pos, _ in lines), default=0)
        return out


def wipe(directory: str) -> None:
    """Remove a data directory's contents (it may be a mount point)."""
    for entry in Path(directory).glob("*"):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


@contextlib.contextmanager
def started_lab(root: Path, hosts_per_region: int) -> Iterator[Lab]:
    """A namespace lab for the campaign, always taken down again (only one per machine)."""
    journal = open(root / "lab.log", "a", encoding="utf-8")  # noqa: SIM115 (closed below)

    def log(message: str) -> None:
        journal.write(message + "\n")
        journal.flush()
        if message.startswith(("lab: up", "lab: down")):  # the rest is in lab.log
            print(message, flush=True)

    lab = Lab(root / "var-lab", inventory=root / "lab-hosts.yml", log=log)
    try:
        lab.up(hosts_per_region, tls=False)
        yield lab
    finally:
        try:
            lab.down(purge=True)
        finally:
            journal.close()


__all__ = ["Environment", "Shape", "wait_for"]
