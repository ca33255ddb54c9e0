"""Deliveries as each tracker sends them, built from the vendors' documented examples and signed
the way the vendor signs (see /work/shared/webhooks.md and each agent/webhooks/<tracker>.py).

Each builder returns ``(raw_body_bytes, headers)``; bodies are serialised once, and the
signature is computed over exactly those bytes.
"""
from __future__ import annotations

import base64
import copy
import json
import time
import uuid

from agent.webhooks import generic, incidentio, pagerduty

HOST = "gh-test-host"
SECRETS = {
    "pagerduty": "lDQHScfUeXUKaQRNF+8XIiDKZ7XX3itBAYzwU0TARw8lJqRnkKl2iB1anSb0Z+IK",   # go-pagerduty's test secret
    "incidentio": "whsec_" + base64.b64encode(b"goldenhour-test-svix-secret-0123").decode(),
    "alertmanager": "am-bearer-token-for-tests-0123456789",
    "opsgenie": "og-header-token-for-tests-0123456789",
    "generic": "generic-hmac-secret-for-tests-0123456789",
}

# PagerDuty V3, the docs' incident payload (developer-docs 01-Overview.md), as incident.triggered
PD_EXAMPLE = {"event": {
    "id": "5ac64822-4adc-4fda-ade0-410becf0de4f", "event_type": "incident.triggered", "resource_type": "incident",
    "occurred_at": "2020-10-02T18:45:22.169Z",
    "agent": {"html_url": "https://acme.pagerduty.com/users/PLH1HKV", "id": "PLH1HKV",
              "self": "https://api.pagerduty.com/users/PLH1HKV", "summary": "Tenex Engineer", "type": "user_reference"},
    "client": {"name": "PagerDuty"},
    "data": {"id": "PGR0VU2", "type": "incident", "self": "https://api.pagerduty.com/incidents/PGR0VU2",
             "html_url": "https://acme.pagerduty.com/incidents/PGR0VU2", "number": 2, "status": "triggered",
             "incident_key": "d3640fbd41094207a1c11e58e46b1662", "created_at": "2020-04-09T15:16:27Z",
             "title": "A little bump in the road",
             "service": {"html_url": "https://acme.pagerduty.com/services/PF9KMXH", "id": "PF9KMXH",
                         "self": "https://api.pagerduty.com/services/PF9KMXH", "summary": "API Service",
                         "type": "service_reference"},
             "assignees": [{"html_url": "https://acme.pagerduty.com/users/PTUXL6G", "id": "PTUXL6G",
                            "self": "https://api.pagerduty.com/users/PTUXL6G", "summary": "User 123",
                            "type": "user_reference"}],
             "escalation_policy": {"html_url": "https://acme.pagerduty.com/escalation_policies/PUS0KTE",
                                   "id": "PUS0KTE", "self": "https://api.pagerduty.com/escalation_policies/PUS0KTE",
                                   "summary": "Default", "type": "escalation_policy_reference"},
             "teams": [{"html_url": "https://acme.pagerduty.com/teams/PFCVPS0", "id": "PFCVPS0",
                        "self": "https://api.pagerduty.com/teams/PFCVPS0", "summary": "Engineering",
                        "type": "team_reference"}],
             "priority": {"html_url": "https://acme.pagerduty.com/account/incident_priorities", "id": "PSO75BM",
                          "self": "https://api.pagerduty.com/priorities/PSO75BM", "summary": "P1",
                          "type": "priority_reference"},
             "urgency": "high",
             "conference_bridge": {"conference_number": "+1 1234123412,,987654321#",
                                   "conference_url": "https://example.com"},
             "resolve_reason": None}}}

