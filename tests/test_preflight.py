"""agent/preflight.py against real processes at real limits: a cgroup's pids.max (nested: the
tightest level binds), RLIMIT_NOFILE and RLIMIT_NPROC set with prlimit, a cgroup memory limit.
Each check records its figures (limit, where, in use, room, need, margin) and says in words why
a technique must not run; with room, the same techniques pass."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import dumptargets as dt
from agent import preflight
from tests.helpers.cgroups import Nested, available

THREADS = """
import os, sys, threading, time
for i in range(4):
    threading.Thread(target=time.sleep, args=(3600,), name=f"gh-{i}", daemon=True).start()
if len(sys.argv) > 1:
    hold = bytearray(int(sys.argv[1]) << 20)      # touched: charged to the cgroup
    for i in range(0, len(hold), 4096):
        hold[i] = 1
print("READY", os.getpid(), flush=True)
time.sleep(3600)
"""


def _join(cgroup_procs: str):
    """preexec: the child moves itself into the cgroup before it runs (its memory is charged there)."""
    def run() -> None:
        with open(cgroup_procs, "w") as fh:
            fh.write(str(os.getpid()))
    return run


def check_of(v: preflight.Verdict, limit: str) -> dict:
    return next(c for c in v.checks if c["limit"] == limit)


@pytest.mark.skipif(not available("pids"), reason="needs root and the pids controller")
def test_pids_limit_of_a_nested_cgroup_blocks_thread_creating_techniques():
    with Nested("pids") as n:
        t = dt.Target([sys.executable, "-c", THREADS], preexec=_join(str(n.dir("pids") / "cgroup.procs")))
        try:
            cur = int(n.read("pids", -1, "pids.current"))
            assert cur == 5                                          # main + 4 threads
            n.set("pids", -1, "pids.max", 1000)
            n.set("pids", 1, "pids.max", cur)                       # the slice binds, at its limit
            v = preflight.check(t.pid, "jvm_attach")
            assert not v.ok
            c = check_of(v, "cgroup pids limit (pids.max)")
            assert c["where"] == f"cgroup pids:{n.path('pids', 1)}"
            assert (c["max"], c["in_use"], c["room"], c["need"], c["ok"]) == (cur, cur, 0, 1, False)
            assert v.figures["tightest"]["pids"]["room"] == 0 and v.figures["target"]["threads"] == cur
            assert v.reason().startswith("jvm_attach skipped: cgroup pids:")
            assert "at its cgroup pids limit" in v.reason() and "Attach Listener" in v.reason()
            assert not preflight.check(t.pid, "node_inspector").ok
            assert preflight.check(t.pid, "jvm_attach", threads=0, fds=1).ok     # a running listener: no thread
            n.set("pids", 1, "pids.max", cur + 2)                   # room 2 < need 1 + margin 2: near
            near = preflight.check(t.pid, "jvm_attach")
            assert not near.ok and " near its cgroup pids limit" in near.reason()
            n.set("pids", 1, "pids.max", cur + 50)
            ok = preflight.check(t.pid, "jvm_attach")
            assert ok.ok and ok.reason() == "" and ok.to_json()["verdict"] == "ok"
            assert {c["limit"] for c in ok.checks} >= {"cgroup pids limit (pids.max)", "kernel.threads-max",
                                                       "kernel.pid_max", "RLIMIT_NOFILE (soft)", "fs.file-max"}
            assert t.alive()
        finally:
            t.stop()


def test_rlimit_nofile_blocks_the_node_inspector_but_not_a_ptrace_dump(tmp_path):
    t = dt.Target([sys.executable, "-c", THREADS])
    try:
        n = len(os.listdir(f"/proc/{t.pid}/fd"))
        subprocess.run(["prlimit", f"--pid={t.pid}", f"--nofile={n + 3}:"], check=True)      # the soft limit
        v = preflight.check(t.pid, "node_inspector")
        c = check_of(v, "RLIMIT_NOFILE (soft)")
        assert (c["max"], c["in_use"], c["room"], c["need"], c["ok"]) == (n + 3, n, 3, 7, False)
        assert "process %d is near its RLIMIT_NOFILE (soft)" % t.pid in v.reason()
        assert "Node aborts" in v.reason()
        assert not preflight.check(t.pid, "go_pprof").ok             # 1 + margin 4 > 3
        subprocess.run(["prlimit", f"--pid={t.pid}", f"--nofile={n + 500}:"], check=True)
        assert check_of(preflight.check(t.pid, "node_inspector"), "RLIMIT_NOFILE (soft)")["ok"]
        assert t.alive()
    finally:
        t.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a process as another uid")
def test_rlimit_nproc_counts_the_uid_s_threads_and_is_not_enforced_for_root():
    uid = 54321 + os.getpid() % 1000                                  # a uid nothing else on the host uses
    # the limit is set on the way in (prlimit, then setpriv, exec): lowering one's own limits needs no privilege
    t = dt.Target(["prlimit", "--nproc=7:7", "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                   sys.executable, "-c", THREADS])
    try:
        pid = int(t.ready.split()[1])
        c = check_of(preflight.check(pid, "jvm_attach"), "RLIMIT_NPROC")
        assert (c["max"], c["in_use"], c["enforced"], c["ok"]) == (7, 5, True, False)   # room 2 < 1 + 2
        assert c["where"] == f"uid {uid}'s threads"
        root = dt.Target(["prlimit", "--nproc=1:1", sys.executable, "-c", THREADS])
        try:
            rc = check_of(preflight.check(int(root.ready.split()[1]), "jvm_attach"), "RLIMIT_NPROC")
            assert rc["enforced"] is False and rc["ok"] and "uid 0" in rc["note"]
        finally:
            root.stop()
    finally:
        t.stop()


@pytest.mark.skipif(not available("memory"), reason="needs root and the memory controller")
def test_memory_limit_blocks_heap_dumps_near_it():
    with Nested("memory") as n:
        t = dt.Target([sys.executable, "-c", THREADS, "24"], preexec=_join(str(n.dir("memory") / "cgroup.procs")))
        try:
            used = int(n.read("memory", -1, "memory.usage_in_bytes"))
            assert used >= 24 << 20
            n.set("memory", 1, "memory.limit_in_bytes", used + (40 << 20))
            v = preflight.check(t.pid, "jvm_heap_dump")
            c = check_of(v, "cgroup memory limit")
            assert c["where"] == f"cgroup memory:{n.path('memory', 1)}" and not c["ok"]
            assert c["need"] == 64 << 20 and 0 < c["room"] < 64 << 20
            assert "MiB" in v.reason() and "near its cgroup memory limit" in v.reason()
            assert check_of(preflight.check(t.pid, "node_heap_snapshot", memory=2 << 20), "cgroup memory limit")["ok"]
            n.set("memory", 1, "memory.limit_in_bytes", used + (512 << 20))
            assert check_of(preflight.check(t.pid, "jvm_heap_dump"), "cgroup memory limit")["ok"]
            assert t.alive()
        finally:
            t.stop()
