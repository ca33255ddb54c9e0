"""The report of a real incident names each condition with its evidence (see conftest: all made for real)."""
from __future__ import annotations

import re

import pytest

SPINNERS_SEEN = 3    # of the 6 spinners: each waits for the other five, p99 well above 10 ms


def _needs(report: dict, collector: str) -> None:
    """Skip when ``collector`` did not succeed in web-1's capture (a loaded machine can make a probe time out),
    after checking that the report then names the missing evidence instead."""
    web1 = next(b for b in report["bundles"] if b["host"] == "web-1")
    status = (web1["collectors"] or {}).get(collector)
    if status in ("ok", "partial"):
        return
    if status in ("failed", "timeout"):
        assert [f for f in report["findings"] if f["rule"] == "collector_status" and f["host"] == "web-1"
                and f"Collector {collector}" in f["title"]], f"{collector} {status} but no finding says so"
    pytest.skip(f"collector {collector} was {status} in this capture")


def _find(report: dict, rule: str, pattern: str, host: str | None = "web-1") -> dict:
    hits = [f for f in report["findings"] if f["rule"] == rule and re.search(pattern, f["title"])
            and (host is None or f["host"] == host)]
    assert hits, f"no {rule} finding matching {pattern!r}: " + "; ".join(
        f"{f['rule']}: {f['title']}" for f in report["findings"])
    return hits[0]


def test_both_hosts_are_in_one_report_with_verified_evidence(incident, report):
    assert report["incidents"] == [incident.id]
    assert report["hosts"] == ["web-1", "web-2"]
    assert len(report["bundles"]) == 2
    assert all(b["integrity"]["ok"] and b["integrity"]["files_checked"] > 0 for b in report["bundles"])
    assert not [f for f in report["findings"] if f["rule"] == "bundle_integrity"]


def test_oom_kill_is_critical_with_the_kernel_records(incident, report):
    f = _find(report, "oom_kill", rf"OOM killer killed {incident.oom_comm} \(pid {incident.oom_pid}\)")
    assert f["severity"] == "critical"
    assert "6.0 GiB" in f["explanation"] and "global" not in f["title"]
    assert f["data"]["pids"] == [incident.oom_pid]
    ev = f["evidence"]
    main = [e for e in ev if f"Killed process {incident.oom_pid} ({incident.oom_comm})" in e.get("excerpt", "")]
    assert main and main[0]["file"] == "collectors/dmesg/dmesg.txt" and main[0]["line"] > 0
    assert main[0]["record"].startswith("seq ")
    assert any("invoked oom-killer" in e.get("excerpt", "") for e in ev)
    assert any("oom-kill:constraint=CONSTRAINT_NONE" in e.get("excerpt", "") for e in ev)
    # the same OOM kill seen by web-2 (same kernel) is reported for that host too
    _find(report, "oom_kill", rf"{incident.oom_comm}", host="web-2")


def test_the_evidence_line_is_the_line_in_the_bundle(incident, report):
    """The line number a finding gives is where the record really is in dmesg.txt of the bundle."""
    import tarfile

    import zstandard
    f = _find(report, "oom_kill", incident.oom_comm)
    ev = next(e for e in f["evidence"] if "Out of memory" in e.get("excerpt", ""))
    bundle = incident.bundles[0]
    with open(bundle, "rb") as fh:
        with tarfile.open(fileobj=zstandard.ZstdDecompressor().stream_reader(fh), mode="r|") as tar:
            for m in tar:
                if m.name.endswith("/collectors/dmesg/dmesg.txt"):
                    lines = tar.extractfile(m).read().decode().splitlines()
                    break
    assert f"Killed process {incident.oom_pid} ({incident.oom_comm})" in lines[ev["line"] - 1]


def test_segfault_is_named_with_its_pid(incident, report):
    hits = [f for f in report["findings"] if f["rule"] == "kernel_errors" and f["host"] == "web-1"
            and re.fullmatch(r"python\S* crashed with a segmentation fault( \(\d+ times\))?", f["title"])
            and f"{incident.segv_pid}" in f["explanation"]]
    assert len(hits) == 1, [f["title"] for f in report["findings"]]
    f = hits[0]
    assert f["severity"] == "warning" and f["data"]["kind"] == "segfault"
    assert any(f"[{incident.segv_pid}]: segfault at 0 " in e.get("excerpt", "") for e in f["evidence"])


