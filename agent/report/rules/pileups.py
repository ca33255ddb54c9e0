"""Pile-ups: many threads or goroutines parked at the same place in the program's own code.

Triggers (``collectors/threads/<pid>/threads.json``, every runtime): threads that are
parked (not running: py-spy's idle, a Go goroutine waiting, a JVM thread WAITING or BLOCKED,
a native thread sleeping) grouped by their *first application frame* (the innermost frame
of the program's own code, not the runtime's library) and what they wait in there. Only
threads parked deep in the program count: the group's stacks hold two application frames
or more (a worker loop idling for work has one, its own loop), and sleeps are left out.
- critical: 5 or more threads and at least half the threads running the program's own code (a
  JVM's GC and compiler threads, the Go runtime's goroutines do not count), or 1,000 or more
  (an exhausted connection pool, a queue or channel nobody drains, a lock held too long);
- warning: 5 or more and a quarter of the threads, or 100 or more; groups waiting for the
  network (Go ``IO wait``/``select``, socket reads) are at most warnings: idle keep-alive
  connections look the same.
Evidence: the group's threads and their shared stack in ``threads.json``. The thread-dump
view heads each group with the same frame.
"""
from __future__ import annotations

import re
from typing import Iterator

from agent.report.model import CRITICAL, WARNING, Evidence, Finding
from agent.report.rules import Rule
from agent.report.rules._util import plural, target_label
from agent.report.threads import Dump, Frame, Thread, app_frame, app_frames, total, waits_in

CRIT_SHARE, WARN_SHARE, MIN_COUNT = 0.5, 0.25, 5
CRIT_ABS, WARN_ABS = 1000, 100
SLEEP = re.compile(r"(?:^|[.\s_(])(?:sleep|nanosleep|clock_nanosleep|pysleep|time_sleep)\b|^sleep", re.I)
NETWORK = re.compile(r"IO wait|^select$|\brecv|\bread(?:into|line|exactly)?\b|\baccept|\bpoll\b|epoll|"
                     r"sock_|SocketInputStream|NioSocket|ssl|getaddrinfo|\bconnect\b", re.I)
PARKED_GO = {"running", "runnable", "syscall", ""}
NOUN = {"go": ("goroutine", "goroutines")}


def parked(t: Thread, runtime: str) -> bool:
    rt = runtime.lower()
    st = t.state.strip().lower()
    if t.active is True:
        return False
    if rt == "go":
        return st not in PARKED_GO
    if rt in ("jvm", "java"):
        return st.startswith(("waiting", "timed_waiting", "blocked"))
    if rt == "python":
        return t.active is False or st == "idle"
    os_state = str(t.raw.get("os_state") or st).upper()
    return os_state[:1] in ("S", "D")


def kind(t: Thread, runtime: str, wait: str) -> str:
    """"sleep", "network" or "wait" (a pool, a queue, a channel, a lock)."""
    inner = app_frames(t, runtime)
    calls = [f.function for f in t.frames[:inner[0]]] if inner else []
    text = " ".join([wait] + calls)
    if SLEEP.search(wait) or any(SLEEP.search(c) for c in calls[-3:]):
        return "sleep"
    if NETWORK.search(text):
        return "network"
    return "wait"


def _why(wait: str, k: str, noun: str) -> str:
    w = wait.lower()
    if "chan send" in w:
        return ("They are all sending on a channel that nobody receives from (or too slowly): a consumer that "
                "died or is stuck, and every producer blocks behind it; the goroutines never exit, so memory grows.")
    if "chan receive" in w:
        return "They all wait to receive from a channel whose sender never comes: a leak or a stuck producer."
    if re.search(r"\bget\b|take|poll|getconn|borrow|checkout|acquire|semacquire|semaphore", w):
        return ("They all wait to get something from a pool or queue that has nothing to give: an exhausted "
                "connection or worker pool (every item held by a caller that does not give it back, or a slow "
                "backend holding them), or a queue nobody fills.")
    if re.search(r"lock|mutex|monitor|blocked", w):
        return f"They all wait for one lock: whoever holds it holds up every {noun} behind it."
    if k == "network":
        return ("They all wait for the network at the same call: a slow or silent backend, or idle client "
                "connections (harmless) — the peer named in the code says which.")
    return "They all wait at the same call: whatever it waits for is not coming."


