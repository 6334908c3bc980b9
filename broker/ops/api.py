"""A small client of one broker's management API (Zeebe-compatible, DESIGN section 5).

Two forms of the topology-change requests exist: Camunda 8.6/8.7 (``api="8.6"``,
``POST /actuator/cluster/brokers`` with the ids to keep) and 8.8+ (``api="8.8"``,
``PATCH /actuator/cluster`` with ``{"brokers": {"add"|"remove": [...]}}``). Ours
accepts both; ``8.6`` is the default. Errors carry the API's own message.
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from typing import Any

from broker.tls import describe_failure

API_FORMS = ("8.6", "8.8")
DEFAULT_FORM = "8.6"
DEFAULT_TIMEOUT = 5.0
OVERRIDE = "allowRemovingReachableBrokers"


class ApiError(Exception):
    """The management API refused a request (``status`` set) or could not be reached."""

    def __init__(self, method: str, url: str, message: str, status: int | None = None):
        super().__init__(message)
        self.method = method
        self.url = url
        self.message = message
        self.status = status

    def __str__(self) -> str:
        if self.status is None:
            return f"{self.method} {self.url}: {self.message}"
        return f"{self.method} {self.url} answered HTTP {self.status}: {self.message}"


class Unreachable(ApiError):
    """Nothing answered (connection refused, timed out, no route); ``message`` is the reason."""

    def __str__(self) -> str:
        return f"{self.method} {self.url}: not reachable: {self.message}"


class NoAnswer(Unreachable):
    """The request was delivered but no answer came: a change may have been applied."""

    def __str__(self) -> str:
        return f"{self.method} {self.url}: no answer: {self.message}"


def check_form(form: str) -> str:
    if form not in API_FORMS:
        raise ValueError(f"unknown API form {form!r}; use one of {', '.join(API_FORMS)}")
    return form


class ManagementApi:
    """JSON over HTTP to one broker's management port."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        token: str | None = None,
        form: str = DEFAULT_FORM,
        ssl_context: ssl.SSLContext | None = None,
    ):
        """``ssl_context`` (broker.tls.client_context) is used for https:// URLs."""
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.token = token
        self.form = check_form(form)
        self.ssl_context = ssl_context

    def __repr__(self) -> str:
        return f"ManagementApi({self.url!r}, form={self.form!r})"

    # --- transport -------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, **query: Any) -> Any:
        """The parsed JSON answer (None when empty); raises ApiError / Unreachable."""
        target, status, raw = self._exchange(method, path, body, query)
        try:
            doc = json.loads(raw) if raw.strip() else None
        except ValueError:
            raise ApiError(method, target, f"non-JSON answer: {raw[:200]!r}", status) from None
        if status >= 400:
            message = doc.get("message") if isinstance(doc, dict) else None
            raise ApiError(method, target, message or "no message", status)
        return doc

    def text(self, path: str) -> str:
        """A GET answered with text (``/actuator/prometheus``)."""
        target, status, raw = self._exchange("GET", path, None, {})
        if status >= 400:
            raise ApiError("GET", target, raw[:200].decode(errors="replace"), status)
        return raw.decode(errors="replace")

    def _exchange(
        self, method: str, path: str, body: Any, query: dict[str, Any]
    ) -> tuple[str, int, bytes]:
        params = {
            k: "true" if v is True else str(v) for k, v in query.items() if v not in (None, False)
        }
        target = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(target, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            context = self.ssl_context if target.startswith("https:") else None
            with urllib.request.urlopen(req, timeout=self.timeout, context=context) as resp:
                return target, resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return target, exc.code, exc.read()
        except urllib.error.URLError as exc:
            reason = exc.reason
            why = describe_failure(reason) if isinstance(reason, ssl.SSLError) else str(reason)
            raise Unreachable(method, target, why) from None
        except (OSError, http.client.HTTPException) as exc:
            raise NoAnswer(method, target, repr(exc)) from None

    # --- reading ---------------------------------------------------------------------

    def cluster(self) -> dict:
        """GET /actuator/cluster: the cluster configuration (members, changes)."""
        return self.request("GET", "/actuator/cluster")

    def topology(self) -> dict:
        """GET /v2/topology: brokers as this one sees them (alive, roles, health)."""
        return self.request("GET", "/v2/topology")

    def partitions(self) -> dict:
        """GET /actuator/partitions: this broker's replicas (role, positions)."""
        return self.request("GET", "/actuator/partitions")

    def exporters(self) -> dict[str, str]:
        """GET /actuator/exporters as ``{exporter id: ENABLED|DISABLED|...}``."""
        return {e["exporterId"]: e["status"] for e in self.request("GET", "/actuator/exporters")}

    def health(self, probe: str = "startup") -> bool:
        """Is the probe (startup, readiness, liveness) UP? False when not reachable."""
        try:
            doc = self.request("GET", f"/actuator/health/{probe}")
        except ApiError:  # unreachable, or 503 while the probe is DOWN
            return False
        return bool(doc) and doc.get("status") == "UP"

    # --- topology changes --------------------------------------------------------------

    def force_remove(
        self,
        removed: Iterable[int],
        retained: Iterable[int],
        *,
        dry_run: bool = False,
        allow_reachable: bool = False,
    ) -> dict:
        """Force brokers out (region loss). 202 ``{changeId, plannedChanges}``; 200 on dry run."""
        query = {"force": True, "dryRun": dry_run, OVERRIDE: allow_reachable}
        if self.form == "8.6":
            body = [str(i) for i in sorted(retained)]
            return self.request("POST", "/actuator/cluster/brokers", body, **query)
        body = {"brokers": {"remove": sorted(removed)}}
        return self.request("PATCH", "/actuator/cluster", body, **query)

    def add_brokers(
        self,
        added: Iterable[int],
        all_ids: Iterable[int],
        replication_factor: int,
        *,
        dry_run: bool = False,
    ) -> dict:
        """Add brokers back and set the replication factor (failback)."""
        if self.form == "8.6":
            body = [str(i) for i in sorted(all_ids)]
            return self.request(
                "POST",
                "/actuator/cluster/brokers",
                body,
                replicationFactor=replication_factor,
                dryRun=dry_run,
            )
        body = {
            "brokers": {"add": sorted(added)},
            "partitions": {"replicationFactor": replication_factor},
        }
        return self.request("PATCH", "/actuator/cluster", body, dryRun=dry_run)

    def disable_exporter(self, exporter: str, *, dry_run: bool = False) -> dict:
        path = f"/actuator/exporters/{urllib.parse.quote(exporter, safe='')}/disable"
        return self.request("POST", path, dryRun=dry_run)

    def enable_exporter(
        self, exporter: str, initialize_from: str | None = None, *, dry_run: bool = False
    ) -> dict:
        body = {"initializeFrom": initialize_from} if initialize_from else None
        path = f"/actuator/exporters/{urllib.parse.quote(exporter, safe='')}/enable"
        return self.request("POST", path, body, dryRun=dry_run)

    def pause_exporting(self) -> None:
        self.request("POST", "/actuator/exporting/pause")

    def resume_exporting(self) -> None:
        self.request("POST", "/actuator/exporting/resume")


class FirstAnswering(ManagementApi):
    """The management APIs of several brokers, as one: each request goes to the first
    URL that answers (brokerctl's ``--management URL,URL``).

    An HTTP error answer counts as an answer (it is the cluster's reply) and is
    raised as ApiError. A request that could not be delivered moves on to the next
    URL; so does a read that got no answer, but a change that got none raises
    NoAnswer rather than being sent again elsewhere. When no URL answers, an
    Unreachable whose ``message`` lists every URL and why. The URL that answered
    is tried first from then on; ``url`` is the one tried last.
    """

    def __init__(
        self,
        urls: Iterable[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        token: str | None = None,
        form: str = DEFAULT_FORM,
        ssl_context: ssl.SSLContext | None = None,
    ):
        self.urls = [u.rstrip("/") for u in urls]
        if not self.urls:
            raise ValueError("no management URL given")
        super().__init__(
            self.urls[0], timeout=timeout, token=token, form=form, ssl_context=ssl_context
        )

    def __repr__(self) -> str:
        return f"FirstAnswering({self.urls!r}, form={self.form!r})"

    def request(self, method: str, path: str, body: Any = None, **query: Any) -> Any:
        failures = []
        for url in list(self.urls):
            self.url = url
            try:
                doc = super().request(method, path, body, **query)
            except NoAnswer as exc:  # delivered, but no answer: a change may have been applied
                if method != "GET":
                    raise
                failures.append(f"{url}: {exc.message}")
                continue
            except Unreachable as exc:  # not delivered (refused, no route): the next one
                failures.append(f"{url}: {exc.message}")
                continue
            except ApiError:  # the cluster's answer, a refusal
                self._prefer(url)
                raise
            self._prefer(url)
            return doc
        raise Unreachable(method, path, "; ".join(failures))

    def _prefer(self, url: str) -> None:
        self.urls.remove(url)
        self.urls.insert(0, url)


def count_operations(ops: list[dict]) -> str:
    """ "8 PARTITION_FORCE_RECONFIGURE, 4 BROKER_FORCE_REMOVE (brokers 1,3,5,7)"."""
    counts: dict[str, list[int]] = {}
    for op in ops:
        counts.setdefault(op["operation"], []).append(op["brokerId"])
    parts = []
    for name, brokers in counts.items():
        part = f"{len(brokers)} {name}"
        if name.startswith("BROKER_"):
            part += f" (brokers {','.join(str(b) for b in sorted(brokers))})"
        parts.append(part)
    return ", ".join(parts) or "no operations"


def format_operations(ops: list[dict]) -> list[str]:
    """The API's plannedChanges as lines an operator can read."""
    lines = []
    for op in ops:
        words = [f"{op['operation']:<31}", f"broker {op['brokerId']}"]
        if op.get("partitionId") is not None:
            words.append(f"partition {op['partitionId']}")
        if op.get("brokers") is not None:
            words.append(f"-> replicas {','.join(str(b) for b in op['brokers'])}")
        if op.get("priority") is not None:
            words.append(f"priority {op['priority']}")
        if op.get("exporterId"):
            words.append(f"exporter {op['exporterId']}")
        if op.get("initializeFrom"):
            words.append(f"from {op['initializeFrom']}")
        lines.append(" ".join(words))
    return lines
