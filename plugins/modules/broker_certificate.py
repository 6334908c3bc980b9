#!/usr/bin/python
"""Ensure the cluster CA, a broker's or a client's certificate exists (broker.certs)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: broker_certificate
short_description: Ensure the cluster CA, a broker certificate or a client certificate exists
description:
  - Creates the cluster CA once (O(kind=ca)), or issues the key and certificate of a broker
    (O(kind=broker)) or of a client such as C(brokerctl) (O(kind=client)), signed by the
    cluster CA, with the identity the broker checks (C(broker.certs), the same code as
    C(python -m broker.certs)). Keys are EC P-256, certificates SHA-256 signed.
  - "A broker's certificate: CN C(broker-<node_id>.<cluster>), O C(<cluster>), OU C(<region>);
    subject alternative names: the URI C(urn:broker:<quoted cluster>:node:<node_id>) and every
    entry of O(names) (strings that parse as IP addresses become IP addresses, the others DNS
    names); extended key usage serverAuth and clientAuth."
  - Idempotent. A certificate is issued only when none is in place, or the one in place is not
    signed by O(ca_cert), names another identity or other names, does not match its key, or has
    O(renew_before_days) or fewer days left; or when O(renew=true). Otherwise nothing is
    written and the task reports no change.
  - The existing CA is never replaced, unless O(force=true) (a CA missing its key, or another
    cluster's CA at O(cert), fails the task).
  - Meant to run on the controller (C(delegate_to=localhost)); the Python running the module
    must import C(broker) (the project's C(.venv), C(ansible_playbook_python)).
  - No key material is ever returned or logged; keys are written with mode 0600.
version_added: "0.1.0"
options:
  kind:
    description: What to ensure.
    type: str
    choices: [ca, broker, client]
    default: broker
  cluster:
    description: The cluster name (C(cluster.clusterName)), part of every identity.
    type: str
    required: true
  node_id:
    description: The broker's node id (C(cluster.nodeId)). Required for O(kind=broker).
    type: int
  region:
    description: The broker's region (C(cluster.region)). Required for O(kind=broker).
    type: str
  names:
    description:
      - Every DNS name and IP address the broker is reached by (peers, clients, the role's
        own probes). Only for O(kind=broker).
    type: list
    elements: str
    default: []
  name:
    description: The client's name (CN and identity). Required for O(kind=client).
    type: str
  ca_cert:
    description: The cluster CA certificate. Required for O(kind=broker) and O(kind=client).
    type: path
  ca_key:
    description: The cluster CA private key. Required for O(kind=broker) and O(kind=client).
    type: path
  cert:
    description: The certificate file to ensure (the CA certificate for O(kind=ca)).
    type: path
    required: true
  key:
    description: The private key file to ensure (mode 0600).
    type: path
    required: true
  days:
    description: Validity of a new certificate; default 3650 for the CA, 365 otherwise.
    type: int
  renew_before_days:
    description: Issue a new certificate when this many days or fewer are left.
    type: int
    default: 30
  renew:
    description: Issue a new broker or client certificate even though the one in place is valid.
    type: bool
    default: false
  force:
    description:
      - O(kind=ca) only. Replace an existing CA; every certificate it signed must then be
        reissued (see C(playbooks/rotate-certs.yml) for a rotation without downtime).
    type: bool
    default: false
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction.
    support: full
    details: Reports changed exactly when a run would issue, and why; writes nothing.
  diff_mode:
    description: Returns details on what has changed (or possibly needs changing in check_mode).
    support: full
    details: The certificate's subject, names, identity and validity; never the key.
  platform:
    description: Target OS/families that can be operated against.
    support: N/A
    platforms: controller
author:
  - dual-region broker toolkit
"""

EXAMPLES = r"""
- name: Create the cluster CA once, on the controller
  broker_certificate:
    kind: ca
    cluster: dual-region
    cert: /srv/tls/dual-region/ca.crt
    key: /srv/tls/dual-region/ca.key
  delegate_to: localhost
  run_once: true

- name: Issue broker 3's certificate
  broker_certificate:
    cluster: dual-region
    node_id: 3
    region: region1
    names: [brk-r1-h1, 198.18.2.11]
    ca_cert: /srv/tls/dual-region/ca.crt
    ca_key: /srv/tls/dual-region/ca.key
    cert: /srv/tls/dual-region/brokers/brk-r1-h1.crt
    key: /srv/tls/dual-region/brokers/brk-r1-h1.key
  delegate_to: localhost

- name: Issue a client certificate for brokerctl
  broker_certificate:
    kind: client
    cluster: dual-region
    name: ops
    ca_cert: /srv/tls/dual-region/ca.crt
    ca_key: /srv/tls/dual-region/ca.key
    cert: /srv/tls/dual-region/clients/ops.crt
    key: /srv/tls/dual-region/clients/ops.key
  delegate_to: localhost
"""

