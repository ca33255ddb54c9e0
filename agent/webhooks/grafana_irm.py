"""Grafana IRM / Grafana OnCall outgoing webhooks, "forward all" body.

Wire format (one event per ``POST``; the webhook's "Forward All" switch sends
the whole template context, serialised by Python ``requests`` ``json=``)::

    {"event": {"type": "alert group created", "time": "2023-04-19T21:53:48.231148+00:00"},
     "user": {...} | null,
     "alert_group": {"id": "I6HNZGUFG4K11", "integration_id", "route_id", "alerts_count",
                     "state": "firing|acknowledged|resolved|silenced", "created_at", "resolved_at",
                     "acknowledged_at", "title", "permalinks": {"web", "slack", "telegram"},
                     "labels": {...}},
     "alert_group_id": "I6HNZGUFG4K11",
     "alert_payload": {...},          the first alert as its source sent it (often an Alertmanager alert)
     "integration": {"id", "type", "name", "team", "labels"},
     "notified_users": [...], "users_to_be_notified": [...], "responses"?, "webhook"?}

``event.type`` is the webhook's trigger type: ``escalation``, ``alert group
created``, ``acknowledge``, ``resolve``, ``silence``, ``unsilence``,
``unresolve``, ``unacknowledge`` (a "Status change" webhook sends the type of the
action that happened).

Authentication: IRM signs nothing. Either the webhook's "Authorization Header"
field (sent verbatim as ``Authorization``: the secret itself, or ``Bearer
<secret>``; with ``[webhooks.grafana_irm] username`` set, its Username/Password
fields as HTTP basic auth with the secret as password), or a token header from
the webhook's "Headers" field, ``{"X-Goldenhour-Token": "<secret>"}`` (the header
name is ``header``). Missing both: 401; wrong: 403.

Mapping: ``alert group created`` and ``escalation`` (the "simple" preset's
escalation-step webhook) capture; ``unresolve`` captures again if the group was
resolved here; ``resolve`` closes; ``acknowledge`` is noted (the group stays
open); every other type is ignored with 200. Incident ID: the alert group's ID
(``I6HNZGUFG4K11``). Hosts and services: the alert group's and integration's
labels and the first alert's labels (``alert_payload.labels``, or the labels of
each alert of an Alertmanager/Grafana notification in ``alert_payload.alerts``),
read with the Alertmanager label rules (``instance``, ``host``, ``service``,
``job``...); every label is also matched against ``host.tags``. Severity: the
``severity`` label. An ``alert group created`` whose ``event.time`` is more than
``daemon.dedupe_hours`` old is stale (IRM signs nothing: this bounds a replayed
body).

Dedupe: no delivery header; ``<alert group id>:<event type>:<event time>`` names
a delivery when IRM sent a time (created, acknowledge, resolve), so a retry (IRM
retries timeouts 3 times, 10 s apart, and must be answered within 4 s) is
answered as a duplicate; the per-incident record covers the rest.

Set-up (Grafana IRM UI): IRM → Integrations → Outgoing Webhooks → New → Advanced;
Trigger type "Alert Group Created" (one webhook each for "Resolved",
"Acknowledged", "Unresolved", or one "Status change" webhook); URL
``https://<proxy>/v1/webhooks/grafana_irm``; Forward All on; Authorization
Header ``Bearer <secret>`` (or Headers ``{"X-Goldenhour-Token": "<secret>"}``).
Put the secret in ``[webhooks.grafana_irm] secret_file``.
"""
from __future__ import annotations

from typing import Any, Mapping

from agent.webhooks import (ACK, DEFAULT_TOKEN_HEADER, IGNORE, RESOLVE, TRIGGER, Event, Malformed, Unauthorized,
                            check_authorization, header, incident_id, label_targets, obj, parse_time, token_header)

NAME = "grafana_irm"
CAPTURE = ("alert group created", "escalation")


