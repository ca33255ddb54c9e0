"""Targets held by their own cgroups' limits: CPU quota throttling, the pids limit, the memory limit.

Reads ``cgroups.json`` (the ``cgroups`` collector: every cgroup on each target's path to the root,
v1 and v2, read twice ``interval_s`` apart) and names, for each target, the cgroup whose limit
binds it (limits nest: the tightest anywhere on the chain binds). Targets in the same cgroup
share one finding; a unit of the incident with no target left in it gets its own.

Triggers:
- **CPU quota**: in the sampling window the cgroup was throttled in 50 % or more of its
  scheduling periods (at least 3 periods: the quick profile samples 0.5 s) — critical: the
  threads were runnable and did not run, latency no host CPU graph shows; 20 % or more —
  warning; with no window (a single reading), 20 % of all periods since the cgroup was made
  (at least 100) — warning. The explanation compares the quota with the CPU the cgroup used
  over the window.
- **pids limit**: tasks at ``pids.max`` (no room left), or forks refused by the limit during
  the window (``pids.events`` max rising) — critical: new threads and processes fail
  ("unable to create native thread", EAGAIN); 90 % of ``pids.max`` or forks refused at some
  time before — warning. Thread-creation failures found in the captured logs and the kernel's
  "fork rejected by pids controller" are cited.
- **memory limit**: OOM kills in the cgroup during the window (v2 ``memory.events``
  oom/oom_kill, v1 ``memory.oom_control`` oom_kill), the cgroup under OOM (v1 ``under_oom``),
  or the limit hit during the window (v2 ``memory.events`` max, v1 ``failcnt`` rising) with
  the working set at 80 % of the limit or more — critical: the kernel reclaims on every
  allocation and the OOM killer is next; a working set at 90 % of the limit, or OOM kills
  counted before the window — warning.
Evidence: the cgroup's record in ``cgroups.json`` (``cgroups <hierarchy>:<path>``) and the
raw file the kernel wrote (``collectors/cgroups/raw/...``); for pids, the log lines.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Iterator

from agent.report.model import CRITICAL, WARNING, Evidence, Finding
from agent.report.rules import Rule
from agent.report.rules._util import (cap, dmesg_evidence, dmesg_records, human_bytes, join_names, num, plural,
                                      target_label)

CG = "collectors/cgroups/cgroups.json"
THROTTLE_CRIT, THROTTLE_WARN, MIN_PERIODS = 0.5, 0.2, 3
PIDS_WARN = 0.9
MEM_WARN, MEM_CRIT_WITH_EVENTS = 0.9, 0.8
THREAD_FAIL = re.compile(
    r"unable to create (?:new )?native thread|pthread_create failed|failed to create new OS thread|"
    r"can't start new thread|fork rejected by pids controller|fork: retry: Resource temporarily unavailable|"
    r"(?:fork|clone|spawn)\S*:? (?:\S+ )?(?:EAGAIN|Resource temporarily unavailable)", re.I)


def _when(doc: dict[str, Any]) -> datetime | None:
    t = num(doc.get("read_at"))
    return datetime.fromtimestamp(t - (num(doc.get("interval_s")) or 0), timezone.utc) if t else None


def _raw(rec: dict[str, Any], name: str) -> str:
    return f"collectors/cgroups/raw/{rec.get('hierarchy')}{rec.get('path') if rec.get('path') != '/' else ''}/{name}"


def _groups(doc: dict[str, Any]) -> list[tuple[list[dict[str, Any]], dict[str, list[str]]]]:
    """(members, chains): targets grouped by identical chains, then units no target is in."""
    out: dict[str, tuple[list[dict[str, Any]], dict[str, list[str]]]] = {}
    for t in doc.get("targets") or []:
        if not isinstance(t, dict) or not isinstance(t.get("chains"), dict):
            continue
        key = repr(sorted(t["chains"].items()))
        out.setdefault(key, ([], t["chains"]))[0].append(t)
    covered = {p for members, chains in out.values() for keys in chains.values() for p in keys}
    for u in doc.get("units") or []:
        if isinstance(u, dict) and isinstance(u.get("chains"), dict) and u["chains"]:
            own = [keys[0] for keys in u["chains"].values() if keys]
            if not any(k in covered for k in own):
                out.setdefault("unit:" + str(u.get("unit")), ([u], u["chains"]))
    return list(out.values())


def _who(b, members: list[dict[str, Any]]) -> str:
    names = []
    for m in members:
        if "pid" in m:
            names.append(target_label(b, int(m["pid"]), str(m.get("comm") or "")))
        else:
            names.append(f"unit {m.get('unit')}")
    return join_names(names, 3)


def _chain_records(doc: dict[str, Any], chains: dict[str, list[str]], section: str) -> list[dict[str, Any]]:
    cgs = doc.get("cgroups") or {}
    out, seen = [], set()
    for keys in chains.values():
        for k in keys:
            rec = cgs.get(k)
            if isinstance(rec, dict) and rec.get("exists") and isinstance(rec.get(section), dict) and k not in seen:
                seen.add(k)
                out.append({**rec, "_key": k})
    return out


def _usage(doc: dict[str, Any], chains: dict[str, list[str]], path: str) -> float | None:
    """CPU used (cores) over the window by the cgroup at ``path`` (v2, or v1's cpuacct tree)."""
    for rec in _chain_records(doc, chains, "cpu"):
        if rec.get("path") == path and isinstance(rec.get("rates"), dict):
            u = num(rec["rates"].get("cpu_usage_cores"))
            if u is not None:
                return u
    return None


def _cpu(b, doc, members, chains, when) -> Iterator[Finding]:
    best = None
    for rec in _chain_records(doc, chains, "cpu"):
        c, r = rec["cpu"], rec.get("rates") or {}
        periods, thr = num(r.get("periods")), num(r.get("throttled_periods"))
        if periods is not None and periods >= MIN_PERIODS and thr is not None:
            share, window = thr / periods, True
        else:
            tp, tt = num(c.get("nr_periods")), num(c.get("nr_throttled"))
            if not tp or tp < 100 or tt is None:
                continue
            share, window = tt / tp, False
        sev = (CRITICAL if window and share >= THROTTLE_CRIT else
               WARNING if share >= THROTTLE_WARN else None)
        if sev and (best is None or (sev == CRITICAL, share) > (best[0] == CRITICAL, best[1])):
            best = (sev, share, window, rec)
    if not best:
        return
    sev, share, window, rec = best
    c, r = rec["cpu"], rec.get("rates") or {}
    quota = (num(c.get("quota_us")) or 0) / (num(c.get("period_us")) or 100000) if c.get("quota_us") else None
    used = _usage(doc, chains, rec["path"])
    who = _who(b, members)
    where = f"cgroup {rec['path']}" + (f" ({rec['hierarchy']})" if rec.get("version") == 1 else "")
    quota_txt = f"{quota:.2f} CPUs" if quota is not None else "its CPU quota"
    if window:
        expl = (f"In the {num(r.get('interval_s')) or 0:.1f} s sampled, {where} used up its quota of {quota_txt} "
                f"before the end of {int(num(r.get('throttled_periods')) or 0)} of {int(num(r.get('periods')) or 0)} "
                f"scheduling periods ({share:.0%}); its threads were runnable and waited "
                f"{num(r.get('throttled_s_per_s')) or 0:.2f} s per second without running")
        expl += (f", while it used {used:.2f} CPUs" if used is not None else "") + ". "
    else:
        expl = (f"Since it was created, {where} hit its quota of {quota_txt} in {int(num(c.get('nr_throttled')))} "
                f"of {int(num(c.get('nr_periods')))} periods ({share:.0%}). ")
    expl += (f"{who} {'is' if len(members) == 1 else 'are'} in it: every request waits out the rest of the period "
             "(100 ms by default) each time the quota runs out, latency that no host CPU graph shows (the host may "
             "be idle). Raise the quota (cpu.max / CPUQuota= / the container's CPU limit) or reduce the work; a "
             "quota below one CPU throttles even a single busy thread.")
    raw = "cpu.stat"
    yield Finding(sev, f"{who} CPU-throttled by {where}: {share:.0%} of periods"
                  + (f" at a quota of {quota:.2f} CPUs" if quota is not None else ""),
                  expl, rule="cgroup_limits", host=b.host, time=when,
                  evidence=[Evidence(b.host, CG, record=f"cgroups {rec['_key']}",
                                     excerpt=f"quota_us {c.get('quota_us')}, period_us {c.get('period_us')}, "
                                             f"nr_periods {c.get('nr_periods')}, nr_throttled {c.get('nr_throttled')}"
                                             f"; window: {r}"),
                            Evidence(b.host, _raw(rec, raw), excerpt="the kernel's cpu.stat (second reading)")],
                  data={"limit": "cpu", "cgroup": rec["_key"], "throttled_share": round(share, 3),
                        "window": window, "quota_cores": quota, "usage_cores": used,
                        "pids": [m.get("pid") for m in members if "pid" in m]})


PIDS_REJECTED = re.compile(r"fork rejected by pids controller in (\S+)")


def _log_failures(b, paths: set[str]) -> list[Evidence]:
    """Thread-creation failures in the captured logs, and the kernel's "fork rejected by pids controller
    in PATH" for a cgroup in ``paths`` (the kernel names the cgroup; other cgroups' are not this target's)."""
    ev: list[Evidence] = []
    for rel in b.files("collectors/logs/files/*") + b.files("collectors/logs/journal.txt"):
        text = b.text(rel) or ""
        first = b.first_line(rel)
        for i, line in enumerate(text.splitlines()):
            if THREAD_FAIL.search(line):
                ev.append(Evidence(b.host, rel, line=first + i, excerpt=line.strip()[:300]))
    for r in dmesg_records(b):
        msg = str(r.get("message", ""))
        m = PIDS_REJECTED.search(msg)
        if (m and m.group(1) in paths) or (not m and THREAD_FAIL.search(msg)):
            ev.append(dmesg_evidence(b, r))
    return ev


def _pids(b, doc, members, chains, when) -> Iterator[Finding]:
    best = None
    refused_now = refused_ever = 0
    for rec in _chain_records(doc, chains, "pids"):
        p, r = rec["pids"], rec.get("rates") or {}
        refused_now += int(num(r.get("pids_refused")) or 0)
        refused_ever += int(num((p.get("events") or {}).get("max")) or 0)
        mx, cur = num(p.get("max")), num(p.get("current"))
        if mx is None or cur is None or mx <= 0:
            continue
        if best is None or mx - cur < best[0]:
            best = (mx - cur, rec)
    if best is None:
        return
    room, rec = best
    p = rec["pids"]
    mx, cur = int(num(p["max"])), int(num(p["current"]))
    ratio = cur / mx
    if room <= 0 or refused_now > 0:
        sev = CRITICAL
    elif ratio >= PIDS_WARN or refused_ever > 0:
        sev = WARNING
    else:
        return
    who = _who(b, members)
    where = f"cgroup {rec['path']}" + (f" ({rec['hierarchy']})" if rec.get("version") == 1 else "")
    logs = _log_failures(b, {k.split(":", 1)[1] for keys in chains.values() for k in keys})
    interval = num((rec.get("rates") or {}).get("interval_s")) or 0
    refused = ""
    if refused_now:
        refused = (f"The limit refused {plural(refused_now, 'fork')} in the {interval:.1f} s sampled and "
                   f"{plural(refused_ever, 'fork')} since it was set (pids.events max). ")
    elif refused_ever:
        refused = f"It refused {plural(refused_ever, 'fork')} since it was set (pids.events max). "
    expl = (f"{where} has {cur} of its {mx} tasks (pids.max; threads count, each is a task)"
            + (": no room for one more" if room <= 0 else f": room for {room} more") + ". " + refused
            + f"{who} {'is' if len(members) == 1 else 'are'} in it. At the limit every new thread or process fails "
            "with EAGAIN: a JVM cannot start a thread (OutOfMemoryError: unable to create native thread) and may "
            "exit, thread pools stop growing, requests that need a thread hang or fail, while the process looks "
            "alive. goldenhour's thread and heap dumps do not attach to a target at this limit (the manifest's "
            "preflight notes say what was skipped and why). Raise "
            "pids.max (TasksMax= in systemd, the container's pids limit) or find what piles up threads (the "
            "thread dumps and kernel stacks of the process collector).")
    if logs:
        expl += f" The captured logs show {plural(len(logs), 'thread-creation failure')}."
    title = f"{who} {'at' if room <= 0 else 'near'} the pids limit of {where}: {cur} of {mx} tasks"
    if refused_now:
        title += f", {plural(refused_now, 'fork')} refused"
    yield Finding(sev, title, expl, rule="cgroup_limits", host=b.host, time=when,
                  evidence=[Evidence(b.host, CG, record=f"cgroups {rec['_key']}",
                                     excerpt=f"pids.current {cur}, pids.max {mx}, events {p.get('events')}"),
                            Evidence(b.host, _raw(rec, "pids.current"), excerpt=str(cur))] + cap(logs, 4),
                  data={"limit": "pids", "cgroup": rec["_key"], "current": cur, "max": mx,
                        "refused_in_window": refused_now, "refused_total": refused_ever,
                        "log_failures": len(logs), "pids": [m.get("pid") for m in members if "pid" in m]})


def _memory(b, doc, members, chains, when) -> Iterator[Finding]:
    best = None
    for rec in _chain_records(doc, chains, "memory"):
        m, r = rec["memory"], rec.get("rates") or {}
        mx = num(m.get("max_bytes"))
        used = num(m.get("working_set_bytes", m.get("current_bytes")))
        ratio = used / mx if mx and used is not None else None
        ev = r.get("memory_events") or {}
        # processes killed in the window (v2 oom_kill, v1 oom_control's oom_kill), else OOM events without a kill
        oom_now = int(num(ev.get("oom_kill")) or 0) + int(num(r.get("memory_oom_kill")) or 0) \
            or int(num(ev.get("oom")) or 0)
        hits_now = int(num(ev.get("max")) or 0) + int(num(r.get("memory_failcnt")) or 0)
        under = bool((m.get("oom_control") or {}).get("under_oom"))
        oom_ever = int(num((m.get("events") or {}).get("oom_kill"))
                       or num((m.get("oom_control") or {}).get("oom_kill")) or 0)
        if oom_now or under or (hits_now and ratio is not None and ratio >= MEM_CRIT_WITH_EVENTS):
            sev = CRITICAL
        elif (ratio is not None and ratio >= MEM_WARN) or oom_ever:
            sev = WARNING
        else:
            continue
        score = (sev == CRITICAL, oom_now, hits_now, ratio or 0)
        if best is None or score > best[0]:
            best = (score, sev, rec, ratio, oom_now, hits_now, under, oom_ever)
    if not best:
        return
    _, sev, rec, ratio, oom_now, hits_now, under, oom_ever = best
    m, r = rec["memory"], rec.get("rates") or {}
    who = _who(b, members)
    where = f"cgroup {rec['path']}" + (f" ({rec['hierarchy']})" if rec.get("version") == 1 else "")
    mx = num(m.get("max_bytes"))
    ws, cur = num(m.get("working_set_bytes")), num(m.get("current_bytes"))
    interval = num(r.get("interval_s")) or 0
    parts = []
    if mx:
        parts.append(f"{where} uses {human_bytes(cur)} of its {human_bytes(mx)} memory limit"
                     + (f", {human_bytes(ws)} of it working set ({ratio:.0%}; the rest is page cache the kernel can "
                        "drop)" if ws is not None and ratio is not None else ""))
    if oom_now:
        parts.append(f"the OOM killer acted in it ({plural(oom_now, 'kill')}) in the {interval:.1f} s sampled")
    if under:
        parts.append("it is under OOM right now (memory.oom_control under_oom 1)")
    if hits_now:
        parts.append(f"it hit its limit {plural(hits_now, 'time')} in the {interval:.1f} s sampled "
                     "(memory.events max / memory.failcnt): each time the kernel reclaimed before it could allocate")
    if oom_ever and not oom_now:
        parts.append(f"{plural(oom_ever, 'OOM kill')} happened in it before")
    expl = "; ".join(parts) + f". {who} {'is' if len(members) == 1 else 'are'} in it. "
    expl += ("Near its limit a cgroup's processes stall in reclaim on every allocation (latency), then the OOM "
             "killer ends one of them. Raise the limit (memory.max / MemoryMax= / the container's limit) or find "
             "what grows (the heap dump, jvmstat, the process collector's memory figures).")
    title = f"{who} {'at' if sev == CRITICAL else 'near'} the memory limit of {where}: "
    title += f"{ratio:.0%} of {human_bytes(mx)} in use" if ratio is not None else "OOM kills"
    if oom_now:
        title += f", {plural(oom_now, 'OOM kill')}"
    elif hits_now:
        title += f", limit hit {plural(hits_now, 'time')} in {interval:.0f} s"
    yield Finding(sev, title, expl, rule="cgroup_limits", host=b.host, time=when,
                  evidence=[Evidence(b.host, CG, record=f"cgroups {rec['_key']}",
                                     excerpt=f"current {cur}, working set {ws}, max {mx}, events "
                                             f"{m.get('events') or m.get('oom_control')}, failcnt {m.get('failcnt')}; "
                                             f"window {r}"),
                            Evidence(b.host, _raw(rec, "memory.events" if rec.get("version") == 2
                                                  else "memory.usage_in_bytes"))],
                  data={"limit": "memory", "cgroup": rec["_key"], "ratio": ratio, "oom_in_window": oom_now,
                        "limit_hits_in_window": hits_now, "pids": [x.get("pid") for x in members if "pid" in x]})


def evaluate(b) -> Iterator[Finding]:
    doc = b.json(CG)
    if not isinstance(doc, dict):
        return
    when = _when(doc)
    for members, chains in _groups(doc):
        yield from _pids(b, doc, members, chains, when)
        yield from _cpu(b, doc, members, chains, when)
        yield from _memory(b, doc, members, chains, when)


RULE = Rule(name="cgroup_limits",
            summary="targets held by their own cgroups' limits: CPU quota throttling, pids.max, the memory limit",
            evaluate=evaluate, reads=("cgroups", "logs", "dmesg"),
            severity="critical (throttled ≥ 50 % of periods, at pids.max or forks refused, OOM or limit hits near "
                     "the limit); warning (throttled ≥ 20 %, pids ≥ 90 %, memory ≥ 90 %)", order=20)