RETURN = r"""
reason:
  description: Why a certificate was (or in check mode would be) issued, or V(unchanged).
  type: str
  returned: always
  sample: signed by another CA
cert:
  description: The certificate file.
  type: str
  returned: always
key:
  description: The key file (its path only; never its content).
  type: str
  returned: always
certificate:
  description: The certificate in place after the task (before it, in check mode).
  type: dict
  returned: when a certificate is in place
  contains:
    subject:
      description: The subject, RFC 4514.
      type: str
    identity:
      description: The C(urn:broker:...) URI, none for the CA.
      type: str
    dns_names:
      description: DNS subject alternative names.
      type: list
      elements: str
    ip_addresses:
      description: IP address subject alternative names.
      type: list
      elements: str
    not_after:
      description: End of validity, ISO 8601 UTC.
      type: str
    days_left:
      description: Whole days of validity left.
      type: int
    sha256:
      description: SHA-256 fingerprint of the certificate.
      type: str
  sample:
    subject: OU=region1,O=dual-region,CN=broker-3.dual-region
    identity: urn:broker:dual-region:node:3
    dns_names: [brk-r1-h1]
    ip_addresses: [198.18.2.11]
    not_after: "2027-12-06T15:17:05+00:00"
    days_left: 364
"""

import os  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

SHOWN = ("subject", "identity", "dns_names", "ip_addresses", "not_after", "days_left", "sha256")


def _shown(info: dict) -> dict:
    return {k: info[k] for k in SHOWN if k in info}


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            kind=dict(type="str", choices=["ca", "broker", "client"], default="broker"),
            cluster=dict(type="str", required=True),
            node_id=dict(type="int"),
            region=dict(type="str"),
            names=dict(type="list", elements="str", default=[]),
            name=dict(type="str"),
            ca_cert=dict(type="path"),
            ca_key=dict(type="path", no_log=False),  # a path, not key material
            cert=dict(type="path", required=True),
            key=dict(type="path", required=True, no_log=False),  # a path
            days=dict(type="int"),
            renew_before_days=dict(type="int", default=30),
            renew=dict(type="bool", default=False),
            force=dict(type="bool", default=False),
        ),
        required_if=[
            ("kind", "broker", ("node_id", "region", "ca_cert", "ca_key")),
            ("kind", "client", ("name", "ca_cert", "ca_key")),
        ],
        supports_check_mode=True,
    )
    try:
        from broker import certs
    except ImportError as e:
        module.fail_json(
            msg=f"broker_certificate needs the broker package on the controller ({e}); run "
            "ansible-playbook from the project's .venv and delegate this task to localhost"
        )
    p = module.params
    check = module.check_mode
    try:
        if p["kind"] == "ca":
            result = certs.ensure_ca(
                p["cluster"],
                p["cert"],
                p["key"],
                days=p["days"] or certs.CA_DAYS,
                overwrite=p["force"],
                check=check,
            )
            before = {}
        elif check and not (os.path.exists(p["ca_cert"]) and os.path.exists(p["ca_key"])):
            # check mode before the CA exists (a first run): it would be created, then this
            module.exit_json(
                changed=True,
                reason=f"the CA {p['ca_cert']} does not exist yet",
                cert=p["cert"],
                key=p["key"],
            )
        else:
            before = _describe_existing(certs, p["cert"])
            common = dict(
                ca_cert=p["ca_cert"],
                ca_key=p["ca_key"],
                cert=p["cert"],
                key=p["key"],
                days=p["days"] or certs.CERT_DAYS,
                renew_before_days=p["renew_before_days"],
                renew=p["renew"],
                check=check,
            )
            if p["kind"] == "broker":
                result = certs.ensure_broker(
                    p["cluster"], p["node_id"], p["region"], p["names"], **common
                )
            else:
                result = certs.ensure_client(p["cluster"], p["name"], **common)
    except certs.CertError as e:
        module.fail_json(msg=str(e))
    except OSError as e:
        module.fail_json(msg=f"{e.filename or p['cert']}: {e.strerror or e}")

    out = dict(changed=result.changed, reason=result.reason, cert=result.cert, key=result.key)
    if result.info:
        out["certificate"] = _shown(result.info)
    if result.changed:
        after = (
            {"reason": result.reason} if check else {**_shown(result.info), "reason": result.reason}
        )
        out["diff"] = dict(
            before=_shown(before) if before else {},
            after=after,
            before_header=result.cert,
            after_header=result.cert,
        )
    module.exit_json(**out)


def _describe_existing(certs, path: str) -> dict:
    try:
        return certs.describe(path)
    except certs.CertError:
        return {}


if __name__ == "__main__":
    main()
