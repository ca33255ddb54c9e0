"""The targets' own cgroups, whole: every cgroup on each target's path to the root, and the
incident's systemd units' cgroups, v1 and v2, read twice for rates.

What: for each target process, every hierarchy it is in (v2, and on v1 hosts each of the cpu,
cpuacct, memory, pids, blkio and cpuset trees) and in each, its cgroup and every ancestor up
to the root; for each unit of the incident (``--unit`` and ``targets.services``), the unit's
cgroup and its ancestors, found even when no process is left in it. Of each cgroup
(``agent.cgroups.read``): CPU quota and period, usage, throttled periods and time
(``cpu.stat``); memory usage, working set, limits (max, high, swap), ``memory.events`` (high,
max, oom, oom_kill) or v1's ``failcnt``/``oom_control``, ``memory.stat``; pids current, max
and refused forks (``pids.events``); I/O bytes and operations per device; PSI pressure where
present; the effective CPU set. Everything is read twice, ``interval_s`` apart, and the
difference kept as rates: CPU used (cores), the share of periods throttled, throttled time
per second, new memory events and failcnt, new refused forks, I/O per second, stall shares.
Why: services fail at their own limits, usually two or three cgroups down (a slice, a
container, a pod), not at the host's: a low ``cpu.max`` shows as latency no host CPU graph
explains, a ``pids.max`` as "unable to create native thread", a memory limit as OOM kills or
reclaim stalls. Limits nest, so the one that binds is the tightest anywhere on the chain.
Produces: ``cgroups.json``: {hierarchies [{label, version, controllers, mount, root}],
interval_s, cgroups {"<label>:<path>": {hierarchy, version, path, exists, cpu, memory, pids,
io, pressure, cpuset, rates}}, targets [{pid, start_time, comm, cgroups {label: path},
chains {label: [keys, own first]}, tightest {pids, memory, cpu}}], units [{unit, found,
cgroups, chains, tightest}]}; and ``raw/<label>/<path>/<file>``: each file as the
kernel wrote it (second reading). Facts only: the ``cgroup_limits`` rule judges them.
Overhead: two reads of a few small files per cgroup (a few ms) and one ``interval_s`` wait
(which the other collectors run through: a quick capture takes about that much longer).
Caveats: paths are as goldenhour's cgroup namespace sees them; a cgroup outside the mounted
subtree (goldenhour in a container) is recorded as unreachable. v1 keeps usage (``cpuacct``)
and quota (``cpu``) in separate trees when they are mounted apart.
Options: ``[collectors.cgroups] interval_s`` (1.0; 0.5 in the quick profile), ``raw`` (true: copy
the files), ``unit_search_depth`` (4: how deep to look for a unit's cgroup).
"""
from __future__ import annotations

import os
import time
from typing import Any

from agent import cgroups as cg
from agent import procfs
from agent.collector import Collector, Option, Scope

# Hierarchies worth reading (v1 trees holding only devices/freezer/net_cls say nothing of limits).
USEFUL_V1 = frozenset({"cpu", "cpuacct", "memory", "pids", "blkio", "cpuset"})


def _useful(h: cg.Hierarchy) -> bool:
    return h.version == 2 or bool(USEFUL_V1 & set(h.controllers))


def _unit_name(unit: str) -> str:
    return unit if "." in unit else unit + ".service"


def find_unit(hiers: list[cg.Hierarchy], unit: str, known: list[str], depth: int) -> str | None:
    """The cgroup path of a systemd unit: from a target's membership if one is in it, else the first
    directory named like the unit, breadth first, in systemd's own tree (v2 or name=systemd), then any."""
    name = _unit_name(unit)
    for path in known:
        parts = path.split("/")
        if name in parts:
            return "/".join(parts[:parts.index(name) + 1])
    order = sorted(hiers, key=lambda h: (h.version != 2 and h.name != "systemd", h.label))
    for h in order:
        level = [(h.mount, "")]
        for _ in range(depth):
            nxt = []
            for d, rel in level:
                try:
                    entries = os.scandir(d)
                except OSError:
                    continue
                with entries:
                    for e in entries:
                        if not e.is_dir(follow_symlinks=False):
                            continue
                        if e.name == name:
                            return (h.root.rstrip("/") + rel + "/" + name) or "/"
                        nxt.append((e.path, f"{rel}/{e.name}"))
            level = nxt
            if not level:
                break
    return None


