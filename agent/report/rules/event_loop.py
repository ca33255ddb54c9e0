"""Event loops blocked by a long synchronous callback: Node.js, and Python's asyncio.

Triggers (``collectors/threads/<pid>/threads.json`` ``event_loop``):
- Node.js: the threads collector schedules a 0 ms timer from the inspector and measures how
  late it fires (``lag_ms``), or that it had not fired after ``wait_s`` (``timed_out``, the lag
  is at least that): 1 s or more is critical, 200 ms or more a warning. The main thread's
  JavaScript stack (``Debugger.pause``), its CPU over the measurement and the loop's
  utilization say what blocks it: a CPU-bound handler (the loop is busy), or a synchronous
  call that waits (the thread idles in native code).
- Python asyncio: the loop's thread (``BaseEventLoop._run_once`` on its stack) was inside one
  callback in every sample, at the same frame of the program, over 1 s or more (critical)
  or 0.4 s (warning). Nothing else on that loop runs meanwhile: every connection and
  timer it serves waits.
Evidence: the ``event_loop`` facts and the main thread's frames in ``threads.json``.
"""
from __future__ import annotations

import re
from typing import Any, Iterator

from agent.report.model import CRITICAL, WARNING, Evidence, Finding
from agent.report.rules import Rule
from agent.report.rules._util import num, target_label
from agent.report.threads import app_frame, app_frames, load_dumps

CRIT_MS, WARN_MS = 1000.0, 200.0
PY_CRIT_S, PY_WARN_S = 1.0, 0.4


def _ms(v: float) -> str:
    return f"{v / 1000:.1f} s" if v >= 1000 else f"{v:.0f} ms"


def _node(b, pid: int, dump, loop: dict[str, Any]) -> Finding | None:
    lag = num(loop.get("lag_ms"))
    at_least = num(loop.get("lag_ms_at_least"))
    worst = at_least if loop.get("timed_out") else lag
    if worst is None or worst < WARN_MS:
        return None
    sev = CRITICAL if worst >= CRIT_MS else WARNING
    who = target_label(b, pid)
    main = next((t for t in dump.threads if t.name == "main"), dump.threads[0] if dump.threads else None)
    app = app_frame(main, "node") if main else None
    cpu, util = num(loop.get("main_thread_cpu")), num(loop.get("utilization"))
    running = f"running {app.label()}" if app else "not in JavaScript"
    busy = "" if util is None else f" The loop was busy {util:.0%} of the time it was measured"
    if util is not None and cpu is not None:
        busy += (f" and its thread used {cpu:.0%} of a CPU." if cpu >= 0.5 or util < 0.5 else
                 f", though its thread got only {cpu:.0%} of a CPU: the host's CPUs are contended too.")
    elif busy:
        busy += "."
    blocked_how = (f" The main thread is {running}: a synchronous, CPU-bound piece of code that never yields back to "
                   "the loop (a long loop, a huge JSON.parse/stringify, a regular expression backtracking, "
                   "synchronous crypto or compression)." if app else
                   " No JavaScript was running: the thread is blocked in a synchronous native call "
                   "(fs.*Sync, child_process.*Sync, Atomics.wait, a native add-on).")
    frames = loop.get("main_thread_frames") or ([f.label() for f in main.frames[:8]] if main else [])
    title = (f"Event loop of {who} blocked: a 0 ms timer had not fired after {_ms(worst)}" if loop.get("timed_out")
             else f"Event loop of {who} lagging: a 0 ms timer fired {_ms(worst)} late")
    if app and main:
        chain = [main.frames[i].label() for i in app_frames(main, "node")[:2]]
        title += "; the main thread runs " + " ← ".join(chain)
    return Finding(
        sev, title,
        f"Every request, timer and I/O callback of this Node.js process runs on its one event loop, and a timer due "
        f"at once {'had still not run after' if loop.get('timed_out') else 'ran'} {_ms(worst)}"
        f"{'' if loop.get('timed_out') else ' late'}: for that long the process accepted no connection and answered "
        f"nothing, while its port stayed open.{blocked_how}{busy}",
        rule="event_loop", host=b.host,
        evidence=[Evidence(b.host, dump.source, record="event_loop",
                           excerpt=", ".join(f"{k} {loop[k]}" for k in ("lag_ms", "lag_ms_at_least", "timed_out",
                                                                         "main_thread_cpu", "utilization")
                                             if k in loop)),
                  Evidence(b.host, dump.source, record="thread 'main'", excerpt=" ← ".join(frames[:8]))],
        data={"pid": pid, "runtime": "node", "lag_ms": worst, "timed_out": bool(loop.get("timed_out")),
              "frame": app.label() if app else None, "main_thread_cpu": cpu, "utilization": util})


