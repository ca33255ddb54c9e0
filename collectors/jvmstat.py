"""A JVM's own counters, read without attaching: GC, heap generations, safepoints, threads.

What: per JVM target, the HotSpot performance counters the JVM publishes in its hsperfdata
file (``/proc/PID/root/tmp/hsperfdata_<user>/<NSpid>``, a shared-memory file jstat reads),
read twice ``interval_s`` apart: each garbage collector's invocations and time (young and
full), every heap generation and space (used, capacity, max), metaspace, safepoints (count,
time, time to reach them), live and started threads, the last GC's cause; and the rates over
the window: GCs per second, the share of wall time spent in each collector and in
safepoints.
Why: a JVM thrashing in back-to-back full GCs looks busy and alive (its "VM Thread" burns the
CPU) while it serves nothing; the counters say so at once, and they need nothing from the
JVM: no attach, no signal, no thread, no descriptor. That makes them the evidence for a JVM
at its limits too, where ``threads``/``heap`` must not attach (``agent.preflight``).
Produces: ``jvmstat.json``: {pid, file, interval_s, vm {name, vendor, version, gc_policy,
args (redacted)}, collectors [{name, invocations, time_s, window {invocations, time_s,
share}}], generations [{name, used, capacity, max_capacity, spaces [...]}], heap {used,
capacity, max_capacity}, metaspace, safepoints {count, time_s, sync_time_s, window {count,
time_s, share}}, threads {live, daemon, peak, started}, gc {cause, last_cause}, window {gc_time_share,
full_gcs, young_gcs}, counters (every numeric counter of the second reading)}. Facts only:
the ``jvm_gc`` report rule judges them.
Overhead: two reads of a ~32 KiB file; nothing else. The JVM does not notice.
Caveats: absent when the JVM runs with ``-XX:-UsePerfData`` or ``-XX:+PerfDisableSharedMem``,
or when its /tmp is not reachable through /proc/PID/root. Some counters (space used) are
sampled by the JVM every 50 ms or updated at GC only. Command line and JVM arguments are
redacted (``agent/redact.py``).
Options: ``[collectors.jvmstat] interval_s`` (1.0; 0.5 in the quick profile): the window between the two
readings.
"""
from __future__ import annotations

import re
import time
from typing import Any

from agent.collector import Collector, Option, Scope, Skip, TargetGone
from agent.redact import RULES, Redactor
from collectors import _jvm


def _num(p: dict[str, Any], k: str) -> int | None:
    v = p.get(k)
    return v if isinstance(v, int) else None


def _freq(p: dict[str, Any]) -> int:
    return _num(p, "sun.os.hrt.frequency") or 1_000_000_000


