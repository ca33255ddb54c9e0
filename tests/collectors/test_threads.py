"""threads against real targets of every runtime: the dump holds the expected thread and function
names, the machine-readable form parses, the pause is recorded, and every target is still running
(not stopped, still ticking) afterwards. Also the refusals that keep targets alive: a JVM without a
SIGQUIT handler and no attach socket, a non-JVM presented as a JVM, a non-Node process that would
die of SIGUSR1, a missing tool, a process with a thread in D state."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

import dumptargets as dt
from agent.redact import MASK


def names(doc):
    return {t["name"] for t in doc["threads"]}


def functions(doc, thread=None):
    return {f["function"] for t in doc["threads"] if thread is None or t["name"] == thread for f in t["frames"]}


def dump(run_collector, target, **kw):
    r = run_collector("threads", target=dt.agent_target(target.pid), **kw)
    doc = json.loads((r.out / "threads.json").read_text()) if (r.out / "threads.json").exists() else None
    return r, doc


# -- CPython -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def py(tmp_path_factory):
    t = dt.python_target(tmp_path_factory.mktemp("py"))
    yield t
    t.stop()


def test_python_deadlock_named_threads_and_native_lock_frames(run_collector, py):
    r, doc = dump(run_collector, py)
    assert r.status == "ok", r.reason
    assert doc["runtime"] == "python" and doc["tool"] == "py-spy dump --native"
    assert {"MainThread", "gh-deadlock-a", "gh-deadlock-b", "gh-worker", "gh-sleeper", "gh-ticker"} <= names(doc)
    a = next(t for t in doc["threads"] if t["name"] == "gh-deadlock-a")
    fns = [f["function"] for f in a["frames"]]
    assert "deadlock_a" in fns and any("acquire_lock" in f for f in fns)    # blocked in Lock.acquire
    py_frame = next(f for f in a["frames"] if f["function"] == "deadlock_a")
    assert py_frame["file"].endswith("gh_target.py") and py_frame["line"] > 0 and not py_frame.get("native")
    assert a["os_state"] == "S" and a["tid"] in py.thread_states()
    assert "deadlock_b" in functions(doc, "gh-deadlock-b")
    text = (r.out / "threads.txt").read_text()
    assert '"gh-deadlock-a"' in text and "deadlock_a (gh_target.py:" in text
    assert r.pause["state_after"] not in ("T", "t") and r.pause["measured"]["upper_bound_s"] > 0
    py.assert_running()


def test_python_in_its_own_namespaces_is_dumped_from_the_host(run_collector, tmp_path):
    t = dt.python_target(tmp_path, prefix=["unshare", "--pid", "--mount", "--net", "--fork", "--mount-proc"])
    try:
        pid = int(subprocess.run(["pgrep", "-P", str(t.popen.pid)], capture_output=True, text=True).stdout.split()[0])
        t.pid = pid
        r, doc = dump(run_collector, t)
        assert r.status == "ok", r.reason
        assert doc["tool"] == "py-spy dump"            # no --native across mount namespaces
        assert {"gh-deadlock-a", "gh-deadlock-b"} <= names(doc) and "deadlock_a" in functions(doc)
        t.assert_running()
    finally:
        t.stop()


D_STATE = textwrap.dedent("""
    import os, sys, threading, time
    def worker():
        while True:
            time.sleep(0.01)
    threading.Thread(target=worker, name="gh-worker", daemon=True).start()
    print("READY", os.getpid(), flush=True)
    os.posix_spawn("/bin/true", ["true"], os.environ,
                   file_actions=[(os.POSIX_SPAWN_OPEN, 0, sys.argv[1], os.O_RDONLY, 0)])
    threading.Event().wait()
