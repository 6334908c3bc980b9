"""Rolling restart: one broker at a time, region by region, never below a quorum.

The same walk as ``playbooks/restart.yml``, for `fab rolling-restart`:

1. ``verify_placement``: start only from a healthy cluster (RF replicas, RF/2
   per region, a leader on every partition); restarting a broker of an
   unhealthy cluster can take a partition's quorum away;
2. per broker, region0 first: stop it, wait until it is down, start it, wait
   until it is ready, seen alive by the others, every partition has a leader
   and every replica has caught up with its leader. Only then the next one.

With RF 4 (2+2) a partition keeps 3 of 4 replicas while one restarts, so
writes continue throughout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from broker.ops.checks import verify_placement, wait_caught_up, wait_for_leaders
from broker.ops.control import Control
from broker.ops.inventory import Broker, Cluster
from broker.ops.steps import (
    Outcome,
    Progress,
    Step,
    StepFailed,
    StepResult,
    ask_once,
    ask_or_refuse,
    done,
    failed,
    run_procedure,
    step,
    wait_until,
)
from broker.ops.view import alive_map, api_of, first_answering, ids_text

DOWN_TIMEOUT = 60.0
READY_TIMEOUT = 90.0


@step("restart one broker and wait until the cluster is whole again", acts=True)
def restart_broker(
    cluster: Cluster,
    broker: Broker,
    *,
    control: Control,
    approve: Callable[[str], bool],
    timeout: float = READY_TIMEOUT,
) -> Outcome:
    was_up = api_of(cluster, broker).health("startup")
    if not approve(f"Restart broker {broker.node_id} ({broker.label()})?"):
        return failed("the operator did not confirm", "restarted nothing")
    started = time.monotonic()
    stopped = control.stop(broker)
    wait_down(cluster, broker)
    started_again = control.start(broker)
    seen = wait_back(cluster, broker, timeout)
    wait_until(lambda: _whole(cluster, broker, timeout), timeout, "every partition to be whole")
    return done(
        f"broker {broker.node_id} was {'up' if was_up else 'DOWN'}",
        f"{stopped}; {started_again}; {seen}, every partition led and caught up "
        f"{time.monotonic() - started:.1f}s after the stop",
    )


def wait_down(cluster: Cluster, broker: Broker) -> None:
    """Until the stopped broker's management API no longer answers."""
    api = api_of(cluster, broker)

    def down() -> tuple[bool, str]:
        up = api.health("startup")
        return not up, "still answers" if up else "down"

    wait_until(down, DOWN_TIMEOUT, f"broker {broker.node_id} to stop")


def wait_back(cluster: Cluster, broker: Broker, timeout: float) -> str:
    """Until the started broker is ready and the others see it alive; what was seen."""
    api = api_of(cluster, broker)
    others = [b for b in cluster.brokers if b.node_id != broker.node_id]

    def back() -> tuple[bool, str]:
        if not api.health("readiness"):
            return False, f"broker {broker.node_id} is not ready"
        _, other, _ = first_answering(cluster, others)
        if not alive_map(other.topology()).get(broker.node_id):
            return False, f"the others do not see broker {broker.node_id} alive yet"
        return True, f"broker {broker.node_id} is ready and seen alive"

    return wait_until(back, timeout, f"broker {broker.node_id} to come back")


def _whole(cluster: Cluster, broker: Broker, timeout: float) -> tuple[bool, str]:
    """Every partition led and every replica caught up with its leader."""
    for check in (wait_for_leaders, wait_caught_up):
        result = check(cluster, cluster.brokers, timeout=timeout)
        if result.failed and "no leader" in result.saw:
            return False, result.saw  # a deposed leader still named in gossip: look again
        if result.failed:
            raise StepFailed(f"after restarting broker {broker.node_id}: {result.saw}")
    return True, "every partition led and caught up"


def restart_order(cluster: Cluster, region: str | None = None) -> list[Broker]:
    """Region by region (in the inventory's order), by node id within a region."""
    regions = [cluster.check_region(region)] if region else cluster.regions
    return [b for r in regions for b in sorted(cluster.in_region(r), key=lambda b: b.node_id)]


def run_rolling_restart(
    cluster: Cluster,
    *,
    control: Control,
    region: str | None = None,
    yes: bool = False,
    confirm: Callable[[str], bool] | None = None,
    progress: Progress | None = None,
    timeout: float = READY_TIMEOUT,
) -> list[StepResult]:
    """Verify the cluster, then restart its brokers (or one region's) one at a time.

    Asks once, for the whole walk, unless ``yes``; stops at the first broker that
    does not come back whole."""
    order = restart_order(cluster, region)
    approve_once = ask_once(
        ask_or_refuse(yes, confirm),
        lambda: (
            f"Restart brokers {ids_text(b.node_id for b in order)} one at a time "
            f"({', '.join(b.label() for b in order)})?"
        ),
    )

    steps = [
        Step(
            "verify_placement",
            "verify the cluster is healthy before restarting anything",
            lambda: verify_placement(cluster, cluster.brokers),
        )
    ]
    for b in order:
        steps.append(
            Step(
                f"restart_broker_{b.node_id}",
                f"restart broker {b.node_id} ({b.label()})",
                lambda b=b: replace(
                    restart_broker(
                        cluster, b, control=control, approve=approve_once, timeout=timeout
                    ),
                    name=f"restart_broker_{b.node_id}",
                ),
            )
        )
    return run_procedure(steps, progress)
