"""A dual-region clustered broker: SWIM membership, one Raft group per partition."""

__version__ = "0.1.0"
