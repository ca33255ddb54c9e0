"""Rootly outgoing webhooks (Settings → Webhooks).

Wire format: ``{"event": {"id", "type", "issued_at"}, "data": {...}}``; ``data``
is the resource when the event was issued. ``incident.*`` carries the incident
(``id`` UUID, ``sequential_id``, ``title``, ``slug``, ``kind`` (``normal``,
``test``, ``example``, ``backfilled``, ``scheduled``...), ``status``, ``url``,
``severity``, ``labels``, ``services[]``, ``environments[]``,
``functionalities[]``, ``groups[]``...); ``alert.created`` carries the alert
(``id``, ``source``, ``summary``, ``labels`` ``[{key, value}]``, ``data`` (the
source's own payload), ``external_url``...).

Authentication: ``X-Rootly-Signature: t=<unix seconds>,v1=<hex>``. Rootly's
docs say "concatenate the timestamp with the request body and generate a SHA256
HMAC digest using the webhook secret"; their own Ruby, Python and JS samples
compute ``hex(HMAC-SHA256(secret, timestamp + body))`` with **no separator**, and
that is the only string accepted here (some third-party code signs
``timestamp + "." + body``: such a signature is refused, 403). The docs' example
header carries no secret or body, so no vendor vector exists to check against.
Rootly documents no tolerance: a ``t`` more than ``tolerance_s`` (300) from now
is refused (403) as a replay; keep NTP on.

Mapping: ``incident.created`` captures unless the incident's ``kind`` is a
test/example (``capture_test = true`` captures those), a backfilled or scheduled
one, or it was created already resolved/cancelled; ``alert.created`` captures
(the alert is its own incident); ``incident.resolved``, ``incident.cancelled``
and ``incident.deleted`` close; ``incident.mitigated`` is noted (the incident
stays open); ``incident.updated`` and every other event are ignored with 200.
Incident ID: the incident's (or alert's) UUID; ``sequential_id`` is kept as the
label ``number``. Services: ``services[].name``/``slug``; labels: ``labels``
(object or ``[{key, value}]``), ``environments`` as ``environment``; hosts:
labels ``host``/``hostname``, and for alerts the Alertmanager label rules over
``data.labels`` of the source payload. Severity: ``severity.name`` (or slug).

Dedupe: ``event.id`` names the delivery.

Set-up (Rootly UI): Settings → Webhooks → New Webhook; URL
``https://<proxy>/v1/webhooks/rootly``; event types ``incident.created``,
``incident.mitigated``, ``incident.resolved``, ``incident.cancelled``,
``alert.created``; save, copy the signing secret (shown once) into
``[webhooks.rootly] secret_file``.
"""
from __future__ import annotations

import time
from typing import Any, Mapping

from agent.webhooks import (ACK, IGNORE, RESOLVE, TRIGGER, Event, Forbidden, Malformed, Unauthorized, any_equal,
                            header, hmac_sha256, incident_id, label_targets, names, obj, parse_time)

NAME = "rootly"
SIGNATURE_HEADER = "X-Rootly-Signature"
TEST_KINDS = ("test", "test_sub", "example", "example_sub")
NO_CAPTURE_KINDS = ("backfilled", "scheduled")
CLOSED_STATUSES = ("resolved", "cancelled", "canceled", "closed", "completed")
CLOSE_EVENTS = ("incident.resolved", "incident.cancelled", "incident.deleted")


