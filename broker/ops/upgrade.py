"""Rolling upgrade (or rollback) to a release already staged on the hosts: `fab upgrade`.

The Ansible role installs each build side by side under
``<broker_install_dir>/releases/<version>-<archive sha256[:12]>/`` (its wheels and
venv) and points ``broker_venv_dir`` at the current one's venv (a symlink);
``ansible-playbook playbooks/upgrade.yml -e broker_upgrade_stage_only=true`` stages a
release on every host without touching the running brokers. This walk then switches
to it, as ``playbooks/upgrade.yml`` does:

1. ``check_staged``: every host has a complete release of the version (else refused,
   naming the hosts that lack it and how to stage it);
2. ``check_data``: that release's ``broker check-data`` on every host says it can run
   the broker's data (a rollback across a data format change is refused here, with
   its message, before any broker is stopped);
3. ``verify_placement``: start only from a healthy cluster;
4. per broker, region0 first, by node id: check-data again, stop it, switch the link
   (a temporary symlink renamed over it), start it, wait until it is ready, seen alive,
   every partition led, its replicas within ``max_lag`` entries of their leaders, and it
   reports the version. A broker already on the release and running it is skipped, so
   a re-run resumes where a failed one stopped.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from broker.catchup import replica_lag
from broker.ops.api import ApiError
from broker.ops.checks import verify_placement, wait_for_leaders
from broker.ops.control import Control, is_systemd, run_on
from broker.ops.inventory import Broker, Cluster
from broker.ops.rolling import restart_order, wait_back, wait_down
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
    skipped,
    step,
    wait_until,
)
from broker.ops.view import api_of, docs_from, ids_text

DEFAULT_MAX_LAG = 1000  # entries; the role's broker_upgrade_max_lag
READY_TIMEOUT = 90.0
STAGE_HINT = "ansible-playbook -i INVENTORY playbooks/upgrade.yml -e broker_upgrade_stage_only=true"
LEGACY = "legacy"  # broker_venv_dir is still a real directory (before releases)


def install_paths(broker: Broker) -> tuple[str, str]:
    """(broker_install_dir, broker_venv_dir) of the broker's host, as the role sets them."""
    install = str(broker.vars.get("broker_install_dir") or "/opt/broker")
    return install, str(broker.vars.get("broker_venv_dir") or os.path.join(install, "venv"))


@dataclass(frozen=True)
class Staged:
    """What a host holds: the newest complete release of the version, and the current one."""

    release: str | None
    current: str | None  # the release the link names, LEGACY, or None (no link)


def probe_releases(broker: Broker, version: str) -> Staged:
    """Read, on the broker's host, the release its link names and the staged ones of
    ``version`` (complete: their ``.complete`` marker exists), newest first."""
    install, venv = install_paths(broker)
    pattern = f"{shlex.quote(os.path.join(install, 'releases', version))}-*/"
    script = (
        f"if [ -L {shlex.quote(venv)} ]; then readlink {shlex.quote(venv)}; "
        f"elif [ -d {shlex.quote(venv)} ]; then echo {LEGACY}; else echo none; fi; "
        f'for d in {pattern}; do [ -f "$d.complete" ] && '
        f'echo "$(stat -c %Y "$d.complete") $(basename "$d")"; done; true'
    )
    lines = run_on(broker, script).strip().splitlines()
    link = lines[0].strip() if lines else "none"
    current = None if link == "none" else LEGACY if link == LEGACY else _release_of(link)
    staged = sorted((line.split() for line in lines[1:] if line.strip()), reverse=True)
    release = staged[0][1] if staged else None
    return Staged(release, current)


def _release_of(target: str) -> str:
    """``releases/<name>/venv`` (relative or absolute) -> ``<name>``."""
    parts = os.path.normpath(target).split(os.sep)
    return parts[-2] if len(parts) >= 2 and parts[-1] == "venv" else target


def _check_data_command(broker: Broker, release: str) -> str:
    install, _ = install_paths(broker)
    program = os.path.join(install, "releases", release, "venv", "bin", "broker")
    return shlex.join([program, "check-data", "--config", str(broker.config_path)])


