"""Rules on evidence this machine cannot produce (recorded kernel lines, PSI, eBPF-shaped records) and on a
live py-spy dump of a real deadlock; plus the report's parsers (histograms, timestamps, log tails)."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from agent.report import from_bundles, hist, render
from agent.report.loader import TAIL_MAX, load_folder
from agent.report.timeline import markdown_rows, parse_time
from tests.report import bundlemaker as bm

FIXTURES = Path(__file__).parent / "fixtures"
TARGETS = Path(__file__).parent / "targets"


def _kernel_lines() -> list[tuple[int, str]]:
    out = []
    for line in (FIXTURES / "kernel-errors.txt").read_text().splitlines():
        level, _, msg = line.partition("|")
        out.append((int(level), msg))
    return out


def _report(tmp_path, files, **kw):
    folder = bm.make(tmp_path, files, **kw)
    return from_bundles([load_folder(folder)])


def _titles(rep, rule=None):
    return [f.title for f in rep.findings if rule is None or f.rule == rule]


@pytest.fixture
def kernel_report(tmp_path):
    return _report(tmp_path, {"collectors/dmesg/dmesg.json": bm.dmesg_json(_kernel_lines())})


def test_kernel_errors_are_named_and_grouped(kernel_report):
    t = _titles(kernel_report, "kernel_errors")
    assert "Hung task: jbd2/sda1-8 (pid 245) blocked" in t
    assert "Hung task: postgres (pid 8812) blocked" in t
    assert "CPU 3 locked up" in t and "RCU stall" in t
    assert "I/O errors on sdb" in t and "I/O errors on nvme0n1" in t
    assert "I/O errors on sdb1 (3 messages)" in t          # buffer I/O error, ext4 error, read-only remount
    assert "I/O errors on nvme0" in t and "I/O errors on ata1.00" in t
    assert "Kernel error: BUG: unable to handle page fault" in t and "Kernel error: Oops" in t
    assert "Network interface eth0: transmit timeout or link down" in t
    assert "nginx crashed with a segmentation fault" in t and "node crashed with a segmentation fault" in t
    sev = {f.title: f.severity for f in kernel_report.findings}
    assert sev["Hung task: postgres (pid 8812) blocked"] == "critical"
    assert sev["nginx crashed with a segmentation fault"] == "warning"
    hung = next(f for f in kernel_report.findings if f.title.startswith("Hung task: jbd2"))
    assert hung.evidence[0].file == "collectors/dmesg/dmesg.json"    # no dmesg.txt in this bundle
    assert hung.evidence[0].record == "seq 1000"
    assert not [x for x in t if "Link is Up" in x]


def test_memory_cgroup_oom_kill_names_the_cgroup_and_the_reaper(kernel_report):
    f = next(f for f in kernel_report.findings if f.rule == "oom_kill")
    assert f.title == "OOM killer killed node (pid 3131)" and f.severity == "critical"
    assert "the memory limit of cgroup /kubepods/pod42" in f.explanation
    assert "500.0 MiB" in f.explanation and "came from node" in f.explanation
    msgs = [e.excerpt for e in f.evidence]
    assert [("invoked oom-killer" in m, "oom-kill:" in m, "Killed process" in m, "oom_reaper" in m) for m in msgs] == [
        (True, False, False, False), (False, True, False, False), (False, False, True, False),
        (False, False, False, True)]


def test_table_full_and_syn_flood_messages(kernel_report):
    ct = next(f for f in kernel_report.findings if f.rule == "conntrack")
    assert ct.title == "Conntrack table full: the kernel dropped new connections' packets (1 message)"
    assert ct.severity == "critical"
    syn = next(f for f in kernel_report.findings if f.rule == "listen_queue")
    assert syn.title == "Kernel reported possible SYN flooding on port 8080" and "SYN cookies" in syn.explanation


def test_kernel_timeline_marks_what_findings_rest_on(kernel_report):
    ev = {e.event: e for e in kernel_report.events if e.source == "dmesg"}
    assert ev["INFO: task postgres:8812 blocked for more than 122 seconds."].severity == "critical"
    assert "e1000e: eth0 NIC Link is Up 1000 Mbps Full Duplex, Flow Control: Rx/Tx" not in ev   # info level
    hung = ev["INFO: task jbd2/sda1-8:245 blocked for more than 120 seconds."]
    assert hung.line is None and hung.file == "collectors/dmesg/dmesg.json"


HOST = {
    "load": {"1m": 19.5, "5m": 12.0, "15m": 6.0, "runnable": "20/900"}, "cpu": {"count": 4},
    "memory": {"MemTotal": 16 * 2**30, "MemAvailable": 300 * 2**20, "SwapTotal": 2**30, "SwapFree": 2**28},
    "psi": {"cpu": {"some": {"avg10": 80.5, "avg60": 60.0, "avg300": 20.0, "total": 1}},
            "memory": {"some": {"avg10": 35.0, "avg60": 20.0, "avg300": 5.0, "total": 1},
                       "full": {"avg10": 12.0, "avg60": 8.0, "avg300": 2.0, "total": 1}},
            "io": {"some": {"avg10": 1.0, "avg60": 0.5, "avg300": 0.2, "total": 1},
                   "full": {"avg10": 0.0, "avg60": 0.0, "avg300": 0.0, "total": 0}}},
    "fd": {"allocated": 97_000, "unused": 0, "max": 100_000},
    "vmstat": {"oom_kill": 2},
    "mounts": [{"device": "/dev/sdb1", "mount": "/var/lib/postgresql", "fstype": "ext4", "size_bytes": 10**11,
                "used_bytes": 99 * 10**9, "avail_bytes": 10**9, "used_percent": 99.0, "inodes": 1000,
                "inodes_free": 500, "inodes_used_percent": 50.0}],
    "d_state": [{"pid": 8812 + i, "comm": "postgres", "ppid": 1, "state": "D", "wchan": "io_schedule",
                 "cmdline": "postgres: writer"} for i in range(4)],
    "sysctls": {"net.ipv4.ip_local_port_range": "32768\t60999"},
    "cgroups": [{"path": "/", "oom_kills": 0},
                {"path": "/system.slice/orders.service", "memory_current_bytes": 1_950 * 2**20,
                 "memory_max_bytes": 2 * 2**30, "oom_kills": 3, "memory.events": {"oom_kill": 3},
                 "cpu_quota_cores": 0.5, "throttled": {"nr_periods": 1000, "nr_throttled": 640,
                                                       "throttled_usec": 31_000_000}}],
}


def test_host_pressure_resources_fds_and_d_state(tmp_path):
    proc = {"pid": 8812, "comm": "postgres", "fd": {"count": 10, "limit": 1024},
            "threads": [{"tid": 8812, "name": "postgres", "state": "S", "wchan": "do_epoll_wait"},
                        {"tid": 8820, "name": "pg-writer", "state": "D", "wchan": "io_schedule",
                         "kernel_stack": ["io_schedule", "folio_wait_bit", "ext4_sync_file"]}]}
    rep = _report(tmp_path, {"collectors/host/host.json": HOST, "collectors/process/8812/process.json": proc})
    t = {f.title: f for f in rep.findings}
    assert t["CPU pressure: some 80 % (avg10 80.5, avg60 60.0, avg300 20.0)"].severity == "critical"
    mem = t["Memory pressure: full 12 % (avg10 12.0, avg60 8.0, avg300 2.0)"]
    assert mem.severity == "critical" and "rising" in mem.explanation
    assert not [x for x in t if x.startswith("Memory pressure: some")]    # the worse line only
    assert not [x for x in t if x.startswith("I/O pressure")]
    assert t["Host file descriptors at 97% of fs.file-max (97000 of 100000)"].severity == "critical"
    assert t["Filesystem /var/lib/postgresql at 99 % of its space"].severity == "critical"
    assert "Memory nearly exhausted: 300.0 MiB available of 16.0 GiB (2%)" in t
    assert "Swap 75% used (768.0 MiB of 1.0 GiB)" in t and "Load average 19.5 on 4 CPUs" in t
    d = t["5 tasks in uninterruptible sleep (D state), 5 at io_schedule"]
    assert d.severity == "critical" and len(d.evidence) == 5
    assert d.evidence[-1].file == "collectors/process/8812/process.json"
    assert d.evidence[-1].excerpt == "wchan io_schedule; kernel stack: io_schedule ← folio_wait_bit ← ext4_sync_file"
    assert t["2 OOM kills since boot, but no kernel message names the victim"].severity == "warning"
    cg = t["cgroup /system.slice/orders.service had 3 OOM kills"]
    assert cg.evidence[0].record == "cgroups /system.slice/orders.service memory.events"
    assert "cgroup /system.slice/orders.service at 95% of its memory limit (1.9 GiB of 2.0 GiB)" in t
    thr = t["cgroup /system.slice/orders.service CPU-throttled in 64% of periods"]
    assert "0.5 CPUs" in thr.explanation and "31.0 s" in thr.explanation
    html = render(rep, "html")
    assert "Pressure (PSI) on db-1" in html


def test_failed_and_skipped_collectors_are_findings(tmp_path):
    cols = [{"name": "threads", "key": "threads/4242", "status": "timeout", "reason": "killed at its 20 s limit"},
            {"name": "syscalls", "key": "syscalls", "status": "failed", "reason": "RuntimeError: BPF load failed"},
            {"name": "sockets", "key": "sockets", "status": "partial", "reason": "used /proc/net instead of ss"},
            {"name": "heap", "key": "heap/4242", "status": "skipped", "reason": "jcmd not found on PATH"},
            {"name": "dmesg", "key": "dmesg", "status": "ok"}]
    rep = _report(tmp_path, {"collectors/dmesg/dmesg.json": bm.dmesg_json([]),
                             "collectors/syscalls/collector.log": "Traceback ...\nRuntimeError: BPF load failed\n"},
                  collectors=cols, extra={"left_out": [{"path": "collectors/heap/4242/heap.hprof", "bytes": 9,
                                                         "reason": "bundle cap"}]})
    t = {f.title: f for f in rep.findings if f.rule == "collector_status"}
    assert t["Collector threads/4242 timed out: its evidence is missing"].severity == "warning"
    failed = t["Collector syscalls failed: its evidence is missing"]
    assert "BPF load failed" in failed.explanation
    assert [e.file for e in failed.evidence] == ["manifest.json", "collectors/syscalls/collector.log"]
    assert failed.evidence[1].excerpt == "RuntimeError: BPF load failed"
    assert t["Collector sockets captured only part of its evidence"].severity == "info"
    assert "heap/4242: jcmd not found on PATH" in t["1 collector could not run on db-1"].explanation
    assert "1 file left out of the bundle by its size caps" in t
    tl = [e for e in rep.events if e.source == "goldenhour" and "syscalls failed" in e.event]
    assert tl and tl[0].severity == "warning"


# Records in the shape the eBPF collectors write (syscalls.json, runqlat.json, tcpretrans.json) for what this
# machine cannot produce on demand: a 1.8 s fsync (slow storage), a 130 ms run-queue wait, a retransmit burst
# and resets (tcpretrans cannot attach here: this kernel's tcp:tcp_retransmit_skb has no usable format).
# The real collectors' output is checked in test_report_incident.py (flock contention, CPU-sharing spinners).
SYSCALLS = {"window": {"seconds": 5.0}, "in_flight": [
    {"pid": 4242, "tid": 4250 + i, "comm": "postgres", "syscall": "fdatasync", "nr": 75, "age_us": 4_900_000.0 - i,
     "since_utc": bm.iso(bm.T0 + timedelta(seconds=1))} for i in range(3)] + [
    {"pid": 77, "tid": 77, "comm": "nginx", "syscall": "epoll_wait", "nr": 232, "age_us": 5e6,
     "since_utc": bm.iso(bm.T0)}], "records": [
    {"pid": 4242, "comm": "postgres", "syscall": "fsync", "count": 40, "total_us": 2_600_000, "max_us": 1_800_000,
     "p50_us": 900, "p99_us": 1_800_000, "hist": [0, 0, 0, 0, 0, 0, 0, 0, 0, 20, 10, 5, 0, 0, 0, 0, 0, 0, 0, 0, 5]},
    {"pid": 4242, "comm": "postgres", "syscall": "read", "count": 5000, "total_us": 90_000, "max_us": 60,
     "p50_us": 12, "p99_us": 40, "hist": {"3": 1000, "4": 3500, "5": 500}},
    {"pid": 4242, "comm": "postgres", "syscall": "epoll_wait", "count": 100, "total_us": 4_900_000,
     "max_us": 2_000_000, "p50_us": 40_000, "p99_us": 1_900_000, "hist": {"20": 100}},
    {"pid": 77, "comm": "nginx", "syscall": "write", "count": 900, "total_us": 400_000, "max_us": 250_000,
     "p50_us": 30, "p99_us": 800, "hist": [[16, 32, 700], [32, 64, 190], [131072, 262144, 10]]},
]}
RUNQLAT = {"window_s": 5.0, "unit": "us", "hist": [{"low": 0, "high": 1, "count": 10},
                                                  {"low": 2, "high": 3, "count": 500},
                                                  {"low": 16384, "high": 32767, "count": 40},
                                                  {"low": 65536, "high": 131071, "count": 30}],
           "per_pid": [{"pid": 4242, "comm": "postgres", "hist": {"10": 50, "16": 50}}]}
TCPRETRANS = {"window_s": 5.0, "events": [
    {"time": bm.iso(bm.T0 + timedelta(seconds=2)), "pid": 4242, "comm": "postgres", "saddr": "10.0.0.5",
     "sport": 5432, "daddr": "10.0.0.9", "dport": 40000 + i % 3, "state": "ESTABLISHED", "type": "R"}
    for i in range(60)] + [
    {"kind": "send_reset", "saddr": "10.0.0.5", "sport": 8080, "daddr": "10.0.0.7", "dport": 51000, "count": 25,
     "reason": "NO_SOCKET", "time": bm.iso(bm.T0)},
    {"kind": "receive_reset", "saddr": "10.0.0.5", "sport": 41000, "daddr": "10.0.0.9", "dport": 5432, "count": 3,
     "time": bm.iso(bm.T0)}]}


def test_probe_findings_and_plots(tmp_path):
    rep = _report(tmp_path, {"collectors/syscalls/syscalls.json": SYSCALLS,
                             "collectors/runqlat/runqlat.json": RUNQLAT,
                             "collectors/tcpretrans/tcpretrans.json": TCPRETRANS})
    t = {f.title: f for f in rep.findings}
    # 2.6 s of fsync in a 5 s window: judged by the time it took, not by the number of slow calls
    fs = t["fsync() in postgres (pid 4242): 52% of the 5 s probe window inside it (p50 900 µs, max 1.80 s)"]
    assert fs.severity == "critical" and fs.evidence[0].record == "pid 4242 fsync"
    assert t["write() in nginx (pid 77) took up to 250.0 ms (p50 30 µs, p99 800 µs)"].severity == "warning"
    assert not [x for x in t if x.startswith(("epoll_wait()", "read()"))]   # waiting by design / fast
    stuck = t["fdatasync() in postgres (pid 4242) still blocked after 4.90 s (3 threads)"]
    assert stuck.severity == "critical" and stuck.evidence[0].record == "in_flight pid 4242 tid 4250 fdatasync"
    rq = t["Run-queue latency for all CPUs: p99 131.1 ms (p50 3 µs, max 131.1 ms)"]
    assert rq.severity == "critical"
    per = t["Run-queue latency: 1 process waited for a CPU, p99 up to 131.1 ms, worst postgres (pid 4242)"]
    assert per.data["processes"][0]["p50_us"] == 2048.0
    rt = t["TCP retransmit burst: 60 retransmissions by postgres (pid 4242) in 5 s, most to 10.0.0.9:40000"]
    assert rt.severity == "critical" and rt.time == bm.T0 + timedelta(seconds=2) and rt.data["pid"] == 4242
    assert [e for e in rep.events if e.source == "tcp_retransmits"]
    rst = t["TCP resets: 25 sent, 3 received in 5 s, most with 10.0.0.7:51000"]
    assert "NO_SOCKET ×25" in rst.explanation
    html = render(rep, "html")
    assert "postgres (pid 4242): syscall latency" in html and "nginx (pid 77): syscall latency" in html
    assert "Run-queue latency: all CPUs" in html


@pytest.mark.parametrize("shape, expect", [
    ([0, 3, 0, 5], [(2.0, 4.0, 3), (8.0, 16.0, 5)]),
    ({"1": 3, "3": 5}, [(2.0, 4.0, 3), (8.0, 16.0, 5)]),
    ([[2, 4, 3], [8, 16, 5]], [(2.0, 4.0, 3), (8.0, 16.0, 5)]),
    ([{"le": 4, "count": 3}, {"le": 16, "count": 5}], [(2.0, 4.0, 3), (8.0, 16.0, 5)]),
    ({"unit": "ns", "buckets": [{"low": 2000, "high": 4000, "count": 3}]}, [(2.0, 4.0, 3)]),
    ({"unit": "ms", "slots": {"0": 1}}, [(0.0, 1000.0, 1)]),
])
def test_histogram_shapes(shape, expect):
    assert hist.buckets(shape) == expect
    assert hist.percentile(expect, 0.99) == expect[-1][1]


@pytest.mark.parametrize("line, iso, assumed", [
    ("2026-11-23T10:15:00.123456+0000 web-1 app[1]: x", "2026-11-23T10:15:00.123456+00:00", False),
    ("2026-11-23 10:15:00,250 ERROR x", "2026-11-23T10:15:00.250000+00:00", True),
    ("2026-11-23T12:15:00+02:00 x", "2026-11-23T10:15:00+00:00", False),
    ("[2026-11-23T10:15:00Z] x", "2026-11-23T10:15:00+00:00", False),
    ("Nov 23 10:15:00 web-1 sshd[9]: x", "2026-11-23T10:15:00+00:00", True),
    ("2026/11/23 10:15:00 panic: x", "2026-11-23T10:15:00+00:00", True),
    ('10.0.0.1 - - [23/Nov/2026:11:15:00 +0100] "GET / HTTP/1.1" 502 0', "2026-11-23T10:15:00+00:00", False),
    ('{"ts": 1795428900.5, "level": "error", "msg": "x"}', "2026-11-23T10:15:00.500000+00:00", False),
    ('{"@timestamp": "2026-11-23T10:15:00Z", "message": "x"}', "2026-11-23T10:15:00+00:00", False),
    ("<11>1 2026-11-23T10:15:00Z web-1 app - - - x", "2026-11-23T10:15:00+00:00", False),
])
def test_log_timestamps(line, iso, assumed):
    got = parse_time(line, 2026)
    assert got is not None and got[0].isoformat() == iso and got[1] is assumed


def test_log_timestamps_that_are_not():
    for line in ("no time here", "2026-13-45T99:99:99Z broken", "Foo 23 10:15:00 x", "{not json"):
        assert parse_time(line, 2026) is None


def test_timeline_folds_repeats_and_escapes_pipes(tmp_path):
    lines = [(3, "nf_conntrack: nf_conntrack: table full, dropping packet") for _ in range(50)]
    rep = _report(tmp_path, {"collectors/dmesg/dmesg.json": bm.dmesg_json(lines)})
    rows = [e for e in rep.events if e.source == "dmesg"]
    assert len(rows) == 1 and rows[0].count == 50
    md = markdown_rows(rows)
    assert md.endswith("| nf_conntrack: nf_conntrack: table full, dropping packet (×50) |\n")
    from agent.report.model import Event
    e = Event(bm.T0, "h|1", "log", "a | b\nc\\d")
    assert markdown_rows([e]) == "| 2026-11-23 10:15:00 | h\\|1 | log | a \\| b c\\\\d |\n"


def test_big_log_tail_keeps_the_bundle_line_numbers(tmp_path):
    n = 150_000
    body = "".join(f"2026-11-23T10:{(i // 60) % 60:02d}:{i % 60:02d}Z line {i} ok\n" for i in range(n))
    body += "2026-11-23T10:14:59Z ERROR the last line\n"
    assert len(body) > TAIL_MAX
    logs = {"files": [{"path": "/var/log/app.log", "file": "files/var_log_app.log"}]}
    folder = bm.make(tmp_path, {"collectors/logs/logs.json": logs, "collectors/logs/files/var_log_app.log": body})
    b = load_folder(folder)
    assert b.first_line("collectors/logs/files/var_log_app.log") > 1
    rep = from_bundles([b])
    last = next(e for e in rep.events if "the last line" in e.event)
    assert last.line == n + 1 and last.file == "collectors/logs/files/var_log_app.log"
    assert b.integrity.ok


def test_rotated_gzip_and_non_utf8_logs_do_not_break_the_report(tmp_path):
    data = b"2026-11-23T10:14:00Z ERROR caf\xe9 \xff\xfe broken bytes\n"
    folder = bm.make(tmp_path, {"collectors/logs/files/var_log_x.log": data,
                                "collectors/logs/files/var_log_x.log.1.gz": gzip.compress(b"binary")})
    rep = from_bundles([load_folder(folder)])
    assert [e for e in rep.events if "broken bytes" in e.event]


@pytest.fixture
def deadlocked():
    p = subprocess.Popen([sys.executable, str(TARGETS / "deadlock.py")], stdout=subprocess.PIPE, text=True,
                         start_new_session=True, restore_signals=True)
    try:
        line = p.stdout.readline().split()
        assert line[:1] == ["READY"], line
        yield p.pid
    finally:
        p.kill()
        p.wait(timeout=10)
        p.stdout.close()


def test_live_python_deadlock_from_py_spy(tmp_path, deadlocked):
    """py-spy's own JSON of a real deadlocked process, where the threads collector puts its dump."""
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        pytest.skip("py-spy is not installed in this environment")
    cp = subprocess.run([str(spy), "dump", "--pid", str(deadlocked), "--json", "--native"], capture_output=True,
                        text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    dump = json.loads(cp.stdout)
    rel = f"collectors/threads/{deadlocked}/threads.json"
    folder = bm.make(tmp_path, {rel: dump}, extra={"targets": [{"pid": deadlocked, "comm": "python3",
                                                                  "runtime": "python"}]})
    rep = from_bundles([load_folder(folder)])
    f = next(f for f in rep.findings if f.rule == "thread_dumps")
    assert f.severity == "critical"
    assert f.title == f"Likely deadlock in python3 (pid {deadlocked}): 2 threads blocked on locks, none running"
    assert set(f.data["threads"]) == {"gh-deadlock-a", "gh-deadlock-b"}
    assert all(e.file == rel for e in f.evidence)
    assert any("take (deadlock.py:" in e.excerpt for e in f.evidence)
    html = render(rep, "html")
    assert html.count('<details class="group blocked"') == 1        # both threads share one stack
    assert "2 threads · 2 idle" in html and "MainThread" in html


def test_thread_dump_lock_graph_and_runtime_deadlocks(tmp_path):
    """Lock owners given by the dump (as a JVM's is): the wait-for cycle is found; a reported deadlock is used."""
    def th(name, state, waiting=None, holds=(), fn="Orders.reserve"):
        return {"name": name, "tid": name, "state": state, "waiting_on": waiting, "holds": list(holds),
                "frames": [{"function": fn, "file": "Orders.java", "line": 88}]}
    cyc = {"runtime": "jvm", "threads": [th("pool-1", "BLOCKED", "0xA", ["0xB"]),
                                          th("pool-2", "BLOCKED", "0xB", ["0xA"]),
                                          th("main", "WAITING", fn="Object.wait")] + [
        th(f"http-{i}", "BLOCKED", "0xB", fn="Cart.add") for i in range(6)]}
    reported = {"runtime": "jvm", "threads": cyc["threads"][:2], "deadlocks": [
        {"threads": ["pool-1", "pool-2"], "text": "Found one Java-level deadlock: ..."}]}
    folder = bm.make(tmp_path, {"collectors/threads/10/threads.json": cyc,
                                "collectors/threads/11/threads.json": reported})
    rep = from_bundles([load_folder(folder)])
    t = [f.title for f in rep.findings if f.rule == "thread_dumps"]
    assert "Deadlock in pid 10: threads pool-1, pool-2 wait for each other" in t
    assert "Deadlock in pid 11: threads pool-1, pool-2" in t
    html = render(rep, "html")
    assert "6 threads · 6 BLOCKED" in html           # the biggest identical-stack group, listed first for pid 10
    section = html.index('id="threads-db-1-10"')
    assert section < html.index("6 threads · 6 BLOCKED", section) < html.index("Orders.reserve (Orders.java:88)",
                                                                               section)


def test_broken_rule_module_becomes_a_finding(tmp_path, monkeypatch):
    from agent.report import rules
    folder = bm.make(tmp_path, {"collectors/host/host.json": {"psi": "not a dict", "fd": [1, 2]}})
    rep = from_bundles([load_folder(folder)])
    assert not [f for f in rep.findings if "could not" in f.title]   # odd shapes are tolerated quietly

    def boom(b):
        raise KeyError("psi")
    broken = rules.Rule(name="pressure", summary="x", evaluate=boom)
    monkeypatch.setattr(rules, "_cache", ([broken], [("weird", "SyntaxError: bad")]))
    rep = from_bundles([load_folder(folder)])
    t = [f.title for f in rep.findings]
    assert "Report rule weird could not be loaded" in t
    assert "Rule pressure could not read this bundle's evidence" in t


def test_every_rule_module_keeps_the_contract():
    from agent.report import rules
    found, broken = rules.discover()
    assert not broken
    names = {r.name for r in found}
    assert {"oom_kill", "kernel_errors", "conntrack", "listen_queue", "tcp_retransmits", "fd_limits", "pressure",
            "d_state", "process_state", "thread_dumps", "syscall_latency", "runqueue_latency", "collector_status",
            "bundle_integrity"} <= names
    page = (Path(__file__).resolve().parents[2] / "docs" / "report.md").read_text()
    for r in found:
        assert len(r.doc) > 120 and "Trigger" in r.doc, r.name
        assert r.summary and r.severity
        assert f"| `{r.name}` |" in page, f"docs/report.md's rules table does not explain rule {r.name}"


def test_kernel_evidence_older_than_the_window_is_demoted(tmp_path):
    old = bm.dmesg_json([(3, "Out of memory: Killed process 77 (worker) total-vm:100kB, anon-rss:50kB, file-rss:0kB, "
                             "shmem-rss:0kB, UID:0 pgtables:4kB oom_score_adj:0")], start=bm.T0 - timedelta(days=3))
    folder = bm.make(tmp_path, {"collectors/dmesg/dmesg.json": old})
    f = next(f for f in from_bundles([load_folder(folder)]).findings if f.rule == "oom_kill")
    assert f.severity == "warning" and "3 days before the incident's trigger" in f.explanation
    assert f.data["before_window"]
    f = next(f for f in from_bundles([load_folder(folder)], window_s=4 * 86400).findings if f.rule == "oom_kill")
    assert f.severity == "critical"


def test_many_old_findings_are_one_row_at_a_glance(tmp_path):
    lines = [(3, f"Out of memory: Killed process {100 + i} (job-{i}) total-vm:100kB, anon-rss:50kB, file-rss:0kB, "
                 "shmem-rss:0kB, UID:0 pgtables:4kB oom_score_adj:0") for i in range(6)]
    folder = bm.make(tmp_path, {"collectors/dmesg/dmesg.json": bm.dmesg_json(lines, start=bm.T0 - timedelta(hours=5))})
    rep = from_bundles([load_folder(folder)])
    assert len([f for f in rep.findings if f.rule == "oom_kill" and f.severity == "warning"]) == 6
    html = render(rep, "html")
    glance = html[html.index('<table class="glance">'):html.index("</table>", html.index('<table class="glance">'))]
    assert "6 earlier findings of rule oom_kill, from before the window" in glance
    assert "job-3" not in glance and html.count('<article class="finding warning"') == 6


def test_kernel_backtrace_lines_are_never_rows_of_their_own(tmp_path):
    """A backtrace printed slowly (its lines more than 2 s after the headline, as on a loaded host) folds
    whole into the headline's row, and a fragment whose headline fell before the window is dropped."""
    lines = [(4, "</TASK>"),                                  # the end of an earlier report
             (6, "e1000e: eth0 NIC Link is Up 1000 Mbps Full Duplex, Flow Control: Rx/Tx"),
             (4, "stress invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0"),
             (4, "CPU: 1 PID: 4242 Comm: stress Not tainted 6.1.0-57-amd64 #1  Debian 6.1.158-1"),
             (4, "Call Trace:"), (4, "<TASK>"), (4, " dump_stack_lvl+0x44/0x5c"), (4, "</TASK>"),
             (6, "Tasks state (memory values in pages):"),
             (3, "Memory cgroup out of memory: Killed process 4242 (stress) total-vm:70000kB, anon-rss:65536kB, "
                 "file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:200kB oom_score_adj:0")]
    rep = _report(tmp_path, {"collectors/dmesg/dmesg.json": bm.dmesg_json(lines, start=bm.T0 - timedelta(minutes=2))})
    rows = [e for e in rep.events if e.source == "dmesg"]
    assert not [e for e in rows if e.event.strip() in ("</TASK>", "<TASK>", "Call Trace:")
                or e.event.startswith(("CPU: ", "Tasks state"))], [e.event for e in rows]
    head = next(e for e in rows if "invoked oom-killer" in e.event)
    assert head.folded >= 5