def sign(raw_body: bytes, secret: str, timestamp: int | None = None) -> str:
    """The full header value, as Rootly's documented samples compute it: ``HMAC(secret, t + body)``."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={t},v1=" + hmac_sha256(secret.encode(), str(t).encode() + raw_body).hex()


def verify(raw_body: bytes, headers: Mapping[str, str], secrets: list[str], *,
           opts: dict[str, Any] | None = None, now: float | None = None) -> None:
    value = header(headers, SIGNATURE_HEADER)
    if not value or not value.strip():
        raise Unauthorized(f"missing {SIGNATURE_HEADER} header")
    ts: str | None = None
    provided: list[str] = []
    for part in value.replace("\n", ",").split(","):
        k, _, v = part.strip().partition("=")
        if k == "t":
            ts = v.strip()
        elif k == "v1":
            provided.append(v.strip().lower())
    if not ts or not provided:
        raise Malformed(f"{SIGNATURE_HEADER} must be t=<unix>,v1=<hex>")
    try:
        t = int(ts)
    except ValueError:
        raise Malformed(f"{SIGNATURE_HEADER} t= is not a Unix time") from None
    tolerance = int((opts or {}).get("tolerance_s") or 300)
    now = time.time() if now is None else now
    if abs(now - t) > tolerance:
        raise Forbidden(f"signature timestamp is more than {tolerance} s away from now (replayed or clock skew)")
    expected = [hmac_sha256(s.encode(), ts.encode() + raw_body).hex() for s in secrets]
    if not any_equal(provided, expected):
        raise Forbidden("no valid signature")


def delivery_id(headers: Mapping[str, str], body: Any = None) -> str:
    ev = body.get("event") if isinstance(body, dict) else None
    return str((ev or {}).get("id") or "")[:200] if isinstance(ev, dict) else ""


def _labels(value: Any) -> dict[str, str]:
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items() if v is not None and not isinstance(v, (dict, list))}
    out: dict[str, str] = {}
    for item in value if isinstance(value, list) else []:
        if isinstance(item, dict) and item.get("key") is not None and item.get("value") is not None:
            out[str(item["key"])] = str(item["value"])
    return out


def _incident(data: dict[str, Any], etype: str) -> Event:
    if not data.get("id"):
        raise Malformed("data.id is missing")
    labels = _labels(data.get("labels"))
    hosts = [labels[k] for k in ("host", "hostname") if labels.get(k)]
    services = names(data.get("services"), "name", "slug")
    services += [labels["service"]] if labels.get("service") else []
    envs = names(data.get("environments"), "name", "slug")
    if envs:
        labels.setdefault("environment", envs[0])
    for k in ("kind", "status"):
        if data.get(k):
            labels.setdefault(k, str(data[k]))
    if data.get("sequential_id") is not None:
        labels.setdefault("number", str(data["sequential_id"]))
    sev = data.get("severity")
    severity = str((sev.get("name") or sev.get("slug") or "") if isinstance(sev, dict) else (sev or ""))
    return Event(IGNORE, incident_id=incident_id(data.get("id"), "rootly"), source=NAME, kind=etype,
                 title=str(data.get("title") or "").strip(), url=str(data.get("url") or data.get("short_url") or ""),
                 severity=severity, services=services, hosts=hosts, labels=labels,
                 tags=names(data.get("groups"), "name", "slug"),
                 started_at=parse_time(data.get("started_at")) or parse_time(data.get("created_at")))


def _alert(data: dict[str, Any], etype: str) -> Event:
    if not data.get("id"):
        raise Malformed("data.id is missing")
    labels = _labels(data.get("labels"))
    raw = data.get("data") if isinstance(data.get("data"), dict) else {}
    src_labels = _labels(raw.get("labels")) if isinstance(raw.get("labels"), dict) else {}
    hosts, services = label_targets({**src_labels, **labels})
    for k, v in src_labels.items():
        labels.setdefault(k, v)
    if data.get("source"):
        labels.setdefault("source", str(data["source"]))
    return Event(TRIGGER, incident_id=incident_id(data.get("id"), "rootly"), source=NAME, kind=etype,
                 title=str(data.get("summary") or "").strip(), url=str(data.get("external_url") or ""),
                 severity=labels.get("severity", ""), services=services, hosts=hosts, labels=labels,
                 started_at=parse_time(data.get("started_at")) or parse_time(data.get("created_at")))


def parse(body: Any, *, opts: dict[str, Any] | None = None) -> list[Event]:
    capture_test = bool((opts or {}).get("capture_test"))
    b = obj(body, "body")
    ev = obj(b.get("event"), "event")
    etype = str(ev.get("type") or "")
    if not etype:
        raise Malformed("event.type is missing")
    if etype == "alert.created":
        return [_alert(obj(b.get("data"), "data"), etype)]
    if not etype.startswith("incident.") or etype.startswith("incident.scheduled."):
        return [Event(IGNORE, source=NAME, kind=etype, reason=f"event type {etype} is not handled")]
    e = _incident(obj(b.get("data"), "data"), etype)
    kind, status = e.labels.get("kind", "normal"), e.labels.get("status", "")
    if etype == "incident.created":
        if kind in TEST_KINDS and not capture_test:
            e.reason = f"{kind} incident (set capture_test to capture those)"
        elif kind in NO_CAPTURE_KINDS:
            e.reason = f"{kind} incident"
        elif status in CLOSED_STATUSES:
            e.reason = f"created as {status}"
        else:
            e.action = TRIGGER
    elif etype in CLOSE_EVENTS:
        e.action = RESOLVE
    elif etype == "incident.mitigated":
        e.action = ACK
    else:
        e.reason = f"event type {etype} does not capture"
    return [e]
