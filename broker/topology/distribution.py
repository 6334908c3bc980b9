"""Zeebe's round-robin partition distribution with priorities, and the node id/region rule.

Members are sorted by id (n of them). Partition i (0-based, id i+1) gets the members
sorted[(i + j) % n] for j < min(R, n), in that replica order. The primary sorted[i % n]
gets priority R; the other replicas get R-1, R-2, ... in replica order while
((partitionId - 1) // n) is even, and 1, 2, ... when it is odd, so that after every full
round over the members the second-best candidate for each partition changes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True)
class PartitionAssignment:
    partition_id: int
    members: tuple[int, ...]  # replica order: primary first
    primary: int
    priorities: Mapping[int, int] = field(hash=False)  # member -> priority, read-only


def distribute(
    member_ids: Iterable[int], partitions_count: int, replication_factor: int
) -> list[PartitionAssignment]:
    """Assign every partition its replicas and election priorities, as Zeebe does.

    A replication factor above the member count is clamped to it, and the priorities
    then run from that clamped factor down to 1.
    """
    members = sorted(member_ids)
    if not members:
        raise ValueError("cannot distribute partitions: no members")
    duplicates = sorted(m for m, count in Counter(members).items() if count > 1)
    if duplicates:
        raise ValueError(f"cannot distribute partitions: duplicate member ids {duplicates}")
    if partitions_count < 1:
        raise ValueError(f"partitions count must be at least 1, got {partitions_count}")
    if replication_factor < 1:
        raise ValueError(f"replication factor must be at least 1, got {replication_factor}")

    n = len(members)
    r = min(replication_factor, n)
    assignments = []
    for index in range(partitions_count):
        partition_id = index + 1
        replicas = tuple(members[(index + j) % n] for j in range(r))
        if ((partition_id - 1) // n) % 2 == 0:
            others = range(r - 1, 0, -1)
        else:
            others = range(1, r)
        priorities = {replicas[0]: r, **dict(zip(replicas[1:], others, strict=True))}
        assignments.append(
            PartitionAssignment(
                partition_id=partition_id,
                members=replicas,
                primary=replicas[0],
                priorities=MappingProxyType(priorities),
            )
        )
    return assignments


def region_of(node_id: int, regions: int) -> int:
    """The region index of a node under the parity rule (node id = ordinal * regions + region)."""
    if regions < 1:
        raise ValueError(f"regions must be at least 1, got {regions}")
    if node_id < 0:
        raise ValueError(f"node id must be non-negative, got {node_id}")
    return node_id % regions


def node_id_for(ordinal: int, region_id: int, regions: int) -> int:
    """The node id of the ordinal-th broker (0-based) of region region_id."""
    if regions < 1:
        raise ValueError(f"regions must be at least 1, got {regions}")
    if not 0 <= region_id < regions:
        raise ValueError(f"region id must be in 0..{regions - 1}, got {region_id}")
    if ordinal < 0:
        raise ValueError(f"ordinal must be non-negative, got {ordinal}")
    return ordinal * regions + region_id
