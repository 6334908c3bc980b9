"""Action plugin of ``broker_region``: the region failover and failback runbooks from Ansible.

The work is ``broker.ops.run_failover`` / ``broker.ops.run_failback``, the same
procedures ``fab failover`` / ``fab failback`` run; this plugin only maps the
task's options onto them, shows their progress, writes the same JSON audit
record and turns the steps into an Ansible result. It runs in the
controller's ``ansible-playbook`` process (no module is sent anywhere), so
``broker`` must be importable there: run Ansible from the project's virtualenv.

The options are documented in ``plugins/modules/broker_region.py``.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

try:
    from broker.ops import InventoryControl, InventoryError, load_inventory
    from broker.ops.api import API_FORMS, DEFAULT_FORM
    from broker.ops.failback import run_failback
    from broker.ops.failover import failover_seconds, run_failover
    from broker.ops.report import audit_record, redact, write_audit
except ImportError as exc:  # reported when the task runs, not when Ansible loads plugins
    BROKER_IMPORT_ERROR: ImportError | None = exc
    API_FORMS, DEFAULT_FORM = ("8.6", "8.8"), "8.6"
else:
    BROKER_IMPORT_ERROR = None

display = Display()

PROJECT = Path(__file__).resolve().parents[2]
DEFAULT_AUDIT_DIR = PROJECT / "var" / "ops" / "audit"
BROKER_GROUP = "brokers"
STATUS_COLOR = {"done": "green", "skipped": "cyan", "failed": "bright red"}
RESUME_HINT = (
    "Fix what the failed step saw, then run the same playbook again: finished steps are "
    "skipped and the run resumes at the failed one."
)


ARGUMENT_SPEC = {
    "procedure": {"type": "str", "required": True, "choices": ["failover", "failback"]},
    "region": {"type": "str", "required": True},
    "confirm": {"type": "str", "default": ""},
    "inventory": {"type": "path"},
    "api": {"type": "str", "default": DEFAULT_FORM, "choices": list(API_FORMS)},
    "allow_removing_reachable_brokers": {"type": "bool", "default": False},
    "sink_restored": {"type": "bool", "default": False},
    "audit_dir": {"type": "path"},
}


class _Progress:
    """broker.ops' Progress protocol: each step in the task's output as it starts and ends
    (what ConsoleProgress prints for fab), while the task runs."""

    def __init__(self) -> None:
        self.total = 0

    def started(self, index: int, total: int, step: Any) -> None:
        self.total = total
        display.display(redact(f"[{index}/{total}] {step.title} ({step.name}) ..."))

    def finished(self, index: int, total: int, result: Any) -> None:
        display.display(
            f"      {result.status.upper()} in {result.seconds:.1f}s",
            color=STATUS_COLOR[result.status],
        )
        display.display(redact(_indented("saw: ", result.saw)))
        display.display(redact(_indented("did: ", result.did)))


def _indented(label: str, text: str) -> str:
    first, *rest = text.splitlines() or [""]
    return "\n".join([f"      {label}{first}", *(f"      {line}" for line in rest)])


def _first_line(text: str) -> str:
    lines = text.splitlines()
    more = f" (+{len(lines) - 1} lines)" if len(lines) > 1 else ""
    return (lines[0] if lines else "") + more


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp: Any = None, task_vars: dict | None = None) -> dict[str, Any]:
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        if BROKER_IMPORT_ERROR is not None:
            raise AnsibleActionFail(
                "broker_region needs the broker package in the Python that runs "
                f"ansible-playbook ({sys.executable}), which cannot import it "
                f"({BROKER_IMPORT_ERROR}). Run the project's .venv/bin/ansible-playbook "
                "(make setup installs it)."
            )
        _, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        procedure, region = args["procedure"], args["region"]
        check = bool(self._task.check_mode)
        try:
            cluster = load_inventory(
                args["inventory"] or _inventory_of(task_vars),
                vault_secrets=_play_vault_secrets(self._loader),
            )
            cluster.check_region(region)
        except InventoryError as exc:
            raise AnsibleActionFail(str(exc)) from None
        if not check and args["confirm"] != region:
            raise AnsibleActionFail(
                f"{procedure} of {region} changes the cluster and was not confirmed: set "
                f"confirm to the region's name ({region}), or run in check mode to see the "
                "plan without changing anything"
            )

        started = datetime.now(UTC)
        progress = _Progress()
        results, options = _run(procedure, cluster, region, args, check, progress)
        record = audit_record(
            procedure,
            region,
            results,
            progress.total or len(results),
            started_at=started,
            options=options,
            inventory=cluster.source,
        )
        audit = write_audit(record, _audit_dir(args["audit_dir"]))
        acted = [r.name for r in results if r.acted]  # checks and waits never count
        seconds = failover_seconds(results) if procedure == "failover" else None
        title = f"{procedure} of {region}{' (DRY RUN: nothing was changed)' if check else ''}"
        headline = f"{title}: {record['outcome']} in {record['seconds']:.1f}s"
        display.display(
            headline, color="green" if record["outcome"] == "completed" else "bright red"
        )
        for line in _summary(results, acted, check, seconds, audit):
            display.display(redact(line))
        result.update(
            changed=bool(acted) and not check,
            procedure=procedure,
            region=region,
            dry_run=check,
            outcome=record["outcome"],
            acted=acted,
            steps=redact(
                [
                    {
                        "name": r.name,
                        "status": r.status,
                        "saw": r.saw,
                        "did": r.did,
                        "seconds": round(r.seconds, 3),
                    }
                    for r in results
                ]
            ),
            audit=str(audit),
            inventory=cluster.source,
        )
        if seconds is not None:
            result["failover_seconds"] = round(seconds, 3)
        if results and results[-1].failed:
            last = results[-1]
            result["failed"] = True
            result["msg"] = redact(
                f"{headline}. {last.name} saw: {last.saw} -- did: {last.did}. {RESUME_HINT}"
            )
        else:
            what = f"acted: {', '.join(acted)}" if acted else "no step acted"
            result["msg"] = f"{headline}; {what}"
            if record["outcome"] != "completed":  # stopped early without a failed step
                result["failed"] = True
        return result


def _run(
    procedure: str, cluster: Any, region: str, args: dict, check: bool, progress: _Progress
) -> tuple[list, dict[str, Any]]:
    """Run the procedure; returns its step results and the options for the audit record."""
    common = {
        "dry_run": check,
        "yes": not check,  # confirmed by the caller; a dry run approves nothing
        "api": args["api"],
        "progress": progress,
        "control": InventoryControl(),
    }
    options: dict[str, Any] = {"dryRun": check, "yes": not check, "api": args["api"]}
    if procedure == "failover":
        override = args["allow_removing_reachable_brokers"]
        if override and not check:
            display.warning(
                f"allow_removing_reachable_brokers is set: {region} will be forced out even "
                "if it still answers"
            )
        results = run_failover(cluster, region, override_reachable=override, **common)
        options["allowRemovingReachableBrokers"] = override
    else:
        results = run_failback(cluster, region, sink_restored=args["sink_restored"], **common)
        options["sinkRestored"] = args["sink_restored"]
    options["via"] = "ansible"
    return results, options


def _summary(
    results: list,
    acted: list[str],
    check: bool,
    seconds: float | None,
    audit: Path,
) -> list[str]:
    """One line per step, what acted (or what to do now), the audit record."""
    lines = []
    width = max((len(r.name) for r in results), default=0)
    for i, r in enumerate(results, 1):
        lines.append(
            f"{i:>2}. {r.name:<{width}}  {r.status:<7} {r.seconds:5.1f}s  {_first_line(r.did)}"
        )
    if results and results[-1].failed:
        lines.append(RESUME_HINT)
    elif check:
        lines.append("nothing was changed")
    else:
        lines.append(f"acted: {', '.join(acted)}" if acted else "nothing to do: no step acted")
    if seconds is not None:
        lines.append(f"every partition took a write {seconds:.1f}s after the failover started")
    lines.append(f"audit record: {audit}")
    return lines


def _play_vault_secrets(loader: Any) -> list:
    """The vault secrets this ansible-playbook was given (--vault-password-file,
    --vault-id, ANSIBLE_VAULT_PASSWORD_FILE): the inventory is read with them."""
    vault = getattr(loader, "_vault", None)
    return list(getattr(vault, "secrets", None) or [])


def _inventory_of(task_vars: dict) -> str:
    """The inventory file of the play's host, else of the first host of the brokers group
    (a play on the implicit localhost has no inventory_file of its own)."""
    own = task_vars.get("inventory_file")
    if own:
        return str(own)
    hostvars = task_vars.get("hostvars") or {}
    for host in (task_vars.get("groups") or {}).get(BROKER_GROUP) or ():
        path = hostvars[host].get("inventory_file")
        if path:
            return str(path)
    raise AnsibleActionFail(
        f"no inventory file: the inventory has no '{BROKER_GROUP}' group (name one with "
        "ansible-playbook -i inventories/<env>, or set the inventory option)"
    )


def _audit_dir(given: str | None) -> Path:
    return Path(given or os.environ.get("BROKER_OPS_AUDIT_DIR") or DEFAULT_AUDIT_DIR)
