"""Delivery semantics: duplicates and retries capture once per host, also across a daemon restart;
resolve closes; reopen and an explicit recapture capture again; a full queue answers 503."""
from __future__ import annotations

import asyncio
import json

import httpx

import gh_webhook_payloads as P


def test_fifty_concurrent_duplicate_deliveries_capture_once(daemon):
    # 25 retries of one delivery (same X-Webhook-Id) and 25 other deliveries of the same incident
    same = P.pagerduty_delivery("PDDUP50", webhook_id="retried-delivery-1")
    deliveries = [same] * 25 + [P.pagerduty_delivery("PDDUP50") for _ in range(25)]

    async def send_all():
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=50)) as client:
            return await asyncio.gather(*[
                client.post(f"{daemon.url}/v1/webhooks/pagerduty", content=raw, headers=h) for raw, h in deliveries])

    responses = asyncio.run(send_all())
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 49 + [202], codes
    assert {r.json()["status"] for r in responses if r.status_code == 200} == {"duplicate"}
    daemon.wait_idle()
    assert len(daemon.bundles("PDDUP50")) == 1
    rec = daemon.state()["incidents"]["pagerduty/PDDUP50"]
    assert rec["capture"] == "done" and len(rec["captures"]) == 1


def test_a_restarted_daemon_does_not_capture_the_same_incident_again(new_daemon):
    d = new_daemon().start()
    first = P.pagerduty_delivery("PDRESTART", webhook_id="wh-restart-1")
    assert d.post("pagerduty", first).status_code == 202
    d.wait_idle()
    assert len(d.bundles("PDRESTART")) == 1
    assert d.stop() == 0
    assert not d.socket.exists()            # cleaned up on a graceful stop
    d.start()
    # the tracker's retry of the same delivery, and a new delivery about the same incident
    r1 = d.post("pagerduty", first)
    r2 = d.post("pagerduty", P.pagerduty_delivery("PDRESTART"))
    r3 = d.post("alertmanager", P.alertmanager_delivery('{}:{alertname="Restarted"}'))
    r4 = d.post("alertmanager", P.alertmanager_delivery('{}:{alertname="Restarted"}'))    # repeat_interval resend
    assert (r1.status_code, r1.json()["status"]) == (200, "duplicate")
    assert (r2.status_code, r2.json()["status"]) == (200, "duplicate")
    assert (r3.status_code, r4.status_code, r4.json()["status"]) == (202, 200, "duplicate")
    d.wait_idle()
    assert len(d.bundles("PDRESTART")) == 1
    # an explicit request for fresh evidence does capture again
    r5 = d.post("generic", P.generic_delivery("PDRESTART", action="recapture"))
    assert r5.status_code == 202
    r6 = d.post("generic", P.generic_delivery("PDRESTART", action="recapture"))
    assert r6.status_code == 202                    # force means force
    d.wait_idle()
    assert len(d.bundles("PDRESTART")) == 3


def test_resolve_closes_the_incident_and_reopen_captures_again(daemon):
    assert daemon.post("pagerduty", P.pagerduty_delivery("PDREOPEN")).status_code == 202
    daemon.wait_idle()
    r = daemon.post("pagerduty", P.pagerduty_delivery("PDREOPEN", "incident.acknowledged"))
    assert r.json()["status"] == "acknowledged"
    assert daemon.state()["incidents"]["pagerduty/PDREOPEN"]["status"] == "open"
    r = daemon.post("pagerduty", P.pagerduty_delivery("PDREOPEN", "incident.resolved"))
    assert (r.status_code, r.json()["status"]) == (200, "resolved")
    assert daemon.state()["incidents"]["pagerduty/PDREOPEN"]["status"] == "resolved"
    # a late retry of the trigger does not reopen it
    r = daemon.post("pagerduty", P.pagerduty_delivery("PDREOPEN"))
    assert r.json()["status"] == "duplicate"
    r = daemon.post("pagerduty", P.pagerduty_delivery("PDREOPEN", "incident.reopened"))
    assert r.status_code == 202
    daemon.wait_idle()
    assert len(daemon.bundles("PDREOPEN")) == 2
    assert daemon.state()["incidents"]["pagerduty/PDREOPEN"]["status"] == "open"


