"""What the broker knows about another member: its region, addresses and partition roles.

Membership itself (who is alive, gossip, failure detection) is the SWIM layer
in ``broker/membership``; this record is what it hands to the rest of the
broker (routing, topology, management API).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Member:
    node_id: int
    region: str = ""
    host: str = ""
    internal_port: int = 0
    gateway_port: int = 0
    management_port: int = 0
    version: str = ""  # the broker's software version ("" from brokers that predate it)
    partitions: dict[int, dict] = field(default_factory=dict)  # id -> {role, term, leader, ...}
    last_seen: float = 0.0

    def describe(self) -> dict:
        return {
            "id": self.node_id,
            "region": self.region,
            "host": self.host,
            "internal": self.internal_port,
            "gateway": self.gateway_port,
            "management": self.management_port,
            "version": self.version,
            "partitions": {str(k): v for k, v in self.partitions.items()},
        }