@step("check the release is staged on every host")
def check_staged(cluster: Cluster, version: str, staged: dict[int, Staged]) -> Outcome:
    """Fills ``staged`` (node id -> what its host holds); refuses naming the hosts
    that lack a complete release of ``version``."""
    missing, errors = [], []
    for b in sorted(cluster.brokers, key=lambda b: b.node_id):
        try:
            staged[b.node_id] = found = probe_releases(b, version)
        except StepFailed as exc:
            errors.append(exc.saw)
            continue
        if found.release is None:
            missing.append(b)
    if errors:
        raise StepFailed("could not read the releases: " + "; ".join(errors))
    if missing:
        names = ", ".join(f"{b.name} (broker {b.node_id})" for b in missing)
        raise StepFailed(
            f"broker {version} is not staged on {names}; stage it first with "
            f"`{STAGE_HINT} -e broker_version={version}`"
        )
    releases = sorted({s.release for s in staged.values() if s.release})
    return done(
        f"release {', '.join(releases)} staged on all {len(staged)} hosts",
        "nothing changed",
        releases={str(n): s.release for n, s in staged.items()},
    )


@step("ask the release whether it can run every broker's data")
def check_data(cluster: Cluster, version: str, staged: dict[int, Staged]) -> Outcome:
    """The staged release's ``broker check-data`` on every host (reads only); refuses,
    with its message, before any broker is stopped."""
    refused = []
    for b in sorted(cluster.brokers, key=lambda b: b.node_id):
        try:
            run_on(b, _check_data_command(b, staged[b.node_id].release or ""))
        except StepFailed as exc:
            refused.append((b, exc.saw))
    if refused:
        names = ", ".join(b.name for b, _ in refused)
        raise StepFailed(
            f"broker {version} cannot run the data of {names}, so no broker was stopped: "
            f"{refused[0][1]}"
        )
    return done(f"broker {version} can run the data of every broker", "nothing changed")


def _switch_command(broker: Broker, release: str) -> str:
    """A temporary symlink renamed over the link: readers see one release or the other."""
    install, venv = install_paths(broker)
    target = os.path.relpath(
        os.path.join(install, "releases", release, "venv"), os.path.dirname(venv)
    )
    tmp = f"{venv}.tmp-upgrade"
    return (
        f"ln -sfn {shlex.quote(target)} {shlex.quote(tmp)} && "
        f"mv -Tf {shlex.quote(tmp)} {shlex.quote(venv)}"
    )


def running_version(cluster: Cluster, broker: Broker) -> str | None:
    """The version the broker reports for itself (``/v2/topology``), None if it does not answer."""
    try:
        doc = api_of(cluster, broker).topology()
    except ApiError:
        return None
    for b in doc.get("brokers", []):
        if b.get("nodeId") == broker.node_id:
            return b.get("version")
    return None


def _caught_up(cluster: Cluster, broker: Broker, max_lag: int) -> tuple[bool, str]:
    docs = docs_from(cluster, cluster.brokers, "partitions")
    mine = docs.get(broker.node_id)
    if not isinstance(mine, Mapping):
        return False, f"broker {broker.node_id} does not answer: {mine}"
    others = [d for n, d in docs.items() if n != broker.node_id and isinstance(d, Mapping)]
    lag = {int(p): v for p, v in replica_lag(mine, others).items()}
    unknown = [p for p, v in sorted(lag.items()) if v is None]
    behind = {p: v for p, v in sorted(lag.items()) if v is not None and v > max_lag}
    if unknown:
        return False, f"partitions {ids_text(unknown)} follow no known leader yet"
    if behind:
        return False, "behind: " + ", ".join(f"p{p} by {v}" for p, v in behind.items())
    worst = max((v for v in lag.values() if v is not None), default=0)
    return True, f"replicas within {worst} entries of their leaders (max {max_lag})"


