"""Datadog Webhooks integration, with the custom payload goldenhour documents.

Datadog's webhook body is whatever the webhook's "Payload" template says, with
``$VARIABLES`` filled in. goldenhour reads this template (paste it as the
webhook's Payload; leave "Encode as form" off)::

    {"goldenhour": "1",
     "id": "$ID",
     "alert_id": "$ALERT_ID",
     "alert_cycle_key": "$ALERT_CYCLE_KEY",
     "aggreg_key": "$AGGREG_KEY",
     "transition": "$ALERT_TRANSITION",
     "alert_type": "$ALERT_TYPE",
     "priority": "$ALERT_PRIORITY",
     "title": "$EVENT_TITLE",
     "hostname": "$HOSTNAME",
     "scope": "$ALERT_SCOPE",
     "tags": "$TAGS",
     "link": "$LINK",
     "date": "$DATE",
     "org_id": "$ORG_ID",
     "event_type": "$EVENT_TYPE"}

(``TEMPLATE`` below is that text.) Only ids, the title, tags and the host go
in: free text such as ``$EVENT_MSG`` stays out of the JSON. A variable Datadog
cannot fill arrives empty (or, in some contexts, unexpanded as ``$NAME``: both
are treated as absent).

Authentication: Datadog signs nothing. The webhook's "Custom Headers" carry the
secret, ``{"X-Goldenhour-Token": "<secret>"}`` (``header`` renames it; a hidden
custom variable can hold the value). Missing: 401; wrong: 403.

Mapping: one monitor alert cycle is one incident, ``dd-<monitor id>-<alert
cycle key>`` (``$ALERT_CYCLE_KEY`` links the events of one cycle from trigger to
recovery; ``$AGGREG_KEY`` stands in when it is empty). ``$ALERT_TRANSITION``
``Triggered``, ``Re-Triggered`` and ``Renotify`` capture (once per cycle);
``Recovered`` closes; ``Warn``/``Re-Warn`` and ``No Data``/``Re-No Data`` are
ignored. A monitor's "Test Notifications" (title ``[TEST] …``) is answered as a
ping, never captured. Hosts: ``$HOSTNAME``, ``host:`` tags and the ``host:`` part
of ``$ALERT_SCOPE``; services: ``service:`` tags; every ``key:value`` tag is
matched against ``host.tags`` as ``key=value``. Severity: ``$ALERT_PRIORITY``
(``P1``...) or else ``$ALERT_TYPE``. An event whose ``$DATE`` is older than
``daemon.dedupe_hours`` is stale.

Dedupe: ``$ID`` (the event) names the delivery; Datadog retries 5xx and lost
connections (5 times, 15 s timeout each).

Set-up (Datadog UI): Integrations → Webhooks → + New; Name ``goldenhour``; URL
``https://<proxy>/v1/webhooks/datadog``; Payload: the template above; Custom
Headers ``{"X-Goldenhour-Token": "<secret>"}``; then add ``@webhook-goldenhour``
to the message of each monitor that should capture (in its alert and recovery
sections, or outside any ``{{#is_alert}}`` block).
"""
from __future__ import annotations

import re
from typing import Any, Mapping

from agent.webhooks import (DEFAULT_TOKEN_HEADER, IGNORE, PING, RESOLVE, TRIGGER, Event, Malformed, Unauthorized,
                            incident_id, obj, parse_time, tag_targets, token_header)

NAME = "datadog"
TEMPLATE = """{
  "goldenhour": "1",
  "id": "$ID",
  "alert_id": "$ALERT_ID",
  "alert_cycle_key": "$ALERT_CYCLE_KEY",
  "aggreg_key": "$AGGREG_KEY",
  "transition": "$ALERT_TRANSITION",
  "alert_type": "$ALERT_TYPE",
  "priority": "$ALERT_PRIORITY",
  "title": "$EVENT_TITLE",
  "hostname": "$HOSTNAME",
  "scope": "$ALERT_SCOPE",
  "tags": "$TAGS",
  "link": "$LINK",
  "date": "$DATE",
  "org_id": "$ORG_ID",
  "event_type": "$EVENT_TYPE"
}"""
TRIGGERS = ("triggered", "re-triggered", "renotify")
RECOVERED = ("recovered",)
UNEXPANDED = re.compile(r"^\$[A-Z][A-Z0-9_]*(\[[^\]]*\])?$")


def verify(raw_body: bytes, headers: Mapping[str, str], secrets: list[str], *,
           opts: dict[str, Any] | None = None, now: float | None = None) -> None:
    name = str((opts or {}).get("header") or DEFAULT_TOKEN_HEADER)
    if not token_header(headers, name, secrets):
        raise Unauthorized(f"missing {name} header (a custom header of the Datadog webhook)")


def _v(b: dict[str, Any], key: str) -> str:
    """A template field as text; empty when absent, null or left unexpanded (``$ALERT_ID``)."""
    v = b.get(key)
    if v is None or isinstance(v, (dict, list)):
        return ""
    s = str(v).strip()
    return "" if UNEXPANDED.match(s) else s


def delivery_id(headers: Mapping[str, str], body: Any = None) -> str:
    return _v(body, "id")[:200] if isinstance(body, dict) else ""


def _csv(value: str) -> list[str]:
    return [t.strip() for t in value.split(",") if t.strip()]


def parse(body: Any, *, opts: dict[str, Any] | None = None) -> list[Event]:
    b = obj(body, "body")
    transition, alert_type = _v(b, "transition").lower(), _v(b, "alert_type").lower()
    cycle, aggreg, monitor = _v(b, "alert_cycle_key"), _v(b, "aggreg_key"), _v(b, "alert_id")
    if not (transition or alert_type) or not (cycle or aggreg):
        raise Malformed("transition and alert_cycle_key (or aggreg_key) are required: use goldenhour's "
                        "payload template")
    title = _v(b, "title")
    if title.upper().startswith("[TEST]"):
        return [Event(PING, source=NAME, kind="test notification")]
    tags = _csv(_v(b, "tags"))
    hosts, services, labels = tag_targets(tags)
    scope_hosts, _, scope_labels = tag_targets(_csv(_v(b, "scope")))
    hosts = [h for h in [_v(b, "hostname"), *hosts, *scope_hosts] if h]
    for k, v in scope_labels.items():
        labels.setdefault(k, v)
    for k in ("event_type", "org_id"):
        if _v(b, k):
            labels.setdefault(k, _v(b, k))
    raw_id = f"dd-{monitor}-{cycle or aggreg}" if monitor else f"dd-{cycle or aggreg}"
    e = Event(IGNORE, incident_id=incident_id(raw_id, "dd"), source=NAME, kind=transition or alert_type,
              title=title, url=_v(b, "link"), severity=_v(b, "priority") or alert_type,
              services=services, hosts=list(dict.fromkeys(hosts)), labels=labels, tags=tags)
    if transition in TRIGGERS or (not transition and alert_type == "error"):
        e.action, e.occurred_at = TRIGGER, parse_time(_v(b, "date"))
    elif transition in RECOVERED or (not transition and alert_type == "success"):
        e.action = RESOLVE
    else:
        e.reason = f"transition {transition or alert_type} does not capture"
    return [e]
