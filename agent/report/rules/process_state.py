"""Target processes that are stopped, zombies or traced: in the process table, but not doing their work.

Triggers (a target's ``process.json``): the process or one of its threads stopped, state
``T`` (SIGSTOP, or job control: Ctrl-Z in a terminal) or ``t`` (held by a tracer, a
debugger at a breakpoint) — warning: a stopped process runs no code, so its requests
queue and its health checks time out while it looks alive; a zombie (state ``Z``: it
exited and its parent has not collected its exit status) — warning: the program is gone,
only its process-table entry is left; a tracer attached (``tracer_pid``: a debugger,
strace) — info: a traced process can run many times slower (strace) and its tracer can
stop it at any moment. goldenhour's own thread and heap dumps stop a target for moments:
when the same capture paused the target, the finding says so.
Evidence: the process's state, its stopped threads and its tracer in ``process.json``.
"""
from __future__ import annotations

from typing import Iterator

from agent.report.model import INFO, WARNING, Evidence, Finding
from agent.report.rules import Rule
from agent.report.rules._util import join_names, num, plural, target_label

STOPPED = {"T": "stopped by a signal (SIGSTOP, or job control such as Ctrl-Z)",
           "t": "stopped by its tracer (a debugger holding it, at a breakpoint or a single step)"}


def _comm_of(b, pid: int) -> str:
    """The command of ``pid`` if the bundle names it (a target, or a top process in host.json)."""
    comm = b.target_info(pid).get("comm")
    if comm:
        return str(comm)
    h = b.json("collectors/host/host.json")
    top = h.get("top_processes") if isinstance(h, dict) else None
    for rows in (top.values() if isinstance(top, dict) else []):
        for r in rows if isinstance(rows, list) else []:
            if isinstance(r, dict) and r.get("pid") == pid and r.get("comm"):
                return str(r["comm"])
    return ""


def _paused_by_us(b, pid: int) -> list[str]:
    """This capture's collectors that paused ``pid`` (thread or heap dumps), by key."""
    return [c.key for c in b.collectors() if c.pause and c.key.endswith(f"/{pid}")]


def evaluate(b) -> Iterator[Finding]:
    for rel in b.files("collectors/process/*/process.json"):
        p = b.json(rel)
        if not isinstance(p, dict):
            continue
        pid = int(rel.split("/")[2])
        who = target_label(b, pid, str(p.get("comm") or ""))
        state = str(p.get("state") or "")
        threads = [t for t in p.get("threads") or [] if isinstance(t, dict)]
        stopped = [t for t in threads if str(t.get("state")) in STOPPED]
        if state in STOPPED or stopped:
            how = STOPPED.get(state) or STOPPED[str(stopped[0].get("state"))]
            ours = _paused_by_us(b, pid)
            names = [f"{t.get('name')} ({t.get('tid')}, {t.get('state')})" for t in stopped]
            yield Finding(
                WARNING, f"{who} is stopped" if state in STOPPED else
                f"{who} has {plural(len(stopped), 'stopped thread')}",
                f"When captured, {who} was {how}"
                + (f"; stopped threads: {join_names(names)}" if stopped and len(stopped) < len(threads) else "")
                + ". A stopped process runs no code: its requests queue, its timers and health checks do not "
                  "fire, and it still looks alive to anything that only checks the process exists. `kill -CONT "
                  f"{pid}` resumes a process stopped by a signal; a tracer must let go of one it holds."
                + (f" This capture's own {join_names(ours)} paused it for a moment: if the stop was then, it was "
                   "goldenhour's (its pause record in the manifest says when it resumed)." if ours else ""),
                rule="process_state", host=b.host,
                evidence=[Evidence(b.host, rel, record=f"pid {pid} state",
                                   excerpt=f"state {state} ({p.get('state_name', '')})"
                                   + (f", stopped threads: {', '.join(names[:6])}" if stopped else ""))],
                data={"pid": pid, "state": state, "stopped_threads": [t.get("tid") for t in stopped],
                      "paused_by_goldenhour": ours})
        if state == "Z":
            ppid = p.get("ppid")
            yield Finding(
                WARNING, f"{who} is a zombie: it exited and was not reaped",
                f"{who} had already exited when captured (state Z): only its process-table entry is left, "
                f"waiting for its parent (pid {ppid}) to collect its exit status. Whatever it served is gone; "
                "what ended it may be in the kernel log or the application's logs. A parent that never reaps its "
                "children leaks zombies until the PID space or its limits run out.",
                rule="process_state", host=b.host,
                evidence=[Evidence(b.host, rel, record=f"pid {pid} state", excerpt=f"state Z, ppid {ppid}")],
                data={"pid": pid, "state": state, "ppid": ppid})
        tracer = num(p.get("tracer_pid"))
        if tracer:
            tracer = int(tracer)
            tcomm = _comm_of(b, tracer)
            by = f"{tcomm} (pid {tracer})" if tcomm else f"pid {tracer}"
            yield Finding(
                INFO, f"{who} is being traced by {by}",
                f"A tracer ({by}: a debugger, strace or a profiler) was attached to {who} when captured. Under "
                "strace every system call stops the process twice, so it can run many times slower; a debugger "
                "can stop it at any moment. If nobody meant to leave it attached, detach it.",
                rule="process_state", host=b.host,
                evidence=[Evidence(b.host, rel, record=f"pid {pid} tracer_pid", excerpt=f"tracer_pid {tracer}")],
                data={"pid": pid, "tracer_pid": tracer, "tracer": tcomm or None})


RULE = Rule(name="process_state", summary="target processes stopped, zombies, or with a tracer attached",
            evaluate=evaluate, reads=("process", "host"), severity="warning (stopped, zombie); info (traced)",
            order=33)
