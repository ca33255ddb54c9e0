"""The six later trackers against the real daemon: real HTTP on loopback, each vendor's documented
example payload serialised and signed as the vendor does (tracker_payloads.py, fixtures/trackers/).

Per tracker: a trigger captures exactly once (its retries and later deliveries are duplicates), a
resolve closes, pings and events that do not trigger capture nothing, and a wrong signature, a stale
signed timestamp, a missing credential and a malformed body each get their 4xx with a one-line
reason and capture nothing. Metrics count every delivery by tracker and outcome.
"""
from __future__ import annotations

import json
import time

import pytest

import tracker_payloads as T
from tests.daemon.conftest import Daemon
from gh_webhook_payloads import HOST


@pytest.fixture(scope="module")
def tdaemon(tmp_path_factory):
    """One daemon with the six trackers enabled (and the first five, as conftest writes them)."""
    d = tmp_path_factory.mktemp("ghd-trk")
    dd = Daemon(d, extra=T.config_text(d))
    dd.start()
    yield dd
    dd.stop()


def _bundles(daemon, incident: str) -> list:
    daemon.wait_idle()
    return daemon.bundles(incident)


def _one_verified_bundle(daemon, incident: str, tracker: str) -> dict:
    found = _bundles(daemon, incident)
    assert len(found) == 1, (incident, found, daemon.lines[-10:])
    cp = daemon.gh("verify", str(found[0]))
    assert cp.returncode == 0, cp.stdout + cp.stderr
    m = json.loads(found[0].with_name(found[0].name.replace(".tar.zst", ".manifest.json")).read_text())
    assert m["incident"]["id"] == incident and m["incident"]["source"] == tracker
    assert m["trigger"]["kind"] == "webhook" and m["trigger"]["by"].startswith(f"{tracker}:")
    return m


# (trigger, the same delivery retried is the same object, a later delivery about the same incident, resolve)
def _scenarios():
    irm_first = T.irm_delivery("IRMONE1")
    rootly_first = T.rootly_delivery("5f0c7a7e-0d4c-4c51-9d0e-0e4a3c0f0001")
    jira_first = T.jira_delivery("OPS-4242")
    return {
        "grafana_irm": ("IRMONE1", irm_first,
                        T.irm_delivery("IRMONE1", "escalation"),
                        T.irm_delivery("IRMONE1", "resolve", auth="header")),
        "grafana_alerting": (None, T.grafana_delivery('{}/{team="pay"}:{alertname="PayDown"}'),
                             T.grafana_delivery('{}/{team="pay"}:{alertname="PayDown"}'),
                             T.grafana_delivery('{}/{team="pay"}:{alertname="PayDown"}', "resolved")),
        "firehydrant": ("0b5c6d8e-1f2a-4b3c-8d4e-5f6a7b8c9d01",
                        T.firehydrant_delivery("0b5c6d8e-1f2a-4b3c-8d4e-5f6a7b8c9d01", "started"),
                        T.firehydrant_delivery("0b5c6d8e-1f2a-4b3c-8d4e-5f6a7b8c9d01", "acknowledged"),
                        T.firehydrant_delivery("0b5c6d8e-1f2a-4b3c-8d4e-5f6a7b8c9d01", "resolved")),
        "rootly": ("5f0c7a7e-0d4c-4c51-9d0e-0e4a3c0f0001", rootly_first,
                   T.rootly_delivery("5f0c7a7e-0d4c-4c51-9d0e-0e4a3c0f0001", "incident.created"),
                   T.rootly_delivery("5f0c7a7e-0d4c-4c51-9d0e-0e4a3c0f0001", "incident.resolved")),
        "jsm": ("OPS-4242", jira_first,
                T.jira_delivery("OPS-4242"),
                T.jira_delivery("OPS-4242", "jira:issue_updated", changelog=T.RESOLVED_CHANGELOG,
                                status_category="done")),
        "datadog": ("dd-1234-7193896212479214613", T.datadog_delivery("7193896212479214613"),
                    T.datadog_delivery("7193896212479214613", "Re-Triggered"),
                    T.datadog_delivery("7193896212479214613", "Recovered")),
    }


