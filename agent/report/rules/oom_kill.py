"""OOM kills: the kernel killed a process because memory ran out.

Triggers: a kernel message ``Out of memory: Killed process PID (COMM)`` or
``Memory cgroup out of memory: Killed process PID (COMM)`` in ``dmesg.json``
(with the ``oom-kill:constraint=...`` line for the cgroup, ``COMM invoked
oom-killer`` for the process that asked for memory, ``oom_reaper: reaped``);
kills recorded by the ``oomkill`` eBPF collector; and, when the kernel messages
are gone, the ``oom_kill`` counter of ``/proc/vmstat`` and the cgroups' OOM kill
counts (``memory.events`` on cgroup v2, ``memory.oom_control`` on v1) from ``host.json``.
Severity: critical for each process killed (grouped by command name); warning for
kill counters without the messages that name the victim.
Evidence: the dmesg records (``dmesg.txt`` line, ``seq``), the eBPF event, the
``host.json`` counter.
"""
from __future__ import annotations

import re
from typing import Any, Iterator

from agent.report.model import CRITICAL, WARNING, Evidence, Finding, parse_iso
from agent.report.rules import Rule
from agent.report.rules._util import (cap, dmesg_evidence, dmesg_records, human_bytes, join_names, num,
                                      plural, record_time)

KILLED = re.compile(r"(?P<memcg>Memory cgroup )?[Oo]ut of memory(?: \(oom_kill_allocating_task\))?: "
                    r"Kill(?:ed)? process (?P<pid>\d+) \((?P<comm>.*?)\)(?P<rest>.*)")
KV = re.compile(r"([a-z_-]+):(-?\d+)kB")
CONSTRAINT = re.compile(r"oom-kill:(?P<fields>.*)")
INVOKED = re.compile(r"(?P<comm>.+?) invoked oom-killer: (?P<rest>.*)")
REAPED = re.compile(r"oom_reaper: reaped process (?P<pid>\d+) \((?P<comm>.*?)\)")


def _fields(text: str) -> dict[str, str]:
    out = {}
    for part in text.split(","):
        k, sep, v = part.partition("=")
        if sep:
            out[k.strip()] = v.strip()
    return out


def _kills(b) -> list[dict[str, Any]]:
    recs = dmesg_records(b)
    kills = []
    for i, r in enumerate(recs):
        msg = str(r.get("message", ""))
        m = KILLED.search(msg)
        if not m:
            continue
        sizes = {k: int(v) * 1024 for k, v in KV.findall(m.group("rest"))}
        k: dict[str, Any] = {"pid": int(m.group("pid")), "comm": m.group("comm"), "record": r, "sizes": sizes,
                             "memcg": bool(m.group("memcg")), "related": []}
        for j in range(i - 1, max(-1, i - 400), -1):     # the lines the kernel printed before it
            pm = str(recs[j].get("message", ""))
            c = CONSTRAINT.search(pm)
            if c and "constraint" not in k:
                f = _fields(c.group("fields"))
                if f.get("pid") in (None, str(k["pid"])):
                    k["constraint"] = f
                    k["related"].append(recs[j])
                continue
            inv = INVOKED.search(pm)
            if inv:
                k["invoker"] = inv.group("comm")
                k["related"].append(recs[j])
                break
            if KILLED.search(pm):
                break
        for j in range(i + 1, min(len(recs), i + 50)):
            rm = REAPED.search(str(recs[j].get("message", "")))
            if rm and int(rm.group("pid")) == k["pid"]:
                k["related"].append(recs[j])
                break
        kills.append(k)
    return kills


def _memcg(k: dict[str, Any]) -> str:
    """The memory cgroup whose limit a kill enforced ("" for the host's memory running out)."""
    c = k.get("constraint") or {}
    if k["memcg"] or c.get("constraint") == "CONSTRAINT_MEMCG":
        return c.get("oom_memcg") or c.get("task_memcg") or "?"
    return ""


def _ebpf_kills(b) -> list[dict[str, Any]]:
    out = []
    for rel in b.files("collectors/oomkill/*.json"):
        data = b.json(rel)
        events = data.get("events") or data.get("records") or data.get("kills") if isinstance(data, dict) else data
        for e in events if isinstance(events, list) else []:
            if isinstance(e, dict):
                out.append({"file": rel, **e})
    return out