def default_interval(ctx) -> float:
    """1 s (ten CFS periods of 100 ms); 0.5 s in the quick profile, which must stay quick."""
    return 0.5 if ctx.capture.get("profile") == "quick" else 1.0


def collect(ctx) -> None:
    opts = ctx.options
    interval = float(opts.get("interval_s", default_interval(ctx)))
    hiers = [h for h in cg.hierarchies() if _useful(h)]
    wanted: dict[str, tuple[cg.Hierarchy, str]] = {}
    targets: list[dict[str, Any]] = []
    for t in ctx.capture.get("targets") or []:
        pid, start = int(t.get("pid") or 0), t.get("start_time")
        if not pid:
            continue
        row: dict[str, Any] = {"pid": pid, "start_time": start, "comm": t.get("comm")}
        try:
            if start is not None and procfs.start_time(pid) != int(start):
                raise procfs.ProcessGone(procfs.path(pid), "the PID now names another process")
            placed = cg.chains(pid, hiers)
        except (OSError, procfs.ProcError) as exc:
            row["error"] = f"exited before its cgroups were read ({exc})"
            targets.append(row)
            continue
        row["cgroups"] = {h.label: chain[0] for h, chain in placed}
        row["chains"] = {h.label: [h.key(p) for p in chain] for h, chain in placed}
        for h, chain in placed:
            for p in chain:
                wanted.setdefault(h.key(p), (h, p))
        targets.append(row)

    units: list[dict[str, Any]] = []
    known = [p for t in targets for p in (t.get("cgroups") or {}).values()]
    for unit in dict.fromkeys(ctx.capture.get("units") or []):
        path = find_unit(hiers, unit, known, int(opts.get("unit_search_depth", 4)))
        row = {"unit": _unit_name(unit), "found": path is not None}
        if path is not None:
            row["path"] = path
            row["cgroups"], row["chains"] = {}, {}
            for h in hiers:
                d = h.dir_of(path)
                if d and os.path.isdir(d):
                    chain = cg.ancestry(path)
                    row["cgroups"][h.label] = path
                    row["chains"][h.label] = [h.key(p) for p in chain]
                    for p in chain:
                        wanted.setdefault(h.key(p), (h, p))
        units.append(row)

    first = {k: cg.read(h, p) for k, (h, p) in wanted.items()}
    if wanted and interval > 0:
        time.sleep(max(0.0, min(interval, ctx.remaining() - 2)))
    readings: dict[str, dict[str, Any]] = {}
    for k, (h, p) in wanted.items():
        rec = cg.read(h, p)
        rec["rates"] = cg.rates(first[k], rec)
        readings[k] = rec

    if opts.get("raw", True):
        for rec in readings.values():
            base = "raw/" + rec["hierarchy"] + (rec["path"] if rec["path"] != "/" else "")
            for name, text in (rec.get("raw") or {}).items():
                ctx.write_text(f"{base}/{name}", text)
    for rec in readings.values():
        rec.pop("raw", None)
        rec.pop("at", None)
    for row in targets + units:
        if not row.get("chains"):
            continue
        recs = [readings[k] for keys in (row.get("chains") or {}).values() for k in keys if k in readings]
        row["tightest"] = cg.tightest(recs)

    doc = {"hierarchies": [{"label": h.label, "version": h.version, "controllers": list(h.controllers),
                            "mount": h.mount, "root": h.root} for h in hiers],
           "interval_s": interval, "read_at": time.time(), "cgroups": readings, "targets": targets, "units": units}
    ctx.write_json("cgroups.json", doc)
    ctx.note(cgroups=len(readings), targets=len(targets), units=len(units),
             versions=sorted({h.version for h in hiers}))
    missing = [u["unit"] for u in units if not u["found"]]
    if missing:
        ctx.partial(f"no cgroup found for unit(s) {', '.join(missing)} (no process left, or not a systemd host)")


OPTIONS = {
    "interval_s": Option(None, float, "Window between the two readings (unset: 1 s, 0.5 s in the quick profile)."),
    "raw": Option(True, bool, "Also copy the cgroup files read."),
    "unit_search_depth": Option(4, int, "How deep under the cgroup root a unit's cgroup is looked for."),
}

COLLECTOR = Collector(
    name="cgroups",
    summary="the targets' and units' cgroups on their path to the root (v1 and v2): CPU quota and throttling, "
            "memory limits and events, pids, I/O, pressure, read twice for rates",
    scope=Scope.HOST, collect=collect, timeout_s=15, volatility=30, options=OPTIONS)
