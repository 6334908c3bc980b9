"""How far a broker's replicas are behind their partitions' leaders (pure).

From ``/actuator/partitions`` documents: this broker's (``mine``) and other brokers'
(``others``, among them the leaders). A replica's lag is its partition's commit
index as the leader reports it (the highest a document claiming leadership gives,
else the highest any gives) minus the index this broker has applied
(``processedIndex``). A follower's own commit index cannot stand in: it never
exceeds what the follower has, so a replica far behind would look caught up. None
while no leader is known; 0 for a partition this broker leads.

Used by ``fab upgrade`` (broker/ops/upgrade.py) and by the role's
``broker_replica_lag`` filter (plugins/filter/placement.py) for the upgrade's
catch-up gate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def replica_lag(mine: Mapping[str, Any], others: Iterable[Any]) -> dict[str, int | None]:
    """``{"<partition>": entries behind, or None}`` for every partition in ``mine``."""
    docs = [d for d in others if isinstance(d, Mapping)]
    lag: dict[str, int | None] = {}
    for pid, info in mine.items():
        if not isinstance(info, Mapping):
            continue
        if str(info.get("role", "")).upper() == "LEADER":
            lag[str(pid)] = 0
            continue
        claims = [d[pid] for d in docs if isinstance(d.get(pid), Mapping)]
        led = [c for c in claims if str(c.get("role", "")).upper() == "LEADER"]
        commits = [c.get("commitIndex") for c in (led or claims)]
        commits = [c for c in commits if isinstance(c, int)]
        applied = info.get("processedIndex")
        if info.get("leader") is None or not commits or not isinstance(applied, int):
            lag[str(pid)] = None
        else:
            lag[str(pid)] = max(max(commits) - applied, 0)
    return lag
