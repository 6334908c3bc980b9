"""Operations: the documented region failover and failback procedures as code.

One function per runbook step; each reads the state, does nothing when the
desired state holds, otherwise acts and verifies, and returns a
``StepResult(name, status, saw, did, seconds)``. ``run_failover`` and
``run_failback`` run them in order and stop at the first failure; running
them again resumes where they stopped. ``fabfile.py`` is a thin layer over
this package; tests drive it against real brokers (``tests/ops``).

    from broker.ops import load_inventory, run_failover
    cluster = load_inventory("inventories/local/hosts.yml")
    results = run_failover(cluster, "region1", dry_run=True)
"""

from broker.ops.api import API_FORMS, ApiError, ManagementApi, Unreachable
from broker.ops.control import Control, InventoryControl
from broker.ops.failback import run_failback
from broker.ops.failover import failover_seconds, run_failover
from broker.ops.inventory import Broker, Cluster, InventoryError, load_inventory
from broker.ops.status import print_status, run_verify
from broker.ops.steps import StepResult

__all__ = [
    "API_FORMS",
    "ApiError",
    "Broker",
    "Cluster",
    "Control",
    "InventoryControl",
    "InventoryError",
    "ManagementApi",
    "StepResult",
    "Unreachable",
    "failover_seconds",
    "load_inventory",
    "print_status",
    "run_failback",
    "run_failover",
    "run_verify",
]
