"""A responder's first screen: each failure shape built for real, captured with ``goldenhour snapshot --pid`` of
the failing service, and the report's first finding names the fault and that service.

Shapes (one real target each, in ``tests/report/targets/``):
- a Python service whose database connection pool is exhausted (request threads parked in getconn), and a JVM
  one (parked in getConnection -> ArrayBlockingQueue.take);
- a Node.js service whose event loop a synchronous handler blocks (and an asyncio one, the same in Python);
- a Go service leaking goroutines parked in ``chan send`` (about 4,000), with a pprof port the collector finds
  by itself, and without one (Delve's grouped listing);
- request threads queued on a file lock another process (``flock(1)``) holds;
- a conntrack table filled in a network namespace until the kernel drops packets and says so itself
  ("nf_conntrack: table full in netns N, dropping packet"), for a client living in that namespace;
- a journal whose serialised ``fdatasync()`` calls take 0.5 s each: a loop device whose writes the kernel's
  blkio throttle holds to 2 per second (like a cloud volume out of burst credits);
- a service leaking descriptors under one spool directory up to its limit of 1,024.

Noise: before any capture, a real OOM kill in a memory cgroup of its own (the kernel's full report) stays in the
ring buffer, and the shared test host adds its own (other suites' kernel lines, CPU pressure from parallel
work). None of it may come first: the first finding is about the target, the OOM kill of the other cgroup is
folded under "also on this host".
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import memcg, slowdisk
from tests.helpers.netns import delete as delete_netns, make_netns
from tests.helpers.proc import Proc
from tests.report.conftest import conntrack_fillable, run_gh

TARGETS = Path(__file__).resolve().parent / "targets"
BUILD = Path(__file__).resolve().parents[1] / "targets" / "build"
PROBE_S = "2"


@pytest.fixture(scope="module")
def noise():
    """A real memory-cgroup OOM kill in a cgroup of its own, before any capture: (victim pid, cgroup) or None."""
    return memcg.oom_kill_elsewhere()


@pytest.fixture
def gh(tmp_path):
    """Capture as a responder would, and read the report."""
    store = tmp_path / "store"
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[store]\npath = "{store}"\n[logs]\njournal = false\npaths = []\n')

    class GH:
        incident = f"INC-RSP-{uuid.uuid4().hex[:6]}"

        def snapshot(self, pid: int, *extra: str) -> dict:
            cp = run_gh(cfg, "snapshot", "--incident", self.incident, "--pid", str(pid), "--probe-seconds", PROBE_S,
                        "--json", *extra)
            assert cp.returncode == 0, cp.stderr
            return json.loads(cp.stdout)

        def report(self, fmt: str = "json") -> dict | str:
            cp = run_gh(cfg, "report", "--incident", self.incident, "--format", fmt, "--out", "-")
            assert cp.returncode == 0, cp.stderr
            return json.loads(cp.stdout) if fmt == "json" else cp.stdout

    return GH()


@pytest.fixture
def procs():
    started: list = []
    yield started
    for p in started:
        if isinstance(p, Proc):
            p.stop()                                   # its whole process group
        else:
            try:
                os.killpg(p.pid, signal.SIGKILL)        # flock(1) and the sleep it runs
            except ProcessLookupError:
                pass
            p.wait(timeout=10)


def first_is(rep: dict, rule: str, pid: int, *words: str, noise=None) -> dict:
    """The report's first finding is ``rule``'s, about ``pid``, naming ``words``; noise ranks below it."""
    fs = rep["findings"]
    assert fs, "no findings"
    first = fs[0]
    listing = "\n".join(f"{f['severity']} {f['scope']} {f['rule']}: {f['title']}" for f in fs[:12])
    assert first["rule"] == rule and f"pid {pid}" in first["title"], listing
    assert first["severity"] == "critical" and first["scope"] == "target", listing
    for w in words:
        assert w in first["title"], (w, first["title"])
    assert first["process"].endswith(f"(pid {pid})") or f"(pid {pid})" in first["process"]
    # the target strip names the same worst finding
    row = next(t for t in rep["targets"] if t["pid"] == pid)
    assert row["worst_finding"]["title"] == first["title"] and row["worst_finding"]["index"] == 1
    # the unrelated OOM kill is there, but folded under "also on this host", after every finding about the host now
    if noise is not None:
        victim, cgroup = noise
        oom = [i for i, f in enumerate(fs) if f["rule"] == "oom_kill" and victim in f["data"].get("pids", [])]
        assert oom, f"the noise OOM kill of pid {victim} in {cgroup} is missing"
        assert fs[oom[0]]["scope"] == "elsewhere" and oom[0] > 0
        assert all(f["scope"] == "elsewhere" for f in fs[oom[0]:])
    for f in fs:                                   # host-wide pressure or old kernel errors never outrank the target
        if f["rule"] in ("pressure", "oom_kill", "kernel_errors", "host_resources"):
            assert fs.index(f) > 0
    return first


# -- Python: an exhausted connection pool ------------------------------------------------------------------------

def test_python_pool_exhaustion_is_a_pileup_at_getconn(gh, procs, noise):
    t = Proc([sys.executable, str(TARGETS / "pool_exhausted.py")])
    procs.append(t)
    pid = t.pid
    gh.snapshot(pid)
    rep = gh.report()
    f = first_is(rep, "pileups", pid, "ConnectionPool.getconn", "Queue.get", noise=noise)
    assert f["data"]["count"] == 12 and f["data"]["total"] == 14
    html = gh.report("html")
    # the thread view heads the group with the application's frame and says it is a pile-up
    assert "ConnectionPool.getconn (pool_exhausted.py:" in html and ">pile-up</span> 12 of 14 threads" in html
    md = gh.report("md")
    targets = md[md.index("## Targets"):md.index("## Findings")]
    assert f" (pid {pid}) |" in targets and "CRITICAL: Pile-up in" in targets
    # the timeline keeps the noise OOM kill's report in one row: its backtrace and statistics are folded into it
    dmesg = [e for e in rep["timeline"] if e["source"] == "dmesg"]
    assert not [e for e in dmesg if re.match(r"\s*(?:</?TASK>|RSP: |RIP: |Call Trace:|Tasks state)", e["event"])]
    if noise is not None:
        assert [e for e in dmesg if "invoked oom-killer" in e["event"] and e.get("folded", 0) >= 20]


def test_jvm_pool_exhaustion_is_a_pileup_at_getconnection(gh, procs, noise):
    if not (shutil.which("java") and shutil.which("javac") and shutil.which("jcmd")):
        pytest.skip("no JDK (java, javac, jcmd)")
    out = BUILD / "java-report"
    src = TARGETS / "PoolApp.java"
    if not (out / "PoolApp.class").exists() or (out / "PoolApp.class").stat().st_mtime < src.stat().st_mtime:
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run(["javac", "-d", str(out), str(src)], check=True)
    t = Proc(["java", "-Xmx64m", "-cp", str(out), "PoolApp"])
    procs.append(t)
    pid = int(t.ready.split()[1])
    gh.snapshot(pid)
    rep = gh.report()
    f = first_is(rep, "pileups", pid, "PoolApp$Pool.getConnection", "ArrayBlockingQueue.take", noise=noise)
    assert f["data"]["count"] == 12


# -- Node.js and asyncio: a blocked event loop ---------------------------------------------------------------------

def test_node_blocked_event_loop_names_the_handler(gh, procs, noise):
    if not shutil.which("node"):
        pytest.skip("no node")
    t = Proc(["node", str(TARGETS / "blocked_loop.js")])
    procs.append(t)
    pid, port = (int(x) for x in t.ready.split()[1:3])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /report HTTP/1.1\r\nHost: x\r\n\r\n")     # the handler starts and never yields
        _busy(pid)
        gh.snapshot(pid)
    rep = gh.report()
    f = first_is(rep, "event_loop", pid, "Event loop of node", "blocked", noise=noise)
    assert "buildReport (blocked_loop.js:" in f["title"] or "scoreOrder (blocked_loop.js:" in f["title"]
    assert f["data"]["timed_out"] and f["data"]["lag_ms"] >= 1000


def test_asyncio_loop_blocked_in_a_coroutine(gh, procs, noise):
    t = Proc([sys.executable, str(TARGETS / "asyncio_blocked.py")])
    procs.append(t)
    pid = t.pid
    _busy(pid)
    gh.snapshot(pid)
    rep = gh.report()
    f = first_is(rep, "event_loop", pid, "asyncio event loop", "render_invoice", noise=noise)
    assert f["data"]["blocked_s"] >= 1.0


# -- Go: leaked goroutines --------------------------------------------------------------------------------------

def _go_binary() -> Path:
    if not shutil.which("go"):
        pytest.skip("no Go toolchain")
    out = BUILD / "goroutine_pileup"
    src = TARGETS / "goroutine_pileup.go"
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        BUILD.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "GO111MODULE": "off", "GOCACHE": str(BUILD / "gocache"), "GOFLAGS": ""}
        subprocess.run(["go", "build", "-o", str(out) + ".tmp", str(src)], check=True, env=env, cwd=BUILD)
        os.replace(str(out) + ".tmp", out)
    return out


def test_go_goroutine_leak_via_a_discovered_pprof_port(gh, procs, noise, tmp_path):
    t = Proc([str(_go_binary()), "-n", "4000", "-pprof"])
    procs.append(t)
    pid, _api, pprof = (int(x) for x in t.ready.split()[1:4])
    snap = gh.snapshot(pid)
    rep = gh.report()
    f = first_is(rep, "pileups", pid, "4000 of", "goroutines", "main.(*Broker).Publish", "chan send", noise=noise)
    assert f["data"]["count"] == 4000
    tool = _threads_doc(snap, pid)["tool"]
    assert tool == f"pprof goroutine?debug=2 at 127.0.0.1:{pprof} (discovered among the process's listening sockets)"


def test_go_goroutine_leak_via_delve_grouped(gh, procs, noise):
    if not shutil.which("dlv"):
        pytest.skip("no Delve")
    t = Proc([str(_go_binary()), "-n", "4000"])
    procs.append(t)
    pid = int(t.ready.split()[1])
    snap = gh.snapshot(pid)
    assert t.alive()                                   # Delve's exit prompt was answered "n"
    rep = gh.report()
    f = first_is(rep, "pileups", pid, "4000 of", "main.(*Broker).Publish", "chan send", noise=noise)
    doc = _threads_doc(snap, pid)
    assert doc["tool"] == "dlv attach: goroutines -group userloc -t 30"
    raw = _bundle_member(snap, f"collectors/threads/{pid}/threads.txt").decode()
    assert re.search(r"\[chan send \d{6,}\]", raw), "Delve printed no wait-since time (no GC ran?)"
    assert {t["state"] for t in doc["threads"] if "Publish" in t["name"]} == {"chan send"}
    assert len(doc["threads"]) < 50 and f["data"]["total"] >= 4000    # examples, weighted by their group's size


# -- a file lock held by another process -------------------------------------------------------------------------

def test_file_lock_holder_is_named_with_the_wait(gh, procs, noise, tmp_path):
    lock = tmp_path / "orders.lock"
    lock.touch()
    holder = subprocess.Popen(["flock", str(lock), "sleep", "1234"], start_new_session=True)
    procs.append(holder)
    _wait_for(lambda: _holds(holder.pid), "flock(1) to take the lock")
    t = Proc([sys.executable, str(TARGETS / "flock_waiters.py"), str(lock)])
    procs.append(t)
    pid = t.pid
    time.sleep(1.5)                                    # the waiters have waited a while before the responder looks
    gh.snapshot(pid)
    rep = gh.report()
    f = first_is(rep, "file_locks", pid, f"held by flock (pid {holder.pid})", str(lock), noise=noise)
    assert f["data"]["waiting"] == 12 and f["data"]["waited_s"] >= 1.0
    assert "12 threads of" in f["title"] and "wait4()" in f["explanation"]


# -- a full conntrack table, in the service's network namespace --------------------------------------------------

def test_conntrack_table_full_in_the_services_namespace(gh, procs, noise, tmp_path):
    why = conntrack_fillable()
    if why:
        pytest.skip(why)
    ns = make_netns("gh-rsp-ct", conntrack=True)
    try:
        log = tmp_path / "client.log"
        t = Proc(["ip", "netns", "exec", ns, sys.executable, str(TARGETS / "netns_client.py"), str(log)])
        procs.append(t)
        pid, inode = (int(x) for x in t.ready.split()[1:3])
        cp = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "tests.helpers.ctfill"],
                            capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
        assert cp.returncode == 0, cp.stderr
        # the kernel's own words, for this namespace (rate-limited: the client keeps making new flows)
        assert memcg.kernel_said(f"table full in netns {inode}, dropping packet"), "the kernel did not say so"
        gh.snapshot(pid)
        rep = gh.report()
        first_is(rep, "conntrack", pid, "Conntrack table full in the network namespace of", noise=noise)
    finally:
        delete_netns(ns)


# -- serialised slow fsync -----------------------------------------------------------------------------------------

def test_serialised_slow_fsync_is_critical_by_its_share_of_the_window(gh, procs, noise, tmp_path):
    why = slowdisk.usable()
    if why:
        pytest.skip(why)
    from tests.helpers.probes import bpf_ready
    if bpf_ready():
        pytest.skip(f"eBPF probes unavailable: {bpf_ready()}")
    with slowdisk.slow_disk(tmp_path / "disk", write_iops=2) as disk:
        procs_file = disk.procs
        t = Proc([sys.executable, str(TARGETS / "slow_journal.py"), str(disk.mount / "wal.log")],
                 preexec=lambda: Path(procs_file).write_text(str(os.getpid())))
        procs.append(t)
        pid = t.pid
        assert float(t.ready.split()[2]) >= 0.3            # the first commit already took that long
        try:
            gh.snapshot(pid)
        finally:
            t.stop()
        rep = gh.report()
        f = first_is(rep, "syscall_latency", pid, "fdatasync()", f"of the {PROBE_S} s probe window inside it",
                     noise=noise)
        assert f["data"]["window_share"] >= 0.5 and f["data"]["max_us"] >= 300_000


# -- a descriptor leak under one directory -------------------------------------------------------------------------

def test_fd_leak_names_the_directory(gh, procs, noise, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    log = tmp_path / "relay.log"
    t = Proc([sys.executable, str(TARGETS / "fd_leak.py"), str(spool), str(log)])
    procs.append(t)
    pid = t.pid
    _wait_for(lambda: log.exists() and "ERROR" in log.read_text(), "the relay's first error")
    gh.snapshot(pid)
    rep = gh.report()
    f = first_is(rep, "fd_limits", pid, "of 1024 file descriptors open", f"files under {spool}/", noise=noise)
    assert f["data"]["open"] >= 1020
    # the service's own log was found (it holds it open) and its errors surface as a finding about it
    errs = [x for x in rep["findings"] if x["rule"] == "log_errors" and x["data"].get("pid") == pid]
    assert errs and "Too many open files" in errs[0]["title"] and errs[0]["scope"] == "target"


# -- helpers -----------------------------------------------------------------------------------------------------

def _busy(pid: int, timeout: float = 20.0) -> None:
    """Until the main thread has used CPU for a while (the blocking handler runs)."""
    def cpu() -> float:
        with open(f"/proc/{pid}/stat") as fh:
            f = fh.read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    start = cpu()
    _wait_for(lambda: cpu() - start >= 0.3, f"process {pid} to run its handler", timeout)


def _holds(pid: int) -> bool:
    return any(line.split()[4] == str(pid) for line in Path("/proc/locks").read_text().splitlines()
               if len(line.split()) > 5 and "->" not in line)


def _wait_for(cond, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _bundle_member(snap: dict, rel: str) -> bytes:
    import tarfile

    import zstandard
    with open(snap["bundle"], "rb") as fh:
        with tarfile.open(fileobj=zstandard.ZstdDecompressor().stream_reader(fh), mode="r|") as tar:
            for m in tar:
                if m.name.endswith("/" + rel):
                    return tar.extractfile(m).read()
    raise AssertionError(f"no {rel} in the bundle")


def _threads_doc(snap: dict, pid: int) -> dict:
    return json.loads(_bundle_member(snap, f"collectors/threads/{pid}/threads.json"))
