"""incident.io webhooks (delivered by Svix, Standard Webhooks signatures).

Wire format: ``{"event_type": T, T: <object>}``: the object sits under a key equal
to the event type. ``public_incident.incident_created_v2`` and
``…incident_updated_v2`` carry an IncidentV2 (``id``, ``reference`` INC-123,
``name``, ``permalink``, ``mode``, ``incident_status.category``,
``severity.name``, ``custom_field_entries``...);
``public_incident.incident_status_updated_v2`` carries ``{incident,
new_status, previous_status}``; ``private_incident.*`` carry only ``{"id"}``.

Authentication (Svix): headers ``webhook-id``, ``webhook-timestamp`` (Unix
seconds), ``webhook-signature`` (space-separated ``v1,<base64>`` entries); the
``svix-`` prefixed names are accepted too. ``key = base64decode(secret without
"whsec_")``, signature ``base64(HMAC-SHA256(key, id + "." + timestamp + "." +
raw body))``. A timestamp more than ``tolerance_s`` (default 300 s) away from
now, past or future, is refused (403): that is the replay protection.

Mapping: ``*.incident_created_v2`` captures unless its ``mode`` is ``test`` or
``tutorial`` (``[webhooks.incidentio] capture_test = true`` captures those too)
or its status category is ``declined``/``canceled``/``merged``;
``*.incident_status_updated_v2`` captures when the status moves from
``triage`` to ``live`` (a triaged incident accepted) and closes on ``closed``,
``declined``, ``canceled``, ``merged``, ``learning`` (post-incident: the fire is
out); ``*.incident_updated_v2`` closes on those categories and is otherwise
ignored. Incident ID: the ``reference`` (``INC-123``, what responders say) or
the ULID. Custom fields map to targeting: a field whose name contains
"service" gives services, one containing "host", "server" or "node" gives hosts,
any other gives a label ``<field name>=<value>``.

Dedupe: ``webhook-id`` is the same on every retry (timestamp and signature
change).

Set-up (incident.io UI): Settings → Webhooks → Add endpoint; URL
``https://<proxy>/v1/webhooks/incidentio``; subscribe to "Public incident
created (v2)", "Public incident status updated (v2)", "Public incident updated
(v2)" (and the private ones if wanted); copy the signing secret (``whsec_…``)
into ``[webhooks.incidentio] secret_file``.
"""
from __future__ import annotations

import base64
import binascii
import time
from typing import Any, Mapping

from agent.webhooks import (IGNORE, RESOLVE, TRIGGER, Event, Forbidden, Malformed, Unauthorized, any_equal,
                            header, hmac_sha256, incident_id, obj, parse_time)

NAME = "incidentio"
CLOSED = ("closed", "declined", "canceled", "cancelled", "merged", "learning")
NO_CAPTURE_MODES = ("test", "tutorial")


def _key(secret: str) -> bytes:
    s = secret.strip()
    if s.startswith("whsec_"):
        s = s[len("whsec_"):]
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        # not base64: Standard Webhooks secrets always are; use the text as is
        return s.encode()


def sign(raw_body: bytes, secret: str, msg_id: str, timestamp: int | str) -> str:
    """The ``v1,<base64>`` entry Svix sends (used by tests and benches)."""
    mac = hmac_sha256(_key(secret), f"{msg_id}.{timestamp}.".encode() + raw_body)
    return "v1," + base64.b64encode(mac).decode()


def _h(headers: Mapping[str, str], suffix: str) -> str | None:
    return header(headers, f"webhook-{suffix}") or header(headers, f"svix-{suffix}")


