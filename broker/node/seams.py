"""The narrow interfaces the parts of a running broker see of each other.

Each part gets only what it uses, not the whole ``Broker``:

- ``PartitionHandle`` (``PartitionRunner``): the gateway proposes and calls, the
  exporters read records and positions, the controls call the Raft core;
- ``leader_of(partition)`` (SWIM's member table): who leads a partition elsewhere;
- ``Link`` (``InternalLink``): a request to another broker over the internal port;
- ``Controls`` (``Gateway.control``): topology actions on a partition's leader,
  wherever it runs;
- ``MembershipView`` (SWIM's member table) and ``TopologyHost`` (the ``Broker``):
  what the topology manager acts on.

docs/architecture.md ("Seams") lists which module uses which.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from typing import Any, Protocol


class AnswerLost(Exception):
    """A request handed to another broker whose connection then ended: whether that
    broker acted on it is unknown (a Link's futures fail with it)."""


class PartitionHandle(Protocol):
    status: dict[str, Any]  # a copy, refreshed by the partition thread every turn

    @property
    def is_leader(self) -> bool: ...

    def propose(self, command: bytes, done: Callable[[dict], None]) -> None: ...

    def call(self, fn: Callable[[Any], object]) -> Future: ...

    def refusal(self, write: bool) -> dict | None: ...

    def read_records(
        self, start: int, max_records: int, max_bytes: int, timeout: float = 5.0
    ) -> list[tuple[int, Any]]: ...


Partitions = Mapping[int, PartitionHandle]


class Link(Protocol):
    # fails with TimeoutError past timeout, AnswerLost when the connection ends first
    def request(self, node_id: int, body: dict, timeout: float) -> Future: ...


class Controls(Protocol):
    def control(self, body: dict, timeout: float) -> Future: ...


class MembershipView(Protocol):
    members: Mapping[int, Any]  # node id -> Member (region, addresses, partitions)

    def alive(self, node_id: int) -> bool: ...  # by gossip: for display and routing

    def reachable(self, node_id: int, timeout: float = 1.0) -> bool: ...  # a direct probe
    def reachable_among(self, node_ids: Iterable[int], timeout: float = 1.0) -> set[int]: ...

    def trusted(self) -> set[int] | None: ...  # who may claim partition roles

    def leader_of(self, partition_id: int) -> int | None: ...


class TopologyHost(Protocol):
    """What the topology manager carries changes out on: this broker's partitions
    (started, stopped, reconfigured through their leaders) and its peers."""

    node_id: int
    data_directory: str
    runners: dict[int, Any]  # live: the manager starts and stops partitions in it
    peers: MembershipView | None  # None until SWIM has started

    def ensure_partition(self, pid: int, replicas: dict[int, int]) -> None: ...

    def reconfigure_partition(self, pid: int, replicas: dict[int, int]) -> bool: ...

    def init_exporter(self, pid: int, exporter: str, source: str) -> bool: ...

    def send_gossip(self, node_id: int, payload: Any) -> bool: ...
