"""Processes in uninterruptible sleep (D state): stuck in the kernel, usually on I/O.

Triggers: ``host.json`` ``d_state`` (processes whose state was D when captured) and
threads in state D in a target's ``process.json``. A D-state task cannot be killed
and does not run until the kernel call returns: a moment in D is normal I/O, many
tasks in D at once, or several stuck at the same kernel function (``wchan``), is a
storage or NFS stall, a hung driver or a kernel lock pile-up.
Severity: critical when 10 or more tasks are in D, or 3 or more wait at the same
``wchan``; warning for user processes in D; info when only kernel threads are.
Evidence: each process's record (pid, command, wchan) in ``host.json``, and the
``process.json`` threads in D with their kernel stacks (where they wait in the kernel).
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterator

from agent.redact import Redactor
from agent.report.model import CRITICAL, INFO, WARNING, Evidence, Finding
from agent.report.rules import Rule
from agent.report.rules._util import cap, join_names, plural, target_label

HOST = "collectors/host/host.json"


def _d_threads(p: dict[str, Any]) -> list[dict[str, Any]]:
    threads = p.get("threads")
    if isinstance(threads, dict):
        threads = threads.get("list") or threads.get("threads") or threads.get("items")
    out = []
    for t in threads if isinstance(threads, list) else []:
        if isinstance(t, dict) and str(t.get("state", "")).upper().startswith("D"):
            out.append(t)
    return out


def evaluate(b) -> Iterator[Finding]:
    h = b.json(HOST)
    procs = [p for p in (h.get("d_state") if isinstance(h, dict) else None) or [] if isinstance(p, dict)]
    thread_hits: list[tuple[str, int, list[dict[str, Any]]]] = []
    for rel in b.files("collectors/process/*/process.json"):
        p = b.json(rel)
        if isinstance(p, dict):
            d = _d_threads(p)
            if d:
                thread_hits.append((rel, int(rel.split("/")[2]), d))
    if not procs and not thread_hits:
        return
    kernel = [p for p in procs if p.get("ppid") == 2 or p.get("pid") == 2 or not p.get("cmdline")]
    user = [p for p in procs if p not in kernel]
    wchans = Counter(p.get("wchan") or "?" for p in procs)
    wchans.update(t.get("wchan") or "?" for _, _, ts in thread_hits for t in ts)
    total = len(procs) + sum(len(ts) for _, _, ts in thread_hits)
    top_wchan, top_n = wchans.most_common(1)[0]
    if total >= 10 or (top_n >= 3 and top_wchan != "?"):
        sev = CRITICAL
    elif user or thread_hits:
        sev = WARNING
    else:
        sev = INFO
    names = [f"{p.get('comm')} ({p.get('pid')})" for p in user + kernel]
    names += [f"{target_label(b, pid)}: {plural(len(ts), 'thread')}" for _, pid, ts in thread_hits]
    where = ", ".join(f"{w} ×{n}" for w, n in wchans.most_common(4) if w != "?")
    ev = [Evidence(b.host, HOST, record=f"d_state pid {p.get('pid')}",
                   excerpt=f"{p.get('comm')} pid {p.get('pid')} wchan {p.get('wchan')} "
                           f"cmdline {_cmdline(p)[:120]}")
          for p in user + kernel]
    for rel, _, ts in thread_hits:
        for t in ts[:3]:
            stack = t.get("kernel_stack") or []
            ev.append(Evidence(b.host, rel, record=f"thread {t.get('tid')} ({t.get('name')}) in D",
                               excerpt=f"wchan {t.get('wchan')}" + (f"; kernel stack: {' ← '.join(map(str, stack[:6]))}"
                                                                    if isinstance(stack, list) and stack else "")))
    yield Finding(
        sev, f"{plural(total, 'task')} in uninterruptible sleep (D state)"
             + (f", {top_n} at {top_wchan}" if top_n >= 2 and top_wchan != "?" else ""),
        f"When captured, {join_names(names)} {'was' if total == 1 else 'were'} in D state: inside a kernel call "
        "that cannot be interrupted (not even by SIGKILL), usually waiting for disk or network storage. A moment "
        "in D is normal I/O; many tasks, or several stuck at the same kernel function, is a storage or NFS stall, "
        "a hung driver or a lock pile-up — and it raises the load average without using CPU."
        + (f" Kernel functions they wait in: {where}." if where else "")
        + (" Only kernel threads: likely ordinary writeback." if sev == INFO else ""),
        rule="d_state", host=b.host, evidence=cap(ev),
        data={"count": total, "wchan": dict(wchans),
              "pids": [p.get("pid") for p in user] + [pid for _, pid, _ in thread_hits]})


RULE = Rule(name="d_state", summary="processes and threads in uninterruptible sleep (D state)", evaluate=evaluate,
            reads=("host", "process"), severity="critical (≥ 10, or ≥ 3 at one wchan); warning (user tasks); info",
            order=32)


def _cmdline(p: dict) -> str:
    """The process's command line as the bundle has it, through the redactor again (an older bundle's host.json
    held it raw)."""
    return " ".join(Redactor().argv(str(p.get("cmdline") or "").split()))
