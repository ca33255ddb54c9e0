"""Wire formats: the vendors' own signature vectors, payload mapping and the targeting rules.

Recorded vendor examples only (these are parser edge cases); everything end to end is in
test_daemon_*.py against the real daemon.
"""
from __future__ import annotations

import base64
import json

import pytest

import gh_webhook_payloads as P
from agent.targeting import Identity, concerns
from agent.webhooks import (ACK, IGNORE, PING, RESOLVE, TRIGGER, Event, Forbidden, Malformed, Unauthorized,
                            alertmanager, generic, incidentio, opsgenie, pagerduty, parse_time)

# go-pagerduty webhookv3_test.go: secret, body and the signature PagerDuty computed
PD_SECRET = "lDQHScfUeXUKaQRNF+8XIiDKZ7XX3itBAYzwU0TARw8lJqRnkKl2iB1anSb0Z+IK"
PD_BODY = ('{"event":{"id":"01BWDWL3NYY7LUFPZCC28QUCMK","event_type":"incident.priority_updated","resource_type":'
           '"incident","occurred_at":"2021-04-26T17:36:27.458Z","agent":{"html_url":"https://acme.pagerduty.com/users'
           '/PLH1HKV","id":"PLH1HKV","self":"https://api.pagerduty.com/users/PLH1HKV","summary":"Tenex Engineer","ty'
           'pe":"user_reference"},"client":null,"data":{"id":"PGR0VU2","type":"incident","self":"https://api.pagerdu'
           'ty.com/incidents/PGR0VU2","html_url":"https://acme.pagerduty.com/incidents/PGR0VU2","number":2,"status":'
           '"triggered","title":"A little bump in the road","service":{"html_url":"https://acme.pagerduty.com/servic'
           'es/PF9KMXH","id":"PF9KMXH","self":"https://api.pagerduty.com/services/PF9KMXH","summary":"API Service","'
           'type":"service_reference"},"assignees":[{"html_url":"https://acme.pagerduty.com/users/PTUXL6G","id":"PTU'
           'XL6G","self":"https://api.pagerduty.com/users/PTUXL6G","summary":"User 123","type":"user_reference"}],"e'
           'scalation_policy":{"html_url":"https://acme.pagerduty.com/escalation_policies/PUS0KTE","id":"PUS0KTE","s'
           'elf":"https://api.pagerduty.com/escalation_policies/PUS0KTE","summary":"Default","type":"escalation_poli'
           'cy_reference"},"teams":[{"html_url":"https://acme.pagerduty.com/teams/PFCVPS0","id":"PFCVPS0","self":"ht'
           'tps://api.pagerduty.com/teams/PFCVPS0","summary":"Engineering","type":"team_reference"}],"priority":{"ht'
           'ml_url":"https://acme.pagerduty.com/account/incident_priorities","id":"PSO75BM","self":"https://api.page'
           'rduty.com/priorities/PSO75BM","summary":"P1","type":"priority_reference"},"urgency":"high","conference_b'
           'ridge":{"conference_number":1000,"conference_url":"https://example.com"},"resolve_reason":null}}}').encode()
PD_SIG = "v1=0c0b9495b893a39e70d1fea2fe11fbe0a825f88b9f67846f6cc07dd2bc5476cd"


