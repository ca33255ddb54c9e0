"""Host resources near exhaustion: memory, swap, disk space and inodes, cgroup limits, load.

Triggers (``host.json``): ``MemAvailable`` under 10 % of ``MemTotal`` (warning; under
3 % critical); swap more than 50 % used (warning); a filesystem at 90 % of its space
or inodes (warning; 98 % critical: writes fail with ENOSPC, logs stop, databases
stop); a cgroup at 90 % of its memory limit, or CPU-throttled in 20 % or more of its
scheduling periods (warning); a 1-minute load average above twice the CPU count (warning).
Evidence: the ``host.json`` fields (memory, mounts entry, cgroup, load).
"""
from __future__ import annotations

from typing import Iterator

from agent.report.model import CRITICAL, WARNING, Evidence, Finding
from agent.report.rules import Rule
from agent.report.rules._util import human_bytes, num

HOST = "collectors/host/host.json"


def evaluate(b) -> Iterator[Finding]:
    h = b.json(HOST)
    if not isinstance(h, dict):
        return
    mem = h.get("memory") or {}
    total, avail = num(mem.get("MemTotal")), num(mem.get("MemAvailable"))
    if total and avail is not None and avail / total < 0.10:
        r = avail / total
        yield Finding(CRITICAL if r < 0.03 else WARNING,
                      f"Memory nearly exhausted: {human_bytes(avail)} available of {human_bytes(total)} ({r:.0%})",
                      "MemAvailable is the kernel's estimate of memory that can be given to programs without "
                      "swapping. This low, the kernel reclaims page cache hard (I/O and latency rise) and the OOM "
                      "killer is close.", rule="host_resources", host=b.host,
                      evidence=[Evidence(b.host, HOST, record="memory MemAvailable/MemTotal",
                                         excerpt=f"MemAvailable {int(avail)} of MemTotal {int(total)} bytes")])
    st, sf = num(mem.get("SwapTotal")), num(mem.get("SwapFree"))
    if st and sf is not None and (st - sf) / st > 0.5:
        yield Finding(WARNING, f"Swap {(st - sf) / st:.0%} used ({human_bytes(st - sf)} of {human_bytes(st)})",
                      "Memory was paged out to swap: touching it again costs disk reads, which shows as latency.",
                      rule="host_resources", host=b.host,
                      evidence=[Evidence(b.host, HOST, record="memory SwapTotal/SwapFree",
                                         excerpt=f"SwapTotal {int(st)}, SwapFree {int(sf)}")])
    for mnt in h.get("mounts") or []:
        if not isinstance(mnt, dict):
            continue
        for what, key in (("space", "used_percent"), ("inodes", "inodes_used_percent")):
            p = num(mnt.get(key))
            if p is None or p < 90 or (what == "inodes" and not mnt.get("inodes")):
                continue
            yield Finding(CRITICAL if p >= 98 else WARNING,
                          f"Filesystem {mnt.get('mount')} at {p:.0f} % of its {what}",
                          f"{mnt.get('mount')} ({mnt.get('device')}, {mnt.get('fstype')}) is {p:.0f} % full of "
                          f"{what}" + (f" ({human_bytes(num(mnt.get('avail_bytes')))} free)" if what == "space" else "")
                          + ". When it is full, writes fail with ENOSPC: logs stop, databases and queues stop "
                            "accepting data, and programs fail in odd ways.",
                          rule="host_resources", host=b.host,
                          evidence=[Evidence(b.host, HOST, record=f"mounts {mnt.get('mount')}",
                                             excerpt=f"{key} {p}, avail_bytes {mnt.get('avail_bytes')}, "
                                                     f"inodes_free {mnt.get('inodes_free')}")])
    for cg in h.get("cgroups") or []:
        if not isinstance(cg, dict) or cg.get("path") in (None, "/"):
            continue
        cur, mx = num(cg.get("memory_current_bytes")), num(cg.get("memory_max_bytes"))
        if cur is not None and mx and mx < 2**60 and cur / mx >= 0.9:
            yield Finding(WARNING, f"cgroup {cg.get('path')} at {cur / mx:.0%} of its memory limit "
                                   f"({human_bytes(cur)} of {human_bytes(mx)})",
                          "Processes in this cgroup are close to its memory limit: the kernel reclaims their page "
                          "cache first (slower I/O), then the OOM killer picks one of them.",
                          rule="host_resources", host=b.host,
                          evidence=[Evidence(b.host, HOST, record=f"cgroups {cg.get('path')}",
                                             excerpt=f"memory_current_bytes {int(cur)}, memory_max_bytes {int(mx)}")])
        thr = cg.get("throttled") if isinstance(cg.get("throttled"), dict) else {}
        periods, throttled = num(thr.get("nr_periods")), num(thr.get("nr_throttled"))
        if periods and throttled and periods >= 100 and throttled / periods >= 0.2:
            yield Finding(WARNING, f"cgroup {cg.get('path')} CPU-throttled in {throttled / periods:.0%} of periods",
                          f"The cgroup's CPU quota ({cg.get('cpu_quota_cores') or '?'} CPUs) was used up before the "
                          f"end of {int(throttled)} of {int(periods)} scheduling periods, so its threads waited "
                          f"{(num(thr.get('throttled_usec')) or 0) / 1e6:.1f} s in total without running: latency "
                          "that no CPU graph of the host shows. Raise the quota or reduce the work.",
                          rule="host_resources", host=b.host,
                          evidence=[Evidence(b.host, HOST, record=f"cgroups {cg.get('path')} throttled",
                                             excerpt=str(thr))])
    load = num((h.get("load") or {}).get("1m"))
    cpus = num((h.get("cpu") or {}).get("count"))
    if load is not None and cpus and load > 2 * cpus:
        yield Finding(WARNING, f"Load average {load:.1f} on {int(cpus)} CPUs",
                      "The 1-minute load average counts runnable tasks and tasks in uninterruptible sleep (D state). "
                      "Above twice the CPU count, work is queueing: for CPU (see CPU pressure and run-queue latency) "
                      "or for I/O (see D state and I/O pressure).", rule="host_resources", host=b.host,
                      evidence=[Evidence(b.host, HOST, record="load", excerpt=str(h.get("load")))])


RULE = Rule(name="host_resources", summary="memory, swap, disk space, inodes and load near their limits",
            evaluate=evaluate, reads=("host",), severity="critical (memory < 3 %, disk ≥ 98 %); warning", order=33)
