"""Raft consensus: a sans-I/O core, its durable journal and snapshot store."""