@pytest.mark.parametrize("tracker", T.TRACKERS)
def test_a_trigger_captures_once_and_a_resolve_closes(tdaemon, tracker):
    from agent.webhooks.grafana_alerting import group_incident_id
    incident, trigger, later, resolve = _scenarios()[tracker]
    incident = incident or group_incident_id(1, '{}/{team="pay"}:{alertname="PayDown"}')
    r = tdaemon.post(tracker, trigger)
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "queued" and r.json()["incidents"][0]["incident"] == incident
    # the tracker's retry of the same delivery, then a later delivery about the same incident
    retry, again = tdaemon.post(tracker, trigger), tdaemon.post(tracker, later)
    assert (retry.status_code, retry.json()["status"]) == (200, "duplicate"), retry.text
    assert (again.status_code, again.json()["status"]) == (200, "duplicate"), again.text
    m = _one_verified_bundle(tdaemon, incident, tracker)
    assert m["trigger"]["reason"].endswith(f"concerns this host: host {HOST}")
    assert m["summary"]["collectors"] == {"host": "ok"}
    r = tdaemon.post(tracker, resolve)
    assert (r.status_code, r.json()["status"]) == (200, "resolved"), r.text
    assert tdaemon.state()["incidents"][f"{tracker}/{incident}"]["status"] == "resolved"
    assert len(_bundles(tdaemon, incident)) == 1


def test_what_each_tracker_says_reaches_the_bundle(tdaemon):
    r = tdaemon.post("jsm", T.jsm_alert_delivery("7c0b5f1e-3f6b-4d8e-9a51-0c2f1e9d4a77"))
    assert r.status_code == 202, r.text
    m = _one_verified_bundle(tdaemon, "7c0b5f1e-3f6b-4d8e-9a51-0c2f1e9d4a77", "jsm")
    assert m["incident"]["title"] == "test alert"
    r = tdaemon.post("rootly", T.rootly_alert_delivery("13c82722-ec52-4eda-aaa2-771f7c81c0aa"))
    assert r.status_code == 202, r.text
    m = _one_verified_bundle(tdaemon, "13c82722-ec52-4eda-aaa2-771f7c81c0aa", "rootly")
    assert m["incident"]["title"] == "database-prod-002 Memory threshold over 85%"
    assert m["incident"]["url"] == "https://rootly.pagerduty.com/alerts/Q1IC19Z6U7MIQB"


def test_reopened_incidents_capture_again(tdaemon):
    # Grafana IRM: unresolve after resolve; Jira: resolution cleared after a resolution was set
    assert tdaemon.post("grafana_irm", T.irm_delivery("IRMREOPEN")).status_code == 202
    assert tdaemon.post("jsm", T.jira_delivery("OPS-7001")).status_code == 202
    tdaemon.wait_idle()
    assert tdaemon.post("grafana_irm", T.irm_delivery("IRMREOPEN", "resolve")).json()["status"] == "resolved"
    r = tdaemon.post("jsm", T.jira_delivery("OPS-7001", "jira:issue_updated", changelog=T.RESOLVED_CHANGELOG,
                                            status_category="done"))
    assert r.json()["status"] == "resolved"
    assert tdaemon.post("grafana_irm", T.irm_delivery("IRMREOPEN", "unresolve")).status_code == 202
    r = tdaemon.post("jsm", T.jira_delivery("OPS-7001", "jira:issue_updated", changelog=T.REOPENED_CHANGELOG))
    assert r.status_code == 202, r.text
    assert len(_bundles(tdaemon, "IRMREOPEN")) == 2 and len(_bundles(tdaemon, "OPS-7001")) == 2


def test_pings_and_events_that_do_not_trigger_capture_nothing(tdaemon):
    before = set(tdaemon.bundles())
    cases = [
        ("grafana_irm", T.irm_delivery("IRMNOPE1", "silence"), 200, "ignored"),
        ("grafana_irm", T.irm_delivery("IRMNOPE2", "acknowledge"), 200, "ignored"),
        ("grafana_irm", T.irm_delivery("IRMELSE", host="another-host"), 200, "not_for_host"),
        ("grafana_alerting", T.grafana_delivery("test-notifier-c6eadffa33fcdf37-1700000000", test=True), 200, "ping"),
        ("grafana_alerting", T.grafana_delivery('{}:{alertname="Gone"}', "resolved"), 200, "ignored"),
        ("firehydrant", T.firehydrant_delivery("0b5c6d8e-1f2a-4b3c-8d4e-5f6a7b8c9d02", "mitigated"), 200, "ignored"),
        ("firehydrant", T.firehydrant_delivery("0b5c6d8e-1f2a-4b3c-8d4e-5f6a7b8c9d03", "resolved"), 200, "ignored"),
        ("firehydrant", T.signed_firehydrant(T.example("firehydrant_change_event.json")), 200, "ignored"),
        ("rootly", T.signed_rootly(T.example("rootly_pulse.json")), 200, "ignored"),
        ("rootly", T.rootly_delivery("5f0c7a7e-0d4c-4c51-9d0e-0e4a3c0f0009", kind="test"), 200, "ignored"),
        ("rootly", T.rootly_delivery("5f0c7a7e-0d4c-4c51-9d0e-0e4a3c0f0009", "incident.updated"), 200, "ignored"),
        ("jsm", T.jsm_alert_delivery("4d2f8c1a-0000-4000-8000-00000000ac01", "Acknowledge"), 200, "ignored"),
        ("jsm", T.jira_delivery("OPS-9", "comment_created"), 200, "ignored"),
        ("jsm", T.jira_delivery("OPS-9", "jira:issue_updated"), 200, "ignored"),      # the docs' summary edit
        ("datadog", T.datadog_delivery("990001", title="[TEST] [Triggered] [Memory Alert]"), 200, "ping"),
        ("datadog", T.datadog_delivery("990002", "Warn"), 200, "ignored"),
        ("datadog", T.datadog_delivery("990003", hostname="db-17"), 200, "not_for_host"),
    ]
    for tracker, delivery, status, outcome in cases:
        r = tdaemon.post(tracker, delivery)
        assert (r.status_code, r.json()["status"]) == (status, outcome), (tracker, r.text)
    tdaemon.wait_idle()
    assert set(tdaemon.bundles()) == before


