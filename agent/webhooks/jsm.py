"""Jira Service Management: its Operations alert webhook, and Jira's signed issue webhooks.

JSM is Opsgenie's successor (Opsgenie ends support on 2027-04-05). One endpoint
takes both of JSM's outgoing formats, told apart by their shape:

**Operations alert webhook** (Operations → Integrations → Webhook): exactly the
Opsgenie outgoing-webhook body (Atlassian documents the same "alert action
data"): ``{"action": "Create"|"Close"|"Acknowledge"|…, "alert": {"alertId",
"tinyId", "alias", "message", "tags", "entity", "priority", "createdAt",
"updatedAt", "details"?}, "source", "integrationId", "integrationName"}``,
parsed by the Opsgenie rules (``agent.webhooks.opsgenie``): ``Create`` captures,
``Close``/``Delete`` close, ``Acknowledge`` is noted. It signs nothing: a custom
header carries the secret, ``X-Goldenhour-Token`` (``header`` to rename it).

**Jira webhooks** (Jira settings → System → WebHooks, with a Secret):
``{"timestamp", "webhookEvent": "jira:issue_created"|"jira:issue_updated"|…,
"issue": {"id", "key", "self", "fields": {"summary", "status", "priority",
"labels", "components", "resolution"...}}, "user", "changelog"?: {"items":
[{"field", "from", "to", "fromString", "toString"}]}}``, signed
``X-Hub-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>`` (WebSub
style). Use the webhook's JQL filter to send only incident issues, e.g.
``project = OPS AND issuetype = "[System] Incident"``. ``jira:issue_created``
captures; ``jira:issue_updated`` closes when its changelog sets a resolution or
moves the status into the Done category, and captures again when a resolution
is cleared (reopened); ``jira:issue_deleted`` closes; every other event is
ignored. Incident ID: the issue key (``OPS-123``). Services: components;
hosts/services/labels: ``host:NAME``/``service:NAME`` labels of the issue.
Severity: the priority. A ``timestamp`` older than ``daemon.dedupe_hours`` is
stale (Jira retries for up to 30 minutes).

A delivery carrying ``X-Hub-Signature`` is verified as a Jira webhook (the token
header is then not needed); any other must carry the token header: 401 when
neither is there, 403 when wrong.

Dedupe: Jira's ``X-Atlassian-Webhook-Identifier`` (the same on every retry);
alert webhooks are named by ``<alertId>:<action>:<updatedAt>``.

Set-up (JSM UI): alerts: Operations → Integrations → Add integration → Webhook;
Webhook URL ``https://<proxy>/v1/webhooks/jsm``; add the header
``X-Goldenhour-Token`` with a long random value; alert actions "Alert is
created", "Alert is closed", "Alert is acknowledged". Jira webhooks: Jira
settings → System → WebHooks → Create a WebHook; URL as above; Secret: the same
value; events Issue created, updated, deleted, with a JQL filter for incident
issues. Put the value in ``[webhooks.jsm] secret_file``.

Migrating from the Opsgenie receiver: in JSM Operations add the Webhook
integration with URL ``https://<proxy>/v1/webhooks/jsm`` and the same
``X-Goldenhour-Token`` header, and move ``[webhooks.opsgenie]`` to
``[webhooks.jsm]`` (same keys, same secret file). During the cutover keep both
enabled: an alert is captured once per tracker.
"""
from __future__ import annotations

from typing import Any, Mapping

from agent.webhooks import (DEFAULT_TOKEN_HEADER, IGNORE, RESOLVE, TRIGGER, Event, Forbidden, Malformed,
                            Unauthorized, any_equal, header, hex_digest, hmac_sha256, incident_id, names, obj,
                            parse_time, strs, tag_targets, token_header)
from agent.webhooks import opsgenie

NAME = "jsm"
HUB_HEADER = "X-Hub-Signature"
DELIVERY_HEADER = "X-Atlassian-Webhook-Identifier"


def sign(raw_body: bytes, secret: str) -> str:
    """The ``X-Hub-Signature`` value Jira sends for a webhook with a secret."""
    return "sha256=" + hmac_sha256(secret.encode(), raw_body).hex()


