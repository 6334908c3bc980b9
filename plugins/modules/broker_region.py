#!/usr/bin/python
"""Documentation of the broker_region action (the work is in plugins/action/broker_region.py)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: broker_region
short_description: Fail over from a lost region, or fail a recreated region back
description:
  - Runs the documented dual-region procedures of C(broker.ops) from Ansible, the same
    code that C(fab failover --lost-region REGION) and C(fab failback --region REGION)
    run. Every step reads the cluster, acts only when its desired state does not hold,
    and reports what it saw and did; the procedure stops at the first failed step, and
    running it again resumes there.
  - O(procedure=failover) confirms that O(region) is lost (nothing of it answers, and the
    survivors see it dead), checks the surviving side, force-removes the lost brokers,
    waits for the change and for new leaders, disables the lost region's exporter and
    verifies a write and a read on every partition. A region that still answers is
    refused (see O(allow_removing_reachable_brokers)).
  - O(procedure=failback) starts the recreated region's brokers (C(broker start --config)
    on the host, locally or over SSH, or C(systemctl start)), restores its export sink
    from the surviving one with exporting paused, enables its exporter from the survivor's
    position, adds its brokers back at the full replication factor and verifies
    replication factor and per-region placement.
  - An action plugin, run once on the controller (C(hosts=localhost)); no module is sent
    to any host. The Python running C(ansible-playbook) must import C(broker)
    (the project's C(.venv)).
  - In check mode the procedure runs as a dry run and shows the management API's own plan
    of the topology change; nothing is changed.
  - Every run, check mode included, writes a JSON audit record like the C(fab) tasks, under
    O(audit_dir), else C($BROKER_OPS_AUDIT_DIR), else C(var/ops/audit) of the project.
version_added: "0.1.0"
options:
  procedure:
    description: Which procedure to run.
    type: str
    required: true
    choices: [failover, failback]
  region:
    description:
      - For V(failover) the lost region, for V(failback) the recreated region, by name
        (C(broker_region) in the inventory, for example V(region1)).
    type: str
    required: true
  confirm:
    description:
      - The region's name again, to confirm a run that changes the cluster. Outside check
        mode the action refuses unless O(confirm) equals O(region).
    type: str
    default: ""
  inventory:
    description:
      - The inventory (a file or a directory, as for C(ansible-playbook -i)) describing the
        brokers, read with C(broker.ops.load_inventory), which uses ansible-core's own
        inventory and variable machinery and this play's vault secrets, so vault-encrypted
        values (a C(!vault) C(broker_management_token), vault-encrypted vars files)
        decrypt with the password given to C(ansible-playbook).
      - The management token and every vault-encrypted value are redacted from this
        task's output, its result and the audit record.
      - Default the C(inventory_file) of the play's host, else of the first host of the
        C(brokers) group.
    type: path
  api:
    description:
      - The management API form of the topology-change requests. V(8.6) is Camunda 8.6/8.7
        (C(POST /actuator/cluster/brokers)); V(8.8) is 8.8+ (C(PATCH /actuator/cluster)).
    type: str
    choices: ["8.6", "8.8"]
    default: "8.6"
  allow_removing_reachable_brokers:
    description:
      - DANGER. Force the region out even though it still answers (a network cut rather
        than a loss), stopping whatever of it runs. Forcing out a live region splits the
        cluster and loses the writes it still takes. Only for O(procedure=failover).
    type: bool
    default: false
  sink_restored:
    description:
      - The recreated region's export sink was restored by hand; do not copy it. Only for
        O(procedure=failback).
    type: bool
    default: false
  audit_dir:
    description: Directory of the JSON audit records.
    type: path
attributes:
  action:
    description: Indicates this has a corresponding action plugin.
    support: full
  check_mode:
    description: Can run in check mode and return changed status prediction.
    support: full
    details: Check mode is the procedure's dry run; it never reports a change.
  diff_mode:
    description: Returns details on what has changed (or possibly needs changing in check_mode).
    support: none
  platform:
    description: Target OS/families that can be operated against.
    support: N/A
    platforms: controller
notes:
  - The playbooks C(playbooks/failover.yml) and C(playbooks/failback.yml) wrap this action,
    and take the confirmation as C(-e broker_failover_confirm=REGION) or
    C(-e broker_failback_confirm=REGION).
  - The action plugin is found through C(action_plugins = plugins/action) in C(ansible.cfg)
    (or C(ANSIBLE_ACTION_PLUGINS)). Without it Ansible runs this file as a module, which
    only fails, saying so.
author:
  - dual-region broker toolkit
"""

EXAMPLES = r"""
- name: Show the failover plan for a lost region1 (run with --check)
  broker_region:
    procedure: failover
    region: region1

- name: Fail over from region1, which is lost
  broker_region:
    procedure: failover
    region: region1
    confirm: region1

- name: Bring region1 back, with the 8.8 form of the management API
  broker_region:
    procedure: failback
    region: region1
    confirm: region1
    api: "8.8"
"""

RETURN = r"""
outcome:
  description: V(completed), V(failed at <step>) or V(stopped after <step>).
  type: str
  returned: always
  sample: completed
steps:
  description: Every step that ran, in order.
  type: list
  elements: dict
  returned: always
  contains:
    name:
      description: The step (for example V(force_remove)).
      type: str
    status:
      description:
        - V(done) (acted, or a check or wait passed), V(skipped) (nothing to do, or a dry
          run) or V(failed).
      type: str
    saw:
      description: What the step found, in words.
      type: str
    did:
      description: What the step did; in check mode the API's own plan.
      type: str
    seconds:
      description: How long the step took.
      type: float
acted:
  description: The steps that changed something; RV(changed) is true when there is one.
  type: list
  elements: str
  returned: always
  sample: [force_remove, disable_exporter]
dry_run:
  description: Whether this was a dry run (check mode).
  type: bool
  returned: always
procedure:
  description: The procedure that ran.
  type: str
  returned: always
region:
  description: The region it ran for.
  type: str
  returned: always
inventory:
  description: The inventory file that was read.
  type: str
  returned: always
audit:
  description: Path of the JSON audit record of this run.
  type: str
  returned: always
failover_seconds:
  description:
    - Seconds from the start of a failover to the first acknowledged write on every
      partition.
  type: float
  returned: when a failover verified writes
msg:
  description:
    - The outcome and what acted; when a step failed, what it saw and did. The task's
      output also shows every step as it runs and a summary table at the end.
  type: str
  returned: always
"""

NOT_LOADED = (
    "broker_region is an action plugin, but Ansible ran its documentation stub as a module: "
    "the action plugin was not loaded. Add `action_plugins = plugins/action` to the "
    "[defaults] of ansible.cfg (or set ANSIBLE_ACTION_PLUGINS to that directory)."
)


def main() -> None:
    from ansible.module_utils.basic import AnsibleModule

    names = (
        "procedure",
        "region",
        "confirm",
        "inventory",
        "api",
        "allow_removing_reachable_brokers",
        "sink_restored",
        "audit_dir",
    )
    module = AnsibleModule(
        argument_spec={name: {"type": "raw"} for name in names}, supports_check_mode=True
    )
    module.fail_json(msg=NOT_LOADED)


if __name__ == "__main__":
    main()
