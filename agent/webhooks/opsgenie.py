"""Opsgenie outgoing Webhook integration (also Jira Service Management Operations).

Wire format: ``{"action": "Create"|"Close"|"Acknowledge"|…, "alert": {"alertId",
"tinyId", "alias", "message", "tags", "teams", "entity", "source", "priority",
"createdAt", "details"?, "description"?}, "source": {…}, "integrationId",
"integrationName"}``. ``priority`` may be absent, ``"P3"`` or ``3``.

Authentication: Opsgenie signs nothing. The integration's "Headers" table
carries a shared token: ``[webhooks.opsgenie] header`` names it (default
``X-Goldenhour-Token``) and ``secret``/``secret_file`` holds the value
(constant-time compare). Missing header: 401; wrong value: 403. Use HTTPS
through the proxy; Opsgenie sends no timestamp.

Mapping: ``Create`` captures; ``Close`` and ``Delete`` close the incident;
``Acknowledge`` is noted (the incident stays open); anything else is ignored.
Incident ID: ``alertId`` (a UUID; one alert can be sent as ``Create`` several
times when teams are added, the per-incident record makes that one capture).
Hosts: ``alert.entity``, tags of the form ``host:NAME``/``host=NAME``, and
``details`` keys ``host``/``hostname``/``instance``; services: tags
``service:NAME``/``service=NAME`` and ``details.service``; tags are matched
against ``host.tags``.

Set-up (Opsgenie UI): Settings → Integrations → Add integration → Webhook;
Webhook URL ``https://<proxy>/v1/webhooks/opsgenie``; tick "Add Alert Details to
Payload"; under "Headers" add ``X-Goldenhour-Token`` with a long random value;
in "Alert actions" keep "Alert is created", "Alert is closed", "Alert is
acknowledged". Put the value in ``[webhooks.opsgenie] secret_file``.
"""
from __future__ import annotations

from typing import Any, Mapping

from agent.webhooks import (ACK, DEFAULT_TOKEN_HEADER, HOST_TAGS, IGNORE, RESOLVE, TRIGGER, Event, Malformed,
                            Unauthorized, incident_id, obj, parse_time, strs, tag_targets, token_header)

NAME = "opsgenie"
DEFAULT_HEADER = DEFAULT_TOKEN_HEADER


def verify(raw_body: bytes, headers: Mapping[str, str], secrets: list[str], *,
           opts: dict[str, Any] | None = None, now: float | None = None) -> None:
    name = str((opts or {}).get("header") or DEFAULT_HEADER)
    if not token_header(headers, name, secrets):
        raise Unauthorized(f"missing {name} header")


def delivery_id(headers: Mapping[str, str], body: Any = None) -> str:
    return ""


def parse(body: Any, *, opts: dict[str, Any] | None = None, source: str = NAME) -> list[Event]:
    """``source`` names the tracker in the events (``jsm`` reuses this parser: same wire format)."""
    b = obj(body, "body")
    action = str(b.get("action") or "")
    if not action:
        raise Malformed("action is missing")
    alert = obj(b.get("alert"), "alert")
    tags = strs(alert.get("tags"))
    details = alert.get("details") if isinstance(alert.get("details"), dict) else {}
    hosts = strs(alert.get("entity"))
    tag_hosts, services, labels = tag_targets(tags)
    hosts.extend(tag_hosts)
    for k, v in details.items():
        key = str(k).lower()
        if key in HOST_TAGS:
            hosts.extend(strs(v))
        elif key in ("service", "services", "app"):
            services.extend(strs(v))
        labels.setdefault(str(k), str(v))
    prio = alert.get("priority")
    severity = f"P{prio}" if isinstance(prio, int) and not isinstance(prio, bool) else str(prio or "")
    raw_id = alert.get("alertId") or alert.get("alias")
    e = Event(IGNORE, incident_id=incident_id(raw_id, "og"), source=source, kind=action,
              title=str(alert.get("message") or "").strip(), severity=severity,
              services=services, hosts=hosts, labels=labels, tags=tags,
              started_at=parse_time(alert.get("createdAt")))
    if action == "Create":
        e.action = TRIGGER
    elif action in ("Close", "Delete"):
        e.action = RESOLVE
    elif action == "Acknowledge":
        e.action = ACK
    else:
        e.reason = f"action {action} does not capture"
    return [e]
