"""Targets at their limits, end to end with the real CLI (issue 20): goldenhour never tips them
over, and the report says which limit they hit.

- A JVM held at its cgroup's pids limit (v1 pids controller, the limit on the service's parent
  cgroup), captured with the standard and the full profile: jcmd's attach would make it start
  its Attach Listener thread, which it cannot, and HotSpot then exits; so the thread dump and
  the heap dump are skipped with the reason and the figures in the manifest, the threads
  collector falls back to native stacks by ptrace, and the JVM is alive and ticking afterwards,
  with its kernel stacks, its hsperfdata counters and its cgroups in the bundle.
- A Node.js target at its descriptor limit (RLIMIT_NOFILE lowered with prlimit to what it has
  open): SIGUSR1 would make it abort (measured: Node 20 asserts when the inspector gets no
  descriptors), so the inspector is not opened, the same way.
- Real services in nested cgroups: a busy loop under a 0.1-CPU quota, a thread pool at its
  pids limit whose log says it cannot start threads, a process holding most of its memory
  limit while it reads a file (the limit is hit again and again), a JVM in back-to-back full
  GCs: in each, the report's first finding names the limit and the target.

The first-finding captures leave out the host's kernel log (``--skip dmesg``): on this shared
test host it holds other tests' OOM kills from minutes before, which rank by their time.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import dumptargets as dt
from agent.report.loader import load_archive
from tests.helpers.cgroups import Nested, available

pytestmark = pytest.mark.slow


def _join(cgroup_procs: Path):
    """preexec: the child moves itself into the cgroup before it runs."""
    def run() -> None:
        cgroup_procs.write_text(str(os.getpid()))
    return run


def capture(gh, *args: str) -> tuple[dict, Path]:
    cp = gh("snapshot", "--incident", "INC-LIMITS", "--json", "--probe-seconds", "1", *args)
    assert cp.returncode == 0, cp.stderr[-3000:]
    out = json.loads(cp.stdout)
    return json.loads(Path(out["manifest"]).read_text()), Path(out["bundle"])


def entry(manifest: dict, key: str) -> dict:
    return next(c for c in manifest["collectors"] if c["key"] == key)


def first_finding(gh, bundle: Path) -> dict:
    cp = gh("report", str(bundle), "--json")
    assert cp.returncode == 0, cp.stderr[-2000:]
    fs = json.loads(cp.stdout)["findings"]
    assert fs, "no findings"
    return fs[0]


# -- a JVM at its pids limit -----------------------------------------------------------------------

@pytest.mark.skipif(not available("pids"), reason="needs root and the v1 pids controller")
def test_a_jvm_at_its_pids_limit_survives_standard_and_full_captures(gh, tmp_path):
    with Nested("pids") as n:
        jvm = dt.jvm_target(tmp_path, preexec=_join(n.dir("pids") / "cgroup.procs"))
        try:
            tasks = int(n.read("pids", -1, "pids.current"))
            n.set("pids", 1, "pids.max", tasks)                     # the slice, one level up, at its limit
            slice_key = f"pids:{n.path('pids', 1)}"
            for profile in ("standard", "full"):
                m, bundle = capture(gh, "--pid", str(jvm.pid), "--profile", profile)
                jvm.assert_running()                                 # alive, not stopped, still ticking
                assert int(n.read("pids", -1, "pids.current")) == tasks    # no thread was added
                th = entry(m, f"threads/{jvm.pid}")
                assert th["status"] == "partial", th
                skipped = th["notes"]["skipped_techniques"]
                assert [s["technique"] for s in skipped] == ["jvm_attach"]
                assert slice_key in skipped[0]["reason"] and "pids limit (pids.max)" in skipped[0]["reason"]
                assert skipped[0]["fallback"] == "native stacks by ptrace (eu-stack)"
                assert "jcmd Thread.print was not tried" in th["reason"]
                assert not any("jcmd" in " ".join(c["argv"]) for c in th.get("commands") or [])
                pf = th["notes"]["preflight"][0]
                assert pf["verdict"] == "skipped" and any(c["where"] == f"cgroup {slice_key}" and not c["ok"]
                                                           for c in pf["checks"])
                b = load_archive(bundle)
                doc = b.json(f"collectors/threads/{jvm.pid}/threads.json")
                assert doc["tool"] == "eu-stack" and doc["runtime"] == "jvm" and len(doc["threads"]) == tasks
                assert doc["skipped_technique"]["technique"] == "jvm_attach"
                figures = b.json(f"collectors/threads/{jvm.pid}/preflight.json")[0]
                assert figures["figures"]["tightest"]["pids"] == {"cgroup": slice_key, "max": tasks,
                                                                  "current": tasks, "room": 0}
                proc = b.json(f"collectors/process/{jvm.pid}/process.json")
                assert proc["num_threads"] == tasks and all(t["kernel_stack"] for t in proc["threads"])
                js = b.json(f"collectors/jvmstat/{jvm.pid}/jvmstat.json")
                assert js["threads"]["live"] >= 6 and js["window"]["seconds"] > 0
                cgs = b.json("collectors/cgroups/cgroups.json")
                t = next(x for x in cgs["targets"] if x["pid"] == jvm.pid)
                assert t["tightest"]["pids"]["cgroup"] == slice_key and t["tightest"]["pids"]["room"] == 0
                if profile == "full":
                    heap = entry(m, f"heap/{jvm.pid}")
                    assert heap["status"] == "skipped" and heap["reason"].startswith("jvm_heap_dump skipped: ")
                    assert heap["notes"]["skipped_techniques"][0]["technique"] == "jvm_heap_dump"
                    assert "hsperfdata" in heap["notes"]["skipped_techniques"][0]["fallback"]
                    assert not b.files(f"collectors/heap/{jvm.pid}/*.hprof")
            _, bundle = capture(gh, "--pid", str(jvm.pid), "--profile", "quick", "--skip", "dmesg")
            f = first_finding(gh, bundle)
            assert f["rule"] == "cgroup_limits" and f["severity"] == "critical", f
            assert f["title"].startswith(f"java (pid {jvm.pid}) at the pids limit of cgroup {n.path('pids', 1)}")
            jvm.assert_running()
        finally:
            jvm.stop()


# -- a Node.js target at its descriptor limit ------------------------------------------------------------

def test_a_node_at_its_fd_limit_survives_standard_and_full_captures(gh, tmp_path):
    node = dt.node_target(tmp_path)
    try:
        fds = len(os.listdir(f"/proc/{node.pid}/fd"))
        subprocess.run(["prlimit", f"--pid={node.pid}", f"--nofile={fds}:{fds}"], check=True)
        for profile in ("standard", "full"):
            m, bundle = capture(gh, "--pid", str(node.pid), "--profile", profile)
            node.assert_running()
            assert len(os.listdir(f"/proc/{node.pid}/fd")) == fds and not dt.port_open(9229)
            th = entry(m, f"threads/{node.pid}")
            assert th["status"] == "partial", th
            s = th["notes"]["skipped_techniques"][0]
            assert s["technique"] == "node_inspector" and "RLIMIT_NOFILE (soft)" in s["reason"]
            assert f"{fds} of {fds} descriptors in use" in s["reason"] and "Node aborts" in s["reason"]
            assert "the Node inspector (SIGUSR1) was not tried" in th["reason"]
            assert "inspector" not in th["notes"]                  # no SIGUSR1, no inspector session
            b = load_archive(bundle)
            doc = b.json(f"collectors/threads/{node.pid}/threads.json")
            assert doc["tool"] == "eu-stack" and doc["runtime"] == "node" and doc["threads"]
            pf = b.json(f"collectors/threads/{node.pid}/preflight.json")[0]
            fd_check = next(c for c in pf["checks"] if c["limit"] == "RLIMIT_NOFILE (soft)")
            assert (fd_check["max"], fd_check["in_use"], fd_check["room"], fd_check["ok"]) == (fds, fds, 0, False)
            if profile == "full":
                heap = entry(m, f"heap/{node.pid}")
                assert heap["status"] == "skipped" and "RLIMIT_NOFILE" in heap["reason"]
                assert heap["notes"]["skipped_techniques"][0]["technique"] == "node_inspector"
        node.assert_running()
    finally:
        node.stop()


# -- services at their limits: the report's first finding ------------------------------------------------

@pytest.mark.skipif(not available("cpu", "cpuacct"), reason="needs root and the v1 cpu and cpuacct controllers")
def test_cpu_quota_first_finding(gh):
    with Nested("cpu", "cpuacct") as n:
        p = subprocess.Popen([sys.executable, "-c", "while True: pass"],
                             preexec_fn=lambda: [(n.dir(c) / "cgroup.procs").write_text(str(os.getpid()))
                                                 for c in ("cpu", "cpuacct")])
        try:
            n.set("cpu", 1, "cpu.cfs_quota_us", 10000)               # the slice: 0.1 CPU
            _, bundle = capture(gh, "--pid", str(p.pid), "--profile", "quick", "--skip", "dmesg")
            f = first_finding(gh, bundle)
            assert f["rule"] == "cgroup_limits" and f["severity"] == "critical", f
            assert f["title"].startswith(f"python3 (pid {p.pid}) CPU-throttled by cgroup {n.path('cpu', 1)} (cpu)") \
                or f["title"].startswith(f"python (pid {p.pid}) CPU-throttled by cgroup {n.path('cpu', 1)} (cpu)")
            assert "at a quota of 0.10 CPUs" in f["title"] and f["data"]["throttled_share"] >= 0.5
            assert f["data"]["cgroup"] == f"cpu:{n.path('cpu', 1)}" and 0 < f["data"]["usage_cores"] <= 0.2
        finally:
            p.kill()
            p.wait()


POOL = textwrap.dedent("""
    import os, sys, threading, time
    log = open(sys.argv[1], "a", buffering=1)
    for i in range(6):
        threading.Thread(target=time.sleep, args=(3600,), name=f"pool-{i}", daemon=True).start()
    print("READY", os.getpid(), flush=True)
    while True:                              # the pool tries to grow, as a busy server's would
        try:
            threading.Thread(target=time.sleep, args=(0.01,), daemon=True).start()
        except RuntimeError as exc:
            log.write(time.strftime("%Y-%m-%dT%H:%M:%S") + f" ERROR pool: cannot grow: RuntimeError: {exc}\\n")
        time.sleep(0.1)