def _fn(label: str) -> str:
    """``name (file:line)`` without the line: one function whatever line it is at."""
    return re.sub(r":\d+\)$", ")", label)


def _python(b, pid: int, dump, loop: dict[str, Any]) -> Finding | None:
    samples = [s for s in loop.get("samples") or [] if isinstance(s, dict)]
    if len(samples) < 2 or not all(s.get("in_callback") for s in samples):
        return None
    chains = [[_fn(x) for x in (s.get("chain") or ([s["frame"]] if s.get("frame") else []))] for s in samples]
    if not all(chains):
        return None
    common: list[str] = []                       # from the callback (outermost) in: what every sample was in
    for level in zip(*(list(reversed(c)) for c in chains), strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    if not common:
        return None                              # a different callback each time: busy, not blocked
    span = (num(samples[-1].get("t_s")) or 0.0) - (num(samples[0].get("t_s")) or 0.0)
    if span < PY_WARN_S:
        return None
    sev = CRITICAL if span >= PY_CRIT_S else WARNING
    where = " ← ".join(list(reversed(common))[:2])
    who = target_label(b, pid)
    cpu = num(loop.get("cpu"))
    if all(s.get("active") for s in samples):
        how = " py-spy saw the thread running in every sample: CPU-bound code in a coroutine or callback"
    else:
        how = (" py-spy saw the thread idle in some samples: a blocking call (time.sleep, a synchronous HTTP or "
               "database client, file I/O) inside a coroutine")
    how += f" (its thread used {cpu:.0%} of a CPU meanwhile)." if cpu is not None else "."
    return Finding(
        sev, f"asyncio event loop of {who} blocked in {where} for {span:.1f} s or more",
        f"The loop on thread {loop.get('thread')!r} was inside one callback, in {' ← '.join(reversed(common))}, in "
        f"all {len(samples)} samples over {span:.1f} s. While a callback runs, nothing else on that loop does: every "
        f"connection, timer and task it serves waits.{how} Move the work to a thread (asyncio.to_thread, "
        "run_in_executor) or make it await.",
        rule="event_loop", host=b.host,
        evidence=[Evidence(b.host, dump.source, record=f"event_loop thread {loop.get('thread')!r}",
                           excerpt="; ".join(f"+{s.get('t_s')} s: {s.get('frame')}" for s in samples))],
        data={"pid": pid, "runtime": "python", "blocked_s": span, "frame": where, "cpu": cpu})


def evaluate(b) -> Iterator[Finding]:
    for pid, dump in load_dumps(b):
        loop = dump.meta.get("event_loop")
        if not isinstance(loop, dict):
            continue
        if loop.get("kind") == "asyncio":
            for lp in loop.get("loops") or []:
                f = _python(b, pid, dump, lp) if isinstance(lp, dict) else None
                if f:
                    yield f
        elif dump.runtime == "node":
            f = _node(b, pid, dump, loop)
            if f:
                yield f


RULE = Rule(name="event_loop", summary="event loops blocked by a long synchronous callback (Node.js, asyncio)",
            evaluate=evaluate, reads=("threads",),
            severity="critical (blocked ≥ 1 s); warning (≥ 200 ms late, asyncio ≥ 0.4 s)", order=42)
