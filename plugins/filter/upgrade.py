"""Jinja filter for upgrade.yml's catch-up gate.

- ``broker_replica_lag(mine, others)``: how far this broker's replicas are behind,
  ``{"<partition>": entries or None}``. ``mine`` is this broker's
  ``/actuator/partitions`` document, ``others`` those of other brokers (the
  partitions' leaders), as documents or as ``uri`` results (their ``json``). A
  replica's lag is its partition's commit index, as the leader reports it (the
  highest any document claiming leadership gives; else the highest any gives),
  minus the index this broker has applied (``processedIndex``). A follower's own
  commit index cannot stand in: it never exceeds what the follower has, so a
  replica far behind would look caught up. None: no leader known yet. A partition
  this broker leads has lag 0.

Self-contained (no ``broker`` import): the same rule as ``broker.ops.upgrade.replica_lag``,
which fab uses.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def _docs(others: Iterable[Any]) -> list[Mapping[str, Any]]:
    out = []
    for doc in others or []:
        if isinstance(doc, Mapping) and "json" in doc:  # a registered uri result
            doc = doc.get("json")
        if isinstance(doc, Mapping):
            out.append(doc)
    return out


def broker_replica_lag(mine: Mapping[str, Any] | None, others: Iterable[Any]) -> dict[str, Any]:
    docs = _docs(others)
    lag: dict[str, Any] = {}
    for pid, info in (mine or {}).items():
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


class FilterModule:
    def filters(self):
        return {"broker_replica_lag": broker_replica_lag}
