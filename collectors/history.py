"""The flight recorder's history: the window before the incident's start, cut from the ring.

What: the samples the flight recorder (``goldenhour record``) took of this host before the
incident and up to the capture: CPU, memory, PSI stall totals, paging, disks, TCP/UDP
counters and listen-queue drops, conntrack, descriptors, per-service cgroup counters,
the top processes and the processes that started and exited.
Why: by the time an incident is declared, the moment it began is minutes in the past; a
capture of the present cannot say when it started or what moved first. This can.
Window: from ``recorder.history_before_min`` (60) minutes before T0 to the capture, where T0
is the incident's start as the tracker gave it (the manifest's ``incident.started_at``: an
incident's creation or start time, an alert's ``startsAt``/``createdAt``, ``snapshot
--started-at``; docs/recorder.md lists each tracker's), else the trigger's time, else the capture's start. The
ring, the recorder's socket and the window's length come from the ``[recorder]`` config
(``path``, ``socket``, ``history_before_min``); the collector has no options of its own.
Produces: ``ring-slice.bin`` (the window's records exactly as stored, with their CRCs, plus
the segment headers and dictionary records needed to decode them; ``goldenhour history
--file`` reads it), ``history.jsonl`` (one decoded record per line, in recording order:
samples and the recorder's events, each with its sequence number, wall and monotonic time
and boot ID), ``summary.json`` (window, T0 and its source, sample count and interval,
gaps with their reasons, clock steps, boots, recorder restarts, records skipped as
corrupt or torn, processes started and exited, the recorder's state).
Overhead: reads a few segments of the ring file (about 1 MiB per 2 hours at the default
interval) and asks the recorder's socket twice with a 0.25 s timeout; it never waits for
the recorder. About 0.05 s of CPU for an hour's window (bench/README.md: recorder), so it runs
at normal CPU and I/O priority rather than the capture's low one: on a saturated host a niced
collector waited seconds for that CPU, and this is the evidence nothing else can replace.
It also tells the recorder a capture started, so the capture's own load is labelled in the
history.
Caveats: without a running recorder or a ring file the collector is ``skipped`` with that
reason (the report then says the pre-trigger window is unknown). Samples the recorder kept
only in memory (ring not writable) are included and marked ``memory_only``. A wall-clock
step backwards inside the window is listed under ``clock_steps``; records are always in
recording order.
"""
from __future__ import annotations

import time
from typing import Any

from agent.collector import Collector, Scope, Skip
from agent.incident import parse_iso


def t0_of(capture: dict[str, Any], now: float) -> tuple[float, str]:
    """(T0, where it came from): the incident's start, else the trigger, else the capture's start."""
    for key, source in (("incident_started_at", "incident start (tracker or --started-at)"),
                        ("trigger_at", "trigger time"), ("started_utc", "capture start")):
        t = parse_iso(capture.get(key))
        if t is not None:
            return t.timestamp(), source
    return now, "capture start"


def collect(ctx) -> None:
    from agent.priority import normal_priority
    from agent.recorder import window
    from agent.recorder.service import ask
    normal_priority()
    rec = ctx.capture.get("recorder") or {}
    ring_path = str(rec.get("ring") or "")
    sock = str(rec.get("socket") or "")
    before_s = float(rec.get("before_s", 3600))
    now = time.time()
    t0, t0_source = t0_of(ctx.capture, now)
    since = t0 - before_s
    until = now + 0.5
    marked = ask(sock, {"op": "mark", "incident": ctx.capture.get("incident", ""), "note": "capture started"},
                 timeout=0.25) if sock else None
    win = window.read(ring_path, since, until, socket_path=sock)
    if not win.entries:
        running = "the recorder answers on its socket" if win.recorder else (
            f"no recorder answers on {sock}" if sock else "no recorder socket configured")
        if win.error.startswith("no ring file") and not win.recorder:
            raise Skip(f"no flight recorder on this host ({win.error}; {running}): the minutes before the incident "
                       "were not recorded. Start one with `goldenhour record` (systemd unit goldenhour-recorder)")
        raise Skip(f"no flight-recorder samples between {window.iso(since)} and {window.iso(until)} "
                   f"({win.error or 'the ring holds none from then'}; {running})")
    cont = window.analyse_continuity(win, since, until)
    samples = win.samples
    if win.raw:
        ctx.path("ring-slice.bin").write_bytes(win.raw)
    with open(ctx.path("history.jsonl"), "wb") as fh:
        for e in win.entries:
            fh.write(e.line())
    mem_only = sum(1 for e in win.entries if e.memory_only)
    summary = {
        "window": {"since": window.iso(since), "until": window.iso(until), "t0": window.iso(t0),
                   "t0_source": t0_source, "before_s": before_s},
        "samples": len(samples), "events": len(win.events),
        "first_sample": window.iso(samples[0].wall) if samples else None,
        "last_sample": window.iso(samples[-1].wall) if samples else None,
        "interval_s": cont["interval_s"],
        "gaps": cont["gaps"], "clock_steps": cont["clock_steps"], "boots": cont["boots"],
        "restarts": cont["restarts"], "skipped_records": win.problems,
        "memory_only_records": mem_only, "journal_records": win.pending,
        "processes": window.processes_in(samples),
        "ring": win.ring or {"error": win.error},
        "recorder": win.recorder or {"running": False, "socket": sock},
        "capture_marked": bool(marked and marked.get("ok")),
        "files": {"ring-slice.bin": "raw records of the window (goldenhour history --file reads it)",
                  "history.jsonl": "decoded records, one per line, in recording order"},
    }
    ctx.write_json("summary.json", summary)
    ctx.note(samples=len(samples), gaps=len(cont["gaps"]), clock_steps=len(cont["clock_steps"]),
             t0=window.iso(t0), t0_source=t0_source, memory_only=mem_only)
    if win.error and mem_only:
        ctx.partial(f"the ring could not be read ({win.error}); {mem_only} samples came from the recorder's memory")
    elif win.problems:
        lost = sum(int(p.get("records", 0) or 0) for p in win.problems)
        ctx.note(skipped=f"{len(win.problems)} damaged stretch(es) of the ring skipped ({lost} records)")


COLLECTOR = Collector(
    name="history", summary="flight recorder: the host's samples from before the incident's start to the capture",
    scope=Scope.HOST, collect=collect, timeout_s=10, volatility=5)