def _stack(frames: list[Frame], n: int = 8) -> str:
    return " ← ".join(f.label() for f in frames[:n]) + (" ← …" if len(frames) > n else "")


def pileups(dump: Dump) -> list[dict]:
    """Groups of parked threads by (first application frame, wait), biggest first, with their size and kind."""
    rt = dump.runtime or "native"
    groups: dict[tuple, list[Thread]] = {}
    for t in dump.threads:
        if not parked(t, rt):
            continue
        idx = app_frames(t, rt)
        if len(idx) < 2:
            continue                          # idle at the bottom of its own loop: a worker waiting for work
        app = t.frames[idx[0]]
        wait = waits_in(t, rt)
        groups.setdefault((app.function, app.file, app.line, wait), []).append(t)
    out = []
    n_all = total(dump)
    # the share is of the threads that run the program's code: a JVM's GC, compiler and reference threads, a Go
    # runtime's background goroutines, are not the application's
    n_app = sum(t.weight for t in dump.threads if app_frames(t, rt)) or n_all
    for (_fn, _file, _line, wait), ts in groups.items():
        count = sum(t.weight for t in ts)
        out.append({"threads": ts, "count": count, "total": n_all, "app_total": n_app, "wait": wait,
                    "frame": app_frame(ts[0], rt), "kind": kind(ts[0], rt, wait)})
    out.sort(key=lambda g: -g["count"])
    return out


def severity(g: dict) -> str | None:
    count, n, k = g["count"], g.get("app_total") or g["total"] or 1, g["kind"]
    if k == "sleep" or count < MIN_COUNT:
        return None
    share = count / n
    sev = None
    if count >= CRIT_ABS or share >= CRIT_SHARE:
        sev = CRITICAL
    elif count >= WARN_ABS or share >= WARN_SHARE:
        sev = WARNING
    if sev == CRITICAL and k == "network":
        sev = WARNING
    return sev


def evaluate(b) -> Iterator[Finding]:
    from agent.report.threads import load_dumps
    for pid, dump in load_dumps(b):
        rt = (dump.runtime or "native").lower()
        noun, nouns = NOUN.get(rt, ("thread", "threads"))
        who = target_label(b, pid, str(dump.meta.get("comm") or ""))
        for g in pileups(dump)[:3]:
            sev = severity(g)
            if sev is None:
                continue
            frame: Frame = g["frame"]
            count, n, wait = g["count"], g["total"], g["wait"]
            first = g["threads"][0]
            in_wait = f" in {wait}" if wait else ""
            yield Finding(
                sev, f"Pile-up in {who}: {count} of {plural(n, noun, nouns)} parked at {frame.label()}{in_wait}",
                f"{count} {nouns} (of the {g['app_total']} running the program's own code; {n} in all) are "
                f"parked with the same first "
                f"application frame, {frame.label()}, waiting{in_wait}. {_why(wait, g['kind'], noun)} "
                f"Whatever reaches {frame.function} now waits too, while the process looks idle (it uses no "
                "CPU). Their shared stack, innermost first: " + _stack(first.frames) + ".",
                rule="pileups", host=b.host,
                evidence=[Evidence(b.host, dump.source, record=f"{nouns} " + ", ".join(
                    str(t.tid if t.tid is not None else t.name) for t in g["threads"][:12])
                    + (" …" if len(g["threads"]) > 12 else ""),
                    excerpt=f"{first.state or '?'}: {_stack(first.frames, 12)}")],
                data={"pid": pid, "count": count, "total": n, "app_total": g["app_total"], "frame": frame.label(),
                      "wait": wait,
                      "kind": g["kind"], "runtime": rt})


RULE = Rule(name="pileups", summary="many threads or goroutines parked at one place in the program's own code",
            evaluate=evaluate, reads=("threads",),
            severity="critical (≥ 5 and half the threads, or ≥ 1,000); warning (a quarter, ≥ 100, network waits)",
            order=41)
