"""Deliveries of the six later trackers as each sends them, from the vendors' documented examples.

The examples are in ``fixtures/trackers/`` (sources in its PROVENANCE.md). Each builder
changes only what a test needs, serialises the body the way the vendor's sender does and
signs it the way the vendor documents, with code written from the vendor's own sample
(not ``agent/webhooks/*``), so a receiver bug cannot cancel out. Each returns
``(raw_body_bytes, headers)``.
"""
from __future__ import annotations

import copy
import hashlib
import hmac
import json
import re
import time
import uuid
from functools import cache
from pathlib import Path

from gh_webhook_payloads import HOST

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "trackers"
TRACKERS = ("grafana_irm", "grafana_alerting", "firehydrant", "rootly", "jsm", "datadog")
SECRETS = {
    "grafana_irm": "irm-authorization-token-for-tests-0123456789",
    "grafana_alerting": "grafana-hmac-secret-for-tests-0123456789",
    "firehydrant": "fh-webhook-secret-for-tests-0123456789",
    "rootly": "rootly-webhook-secret-for-tests-0123456789",
    "jsm": "jsm-token-and-jira-secret-for-tests-0123456789",
    "datadog": "dd-custom-header-token-for-tests-0123456789",
}
TOKEN_HEADER = "X-Goldenhour-Token"
GRAFANA_SIG = "X-Grafana-Alerting-Signature"
GRAFANA_TS = "X-Grafana-Alerting-Timestamp"
JSON = {"Content-Type": "application/json"}


def config_text(d: Path) -> str:
    """The ``[webhooks.*]`` sections of the six trackers, their secrets written beside (mode 0600)."""
    d.mkdir(parents=True, exist_ok=True)
    extra = {"grafana_alerting": f'timestamp_header = "{GRAFANA_TS}"\n'}
    out = []
    for tracker, secret in SECRETS.items():
        p = d / f"{tracker}.secret"
        p.write_text(secret + "\n")
        p.chmod(0o600)
        out.append(f'[webhooks.{tracker}]\nenabled = true\nsecret_file = "{p}"\n{extra.get(tracker, "")}')
    return "\n".join(out)


@cache
def _example(name: str) -> str:
    return (FIXTURES / name).read_text()


def example(name: str) -> dict:
    """A fresh copy of a documented example payload."""
    return copy.deepcopy(json.loads(_example(name)))


def _mac(secret: str, msg: bytes) -> str:
    return hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()


def compact(body: dict) -> bytes:
    """Ruby (Rails ``to_json``), Java (Jira) and Go senders: no spaces."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def go_json(body: dict) -> bytes:
    """Go's ``json.Marshal``: compact, with ``<``, ``>``, ``&`` escaped."""
    return (json.dumps(body, separators=(",", ":"), ensure_ascii=False)
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode())


# -- Grafana IRM / OnCall --------------------------------------------------------

def irm_delivery(group_id: str, etype: str = "alert group created", *, host: str = HOST,
                 auth: str = "bearer", secret: str | None = None, when: str | None = None) -> tuple[bytes, dict]:
    """An outgoing webhook with Forward All, serialised by ``requests`` ``json=`` (``json.dumps``)."""
    b = example("grafana_irm_forward_all.json")
    now = when or time.strftime("%Y-%m-%dT%H:%M:%S.000000+00:00", time.gmtime())
    b["event"] = {"type": etype, "time": now}
    b["alert_group"]["id"] = b["alert_group_id"] = group_id
    b["alert_group"]["created_at"] = now.replace("+00:00", "Z")
    b["alert_group"]["state"] = {"resolve": "resolved", "acknowledge": "acknowledged"}.get(etype, "firing")
    b["alert_group"]["title"] = f"{b['alert_payload']['labels']['alertname']} on {host}"
    if host:
        b["alert_payload"]["labels"]["instance"] = f"{host}:9100"
    raw = json.dumps(b).encode()
    s = SECRETS["grafana_irm"] if secret is None else secret
    headers = {**JSON, "User-Agent": "python-requests/2.31.0"}
    if auth == "bearer":
        headers["Authorization"] = f"Bearer {s}"
    elif auth == "verbatim":
        headers["Authorization"] = s
    elif auth == "header":
        headers[TOKEN_HEADER] = s
    return raw, headers


# -- Grafana Alerting contact point ----------------------------------------------

