"""The commander's view, rule by rule (agent.fleet.overview.summarize is pure: no server needed)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from agent.fleet.overview import summarize
from agent.fleet.records import Bundle, HostRecord, Scope, StatusRecord, make_incident

NOW = datetime.now(timezone.utc)


def host(name: str, age_s: float = 5, **kw):
    return name, (HostRecord(fleet="prod", host=name, names=[name], **kw), NOW - timedelta(seconds=age_s))


def status(name: str, state: str, rev: int = 1, **kw):
    return name, (StatusRecord(fleet="prod", incident_id="I-1", host=name, state=state, capture_rev=rev, **kw), NOW)


def test_expected_hosts_states_and_done():
    rec = make_incident("prod", "I-1", deadline_s=3600, scope=Scope(services=["checkout"], hosts=["10.0.0.9"]))
    t0 = rec.requested_at
    hosts = dict([host("web-1", services=["checkout"]), host("web-2", services=["checkout"]),
                  host("web-3", age_s=600, services=["checkout"]), host("db-1", addresses=["10.0.0.9"]),
                  host("other", services=["billing"])])
    sts = dict([status("web-1", "uploaded", requested_at=t0, capture_started_at=t0,
                       bundle=Bundle(name="b", sha256="a" * 64, url="s3://x/y")),
                status("web-2", "failed", error="conntrack: denied")])
    v = summarize(rec, hosts, sts, offline_after_s=90, now=NOW)
    rows = {r["host"]: r for r in v["hosts"]}
    assert set(rows) == {"web-1", "web-2", "web-3", "db-1"}          # "other" is not concerned
    assert rows["web-1"]["state"] == "uploaded" and rows["web-1"]["latency_s"] == 0
    assert rows["web-2"]["state"] == "failed" and rows["web-3"]["state"] == "offline"
    assert rows["db-1"]["state"] == "pending" and rows["db-1"]["matched_by"] == "host address 10.0.0.9"
    assert v["unknown_hosts"] == [] and v["done"] is False and v["ok"] == 1 and v["bad"] == 1
    # resolved: whoever has no status will not capture any more
    rec.state = "resolved"
    v = summarize(rec, hosts, sts, offline_after_s=90, now=NOW)
    assert {r["host"]: r["state"] for r in v["hosts"]}["web-3"] == "missed" and v["done"] is True


def test_a_named_host_nobody_answers_to_keeps_it_open():
    rec = make_incident("prod", "I-1", deadline_s=3600, scope=Scope(hosts=["web-9"]))
    v = summarize(rec, dict([host("web-1", capture_all=True)]), {}, now=NOW)
    rows = {r["host"]: r["state"] for r in v["hosts"]}
    assert rows == {"web-1": "pending", "web-9": "unknown"} and v["unknown_hosts"] == ["web-9"]
    assert v["done"] is False


def test_an_older_revision_does_not_count_and_a_long_capture_is_stale():
    rec = make_incident("prod", "I-1", deadline_s=3600, scope=Scope(all=True))
    rec.capture_rev = 2
    old = (NOW - timedelta(hours=1)).isoformat()
    sts = dict([status("web-1", "uploaded", rev=1), status("web-2", "capturing", rev=2, updated_at=old)])
    v = summarize(rec, dict([host("web-1"), host("web-2")]), sts, now=NOW, stale_after_s=900)
    rows = {r["host"]: r for r in v["hosts"]}
    assert rows["web-1"]["state"] == "pending" and "revision 1" in rows["web-1"]["previous"]
    assert rows["web-2"]["state"] == "capturing" and rows["web-2"]["stale"] is True


def test_a_host_that_keeps_bundles_local_is_done_when_captured():
    rec = make_incident("prod", "I-1", deadline_s=3600, scope=Scope(all=True))
    v = summarize(rec, dict([host("web-1")]), dict([status("web-1", "captured", will_upload=False)]), now=NOW)
    assert v["done"] is True and v["ok"] == 1
    v = summarize(rec, dict([host("web-1")]), dict([status("web-1", "captured")]), now=NOW)
    assert v["done"] is False
