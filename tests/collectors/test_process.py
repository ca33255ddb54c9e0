"""process against real targets: a Python program with named threads, descriptors near a low
RLIMIT_NOFILE and secrets on its command line and in its environment; a process parked in D
state (a vfork parent whose child blocks opening a FIFO); one in its own PID, mount and network
namespaces; and processes that exit or whose PID is taken over."""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import tarfile
import textwrap
import time

import pytest

import dumptargets as dt
from agent.redact import MASK, Redactor, sensitive_name
from tests.report import bundlemaker as bm

SECRETS = ("hunter2-cmdline", "s3cr3t-env-token", "pa55-url-password", "AKIAIOSFODNN7EXAMPLE")


@pytest.fixture(scope="module")
def secretive(tmp_path_factory):
    """A Python target with 40 extra descriptors under a soft RLIMIT_NOFILE of 48, and secrets."""
    tmp = tmp_path_factory.mktemp("process")
    env = {**os.environ, "GH_API_TOKEN": SECRETS[1], "DATABASE_URL": f"postgres://app:{SECRETS[2]}@db:5432/x",
           "HARMLESS": "visible-value", "AWS_ACCESS_KEY_ID": SECRETS[3]}
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    t = dt.Target([sys.executable, dt.TARGETS / "gh_target.py", "--ticker", tmp / "py.tick", "--heap-mb", "1",
                   "--fds", "40", "--password", SECRETS[0]], ticker=tmp / "py.tick", env=env,
                  preexec=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (48, old[1])))
    t.wait_deadlocked()
    yield t
    t.stop()


def test_process_json_has_threads_fds_limits_memory_and_findings(run_collector, secretive, tmp_path):
    r = run_collector("process", target=dt.agent_target(secretive.pid))
    assert r.status == "ok", r.reason
    p = json.loads((r.out / "process.json").read_text())
    assert p["pid"] == secretive.pid and p["runtime"] == "python" and p["comm"].startswith("python")
    assert p["start_time"] == dt.agent_target(secretive.pid).start_time
    assert p["num_threads"] == 6 and len(p["threads"]) == 6            # main, 2 deadlocked, sleeper, worker, ticker
    assert {th["tid"] for th in p["threads"]} == set(secretive.thread_states())
    assert all(th["state"] in "RSD" for th in p["threads"])
    # the two deadlocked threads wait in the kernel on a futex, with their kernel stacks
    futex = [th for th in p["threads"] if th["wchan"] and "futex" in th["wchan"]]
    assert len(futex) >= 2 and all(th["kernel_stack"] for th in futex)
    fd = p["fd"]
    assert fd["limit"] == 48 and fd["count"] >= 43 and fd["by_type"].get("device", 0) >= 40
    assert fd["ratio"] >= 0.8 and "findings" not in p       # facts here; the report's fd_limits rule judges
    found = bm.findings(tmp_path / "b", {f"collectors/process/{secretive.pid}/process.json": p})
    f = next(f for f in found if f.rule == "fd_limits")
    assert f.title.endswith(f"has {fd['count']} of 48 file descriptors open ({fd['count'] / 48:.0%} of its limit)")
    assert p["memory"]["VmRSS"] > 1_000_000 and p["smaps_rollup"]["Pss"] > 0
    assert p["limits"]["Max open files"]["soft"] == 48
    assert "SIGINT" in p["signals"]["caught"]          # CPython's KeyboardInterrupt handler
    assert p["container"]["in_container"] is False
    for name in ("status", "stat", "limits", "wchan", "stack", "smaps_rollup", "maps", "cgroup", "mountinfo",
                 "io", "sched"):
        assert (r.out / "proc" / name).exists(), name
    fds = (r.out / "fds.txt").read_text()
    assert fds.count("/dev/null") >= 40
    threads = (r.out / "threads.txt").read_text()
    assert "futex" in threads