def grafana_body(group_key: str, status: str = "firing", *, host: str = HOST, test: bool = False) -> dict:
    b = example("grafana_alerting_webhook.json")
    b["groupKey"] = group_key
    b["status"] = status
    b["state"] = "alerting" if status == "firing" else "ok"
    for a in b["alerts"]:
        a["status"] = status
        if status == "resolved":
            a["endsAt"] = "2021-10-12T10:01:03.157076+02:00"
    if host:
        b["alerts"][0]["labels"]["instance"] = f"{host}:9100"
    if test:         # what the contact point's Test button sends (grafana/alerting newTestAlert)
        b["alerts"] = [b["alerts"][0]]
        b["alerts"][0]["labels"] = {"alertname": "TestAlert", "instance": "Grafana"}
        b["alerts"][0]["annotations"] = {"summary": "Notification test"}
    return b


def grafana_delivery(group_key: str, status: str = "firing", *, host: str = HOST, test: bool = False,
                     secret: str | None = None, timestamp: int | None = None) -> tuple[bytes, dict]:
    """Signed as grafana/alerting ``http/hmac.go`` signs: hex HMAC-SHA256(secret, "<ts>:" + body)."""
    return signed_grafana(go_json(grafana_body(group_key, status, host=host, test=test)), secret=secret,
                          timestamp=timestamp)


def signed_grafana(raw: bytes, *, secret: str | None = None, timestamp: int | None = None) -> tuple[bytes, dict]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    sig = _mac(SECRETS["grafana_alerting"] if secret is None else secret, f"{ts}:".encode() + raw)
    return raw, {**JSON, "User-Agent": "Grafana", GRAFANA_TS: ts, GRAFANA_SIG: sig}


# -- FireHydrant -------------------------------------------------------------------

MILESTONE_ORDER = ("started", "acknowledged", "mitigated", "resolved")


def firehydrant_delivery(incident_id: str, milestone: str = "started", *, host: str = HOST,
                         secret: str | None = None) -> tuple[bytes, dict]:
    """An incident delivery at ``milestone`` (the docs' example is at ``resolved``)."""
    b = example("firehydrant_incident.json")
    inc = b["data"]["incident"]
    inc["id"] = incident_id
    inc["current_milestone"] = milestone
    if milestone in MILESTONE_ORDER:
        keep = MILESTONE_ORDER[:MILESTONE_ORDER.index(milestone) + 1]
        inc["milestones"] = [m for m in inc["milestones"] if m["type"] in keep]
        inc["updated_at"] = inc["milestones"][-1]["updated_at"]
    inc["tags"] = [f"host:{host}"] if host else []
    return signed_firehydrant(b, secret)


def signed_firehydrant(body: dict | bytes, secret: str | None = None) -> tuple[bytes, dict]:
    raw = body if isinstance(body, bytes) else compact(body)
    sig = _mac(SECRETS["firehydrant"] if secret is None else secret, raw)   # HMAC.hexdigest('sha256', secret, body)
    return raw, {**JSON, "fh-signature": sig}


# -- Rootly -----------------------------------------------------------------------

def rootly_delivery(incident_id: str, etype: str = "incident.created", *, host: str = HOST, kind: str = "normal",
                    event_id: str | None = None, secret: str | None = None,
                    timestamp: int | None = None) -> tuple[bytes, dict]:
    b = example("rootly_incident.json")
    b["event"]["id"] = event_id or str(uuid.uuid4())
    b["event"]["type"] = etype
    b["data"]["id"] = incident_id
    b["data"]["kind"] = kind
    b["data"]["status"] = {"incident.resolved": "resolved", "incident.cancelled": "cancelled",
                           "incident.mitigated": "mitigated"}.get(etype, "started")
    b["data"]["labels"] = {"host": host} if host else {}
    return signed_rootly(b, secret=secret, timestamp=timestamp)


def rootly_alert_delivery(alert_id: str, *, host: str = HOST) -> tuple[bytes, dict]:
    b = example("rootly_alert.json")
    b["event"]["id"] = str(uuid.uuid4())
    b["data"]["id"] = alert_id
    b["data"]["labels"] = [{"key": "host", "value": host}]
    return signed_rootly(b)