def collectors_of(p: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for i in sorted({int(m.group(1)) for k in p if (m := re.fullmatch(r"sun\.gc\.collector\.(\d+)\.name", k))}):
        pre = f"sun.gc.collector.{i}."
        out.append({"index": i, "name": p.get(pre + "name"), "invocations": _num(p, pre + "invocations"),
                    "time_s": round((_num(p, pre + "time") or 0) / _freq(p), 6),
                    "last_entry_ticks": _num(p, pre + "lastEntryTime"),
                    "last_exit_ticks": _num(p, pre + "lastExitTime")})
    return out


def generations_of(p: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for g in sorted({int(m.group(1)) for k in p if (m := re.fullmatch(r"sun\.gc\.generation\.(\d+)\.name", k))}):
        pre = f"sun.gc.generation.{g}."
        spaces = []
        for s in range(_num(p, pre + "spaces") or 0):
            sp = f"{pre}space.{s}."
            spaces.append({"name": p.get(sp + "name"), "used": _num(p, sp + "used"),
                           "capacity": _num(p, sp + "capacity"), "max_capacity": _num(p, sp + "maxCapacity")})
        out.append({"index": g, "name": p.get(pre + "name"), "capacity": _num(p, pre + "capacity"),
                    "max_capacity": _num(p, pre + "maxCapacity"),
                    "used": sum(s["used"] or 0 for s in spaces) if spaces else None, "spaces": spaces})
    return out


def _command_line(red: Redactor, value: Any) -> str | None:
    """A command line the JVM publishes as one string, through the redactor as a command line (so that
    ``--password VALUE`` is redacted too, not only ``name=value``)."""
    return " ".join(red.argv(str(value or "").split())) or None


def summarize(p: dict[str, Any], red: Redactor) -> dict[str, Any]:
    """One reading: the counters that matter, named."""
    freq = _freq(p)
    gens = generations_of(p)
    return {
        "vm": {"name": p.get("java.property.java.vm.name"), "vendor": p.get("java.property.java.vm.vendor"),
               "version": p.get("java.property.java.vm.version"), "gc_policy": p.get("sun.gc.policy.name"),
               "args": _command_line(red, p.get("java.rt.vmArgs")),
               "command": _command_line(red, p.get("sun.rt.javaCommand"))},
        "collectors": collectors_of(p),
        "generations": gens,
        "heap": {"used": sum(g["used"] or 0 for g in gens), "capacity": sum(g["capacity"] or 0 for g in gens),
                 "max_capacity": sum(g["max_capacity"] or 0 for g in gens)} if gens else {},
        "metaspace": {"used": _num(p, "sun.gc.metaspace.used"), "capacity": _num(p, "sun.gc.metaspace.capacity"),
                      "max_capacity": _num(p, "sun.gc.metaspace.maxCapacity")},
        "safepoints": {"count": _num(p, "sun.rt.safepoints"),
                       "time_s": round((_num(p, "sun.rt.safepointTime") or 0) / freq, 6),
                       "sync_time_s": round((_num(p, "sun.rt.safepointSyncTime") or 0) / freq, 6)},
        "threads": {"live": _num(p, "java.threads.live"), "daemon": _num(p, "java.threads.daemon"),
                    "peak": _num(p, "java.threads.livePeak"), "started": _num(p, "java.threads.started")},
        "gc": {"cause": p.get("sun.gc.cause"), "last_cause": p.get("sun.gc.lastCause")},
    }


def window(a: dict[str, Any], b: dict[str, Any], wall_s: float) -> tuple[float, dict[str, Any]]:
    """(seconds between the readings, the GC and safepoint rates over them)."""
    freq = _freq(b)
    ta, tb = _num(a, "sun.os.hrt.ticks"), _num(b, "sun.os.hrt.ticks")
    dt = (tb - ta) / freq if ta and tb and tb > ta else wall_s
    out: dict[str, Any] = {"seconds": round(dt, 3)}
    if dt <= 0:
        return dt, out
    total = 0.0
    per: dict[int, dict[str, Any]] = {}
    before = {c["index"]: c for c in collectors_of(a)}
    for cb in collectors_of(b):
        ca = before.get(cb["index"], {"invocations": 0, "time_s": 0.0})
        d_inv = (cb["invocations"] or 0) - (ca["invocations"] or 0)
        d_t = cb["time_s"] - ca["time_s"]
        total += d_t
        per[cb["index"]] = {"invocations": d_inv, "time_s": round(d_t, 6), "share": round(d_t / dt, 3)}
    out["collectors"] = per
    out["gc_time_s"] = round(total, 6)
    out["gc_time_share"] = round(total / dt, 3)
    names = {c["index"]: str(c["name"] or "") for c in collectors_of(b)}
    out["full_gcs"] = sum(v["invocations"] for i, v in per.items() if _is_full(names[i], i))
    out["young_gcs"] = sum(v["invocations"] for i, v in per.items() if not _is_full(names[i], i))
    sa, sb = _num(a, "sun.rt.safepointTime"), _num(b, "sun.rt.safepointTime")
    if sa is not None and sb is not None:
        out["safepoint_time_s"] = round((sb - sa) / freq, 6)
        out["safepoint_share"] = round((sb - sa) / freq / dt, 3)
        out["safepoints"] = (_num(b, "sun.rt.safepoints") or 0) - (_num(a, "sun.rt.safepoints") or 0)
    return dt, out


def _is_full(name: str, index: int) -> bool:
    """A full (old-generation) collector: HotSpot names it so ("Serial full collection pauses", "MSC",
    "G1 full collection pauses", "PSMarkSweep"); the second collector is the old one otherwise."""
    n = name.lower()
    if "young" in n or n in ("copy", "pscavenge", "parnew", "g1 incremental collections"):
        return False
    return "full" in n or "old" in n or n in ("msc", "psmarksweep", "marksweepcompact") or index == 1


def collect(ctx) -> None:
    t = ctx.target
    t.ensure_alive()
    path = _jvm.perfdata_path(t.pid, t.ns_pid)
    if not path:
        raise Skip(f"no hsperfdata file for this JVM under /proc/{t.pid}/root/tmp/hsperfdata_*/{t.ns_pid} "
                   "(-XX:-UsePerfData or -XX:+PerfDisableSharedMem, or its /tmp is unreachable)")
    interval = float(ctx.options.get("interval_s", 0.5 if ctx.capture.get("profile") == "quick" else 1.0))
    t0 = time.monotonic()
    a = _jvm.perfdata(t.pid, t.ns_pid)
    if a is None:
        t.ensure_alive()
        raise RuntimeError(f"{path} could not be read or is not an hsperfdata file")
    if interval > 0:
        time.sleep(max(0.0, min(interval, ctx.remaining() - 1)))
    b = _jvm.perfdata(t.pid, t.ns_pid)
    wall = time.monotonic() - t0
    if b is None:
        t.ensure_alive()
        raise TargetGone(f"process {t.pid}'s hsperfdata file vanished (the JVM exited?)")
    red = Redactor()
    doc: dict[str, Any] = {"pid": t.pid, "start_time": t.start_time, "file": path.split("/root", 1)[-1],
                           "read_at": time.time(), "interval_s": round(wall, 3), **summarize(b, red)}
    dt, win = window(a, b, wall)
    doc["window"] = win
    for c in doc["collectors"]:
        c["window"] = win.get("collectors", {}).get(c["index"])
    doc["safepoints"]["window"] = {k: win.get(k) for k in ("safepoints", "safepoint_time_s", "safepoint_share")
                                   if k in win}
    doc["counters"] = {k: v for k, v in sorted(b.items()) if isinstance(v, int)}
    ctx.write_json("jvmstat.json", doc)
    ctx.note(redaction={"count": red.count, "rules": RULES}, gc_time_share=win.get("gc_time_share"),
             full_gcs=win.get("full_gcs"), window_s=win.get("seconds"))
    t.ensure_alive()


OPTIONS = {
    "interval_s": Option(None, float, "Window between the two readings (unset: 1 s, 0.5 s in the quick profile)."),
}

COLLECTOR = Collector(
    name="jvmstat",
    summary="per JVM target: GC, heap generations, safepoints and threads from its hsperfdata counters "
            "(no attach), read twice for rates",
    scope=Scope.PROCESS, collect=collect, runtimes=frozenset({"jvm"}), timeout_s=15, volatility=12, options=OPTIONS)
