"""SWIM gossip membership: the sans-I/O core (swim.py); broker/node/membership.py runs it."""

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