@step("switch one broker to the release and wait until the cluster is whole again", acts=True)
def upgrade_broker(
    cluster: Cluster,
    broker: Broker,
    *,
    version: str,
    staged: Staged,
    control: Control,
    approve: Callable[[str], bool],
    max_lag: int = DEFAULT_MAX_LAG,
    timeout: float = READY_TIMEOUT,
) -> Outcome:
    release = staged.release or ""
    if staged.current == release and running_version(cluster, broker) == version:
        return skipped(f"broker {broker.node_id} runs release {release} already")
    if staged.current == LEGACY:
        return failed(
            f"{broker.label()}: broker_venv_dir is still a real directory (the layout "
            "before releases); run playbooks/deploy.yml once to migrate it"
        )
    if not approve(f"Switch broker {broker.node_id} ({broker.label()}) to {release}?"):
        return failed("the operator did not confirm", "switched nothing")
    run_on(broker, _check_data_command(broker, release))
    started = time.monotonic()
    stopped = control.stop(broker)
    wait_down(cluster, broker)
    run_on(broker, _switch_command(broker, release), root=is_systemd(broker))
    started_again = control.start(broker)
    seen = wait_back(cluster, broker, timeout)
    led = wait_for_leaders(cluster, cluster.brokers, timeout=timeout)
    if led.failed:
        raise StepFailed(f"after switching broker {broker.node_id}: {led.saw}")
    caught = wait_until(
        lambda: _caught_up(cluster, broker, max_lag), timeout, "its replicas to catch up"
    )
    now = running_version(cluster, broker)
    if now != version:
        raise StepFailed(f"broker {broker.node_id} reports version {now}, not {version}")
    return done(
        f"broker {broker.node_id} was on {staged.current}",
        f"{stopped}; switched to {release}; {started_again}; {seen}, every partition led, "
        f"{caught}, {time.monotonic() - started:.1f}s after the stop",
    )


def run_upgrade(
    cluster: Cluster,
    version: str,
    *,
    control: Control,
    dry_run: bool = False,
    yes: bool = False,
    confirm: Callable[[str], bool] | None = None,
    progress: Progress | None = None,
    max_lag: int = DEFAULT_MAX_LAG,
    timeout: float = READY_TIMEOUT,
) -> list[StepResult]:
    """Check, then switch every broker (region by region) to the staged release of
    ``version``. Asks once, for the whole walk, unless ``yes``; a dry run runs the
    three read-only checks and lists the switches."""
    order = restart_order(cluster)
    staged: dict[int, Staged] = {}
    approve_once = ask_once(
        ask_or_refuse(yes, confirm),
        lambda: (
            f"Switch brokers {ids_text(b.node_id for b in order)} one at a time to "
            f"broker {version} ({', '.join(b.label() for b in order)})?"
        ),
    )

    steps = [
        Step(
            "check_staged",
            f"check broker {version} is staged on every host",
            lambda: check_staged(cluster, version, staged),
        ),
        Step(
            "check_data",
            f"ask broker {version} whether it can run every broker's data",
            lambda: check_data(cluster, version, staged),
        ),
        Step(
            "verify_placement",
            "verify the cluster is healthy before switching anything",
            lambda: verify_placement(cluster, cluster.brokers),
        ),
    ]
    for b in order:
        name = f"upgrade_broker_{b.node_id}"
        title = f"switch broker {b.node_id} ({b.label()}) to broker {version}"
        if dry_run:
            steps.append(
                Step(name, title, lambda b=b, name=name: _planned(cluster, b, staged, name))
            )
            continue
        steps.append(
            Step(
                name,
                title,
                lambda b=b, name=name: replace(
                    upgrade_broker(
                        cluster,
                        b,
                        version=version,
                        staged=staged[b.node_id],
                        control=control,
                        approve=approve_once,
                        max_lag=max_lag,
                        timeout=timeout,
                    ),
                    name=name,
                ),
            )
        )
    return run_procedure(steps, progress)


def _planned(cluster: Cluster, broker: Broker, staged: dict[int, Staged], name: str) -> StepResult:
    s = staged[broker.node_id]
    return StepResult(
        name,
        "skipped",
        f"broker {broker.node_id} is on {s.current}, reports version "
        f"{running_version(cluster, broker)}",
        f"dry run: would stop it, switch its venv link to {s.release}, start it and wait "
        "until it is ready, every partition is led and its replicas have caught up",
        0.0,
    )
