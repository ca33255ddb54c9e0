"""A JVM spending its time in garbage collection: back-to-back full GCs, a heap too small for what it holds.

Reads ``jvmstat.json`` (the JVM's own hsperfdata counters, read twice ``interval_s`` apart
without attaching). Triggers: the collectors' time over the window is 50 % of wall time or
more — critical: the JVM does almost nothing but collect; its "VM Thread" holds the CPU and
every application thread stops at each collection (a full GC stops the world); 20 % or more —
warning. The explanation gives full and young collections in the window, the old
generation's fill (a full old generation after a full GC means the live data does not fit),
the last GC cause and the JVM's cgroup.
Evidence: ``jvmstat.json`` (window and generations), and ``threads.json`` when a thread dump
names the VM Thread.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterator

from agent.report.model import CRITICAL, WARNING, Evidence, Finding
from agent.report.rules import Rule
from agent.report.rules._util import human_bytes, num, plural, target_label

CRIT, WARN = 0.5, 0.2


def _cgroup_of(b, pid: int) -> str:
    doc = b.json("collectors/cgroups/cgroups.json")
    for t in (doc.get("targets") if isinstance(doc, dict) else None) or []:
        if isinstance(t, dict) and t.get("pid") == pid and isinstance(t.get("cgroups"), dict):
            cgs = t["cgroups"]
            for label in ("memory", "v2", "cpu", "pids"):
                if cgs.get(label):
                    return f"{label}:{cgs[label]}"
    return ""


def evaluate(b) -> Iterator[Finding]:
    for rel in b.files("collectors/jvmstat/*/jvmstat.json"):
        d = b.json(rel)
        if not isinstance(d, dict):
            continue
        w = d.get("window") if isinstance(d.get("window"), dict) else {}
        share, secs = num(w.get("gc_time_share")), num(w.get("seconds"))
        if share is None or not secs or share < WARN:
            continue
        pid = int(rel.split("/")[2])
        who = target_label(b, pid, "java")
        full, young = int(num(w.get("full_gcs")) or 0), int(num(w.get("young_gcs")) or 0)
        old: dict[str, Any] = next((g for g in d.get("generations") or [] if isinstance(g, dict)
                                    and g.get("name") in ("old", "tenured")), {})
        used, capa = num(old.get("used")), num(old.get("max_capacity") or old.get("capacity"))
        fill = used / capa if used is not None and capa else None
        cg = _cgroup_of(b, pid)
        sev = CRITICAL if share >= CRIT else WARNING
        gc = d.get("gc") if isinstance(d.get("gc"), dict) else {}
        expl = (f"Over the {secs:.1f} s sampled from its own counters, {who} spent {share:.0%} of the time in "
                f"garbage collection ({plural(full, 'full collection')}, {plural(young, 'young collection')})")
        if fill is not None:
            expl += (f"; its old generation holds {human_bytes(used)} of {human_bytes(capa)} ({fill:.0%})"
                     + (" even right after full collections: the live data does not fit the heap" if full and
                        fill >= 0.85 else ""))
        expl += (f". Last GC cause: {gc.get('last_cause') or '?'}. "
                 "During each collection every application thread is stopped, so requests stall while the CPU "
                 "looks busy (the JVM's \"VM Thread\" holds it). Raise the heap (-Xmx) if the memory limit allows, "
                 "or find what holds the memory (a heap dump, when the JVM can afford one).")
        if cg:
            expl += f" The JVM runs in cgroup {cg}."
        t = num(d.get("read_at"))
        vm = d.get("vm") if isinstance(d.get("vm"), dict) else {}
        yield Finding(sev, f"{who} spends {share:.0%} of its time in garbage collection"
                      + (f" ({plural(full, 'full GC')} in {secs:.0f} s)" if full else ""),
                      expl, rule="jvm_gc", host=b.host,
                      time=datetime.fromtimestamp(t - secs, timezone.utc) if t else None,
                      evidence=[Evidence(b.host, rel, record=f"pid {pid} window",
                                         excerpt=f"gc_time_share {share}, full_gcs {full}, young_gcs {young}, "
                                                 f"seconds {secs}; old {used} of {capa}; gc policy "
                                                 f"{vm.get('gc_policy')}")],
                      data={"pid": pid, "gc_time_share": share, "full_gcs": full, "young_gcs": young,
                            "old_fill": fill, "cgroup": cg or None})


RULE = Rule(name="jvm_gc", summary="a JVM spending most of its time in garbage collection (from its hsperfdata "
                                   "counters)", evaluate=evaluate, reads=("jvmstat", "cgroups"),
            severity="critical (GC ≥ 50 % of the time); warning (≥ 20 %)", order=21)
