"""Keys and records of the fleet: the token encoding round-trips, parsing refuses what it must."""
from __future__ import annotations

import json

import pytest

from agent.fleet import keys
from agent.fleet.records import (RecordError, Scope, StatusRecord, make_incident, parse_host, parse_incident,
                                 parse_status)


@pytest.mark.parametrize("text", ["INC-1", "a.b.c", "x=y", "Q1ABCDEF", "web-3.example.com", "é.x", "_-"])
def test_token_round_trip(text):
    tok = keys.encode(text)
    assert "." not in tok and "*" not in tok and ">" not in tok
    assert keys.decode(tok) == text


def test_token_refuses_non_canonical():
    for bad in ["", "a.b", "=2e", "=ZZ", "a b"]:
        with pytest.raises(keys.BadName):
            keys.decode(bad)


def test_keys_layout():
    assert keys.incident_key("prod", "INC.1") == "prod.INC=2E1"
    assert keys.status_key("prod", "INC.1", "Web-3.Example.com") == "prod.INC=2E1.web-3=2Eexample=2Ecom"
    assert keys.split_status_key("prod.INC=2E1.web-3") == ("prod", "INC.1", "web-3")
    assert keys.host_key("prod", "db-1") == "prod.db-1"
    with pytest.raises(keys.BadName):
        keys.incident_key("bad fleet", "x")
    with pytest.raises(keys.BadName):
        keys.check_host("../etc")


def _incident(**over):
    rec = make_incident("prod", "INC-7", deadline_s=3600, scope=Scope(services=["checkout"]), source="pagerduty")
    d = rec.to_json()
    d.update(over)
    return json.dumps(d).encode()


def test_incident_round_trip():
    rec = make_incident("prod", "INC-7", deadline_s=3600, scope=Scope(hosts=["web-1"], labels={"role": "db"}))
    back = parse_incident(rec.encode(), key=rec.key, fleet="prod")
    assert back == rec
    ev = back.event()
    assert ev.hosts == ["web-1"] and ev.labels == {"role": "db"} and ev.action == "trigger"


@pytest.mark.parametrize("raw,why", [
    (b"not json", "not valid JSON"),
    (b"[1]", "not a JSON object"),
    (_incident(schema="goldenhour.fleet.incident/2"), "schema"),
    (_incident(incident_id="../../etc/passwd"), "refused"),
    (_incident(incident_id="a/b"), "refused"),
    (_incident(state="burning"), "'state'"),
    (_incident(capture_rev=0), "at least 1"),
    (_incident(capture_rev="1"), "integer"),
    (_incident(deadline="tomorrow"), "ISO 8601"),
    (_incident(scope={"hosts": "web-1"}), "list of strings"),
    (_incident(profile="everything"), "'profile'"),
    (_incident(fleet="other"), "fleet"),
    (b"x" * 70000, "more than"),
])
def test_incident_refusals(raw, why):
    with pytest.raises(RecordError, match=why):
        parse_incident(raw, key="prod.INC-7", fleet="prod")


def test_incident_stored_under_another_key_is_refused():
    with pytest.raises(RecordError, match="another key"):
        parse_incident(_incident(), key="prod.INC-8", fleet="prod")


def test_incident_unknown_fields_are_ignored():
    rec = parse_incident(_incident(future_field={"x": 1}), key="prod.INC-7", fleet="prod")
    assert rec.incident_id == "INC-7"


def test_status_and_host_records():
    st = StatusRecord(fleet="prod", incident_id="INC-7", host="web-1", state="captured", capture_rev=1)
    assert parse_status(st.encode(), key=st.key) == st
    with pytest.raises(RecordError, match="another key"):
        parse_status(st.encode(), key=keys.status_key("prod", "INC-7", "web-2"))
    bad = st.to_json()
    bad["bundle"] = {"sha256": "xyz"}
    with pytest.raises(RecordError, match="SHA-256"):
        parse_status(json.dumps(bad))
    bad = st.to_json()
    bad["state"] = "done"
    with pytest.raises(RecordError, match="'state'"):
        parse_status(json.dumps(bad))
    with pytest.raises(RecordError, match="schema"):
        parse_host(json.dumps({"schema": "x"}))