def _stale() -> int:
    return int(time.time()) - 3600


BAD = [
    # (name, tracker, build delivery, expected status)
    ("grafana_irm wrong bearer token", "grafana_irm", lambda: T.irm_delivery("IRMBAD1", secret="nope"), 403),
    ("grafana_irm wrong token header", "grafana_irm",
     lambda: T.irm_delivery("IRMBAD2", auth="header", secret="nope"), 403),
    ("grafana_irm no credential", "grafana_irm", lambda: T.irm_delivery("IRMBAD3", auth="none"), 401),
    ("grafana_irm body without an event (Forward All off)", "grafana_irm",
     lambda: (b'{"alert_group": {"id": "IRMBAD4"}}', T.irm_delivery("IRMBAD4")[1]), 400),
    ("grafana_irm malformed JSON", "grafana_irm", lambda: (b'{"event": {"type": "resolve"', T.irm_delivery("X")[1]),
     400),
    ("grafana_alerting wrong signature", "grafana_alerting",
     lambda: T.grafana_delivery('{}:{a="bad1"}', secret="nope"), 403),
    ("grafana_alerting stale timestamp (replay)", "grafana_alerting",
     lambda: T.grafana_delivery('{}:{a="bad2"}', timestamp=_stale()), 403),
    ("grafana_alerting unsigned", "grafana_alerting",
     lambda: (T.grafana_delivery('{}:{a="bad3"}')[0], T.JSON), 401),
    ("grafana_alerting signed without its timestamp header", "grafana_alerting",
     lambda: (lambda raw, h: (raw, {k: v for k, v in h.items() if k != T.GRAFANA_TS}))(
         *T.grafana_delivery('{}:{a="bad4"}')), 401),
    ("grafana_alerting signature header that is not hex", "grafana_alerting",
     lambda: (lambda raw, h: (raw, {**h, T.GRAFANA_SIG: "zz-not-hex"}))(*T.grafana_delivery('{}:{a="bad5"}')), 400),
    ("grafana_alerting not version 1, correctly signed", "grafana_alerting",
     lambda: T.signed_grafana(b'{"version":"4","groupKey":"x","status":"firing","alerts":[]}'), 400),
    ("grafana_alerting malformed JSON, correctly signed", "grafana_alerting",
     lambda: T.signed_grafana(b'{"version":"1","groupKey":'), 400),
    ("firehydrant wrong secret", "firehydrant",
     lambda: T.firehydrant_delivery("0b5c6d8e-1f2a-4b3c-8d4e-5f6a7b8cbad1", secret="nope"), 403),
    ("firehydrant body changed after signing", "firehydrant",
     lambda: (T.firehydrant_delivery("0b5c6d8e-1f2a-4b3c-8d4e-5f6a7b8cbad2")[0].replace(b"started", b"resolved"),
              T.firehydrant_delivery("0b5c6d8e-1f2a-4b3c-8d4e-5f6a7b8cbad2")[1]), 403),
    ("firehydrant unsigned", "firehydrant",
     lambda: (T.firehydrant_delivery("0b5c6d8e-1f2a-4b3c-8d4e-5f6a7b8cbad3")[0], T.JSON), 401),
    ("firehydrant malformed JSON, correctly signed", "firehydrant",
     lambda: T.signed_firehydrant(b'{"data": {"incident": '), 400),
    ("firehydrant incident without an id, correctly signed", "firehydrant",
     lambda: T.signed_firehydrant(b'{"data": {"incident": {"name": "x"}}, "event": {"resource_type": "incident"}}'),
     400),
    ("rootly wrong secret", "rootly", lambda: T.rootly_delivery("5f0c7a7e-bad1", secret="nope"), 403),
    ("rootly stale timestamp (replay)", "rootly", lambda: T.rootly_delivery("5f0c7a7e-bad2", timestamp=_stale()), 403),
    ("rootly timestamp.body signed (a third-party guess)", "rootly",
     lambda: (lambda raw, ts: (raw, {**T.JSON, "X-Rootly-Signature":
                                     f"t={ts},v1={T._mac(T.SECRETS['rootly'], f'{ts}.'.encode() + raw)}"}))(
         T.rootly_delivery("5f0c7a7e-bad3")[0], int(time.time())), 403),
    ("rootly unsigned", "rootly", lambda: (T.rootly_delivery("5f0c7a7e-bad4")[0], T.JSON), 401),
    ("rootly signature header without t=", "rootly",
     lambda: (T.rootly_delivery("5f0c7a7e-bad5")[0], {**T.JSON, "X-Rootly-Signature": "v1=abcd"}), 400),
    ("rootly body without an event, correctly signed", "rootly", lambda: T.signed_rootly(b'{"data": {}}'), 400),
    ("jsm wrong token", "jsm", lambda: T.jsm_alert_delivery("4d2f8c1a-bad1", token="nope"), 403),
    ("jsm no token", "jsm", lambda: (T.jsm_alert_delivery("4d2f8c1a-bad2")[0], T.JSON), 401),
    ("jira wrong webhook secret", "jsm", lambda: T.jira_delivery("OPS-BAD1", secret="nope"), 403),
    ("jira signature not sha256=", "jsm",
     lambda: (T.jira_delivery("OPS-BAD2")[0], {**T.JSON, "X-Hub-Signature": "sha1=abcd"}), 400),
    ("jira malformed JSON, correctly signed", "jsm", lambda: T.signed_jira(b'{"webhookEvent": "jira:issue_cre'), 400),
    ("jira webhook without an issue, correctly signed", "jsm",
     lambda: T.signed_jira(b'{"webhookEvent": "jira:issue_created"}'), 400),
    ("datadog wrong token", "datadog", lambda: T.datadog_delivery("880001", token="nope"), 403),
    ("datadog no token", "datadog", lambda: (T.datadog_delivery("880002")[0], T.JSON), 401),
    ("datadog malformed JSON", "datadog",
     lambda: (b'{"transition": "Triggered", "title": "say "hi""}', {**T.JSON, T.TOKEN_HEADER: T.SECRETS["datadog"]}),
     400),
    ("datadog default payload, not goldenhour's template", "datadog",
     lambda: (b'{"body": "x", "last_updated": "1", "event_type": "query_alert_monitor", "title": "t", '
              b'"date": "1", "org": {"id": "1", "name": "o"}, "id": "1"}',
              {**T.JSON, T.TOKEN_HEADER: T.SECRETS["datadog"]}), 400),
]