""")


def test_a_process_with_a_thread_in_d_state_is_not_ptrace_stopped(run_collector, tmp_path):
    fifo = tmp_path / "f.fifo"
    os.mkfifo(fifo)
    t = dt.Target([sys.executable, "-c", D_STATE, fifo])
    try:
        deadline = time.monotonic() + 10
        while t.thread_states().get(t.pid) != "D":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        r, doc = dump(run_collector, t)
        assert r.status == "partial" and "uninterruptible" in r.reason and "--nonblocking" in r.reason
        assert doc["tool"].endswith("--nonblocking") and "gh-worker" in names(doc)
        assert [c for c in r.commands if "--nonblocking" in c["argv"]]
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.assert_running()
    finally:
        t.stop()


def test_a_missing_tool_skips_the_target_with_the_reason(run_collector, py):
    r, doc = dump(run_collector, py, options={"py_spy": "/nonexistent/py-spy"})
    assert r.status == "skipped" and "py-spy not found" in r.reason and doc is None
    py.assert_running()


# -- JVM ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def jvm(tmp_path_factory):
    t = dt.jvm_target(tmp_path_factory.mktemp("jvm"))
    yield t
    t.stop()


def test_jvm_thread_print_names_frames_locks_and_the_deadlock(run_collector, jvm):
    r, doc = dump(run_collector, jvm)
    assert r.status == "ok", r.reason
    assert doc["runtime"] == "jvm" and doc["tool"] == "jcmd Thread.print"
    assert {"main", "gh-deadlock-a", "gh-deadlock-b", "gh-lock-holder", "gh-worker", "gh-ticker"} <= names(doc)
    a = next(t for t in doc["threads"] if t["name"] == "gh-deadlock-a")
    b = next(t for t in doc["threads"] if t["name"] == "gh-deadlock-b")
    assert a["state"].startswith("BLOCKED") and a["frames"][0]["function"].startswith("GhTarget.lambda$main$")
    assert a["frames"][0]["file"] == "GhTarget.java" and a["frames"][0]["line"] > 0
    assert a["waiting_on"] in b["holds"] and b["waiting_on"] in a["holds"]      # the wait-for cycle
    assert a["tid"] in jvm.thread_states()                                      # nid = the OS thread
    assert doc["deadlocks"] and set(doc["deadlocks"][0]["threads"]) == {"gh-deadlock-a", "gh-deadlock-b"}
    assert "Found one Java-level deadlock" in (r.out / "threads.txt").read_text()
    m = r.pause["measured"]
    assert m["safepoints"] >= 1 and 0 <= m["stopped_s"] < m["wall_s"]          # measured by the JVM itself
    jvm.assert_running()


def test_jvm_lock_owners_with_l(run_collector, jvm):
    r, doc = dump(run_collector, jvm, options={"jvm_locks": True})
    assert r.status == "ok" and doc["tool"] == "jcmd Thread.print -l"
    holder = next(t for t in doc["threads"] if t["name"] == "gh-lock-holder")
    assert any(lk["what"] == "owns" and "ReentrantLock" in lk["class"] for lk in holder["locks"])
    jvm.assert_running()


def test_a_jvm_without_sigquit_handler_is_dumped_only_through_its_socket(run_collector, tmp_path):
    """-Xrs: SIGQUIT would kill it. With its attach socket: dumped without any signal; without: refused."""
    t = dt.jvm_target(tmp_path, "-Xrs", name="xrs")
    try:
        sock = f"/proc/{t.pid}/root/tmp/.java_pid{t.pid}"
        deadline = time.monotonic() + 10
        while not os.path.exists(sock):          # JDK 17 starts the listener at startup under -Xrs
            assert time.monotonic() < deadline, "no attach socket"
            time.sleep(0.02)
        r, doc = dump(run_collector, t)
        assert r.status == "ok", r.reason
        assert "attach socket" in r.notes["jvm_attach"] and "gh-deadlock-a" in names(doc)
        assert not [c for c in r.commands if "jcmd" in c["argv"][0]]           # jcmd never ran
        os.unlink(sock)                          # a tmp cleaner deleted it: jcmd would now SIGQUIT (fatal)
        r, doc = dump(run_collector, t)
        assert r.status == "skipped" and "no SIGQUIT handler" in r.reason
        t.assert_running()
    finally:
        t.stop()


def test_a_process_that_is_not_a_jvm_is_never_attached(run_collector, tmp_path):
    """jcmd SIGQUITs any PID it is given (danger 1): a sleep presented as a JVM stays alive."""
    p = subprocess.Popen(["sleep", "60"], restore_signals=True)
    try:
        r = run_collector("threads", target=dt.agent_target(p.pid, runtime="jvm"))
        assert r.status == "skipped" and "libjvm.so is not mapped" in r.reason
        assert not r.commands
        assert p.poll() is None
    finally:
        p.kill()
        p.wait()


def test_jcmd_missing_skips(run_collector, jvm):
    r, _ = dump(run_collector, jvm, options={"jcmd": "/nonexistent/jcmd"})
    assert r.status == "skipped" and "jcmd not found" in r.reason
    jvm.assert_running()


# -- Node.js -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def node(tmp_path_factory):
    env = {**os.environ, "GH_SECRET_TOKEN": "node-s3cret-value"}
    t = dt.node_target(tmp_path_factory.mktemp("node"), "--spin", env=env)
    yield t
    t.stop()


def test_node_report_js_stack_of_a_stuck_loop_workers_and_the_inspector_closed(run_collector, node, tmp_path):
    assert not dt.port_open(9229)
    r, doc = dump(run_collector, node)
    assert r.status == "ok", r.reason
    assert doc["runtime"] == "node" and "getReport" in doc["tool"]
    main = next(t for t in doc["threads"] if t["name"] == "main")
    assert main["state"] == "running" and main["frames"][0]["function"] == "spinForever"
    assert main["frames"][0]["file"].endswith("gh_target.js")
    # the loop is stuck: a 0 ms timer scheduled through the inspector never fired while we waited
    loop = doc["event_loop"]
    assert loop["timed_out"] is True and loop["lag_ms_at_least"] >= 1000 and "lag_ms" not in loop
    assert loop["main_thread_frames"][0].startswith("spinForever (gh_target.js:")
    assert any("gh-worker" in n for n in names(doc))
    report = json.loads((r.out / "node-report.json").read_text())
    assert report["environmentVariables"]["GH_SECRET_TOKEN"] == MASK
    assert b"node-s3cret-value" not in (r.out / "node-report.json").read_bytes()
    assert r.notes["redaction"]["count"] >= 1
    assert r.notes["inspector"]["opened_by"] == "SIGUSR1" and r.notes["inspector"]["inspector_closed"] is True
    assert not dt.port_open(9229)                               # no code-execution port left open
    assert not list((tmp_path / "staging" / ".ledger").glob("*inspector*"))
    assert r.pause["measured"]["upper_bound_s"] > 0
    node.assert_running()


def test_node_inspector_is_reached_directly_whatever_proxy_the_environment_names(run_collector, node, monkeypatch):
    """An SRE's shell often exports http_proxy: the inspector is local, never asked of a proxy."""
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")        # discard port: nothing answers there
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    r, doc = dump(run_collector, node)
    assert r.status == "ok", r.reason
    assert r.notes["inspector"]["inspector_closed"] is True and not dt.port_open(9229)
    node.assert_running()


