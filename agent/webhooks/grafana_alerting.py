"""Grafana Alerting contact-point webhook (payload ``version: "1"``).

Wire format: the Alertmanager webhook shape plus Grafana's fields, written by
Go's ``json.Marshal`` (compact; ``<``, ``>``, ``&`` escaped)::

    {"receiver", "status": "firing"|"resolved", "orgId": 1, "alerts": [{"status", "labels",
     "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint", "silenceURL",
     "dashboardURL", "panelURL", "values", "imageURL"?}], "groupLabels", "commonLabels",
     "commonAnnotations", "externalURL", "version": "1", "groupKey", "truncatedAlerts",
     "title", "state": "alerting"|"ok", "message"}

Authentication, either of:

- the contact point's optional **HMAC signature**: header
  ``X-Grafana-Alerting-Signature`` (the name is the contact point's "Header"
  field, ``[webhooks.grafana_alerting] header`` here; left empty in Grafana, the
  code of grafana/alerting sends ``X-Grafana-Alert-Signature``, which is accepted
  too) = ``hex(HMAC-SHA256(secret, body))``; with a "Timestamp header" configured
  (the same name in ``timestamp_header``) Grafana sends Unix seconds in it and
  signs ``"<timestamp>:" + body``; a timestamp more than ``tolerance_s`` (300)
  from now is refused (403) and, with ``timestamp_header`` set, an unsigned or
  unstamped delivery is refused (401): set it to get replay protection;
- ``Authorization: Bearer <secret>`` ("Authorization Header - Credentials") or
  HTTP basic auth with ``username`` and the secret as password.

Mapping: one alert group (``orgId`` + ``groupKey``) is one incident,
``ga-<first 16 hex of sha256>``. ``status: firing`` gives one trigger per
firing alert (captured once if any concerns this host; firing again after a
resolve captures again); ``status: resolved`` closes. Hosts, services and
labels: the Alertmanager label rules (``instance``, ``host``, ``service``,
``job``..., every label matched against ``host.tags``). Title: the ``summary``
annotation, else ``alertname``. Grafana's "Test" button sends ``TestAlert`` with
the annotation ``summary: Notification test``: answered as a ping, never
captured.

Dedupe: Grafana sends no delivery id and repeats a firing group every
``repeat_interval``: the per-incident record makes that one capture.

Set-up (Grafana UI): Alerts & IRM → Alerting → Contact points → + Add contact
point → Integration "Webhook"; URL ``https://<proxy>/v1/webhooks/grafana_alerting``;
Optional settings → HMAC Signature: Secret = the secret, Timestamp header
``X-Grafana-Alerting-Timestamp`` (and ``timestamp_header`` the same here); route
the alerts that should capture to this contact point with a notification
policy.
"""
from __future__ import annotations

import hashlib
import time
from typing import Any, Mapping

from agent.webhooks import (PING, Event, Forbidden, Malformed, Unauthorized, any_equal,
                            check_authorization, header, hex_digest, hmac_sha256, obj)
from agent.webhooks.alertmanager import group_events

NAME = "grafana_alerting"
SIGNATURE_HEADERS = ("X-Grafana-Alerting-Signature", "X-Grafana-Alert-Signature")


def sign(raw_body: bytes, secret: str, timestamp: int | str | None = None) -> str:
    """The signature header value Grafana sends (``timestamp``: when a timestamp header is configured)."""
    prefix = f"{timestamp}:".encode() if timestamp is not None else b""
    return hmac_sha256(secret.encode(), prefix + raw_body).hex()


def verify(raw_body: bytes, headers: Mapping[str, str], secrets: list[str], *,
           opts: dict[str, Any] | None = None, now: float | None = None) -> None:
    o = opts or {}
    names = (str(o["header"]),) if o.get("header") else SIGNATURE_HEADERS
    sig_name, sig = next(((n, header(headers, n)) for n in names if header(headers, n)), (names[0], None))
    ts_name = str(o.get("timestamp_header") or "")
    if not sig:
        if ts_name:
            raise Unauthorized(f"missing {names[0]} header (timestamp_header is set: deliveries must be signed)")
        auth = header(headers, "Authorization")
        if not auth or not auth.strip():
            raise Unauthorized(f"missing {names[0]} or Authorization header")
        check_authorization(auth, secrets, username=str(o.get("username") or ""))
        return
    provided = hex_digest(sig, sig_name)
    ts: str | None = None
    if ts_name:
        ts = (header(headers, ts_name) or "").strip()
        if not ts:
            raise Unauthorized(f"missing {ts_name} header")
        try:
            t = int(ts)
        except ValueError:
            raise Malformed(f"{ts_name} is not a Unix time") from None
        tolerance = int(o.get("tolerance_s") or 300)
        now = time.time() if now is None else now
        if abs(now - t) > tolerance:
            raise Forbidden(f"{ts_name} is more than {tolerance} s away from now (replayed or clock skew)")
    if not any_equal([provided], [sign(raw_body, s, ts) for s in secrets]):
        raise Forbidden("no valid signature")


def delivery_id(headers: Mapping[str, str], body: Any = None) -> str:
    return ""


def group_incident_id(org_id: Any, group_key: str) -> str:
    return "ga-" + hashlib.sha256(f"{org_id}\n{group_key}".encode()).hexdigest()[:16]


def _is_test(alerts: list[Any]) -> bool:
    return bool(alerts) and all(
        isinstance(a, dict) and (a.get("labels") or {}).get("alertname") == "TestAlert"
        and (a.get("annotations") or {}).get("summary") == "Notification test" for a in alerts)


def parse(body: Any, *, opts: dict[str, Any] | None = None) -> list[Event]:
    b = obj(body, "body")
    if str(b.get("version", "")) not in ("1", ""):
        raise Malformed(f"unsupported Grafana webhook version {b.get('version')!r} (1 expected)")
    gk = b.get("groupKey")
    alerts = b.get("alerts")
    if not isinstance(gk, str) or not gk or not isinstance(alerts, list):
        raise Malformed("groupKey and alerts are required")
    if _is_test(alerts):
        return [Event(PING, source=NAME, kind="test notification")]
    return group_events(b, group_incident_id(b.get("orgId", ""), gk), NAME)
