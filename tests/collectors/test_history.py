"""history: the window before the incident's start, cut from a ring the real recorder wrote; skipped with a
reason when there is no recorder; it never waits for one that does not answer."""
from __future__ import annotations

import json
import os
import socket
import time
from datetime import datetime, timezone

import pytest

from agent.recorder import window
from collectors.history import t0_of
from tests.helpers.recorder import RecorderProc, write_config


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


@pytest.fixture(scope="module")
def ring(tmp_path_factory):
    d = tmp_path_factory.mktemp("ring")
    cfg = write_config(d / "config.toml", d / "store", interval=0.1, sock=d / "rec.sock")
    r = RecorderProc(cfg).start()
    try:
        r.wait_samples(40)
        t_mid = time.time()
        r.wait_samples(80)
    finally:
        assert r.stop() == 0
    return str(d / "store" / "recorder" / "ring"), t_mid


def test_the_window_runs_from_before_t0_to_the_capture(run_collector, ring):
    path, t_mid = ring
    res = run_collector("history", capture={"recorder": {"ring": path, "socket": "", "before_s": 3.0},  # 3 s before T0
                                            "incident_started_at": _iso(t_mid), "trigger_at": _iso(time.time()),
                                            "incident": "INC-H"})
    assert res.status == "ok", res.reason
    s = json.loads((res.out / "summary.json").read_text())
    assert s["window"]["t0_source"].startswith("incident start") and s["window"]["before_s"] == 3.0
    first = datetime.fromisoformat(s["first_sample"].replace("Z", "+00:00")).timestamp()
    assert t_mid - 3.0 <= first < t_mid                  # cut 3 s before T0 (nothing older)
    assert s["samples"] >= 40 and not s["skipped_records"] and s["recorder"]["running"] is False
    lines = [json.loads(x) for x in (res.out / "history.jsonl").read_text().splitlines()]
    assert [x["seq"] for x in lines] == sorted(x["seq"] for x in lines)
    assert sum(x["kind"] == "sample" for x in lines) == s["samples"]
    sl = window.read_slice((res.out / "ring-slice.bin").read_bytes())
    assert {e.seq for e in sl.samples} >= {x["seq"] for x in lines if x["kind"] == "sample"}
    assert res.notes["t0_source"].startswith("incident start")


def test_t0_is_the_incident_start_else_the_trigger_else_the_capture():
    assert t0_of({"incident_started_at": "2026-11-23T10:00:00Z", "trigger_at": "2026-11-23T10:05:00Z"}, 0)[1] \
        .startswith("incident start")
    assert t0_of({"incident_started_at": "", "trigger_at": "2026-11-23T10:05:00Z"}, 0) == (1795428300.0, "trigger time")
    assert t0_of({}, 42.0) == (42.0, "capture start")


def test_no_recorder_is_a_skip_with_its_reason(run_collector, tmp_path):
    res = run_collector("history", capture={"recorder": {"ring": str(tmp_path / "ring"),
                                                         "socket": str(tmp_path / "rec.sock")}})
    assert res.status == "skipped"
    assert "no flight recorder on this host" in res.reason and "goldenhour record" in res.reason


def test_it_never_waits_for_a_recorder_that_does_not_answer(run_collector, ring, tmp_path):
    """A socket that accepts and never replies (a hung recorder): the ring is read anyway."""
    path, _ = ring
    sp = str(tmp_path / "hung.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sp)
    srv.listen(16)
    try:
        res = run_collector("history", capture={"recorder": {"ring": path, "socket": sp, "before_s": 3600}})
        assert res.status == "ok", res.reason
        s = json.loads((res.out / "summary.json").read_text())
        assert s["samples"] >= 80 and s["recorder"]["running"] is False and not s["capture_marked"]
    finally:
        srv.close()
        os.unlink(sp)
