"""End to end: the real recorder at a short interval watches real changes started at known times — a CPU
hog in a cgroup, memory growing in a cgroup, a listen-queue overflow, a burst of new processes — then a
capture takes its history and the report names each change's first departure within one interval of
when it began.

Everything runs in fresh network and PID namespaces (e2e_scenario.py), so the counters it watches
(TCP, processes) are this test's own and not the rest of the machine's; the cgroups are real v1
groups made for the test.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers.recorder import gh, write_config

HERE = Path(__file__).resolve().parent
INTERVAL = 0.5
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare") or
                                not os.path.isdir("/sys/fs/cgroup/memory"),
                                reason="needs root, unshare and cgroup v1 (this machine's layout)")


@pytest.fixture
def cgroups():
    name = f"gh-e2e-{uuid.uuid4().hex[:6]}"
    hog, mem = f"{name}-hog", f"{name}-mem"
    dirs = [Path("/sys/fs/cgroup/cpuacct") / hog, Path("/sys/fs/cgroup/cpu") / hog, Path("/sys/fs/cgroup/memory") / mem]
    for d in dirs:
        d.mkdir()
    yield hog, mem
    for d in dirs:
        for _ in range(100):            # the namespace's processes are gone once its init exited
            try:
                d.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def test_the_report_names_each_change_within_one_interval_of_its_start(tmp_path, cgroups):
    hog, mem = cgroups
    cfg = write_config(tmp_path / "config.toml", tmp_path / "store", interval=INTERVAL, sock=tmp_path / "rec.sock",
                       ring_mib=4)
    cp = subprocess.run(["unshare", "--net", "--pid", "--fork", "--mount-proc", sys.executable,
                         str(HERE / "e2e_scenario.py"), str(cfg), hog, mem],
                        capture_output=True, text=True, timeout=600)
    assert cp.returncode == 0, cp.stderr[-3000:]
    out = json.loads(cp.stdout.strip().splitlines()[-1])
    assert out["rc"] == 0, out["stderr"]
    cap = json.loads(out["capture"])
    assert cap["collectors"]["history"] == "ok"
    times = out["times"]

    # the bundle holds the samples
    from agent.report.loader import load_archive
    b = load_archive(Path(cap["bundle"]))
    summary = b.json("collectors/history/summary.json")
    assert summary["samples"] >= 30 and summary["interval_s"] == INTERVAL
    assert summary["window"]["t0_source"].startswith("incident start")
    lines = (b.text("collectors/history/history.jsonl") or "").splitlines()
    assert len(lines) >= summary["samples"] and b.has("collectors/history/ring-slice.bin")
    sample_times = sorted(json.loads(x)["t"] for x in lines if json.loads(x)["kind"] == "sample")
    started = {p["comm"] for p in summary["processes"]["started"]}
    assert "sleep" in started and summary["processes"]["started_total"] >= 300

    # the report names each change's first departure within one interval of its start
    rep = gh(cfg, "report", cap["bundle"], "--format", "json", "-o", "-")
    assert rep.returncode == 0, rep.stderr
    report = json.loads(rep.stdout)
    fr = [f for f in report["findings"] if f["rule"] == "flight_recorder" and f["data"].get("departures")]
    assert len(fr) == 1 and fr[0]["scope"] != "elsewhere"     # early by design, never "context"
    deps = {d["signal"]: d for d in fr[0]["data"]["departures"]}
    expect = {"cpu_hog": f"cgroup.{hog}.cpu_pct", "memory_growth": f"cgroup.{mem}.mem_mib",
              "listen_overflow": "tcpext.listen_overflows", "process_burst": "proc.count"}
    from agent.incident import parse_iso
    for change, signal in expect.items():
        d = deps.get(signal)
        assert d is not None, f"{change}: no departure of {signal} in {sorted(deps)}"
        onset = parse_iso(d["onset"]).timestamp()
        before = parse_iso(d["onset_after"]).timestamp()
        began = times[change]
        # the change began inside the sampling interval that ends at the onset: within one interval. (A change
        # that began in the last fifth of an interval had only a sliver of it to show in, and may show first
        # in the next sample: also within one interval of its start, plus that sliver.)
        after = [t for t in sample_times if t > began]
        s1 = after[0]
        allowed = s1 if s1 - began >= 0.2 * INTERVAL else after[1]
        assert began <= onset + 0.01 and onset <= allowed + 0.01, (change, d, began, after[:3])
        assert before - 0.01 <= began or abs(onset - after[1]) < 0.01, (change, d, began)
        assert not d["already_abnormal"] and d["direction"] == "up"
    # the finding the overflow supports (the sockets collector saw the full accept queue) says since when
    lq = [f for f in report["findings"] if f["rule"] == "listen_queue" and f["data"].get("since")]
    assert lq, [f["title"] for f in report["findings"]]
    since = parse_iso(lq[0]["data"]["since"]).timestamp()
    assert abs(since - times["listen_overflow"]) <= INTERVAL + 1.0          # "since" is to the second
    assert lq[0]["data"]["since_signal"].startswith("tcpext.") and "per the flight recorder" in lq[0]["explanation"]
    # and they are on the timeline, in order
    rows = [e for e in report["timeline"] if e["source"] == "history"]
    order = [next(i for i, e in enumerate(rows) if e["event"].startswith(label)) for label in (
        f"cgroup {hog} CPU rose", f"cgroup {mem} memory rose", "listen-queue overflows", "processes rose")]
    assert order == sorted(order)
    burst = [e for e in rows if "processes started" in e["event"] and "sleep ×" in e["event"]]
    import re
    assert burst and int(re.match(r"(\d+) processes started", burst[0]["event"]).group(1)) >= 300