""")


@pytest.mark.skipif(not available("pids"), reason="needs root and the v1 pids controller")
def test_pids_limit_first_finding_with_the_log_lines(gh, tmp_path):
    log = tmp_path / "pool.log"
    with Nested("pids") as n:
        t = dt.Target([sys.executable, "-c", POOL, log], preexec=_join(n.dir("pids") / "cgroup.procs"))
        try:
            n.set("pids", 0, "pids.max", 7)          # the top level binds: the main thread and the pool of 6
            deadline = time.monotonic() + 20
            while "can't start new thread" not in (log.read_text() if log.exists() else ""):
                assert time.monotonic() < deadline, "the pool never hit the limit"
                time.sleep(0.05)
            _, bundle = capture(gh, "--pid", str(t.pid), "--profile", "quick", "--skip", "dmesg", "--log", str(log))
            f = first_finding(gh, bundle)
            assert f["rule"] == "cgroup_limits" and f["severity"] == "critical", f
            assert f["title"].startswith(f"python3 (pid {t.pid}) at the pids limit of cgroup {n.path('pids', 0)}") \
                or f["title"].startswith(f"python (pid {t.pid}) at the pids limit of cgroup {n.path('pids', 0)}")
            assert f["data"]["log_failures"] >= 1 and "thread-creation failure" in f["explanation"]
            assert any("can't start new thread" in e.get("excerpt", "") and e["file"].startswith("collectors/logs/")
                       for e in f["evidence"])
            assert t.alive()
        finally:
            t.stop()


HOG = textwrap.dedent("""
    import os, sys
    hold = bytearray(int(sys.argv[1]) << 20)
    for i in range(0, len(hold), 4096):
        hold[i] = 1                          # touched: anonymous memory charged to the cgroup
    print("READY", os.getpid(), flush=True)
    while True:                              # and a file read again and again: its page cache does not fit
        with open(sys.argv[2], "rb", buffering=0) as fh:
            while fh.read(1 << 20):
                pass
