"""Memory, CPU and I/O pressure (PSI): time lost waiting for a resource.

Triggers: ``host.json`` ``psi`` (``/proc/pressure/*``), the larger of ``avg10`` and
``avg60`` (percent of wall time in the last 10 s / 60 s):
- memory: ``some`` ≥ 10 % warning, ``full`` ≥ 10 % critical (all non-idle tasks
  stalled on memory: reclaim, swap-in, refaults);
- I/O: ``some`` ≥ 20 % warning, ``full`` ≥ 20 % critical;
- CPU: ``some`` ≥ 25 % warning, ≥ 75 % critical (runnable tasks waiting for a CPU).
The three windows (10 s, 60 s, 300 s) say whether it was rising or easing.
Evidence: the ``host.json`` ``psi`` values.
"""
from __future__ import annotations

from typing import Iterator

from agent.report.model import CRITICAL, WARNING, Evidence, Finding
from agent.report.rules import Rule
from agent.report.rules._util import num

HOST = "collectors/host/host.json"
# resource -> (line, warning %, critical %) checks, in order of seriousness
CHECKS = {
    "memory": (("full", 10.0, 10.0), ("some", 10.0, None)),
    "io": (("full", 20.0, 20.0), ("some", 20.0, None)),
    "cpu": (("some", 25.0, 75.0),),
}
NAMES = {"memory": "Memory", "io": "I/O", "cpu": "CPU"}
WHAT = {
    "memory": "waiting for memory (direct reclaim, swap-in, page-cache refaults): the working set does not fit",
    "io": "waiting for block I/O: storage is saturated or slow",
    "cpu": "runnable but waiting for a CPU: more work than CPUs (or a CPU quota)",
}


def evaluate(b) -> Iterator[Finding]:
    h = b.json(HOST)
    psi = h.get("psi") if isinstance(h, dict) else None
    if not isinstance(psi, dict):
        return
    for res, checks in CHECKS.items():
        lines = psi.get(res)
        if not isinstance(lines, dict):
            continue
        for line, warn, crit in checks:
            v = lines.get(line)
            if not isinstance(v, dict):
                continue
            a10, a60, a300 = (num(v.get(k)) for k in ("avg10", "avg60", "avg300"))
            peak = max(x for x in (a10, a60, 0.0) if x is not None)
            if peak < warn:
                continue
            sev = CRITICAL if crit is not None and peak >= crit else WARNING
            trend = ""
            if a10 is not None and a300 is not None:
                trend = (" and rising (10 s above 5 min)" if a10 > a300 * 1.2 + 1 else
                         " and easing (10 s below 5 min)" if a10 < a300 * 0.8 - 1 else " and steady")
            who = "all non-idle tasks were" if line == "full" else "some tasks were"
            yield Finding(
                sev, f"{NAMES[res]} pressure: {line} {peak:.0f} % "
                     f"(avg10 {a10 or 0:.1f}, avg60 {a60 or 0:.1f}, avg300 {a300 or 0:.1f})",
                f"Pressure stall information: in the last 10–60 s, {who} stalled {peak:.0f} % of the time "
                f"{WHAT[res]}{trend}. Latency of everything on the host grows with it.",
                rule="pressure", host=b.host,
                evidence=[Evidence(b.host, HOST, record=f"psi.{res}.{line}",
                                   excerpt=" ".join(f"{k}={v.get(k)}" for k in ("avg10", "avg60", "avg300", "total")))],
                data={"resource": res, "line": line, "avg10": a10, "avg60": a60, "avg300": a300})
            break


RULE = Rule(name="pressure", summary="memory, I/O and CPU pressure stall information (PSI)", evaluate=evaluate,
            reads=("host",), severity="critical (memory/io full, cpu some ≥ 75 %); warning (some)", order=31)
