"""Test hosts on one machine: network + mount namespaces with sshd, in two regions.

``python -m broker.lab up|status|cut|heal|kill|down``; the same operations as :class:`Lab`
for tests and fab tasks. See ``docs``/DESIGN section 6 and :mod:`broker.lab.network`.
"""

from broker.lab.hosts import (
    DEFAULT_DIR,
    DEFAULT_INVENTORY,
    REGIONS,
    Lab,
    LabHost,
    layout,
    unavailable_reason,
)
from broker.lab.network import LabError, UsageError

__all__ = [
    "DEFAULT_DIR",
    "DEFAULT_INVENTORY",
    "REGIONS",
    "Lab",
    "LabError",
    "LabHost",
    "UsageError",
    "layout",
    "unavailable_reason",
]