def verify(raw_body: bytes, headers: Mapping[str, str], secrets: list[str], *,
           opts: dict[str, Any] | None = None, now: float | None = None) -> None:
    o = opts or {}
    name = str(o.get("header") or DEFAULT_TOKEN_HEADER)
    if token_header(headers, name, secrets):
        return
    auth = header(headers, "Authorization")
    if not auth or not auth.strip():
        raise Unauthorized(f"missing Authorization or {name} header")
    check_authorization(auth, secrets, username=str(o.get("username") or ""), verbatim=True)


def _event(body: Any) -> tuple[dict[str, Any], str]:
    ev = body.get("event") if isinstance(body, dict) else None
    if not isinstance(ev, dict):
        return {}, ""
    return ev, str(ev.get("type") or "").strip().lower()


def delivery_id(headers: Mapping[str, str], body: Any = None) -> str:
    ev, etype = _event(body)
    ag = body.get("alert_group") if isinstance(body, dict) else None
    gid = (ag or {}).get("id") if isinstance(ag, dict) else None
    gid = gid or (body.get("alert_group_id") if isinstance(body, dict) else None)
    if not (gid and etype and ev.get("time")):
        return ""
    return f"{gid}:{etype}:{ev['time']}"[:200]


def _labels(value: Any) -> dict[str, str]:
    """IRM labels: a ``{key: value}`` object, or a list of ``{"key": {"name"}, "value": {"name"}}``."""
    out: dict[str, str] = {}
    if isinstance(value, dict):
        out.update({str(k): str(v) for k, v in value.items() if v is not None and not isinstance(v, (dict, list))})
    elif isinstance(value, list):
        for item in value:
            if not isinstance(item, dict):
                continue
            k, v = item.get("key"), item.get("value")
            k = k.get("name") if isinstance(k, dict) else k
            v = v.get("name") if isinstance(v, dict) else v
            if k and v is not None:
                out[str(k)] = str(v)
    return out


def _payload_labels(payload: Any) -> list[dict[str, str]]:
    """Label sets of the first alert: one Alertmanager alert, or each alert of a whole notification."""
    if not isinstance(payload, dict):
        return []
    sets = [_labels(payload.get("labels")), _labels(payload.get("commonLabels"))]
    for a in payload.get("alerts") or []:
        if isinstance(a, dict):
            sets.append(_labels(a.get("labels")))
    return [s for s in sets if s]


def parse(body: Any, *, opts: dict[str, Any] | None = None) -> list[Event]:
    b = obj(body, "body")
    ev, etype = _event(b)
    if not etype:
        raise Malformed("event.type is missing (is Forward All on?)")
    ag = obj(b.get("alert_group"), "alert_group")
    raw_id = ag.get("id") or b.get("alert_group_id")
    integration = b.get("integration") if isinstance(b.get("integration"), dict) else {}
    label_sets = [_labels(ag.get("labels")), _labels(integration.get("labels")),
                  *_payload_labels(b.get("alert_payload"))]
    labels: dict[str, str] = {}
    hosts: list[str] = []
    services: list[str] = []
    for s in label_sets:
        h, sv = label_targets(s)
        hosts.extend(x for x in h if x not in hosts)
        services.extend(x for x in sv if x not in services)
        for k, v in s.items():
            labels.setdefault(k, v)
    permalinks = ag.get("permalinks") if isinstance(ag.get("permalinks"), dict) else {}
    e = Event(IGNORE, incident_id=incident_id(raw_id, "irm"), source=NAME, kind=etype,
              title=str(ag.get("title") or labels.get("alertname") or "").strip(),
              url=str(permalinks.get("web") or ""), severity=labels.get("severity", ""),
              services=services, hosts=hosts, labels=labels, started_at=parse_time(ag.get("created_at")))
    if etype in CAPTURE:
        e.action = TRIGGER
        if etype == "alert group created":
            e.occurred_at = parse_time(ev.get("time")) or parse_time(ag.get("created_at"))
    elif etype == "unresolve":
        e.action, e.reopen = TRIGGER, True
    elif etype == "resolve":
        e.action = RESOLVE
    elif etype == "acknowledge":
        e.action = ACK
    else:
        e.reason = f"event type {etype} does not capture"
    return [e]