# incident.io IncidentV2 (OpenAPI x-webhooks example fields)
IIO_INCIDENT = {
    "id": "01FDAG4SAP5TYPT98WGR2N7W91", "reference": "INC-123", "name": "Our database is sad",
    "summary": "Connection pool exhausted", "permalink": "https://app.incident.io/incidents/123",
    "visibility": "public", "mode": "standard",
    "incident_status": {"id": "01FCNDV6P870EA6S7TK1DSYDG0", "name": "Investigating", "category": "live", "rank": 4},
    "severity": {"id": "01FCNDV6P870EA6S7TK1DSYDG0", "name": "Minor", "rank": 1},
    "custom_field_entries": [
        {"custom_field": {"id": "01FCNDV6P870EA6S7TK1DSYDG0", "name": "Affected services",
                          "field_type": "multi_select"},
         "values": [{"value_catalog_entry": {"id": "01FCNDV6P870EA6S7TK1DSYDG0", "name": "checkout-api",
                                             "aliases": ["checkout"], "external_id": "svc-42"}}]}],
    "created_at": "2021-08-17T13:28:57.801578Z", "updated_at": "2021-08-17T13:28:57.801578Z",
}

# Alertmanager webhook_config payload version 4 (prometheus.io docs)
AM_EXAMPLE = {
    "version": "4", "groupKey": '{}/{team="checkout"}:{alertname="CheckoutHighLatency"}', "truncatedAlerts": 0,
    "status": "firing", "receiver": "goldenhour",
    "groupLabels": {"alertname": "CheckoutHighLatency"},
    "commonLabels": {"alertname": "CheckoutHighLatency", "severity": "critical", "team": "checkout"},
    "commonAnnotations": {"summary": "p99 latency above 2 s"},
    "externalURL": "http://alertmanager.example:9093", "notification_reason": "first notification",
    "alerts": [
        {"status": "firing", "labels": {"alertname": "CheckoutHighLatency", "instance": "web-9:9100",
                                        "job": "node", "severity": "critical", "team": "checkout"},
         "annotations": {"summary": "p99 latency above 2 s"}, "startsAt": "2026-11-23T10:15:00.000Z",
         "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prometheus.example/graph?g0.expr=x",
         "fingerprint": "6f3e3b1c2d4a5b6c"},
        {"status": "firing", "labels": {"alertname": "CheckoutHighLatency", "instance": f"{HOST}:9100",
                                        "job": "node", "severity": "critical", "team": "checkout"},
         "annotations": {"summary": "p99 latency above 2 s"}, "startsAt": "2026-11-23T10:15:00.000Z",
         "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prometheus.example/graph?g0.expr=x",
         "fingerprint": "0a1b2c3d4e5f6a7b"}],
}

# Opsgenie "Create" (docs example; its tags include "tag1", which the test host has in host.tags)
OG_EXAMPLE = {
    "source": {"name": "web", "type": "API"},
    "alert": {"updatedAt": 1420452193166002000, "tags": ["tag1", "tag2"], "teams": ["team1", "team2"],
              "recipients": ["recipient1", "recipient2"], "message": " test alert",
              "username": "fili@ifountain.com", "alertId": "052652ac-5d1c-464a-812a-7dd18bbfba8c",
              "source": "fili@ifountain.com", "alias": "aliastest", "tinyId": "23", "createdAt": 1420452191104,
              "userId": "daed1180-0ce8-438b-8f8e-57e1a5920a2d", "entity": ""},
    "action": "Create", "integrationId": "37c8f316-17c6-49d7-899b-9c7e540c048d", "integrationName": "Integration1",
}


