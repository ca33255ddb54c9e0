"""The process_state rule on what the real process collector wrote about real processes: one stopped by
SIGSTOP, a zombie its parent never reaps, and one with strace attached. (The collector records the facts;
since the thresholds moved to the report, this rule is where "stopped", "zombie" and "traced" are judged.)"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dumptargets as dt
from tests.report import bundlemaker as bm

SLEEPER = "import os, time; print('READY', os.getpid(), flush=True); time.sleep(600)"
# a parent that starts a child, never waits for it, and says READY <child> once the child is a zombie
ZOMBIE = """
import os, subprocess, sys, time
child = subprocess.Popen(["true"])
deadline = time.monotonic() + 30
while open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
    if time.monotonic() > deadline:
        sys.exit("the child never became a zombie")
    time.sleep(0.01)
print("READY", child.pid, flush=True)
time.sleep(600)
"""


def _wait_for(what: str, cond, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _tracer(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("TracerPid:"):
            return int(line.split()[1])
    return 0


def _findings(run_collector, tmp_path, pid: int):
    r = run_collector("process", target=dt.agent_target(pid))
    assert r.status in ("ok", "partial"), r.reason
    doc = json.loads((r.out / "process.json").read_text())
    assert "findings" not in doc            # facts only: the judgement is the rule's
    found = bm.findings(tmp_path / "bundle", {f"collectors/process/{pid}/process.json": doc})
    return doc, [f for f in found if f.rule == "process_state"]


def test_a_stopped_process_is_a_warning(run_collector, tmp_path):
    t = dt.Target([sys.executable, "-c", SLEEPER])
    try:
        os.kill(t.pid, signal.SIGSTOP)
        _wait_for("the target is stopped", lambda: _state(t.pid) == "T")
        doc, found = _findings(run_collector, tmp_path, t.pid)
    finally:
        os.kill(t.pid, signal.SIGCONT)
        t.stop()
    assert doc["state"] == "T" and doc["tracer_pid"] == 0
    (f,) = found
    assert f.severity == "warning" and f.title == f"{doc['comm']} (pid {t.pid}) is stopped"
    assert "SIGSTOP" in f.explanation and f"kill -CONT {t.pid}" in f.explanation
    assert f.evidence[0].file == f"collectors/process/{t.pid}/process.json" and "state T" in f.evidence[0].excerpt


def test_a_zombie_is_a_warning_naming_its_parent(run_collector, tmp_path):
    t = dt.Target([sys.executable, "-c", ZOMBIE])         # t.pid: the zombie (from its READY line)
    try:
        doc, found = _findings(run_collector, tmp_path, t.pid)
    finally:
        t.stop()                                          # the parent dies, init reaps the zombie
    assert doc["state"] == "Z" and doc["ppid"] == t.popen.pid
    (f,) = found
    assert f.severity == "warning" and "is a zombie" in f.title and f"pid {t.popen.pid}" in f.explanation


@pytest.mark.skipif(not Path("/usr/bin/strace").exists(), reason="strace is not installed")
def test_a_traced_process_is_info_naming_the_tracer(run_collector, tmp_path):
    t = dt.Target([sys.executable, "-c", SLEEPER])
    strace = subprocess.Popen(["strace", "-o", "/dev/null", "-p", str(t.pid)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for("strace is attached", lambda: _tracer(t.pid) == strace.pid)
        doc, found = _findings(run_collector, tmp_path, t.pid)
    finally:
        strace.terminate()                                # strace detaches on SIGTERM
        try:
            strace.wait(timeout=30)
        except subprocess.TimeoutExpired:
            strace.kill()
            strace.wait()
        t.stop()
    assert doc["tracer_pid"] == strace.pid and doc["state"] in ("S", "R")
    (f,) = found
    assert f.severity == "info" and f.title.endswith(f"is being traced by pid {strace.pid}")
    assert f.data["tracer_pid"] == strace.pid


def test_a_running_process_gives_no_finding(run_collector, tmp_path):
    t = dt.Target([sys.executable, "-c", SLEEPER])
    try:
        _, found = _findings(run_collector, tmp_path, t.pid)
    finally:
        t.stop()
    assert found == []
