"""Generic signed JSON: for any tracker or script that can send an HTTP POST.

Wire format (``Content-Type: application/json``)::

    {"incident_id": "INC-123",            required, ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$
     "action": "trigger",                 trigger | resolve | acknowledge | recapture (default trigger)
     "title": "checkout latency",         optional
     "severity": "SEV2",                  optional
     "services": ["checkout-api"],        optional, matched against daemon.services
     "hosts": ["web-3"],                  optional, matched against this host's name/addresses
     "labels": {"role": "db"},            optional, matched against host.tags as name=value
     "url": "https://tracker/INC-123",    optional
     "started_at": "2026-11-23T10:02:00Z"} optional: when the incident began (RFC 3339 or epoch
                                          seconds); the capture's flight-recorder history is cut
                                          from before it

``recapture`` is a trigger that captures again even if this incident was
already captured here (an explicit request for fresh evidence).

Authentication: ``X-Goldenhour-Signature: t=<unix seconds>,v1=<hex>`` where
``hex = HMAC-SHA256(key = secret as UTF-8, msg = "<t>." + raw body)``. Several
``v1=`` elements may be given (secret rotation; any one matching is enough). A
``t`` more than ``tolerance_s`` (default 300) away from now is refused (403):
the signed timestamp is the replay protection. Optional
``X-Goldenhour-Delivery: <id>`` names the delivery: a retry with the same id is
answered as a duplicate.

Sending one from a shell::

    body='{"incident_id":"INC-123","title":"db down","hosts":["web-3"]}'
    t=$(date +%s)
    sig=$(printf '%s' "$t.$body" | openssl dgst -sha256 -hmac "$SECRET" -hex | sed 's/^.* //')
    curl -sS -H "Content-Type: application/json" \\
         -H "X-Goldenhour-Signature: t=$t,v1=$sig" --data "$body" \\
         https://<host>/v1/webhooks/generic
"""
from __future__ import annotations

import time
from typing import Any, Mapping

from agent.webhooks import (ACK, RESOLVE, TRIGGER, Event, Forbidden, Malformed, Unauthorized, any_equal, header,
                            hmac_sha256, obj, parse_time, strs)
from agent.incident import ID_RE

NAME = "generic"
SIGNATURE_HEADER = "X-Goldenhour-Signature"
DELIVERY_HEADER = "X-Goldenhour-Delivery"
ACTIONS = {"trigger": TRIGGER, "recapture": TRIGGER, "resolve": RESOLVE, "acknowledge": ACK}


def sign(raw_body: bytes, secret: str, timestamp: int | None = None) -> str:
    """The full header value for ``raw_body`` (used by tests, benches and senders)."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={t},v1=" + hmac_sha256(secret.encode(), f"{t}.".encode() + raw_body).hex()


def verify(raw_body: bytes, headers: Mapping[str, str], secrets: list[str], *,
           opts: dict[str, Any] | None = None, now: float | None = None) -> None:
    value = header(headers, SIGNATURE_HEADER)
    if not value:
        raise Unauthorized(f"missing {SIGNATURE_HEADER} header")
    ts: str | None = None
    provided: list[str] = []
    for part in value.split(","):
        k, _, v = part.strip().partition("=")
        if k == "t":
            ts = v
        elif k == "v1":
            provided.append(v.lower())
    if ts is None or not provided:
        raise Malformed(f"{SIGNATURE_HEADER} must be t=<unix>,v1=<hex>")
    try:
        t = int(ts)
    except ValueError:
        raise Malformed(f"{SIGNATURE_HEADER} t= is not a Unix time") from None
    tolerance = int((opts or {}).get("tolerance_s") or 300)
    now = time.time() if now is None else now
    if abs(now - t) > tolerance:
        raise Forbidden(f"signature timestamp is more than {tolerance} s away from now (replayed or clock skew)")
    expected = [hmac_sha256(s.encode(), f"{t}.".encode() + raw_body).hex() for s in secrets]
    if not any_equal(provided, expected):
        raise Forbidden("no valid signature")


def delivery_id(headers: Mapping[str, str], body: Any = None) -> str:
    return (header(headers, DELIVERY_HEADER) or "").strip()[:200]


def parse(body: Any, *, opts: dict[str, Any] | None = None) -> list[Event]:
    b = obj(body, "body")
    raw_id = b.get("incident_id")
    if not isinstance(raw_id, str) or not ID_RE.fullmatch(raw_id) or ".." in raw_id:
        raise Malformed("incident_id is required: 1-128 letters, digits, '.', '_' or '-'")
    action = str(b.get("action") or "trigger")
    if action not in ACTIONS:
        raise Malformed(f"action must be one of {', '.join(ACTIONS)}")
    labels = b.get("labels")
    labels = {} if labels is None else labels
    if not isinstance(labels, dict):
        raise Malformed("labels must be an object")
    for k in ("services", "hosts"):
        if k in b and not isinstance(b[k], (list, str)):
            raise Malformed(f"{k} must be a list of strings")
    return [Event(ACTIONS[action], incident_id=raw_id, source=NAME, kind=action,
                  title=str(b.get("title") or ""), url=str(b.get("url") or ""),
                  severity=str(b.get("severity") or ""), services=strs(b.get("services")),
                  hosts=strs(b.get("hosts")), labels={str(k): str(v) for k, v in labels.items()},
                  tags=strs(b.get("tags")), force=action == "recapture",
                  started_at=parse_time(b.get("started_at")))]