def test_node_in_another_network_namespace(run_collector, tmp_path):
    t = dt.node_target(tmp_path, prefix=["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$0" "$@"'],
                       name="netns")
    try:
        r, doc = dump(run_collector, t)
        assert r.status == "ok", r.reason
        assert r.notes["inspector"]["netns_entered"] is True and r.notes["inspector"]["inspector_closed"] is True
        assert r.notes["inspector"]["socket_in_target_netns"] is True     # the kernel's word (SIOCGSKNS)
        assert doc["threads"][0]["name"] == "main"
        assert doc["event_loop"]["lag_ms"] < 1000 and not doc["event_loop"].get("timed_out")   # an idle loop
        assert subprocess.run(["nsenter", "-t", str(t.pid), "-n", sys.executable, "-c",
                               "import socket,sys; s=socket.socket(); s.settimeout(1); "
                               "sys.exit(s.connect_ex(('127.0.0.1', 9229)) == 0)"]).returncode == 0
        t.assert_running()
    finally:
        t.stop()


def test_a_process_without_a_sigusr1_handler_is_never_signalled(run_collector, py):
    """CPython dies of SIGUSR1 (danger 10): presented as Node, it is refused, not signalled."""
    r = run_collector("threads", target=dt.agent_target(py.pid, runtime="node"))
    assert r.status == "skipped" and "SIGUSR1" in r.reason
    py.assert_running()


# -- native ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def c(tmp_path_factory):
    t = dt.c_target(tmp_path_factory.mktemp("c"))
    yield t
    t.stop()


def test_c_eu_stack_with_thread_names_from_proc(run_collector, c):
    r, doc = dump(run_collector, c)
    assert r.status == "ok", r.reason
    assert doc["runtime"] == "native" and doc["tool"] == "eu-stack"
    assert {"gh-deadlock-a", "gh-deadlock-b", "gh-worker", "gh-ticker"} <= names(doc)
    fa = functions(doc, "gh-deadlock-a")
    assert "deadlock_a" in fa and any("lock_wait" in f or "mutex_lock" in f for f in fa)
    frame = next(f for t in doc["threads"] for f in t["frames"] if f["function"] == "deadlock_a")
    assert frame["file"].endswith("gh_target.c") and frame["line"] > 0
    c.assert_running()


def test_c_gdb_with_source_lines(run_collector, c):
    r, doc = dump(run_collector, c, options={"native_tool": "gdb"})
    assert r.status == "ok", r.reason
    assert doc["tool"] == "gdb thread apply all bt"
    assert "deadlock_b" in functions(doc, "gh-deadlock-b") and "crunch_forever" in functions(doc, "gh-worker")
    argv = r.commands[0]["argv"]
    assert "set debuginfod enabled off" in argv and f"set sysroot /proc/{c.pid}/root" in argv
    c.assert_running()


# -- Go ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def go(tmp_path_factory):
    t = dt.go_target(tmp_path_factory.mktemp("go"), "-pprof", "127.0.0.1:16060")
    if t is None:
        pytest.skip("no Go toolchain (Debian: golang-go)")
    yield t
    t.stop()


def test_go_goroutines_from_pprof(run_collector, go):
    r, doc = dump(run_collector, go, options={"go_pprof": "127.0.0.1:16060"})
    assert r.status == "ok", r.reason
    assert doc["tool"].startswith("pprof goroutine?debug=2")
    fns = functions(doc)
    assert {"main.deadlockA", "main.deadlockB", "main.waitForever", "main.crunchForever"} <= fns
    assert any(t["state"] == "semacquire" for t in doc["threads"])
    go.assert_running()


def test_go_pprof_is_found_among_the_process_listening_sockets(run_collector, go):
    """No address configured: the port the process listens on that serves /debug/pprof/ is found and used."""
    r, doc = dump(run_collector, go)
    assert r.status == "ok", r.reason
    assert doc["tool"] == "pprof goroutine?debug=2 at 127.0.0.1:16060 (discovered among the process's listening " \
                          "sockets)"
    assert doc["pprof"] == {"address": "127.0.0.1:16060", "discovered": True}
    assert {"main.deadlockA", "main.deadlockB", "main.waitForever"} <= functions(doc)
    go.assert_running()


def test_go_goroutines_from_delve_which_must_not_kill(run_collector, go):
    """Delve's exit prompt defaults to killing the process (danger 8): answered n, the target lives. Its one command
    groups the goroutines by location: examples of each group, weighted by the group's size."""
    if not shutil.which("dlv"):
        pytest.skip("no Delve (Debian: delve)")
    r, doc = dump(run_collector, go, options={"go_pprof_discover": False})
    assert r.status == "ok", r.reason
    assert doc["tool"] == "dlv attach: goroutines -group userloc -t 30"
    assert {"main.deadlockA", "main.waitForever"} <= functions(doc)
    assert doc["total_threads"] == sum(t.get("weight", 1) for t in doc["threads"]) >= len(doc["threads"])
    assert all(re.fullmatch(r"[a-zA-Z ().]*", t["state"]) for t in doc["threads"]), "a volatile wait-since suffix"
    go.assert_running()


def test_a_process_of_another_user_is_dumped(run_collector):
    import tempfile
    from pathlib import Path
    d = Path(tempfile.mkdtemp(prefix="gh-nobody-"))        # /tmp: reachable by nobody, unlike pytest's tmp
    d.chmod(0o777)
    t = dt.python_target(d, prefix=["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"])
    try:
        assert dt.agent_target(t.pid).uid != 0
        r, doc = dump(run_collector, t)
        assert r.status == "ok", r.reason
        assert {"gh-deadlock-a", "gh-deadlock-b"} <= names(doc)
        t.assert_running()
    finally:
        t.stop()
        shutil.rmtree(d, ignore_errors=True)


def test_an_inspector_the_owner_opened_is_used_and_left_open(run_collector, tmp_path):
    t = dt.node_target(tmp_path, env={**os.environ, "NODE_OPTIONS": "--inspect=127.0.0.1:19229"}, name="insp")
    try:
        assert dt.port_open(19229)
        r, doc = dump(run_collector, t)
        assert r.status == "ok", r.reason
        assert r.notes["inspector"]["inspector_was_open"] is True and "opened_by" not in r.notes["inspector"]
        assert dt.port_open(19229)                   # not ours to close
        t.assert_running()
    finally:
        t.stop()
