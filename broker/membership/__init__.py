"""SWIM gossip membership: a sans-I/O core (swim.py) and its threaded runner (runner.py)."""

from broker.membership.swim import (
    ALIVE,
    DEAD,
    META,
    SUSPECT,
    Event,
    MalformedMessage,
    MemberRecord,
    Swim,
    SwimConfig,
)

__all__ = [
    "ALIVE",
    "DEAD",
    "META",
    "SUSPECT",
    "Event",
    "MalformedMessage",
    "MemberRecord",
    "Swim",
    "SwimConfig",
]
