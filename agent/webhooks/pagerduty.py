"""PagerDuty Webhooks V3 (webhook subscriptions).

Wire format: one event per ``POST``, ``{"event": {"id", "event_type",
"resource_type", "occurred_at", "agent", "client", "data"}}``; for incident
events ``data`` is the incident (``id``, ``title``, ``html_url``, ``status``,
``service.summary``, ``priority.summary``, ``urgency``...).

Authentication: ``X-PagerDuty-Signature: v1=<hex>[,v1=<hex>...]``, each
``hex(HMAC-SHA256(key=secret as UTF-8, msg=raw body))``; several during secret
rotation, any one matching is enough. The secret is used as text, not
base64-decoded. No timestamp is signed, so replays are bounded by the daemon's
dedupe record and by ``event.occurred_at`` (older than ``daemon.dedupe_hours`` is
ignored).

Mapping: ``incident.triggered`` captures; ``incident.reopened`` captures again
if the incident was resolved here; ``incident.resolved`` closes it;
``incident.acknowledged`` notes it (it stays open: responders are working);
``pagey.ping`` answers 200; every other type is ignored with 200. Services: the
incident's service name (``data.service.summary``). Severity: the priority
(``P1``...) or else the urgency. PagerDuty V3 payloads carry no host names:
target hosts by service (``daemon.services``) or ``daemon.capture_all``.

Dedupe: ``X-Webhook-Id`` is the same on every retry of one delivery.

Set-up (PagerDuty UI): Integrations → Generic Webhooks (v3) → New Webhook;
URL ``https://<proxy>/v1/webhooks/pagerduty``; scope a service or team; event
subscription: at least incident.triggered, incident.reopened,
incident.resolved, incident.acknowledged; save, copy the signing secret shown
once into ``[webhooks.pagerduty] secret_file``.
"""
from __future__ import annotations

from typing import Any, Mapping

from agent.webhooks import (ACK, IGNORE, PING, RESOLVE, TRIGGER, Event, Forbidden, Malformed, Unauthorized,
                            any_equal, header, hmac_sha256, incident_id, obj, parse_time)

NAME = "pagerduty"
SIGNATURE_HEADER = "X-PagerDuty-Signature"


def sign(raw_body: bytes, secret: str) -> str:
    """The ``v1=`` element PagerDuty sends for ``secret`` (used by tests and benches)."""
    return "v1=" + hmac_sha256(secret.encode(), raw_body).hex()


def verify(raw_body: bytes, headers: Mapping[str, str], secrets: list[str], *,
           opts: dict[str, Any] | None = None, now: float | None = None) -> None:
    value = header(headers, SIGNATURE_HEADER)
    if not value:
        raise Unauthorized(f"missing {SIGNATURE_HEADER} header")
    provided = [p.strip()[3:] for p in value.split(",") if p.strip().startswith("v1=")]
    if not provided:
        raise Malformed(f"{SIGNATURE_HEADER} has no v1= signature")
    expected = [hmac_sha256(s.encode(), raw_body).hex() for s in secrets]
    if not any_equal([p.lower() for p in provided], expected):
        raise Forbidden("no valid signature")


def delivery_id(headers: Mapping[str, str], body: Any = None) -> str:
    return (header(headers, "X-Webhook-Id") or "").strip()


def parse(body: Any, *, opts: dict[str, Any] | None = None) -> list[Event]:
    ev = obj(obj(body, "body").get("event"), "event")
    etype = str(ev.get("event_type") or "")
    if not etype:
        raise Malformed("event.event_type is missing")
    data = ev.get("data") if isinstance(ev.get("data"), dict) else {}
    when = parse_time(ev.get("occurred_at"))
    if etype == "pagey.ping" or ev.get("resource_type") == "pagey":
        return [Event(PING, source=NAME, kind=etype)]
    if not etype.startswith("incident.") or data.get("type") != "incident":
        return [Event(IGNORE, source=NAME, kind=etype, reason=f"event type {etype} is not handled")]
    service = data.get("service") if isinstance(data.get("service"), dict) else {}
    priority = data.get("priority") if isinstance(data.get("priority"), dict) else {}
    e = Event(IGNORE, incident_id=incident_id(data.get("id"), "pd"), source=NAME, kind=etype,
              title=str(data.get("title") or ""), url=str(data.get("html_url") or ""),
              severity=str(priority.get("summary") or data.get("urgency") or ""),
              services=[s for s in [str(service.get("summary") or "")] if s],
              labels={k: str(v) for k, v in (("urgency", data.get("urgency")),
                                              ("priority", priority.get("summary")),
                                              ("service_id", service.get("id"))) if v},
              occurred_at=when, started_at=parse_time(data.get("created_at")))
    if etype == "incident.triggered":
        e.action = TRIGGER
    elif etype == "incident.reopened":
        e.action, e.reopen = TRIGGER, True
    elif etype == "incident.resolved":
        e.action = RESOLVE
    elif etype == "incident.acknowledged":
        e.action = ACK
    else:
        e.reason = f"event type {etype} does not capture"
    return [e]
