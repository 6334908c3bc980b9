"""The narrow interfaces the parts of a running broker see of each other.

Each part gets only what it uses, not the whole ``Broker``:

- ``PartitionHandle`` (``PartitionRunner``): the gateway proposes and calls, the
  exporters read records and positions, the controls call the Raft core;
- ``leader_of(partition)`` (SWIM's member table): who leads a partition elsewhere;
- ``Link`` (``InternalLink``): a request to another broker over the internal port;
- ``Controls`` (``Gateway.control``): topology actions on a partition's leader,
  wherever it runs.

docs/architecture.md ("Seams") lists which module uses which.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any, Protocol


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
    def request(self, node_id: int, body: dict, timeout: float) -> Future: ...


class Controls(Protocol):
    def control(self, body: dict, timeout: float) -> Future: ...