def test_alertmanager_group_resolves_then_fires_again(daemon):
    key = '{}/{team="checkout"}:{alertname="Flapping"}'
    assert daemon.post("alertmanager", P.alertmanager_delivery(key)).status_code == 202
    daemon.wait_idle()
    assert daemon.post("alertmanager", P.alertmanager_delivery(key, status="resolved")).json()["status"] == "resolved"
    assert daemon.post("alertmanager", P.alertmanager_delivery(key)).status_code == 202
    daemon.wait_idle()
    from agent.webhooks.alertmanager import group_incident_id
    assert len(daemon.bundles(group_incident_id(key))) == 2


def test_a_full_queue_answers_503_and_the_retry_is_captured(new_daemon):
    d = new_daemon(daemon_extra='queue_size = 1\n', env={"GOLDENHOUR_EXTRA_COLLECTORS": "tests.helpers.slow"})
    # the slow test collector hangs until its 2 s timeout: the first job occupies the worker
    d.cfg.write_text(d.cfg.read_text().replace('collectors = ["host"]', 'collectors = ["slow"]'))
    d.start()
    assert d.post("generic", P.generic_delivery("Q-1")).status_code == 202
    d.wait_running()
    assert d.post("generic", P.generic_delivery("Q-2")).status_code == 202      # waits in the queue
    r = d.post("generic", P.generic_delivery("Q-3", delivery="q3-delivery"))
    assert r.status_code == 503 and r.json()["status"] == "queue_full"
    d.wait_idle()
    # the tracker retries the same delivery later: it was not recorded as seen, so it captures now
    assert d.post("generic", P.generic_delivery("Q-3", delivery="q3-delivery")).status_code == 202
    d.wait_idle()
    assert [len(d.bundles(i)) for i in ("Q-1", "Q-2", "Q-3")] == [1, 1, 1]
    m = json.loads(next((d.store / "incidents" / "Q-1").glob("*.manifest.json")).read_text())
    assert m["summary"]["collectors"] == {"slow": "timeout"}
    metrics = d.metrics()
    assert 'goldenhour_webhook_deliveries_total{tracker="generic",outcome="queue_full"} 1' in metrics


def test_a_stopping_daemon_finishes_the_running_capture_and_keeps_the_queued_one(new_daemon):
    d = new_daemon(env={"GOLDENHOUR_EXTRA_COLLECTORS": "tests.helpers.slow"})
    d.cfg.write_text(d.cfg.read_text().replace('collectors = ["host"]', 'collectors = ["slow"]'))
    d.start()
    assert d.post("generic", P.generic_delivery("STOP-A")).status_code == 202
    d.wait_running()
    assert d.post("generic", P.generic_delivery("STOP-B")).status_code == 202
    assert d.stop() == 0
    assert len(d.bundles("STOP-A")) == 1 and d.bundles("STOP-B") == []
    st = d.state()["incidents"]
    assert st["generic/STOP-A"]["capture"] == "done" and st["generic/STOP-B"]["capture"] == "queued"
    d.start()
    d.wait_idle()
    assert len(d.bundles("STOP-B")) == 1
    assert d.state()["incidents"]["generic/STOP-B"]["capture"] == "done"


def test_uploader_runs_after_a_capture_and_keeps_failed_bundles_pending(new_daemon):
    """An unreachable S3 endpoint: the uploader tries (in a child), backs off, the bundle stays pending."""
    import time
    d = new_daemon(extra='[upload]\nurl = "s3://gh-test-bucket/pfx"\nendpoint_url = "http://127.0.0.1:9"\n'
                         'region = "us-east-1"\nretry_initial_s = 1\nretry_max_s = 60\n',
                   env={"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"})
    d.start()
    assert d.post("generic", P.generic_delivery("UP-1")).status_code == 202
    d.wait_idle()
    deadline = time.monotonic() + 120
    runs = {}
    while time.monotonic() < deadline:
        runs = {line.split('result="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
                for line in d.metrics().splitlines() if line.startswith("goldenhour_upload_runs_total{")}
        if runs:
            break
        time.sleep(0.1)
    assert set(runs) <= {"failed", "unavailable"} and sum(runs.values()) >= 1, runs
    [bundle] = d.bundles("UP-1")
    assert not bundle.with_name(bundle.name.replace(".tar.zst", ".upload.json")).exists()
    h = d.health()
    assert h["status"] == "ok" and h["pending_uploads"] == 1
    assert 'goldenhour_uploads_pending 1' in d.metrics()
