"""agent.procfs against real processes: a comm with spaces, parentheses and a newline, a process
(and a thread) that exits, reads denied to an unprivileged user, and the evidence that names
the cause of a failed read (the manifest's ``unreadable`` events, process.json, host.json)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent import procfs, runner
from agent.collector import Context, TargetGone
from agent.targets import Target
from collectors import host

ROOT = Path(__file__).resolve().parent.parent
NOBODY = 65534
SLEEPER = "import time\nprint('READY', flush=True)\ntime.sleep(3600)\n"
# PR_SET_NAME (15): the kernel keeps up to 15 bytes, any of them but NUL
ODD_COMM = "gh) (x) y\n)z"
NAMED = ("import ctypes, time\n"
         f"ctypes.CDLL(None).prctl(15, {ODD_COMM.encode()!r}, 0, 0, 0)\n"
         "print('READY', flush=True)\ntime.sleep(3600)\n")
# PR_SET_DUMPABLE (4) 0: the process's /proc files then belong to root
NOT_DUMPABLE = ("import ctypes, time\nctypes.CDLL(None).prctl(4, 0, 0, 0, 0)\n"
                "print('READY', flush=True)\ntime.sleep(3600)\n")
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]

# Runs as an unprivileged user: reads each path with agent.procfs and through the evidence paths.
READER = r"""
import json, sys, tempfile, time
from pathlib import Path
from agent import procfs
from agent.collector import Context
from collectors import process
args = json.loads(sys.argv[1])
out = {"uid": __import__("os").getuid(), "reads": {}}
for label, path in args["paths"].items():
    try:
        procfs.read_bytes(path, 64)
        out["reads"][label] = {"cause": None}
    except procfs.ProcError as exc:
        out["reads"][label] = {"cause": exc.cause, "text": str(exc), "type": type(exc).__name__}
pid = args["pid"]
out["fds"] = process._fds(pid, 10)
out["environ"] = process._bounded(lambda: procfs.read_bytes(f"/proc/{pid}/environ", 1 << 20), 5.0, None)[1]
with tempfile.TemporaryDirectory(prefix="gh-procfs-test-") as d:
    ctx = Context(name="t", out=Path(d) / "out", journal=Path(d) / "j.jsonl", deadline=time.monotonic() + 30)
    ctx.copy(f"/proc/{pid}/environ", "environ")
    out["events"] = [json.loads(l) for l in (Path(d) / "j.jsonl").read_text().splitlines()]
print(json.dumps(out))
"""


def read_as_nobody(pid: int, paths: dict[str, str]) -> dict:
    """Run READER as uid/gid 65534 (setpriv) against ``pid``; its JSON answer."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    cp = subprocess.run([*AS_NOBODY, sys.executable, "-c", READER, json.dumps({"pid": pid, "paths": paths})],
                        capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    assert out["uid"] == NOBODY
    return out


