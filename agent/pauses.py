"""The pause ledger: a target stopped by a dump is always running again afterwards.

Where it sits: the runner calls ``record`` before a collector that pauses its
target (ptrace, gcore, safepoints) and ``release`` after it; every goldenhour
start (CLI and daemon) calls ``sweep``. ptrace(2): when a tracer dies the kernel
detaches its tracees, *except* tracees in group-stop, which stay stopped. So a
ledger entry names (pid, start time, state before); if the same process is found
stopped (``T``/``t``) and was not stopped before we touched it, it gets SIGCONT.
SIGCONT is the only signal sent, and only to a process we may have stopped
(through ``agent.safety.send``: the pidfd pins the same process).

Node.js inspectors are in the ledger too (``kind: inspector``, written by
``agent.nodecdp`` before it sends SIGUSR1): if the process that opened one died
before closing it, ``sweep`` (at start-up) and ``release`` (after the collector
that opened it ended) close it, so no code-execution port stays open.
An entry's owner is identified by (PID, start time); entries of a live owner are
another run's business and are left alone.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from agent import procfs
from agent.collector import TargetGone
from agent.targets import Target


def _stat(pid: int, start: int | None = None) -> procfs.Stat | None:
    """The process's stat now, or None if it exited (or, given ``start``, its PID now names another process)."""
    try:
        return procfs.Identity(pid, start).check() if start is not None else procfs.stat(pid)
    except procfs.ProcError:
        return None


def _stopped_threads(pid: int) -> list[int]:
    try:
        states = procfs.thread_states(pid)
    except procfs.ProcError:
        return []
    return [tid for tid, state in states.items() if state in ("T", "t")]


def record(ledger_dir: Path, target: Target, collector: str) -> Path:
    """Write a ledger entry before a pausing operation; returns its path."""
    ledger_dir.mkdir(parents=True, exist_ok=True)
    st = _stat(target.pid)
    me = _stat(os.getpid())
    entry = {"kind": "pause", "pid": target.pid, "start_time": target.start_time, "collector": collector,
             "state_before": st.state if st else None, "owner_pid": os.getpid(),
             "owner_start": me.starttime if me else None, "at": time.time()}
    path = ledger_dir / f"{target.pid}-{target.start_time}-{collector}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entry))
    os.replace(tmp, path)
    return path


def _resume_if_stopped(entry: dict[str, Any]) -> dict[str, Any]:
    pid, start = entry["pid"], entry["start_time"]
    st = _stat(pid, start)
    result: dict[str, Any] = {"pid": pid, "collector": entry.get("collector")}
    if st is None:
        result["state_after"] = "gone"
        return result
    stopped = st.state in ("T", "t") or bool(_stopped_threads(pid))
    result["state_after"] = st.state
    if stopped and entry.get("state_before") not in ("T", "t"):
        # 't' (tracing stop) clears when the tracer goes; 'T' (group stop) needs SIGCONT.
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            st = _stat(pid, start)
            if st is None or st.state not in ("T", "t"):
                break
            if st.state == "T":
                from agent import safety
                try:
                    safety.send(pid, start, signal.SIGCONT, "")
                except TargetGone:
                    break
                result["resumed"] = True
            time.sleep(0.02)
        st = _stat(pid, start)
        result["state_after"] = st.state if st else "gone"
    return result


def _handle(entry: dict[str, Any]) -> dict[str, Any]:
    if entry.get("kind") == "inspector":
        return close_inspector(entry)
    return _resume_if_stopped(entry)


def close_inspector(entry: dict[str, Any]) -> dict[str, Any]:
    """Close a Node inspector left open, in a helper process that enters the target's network namespace."""
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        cp = subprocess.run([sys.executable, "-m", "agent.nodecdp", "close-left-open", json.dumps(entry)],
                            capture_output=True, text=True, timeout=20, env=env, cwd=root)
        return json.loads(cp.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, ValueError, IndexError, OSError) as exc:
        return {"pid": entry.get("pid"), "kind": "inspector", "inspector": f"not closed: {exc}"}


def _owner_alive(entry: dict[str, Any]) -> bool:
    owner = entry.get("owner_pid")
    if not owner:
        return False
    st = _stat(owner)
    if st is None or st.state == "Z":
        return False
    start = entry.get("owner_start")
    return start is None or st.starttime == start


def release(path: Path) -> dict[str, Any]:
    """After the pausing operation: make sure the target runs, remove the entry, report.

    Also closes a Node inspector the collector opened on the same process and could not
    close (killed at its deadline): the entry's owner, the collector's process, is gone.
    """
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    result = _resume_if_stopped(entry)
    try:
        path.unlink()
    except OSError:
        pass
    for other in path.parent.glob(f"{entry['pid']}-{entry['start_time']}-inspector.json"):
        try:
            ins = json.loads(other.read_text())
        except (OSError, ValueError):
            continue
        if not _owner_alive(ins):
            res = close_inspector(ins)
            result["inspector"] = res.get("inspector")
            if not str(res.get("inspector", "")).startswith("not closed"):
                other.unlink(missing_ok=True)
    return result


def sweep(ledger_dir: Path) -> list[dict[str, Any]]:
    """At start-up: resume targets left stopped, close inspectors left open, by a goldenhour that died."""
    done = []
    if not ledger_dir.is_dir():
        return done
    for path in sorted(ledger_dir.glob("*.json")):
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            continue
        if entry.get("owner_pid") != os.getpid() and _owner_alive(entry):
            continue   # another goldenhour run is still dumping it
        res = _handle(entry)
        done.append(res)
        if entry.get("kind") == "inspector" and str(res.get("inspector", "")).startswith("not closed"):
            tries = int(entry.get("tries", 0)) + 1
            if tries < 3:               # keep it for the next start, a few times
                entry["tries"] = tries
                path.write_text(json.dumps(entry))
                continue
        path.unlink(missing_ok=True)
    return done