""")


@pytest.mark.skipif(not available("memory"), reason="needs root and the v1 memory controller")
def test_memory_limit_first_finding(gh, tmp_path):
    data = tmp_path / "data.bin"
    with open(data, "wb") as fh:
        fh.write(os.urandom(24 << 20))
        fh.flush()
        os.fsync(fh.fileno())
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)   # its pages get charged to the reader
    with Nested("memory") as n:
        n.set("memory", 1, "memory.limit_in_bytes", 64 << 20)
        t = dt.Target([sys.executable, "-c", HOG, "46", data], preexec=_join(n.dir("memory") / "cgroup.procs"))
        try:
            _, bundle = capture(gh, "--pid", str(t.pid), "--profile", "quick", "--skip", "dmesg")
            f = first_finding(gh, bundle)
            assert f["rule"] == "cgroup_limits" and f["severity"] == "critical", f
            assert f["title"].startswith(f"python3 (pid {t.pid}) at the memory limit of cgroup "
                                         f"{n.path('memory', 1)} (memory)") or \
                f["title"].startswith(f"python (pid {t.pid}) at the memory limit of cgroup {n.path('memory', 1)}")
            assert f["data"]["limit_hits_in_window"] > 0 and f["data"]["ratio"] >= 0.8
            assert t.alive()
        finally:
            t.stop()


@pytest.mark.skipif(not available("memory"), reason="needs root and the v1 memory controller")
def test_jvm_in_back_to_back_full_gcs_first_finding(gh, tmp_path):
    with Nested("memory") as n:
        n.set("memory", 1, "memory.limit_in_bytes", 1 << 30)
        jvm = dt.jvm_target(tmp_path, heap_mb=30, extra=("--churn-mb", "8"),
                            preexec=_join(n.dir("memory") / "cgroup.procs"))
        try:
            _, bundle = capture(gh, "--pid", str(jvm.pid), "--profile", "quick", "--skip", "dmesg")
            f = first_finding(gh, bundle)
            assert f["rule"] == "jvm_gc" and f["severity"] == "critical", f
            assert f["title"].startswith(f"java (pid {jvm.pid}) spends ") and "in garbage collection" in f["title"]
            assert f["data"]["gc_time_share"] >= 0.5 and f["data"]["full_gcs"] >= 2
            assert f["data"]["cgroup"] == f"memory:{n.path('memory')}" and n.path("memory") in f["explanation"]
            jvm.assert_running()
        finally:
            jvm.stop()


# -- a Go service's pprof endpoint at its descriptor limit ---------------------------------------------

def test_go_pprof_is_not_asked_at_the_descriptor_limit(run_collector, tmp_path):
    """A pprof request is a connection the Go service must accept: at its RLIMIT_NOFILE it is not
    sent; Delve (ptrace, nothing asked of the target) dumps the goroutines instead."""
    import shutil
    go = dt.go_target(tmp_path, "-pprof", "127.0.0.1:16061")
    if go is None:
        pytest.skip("no Go toolchain (Debian: golang-go)")
    try:
        fds = len(os.listdir(f"/proc/{go.pid}/fd"))
        subprocess.run(["prlimit", f"--pid={go.pid}", f"--nofile={fds}:{fds}"], check=True)
        r = run_collector("threads", target=dt.agent_target(go.pid), options={"go_pprof": "127.0.0.1:16061"})
        assert r.status == "partial", r.reason
        s = r.notes["skipped_techniques"][0]
        assert s["technique"] == "go_pprof" and "RLIMIT_NOFILE (soft)" in s["reason"]
        doc = json.loads((r.out / "threads.json").read_text())
        if shutil.which("dlv"):
            assert doc["tool"] == "dlv attach: goroutines -group userloc -t 30"     # Delve's bounded, grouped listing
            assert any("main.deadlockA" in f["function"] for t in doc["threads"] for f in t["frames"])
        go.assert_running()
    finally:
        go.stop()
