"""The running broker: everything with threads, sockets and a clock.

- ``broker``: the assembly (``Broker``), which starts and wires the rest;
- ``partitions``: one thread per hosted partition driving the pure Raft core
  (``broker.raft.core``) with the journal, the state machine and the network;
- ``membership``: SWIM (``broker.membership.swim``) driven over the transport;
- ``gateway``: client requests routed to partition leaders;
- ``topology``: the cluster configuration, persisted, gossiped and carried out;
- ``topology_api``, ``management``: the management HTTP API;
- ``exporting``: the exporters of the partitions this broker leads.

The pure cores (``broker.raft.core``, ``broker.membership.swim``,
``broker.topology.model``, ``broker.placement``) import nothing from here;
``tests/unit/test_layers.py`` checks it.
"""