def verify(raw_body: bytes, headers: Mapping[str, str], secrets: list[str], *,
           opts: dict[str, Any] | None = None, now: float | None = None) -> None:
    hub = header(headers, HUB_HEADER)
    if hub and hub.strip():
        algo, sep, digest = hub.strip().partition("=")
        if not sep or algo.lower() != "sha256":
            raise Malformed(f"{HUB_HEADER} must be sha256=<hex>")
        provided = hex_digest(digest, HUB_HEADER)
        if not any_equal([provided], [hmac_sha256(s.encode(), raw_body).hex() for s in secrets]):
            raise Forbidden("no valid signature")
        return
    name = str((opts or {}).get("header") or DEFAULT_TOKEN_HEADER)
    if not token_header(headers, name, secrets):
        raise Unauthorized(f"missing {HUB_HEADER} (Jira webhook) or {name} (alert webhook) header")


def delivery_id(headers: Mapping[str, str], body: Any = None) -> str:
    dlv = (header(headers, DELIVERY_HEADER) or "").strip()
    if dlv:
        return dlv[:200]
    alert = body.get("alert") if isinstance(body, dict) else None
    if isinstance(alert, dict) and alert.get("alertId") and body.get("action") and alert.get("updatedAt"):
        return f"{alert['alertId']}:{body['action']}:{alert['updatedAt']}"[:200]
    return ""


def _name(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("name") or value.get("value") or "")
    return str(value or "")


def _browse_url(issue: dict[str, Any]) -> str:
    base = str(issue.get("self") or "").split("/rest/", 1)[0]
    return f"{base}/browse/{issue['key']}" if base.startswith("http") and issue.get("key") else ""


def _status_done(fields: dict[str, Any]) -> bool:
    status = fields.get("status") if isinstance(fields.get("status"), dict) else {}
    cat = status.get("statusCategory") if isinstance(status.get("statusCategory"), dict) else {}
    return str(cat.get("key") or "").lower() == "done"


def _jira(b: dict[str, Any], etype: str) -> list[Event]:
    if not etype.startswith("jira:issue_"):
        return [Event(IGNORE, source=NAME, kind=etype, reason=f"webhook event {etype} is not handled")]
    issue = obj(b.get("issue"), "issue")
    key = issue.get("key") or issue.get("id")
    fields = issue.get("fields") if isinstance(issue.get("fields"), dict) else {}
    tags = strs(fields.get("labels"))
    hosts, services, labels = tag_targets(tags)
    services += names(fields.get("components"), "name")
    for k, v in (("status", _name(fields.get("status"))), ("issuetype", _name(fields.get("issuetype")))):
        if v:
            labels.setdefault(k, v)
    e = Event(IGNORE, incident_id=incident_id(key, "jira"), source=NAME, kind=etype,
              title=str(fields.get("summary") or "").strip(), url=_browse_url(issue),
              severity=_name(fields.get("priority")), services=services, hosts=hosts, labels=labels, tags=tags,
              started_at=parse_time(fields.get("created")))
    if etype == "jira:issue_created":
        e.action, e.occurred_at = TRIGGER, parse_time(b.get("timestamp"))
    elif etype == "jira:issue_deleted":
        e.action = RESOLVE
    elif etype == "jira:issue_updated":
        items = [i for i in ((b.get("changelog") or {}).get("items") or []) if isinstance(i, dict)]
        res = [i for i in items if str(i.get("field") or "").lower() == "resolution"]
        moved = any(str(i.get("field") or "").lower() == "status" for i in items)
        if any(i.get("to") or i.get("toString") for i in res) or (moved and _status_done(fields)):
            e.action = RESOLVE
        elif res and any(i.get("from") or i.get("fromString") for i in res):
            e.action, e.reopen, e.occurred_at = TRIGGER, True, parse_time(b.get("timestamp"))
        else:
            e.reason = "an update that neither resolves nor reopens the issue"
    else:
        e.reason = f"webhook event {etype} does not capture"
    return [e]


def parse(body: Any, *, opts: dict[str, Any] | None = None) -> list[Event]:
    b = obj(body, "body")
    if "webhookEvent" in b:
        etype = str(b.get("webhookEvent") or "")
        if not etype:
            raise Malformed("webhookEvent is empty")
        return _jira(b, etype)
    if "action" in b or "alert" in b:
        return opsgenie.parse(b, opts=opts, source=NAME)
    raise Malformed("neither a JSM alert (action, alert) nor a Jira webhook (webhookEvent)")