def verify(raw_body: bytes, headers: Mapping[str, str], secrets: list[str], *,
           opts: dict[str, Any] | None = None, now: float | None = None) -> None:
    msg_id, ts, sig = _h(headers, "id"), _h(headers, "timestamp"), _h(headers, "signature")
    if not (msg_id and ts and sig):
        raise Unauthorized("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        t = int(ts.strip())
    except ValueError:
        raise Malformed("webhook-timestamp is not a Unix time") from None
    tolerance = int((opts or {}).get("tolerance_s") or 300)
    now = time.time() if now is None else now
    if abs(now - t) > tolerance:
        raise Forbidden(f"webhook-timestamp is more than {tolerance} s away from now (replayed or clock skew)")
    provided = [p.split(",", 1)[1] for p in sig.split() if p.startswith("v1,") and "," in p]
    if not provided:
        raise Malformed("webhook-signature has no v1 signature")
    expected = [sign(raw_body, s, msg_id.strip(), ts.strip())[3:] for s in secrets]
    if not any_equal(provided, expected):
        raise Forbidden("no valid signature")


def delivery_id(headers: Mapping[str, str], body: Any = None) -> str:
    return (_h(headers, "id") or "").strip()


def _values(entry: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for v in entry.get("values") or []:
        if not isinstance(v, dict):
            continue
        cat = v.get("value_catalog_entry")
        if isinstance(cat, dict):
            out.extend(str(x) for x in [cat.get("name"), cat.get("external_id"), *(cat.get("aliases") or [])] if x)
        opt = v.get("value_option")
        if isinstance(opt, dict) and opt.get("value"):
            out.append(str(opt["value"]))
        for k in ("value_text", "value_link", "value_numeric"):
            if v.get(k):
                out.append(str(v[k]))
    return out


def _incident_event(inc: dict[str, Any], etype: str) -> Event:
    services: list[str] = []
    hosts: list[str] = []
    labels: dict[str, str] = {}
    for entry in inc.get("custom_field_entries") or []:
        if not isinstance(entry, dict):
            continue
        name = str((entry.get("custom_field") or {}).get("name") or "").strip()
        vals = _values(entry)
        low = name.lower()
        if "service" in low:
            services.extend(vals)
        elif any(w in low for w in ("host", "server", "node")):
            hosts.extend(vals)
        elif name and vals:
            labels[name] = vals[0]
    sev = inc.get("severity") if isinstance(inc.get("severity"), dict) else {}
    status = inc.get("incident_status") if isinstance(inc.get("incident_status"), dict) else {}
    if status.get("category"):
        labels.setdefault("status", str(status.get("category")))
    if inc.get("mode"):
        labels.setdefault("mode", str(inc["mode"]))
    raw_id = inc.get("reference") or inc.get("id")
    return Event(IGNORE, incident_id=incident_id(raw_id, "iio"), source=NAME, kind=etype,
                 title=str(inc.get("name") or ""), url=str(inc.get("permalink") or ""),
                 severity=str(sev.get("name") or ""), services=services, hosts=hosts, labels=labels,
                 started_at=parse_time(inc.get("created_at")))


def parse(body: Any, *, opts: dict[str, Any] | None = None) -> list[Event]:
    capture_test = bool((opts or {}).get("capture_test"))
    b = obj(body, "body")
    etype = str(b.get("event_type") or b.get("type") or "")
    if not etype:
        raise Malformed("event_type is missing")
    payload = b.get(etype, b.get("data"))
    if not etype.startswith(("public_incident.incident_", "private_incident.incident_")):
        return [Event(IGNORE, source=NAME, kind=etype, reason=f"event type {etype} is not handled")]
    payload = obj(payload, f"the {etype} object")
    if etype.endswith("incident_status_updated_v2"):
        inc = obj(payload.get("incident"), "incident")
        e = _incident_event(inc, etype)
        new = str((payload.get("new_status") or {}).get("category") or "")
        old = str((payload.get("previous_status") or {}).get("category") or "")
        if new in CLOSED:
            e.action = RESOLVE
        elif new == "live" and old == "triage" and (capture_test or e.labels.get("mode") not in NO_CAPTURE_MODES):
            e.action = TRIGGER
        else:
            e.reason = f"status change {old or '?'} -> {new or '?'} does not capture"
        return [e]
    if "id" not in payload:
        raise Malformed(f"{etype} object has no id")
    e = _incident_event(payload, etype)
    category = e.labels.get("status", "")
    if etype.endswith("incident_created_v2"):
        if category in CLOSED:
            e.reason = f"created as {category}"
        elif e.labels.get("mode") in NO_CAPTURE_MODES and not capture_test:
            e.reason = f"{e.labels['mode']} incident (set capture_test to capture those)"
        else:
            e.action = TRIGGER
    elif etype.endswith("incident_updated_v2"):
        if category in CLOSED:
            e.action = RESOLVE
        else:
            e.reason = "an update does not capture"
    else:
        e.reason = f"event type {etype} is not handled"
    return [e]
