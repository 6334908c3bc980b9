"""Cluster topology: partition distribution, the versioned configuration model, change plans."""
