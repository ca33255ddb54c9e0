"""Threads deadlocked or blocked on locks, from each target's thread dump.

Triggers (``collectors/threads/<pid>/threads.json``):
- a deadlock the runtime reported (the JVM's "Found one Java-level deadlock",
  in ``deadlocks``) or a cycle in the wait-for graph (thread A waits for a lock B
  holds, B for one A holds) — critical;
- two or more threads blocked acquiring locks in the program's own code while no
  thread of the process is running (a Python two-lock deadlock looks exactly like
  this: CPython locks have no owner to build a graph from) — critical, "likely
  deadlock";
- a quarter or more of the threads (at least 3) blocked on locks — warning: lock
  contention or a thread starving the others; the biggest group of identical
  stacks says where.
Evidence: the thread names, their states and innermost frames in ``threads.json``.
The report's thread-dump view shows every target's threads grouped by identical
stack, biggest group first.
"""
from __future__ import annotations

from typing import Iterator

from agent.report.model import CRITICAL, WARNING, Evidence, Finding
from agent.report.rules import Rule
from agent.report.rules._util import cap, join_names, plural, target_label
from agent.report.threads import Thread, deadlock_names, group, load_dumps, wait_cycles


RUNTIMES = {"jvm": "JVM", "java": "JVM", "python": "Python runtime", "go": "Go runtime", "node": "Node.js runtime"}


def _ev(b, rel: str, t: Thread) -> Evidence:
    top = t.top_code()
    reason = t.blocked_reason() or t.state
    return Evidence(b.host, rel, record=f"thread {t.name!r} (tid {t.tid})",
                    excerpt=f"{t.state or '?'}: {reason}" + (f" at {top.label()}" if top else ""))


def evaluate(b) -> Iterator[Finding]:
    for pid, dump in load_dumps(b):
        who = target_label(b, pid)
        by_name = {t.name: t for t in dump.threads}
        reported = False
        for d in dump.deadlocks:
            names = deadlock_names(d)
            text = str(d.get("text") or d.get("description") or d.get("summary") or "")
            ev = [_ev(b, dump.source, by_name[n]) for n in names if n in by_name]
            if not ev:
                ev = [Evidence(b.host, dump.source, record="deadlocks", excerpt=(text or str(d))[:400])]
            yield Finding(CRITICAL, f"Deadlock in {who}" + (f": threads {join_names(names)}" if names else ""),
                          f"The {RUNTIMES.get(dump.runtime, dump.runtime or 'runtime')} reported a deadlock: "
                          "these threads each hold a lock "
                          "another of them waits for, so none of them can ever proceed; whatever they serve hangs "
                          "until the process is restarted. Their stacks (thread dump below) show which locks and "
                          "where they were taken." + (f" Runtime's words: {text[:300]}" if text else ""),
                          rule="thread_dumps", host=b.host, evidence=cap(ev),
                          data={"pid": pid, "threads": names})
            reported = True
        for cyc in wait_cycles(dump):
            if reported:
                break
            names = [t.name for t in cyc]
            chain = " → ".join(f"{t.name} waits for {t.waiting_on}" for t in cyc)
            yield Finding(CRITICAL, f"Deadlock in {who}: threads {join_names(names)} wait for each other",
                          f"The lock each thread waits for is held by the next one: {chain}. None can proceed.",
                          rule="thread_dumps", host=b.host, evidence=cap([_ev(b, dump.source, t) for t in cyc]),
                          data={"pid": pid, "threads": names})
            reported = True
        blocked = [t for t in dump.threads if t.blocked_reason()]
        running = [t for t in dump.threads
                   if t.active is True or t.state.upper() in ("RUNNABLE", "RUNNING", "ACTIVE", "R")]
        if reported or not blocked:
            continue
        n = len(dump.threads)
        if len(blocked) >= 2 and not running:
            names = [t.name for t in blocked]
            where = join_names(sorted({(t.top_code().label() if t.top_code() else '?') for t in blocked}), 4)
            yield Finding(CRITICAL, f"Likely deadlock in {who}: {plural(len(blocked), 'thread')} blocked on locks, "
                                    "none running",
                          f"Threads {join_names(names)} are all waiting to acquire locks in the program's own code "
                          f"({where}) and no thread of the process is running to release them. Two threads taking "
                          "the same two locks in opposite order look exactly like this. The process makes no "
                          "progress on whatever those threads serve.",
                          rule="thread_dumps", host=b.host, evidence=cap([_ev(b, dump.source, t) for t in blocked]),
                          data={"pid": pid, "threads": names, "blocked": len(blocked), "total": n})
        elif len(blocked) >= 3 and len(blocked) * 4 >= n:
            g = next((g for g in group(dump) if g.blocked()), None)
            where = ""
            if g is not None:
                top = g.threads[0].top_code()
                where = f" The biggest group, {plural(g.count, 'thread')} with an identical stack, waits at " \
                        f"{top.label() if top else '?'}."
            yield Finding(WARNING, f"{len(blocked)} of {n} threads of {who} blocked on locks",
                          "Many threads wait for locks at the moment of the dump: lock contention, or one thread "
                          f"holding a lock for long (slow I/O inside a critical section).{where}",
                          rule="thread_dumps", host=b.host, evidence=cap([_ev(b, dump.source, t) for t in blocked]),
                          data={"pid": pid, "blocked": len(blocked), "total": n})


RULE = Rule(name="thread_dumps", summary="deadlocks and threads blocked on locks in thread dumps",
            evaluate=evaluate, reads=("threads",),
            severity="critical (deadlock, likely deadlock); warning (many threads blocked)", order=40)
