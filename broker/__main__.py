"""``python -m broker ...`` is the ``broker`` command (``python -m broker.cli`` is brokerctl)."""

import sys

from broker.cli import broker_main

sys.exit(broker_main())