def test_pagerduty_signature_matches_pagerdutys_own_vector():
    assert pagerduty.sign(PD_BODY, PD_SECRET) == PD_SIG
    pagerduty.verify(PD_BODY, {"X-PagerDuty-Signature": PD_SIG}, [PD_SECRET])
    # rotation: several v1= elements, any one valid; other versions ignored; header name any case
    pagerduty.verify(PD_BODY, {"x-pagerduty-signature": "v2=abc, v1=" + "1" * 64 + "," + PD_SIG}, ["old", PD_SECRET])
    with pytest.raises(Forbidden):
        pagerduty.verify(PD_BODY, {"X-PagerDuty-Signature":
                                   "v1=7020c8a7ec668a9b7012bc3dd82e483394b038f4230acc6785efbf2a7d8bcaf5"}, [PD_SECRET])
    with pytest.raises(Forbidden):
        pagerduty.verify(PD_BODY + b" ", {"X-PagerDuty-Signature": PD_SIG}, [PD_SECRET])
    with pytest.raises(Unauthorized):
        pagerduty.verify(PD_BODY, {}, [PD_SECRET])
    with pytest.raises(Malformed):
        pagerduty.verify(PD_BODY, {"X-PagerDuty-Signature": "sha256=abc"}, [PD_SECRET])


def test_svix_signature_matches_the_svix_docs_vector():
    secret, msg_id, ts, body = ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
                                b'{"test": 2432232314}')
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert incidentio.sign(body, secret, msg_id, ts) == expected
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": f"v1,bogus= {expected}"}
    incidentio.verify(body, headers, [secret], now=ts + 299)
    incidentio.verify(body, {"svix-id": msg_id, "svix-timestamp": str(ts), "svix-signature": expected}, [secret],
                      now=ts - 299)
    with pytest.raises(Forbidden, match="away from now"):
        incidentio.verify(body, headers, [secret], now=ts + 301)
    with pytest.raises(Forbidden, match="away from now"):
        incidentio.verify(body, headers, [secret], now=ts - 3600, opts={"tolerance_s": 60})
    with pytest.raises(Forbidden, match="signature"):
        incidentio.verify(body, {**headers, "webhook-id": "msg_other"}, [secret], now=ts)
    with pytest.raises(Malformed):
        incidentio.verify(body, {**headers, "webhook-timestamp": "soon"}, [secret], now=ts)
    with pytest.raises(Unauthorized):
        incidentio.verify(body, {"webhook-id": msg_id}, [secret], now=ts)


def test_generic_signature_is_hmac_of_timestamp_dot_body():
    import hashlib
    import hmac
    body = b'{"incident_id":"INC-1"}'
    header = generic.sign(body, "s3cret", 1700000000)
    assert header == "t=1700000000,v1=" + hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    generic.verify(body, {"X-Goldenhour-Signature": header}, ["other", "s3cret"], now=1700000100)
    with pytest.raises(Forbidden):
        generic.verify(body, {"X-Goldenhour-Signature": header}, ["s3cret"], now=1700000301)
    with pytest.raises(Forbidden):
        generic.verify(body.replace(b"1", b"2"), {"X-Goldenhour-Signature": header}, ["s3cret"], now=1700000000)


def test_alertmanager_and_opsgenie_credentials():
    bearer = {"Authorization": "Bearer tok"}
    alertmanager.verify(b"{}", bearer, ["tok"])
    basic = {"Authorization": "Basic " + base64.b64encode(b"am:pw").decode()}
    alertmanager.verify(b"{}", basic, ["pw"], opts={"username": "am"})
    with pytest.raises(Forbidden):
        alertmanager.verify(b"{}", basic, ["pw"], opts={"username": "other"})
    with pytest.raises(Forbidden):
        alertmanager.verify(b"{}", basic, ["pw"])           # no username configured: basic auth refused
    with pytest.raises(Unauthorized):
        alertmanager.verify(b"{}", {"Authorization": "Digest x"}, ["tok"])
    opsgenie.verify(b"{}", {"X-Goldenhour-Token": "t0k"}, ["t0k"])
    opsgenie.verify(b"{}", {"X-Og-Secret": "t0k"}, ["t0k"], opts={"header": "X-Og-Secret"})
    with pytest.raises(Unauthorized):
        opsgenie.verify(b"{}", {"X-Goldenhour-Token": "t0k"}, ["t0k"], opts={"header": "X-Og-Secret"})


