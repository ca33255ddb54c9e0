"""The pause ledger: a target stopped by a dump is always running again afterwards.

Where it sits: the runner calls ``record`` before a collector that pauses its
target (ptrace, gcore, safepoints) and ``release`` after it; every goldenhour
start (CLI and daemon) calls ``sweep``. ptrace(2): when a tracer dies the kernel
detaches its tracees, *except* tracees in group-stop, which stay stopped. So a
ledger entry names (pid, start time, state before); if the same process is found
stopped (``T``/``t``) and was not stopped before we touched it, it gets SIGCONT.
SIGCONT is the only signal sent, and only to a process we may have stopped.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from agent.targets import Target, proc_stat


def _stopped_threads(pid: int) -> list[int]:
    out = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        st = proc_stat_task(pid, int(tid))
        if st in ("T", "t"):
            out.append(int(tid))
    return out


def proc_stat_task(pid: int, tid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/task/{tid}/stat", "rb") as fh:
            text = fh.read().decode("utf-8", "replace")
        return text[text.rindex(")") + 2]
    except (OSError, ValueError, IndexError):
        return None


def record(ledger_dir: Path, target: Target, collector: str) -> Path:
    """Write a ledger entry before a pausing operation; returns its path."""
    ledger_dir.mkdir(parents=True, exist_ok=True)
    st = proc_stat(target.pid)
    entry = {"pid": target.pid, "start_time": target.start_time, "collector": collector,
             "state_before": st["state"] if st else None, "owner_pid": os.getpid(),
             "at": time.time()}
    path = ledger_dir / f"{target.pid}-{target.start_time}-{collector}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entry))
    os.replace(tmp, path)
    return path


def _resume_if_stopped(entry: dict[str, Any]) -> dict[str, Any]:
    pid, start = entry["pid"], entry["start_time"]
    st = proc_stat(pid)
    result: dict[str, Any] = {"pid": pid, "collector": entry.get("collector")}
    if st is None or st["starttime"] != start:
        result["state_after"] = "gone"
        return result
    stopped = st["state"] in ("T", "t") or bool(_stopped_threads(pid))
    result["state_after"] = st["state"]
    if stopped and entry.get("state_before") not in ("T", "t"):
        # 't' (tracing stop) clears when the tracer goes; 'T' (group stop) needs SIGCONT.
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            st = proc_stat(pid)
            if st is None or st["state"] not in ("T", "t"):
                break
            if st["state"] == "T":
                os.kill(pid, signal.SIGCONT)
                result["resumed"] = True
            time.sleep(0.02)
        st = proc_stat(pid)
        result["state_after"] = st["state"] if st else "gone"
    return result


def release(path: Path) -> dict[str, Any]:
    """After the pausing operation: make sure the target runs, remove the entry, report."""
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    result = _resume_if_stopped(entry)
    try:
        path.unlink()
    except OSError:
        pass
    return result


def sweep(ledger_dir: Path) -> list[dict[str, Any]]:
    """At start-up: resume targets left stopped by a goldenhour that died mid-dump."""
    done = []
    if not ledger_dir.is_dir():
        return done
    for path in sorted(ledger_dir.glob("*.json")):
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            continue
        owner = entry.get("owner_pid")
        if owner and owner != os.getpid() and _alive(owner):
            continue   # another goldenhour run is still dumping it
        done.append(_resume_if_stopped(entry))
        path.unlink(missing_ok=True)
    return done


def _alive(pid: int) -> bool:
    st = proc_stat(pid)
    return st is not None and st["state"] != "Z"
