"""FireHydrant webhooks (Settings → Webhooks; "Incidents" and "Signals" subscriptions).

Wire format: ``{"data": {...}, "event": {"operation": "CREATED"|"UPDATED", "resource_type"}}``.
``resource_type: "incident"``: ``data.incident`` with ``id`` (UUID), ``number``,
``name``, ``summary``, ``current_milestone`` (``started``, ``detected``,
``acknowledged``, ``investigating``, ``identified``, ``mitigated``, ``resolved``,
``retrospective_started``..., ``closed``), ``milestones[]`` (``type``,
``occurred_at``...), ``severity.slug`` (``SEV2``), ``priority.slug`` (``P3``),
``impacts[]``, ``tags``, ``labels``, ``incident_channels``, and timestamps
written ``"2023-07-25 13:34:49 UTC"``. ``resource_type: "signals_alerts"``:
``data.alert`` with ``id``, ``summary``, ``status`` (``opened``,
``acknowledged``, ``resolved``, ``ignored``). Change events and other resource
types are ignored with 200. The operation's case varies between FireHydrant's
examples (``UPDATED``, ``updated``): it is not relied on.

Authentication: ``fh-signature: <hex HMAC-SHA256(secret, raw body)>`` (the
webhook's Secret; "FireHydrant uses hex digest"). No timestamp is signed.

Mapping: FireHydrant sends a delivery for every change to an incident (a chat
message, a task, a role, a field, a milestone); goldenhour acts on the
**milestone** each delivery carries, not on the delivery: the first delivery
showing an open milestone (``started``, ``detected``, ``acknowledged``,
``investigating``, ``identified``) captures, and the per-incident record makes
every later delivery of the same incident a duplicate; the first one showing
``resolved`` or a later milestone closes; ``mitigated`` is noted like an
acknowledgement (the incident stays open, nothing is captured). A chat message on
a resolved incident changes nothing, and a reopened incident does not capture
again (``goldenhour snapshot --via-daemon`` does). Signals alerts: ``opened``
captures, ``resolved`` closes, ``acknowledged`` is noted. Incident ID: the
incident's UUID (its number is kept as the label ``number``). Services: impacted
services (``impacts[]`` of type service) and ``service:NAME`` tags; hosts:
``host:NAME`` tags and labels ``host``/``hostname``; every label and tag is
matched against ``host.tags``.

Dedupe: no delivery id; ``<incident id>:<milestone>:<updated_at>`` names a
delivery (a retry carries the same state), the per-incident record covers the
rest.

Set-up (FireHydrant UI): Settings → Webhooks → + Add webhook; URL
``https://<proxy>/v1/webhooks/firehydrant``; Secret: a long random value (put it
in ``[webhooks.firehydrant] secret_file``); Status Active; subscriptions
"Incidents" (and "Incidents (Private)", "Signals" if wanted).
"""
from __future__ import annotations

from typing import Any, Mapping

from agent.webhooks import (ACK, IGNORE, RESOLVE, TRIGGER, Event, Forbidden, Malformed, Unauthorized, any_equal,
                            header, hex_digest, hmac_sha256, incident_id, obj, parse_time, strs, tag_targets)

NAME = "firehydrant"
SIGNATURE_HEADER = "fh-signature"
OPEN = ("started", "detected", "acknowledged", "investigating", "identified", "first_action")
NOTED = ("mitigated",)
CLOSED = ("resolved", "closed", "retrospective_started", "retrospective_completed", "postmortem_started",
          "postmortem_completed", "cancelled", "canceled")


def sign(raw_body: bytes, secret: str) -> str:
    """The ``fh-signature`` value FireHydrant sends (used by tests and benches)."""
    return hmac_sha256(secret.encode(), raw_body).hex()


def verify(raw_body: bytes, headers: Mapping[str, str], secrets: list[str], *,
           opts: dict[str, Any] | None = None, now: float | None = None) -> None:
    value = header(headers, SIGNATURE_HEADER)
    if not value or not value.strip():
        raise Unauthorized(f"missing {SIGNATURE_HEADER} header")
    provided = hex_digest(value, SIGNATURE_HEADER)
    if not any_equal([provided], [sign(raw_body, s) for s in secrets]):
        raise Forbidden("no valid signature")