def evaluate(b) -> Iterator[Finding]:
    kills = _kills(b)
    by_comm: dict[str, list[dict[str, Any]]] = {}
    for k in kills:
        by_comm.setdefault(k["comm"], []).append(k)
    for comm, ks in by_comm.items():
        pids = [str(k["pid"]) for k in ks]
        first = ks[0]
        scope_txt = []
        for k in ks:
            c = k.get("constraint") or {}
            if k["memcg"] or c.get("constraint") == "CONSTRAINT_MEMCG":
                scope_txt.append(f"the memory limit of cgroup {c.get('oom_memcg') or c.get('task_memcg') or '?'}")
            else:
                scope_txt.append("the host's memory")
        rss = [k["sizes"].get("anon-rss", 0) + k["sizes"].get("file-rss", 0) + k["sizes"].get("shmem-rss", 0)
               for k in ks]
        title = (f"OOM killer killed {comm} (pid {pids[0]})" if len(ks) == 1
                 else f"OOM killer killed {comm} {len(ks)} times (pids {join_names(pids)})")
        invokers = sorted({k["invoker"] for k in ks if k.get("invoker")})
        expl = (f"The kernel ran out of {sorted(set(scope_txt))[0] if len(set(scope_txt)) == 1 else 'memory'} and "
                f"killed {comm}" + (f" {len(ks)} times" if len(ks) > 1 else "")
                + f"; the victim held {human_bytes(max(rss))} resident"
                + (f" (total-vm {human_bytes(first['sizes'].get('total-vm'))})"
                   if first["sizes"].get("total-vm") else "")
                + ". " + (f"The allocation that triggered it came from {join_names(invokers)}. " if invokers else "")
                + "Whatever the process held in memory and its connections were lost at that moment; look at "
                  "what grew just before (the timeline) and at the memory limits.")
        ev = []
        for k in ks:     # in the order the kernel printed them
            recs = sorted([k["record"]] + k["related"], key=lambda r: r.get("seq", 0))
            ev.extend(dmesg_evidence(b, r) for r in recs)
        yield Finding(CRITICAL, title, expl, rule="oom_kill", host=b.host, evidence=cap(ev, 8),
                      time=record_time(first["record"]), last_time=record_time(ks[-1]["record"]),
                      data={"comm": comm, "pids": [k["pid"] for k in ks], "rss_bytes": max(rss),
                            "memcg": sorted({m for k in ks for m in [_memcg(k)] if m}),
                            "global": any(not _memcg(k) for k in ks),
                            "task_memcg": sorted({(k.get("constraint") or {}).get("task_memcg") or "" for k in ks}
                                                 - {""})})

    seen_pids = {k["pid"] for k in kills}
    extra = [e for e in _ebpf_kills(b) if num(e.get("pid")) is None or int(num(e.get("pid")) or 0) not in seen_pids]
    if extra:
        comms = sorted({str(e.get("comm") or e.get("victim_comm") or e.get("tcomm") or "?") for e in extra})
        yield Finding(CRITICAL, f"OOM killer killed {join_names(comms)} during the probe window",
                      "The oomkill eBPF probe saw the kernel kill "
                      f"{plural(len(extra), 'process', 'processes')} for lack of memory while the capture ran.",
                      rule="oom_kill", host=b.host,
                      evidence=cap([Evidence(b.host, e["file"], record=f"pid {e.get('pid')}",
                                             excerpt=str({k: v for k, v in e.items() if k != 'file'})[:300])
                                    for e in extra]),
                      time=parse_iso(extra[0].get("time")))

    if not kills and not extra:
        host = b.json("collectors/host/host.json")
        if isinstance(host, dict):
            n = num((host.get("vmstat") or {}).get("oom_kill"))
            if n:
                yield Finding(WARNING, f"{int(n)} OOM kills since boot, but no kernel message names the victim",
                              "/proc/vmstat counts OOM kills since the host booted; the kernel messages that "
                              "would say which process was killed, and when, are no longer in the ring buffer "
                              "(or dmesg was not captured). Look in the journal or syslog.",
                              rule="oom_kill", host=b.host,
                              evidence=[Evidence(b.host, "collectors/host/host.json", record="vmstat.oom_kill",
                                                 excerpt=f"oom_kill {int(n)}")])
            for cg in host.get("cgroups") or []:
                if not isinstance(cg, dict):
                    continue
                events = cg.get("memory.events") if isinstance(cg.get("memory.events"), dict) else {}
                ctl = cg.get("memory.oom_control") if isinstance(cg.get("memory.oom_control"), dict) else {}
                kills = num(cg.get("oom_kills")) or num(events.get("oom_kill")) or num(ctl.get("oom_kill"))
                if kills:
                    src = "memory.events" if events.get("oom_kill") else "memory.oom_control" if ctl else "oom_kills"
                    yield Finding(WARNING, f"cgroup {cg.get('path')} had {int(kills)} OOM kills",
                                  "The cgroup's memory controller counts processes killed because the cgroup reached "
                                  "its memory limit (memory.max, or memory.limit_in_bytes on cgroup v1); the kernel "
                                  "messages naming them are gone or were not captured.",
                                  rule="oom_kill", host=b.host,
                                  evidence=[Evidence(b.host, "collectors/host/host.json",
                                                     record=f"cgroups {cg.get('path')} {src}",
                                                     excerpt=f"oom_kill {int(kills)}"
                                                     + (f", memory limit {human_bytes(num(cg.get('memory_max_bytes')))}"
                                                        if num(cg.get("memory_max_bytes")) else ""))])


RULE = Rule(name="oom_kill", summary="processes killed by the kernel's OOM killer", evaluate=evaluate,
            reads=("dmesg", "oomkill", "host"), severity="critical (a kill), warning (counters only)", order=10)