def test_pagerduty_mapping():
    [e] = pagerduty.parse(json.loads(PD_BODY))
    assert (e.action, e.incident_id, e.services, e.severity) == (IGNORE, "PGR0VU2", ["API Service"], "P1")
    raw, _ = P.pagerduty_delivery("Q3F7KD2M9ZT0XB", "incident.reopened")
    [e] = pagerduty.parse(json.loads(raw))
    assert (e.action, e.reopen) == (TRIGGER, True)
    assert [pagerduty.parse(json.loads(P.pagerduty_delivery("X", t)[0]))[0].action for t in (
        "incident.triggered", "incident.resolved", "incident.acknowledged", "incident.annotated")] == [
        TRIGGER, RESOLVE, ACK, IGNORE]
    assert pagerduty.parse(json.loads(P.pagerduty_ping()[0]))[0].action == PING


def test_incidentio_mapping():
    raw, _ = P.incidentio_delivery("INC-2187")
    [e] = incidentio.parse(json.loads(raw))
    assert (e.action, e.incident_id, e.title, e.severity) == (TRIGGER, "INC-2187", "Our database is sad", "Minor")
    assert e.services == ["checkout-api", "svc-42", "checkout"]
    assert incidentio.parse(json.loads(P.incidentio_delivery(mode="tutorial")[0]))[0].action == IGNORE
    assert incidentio.parse(json.loads(P.incidentio_delivery(mode="test")[0]), opts={"capture_test": True})[0].action \
        == TRIGGER
    inc = dict(P.IIO_INCIDENT)
    t = "public_incident.incident_status_updated_v2"
    moved = {"event_type": t, t: {"incident": inc, "previous_status": {"category": "triage"},
                                  "new_status": {"category": "live"}}}
    assert incidentio.parse(moved)[0].action == TRIGGER
    moved[t]["new_status"] = {"category": "closed"}
    assert incidentio.parse(moved)[0].action == RESOLVE
    private = {"event_type": "private_incident.incident_created_v2",
               "private_incident.incident_created_v2": {"id": "01FCNDV6P870EA6S7TK1DSYDG0"}}
    [e] = incidentio.parse(private)
    assert (e.action, e.incident_id, e.hosts, e.services) == (TRIGGER, "01FCNDV6P870EA6S7TK1DSYDG0", [], [])
    assert incidentio.parse({"event_type": "public_alert.alert_created_v1"})[0].action == IGNORE


def test_alertmanager_mapping_hashes_the_group_key_and_reads_hosts_from_labels():
    raw, _ = P.alertmanager_delivery()
    events = alertmanager.parse(json.loads(raw))
    gid = alertmanager.group_incident_id(P.AM_EXAMPLE["groupKey"])
    assert gid.startswith("am-") and len(gid) == 19
    assert [e.incident_id for e in events] == [gid, gid]
    assert [e.hosts for e in events] == [["web-9"], [P.HOST]]
    assert events[1].services == ["node"] and events[1].severity == "critical"
    assert events[1].title == "p99 latency above 2 s"
    ipv6 = json.loads(raw)
    ipv6["alerts"][0]["labels"]["instance"] = "[2001:db8::7]:9100"
    assert alertmanager.parse(ipv6)[0].hosts == ["2001:db8::7"]
    [r] = alertmanager.parse(json.loads(P.alertmanager_delivery(status="resolved")[0]))
    assert (r.action, r.incident_id) == (RESOLVE, gid)


def test_opsgenie_mapping():
    [e] = opsgenie.parse(P.OG_EXAMPLE)
    assert (e.action, e.incident_id, e.title, e.tags) == (TRIGGER, "052652ac-5d1c-464a-812a-7dd18bbfba8c",
                                                          "test alert", ["tag1", "tag2"])
    body = json.loads(json.dumps(P.OG_EXAMPLE))
    body["alert"].update(entity="db-7", tags=["service:orders", "host=web-2"], priority=3,
                         details={"hostname": "web-4"})
    [e] = opsgenie.parse(body)
    assert e.hosts == ["db-7", "web-2", "web-4"] and e.services == ["orders"] and e.severity == "P3"
    assert [opsgenie.parse({**P.OG_EXAMPLE, "action": a})[0].action for a in ("Close", "Acknowledge", "AddNote")] == [
        RESOLVE, ACK, IGNORE]