@pytest.mark.parametrize("name,tracker,build,status", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_a_4xx_with_a_reason_and_captures_nothing(tdaemon, name, tracker, build, status):
    before = set(tdaemon.bundles())
    r = tdaemon.post(tracker, build())
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert 0 < len(err) < 120 and "\n" not in err
    assert set(tdaemon.bundles()) == before
    assert tdaemon.health()["status"] == "ok"


def test_metrics_count_every_tracker_and_outcome(tdaemon):
    tdaemon.post("datadog", T.datadog_delivery("770001", token="wrong"))
    tdaemon.post("rootly", T.rootly_delivery("5f0c7a7e-metrics", timestamp=_stale()))
    tdaemon.post("firehydrant", (b"{}", T.JSON))
    r = tdaemon.post("grafana_irm", T.irm_delivery("IRMMETRICS"))
    assert r.status_code == 202
    tdaemon.wait_idle()
    h = tdaemon.health()
    assert set(T.TRACKERS) <= set(h["trackers"])
    samples = {}
    for line in tdaemon.metrics().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    count = 'goldenhour_webhook_deliveries_total{{tracker="{}",outcome="{}"}}'.format
    assert samples[count("grafana_irm", "queued")] >= 1
    assert samples[count("datadog", "forbidden")] >= 1
    assert samples[count("rootly", "forbidden")] >= 1
    assert samples[count("firehydrant", "unauthorized")] >= 1
    text = "\n".join(tdaemon.lines)
    for secret in T.SECRETS.values():
        assert secret not in text