def test_full_conntrack_table_and_its_drops(incident, report):
    if incident.conntrack_skip:
        pytest.skip(incident.conntrack_skip)
    _needs(report, "conntrack")
    f = _find(report, "conntrack", r"Conntrack table full: \d+ of \d+ entries \(\d+%\) in network namespace")
    assert f["severity"] == "critical" and f["data"]["fill_ratio"] >= 0.99
    assert f["evidence"][0]["file"] == "collectors/conntrack/conntrack.json"
    assert "count" in f["evidence"][0]["excerpt"] and "max" in f["evidence"][0]["excerpt"]
    d = _find(report, "conntrack", r"Conntrack dropped or evicted connections \(.*(early_drop|drop) \d+")
    assert d["severity"] == "critical"       # the table is full: drops are not old news
    assert d["data"]["totals"].get("early_drop", 0) + d["data"]["totals"].get("drop", 0) >= 1


def test_listen_queue_overflow_names_the_listener_and_its_owner(incident, report):
    f = _find(report, "listen_queue", rf"Accept queue full on tcp 127\.0\.0\.1:{incident.listen_port} ")
    assert f["severity"] == "critical"
    assert "python" in f["title"]                 # the owner that does not accept()
    assert f["data"]["backlog"] == 1 and f["data"]["accept_queue"] >= 2
    assert f["evidence"][0]["file"] == "collectors/sockets/sockets.json"
    assert f["evidence"][0]["record"] == f"listener 127.0.0.1:{incident.listen_port}"
    o = _find(report, "listen_queue", r"Listen queue overflows: ListenOverflows [1-9]")
    assert o["severity"] == "warning" and "in network namespace /run/netns/gh-rpt-ls" in o["title"]


def test_deadlocked_python_target(incident, report):
    if "threads" not in incident.collectors:
        pytest.skip("no threads collector in collectors/ yet: thread dumps cannot be captured")
    _needs(report, "threads")
    f = _find(report, "thread_dumps", rf"(Likely deadlock|Deadlock) in .*pid {incident.deadlock_pid}")
    assert f["severity"] == "critical"
    assert {"gh-deadlock-a", "gh-deadlock-b"} <= set(f["data"]["threads"])
    assert all(e["file"] == f"collectors/threads/{incident.deadlock_pid}/threads.json" for e in f["evidence"])
    assert any("deadlock.py" in e.get("excerpt", "") for e in f["evidence"])


def test_fd_hungry_process(incident, report):
    if "process" not in incident.collectors:
        pytest.skip("no process collector in collectors/ yet: per-process descriptor limits are not captured")
    _needs(report, "process")
    f = _find(report, "fd_limits", rf"pid {incident.fd_pid}\) has 240 of 256 file descriptors open \(94%")
    assert f["severity"] == "warning"
    assert f["evidence"][0]["file"] == f"collectors/process/{incident.fd_pid}/process.json"


def test_timeline_merges_kernel_logs_trigger_and_capture_of_both_hosts(incident, report):
    tl = report["timeline"]
    times = [e["time"] for e in tl]
    assert times == sorted(times)
    by = lambda pred: [e for e in tl if pred(e)]
    oom = by(lambda e: e["source"] == "dmesg" and f"Killed process {incident.oom_pid}" in e["event"])
    assert {e["host"] for e in oom} == {"web-1", "web-2"} and oom[0]["severity"] == "critical"
    assert by(lambda e: e["source"] == "incident" and incident.id in e["event"] and "checkout latency" in e["event"])
    assert len(by(lambda e: e["source"] == "goldenhour" and e["event"].startswith("Capture started"))) == 2
    logs = by(lambda e: e["source"] == "app.log")
    assert [e["event"] for e in logs if incident.log_error in e["event"]], logs
    err = next(e for e in logs if incident.log_error in e["event"])
    assert err["file"].startswith("collectors/logs/files/") and err["line"] == 2 and err["severity"] == "warning"
    assert not err.get("assumed_utc")                        # it said Z
    syslog = next(e for e in logs if "request | pipe | failed" in e["event"])
    assert syslog["assumed_utc"] and syslog["line"] == 3
    assert not by(lambda e: "three days ago" in e["event"] or "without a timestamp" in e["event"])
    assert not by(lambda e: "started worker" in e["event"])   # INFO lines are not notable
    trig = next(e for e in tl if e["source"] == "incident" and e["host"] == "web-1")
    assert trig["time"] < next(e["time"] for e in tl if e["source"] == "goldenhour" and e["host"] == "web-1"
                               and e["event"].startswith("Capture ended"))