def test_generic_mapping_and_validation():
    [e] = generic.parse({"incident_id": "INC-9", "hosts": ["h"], "action": "recapture"})
    assert (e.action, e.force, e.hosts) == (TRIGGER, True, ["h"])
    for bad in ({}, {"incident_id": "a/b"}, {"incident_id": "INC", "action": "explode"},
                {"incident_id": "INC", "labels": []}, {"incident_id": "INC", "hosts": 7}, []):
        with pytest.raises(Malformed):
            generic.parse(bad)


def test_targeting_rules():
    me = Identity(names={"web-3.example.com", "web-3"}, addresses={"10.0.0.5", "2001:db8::5"},
                  services={"checkout-api"}, tags={"role=db", "cluster-a"})
    ev = lambda **kw: Event(TRIGGER, "I", **kw)
    assert concerns(ev(hosts=["WEB-3"]), me) == "host web-3"
    assert concerns(ev(hosts=["web-3.prod.example.com:9100"]), me) == "host web-3.prod.example.com"
    assert concerns(ev(hosts=["10.0.0.5:9100"]), me) == "host address 10.0.0.5"
    assert concerns(ev(hosts=["[2001:db8::5]:9100"]), me) == "host address 2001:db8::5"
    assert concerns(ev(hosts=["10.0.0.6"]), me) is None
    assert concerns(ev(hosts=["web-30"]), me) is None
    assert concerns(ev(services=["Checkout-API"]), me) == "service Checkout-API"
    assert concerns(ev(labels={"role": "db"}), me) == "label role=db"
    assert concerns(ev(labels={"role": "web"}), me) is None
    assert concerns(ev(tags=["cluster-a"]), me) == "tag cluster-a"
    assert concerns(ev(), me) is None
    me.capture_all = True
    assert concerns(ev(), me) == "daemon.capture_all"


def test_times_from_every_tracker_parse():
    assert parse_time("2020-10-02T18:45:22.169Z") == pytest.approx(1601664322.169)
    assert parse_time("2026-11-23T10:15:00.123456789Z") == pytest.approx(1795428900.123456)
    assert parse_time(1420452191104) == pytest.approx(1420452191.104)          # Opsgenie ms
    assert parse_time(1420452193166002000) == pytest.approx(1420452193.166002)  # Opsgenie ns
    assert parse_time("yesterday") is None


def test_every_tracker_says_when_the_incident_began():
    """The flight recorder's window is cut from the incident's start (the history collector's T0)."""
    [pd] = pagerduty.parse(json.loads(P.pagerduty_delivery("Q3F7KD2M9ZT0XB", "incident.triggered")[0]))
    assert pd.started_at == parse_time("2020-04-09T15:16:27Z")
    [iio] = incidentio.parse(json.loads(P.incidentio_delivery("INC-2187")[0]))
    assert iio.started_at == parse_time("2021-08-17T13:28:57.801578Z")
    am = alertmanager.parse(json.loads(P.alertmanager_delivery()[0]))
    assert {e.started_at for e in am} == {parse_time("2026-11-23T10:15:00.000Z")}
    [og] = opsgenie.parse(P.OG_EXAMPLE)
    assert og.started_at == pytest.approx(1420452191.104)
    [g] = generic.parse({"incident_id": "INC-9", "started_at": "2026-11-23T10:02:00Z"})
    assert g.started_at == parse_time("2026-11-23T10:02:00Z")
    assert generic.parse({"incident_id": "INC-9"})[0].started_at is None