def wait_until(cond, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def copy_events(tmp_path: Path, src: str) -> list[dict]:
    ctx = Context(name="t", out=tmp_path / "out", journal=tmp_path / "j.jsonl", deadline=time.monotonic() + 30)
    assert ctx.copy(src, "copied") is None
    return [json.loads(line) for line in (tmp_path / "j.jsonl").read_text().splitlines()]


# -- stat: comm with spaces, parentheses and a newline --------------------------------------------

def test_stat_of_a_process_whose_comm_has_spaces_parentheses_and_a_newline(spawn, run_collector):
    p = spawn([sys.executable, "-c", NAMED])
    assert procfs.read_text(f"/proc/{p.pid}/comm") == ODD_COMM + "\n"      # what the kernel keeps
    st = procfs.stat(p.pid)
    assert (st.pid, st.comm, st.ppid) == (p.pid, ODD_COMM, os.getpid()) and st.state in ("R", "S")
    assert st.session == p.pid and st.num_threads >= 1 and st.rss_pages > 0
    assert st.field(22) == str(st.starttime) and st.field(3) == st.state
    assert procfs.stat(p.pid, tid=p.pid).comm == ODD_COMM                  # the main thread's task entry
    assert procfs.status(p.pid)["Name"] == ODD_COMM.replace("\n", "\\n")  # status escapes it; stat does not
    assert procfs.Identity.of(p.pid) == (p.pid, st.starttime)

    row = host.parse_pid_stat(procfs.read_text(f"/proc/{p.pid}/stat"))
    assert row is not None and row["comm"] == ODD_COMM and row["start_ticks"] == st.starttime
    t = Target.from_pid(p.pid)
    assert t.comm == ODD_COMM and t.start_time == st.starttime and t.alive()

    res = run_collector("process", target=t)
    assert res.status == "ok", res.reason
    doc = json.loads((res.out / "process.json").read_text())
    assert doc["comm"] == ODD_COMM and doc["state"] in ("R", "S") and doc["ppid"] == os.getpid()
    assert ODD_COMM in {th["name"] for th in doc["threads"]}


def test_a_stat_line_that_does_not_parse_is_an_error_not_a_guess():
    with pytest.raises(ValueError):
        procfs.parse_stat("garbage")
    with pytest.raises(ValueError):
        procfs.parse_stat("12 (x) S 1")           # cut short


# -- gone: a process and a thread that exit -------------------------------------------------------

def test_a_process_that_exits_is_gone_and_says_so(spawn, tmp_path):
    p = spawn([sys.executable, "-c", SLEEPER])
    pid = p.pid
    ident = procfs.Identity.of(pid)
    t = Target.from_pid(pid)
    assert procfs.read_text(f"/proc/{pid}/environ") is not None
    with pytest.raises(procfs.ReadFailed) as other:                         # alive, but no such file
        procfs.read_text(f"/proc/{pid}/no-such-file")
    assert other.value.cause == "other" and "No such file" in str(other.value)
    held = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    try:
        p.stop()                                                            # killed and reaped
        with pytest.raises(OSError) as late:
            os.read(held, 4096)                                             # opened before: ESRCH now
    finally:
        os.close(held)
    assert procfs.error_for(late.value, f"/proc/{pid}/stat").cause == "gone"

    for read in (lambda: procfs.stat(pid), lambda: procfs.status(pid), lambda: procfs.tids(pid),
                 lambda: procfs.read_bytes(f"/proc/{pid}/environ"), lambda: procfs.readlink(f"/proc/{pid}/exe"),
                 lambda: procfs.read_text(f"/proc/{pid}/no-such-file"), ident.check):
        with pytest.raises(procfs.ProcessGone) as gone:
            read()
        assert gone.value.cause == "gone" and f"process {pid} exited" in str(gone.value)
        assert isinstance(gone.value, TargetGone)                           # a collector's target_exited
    assert not ident.alive() and not t.alive() and t.state() is None
    with pytest.raises(TargetGone):
        t.ensure_alive()

    # the evidence: Context.copy's unreadable event and host.json's process row name the cause
    ev = [e for e in copy_events(tmp_path, f"/proc/{pid}/environ") if e["kind"] == "unreadable"]
    assert ev and ev[0]["cause"] == "gone" and ev[0]["source"] == f"/proc/{pid}/environ"
    d = host._details(pid)
    assert d["cmdline"] is None and d["unreadable"] == {"user": "gone", "cmdline": "gone", "fds": "gone"}


def test_a_missing_file_of_a_live_process_is_other_not_gone(tmp_path):
    ev = [e for e in copy_events(tmp_path, f"/proc/{os.getpid()}/no-such-file") if e["kind"] == "unreadable"]
    assert ev and ev[0]["cause"] == "other"
    assert "unreadable" not in host._details(os.getpid())


def test_a_thread_that_exits_is_gone_while_its_process_is_not():
    code = ("import sys, threading, time\nev = threading.Event()\n"
            "def run():\n    print('TID', threading.get_native_id(), flush=True)\n    ev.wait()\n"
            "t = threading.Thread(target=run)\nt.start()\nsys.stdin.readline()\nev.set()\nt.join()\n"
            "print('JOINED', flush=True)\ntime.sleep(3600)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        tid = int(p.stdout.readline().split()[1])
        assert procfs.stat(p.pid, tid).state in ("R", "S") and tid in procfs.thread_states(p.pid)
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "JOINED"
        with pytest.raises(procfs.ProcessGone) as gone:
            procfs.stat(p.pid, tid)
        assert str(gone.value).startswith(f"thread {tid} of process {p.pid} exited")
        assert procfs.stat(p.pid).state in ("R", "S") and tid not in procfs.thread_states(p.pid)
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
        p.stdin.close()
        p.stdout.close()


def test_a_zombie_keeps_its_identity_but_has_exited():
    p = subprocess.Popen([sys.executable, "-c", SLEEPER], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert p.stdout.readline().startswith("READY")
        ident = procfs.Identity.of(p.pid)
        os.kill(p.pid, signal.SIGKILL)                      # not reaped yet: a zombie
        wait_until(lambda: procfs.stat(p.pid).state == "Z", "the zombie")
        assert ident.alive() and not runner.pid_alive(p.pid)
        with pytest.raises(procfs.ProcessGone):                       # it has exited: the kernel says ESRCH
            procfs.read_bytes(f"/proc/{p.pid}/environ")
    finally:
        p.kill()
        p.wait(timeout=10)
        p.stdout.close()


def test_a_reused_pid_is_another_process():
    st = procfs.stat(os.getpid())
    with pytest.raises(procfs.ProcessGone, match="now belongs to another process"):
        procfs.Identity(os.getpid(), st.starttime + 1).check()
    assert not procfs.Identity(os.getpid(), st.starttime + 1).alive()
    assert procfs.Identity(os.getpid(), st.starttime).alive()


# -- denied: an unprivileged reader --------------------------------------------------------------

def test_another_users_environ_and_mem_are_denied_and_the_evidence_says_so(spawn):
    p = spawn([sys.executable, "-c", NAMED])           # runs as root
    out = read_as_nobody(p.pid, {"environ": f"/proc/{p.pid}/environ", "mem": f"/proc/{p.pid}/mem",
                                 "io": f"/proc/{p.pid}/io", "stat": f"/proc/{p.pid}/stat"})
    reads = out["reads"]
    for name in ("environ", "mem", "io"):
        assert reads[name]["cause"] == "denied" and reads[name]["type"] == "AccessDenied", reads[name]
        assert reads[name]["text"] == f"permission denied reading /proc/{p.pid}/{name}"
    assert reads["stat"]["cause"] is None                  # world-readable
    assert out["fds"] == {"error": f"permission denied reading /proc/{p.pid}/fd", "cause": "denied"}
    assert out["environ"] == f"permission denied reading /proc/{p.pid}/environ"   # process.json's errors entry
    ev = [e for e in out["events"] if e["kind"] == "unreadable"]
    assert ev and ev[0]["cause"] == "denied" and "Permission denied" in ev[0]["error"]


def test_a_non_dumpable_process_is_denied_even_to_its_own_user(spawn):
    """PR_SET_DUMPABLE 0 hands the process's /proc files to root: its own uid may no longer read
    its environment (a dumpable process of the same uid may)."""
    dumpable = spawn([*AS_NOBODY, sys.executable, "-c", SLEEPER])
    hidden = spawn([*AS_NOBODY, sys.executable, "-c", NOT_DUMPABLE])
    assert procfs.status(hidden.pid)["Uid"].split()[0] == str(NOBODY)
    assert os.stat(f"/proc/{hidden.pid}/environ").st_uid == 0
    assert os.stat(f"/proc/{dumpable.pid}/environ").st_uid == NOBODY
    out = read_as_nobody(hidden.pid, {"hidden": f"/proc/{hidden.pid}/environ",
                                      "dumpable": f"/proc/{dumpable.pid}/environ"})
    assert out["reads"]["dumpable"]["cause"] is None
    assert out["reads"]["hidden"]["cause"] == "denied"
    assert [e["cause"] for e in out["events"] if e["kind"] == "unreadable"] == ["denied"]
    assert procfs.read_bytes(f"/proc/{hidden.pid}/environ")   # root (CAP_SYS_PTRACE) still may
