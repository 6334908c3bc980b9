"""Demos and local-cluster helpers: everything that starts brokers on this machine.

- ``python -m broker.demo`` (``make demo``, code in :mod:`broker.demo.run`):
  the dual-region demo, deployed with Ansible, a region lost and failed over
  and back; ``--quick`` runs :mod:`broker.demo.quick` (4 brokers, no Ansible);
- :mod:`broker.demo.cluster`: the demo's Ansible-deployed cluster (``DemoCluster``);
- :mod:`broker.demo.localcluster`: real broker processes on 127.0.0.1 for the
  demos, integration tests and benchmarks (``LocalCluster``, ``free_ports``,
  ``wait_for``).

Importing this package imports none of them.
"""
