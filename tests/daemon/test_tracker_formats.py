"""Wire formats of the six later trackers: signatures as the vendors' own samples compute them,
and the mapping of each vendor's documented example payload (fixtures/trackers/, PROVENANCE.md).

Parser edge cases only; delivery semantics are in test_trackers_more.py against the real daemon.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path

import pytest

import tracker_payloads as T
from agent import config
from agent import webhooks as wh
from agent.webhooks import (ACK, IGNORE, PING, RESOLVE, TRIGGER, Forbidden, Malformed, Unauthorized, datadog,
                            firehydrant, grafana_alerting, grafana_irm, jsm, parse_time, rootly)

ROOT = Path(__file__).resolve().parents[2]


def test_every_tracker_is_declared_everywhere_and_documents_itself():
    assert config.TRACKERS == wh.TRACKERS and len(wh.TRACKERS) == 11
    page = (ROOT / "docs" / "trackers.md").read_text()
    for t in wh.TRACKERS:
        mod = wh.load(t)
        assert callable(mod.verify) and callable(mod.parse) and callable(mod.delivery_id)
        assert "Set-up" in (mod.__doc__ or "") or t == "generic", t
        assert f"| `{t}` |" in page, f"docs/trackers.md's tracker table lacks {t}"
    cfg = config.Config({"webhooks": {"grafana_alerting": {"enabled": True, "timestamp_header": "X-Ts"}}})
    assert cfg.webhook("grafana_alerting")["timestamp_header"] == "X-Ts"
    with pytest.raises(config.ConfigError, match="unknown config key webhooks.rootly.nope"):
        config.Config({"webhooks": {"rootly": {"nope": 1}}})


# -- signatures ----------------------------------------------------------------------

def test_rootly_accepts_exactly_what_its_documented_sample_computes():
    secret, body, ts = "webhook secret", '{"event":{"id":"1","type":"incident.created"}}', "1492774588"
    # Rootly's Python sample, as published (docs.rootly.com/configuration/webhooks)
    expected_signature = hmac.new(key=secret.encode(), msg=(ts + body).encode(), digestmod=hashlib.sha256).hexdigest()
    # the docs print the header over two lines: t=...,<newline>v1=...
    for value in (f"t={ts},v1={expected_signature}", f"t={ts}, v1={expected_signature}",
                  f"v1=00,t={ts},v1={expected_signature}"):
        rootly.verify(body.encode(), {"X-Rootly-Signature": value}, ["old", secret], now=int(ts) + 299)
    assert rootly.sign(body.encode(), secret, int(ts)) == f"t={ts},v1={expected_signature}"
    dotted = hmac.new(secret.encode(), f"{ts}.{body}".encode(), hashlib.sha256).hexdigest()
    with pytest.raises(Forbidden, match="signature"):
        rootly.verify(body.encode(), {"X-Rootly-Signature": f"t={ts},v1={dotted}"}, [secret], now=int(ts))
    with pytest.raises(Forbidden, match="away from now"):
        rootly.verify(body.encode(), {"X-Rootly-Signature": f"t={ts},v1={expected_signature}"}, [secret],
                      now=int(ts) + 301)
    with pytest.raises(Forbidden, match="away from now"):
        rootly.verify(body.encode(), {"x-rootly-signature": f"t={ts},v1={expected_signature}"}, [secret],
                      now=int(ts) - 61, opts={"tolerance_s": 60})
    with pytest.raises(Malformed):
        rootly.verify(body.encode(), {"X-Rootly-Signature": f"t=soon,v1={expected_signature}"}, [secret])
    with pytest.raises(Unauthorized):
        rootly.verify(body.encode(), {}, [secret])


def test_grafana_alerting_signs_as_grafana_alerting_hmac_go():
    body, secret, ts = b'{"version":"1"}', "secret", 1700000000
    # computeHMAC of grafana/alerting http/hmac_test.go: ts, ":", body
    plain = hmac.new(b"secret", body, hashlib.sha256).hexdigest()
    stamped = hmac.new(b"secret", b"1700000000:" + body, hashlib.sha256).hexdigest()
    assert grafana_alerting.sign(body, secret) == plain and grafana_alerting.sign(body, secret, ts) == stamped
    # no timestamp header configured: either default header name (docs' and code's) is accepted
    for name in ("X-Grafana-Alerting-Signature", "X-Grafana-Alert-Signature"):
        grafana_alerting.verify(body, {name: plain.upper()}, [secret])
    grafana_alerting.verify(body, {"X-Sig": plain}, [secret], opts={"header": "X-Sig"})
    with pytest.raises(Unauthorized):                     # a configured header name is the only one looked at
        grafana_alerting.verify(body, {"X-Grafana-Alerting-Signature": plain}, [secret], opts={"header": "X-Sig"})
    opts = {"timestamp_header": "X-Ts"}
    grafana_alerting.verify(body, {"X-Grafana-Alerting-Signature": stamped, "X-Ts": str(ts)}, [secret], opts=opts,
                            now=ts + 300)
    with pytest.raises(Forbidden, match="away from now"):
        grafana_alerting.verify(body, {"X-Grafana-Alerting-Signature": stamped, "X-Ts": str(ts)}, [secret],
                                opts=opts, now=ts - 301)
    with pytest.raises(Forbidden, match="signature"):     # the unstamped signature with a stamp header set
        grafana_alerting.verify(body, {"X-Grafana-Alerting-Signature": plain, "X-Ts": str(ts)}, [secret], opts=opts,
                                now=ts)
    with pytest.raises(Unauthorized):
        grafana_alerting.verify(body, {"X-Grafana-Alerting-Signature": stamped}, [secret], opts=opts, now=ts)
    with pytest.raises(Unauthorized):                     # replay protection asked for: a bearer is not enough
        grafana_alerting.verify(body, {"Authorization": "Bearer secret"}, [secret], opts=opts)
    # without HMAC: the contact point's Authorization header or basic auth
    grafana_alerting.verify(body, {"Authorization": "Bearer secret"}, [secret])
    basic = "Basic " + base64.b64encode(b"grafana:secret").decode()
    grafana_alerting.verify(body, {"Authorization": basic}, [secret], opts={"username": "grafana"})
    with pytest.raises(Forbidden):
        grafana_alerting.verify(body, {"Authorization": basic}, [secret])
    with pytest.raises(Unauthorized):
        grafana_alerting.verify(body, {}, [secret])


def test_firehydrant_and_jira_hex_signatures():
    body = json.dumps(T.example("firehydrant_incident.json")).encode()
    # FireHydrant's pseudocode: HMAC.hexdigest('sha256', secret, body) == headers['fh-signature']
    sig = hmac.new(b"super-secret-key", body, hashlib.sha256).hexdigest()
    firehydrant.verify(body, {"Fh-Signature": sig}, ["super-secret-key"])
    with pytest.raises(Forbidden):
        firehydrant.verify(body + b" ", {"fh-signature": sig}, ["super-secret-key"])
    with pytest.raises(Malformed):
        firehydrant.verify(body, {"fh-signature": "sha256=" + sig}, ["super-secret-key"])
    # Jira: X-Hub-Signature: sha256=<hex HMAC-SHA256(secret, body)>
    jsm.verify(body, {"x-hub-signature": "sha256=" + sig}, ["super-secret-key"])
    assert jsm.sign(body, "super-secret-key") == "sha256=" + sig
    with pytest.raises(Forbidden):
        jsm.verify(body, {"X-Hub-Signature": "sha256=" + sig}, ["another"])
    with pytest.raises(Malformed):
        jsm.verify(body, {"X-Hub-Signature": "sha1=" + sig[:40]}, ["super-secret-key"])
    jsm.verify(body, {"X-Goldenhour-Token": "tok"}, ["tok"])                    # the alert webhook's token header
    jsm.verify(body, {"X-Ops-Token": "tok"}, ["tok"], opts={"header": "X-Ops-Token"})
    with pytest.raises(Unauthorized, match="X-Hub-Signature"):
        jsm.verify(body, {}, ["tok"])


def test_grafana_irm_and_datadog_credentials():
    irm = {"Authorization": "s3cret"}
    grafana_irm.verify(b"{}", irm, ["s3cret"])                                # the field as typed
    grafana_irm.verify(b"{}", {"Authorization": "Bearer s3cret"}, ["s3cret"])
    grafana_irm.verify(b"{}", {"X-Goldenhour-Token": "s3cret"}, ["s3cret"])
    basic = {"Authorization": "Basic " + base64.b64encode(b"oncall:s3cret").decode()}
    grafana_irm.verify(b"{}", basic, ["s3cret"], opts={"username": "oncall"})
    for bad in ({"Authorization": "nope"}, {"Authorization": "Bearer nope"}, {"X-Goldenhour-Token": "nope"}, basic):
        with pytest.raises(Forbidden):
            grafana_irm.verify(b"{}", bad, ["s3cret"])
    with pytest.raises(Unauthorized):
        grafana_irm.verify(b"{}", {}, ["s3cret"])
    datadog.verify(b"{}", {"x-goldenhour-token": "t"}, ["t"])
    with pytest.raises(Unauthorized):
        datadog.verify(b"{}", {"Authorization": "Bearer t"}, ["t"])


# -- the documented examples, mapped ---------------------------------------------------

def test_grafana_irm_docs_example_and_event_types():
    body = T.example("grafana_irm_forward_all.json")                   # the docs' example is a resolve
    [e] = grafana_irm.parse(body)
    assert (e.action, e.incident_id, e.kind) == (RESOLVE, "I6HNZGUFG4K11", "resolve")
    assert e.url.endswith("/alert-groups/I6HNZGUFG4K11") and e.labels["region"] == "eu-1"
    assert grafana_irm.delivery_id({}, body) == "I6HNZGUFG4K11:resolve:2023-04-19T21:59:21.714058+00:00"
    actions = {}
    for t in ("alert group created", "escalation", "unresolve", "acknowledge", "silence", "unacknowledge"):
        body["event"] = {"type": t}
        actions[t] = grafana_irm.parse(body)[0].action
    assert actions == {"alert group created": TRIGGER, "escalation": TRIGGER, "unresolve": TRIGGER,
                       "acknowledge": ACK, "silence": IGNORE, "unacknowledge": IGNORE}
    body["event"] = {"type": "unresolve"}
    assert grafana_irm.parse(body)[0].reopen and grafana_irm.delivery_id({}, body) == ""
    # an Alertmanager notification as the first alert: every alert's labels name hosts and services
    body["alert_payload"] = {"alerts": [{"labels": {"instance": "web-3:9100", "job": "node"}},
                                        {"labels": {"host": "db-1", "service": "orders"}}]}
    [e] = grafana_irm.parse(body)
    assert e.hosts == ["web-3", "db-1"] and e.services == ["node", "orders"]
    with pytest.raises(Malformed):
        grafana_irm.parse({"alert_group": {"id": "X"}})


def test_grafana_alerting_docs_example():
    body = T.example("grafana_alerting_webhook.json")
    events = grafana_alerting.parse(body)
    gid = grafana_alerting.group_incident_id(1, "{}:{}")
    assert [(e.action, e.incident_id) for e in events] == [(TRIGGER, gid)] * 2
    assert events[0].title == "This alert was triggered for zone us-1" and events[0].labels["team"] == "blue"
    assert grafana_alerting.group_incident_id(2, "{}:{}") != gid            # same group key, other org
    body["status"] = "resolved"
    assert [e.action for e in grafana_alerting.parse(body)] == [RESOLVE]
    assert grafana_alerting.parse(T.grafana_body("k", test=True))[0].action == PING
    with pytest.raises(Malformed):
        grafana_alerting.parse({**body, "version": "4"})


def test_firehydrant_docs_examples_act_on_the_milestone():
    body = T.example("firehydrant_incident.json")                      # the docs' example: resolved
    [e] = firehydrant.parse(body)
    assert (e.action, e.incident_id, e.severity) == (RESOLVE, "04d9fd1a-ba9c-417d-b396-58a6e2c374de", "SEV2")
    assert e.labels["number"] == "602" and e.labels["priority"] == "P3"
    assert firehydrant.delivery_id({}, body) == ("04d9fd1a-ba9c-417d-b396-58a6e2c374de:resolved:"
                                                 "2023-07-25 13:38:17 UTC")
    got = {}
    for m in ("started", "detected", "acknowledged", "investigating", "identified", "mitigated", "resolved",
              "retrospective_completed", "closed", "custom_phase"):
        body["data"]["incident"]["current_milestone"] = m
        got[m] = firehydrant.parse(body)[0].action
    assert got == {"started": TRIGGER, "detected": TRIGGER, "acknowledged": TRIGGER, "investigating": TRIGGER,
                   "identified": TRIGGER, "mitigated": ACK, "resolved": RESOLVE, "retrospective_completed": RESOLVE,
                   "closed": RESOLVE, "custom_phase": IGNORE}
    body["event"]["operation"] = "created"                              # case and operation do not matter
    body["data"]["incident"].update(tags=["host:web-3", "service:checkout-api", "team-a"],
                                    impacts=[{"type": "service", "impact": {"name": "payments"}}],
                                    labels={"role": "db"})
    [e] = firehydrant.parse(body)
    assert e.hosts == ["web-3"] and e.services == ["checkout-api", "payments"] and e.labels["role"] == "db"
    [a] = firehydrant.parse(T.example("firehydrant_signals_alert.json"))
    assert (a.action, a.incident_id, a.title) == (TRIGGER, "6f767579-0015-400e-8c6e-cb481d5760c2",
                                                  "This is the Summary/Title of the Alert")
    assert firehydrant.parse(T.example("firehydrant_change_event.json"))[0].action == IGNORE
    assert parse_time("2023-07-25 13:34:49 UTC") == parse_time("2023-07-25T13:34:49Z")


def test_rootly_docs_examples():
    body = T.example("rootly_incident.json")
    [e] = rootly.parse(body)
    assert (e.action, e.incident_id, e.title) == (TRIGGER, "b7eed587-50e6-44fe-b010-7a2bb05d737a", "Sparkling Frost")
    assert e.labels["number"] == "19" and e.url.endswith("/19-sparkling-frost")
    assert rootly.delivery_id({}, body) == "9839c4ca-5e7b-416d-ad95-d09ae0c8eead"
    got = {}
    for t in ("incident.created", "incident.mitigated", "incident.resolved", "incident.cancelled", "incident.deleted",
              "incident.updated", "incident.scheduled.created", "incident_post_mortem.published"):
        body["event"]["type"] = t
        got[t] = rootly.parse(body)[0].action
    assert got == {"incident.created": TRIGGER, "incident.mitigated": ACK, "incident.resolved": RESOLVE,
                   "incident.cancelled": RESOLVE, "incident.deleted": RESOLVE, "incident.updated": IGNORE,
                   "incident.scheduled.created": IGNORE, "incident_post_mortem.published": IGNORE}
    body["event"]["type"] = "incident.created"
    for kind, action in (("test", IGNORE), ("example", IGNORE), ("backfilled", IGNORE), ("normal_sub", TRIGGER)):
        body["data"]["kind"] = kind
        assert rootly.parse(body)[0].action == action, kind
    body["data"]["kind"] = "test"
    assert rootly.parse(body, opts={"capture_test": True})[0].action == TRIGGER
    body["data"].update(kind="normal", services=[{"id": "s1", "name": "checkout-api", "slug": "checkout-api"}],
                        severity={"name": "SEV1", "slug": "sev1"}, labels={"hostname": "web-3"})
    [e] = rootly.parse(body)
    assert (e.services, e.hosts, e.severity) == (["checkout-api"], ["web-3"], "SEV1")
    alert = T.example("rootly_alert.json")
    alert["data"]["data"] = {"labels": {"instance": "db-7:9100", "job": "mysql"}}
    [a] = rootly.parse(alert)
    assert (a.action, a.incident_id, a.hosts, a.services) == (TRIGGER, "13c82722-ec52-4eda-aaa2-771f7c81c01c",
                                                              ["db-7"], ["mysql"])
    assert rootly.parse(T.example("rootly_pulse.json"))[0].action == IGNORE


def test_jsm_docs_examples():
    [e] = jsm.parse(T.example("jsm_alert_create.json"))
    assert (e.action, e.incident_id, e.source, e.tags) == (TRIGGER, "052652ac-5d1c-464a-812a-7dd18bbfba8c", "jsm",
                                                            ["tag1", "tag2"])
    ack = T.example("jsm_alert_acknowledge.json")
    assert jsm.parse(ack)[0].action == ACK
    assert jsm.delivery_id({}, ack) == "052652ac-5d1c-464a-812a-7dd18bbfba8c:Acknowledge:1420452224764002246"
    assert jsm.parse({**ack, "action": "Close"})[0].action == RESOLVE
    jira = T.example("jira_issue_webhook.json")                        # the docs' example: a summary edit
    [e] = jsm.parse(jira)
    assert (e.action, e.incident_id, e.severity) == (IGNORE, "JRA-20002", "Minor")
    assert e.url == "https://jira.atlassian.com/browse/JRA-20002" and e.tags == ["UI", "dialogue", "move"]
    assert jsm.delivery_id({"X-Atlassian-Webhook-Identifier": "7293847"}, jira) == "7293847"
    jira["webhookEvent"] = "jira:issue_created"
    jira["issue"]["fields"].update(labels=["host:web-3", "service:orders"], components=[{"name": "checkout-api"}])
    [e] = jsm.parse(jira)
    assert (e.action, e.hosts, e.services) == (TRIGGER, ["web-3"], ["orders", "checkout-api"])
    jira["webhookEvent"] = "jira:issue_updated"
    jira["changelog"]["items"] = T.RESOLVED_CHANGELOG
    assert jsm.parse(jira)[0].action == RESOLVE
    jira["changelog"]["items"] = [{"field": "status", "to": "3", "toString": "In Progress"}]
    jira["issue"]["fields"]["status"] = {"name": "In Progress", "statusCategory": {"key": "indeterminate"}}
    assert jsm.parse(jira)[0].action == IGNORE
    jira["issue"]["fields"]["status"] = {"name": "Closed", "statusCategory": {"key": "done"}}
    assert jsm.parse(jira)[0].action == RESOLVE
    jira["changelog"]["items"] = T.REOPENED_CHANGELOG
    [e] = jsm.parse(jira)
    assert (e.action, e.reopen) == (TRIGGER, True)
    jira["webhookEvent"] = "jira:issue_deleted"
    assert jsm.parse(jira)[0].action == RESOLVE
    with pytest.raises(Malformed):
        jsm.parse({"hello": "world"})


def test_datadog_template_with_the_docs_variable_examples():
    raw, _ = T.datadog_delivery("7193896212479214613", hostname="my-host", event_id="1234567")
    body = json.loads(raw)
    assert set(body) == set(json.loads(datadog.TEMPLATE))
    [e] = datadog.parse(body)
    assert (e.action, e.incident_id, e.severity) == (TRIGGER, "dd-1234-7193896212479214613", "P1")
    assert e.hosts == ["my-host"] and e.labels["role"] == "computing-node"
    assert e.labels["availability-zone"] == "us-east-1a" and "monitor" in e.tags
    assert datadog.delivery_id({}, body) == "1234567"
    got = {}
    for t in ("Triggered", "Re-Triggered", "Renotify", "Recovered", "Warn", "Re-Warn", "No Data", "Re-No Data"):
        got[t] = datadog.parse({**body, "transition": t})[0].action
    assert got == {"Triggered": TRIGGER, "Re-Triggered": TRIGGER, "Renotify": TRIGGER, "Recovered": RESOLVE,
                   "Warn": IGNORE, "Re-Warn": IGNORE, "No Data": IGNORE, "Re-No Data": IGNORE}
    # a variable Datadog left unexpanded counts as absent; the aggregation key stands in for the cycle key
    [e] = datadog.parse({**body, "alert_cycle_key": "$ALERT_CYCLE_KEY", "hostname": "$HOSTNAME",
                         "tags": "host:web-3, service:orders"})
    assert e.incident_id == "dd-1234-9bd4ac313a4d1e8fae2482df7b77628"
    assert e.hosts == ["web-3"] and e.services == ["orders"]
    assert datadog.parse({**body, "title": "[TEST] [Triggered] x"})[0].action == PING
    assert parse_time(body["date"]) == pytest.approx(int(body["date"]) / 1000)
    for bad in ({"title": "x"}, {**body, "transition": "", "alert_type": ""},
                {**body, "alert_cycle_key": "", "aggreg_key": "$AGGREG_KEY"}):
        with pytest.raises(Malformed):
            datadog.parse(bad)


def test_the_later_trackers_say_when_the_incident_began():
    """Each documented example's own start time: the flight recorder's window is cut from before it."""
    got = {
        "grafana_irm": grafana_irm.parse(T.example("grafana_irm_forward_all.json"))[0].started_at,
        "grafana_alerting": grafana_alerting.parse(T.example("grafana_alerting_webhook.json"))[0].started_at,
        "firehydrant": firehydrant.parse(T.example("firehydrant_incident.json"))[0].started_at,
        "firehydrant_alert": firehydrant.parse(T.example("firehydrant_signals_alert.json"))[0].started_at,
        "rootly": rootly.parse(T.example("rootly_incident.json"))[0].started_at,
        "rootly_alert": rootly.parse(T.example("rootly_alert.json"))[0].started_at,
        "jira": jsm.parse(T.example("jira_issue_webhook.json"))[0].started_at,
        "jsm_alert": jsm.parse(T.example("jsm_alert_create.json"))[0].started_at,
    }
    assert got == {
        "grafana_irm": parse_time("2023-04-19T21:53:48.231148Z"),
        "grafana_alerting": parse_time("2021-10-12T09:51:03.157076+02:00"),
        "firehydrant": parse_time("2023-07-25 13:34:49 UTC"),
        "firehydrant_alert": parse_time("2024-03-29 22:50:07 UTC"),
        "rootly": parse_time("2022-11-27T19:36:00.000-08:00"),
        "rootly_alert": parse_time("2022-11-27T19:15:29.546-08:00"),
        "jira": parse_time("2009-12-16T23:46:10.612-0600"),
        "jsm_alert": pytest.approx(1420452191.104),
    }
    assert all(v is not None for v in got.values())
