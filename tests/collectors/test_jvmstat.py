"""jvmstat against real JVMs: one in back-to-back full GCs (Serial GC, a 64 MiB heap whose old
generation is nearly full of live data, with a churn of promoted objects), a quiet one, one with
its perf data off. The counters come from the JVM's hsperfdata file, never from attaching: the
JVM has no Attach Listener thread afterwards."""
from __future__ import annotations

import json
import os

import pytest

import dumptargets as dt


def stat(run_collector, target, **kw):
    r = run_collector("jvmstat", target=dt.agent_target(target.pid), **kw)
    p = r.out / "jvmstat.json"
    return r, json.loads(p.read_text()) if p.exists() else None


def attach_listener(pid: int) -> bool:
    names = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            names.append(open(f"/proc/{pid}/task/{tid}/comm").read().strip())
        except OSError:
            pass
    return "Attach Listener" in names


@pytest.mark.slow
def test_a_jvm_in_back_to_back_full_gcs(run_collector, tmp_path):
    t = dt.jvm_target(tmp_path, "-Dgh.db.password=hunter2", heap_mb=30, extra=("--churn-mb", "8"))
    try:
        r, d = stat(run_collector, t, options={"interval_s": 1.0})
        assert r.status == "ok", r.reason
        w = d["window"]
        assert 0.9 <= w["seconds"] <= 5
        assert w["gc_time_share"] >= 0.5 and w["full_gcs"] >= 2, w
        names = {c["name"]: c for c in d["collectors"]}
        full = names["Serial full collection pauses"]
        assert full["window"]["invocations"] >= 2 and full["window"]["share"] > 0
        assert "Serial young collection pauses" in names and full["invocations"] >= full["window"]["invocations"]
        old = next(g for g in d["generations"] if g["name"] == "old")
        assert old["used"] / old["capacity"] >= 0.85                          # live data fills it
        assert d["vm"]["gc_policy"] == "Copy:MSC" and "-Xmx64m" in d["vm"]["args"]
        assert "hunter2" not in json.dumps(d) and "gh.db.password=[REDACTED]" in d["vm"]["args"]
        assert d["safepoints"]["window"]["safepoints"] >= w["full_gcs"]
        assert d["counters"]["sun.gc.collector.1.invocations"] == full["invocations"]
        assert d["heap"]["max_capacity"] == 64 * 2**20
        assert r.notes["gc_time_share"] == w["gc_time_share"]
        assert not attach_listener(t.pid)                  # read without attaching
        t.assert_running()
    finally:
        t.stop()


@pytest.mark.slow
def test_a_quiet_jvm_and_one_without_perf_data(run_collector, tmp_path):
    t = dt.jvm_target(tmp_path)
    off = dt.jvm_target(tmp_path, "-XX:-UsePerfData", name="noperf")
    try:
        r, d = stat(run_collector, t, options={"interval_s": 0.5})
        assert r.status == "ok", r.reason
        assert d["window"]["gc_time_share"] < 0.2 and d["threads"]["live"] >= 6
        assert d["file"].startswith("/tmp/hsperfdata_") and d["file"].endswith(f"/{t.pid}")
        r2, d2 = stat(run_collector, off)
        assert r2.status == "skipped" and "-XX:-UsePerfData" in r2.reason and d2 is None
        t.assert_running()
        off.assert_running()
    finally:
        t.stop()
        off.stop()
