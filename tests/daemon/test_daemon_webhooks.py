"""The real daemon on loopback, real HTTP, each tracker's documented payload signed as the tracker signs.

A triggered incident yields exactly one verified bundle filed under it; pings, resolved
events and bad input yield none and leave the daemon serving.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import time

import httpx
import pytest

import gh_webhook_payloads as P
from agent.webhooks.alertmanager import group_incident_id


def _manifest(bundle) -> dict:
    return json.loads(bundle.with_name(bundle.name.replace(".tar.zst", ".manifest.json")).read_text())


def _one_verified_bundle(daemon, incident: str) -> dict:
    daemon.wait_idle()
    found = daemon.bundles(incident)
    assert len(found) == 1, (incident, found, daemon.lines[-10:])
    cp = daemon.gh("verify", str(found[0]))
    assert cp.returncode == 0, cp.stdout + cp.stderr
    m = _manifest(found[0])
    assert m["incident"]["id"] == incident
    return m


TRIGGERS = {
    "pagerduty": (lambda: P.pagerduty_delivery("PDTRIG1"), "PDTRIG1"),
    "incidentio": (lambda: P.incidentio_delivery("INC-4711"), "INC-4711"),
    "alertmanager": (lambda: P.alertmanager_delivery('{}/{team="pay"}:{alertname="PayDown"}'),
                     group_incident_id('{}/{team="pay"}:{alertname="PayDown"}')),
    "opsgenie": (lambda: P.opsgenie_delivery("70413a06-38d6-4c85-92b8-5ebc900d42e2"),
                 "70413a06-38d6-4c85-92b8-5ebc900d42e2"),
    "generic": (lambda: P.generic_delivery("GEN-1"), "GEN-1"),
}


@pytest.mark.parametrize("tracker", list(TRIGGERS))
def test_a_triggered_incident_yields_exactly_one_verified_bundle(daemon, tracker):
    make, incident = TRIGGERS[tracker]
    delivery = make()
    t0 = time.monotonic()
    r = daemon.post(tracker, delivery)
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "queued"
    m = _one_verified_bundle(daemon, incident)
    assert m["incident"]["source"] == tracker
    assert m["trigger"]["kind"] == "webhook"
    assert m["trigger"]["payload_sha256"] == hashlib.sha256(delivery[0]).hexdigest()
    assert m["profile"] == "quick"
    assert m["summary"]["collectors"] == {"host": "ok"}
    # the capture ran in a child process, not in the daemon
    assert m["agent"]["pid"] != daemon.proc.pid
    assert time.monotonic() - t0 < 600   # (a bound, not a speed check: speed is in bench/)


def test_the_bundle_records_what_the_tracker_said(daemon):
    r = daemon.post("pagerduty", P.pagerduty_delivery("PDMETA1"))
    assert r.status_code == 202
    assert r.json()["incidents"][0]["concerns"] == "service API Service"
    m = _one_verified_bundle(daemon, "PDMETA1")
    assert m["incident"]["title"] == "A little bump in the road"
    assert m["incident"]["severity"] == "P1"
    assert m["incident"]["services"] == ["API Service"]
    assert m["incident"]["url"].endswith("/incidents/PGR0VU2")
    assert m["incident"]["started_at"] == "2020-04-09T15:16:27.000Z"      # the tracker's creation time: T0
    assert m["trigger"]["by"].startswith("pagerduty:")
    names = subprocess.run(["tar", "--zstd", "-tf", str(daemon.bundles("PDMETA1")[0])], capture_output=True,
                           text=True, check=True).stdout.split()
    assert any(n.endswith("/manifest.json") for n in names)
    assert any("/collectors/host/" in n for n in names)


def test_events_that_do_not_trigger_capture_nothing(daemon):
    before = set(daemon.bundles())
    cases = [
        ("pagerduty", P.pagerduty_ping(), 200, "ping"),
        ("pagerduty", P.pagerduty_delivery("PDRES9", "incident.resolved"), 200, "ignored"),
        ("pagerduty", P.pagerduty_delivery("PDACK9", "incident.acknowledged"), 200, "ignored"),
        ("pagerduty", P.pagerduty_delivery("PDPRIO9", "incident.priority_updated"), 200, "ignored"),
        ("pagerduty", P.pagerduty_delivery("PDOTHER", service="billing"), 200, "not_for_host"),
        ("incidentio", P.incidentio_delivery("INC-9001", mode="test"), 200, "ignored"),
        ("incidentio", P.incidentio_delivery("INC-9002", "public_incident.incident_updated_v2",
                                             category="closed"), 200, "ignored"),
        ("alertmanager", P.alertmanager_delivery('{}/{x="1"}:{alertname="Gone"}', status="resolved"), 200,
         "ignored"),
        ("alertmanager", P.alertmanager_delivery('{}/{x="2"}:{alertname="Elsewhere"}', hosts=("web-1:9100",)),
         200, "not_for_host"),
        ("opsgenie", P.opsgenie_delivery("c1a2b3", "Close"), 200, "ignored"),
        ("generic", P.generic_delivery("GEN-OTHER", hosts=("another-host",)), 200, "not_for_host"),
        ("generic", P.generic_delivery("GEN-RES", action="resolve"), 200, "ignored"),
    ]
    for tracker, delivery, status, outcome in cases:
        r = daemon.post(tracker, delivery)
        assert (r.status_code, r.json()["status"]) == (status, outcome), (tracker, r.text)
    daemon.wait_idle()
    assert set(daemon.bundles()) == before


BAD = [
    # (name, tracker, build delivery, expected status)
    ("unsigned pagerduty", "pagerduty",
     lambda: (P.pagerduty_delivery("PDBAD1")[0], {"Content-Type": "application/json"}), 401),
    ("wrong pagerduty secret", "pagerduty", lambda: P.pagerduty_delivery("PDBAD2", secret="not-the-secret"), 403),
    ("body changed after signing", "pagerduty",
     lambda: (P.pagerduty_delivery("PDBAD3")[0].replace(b"PDBAD3", b"PDBAD4"), P.pagerduty_delivery("PDBAD3")[1]),
     403),
    ("incident.io stale timestamp (replay)", "incidentio",
     lambda: P.incidentio_delivery("INC-BAD1", timestamp=int(time.time()) - 3600), 403),
    ("incident.io future timestamp", "incidentio",
     lambda: P.incidentio_delivery("INC-BAD2", timestamp=int(time.time()) + 3600), 403),
    ("incident.io wrong secret", "incidentio", lambda: P.incidentio_delivery("INC-BAD3", secret="whsec_AAAA"), 403),
    ("incident.io unsigned", "incidentio",
     lambda: (P.incidentio_delivery("INC-BAD4")[0], {"webhook-id": "msg_1"}), 401),
    ("alertmanager no auth", "alertmanager",
     lambda: (P.alertmanager_delivery('{}:{a="bad1"}')[0], {"Content-Type": "application/json"}), 401),
    ("alertmanager wrong token", "alertmanager", lambda: P.alertmanager_delivery('{}:{a="bad2"}', token="nope"), 403),
    ("opsgenie wrong token", "opsgenie", lambda: P.opsgenie_delivery("bad-og-1", token="nope"), 403),
    ("generic stale timestamp", "generic",
     lambda: P.generic_delivery("GEN-BAD1", timestamp=int(time.time()) - 301), 403),
    ("generic wrong secret", "generic", lambda: P.generic_delivery("GEN-BAD2", secret="nope"), 403),
    ("generic malformed signature header", "generic",
     lambda: (P.generic_delivery("GEN-BAD3")[0], {"X-Goldenhour-Signature": "garbage"}), 400),
    ("malformed JSON, correctly signed", "generic",
     lambda: _signed_generic(b'{"incident_id": "GEN-BAD4", '), 400),
    ("JSON without the required fields", "generic", lambda: _signed_generic(b'{"title": "no id"}'), 400),
    ("an incident ID that escapes the store", "generic", lambda: _signed_generic(b'{"incident_id": "../../etc"}'),
     400),
    ("pagerduty body that is not an event", "pagerduty",
     lambda: _signed_pd(b'{"messages": []}'), 400),
    ("alertmanager not version 4", "alertmanager",
     lambda: (b'{"version":"3","groupKey":"x","status":"firing","alerts":[]}',
              {"Authorization": "Bearer " + P.SECRETS["alertmanager"]}), 400),
]


def _signed_generic(raw: bytes):
    from agent.webhooks import generic
    return raw, {"X-Goldenhour-Signature": generic.sign(raw, P.SECRETS["generic"])}


def _signed_pd(raw: bytes):
    from agent.webhooks import pagerduty
    return raw, {"X-PagerDuty-Signature": pagerduty.sign(raw, P.SECRETS["pagerduty"])}


@pytest.mark.parametrize("name,tracker,build,status", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_a_4xx_with_a_reason_and_captures_nothing(daemon, name, tracker, build, status):
    before = set(daemon.bundles())
    r = daemon.post(tracker, build())
    assert r.status_code == status, r.text
    assert 0 < len(r.json()["error"]) < 120
    assert set(daemon.bundles()) == before
    assert daemon.health()["status"] == "ok"


def test_transport_level_refusals(daemon):
    raw, headers = P.generic_delivery("GEN-BIG")
    big = raw[:-1] + b',"pad":"' + b"x" * (1024 * 1024 + 10) + b'"}'
    r = httpx.post(f"{daemon.url}/v1/webhooks/generic", content=big, headers=headers, timeout=30)
    assert r.status_code == 413
    r = httpx.post(f"{daemon.url}/v1/webhooks/servicenow", content=b"{}", timeout=10)
    assert r.status_code == 404 and "unknown tracker" in r.json()["error"]
    r = httpx.get(f"{daemon.url}/v1/webhooks/pagerduty", timeout=10)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    r = httpx.put(f"{daemon.url}/v1/webhooks/generic", content=raw, headers=headers, timeout=10)
    assert r.status_code == 405
    assert daemon.bundles("GEN-BIG") == []
    # the daemon is unaffected: a good delivery still captures
    assert daemon.post("generic", P.generic_delivery("GEN-AFTER-BAD")).status_code == 202
    _one_verified_bundle(daemon, "GEN-AFTER-BAD")


def test_secrets_never_reach_the_log(daemon):
    daemon.post("pagerduty", P.pagerduty_delivery("PDLOG1", secret="wrong-secret-xyz"))
    text = "\n".join(daemon.lines)
    for secret in P.SECRETS.values():
        assert secret not in text
    assert "wrong-secret-xyz" not in text
    # structured, one event per line
    assert any("event=webhook" in l and "tracker=pagerduty" in l and "status=403" in l for l in daemon.lines)


def test_healthz_and_metrics_report_what_happened(daemon):
    daemon.post("generic", P.generic_delivery("GEN-METRICS"))
    daemon.post("generic", P.generic_delivery("GEN-METRICS", secret="bad"))
    daemon.wait_idle()
    h = daemon.health()
    assert h["status"] == "ok" and h["host"] == P.HOST
    assert set(h["trackers"]) == set(TRIGGERS)
    # no upload.url in the harness's config: a local-only host, whose bundles are kept, not pending
    assert h["queue"] == 0 and h["running"] is None and h["pending_uploads"] == 0 and daemon.bundles()
    assert h["open_incidents"] >= 1
    text = daemon.metrics()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    assert samples['goldenhour_captures_total{status="ok"}'] >= 2
    assert samples['goldenhour_webhook_deliveries_total{tracker="generic",outcome="queued"}'] >= 1
    assert samples['goldenhour_webhook_deliveries_total{tracker="generic",outcome="forbidden"}'] >= 1
    assert samples["goldenhour_capture_duration_seconds_count"] >= 2
    assert samples['goldenhour_collector_duration_seconds_count{collector="host"}'] >= 2
    assert samples['goldenhour_collector_results_total{collector="host",status="ok"}'] >= 2
    assert samples["goldenhour_uploads_pending"] == 0
    assert samples["goldenhour_capture_queue_length"] == 0
    assert "# TYPE goldenhour_capture_duration_seconds histogram" in text
    assert 'goldenhour_capture_duration_seconds_bucket{le="+Inf"}' in text


def test_daemon_refuses_a_bad_config_with_one_line(tmp_path):
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    cases = {
        "an enabled tracker without a secret": "[webhooks.pagerduty]\nenabled = true\n",
        "an unknown collector": '[daemon]\ncollectors = ["nope"]\n',
        "an unknown tracker": "[webhooks.servicenow]\nenabled = true\n",
        "a bad listen address": '[daemon]\nlisten = "localhost"\n',
    }
    for why, text in cases.items():
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'[store]\npath = "{tmp_path}"\n' + text.replace("[daemon]\n", '[daemon]\nsocket = ""\n'))
        cp = subprocess.run([sys.executable, "-m", "agent", "--config", str(cfg), "daemon"], capture_output=True,
                            text=True, cwd=root, timeout=60)
        assert cp.returncode == 2, (why, cp.stderr)
        assert cp.stderr.startswith("goldenhour: error: ") and cp.stderr.count("\n") == 1, (why, cp.stderr)