def test_secrets_are_redacted_and_counted(run_collector, secretive):
    r = run_collector("process", target=dt.agent_target(secretive.pid))
    cmdline = (r.out / "cmdline.txt").read_text()
    environ = (r.out / "environ.txt").read_text()
    assert "--password" in cmdline and MASK in cmdline
    assert f"GH_API_TOKEN={MASK}" in environ and f"AWS_ACCESS_KEY_ID={MASK}" in environ
    assert f"postgres://app:{MASK}@db:5432/x" in environ
    assert "HARMLESS=visible-value" in environ
    for f in r.out.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            for s in SECRETS:
                assert s.encode() not in data, f"{s} leaked into {f.name}"
    red = r.notes["redaction"]
    assert red["count"] >= 4 and any("token" in rule for rule in red["rules"])


def test_the_manifest_counts_redactions_and_the_bundle_holds_no_secret(gh, secretive, store):
    cp = gh("snapshot", "--incident", "RED-1", "--pid", str(secretive.pid), "--collector", "process", "--json",
            check=True)
    out = json.loads(cp.stdout)
    assert out["collectors"] == {"process": "ok"}
    man = json.loads(open(out["manifest"]).read())
    assert man["redaction"]["count"] >= 4 and man["redaction"]["rules"]
    t = next(x for x in man["targets"] if x["pid"] == secretive.pid)
    assert MASK in t["cmdline"] and SECRETS[0] not in json.dumps(t)
    assert t["runtime"] == "python" and t["runtime_evidence"]
    with tarfile.open(out["bundle"]) if out["bundle"].endswith(".gz") else _zst(out["bundle"]) as tar:
        for m in tar:
            if m.isfile():
                data = tar.extractfile(m).read()
                for s in SECRETS:
                    assert s.encode() not in data, f"{s} in {m.name}"
    secretive.assert_running()


def _zst(path):
    import io

    import zstandard
    raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb")).read()
    return tarfile.open(fileobj=io.BytesIO(raw))


def test_redaction_rules():
    r = Redactor()
    out = r.argv(["java", "-Ddb.password=x1", "--token", "x2", "--api-key=x3", "--token-file", "/run/t",
                  "--port", "80", "https://u:x4@h/p?session=x5&a=1", "Authorization: Bearer abcdefgh123"])
    assert out == ["java", f"-Ddb.password={MASK}", "--token", MASK, f"--api-key={MASK}", "--token-file", "/run/t",
                   "--port", "80", f"https://u:{MASK}@h/p?session={MASK}&a=1", f"Authorization: Bearer {MASK}"]
    assert r.count == 6
    assert [sensitive_name(n) for n in ("KEYBOARD", "MONKEY", "AUTHOR", "SSH_AUTH_SOCK", "privateKey", "DB_PASSWD",
                                        "X_PASSWORD_FILE")] == [False, False, False, True, True, True, False]


D_STATE = textwrap.dedent("""
    import os, sys, threading
    fifo = sys.argv[1]
    print("READY", os.getpid(), flush=True)
    # posix_spawn (vfork): this thread waits uninterruptibly until the child execs, and the child
    # first opens the FIFO for reading, which blocks until the test opens the writing end.
    os.posix_spawn("/bin/true", ["true"], os.environ, file_actions=[(os.POSIX_SPAWN_OPEN, 0, fifo, os.O_RDONLY, 0)])
    threading.Event().wait()
""")


@pytest.fixture
def d_state_target(tmp_path):
    fifo = tmp_path / "block.fifo"
    os.mkfifo(fifo)
    t = dt.Target([sys.executable, "-c", D_STATE, fifo])
    deadline = time.monotonic() + 10
    while t.thread_states().get(t.pid) != "D":
        assert time.monotonic() < deadline, "the target never reached D state"
        time.sleep(0.01)
    yield t
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)      # release it
    os.close(fd)
    t.stop()


def test_a_thread_in_d_state_is_reported_with_its_wait_channel(run_collector, d_state_target, tmp_path):
    r = run_collector("process", target=dt.agent_target(d_state_target.pid))
    assert r.status == "ok", r.reason
    p = json.loads((r.out / "process.json").read_text())
    main = next(th for th in p["threads"] if th["tid"] == d_state_target.pid)
    assert main["state"] == "D" and main["wchan"] and main["kernel_stack"]
    assert p["thread_states"]["D"] == 1
    found = bm.findings(tmp_path / "b", {f"collectors/process/{d_state_target.pid}/process.json": p})
    f = next(f for f in found if f.rule == "d_state")
    assert f.title.startswith("1 task in uninterruptible sleep (D state)") and main["wchan"] in f.explanation