def test_extracted_folder_gives_the_same_findings(incident, tmp_path):
    import subprocess
    subprocess.run(["tar", "-xf", str(incident.bundles[0]), "-C", str(tmp_path)], check=True)
    folder = next(tmp_path.iterdir())
    a = incident.report_json(str(incident.bundles[0]))
    b = incident.report_json(str(folder))
    assert [f["title"] for f in a["findings"]] == [f["title"] for f in b["findings"]]
    assert b["bundles"][0]["integrity"]["ok"]
    # the folder holding the extracted folder works too
    c = incident.report_json(str(tmp_path))
    assert [f["title"] for f in c["findings"]] == [f["title"] for f in a["findings"]]


def test_report_needs_no_capture_tool(incident, tmp_path):
    """With an empty PATH (no ss, conntrack, py-spy, gdb...) the report is the same."""
    out = tmp_path / "r.html"
    cp = incident.gh("report", "--incident", incident.id, "--out", str(out), env={"PATH": "/nonexistent"})
    assert cp.returncode == 0, cp.stderr
    html = out.read_text()
    assert f"OOM killer killed {incident.oom_comm}" in html
    assert "report  " in cp.stdout and str(out) in cp.stdout


def test_run_queue_latency_of_processes_sharing_a_cpu(incident, report):
    if "runqlat" not in incident.collectors:
        pytest.skip("no runqlat collector")
    _needs(report, "runqlat")
    f = _find(report, "runqueue_latency", r"Run-queue latency: \d+ processes waited for a CPU, p99 up to ")
    assert f["severity"] in ("warning", "critical")
    seen = {int(re.search(r"pid (\d+)", p["label"]).group(1)): p for p in f["data"]["processes"]}
    assert len(set(seen) & set(incident.spinners)) >= SPINNERS_SEEN, f["data"]
    assert all(seen[pid]["p99_us"] >= 10_000 for pid in set(seen) & set(incident.spinners))
    assert all(e["file"] == "collectors/runqlat/runqlat.json" for e in f["evidence"])


def test_slow_lock_syscall_is_an_outlier_with_its_histogram(incident, report, tmp_path):
    if "syscalls" not in incident.collectors:
        pytest.skip("no syscalls collector")
    _needs(report, "syscalls")
    # one waits, the others hold: judged by the time spent inside flock() when that fills the window
    f = _find(report, "syscall_latency", rf"^flock\(\) in python\S* \(pid {incident.lock_pid}\)"
                                         r"(?: took up to |: .* of the \d+ s probe window inside it)")
    assert f["severity"] in ("warning", "critical") and 200_000 <= f["data"]["max_us"] < 1_000_000
    assert "file lock" in f["explanation"]
    assert f["evidence"][0]["file"] == "collectors/syscalls/syscalls.json"
    assert f["evidence"][0]["record"] == f"pid {incident.lock_pid} flock"
    out = tmp_path / "r.html"
    assert incident.gh("report", "--incident", incident.id, "--out", str(out)).returncode == 0
    assert f"(pid {incident.lock_pid}): syscall latency" in out.read_text()


def test_jvm_deadlock_reported_by_the_runtime(incident, report):
    if incident.jvm_pid is None:
        pytest.skip(incident.jvm_skip)
    _needs(report, "threads")
    f = _find(report, "thread_dumps", rf"^Deadlock in java \(pid {incident.jvm_pid}\): threads ")
    assert f["severity"] == "critical"
    assert {"gh-deadlock-a", "gh-deadlock-b"} <= set(f["data"]["threads"])
    assert "The JVM reported a deadlock" in f["explanation"] and "waiting to lock monitor" in f["explanation"]
    assert all(e["file"] == f"collectors/threads/{incident.jvm_pid}/threads.json" for e in f["evidence"])
    assert any("GhTarget" in e.get("excerpt", "") for e in f["evidence"])
