"""Prometheus Alertmanager ``webhook_config`` (payload version 4).

Wire format: ``{"version": "4", "groupKey", "status": "firing"|"resolved",
"receiver", "groupLabels", "commonLabels", "commonAnnotations", "externalURL",
"alerts": [{"status", "labels", "annotations", "startsAt", "endsAt",
"generatorURL", "fingerprint"}], "truncatedAlerts"?}``.

Authentication: Alertmanager signs nothing; its ``http_config`` sends either
``Authorization: Bearer <token>`` (``authorization: {credentials_file: …}``) or
HTTP basic auth (``basic_auth: {username, password_file}``). With
``[webhooks.alertmanager] username`` set, basic auth with that user and a
password from ``secret``/``secret_file`` is expected; a bearer token equal to a
secret is accepted either way. Missing header: 401; wrong: 403.

Mapping: Alertmanager has no incident id; one alert *group* is one incident,
``am-<first 16 hex of sha256(groupKey)>``. ``status: firing`` gives one trigger
per firing alert (the daemon captures once if any of them concerns this host);
``status: resolved`` (every alert of the group resolved; needs
``send_resolved: true``, the default) closes it. A group that fires again after
it resolved captures again. Hosts come from the alert labels ``instance``,
``host``, ``hostname``, ``node``, ``nodename``, ``server``, ``fqdn`` (a
``:port`` suffix is dropped); services from ``service``, ``job``, ``app``,
``application``, ``component``, ``container``, ``systemd_unit``/``unit``,
``name``; every label is also matched against ``host.tags`` as ``name=value``.
Severity: the ``severity`` label. Title: ``summary`` annotation, else
``alertname``.

Dedupe: none per delivery (Alertmanager repeats a firing group every
``repeat_interval``): the per-incident record does it.

Set-up (alertmanager.yml)::

    receivers:
      - name: goldenhour
        webhook_configs:
          - url: https://<proxy>/v1/webhooks/alertmanager
            send_resolved: true
            http_config:
              authorization: {credentials_file: /etc/alertmanager/goldenhour.token}

and route the alerts that should capture to that receiver; put the same token
in ``[webhooks.alertmanager] secret_file``.
"""
from __future__ import annotations

import hashlib
from typing import Any, Mapping

from agent.webhooks import (HOST_LABELS, IGNORE, RESOLVE, SERVICE_LABELS, TRIGGER, Event, Malformed,
                            check_authorization, header, label_targets, obj, parse_time)

NAME = "alertmanager"
__all__ = ["HOST_LABELS", "SERVICE_LABELS", "delivery_id", "group_incident_id", "parse", "verify"]


def verify(raw_body: bytes, headers: Mapping[str, str], secrets: list[str], *,
           opts: dict[str, Any] | None = None, now: float | None = None) -> None:
    check_authorization(header(headers, "Authorization") or "", secrets,
                        username=str((opts or {}).get("username") or ""))


def delivery_id(headers: Mapping[str, str], body: Any = None) -> str:
    return ""


def group_incident_id(group_key: str) -> str:
    return "am-" + hashlib.sha256(group_key.encode()).hexdigest()[:16]


def parse(body: Any, *, opts: dict[str, Any] | None = None) -> list[Event]:
    b = obj(body, "body")
    if str(b.get("version", "")) not in ("4", ""):
        raise Malformed(f"unsupported Alertmanager payload version {b.get('version')!r} (4 expected)")
    gk = b.get("groupKey")
    alerts = b.get("alerts")
    if not isinstance(gk, str) or not gk or not isinstance(alerts, list):
        raise Malformed("groupKey and alerts are required")
    return group_events(b, group_incident_id(gk), NAME)


def group_events(b: dict, inc: str, source: str) -> list[Event]:
    """The events of one Alertmanager-shaped group notification (``status``, ``alerts``, ``commonLabels``,
    ``commonAnnotations``, ``externalURL``) filed under incident ``inc``: a resolved group resolves it, each
    firing alert triggers it (hosts and services from its labels), an alert resolved in a firing group is
    ignored. Grafana Alerting's contact-point body has this shape too (agent/webhooks/grafana_alerting.py)."""
    alerts = b.get("alerts") if isinstance(b.get("alerts"), list) else []
    status = str(b.get("status") or "")
    common = b.get("commonLabels") if isinstance(b.get("commonLabels"), dict) else {}
    common_ann = b.get("commonAnnotations") if isinstance(b.get("commonAnnotations"), dict) else {}
    url = str(b.get("externalURL") or "")
    if status == "resolved":
        return [Event(RESOLVE, incident_id=inc, source=source, kind="resolved",
                      title=str(common_ann.get("summary") or common.get("alertname") or ""), url=url)]
    if status != "firing":
        raise Malformed(f"status must be firing or resolved, not {status!r}")
    events: list[Event] = []
    for a in alerts:
        if not isinstance(a, dict):
            raise Malformed("each alert must be an object")
        labels = {str(k): str(v) for k, v in (a.get("labels") or {}).items()}
        ann = a.get("annotations") if isinstance(a.get("annotations"), dict) else {}
        hosts, services = label_targets(labels)
        e = Event(IGNORE, incident_id=inc, source=source, kind=f"alert {a.get('status', '')}",
                  title=str(ann.get("summary") or common_ann.get("summary") or labels.get("alertname") or ""),
                  url=str(a.get("generatorURL") or url), severity=labels.get("severity", ""),
                  hosts=hosts, services=services, labels=labels, reopen=True, started_at=parse_time(a.get("startsAt")))
        if a.get("status") == "firing":
            e.action = TRIGGER
        else:
            e.reason = "alert resolved (the group is still firing)"
        events.append(e)
    if not events:
        events.append(Event(IGNORE, incident_id=inc, source=source, kind="firing", reason="no alerts"))
    return events
