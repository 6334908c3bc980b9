"""``python -m broker.demo``: the dual-region demo (see :mod:`broker.demo.run`)."""

import sys

from broker.demo.run import main

sys.exit(main())