def test_a_process_in_its_own_namespaces_is_described_as_a_container(run_collector, tmp_path):
    t = dt.python_target(tmp_path, prefix=["unshare", "--pid", "--mount", "--net", "--fork", "--mount-proc"])
    try:
        pid = int(subprocess.run(["pgrep", "-P", str(t.popen.pid)], capture_output=True, text=True).stdout.split()[0])
        r = run_collector("process", target=dt.agent_target(pid))
        assert r.status == "ok", r.reason
        p = json.loads((r.out / "process.json").read_text())
        assert p["pid"] == pid and len(p["nspid"]) == 2 and p["nspid"][-1] == 1
        c = p["container"]
        assert c["in_container"] and {"pid", "mnt", "net"} <= set(c["own_namespaces"]) and c["pid_in_namespace"] == 1
        assert "/proc/PID/root" in c["how"]
        assert r.notes["container"] is True
    finally:
        t.stop()


def test_a_target_that_exited_or_whose_pid_was_reused_is_target_exited(run_collector, tmp_path):
    p = subprocess.Popen(["sleep", "30"])
    t = dt.agent_target(p.pid)
    p.kill()
    p.wait()
    r = run_collector("process", target=t)
    assert r.status == "target_exited" and str(p.pid) in r.reason
    # the same PID, another start time: a reused PID is never read as the old process
    me = dt.agent_target(os.getpid())
    me.start_time += 1
    r = run_collector("process", target=me)
    assert r.status == "target_exited"
    assert not (r.out / "process.json").exists()


def test_file_locks_the_calls_threads_wait_in_and_where_descriptors_point(run_collector, tmp_path):
    """Threads queued in flock() on a file another process (flock(1)) holds: /proc/locks names the holder and the
    file; each waiting thread's system call and how long it has not run are recorded; descriptors by directory."""
    from pathlib import Path

    from tests.helpers.proc import Proc
    lock = tmp_path / "orders.lock"
    lock.touch()
    holder = subprocess.Popen(["flock", str(lock), "sleep", "1234"], start_new_session=True)
    t = None
    try:
        deadline = time.monotonic() + 30
        def holding() -> bool:                         # the lock taken, and flock(1) waiting for its sleep (wait4)
            with open(f"/proc/{holder.pid}/syscall") as fh:
                return str(holder.pid) in Path("/proc/locks").read_text() and fh.read().split()[0] == "61"
        while not holding():
            assert time.monotonic() < deadline, "flock(1) did not take the lock"
            time.sleep(0.05)
        t = Proc([sys.executable, Path(__file__).resolve().parents[1] / "report" / "targets" / "flock_waiters.py",
                  str(lock), "3"])
        time.sleep(0.5)
        r = run_collector("process", target=dt.agent_target(t.pid))
        assert r.status == "ok", r.reason
        p = json.loads((r.out / "process.json").read_text())
        (w,) = p["locks"]["waiting"]
        assert w["path"] == str(lock) and w["type"] == "FLOCK" and w["waiting"] == 3
        assert w["holder_pid"] == holder.pid and w["holder"]["comm"] == "flock"
        assert any((th.get("syscall") or {}).get("name") == "wait4" for th in w["holder"]["threads"])
        waiting = [th for th in p["threads"] if (th.get("syscall") or {}).get("name") == "flock"]
        assert len(waiting) == 3 and all(th["last_ran_s_ago"] >= 0.3 for th in waiting)
        assert {"dir": str(tmp_path), "count": 3} in p["fd"]["by_dir"]
        assert p["cpu_sample"]["interval_s"] >= 0.25 and p["cpu_sample"]["cpu_percent"] < 50
    finally:
        if t is not None:
            t.stop()
        os.killpg(holder.pid, signal.SIGKILL)          # flock(1) and the sleep it runs
        holder.wait(timeout=10)