def _data(body: Any, key: str) -> dict[str, Any]:
    data = body.get("data") if isinstance(body, dict) else None
    item = data.get(key) if isinstance(data, dict) else None
    return item if isinstance(item, dict) else {}


def delivery_id(headers: Mapping[str, str], body: Any = None) -> str:
    inc = _data(body, "incident")
    if inc.get("id") and inc.get("current_milestone"):
        return f"{inc['id']}:{inc['current_milestone']}:{inc.get('updated_at', '')}"[:200]
    alert = _data(body, "alert")
    if alert.get("id") and alert.get("status"):
        return f"{alert['id']}:{alert['status']}:{alert.get('decision') or ''}"[:200]
    return ""


def _slug(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("slug") or value.get("name") or "")
    return str(value or "")


def _incident(inc: dict[str, Any], kind: str) -> Event:
    if not inc.get("id"):
        raise Malformed("data.incident.id is missing")
    tags = strs(inc.get("tags"))
    hosts, services, labels = tag_targets(tags)
    raw_labels = inc.get("labels")
    if isinstance(raw_labels, dict):
        for k, v in raw_labels.items():
            labels.setdefault(str(k), str(v))
            if str(k).lower() in ("host", "hostname") and v:
                hosts.append(str(v))
            elif str(k).lower() == "service" and v:
                services.append(str(v))
    for imp in inc.get("impacts") or []:
        if not isinstance(imp, dict):
            continue
        target = imp.get("impact") if isinstance(imp.get("impact"), dict) else imp
        name = str(target.get("name") or "")
        itype = str(imp.get("type") or "").lower()
        if name and itype in ("service", "services", ""):
            services.append(name)
        elif name and itype in ("environment", "environments"):
            labels.setdefault("environment", name)
    if inc.get("number") is not None:
        labels.setdefault("number", str(inc["number"]))
    milestone = str(inc.get("current_milestone") or "").lower()
    if milestone:
        labels.setdefault("milestone", milestone)
    if _slug(inc.get("priority")):
        labels.setdefault("priority", _slug(inc.get("priority")))
    e = Event(IGNORE, incident_id=incident_id(inc.get("id"), "fh"), source=NAME, kind=kind,
              title=str(inc.get("name") or "").strip(), url=str(inc.get("incident_url") or ""),
              severity=_slug(inc.get("severity")) or _slug(inc.get("priority")),
              services=services, hosts=hosts, labels=labels, tags=tags,
              started_at=parse_time(inc.get("started_at")) or parse_time(inc.get("created_at")))
    if milestone in OPEN:
        e.action = TRIGGER
    elif milestone in CLOSED:
        e.action = RESOLVE
    elif milestone in NOTED:
        e.action, e.reason = ACK, "mitigated: the incident stays open, nothing is captured"
    else:
        e.reason = f"milestone {milestone or '?'} does not capture"
    return e


def parse(body: Any, *, opts: dict[str, Any] | None = None) -> list[Event]:
    b = obj(body, "body")
    ev = obj(b.get("event"), "event")
    rtype = str(ev.get("resource_type") or "").lower()
    op = str(ev.get("operation") or "").lower()
    if not rtype:
        raise Malformed("event.resource_type is missing")
    kind = f"{rtype} {op}".strip()
    if rtype in ("incident", "incidents", "private_incident"):
        return [_incident(obj(obj(b.get("data"), "data").get("incident"), "data.incident"), kind)]
    if rtype in ("signals_alerts", "signals_alert", "alert"):
        alert = obj(obj(b.get("data"), "data").get("alert"), "data.alert")
        if not alert.get("id"):
            raise Malformed("data.alert.id is missing")
        status = str(alert.get("status") or "").lower()
        e = Event(IGNORE, incident_id=incident_id(alert.get("id"), "fh"), source=NAME, kind=f"{kind} {status}",
                  title=str(alert.get("summary") or "").strip(), labels={"status": status} if status else {},
                  started_at=parse_time(alert.get("starts_at")))
        if status == "opened":
            e.action = TRIGGER
        elif status == "resolved":
            e.action = RESOLVE
        elif status == "acknowledged":
            e.action = ACK
        else:
            e.reason = f"alert status {status or '?'} does not capture"
        return [e]
    return [Event(IGNORE, source=NAME, kind=kind, reason=f"resource type {rtype} is not handled")]
