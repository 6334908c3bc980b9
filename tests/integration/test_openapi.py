"""The management API against its OpenAPI document (docs/openapi.yaml), with real brokers.

Every response the tests provoke is validated against the schema of its path,
method and status in the document: ``Contract`` turns the OpenAPI 3.0 schemas
into JSON Schema (``$ref`` inlined, ``nullable`` as ``anyOf [..., null]``) and
checks them with jsonschema's Draft 4 validator (OpenAPI 3.0's dialect is
Draft 4/5 based: boolean ``exclusiveMinimum``, no type arrays). Validation is
strict: an object may only carry the properties the document lists, so a field
the broker sends without documenting it fails the test. Requests that succeed
are checked too: their body against the request schema, their query
parameters against the documented ones.
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from broker.backup import api as backup_api
from broker.demo.localcluster import LocalCluster, wait_for
from broker.node import management
from broker.node import topology_api as api
from tests.integration.test_cluster import FAST
from tests.unit.test_ctl import closed_port

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "docs" / "openapi.yaml"
METHODS = ("get", "put", "post", "delete", "patch")
# Keywords that carry no constraint (or that OpenAPI has and JSON Schema has not).
ANNOTATIONS = {"nullable", "example", "description", "title", "default", "discriminator"}
ANNOTATIONS |= {"externalDocs", "deprecated", "readOnly", "writeOnly", "xml"}
# Responses any path may give (components/responses), besides those an operation lists.
GENERIC = {401: "Unauthorized", 404: "NotFound", 405: "MethodNotAllowed"}
GENERIC |= {411: "LengthRequired", 413: "PayloadTooLarge", 500: "InternalError"}
TOKEN = "s3cret-token"


class Contract:
    """The OpenAPI document as a test oracle; records which (path, method, status) were seen."""

    def __init__(self, path: Path = DOCUMENT):
        self.doc = yaml.safe_load(path.read_text())
        self.seen: set[tuple[str | None, str, int]] = set()
        self._paths = [
            (template, re.compile(re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template)) + r"\Z"))
            for template in self.doc["paths"]
        ]

    def resolve(self, node: Any) -> Any:
        while isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            assert ref.startswith("#/"), f"only local references are supported: {ref}"
            node = self.doc
            for part in ref[2:].split("/"):
                node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def json_schema(self, node: Any) -> Any:
        """An OpenAPI 3.0 schema as strict Draft 4 JSON Schema, references inlined."""
        node = self.resolve(node)
        if not isinstance(node, dict):
            return node
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in ANNOTATIONS or key.startswith("x-"):
                continue
            if key == "properties":
                out[key] = {name: self.json_schema(s) for name, s in value.items()}
            elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
                out[key] = self.json_schema(value)
            elif key in ("allOf", "anyOf", "oneOf"):
                out[key] = [self.json_schema(s) for s in value]
            else:
                out[key] = value
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        if node.get("nullable"):
            out = {"anyOf": [out, {"type": "null"}]}
        return out

    def validate(self, schema: Any, instance: Any, what: str) -> None:
        validator = jsonschema.Draft4Validator(self.json_schema(schema))
        error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
        if error is not None:
            where = "/".join(map(str, error.absolute_path)) or "(root)"
            pytest.fail(f"{what}: at {where}: {error.message}", pytrace=False)

    def route(self, path: str) -> str | None:
        """The documented path template that ``path`` matches."""
        return next((t for t, regex in self._paths if regex.match(path)), None)

    def operation(self, method: str, path: str) -> dict | None:
        template = self.route(path)
        item = self.doc["paths"].get(template) or {}
        return item.get(method.lower())

    def parameters(self, method: str, path: str) -> list[dict]:
        item = self.doc["paths"][self.route(path)]
        op = item[method.lower()]
        return [self.resolve(p) for p in item.get("parameters", []) + op.get("parameters", [])]

    def response(self, method: str, path: str, status: int) -> dict:
        """The operation's documented response, else the generic one the status allows:
        an unknown path may answer 401 or 404, an unknown method on a known path 401 or
        405, and any operation 411, 413 or 500."""
        op = self.operation(method, path)
        if op is not None and str(status) in op["responses"]:
            return self.resolve(op["responses"][str(status)])
        if self.route(path) is None:
            allowed = {401, 404}
        elif op is None:
            allowed = {401, 405}
        else:
            allowed = {411, 413, 500}
        assert status in allowed, f"{method} {path}: {status} is not documented"
        return self.resolve({"$ref": f"#/components/responses/{GENERIC[status]}"})

    def check_response(self, method, path, status, content_type, body: bytes, headers=None):
        """Validate one response (its documented headers too, when given); returns the
        parsed body."""
        self.seen.add((self.route(path), method, status))
        spec = self.response(method, path, status)
        what = f"{method} {path} -> {status}"
        if headers is not None:
            present = {name.lower() for name in headers}
            for name in spec.get("headers", {}):
                assert name.lower() in present, f"{what}: no {name} header"
        content = spec.get("content")
        if not content:
            assert not body, f"{what}: body {body[:200]!r} where none is documented"
            return None
        media = (content_type or "").split(";")[0].strip()
        assert media in content, f"{what}: {content_type} not among {sorted(content)}"
        if media != "application/json":
            return body.decode()
        doc = json.loads(body)
        self.validate(content[media]["schema"], doc, what)
        return doc

    def check_request(self, method: str, path: str, query: dict, body: Any) -> None:
        """A request the broker accepted must be one the document describes."""
        what = f"request {method} {path}"
        known = {p["name"]: p for p in self.parameters(method, path) if p["in"] == "query"}
        for name, value in query.items():
            assert name in known, f"{what}: undocumented query parameter {name}"
            if known[name]["schema"]["type"] == "boolean":
                assert value in ("true", "false"), f"{what}: {name}={value}"
            else:
                self.validate(known[name]["schema"], int(value), f"{what}: {name}")
        spec = self.resolve(self.operation(method, path).get("requestBody"))
        if body is None:
            assert not (spec and spec.get("required")), f"{what}: the body is required"
        else:
            assert spec, f"{what}: sent a body where none is documented"
            self.validate(spec["content"]["application/json"]["schema"], body, what)


class Api:
    """Requests to one cluster, each response checked against the contract."""

    def __init__(self, contract: Contract, cluster: LocalCluster, token: str | None = None):
        self.contract = contract
        self.cluster = cluster
        self.token = token

    def call(
        self,
        node: int,
        method: str,
        target: str,
        body: Any = None,
        *,
        expect: int,
        raw: bytes | None = None,
        token: bool = True,
    ) -> Any:
        """``target`` is a path with an optional query; ``raw`` is sent as the body instead
        of ``body`` as JSON. Asserts the status and returns the checked, parsed body."""
        url = urlsplit(target)
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"Content-Type": "application/json"}
        if self.token and token:
            headers["Authorization"] = f"Bearer {self.token}"
        status, content_type, answer, answer_headers = http_request(
            self.cluster.management(node), method, target, data, headers
        )
        assert status == expect, f"{method} {target}: {status} {answer[:300]!r}"
        if 200 <= status < 300:
            query = dict(p.split("=", 1) for p in url.query.split("&") if p)
            self.contract.check_request(method, url.path, query, body)
        return self.contract.check_response(
            method, url.path, status, content_type, answer, answer_headers
        )

    def cluster_doc(self, node: int = 0) -> dict:
        return self.call(node, "GET", "/actuator/cluster", expect=200)

    def wait_completed(self, change_id: int, node: int = 0) -> dict:
        def done():
            doc = self.cluster_doc(node)
            last = doc["lastChange"]
            finished = doc["pendingChange"] is None and last and last["id"] >= change_id
            return doc if finished else None

        return wait_for(done, 20, f"change {change_id} to complete")


def http_request(base: str, method: str, target: str, data: bytes | None, headers: dict):
    """(status, content type, body, headers) of one request; http.client for full control."""
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        conn.request(method, target, body=data, headers=headers)
        response = conn.getresponse()
        return (
            response.status,
            response.getheader("Content-Type"),
            response.read(),
            dict(response.getheaders()),
        )
    finally:
        conn.close()


def raw_request(base: str, method: str, target: str, headers: dict) -> tuple[int, str, bytes]:
    """Send only a request head (for bodies the server must refuse before reading them)."""
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        conn.putrequest(method, target)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        conn.close()


def brokerctl(*args: str) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "broker.cli", *args],
        capture_output=True,
        cwd=ROOT,
        timeout=60,
    )
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


@pytest.fixture(scope="module")
def contract() -> Contract:
    return Contract()


# --- the document itself --------------------------------------------------------------


def test_the_document_covers_every_route_and_nothing_else(contract):
    routes = {
        (r.pattern, r.method.lower()) for r in (*management.ROUTES, *api.ROUTES, *backup_api.ROUTES)
    }
    documented = {(p, m) for p, item in contract.doc["paths"].items() for m in item if m in METHODS}
    assert routes - documented == set(), "routes the document does not describe"
    assert documented - routes == set(), "documented operations the broker does not serve"


def test_the_document_is_well_formed(contract):
    doc = contract.doc
    assert doc["openapi"] == "3.0.3"
    for name, schema in doc["components"]["schemas"].items():
        jsonschema.Draft4Validator.check_schema(contract.json_schema(schema))  # refs resolve
        assert "$ref" in schema or "type" in schema or "oneOf" in schema, name
    for path, item in doc["paths"].items():
        for method in (m for m in item if m in METHODS):
            op = item[method]
            assert op.get("summary") and op.get("operationId"), f"{method} {path}"
            assert "401" in op["responses"], f"{method} {path}: every path may answer 401"
            for status, response in op["responses"].items():
                assert contract.resolve(response)["description"], f"{method} {path} {status}"
            names = {p["name"] for p in contract.parameters(method, path) if p["in"] == "path"}
            assert names == set(re.findall(r"\{(\w+)\}", path)), f"{method} {path}"
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_the_extensions_are_marked(contract):
    schemas = contract.doc["components"]["schemas"]
    topology_broker = schemas["Topology"]["properties"]["brokers"]["items"]
    marked = [
        contract.doc["components"]["parameters"]["AllowRemovingReachableBrokers"],
        schemas["ClusterTopology"]["properties"]["exportingPaused"],
        schemas["ClusterTopology"]["properties"]["partitionsCount"],
        topology_broker["properties"]["alive"],
        topology_broker["properties"]["region"],
        topology_broker["properties"]["partitions"]["items"]["properties"]["term"],
        schemas["PartitionStatus"]["properties"]["term"],
    ]
    for node in marked:
        assert node.get("x-extension") is True and "extension" in node["description"]
    enums = {
        name: schemas[name]["enum"]
        for name in ("BrokerState", "PartitionState", "ExporterState", "ChangeStatus")
    }
    assert enums == {
        "BrokerState": ["UNKNOWN", "ACTIVE", "JOINING", "LEAVING", "LEFT"],
        "PartitionState": ["UNKNOWN", "JOINING", "ACTIVE", "LEAVING"],
        "ExporterState": ["ENABLED", "DISABLED", "CONFIG_NOT_FOUND"],
        "ChangeStatus": ["IN_PROGRESS", "COMPLETED", "FAILED", "CANCELLED"],
    }
    assert len(schemas["Operation"]["properties"]["operation"]["enum"]) == 9


def test_nullable_and_strictness_of_the_validator(contract):
    change = {"$ref": "#/components/schemas/Change"}
    ok = {"id": 1, "status": "COMPLETED", "startedAt": "t", "completedAt": None}
    contract.validate(change, ok, "a change with completedAt null")
    with pytest.raises(pytest.fail.Exception, match="'surprise' was unexpected"):
        contract.validate(change, {**ok, "surprise": 1}, "an undocumented field")
    with pytest.raises(pytest.fail.Exception, match="None is not of type 'integer'"):
        contract.validate(change, {**ok, "id": None}, "id is not nullable")


# --- a real cluster -------------------------------------------------------------------------


@pytest.fixture
def dual(tmp_path):
    exporters = {
        f"region{r}": {"type": "file", "args": {"path": str(tmp_path / f"export{r}")}}
        for r in (0, 1)
    }
    c = LocalCluster(
        str(tmp_path / "dr"),
        size=4,
        partitions=4,
        replication_factor=4,
        overrides={
            **FAST,
            "exporters": exporters,
            "data": {
                "backup": {"store": "filesystem", "filesystem": {"directory": str(tmp_path / "bk")}}
            },
        },
    )
    try:
        yield c
    finally:
        c.stop_all()


def test_every_response_of_a_real_cluster_matches_the_document(contract, dual):
    c = dual
    c.start()
    c.wait_leaders()
    a = Api(contract, c)
    check_reads(a)
    check_malformed_requests(a, c)
    check_changes(a)
    check_brokerctl(c)
    check_exporters(a)
    check_backups(a)
    check_conflicts(a, c)
    statuses = {status for _, _, status in contract.seen}
    assert {200, 202, 204, 400, 404, 405, 409, 411, 413, 503} <= statuses
    served = {(path, method) for path, method, status in contract.seen if status < 300}
    routes = {(r.pattern, r.method) for r in (*management.ROUTES, *api.ROUTES, *backup_api.ROUTES)}
    assert routes - served == set(), "operations never answered successfully"


def check_reads(a: Api) -> None:
    for probe in ("", "/status", "/startup", "/readiness", "/liveness"):
        assert a.call(1, "GET", f"/actuator/health{probe}", expect=200)["status"] == "UP"
    topology = a.call(0, "GET", "/v2/topology", expect=200)
    assert [b["nodeId"] for b in topology["brokers"]] == [0, 1, 2, 3]
    assert [b["brokerId"] for b in topology["brokers"]] == ["0", "1", "2", "3"]
    assert a.call(0, "GET", "/v2/status", expect=204) is None  # every partition led
    partitions = a.call(2, "GET", "/actuator/partitions", expect=200)
    assert sorted(partitions) == ["1", "2", "3", "4"]
    metrics = a.call(3, "GET", "/actuator/prometheus", expect=200)
    assert "# TYPE" in metrics
    doc = a.cluster_doc()
    assert doc["pendingChange"] is None and doc["partitionsCount"] == 4
    assert topology["clusterId"] == doc["clusterId"] == "dual-region"
    last = doc["lastChange"]
    assert topology["lastCompletedChangeId"] == (str(last["id"]) if last else "-1")
    exporters = a.call(0, "GET", "/actuator/exporters", expect=200)
    assert exporters == [
        {"exporterId": "region0", "status": "ENABLED"},
        {"exporterId": "region1", "status": "ENABLED"},
    ]
    a.call(0, "GET", "/actuator/nothing-here", expect=404)
    a.call(0, "DELETE", "/actuator/cluster", expect=405)
    a.call(0, "GET", "/actuator/exporters/region0/enable", expect=405)


def check_malformed_requests(a: Api, c: LocalCluster) -> None:
    brokers = "/actuator/cluster/brokers"
    for target, body, raw in [
        (brokers, {"brokers": [0]}, None),  # not an array
        (brokers, None, b"[0, 1,"),  # not JSON
        (brokers, None, b""),  # no body
        (brokers, ["zero"], None),
        (f"{brokers}?replicationFactor=9", [0, 1, 2, 3], None),  # more than the brokers
        (f"{brokers}?dryRun=maybe", [0, 1, 2, 3], None),
    ]:
        a.call(0, "POST", target, body, raw=raw, expect=400)
    a.call(0, "PATCH", "/actuator/cluster", [1], expect=400)
    a.call(0, "PATCH", "/actuator/cluster", {"brokers": {"count": 0}}, expect=400)
    a.call(0, "PATCH", "/actuator/cluster?force=true", {"brokers": {"add": [4]}}, expect=400)
    a.call(0, "DELETE", f"{brokers}/9", expect=400)  # not a member
    a.call(0, "POST", f"{brokers}/x", expect=400)  # not a broker id
    # The reachable-broker guard, in both request forms: nothing is live-forced out.
    refused = a.call(0, "POST", f"{brokers}?force=true", [0, 2], expect=400)
    assert "reachable" in refused["message"]
    a.call(1, "PATCH", "/actuator/cluster?force=true", {"brokers": {"remove": [1, 3]}}, expect=400)
    assert a.cluster_doc()["pendingChange"] is None
    # Bodies the server refuses before reading them.
    base = c.management(0)
    status, ctype, body = raw_request(
        base, "POST", brokers, {"Content-Length": str(management.MAX_BODY_SIZE + 1)}
    )
    assert status == 413
    a.contract.check_response("POST", brokers, status, ctype, body)
    chunked = {"Transfer-Encoding": "chunked"}
    status, ctype, body = raw_request(base, "PATCH", "/actuator/cluster", chunked)
    assert status == 411
    a.contract.check_response("PATCH", "/actuator/cluster", status, ctype, body)


def check_changes(a: Api) -> None:
    brokers = "/actuator/cluster/brokers"
    # Dry runs: 200, a plan, no change id, nothing applied.
    version = a.cluster_doc()["version"]
    plan = a.call(0, "POST", f"{brokers}?dryRun=true&replicationFactor=2", [0, 1, 2, 3], expect=200)
    assert plan["changeId"] is None
    assert "PARTITION_LEAVE" in {op["operation"] for op in plan["plannedChanges"]}
    remove_3 = {"brokers": {"remove": [3]}, "partitions": {"replicationFactor": 3}}
    plan = a.call(2, "PATCH", "/actuator/cluster?dryRun=true", remove_3, expect=200)
    assert plan["plannedChanges"][-1] == {"operation": "BROKER_REMOVE", "brokerId": 3}
    a.call(1, "POST", f"{brokers}/5?dryRun=true", expect=200)
    a.call(1, "DELETE", f"{brokers}/3?dryRun=true", expect=400)  # RF 4 needs 4 brokers
    assert a.cluster_doc()["version"] == version
    # Changes to what the cluster already is: 202 with an empty plan, completed at once.
    add_2_rf_4 = {"brokers": {"add": [2]}, "partitions": {"replicationFactor": 4}}
    for node, method, target, body in [
        (0, "POST", f"{brokers}?replicationFactor=4", [0, 1, 2, 3]),
        (2, "POST", brokers, ["0", "1", "2", "3"]),  # numeric strings, forwarded to broker 0
        (3, "PATCH", "/actuator/cluster", {"brokers": {"count": 4}}),
        (1, "PATCH", "/actuator/cluster", add_2_rf_4),
        (1, "POST", f"{brokers}/3", None),
    ]:
        answer = a.call(node, method, target, body, expect=202)
        assert answer["plannedChanges"] == [] and answer["changeId"] >= 1
        a.wait_completed(answer["changeId"])
    # A real change: RF 4 -> 3, every partition leaves one broker (Raft reconfiguration).
    rf_3 = {"partitions": {"replicationFactor": 3}}
    answer = a.call(3, "PATCH", "/actuator/cluster", rf_3, expect=202)
    assert [op["operation"] for op in answer["plannedChanges"]].count("PARTITION_LEAVE") == 4
    doc = a.wait_completed(answer["changeId"])
    assert doc["lastChange"]["status"] == "COMPLETED"
    assert sum(len(b["partitions"]) for b in doc["brokers"]) == 12
    topology = a.call(0, "GET", "/v2/topology", expect=200)
    assert topology["lastCompletedChangeId"] == str(doc["lastChange"]["id"])
    assert topology["replicationFactor"] == 3
    plan = a.call(1, "DELETE", f"{brokers}/3?dryRun=true", expect=200)
    assert plan["plannedChanges"][-1] == {"operation": "BROKER_REMOVE", "brokerId": 3}
    answer = a.call(0, "POST", "/actuator/rebalance", expect=200)
    assert answer["message"]


def check_exporters(a: Api) -> None:
    exporters = "/actuator/exporters"
    a.call(0, "POST", f"{exporters}/nowhere/disable", expect=404)
    a.call(0, "POST", f"{exporters}/nowhere/enable", expect=404)
    a.call(0, "POST", f"{exporters}/region1/enable", {"initializeFrom": "nowhere"}, expect=400)
    a.call(0, "POST", f"{exporters}/region1/enable", ["region0"], expect=400)
    answer = a.call(1, "POST", f"{exporters}/region1/disable", expect=202)  # forwarded
    ops = answer["plannedChanges"]
    assert len(ops) == 12 and {op["operation"] for op in ops} == {"PARTITION_DISABLE_EXPORTER"}
    doc = a.wait_completed(answer["changeId"])
    replicas = [p for b in doc["brokers"] for p in b["partitions"]]
    assert len(replicas) == 12
    assert all(
        {"id": "region1", "state": "DISABLED"} in p["config"]["exporting"]["exporters"]
        for p in replicas
    )
    assert a.call(0, "GET", exporters, expect=200)[1] == {
        "exporterId": "region1",
        "status": "DISABLED",
    }
    from_region0 = {"initializeFrom": "region0"}
    plan = a.call(0, "POST", f"{exporters}/region1/enable?dryRun=true", from_region0, expect=200)
    assert {op.get("initializeFrom") for op in plan["plannedChanges"]} == {"region0"}
    answer = a.call(0, "POST", f"{exporters}/region1/enable", expect=202)
    a.wait_completed(answer["changeId"])
    assert {e["status"] for e in a.call(2, "GET", exporters, expect=200)} == {"ENABLED"}
    a.call(2, "POST", "/actuator/exporting/pause", expect=204)
    assert a.cluster_doc(2)["exportingPaused"] is True
    a.call(2, "POST", "/actuator/exporting/resume", expect=204)
    assert a.cluster_doc(2)["exportingPaused"] is False


def check_brokerctl(c: LocalCluster) -> None:
    with closed_port() as port:  # the first URL refuses; the second answers
        urls = f"http://127.0.0.1:{port},{c.management(1)}"
        code, out, err = brokerctl("--management", urls, "cluster", "show", "--json")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert [b["id"] for b in doc["brokers"]] == [0, 1, 2, 3]
    assert brokerctl("--management", c.management(2), "exporters", "list") == (
        0,
        "EXPORTER  STATUS\nregion0   ENABLED\nregion1   ENABLED\n",
        "",
    )
    scale = ["cluster", "scale", "--brokers", "0,1,2,3", "--wait"]
    code, out, _ = brokerctl("--management", c.management(3), *scale)
    assert code == 0 and out.splitlines()[-1].endswith("COMPLETED")
    force = ["cluster", "force-remove", "1", "3", "--dry-run"]
    code, out, err = brokerctl("--management", c.management(0), *force)
    assert code == 1 and "refusing to force-remove brokers [1, 3]: they are reachable" in err


def check_backups(a: Api) -> None:
    taken = a.call(0, "POST", "/actuator/backups", {"backupId": 1}, expect=202)
    assert sorted(c["partitionId"] for c in taken["checkpoints"]) == [1, 2, 3, 4]
    a.call(1, "POST", "/actuator/backups", {"backupId": 1}, expect=409)
    a.call(1, "POST", "/actuator/backups", {"backupId": 0}, expect=400)
    wait_for(
        lambda: a.call(2, "GET", "/actuator/backups/1", expect=200)["state"] == "COMPLETED",
        30,
        "backup 1 to complete",
    )
    assert [b["backupId"] for b in a.call(3, "GET", "/actuator/backups", expect=200)] == [1]
    assert a.call(0, "GET", "/actuator/backups/2", expect=200)["state"] == "DOES_NOT_EXIST"
    a.call(0, "DELETE", "/actuator/backups/1", expect=204)
    a.call(0, "DELETE", "/actuator/backups/1", expect=404)


def check_conflicts(a: Api, c: LocalCluster) -> None:
    """A change that cannot finish (broker 4 never starts) blocks the next: 409."""
    brokers = "/actuator/cluster/brokers"
    answer = a.call(0, "POST", f"{brokers}/4", expect=202)
    assert answer["plannedChanges"][0] == {"operation": "BROKER_ADD", "brokerId": 4}
    doc = a.cluster_doc()
    pending = doc["pendingChange"]
    assert pending["id"] == answer["changeId"] and pending["status"] == "IN_PROGRESS"
    assert pending["completed"] == [] and pending["pending"] == answer["plannedChanges"]
    a.call(0, "POST", brokers, [0, 1, 2, 3], expect=409)
    a.call(0, "PATCH", "/actuator/cluster", {"brokers": {"remove": [4]}}, expect=409)
    a.call(0, "DELETE", f"{brokers}/3", expect=409)
    a.call(0, "POST", "/actuator/exporters/region0/disable", expect=409)
    code, out, _ = brokerctl("--management", c.management(0), "cluster", "show")
    assert code == 0 and f"Pending change: {pending['id']} IN_PROGRESS, 0 of" in out
    code, _, err = brokerctl("--management", c.management(0), "cluster", "add", "5")
    assert code == 1 and err.startswith("brokerctl: HTTP 409: another topology change")
    # The coordinator (broker 0) is gone: brokers that would forward to it answer 503.
    c.kill(0)
    a.call(1, "POST", brokers, [0, 1, 2, 3], expect=503)
    a.call(2, "POST", "/actuator/exporters/region0/disable", expect=503)


# --- a token ------------------------------------------------------------------------------


def test_with_a_token_every_operation_needs_it(contract, tmp_path):
    c = LocalCluster(
        str(tmp_path / "token"),
        size=1,
        partitions=1,
        replication_factor=1,
        overrides={**FAST, "management": {"token": TOKEN}},
    )
    try:
        c.start(wait=False)  # LocalCluster's own health probe has no token
        authorized = Api(contract, c, token=TOKEN)

        def started():
            token = {"Authorization": f"Bearer {TOKEN}"}
            try:
                answer = http_request(
                    c.management(0), "GET", "/actuator/health/startup", None, token
                )
            except OSError:  # not listening yet
                return False
            return answer[0] == 200

        wait_for(started, 30, "the broker with a token to start")
        for path, item in contract.doc["paths"].items():
            concrete = path.replace("{id}", "0")
            for method in (m for m in item if m in METHODS):
                body = authorized.call(0, method.upper(), concrete, expect=401, token=False)
                assert body == {"message": "missing or invalid bearer token"}
        authorized.call(0, "GET", "/actuator/nothing", expect=401, token=False)
        status, _, _, headers = http_request(
            c.management(0), "GET", "/v2/topology", None, {"Authorization": "Bearer wrong"}
        )
        assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
        assert authorized.cluster_doc()["brokers"][0]["id"] == 0
        options = ["--management", c.management(0), "--management-token", TOKEN]
        code, out, _ = brokerctl(*options, "exporters", "list")
        assert (code, out) == (0, "No exporters configured\n")
    finally:
        c.stop_all()