def _json(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def pagerduty_delivery(incident_id: str = "PGR0VU2", event_type: str = "incident.triggered",
                       webhook_id: str | None = None, secret: str | None = None, occurred_at: str | None = None,
                       service: str = "API Service"):
    body = copy.deepcopy(PD_EXAMPLE)
    ev = body["event"]
    ev["event_type"] = event_type
    ev["occurred_at"] = occurred_at or time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    ev["data"]["id"] = incident_id
    ev["data"]["service"]["summary"] = service
    if event_type == "incident.resolved":
        ev["data"]["status"] = "resolved"
    raw = _json(body)
    return raw, {"Content-Type": "application/json", "User-Agent": "PagerDuty-Webhook/V3.0",
                 "X-Webhook-Id": webhook_id or str(uuid.uuid4()), "X-Webhook-Subscription": "PXSUIZH",
                 "X-PagerDuty-Signature": "v1=" + "0" * 64 + "," + pagerduty.sign(raw, secret or SECRETS["pagerduty"])}


def pagerduty_ping(secret: str | None = None):
    raw = _json({"event": {"id": "01CELMVBJXNNUAHDTYMOHB3HWQ", "event_type": "pagey.ping", "resource_type": "pagey",
                           "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()), "agent": None,
                           "client": None, "data": {"message": "Hello from your friend Pagey!", "type": "ping"}}})
    return raw, {"Content-Type": "application/json", "X-Webhook-Id": str(uuid.uuid4()),
                 "X-PagerDuty-Signature": pagerduty.sign(raw, secret or SECRETS["pagerduty"])}


def incidentio_delivery(reference: str = "INC-123", event_type: str = "public_incident.incident_created_v2",
                        msg_id: str | None = None, timestamp: int | None = None, secret: str | None = None,
                        mode: str = "standard", category: str = "live"):
    inc = copy.deepcopy(IIO_INCIDENT)
    inc["reference"], inc["mode"] = reference, mode
    inc["incident_status"]["category"] = category
    raw = _json({"event_type": event_type, event_type: inc})
    mid = msg_id or f"msg_{uuid.uuid4().hex}"
    ts = int(time.time()) if timestamp is None else timestamp
    return raw, {"Content-Type": "application/json", "webhook-id": mid, "webhook-timestamp": str(ts),
                 "webhook-signature": incidentio.sign(raw, secret or SECRETS["incidentio"], mid, ts)}


def alertmanager_delivery(group_key: str | None = None, status: str = "firing", token: str | None = None,
                          hosts: tuple[str, ...] = ("web-9:9100", f"{HOST}:9100")):
    body = copy.deepcopy(AM_EXAMPLE)
    if group_key:
        body["groupKey"] = group_key
    body["status"] = status
    body["alerts"] = [dict(a, status=status, labels=dict(a["labels"], instance=h))
                      for a, h in zip(body["alerts"] * 2, hosts, strict=False)]
    # Go's json.Encoder: compact, trailing newline, &<> escaped
    raw = json.dumps(body, separators=(",", ":")).replace("&", "\\u0026").replace("<", "\\u003c").replace(
        ">", "\\u003e").encode() + b"\n"
    return raw, {"Content-Type": "application/json", "User-Agent": "Alertmanager/0.28.1",
                 "Authorization": f"Bearer {token or SECRETS['alertmanager']}"}


def opsgenie_delivery(alert_id: str = "052652ac-5d1c-464a-812a-7dd18bbfba8c", action: str = "Create",
                      token: str | None = None):
    body = copy.deepcopy(OG_EXAMPLE)
    body["action"] = action
    body["alert"]["alertId"] = alert_id
    raw = _json(body)
    return raw, {"Content-Type": "application/json", "X-Goldenhour-Token": token or SECRETS["opsgenie"]}


def generic_delivery(incident_id: str, action: str = "trigger", hosts=(HOST,), services=(), timestamp=None,
                     secret: str | None = None, delivery: str | None = None, title: str = "db down"):
    raw = _json({"incident_id": incident_id, "action": action, "title": title, "severity": "SEV2",
                 "services": list(services), "hosts": list(hosts), "url": f"https://tracker.example/{incident_id}"})
    h = {"Content-Type": "application/json",
         "X-Goldenhour-Signature": generic.sign(raw, secret or SECRETS["generic"], timestamp)}
    if delivery:
        h["X-Goldenhour-Delivery"] = delivery
    return raw, h