def signed_rootly(body: dict | bytes, *, secret: str | None = None,
                  timestamp: int | None = None) -> tuple[bytes, dict]:
    """As Rootly's Python sample verifies: hex HMAC-SHA256(secret, timestamp + body), no separator."""
    raw = body if isinstance(body, bytes) else compact(body)
    ts = str(int(time.time()) if timestamp is None else timestamp)
    sig = hmac.new(key=(SECRETS["rootly"] if secret is None else secret).encode(), msg=ts.encode() + raw,
                   digestmod=hashlib.sha256).hexdigest()
    return raw, {**JSON, "X-Rootly-Signature": f"t={ts},v1={sig}"}


# -- Jira Service Management -------------------------------------------------------

def jsm_alert_delivery(alert_id: str, action: str = "Create", *, entity: str = HOST,
                       token: str | None = None) -> tuple[bytes, dict]:
    b = example("jsm_alert_create.json" if action == "Create" else "jsm_alert_acknowledge.json")
    b["action"] = action
    b["alert"]["alertId"] = alert_id
    b["alert"]["entity"] = entity
    b["alert"]["updatedAt"] = time.time_ns()
    raw = compact(b)
    return raw, {**JSON, TOKEN_HEADER: SECRETS["jsm"] if token is None else token}


def jira_delivery(key: str, event: str = "jira:issue_created", *, host: str = HOST, changelog: list | None = None,
                  status_category: str = "new", identifier: str | None = None,
                  secret: str | None = None) -> tuple[bytes, dict]:
    """A Jira admin webhook with a secret: ``X-Hub-Signature: sha256=<hex>``; timestamp in epoch ms."""
    b = example("jira_issue_webhook.json")
    b["webhookEvent"] = event
    b["timestamp"] = int(time.time() * 1000)
    b["issue"]["key"] = key
    f = b["issue"]["fields"]
    f["labels"] = [*f["labels"], f"host:{host}"] if host else f["labels"]
    f["status"] = {"name": "Done" if status_category == "done" else "Open",
                   "statusCategory": {"key": status_category}}
    b["changelog"]["items"] = changelog if changelog is not None else b["changelog"]["items"]
    if event == "jira:issue_created":
        b.pop("changelog")
        b.pop("comment")
    return signed_jira(b, identifier=identifier, secret=secret)


def signed_jira(body: dict | bytes, *, identifier: str | None = None,
                secret: str | None = None) -> tuple[bytes, dict]:
    raw = body if isinstance(body, bytes) else compact(body)
    sig = _mac(SECRETS["jsm"] if secret is None else secret, raw)
    return raw, {**JSON, "X-Hub-Signature": f"sha256={sig}", "X-Atlassian-Webhook-Flow": "Primary",
                 "X-Atlassian-Webhook-Identifier": identifier or str(uuid.uuid4().int)[:19]}


RESOLVED_CHANGELOG = [
    {"field": "resolution", "fieldtype": "jira", "from": None, "fromString": None, "to": "10000", "toString": "Done"},
    {"field": "status", "fieldtype": "jira", "from": "1", "fromString": "Open", "to": "10001", "toString": "Done"},
]
REOPENED_CHANGELOG = [
    {"field": "resolution", "fieldtype": "jira", "from": "10000", "fromString": "Done", "to": None, "toString": None},
]


# -- Datadog ------------------------------------------------------------------------

def datadog_delivery(cycle_key: str, transition: str = "Triggered", *, hostname: str = HOST,
                     event_id: str | None = None, title: str | None = None,
                     token: str | None = None) -> tuple[bytes, dict]:
    """goldenhour's documented payload template with Datadog's variables substituted (JSON-escaped)."""
    from agent.webhooks.datadog import TEMPLATE

    values = example("datadog_variables.json")
    values.update({"$ALERT_CYCLE_KEY": cycle_key, "$ALERT_TRANSITION": transition,
                   "$ALERT_TYPE": "success" if transition == "Recovered" else values["$ALERT_TYPE"],
                   "$HOSTNAME": hostname, "$ID": event_id or str(uuid.uuid4().int)[:16],
                   "$DATE": str(int(time.time() * 1000))})
    values["$EVENT_TITLE"] = title if title is not None else f"[{transition}] [Memory Alert]"
    raw = re.sub(r"\$[A-Z][A-Z0-9_]*", lambda m: json.dumps(values.get(m.group(0), ""))[1:-1], TEMPLATE).encode()
    return raw, {**JSON, "User-Agent": "Datadog/Webhooks",
                 TOKEN_HEADER: SECRETS["datadog"] if token is None else token}
