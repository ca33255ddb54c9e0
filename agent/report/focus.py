"""Target first: what the responder captured for, ranked before what else the host holds.

A capture names its targets (``--pid``, ``--process``, ``--unit``, the configured services;
``manifest.targets`` with the reason each was chosen) and an incident may name services
(``incident.services``). Every finding gets a *scope*:

- ``target``: it concerns a target or one of the incident's services: its PID (``data.pid``,
  ``data.pids``), evidence from the target's own folder (``collectors/<name>/<pid>/``), a
  network namespace a target lives in (``data.netns``), the target's cgroup (``data.memcg``,
  ``data.cgroup``: an OOM kill under its limit), or a service's name in the cgroup or the finding;
- ``elsewhere`` ("also on this host"): it concerns other processes or cgroups while the capture
  named its targets explicitly, or it is older than the incident (before its start, or more
  than ``OLD_S`` before the trigger) and concerns no target: context, not the cause;
- ``host``: the rest (host-wide conditions now: pressure, a full table, the kernel's errors), and
  the flight recorder's first departures (``data.precursor``), which are older than the incident
  by design: when the trouble began is the point.

Ranking (``rank``): evidence that fails its hashes first; then critical findings about targets,
critical host-wide ones, warnings about targets, host warnings, the same for info; then
everything "also on this host". Within a tier, findings that name a cause (a deadlock, a
pile-up, a blocked loop, a lock holder, exhausted descriptors) come before those that show a
symptom (slow calls, retransmits, run-queue waits, pressure). ``strip`` gives the per-target
rows the report shows first: PID, name, runtime, state, threads, descriptors against their
limit, CPU, RSS and its worst finding.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Iterable

from agent.report.model import RANK, Finding, parse_iso
from agent.report.rules._util import netns_inode, num

if TYPE_CHECKING:  # pragma: no cover
    from agent.report.loader import Bundle

TARGET, HOST, ELSEWHERE = "target", "host", "elsewhere"
OLD_S = 600                 # without a known incident start: older than 10 min before the trigger is "before"
START_SLACK_S = 60
# rules whose findings name a cause, in the order a responder reads them; the unnamed ones between
CAUSES = ("thread_dumps", "event_loop", "file_locks", "pileups", "fd_limits", "oom_kill", "conntrack",
          "listen_queue", "kernel_errors", "d_state")
# rules whose findings show a symptom (or context): after the causes of the same tier
SYMPTOMS = ("syscall_latency", "tcp_retransmits", "runqueue_latency", "pressure", "host_resources",
            "socket_leaks", "log_errors", "process_state", "collector_status")


@dataclass
class Focus:
    """One bundle's targets: PIDs, network namespaces, memory cgroups, names; and the incident's services."""

    host: str
    pids: dict[int, dict[str, Any]] = field(default_factory=dict)     # pid -> manifest target record
    explicit: bool = False                  # chosen by --pid/--process/--unit or a configured service
    netns: dict[int, list[int]] = field(default_factory=dict)         # netns inode -> target pids
    cgroups: dict[int, list[str]] = field(default_factory=dict)       # pid -> cgroup paths (every hierarchy)
    services: list[str] = field(default_factory=list)
    start: Any = None                       # the incident's start, or the trigger less OLD_S


def _cgroups(b: "Bundle", pid: int, rec: dict[str, Any]) -> list[str]:
    paths = []
    text = b.text(f"collectors/process/{pid}/proc/cgroup") or ""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[2] not in ("", "/"):
            paths.append(parts[2])
    cg = (rec.get("container_info") or {}).get("cgroup")
    if cg and cg != "/":
        paths.append(cg)
    p = b.json(f"collectors/process/{pid}/process.json")
    if isinstance(p, dict):
        cgp = (p.get("cgroup") or {}).get("path") if isinstance(p.get("cgroup"), dict) else None
        if cgp and cgp != "/":
            paths.append(cgp)
    return sorted(set(paths))


def focus_of(b: "Bundle") -> Focus:
    cached = getattr(b, "_focus", None)
    if cached is not None:
        return cached
    m = b.manifest
    f = Focus(host=b.host, services=[s for s in (m.incident.services or []) if s])
    for t in m.targets:
        pid = t.get("pid")
        if not isinstance(pid, int):
            continue
        f.pids[pid] = t
        if not str(t.get("reason") or "").startswith("top"):
            f.explicit = True
        ino = netns_inode(((t.get("namespaces") or {}).get("net") or {}).get("id"))
        if ino is not None:
            f.netns.setdefault(ino, []).append(pid)
        f.cgroups[pid] = _cgroups(b, pid, t)
    if f.services:
        f.explicit = True
    started = parse_iso(getattr(m.incident, "started_at", "") or None)
    trig = parse_iso(m.trigger.at if m.trigger else None) or parse_iso(m.clocks.start_utc)
    if started:
        f.start = started - timedelta(seconds=START_SLACK_S)
    elif trig:
        f.start = trig - timedelta(seconds=OLD_S)
    b._focus = f  # type: ignore[attr-defined]
    return f


def _pids(f: Finding) -> list[int]:
    out = []
    for k in ("pid", "pids"):
        v = f.data.get(k)
        for x in v if isinstance(v, list) else [v]:
            if isinstance(x, int) and not isinstance(x, bool) and x > 0:
                out.append(x)
            elif isinstance(x, str) and x.isdigit():
                out.append(int(x))
    return list(dict.fromkeys(out))


def _related(a: str, b: str) -> bool:
    """Two cgroup paths are the same group or one contains the other (the root excluded)."""
    a, b = a.rstrip("/"), b.rstrip("/")
    return bool(a and b) and (a == b or a.startswith(b + "/") or b.startswith(a + "/"))


def _service_hit(services: list[str], text: str) -> bool:
    for s in services:
        name = re.escape(s.removesuffix(".service"))
        if re.search(rf"(?<![\w-]){name}(?:\.service)?(?![\w-])", text):
            return True
    return False


PER_TARGET = re.compile(r"^collectors/[\w.-]+/(\d+)/")      # a per-target collector's folder


def _cgroup_paths(f: Finding) -> list[str]:
    out: list[str] = []
    for k in ("memcg", "task_memcg", "cgroup", "cgroups", "cgroup_path"):
        v = f.data.get(k)
        for x in v if isinstance(v, list) else [v]:
            if isinstance(x, str) and x.startswith("/"):
                out.append(x)
            elif isinstance(x, dict) and isinstance(x.get("path"), str):
                out.append(x["path"])
    return out


def scope_of(f: Finding, fo: Focus) -> tuple[str, list[int]]:
    """(scope, the target PIDs it concerns)."""
    pids = _pids(f)
    hits = [p for p in pids if p in fo.pids]
    for ev in f.evidence:                         # evidence from a target's own folder is about that target
        m = PER_TARGET.match(ev.file)
        if m and int(m.group(1)) in fo.pids:
            hits.append(int(m.group(1)))
    ns = f.data.get("netns")
    ino = netns_inode(ns) if ns not in (None, "") else None
    if ino is not None and ino in fo.netns:
        hits += fo.netns[ino]
    memcgs = _cgroup_paths(f)
    for pid, paths in fo.cgroups.items():
        if any(_related(m, p) for m in memcgs for p in paths):
            hits.append(pid)
    hits = list(dict.fromkeys(hits))
    if hits:
        return TARGET, hits
    if fo.services and _service_hit(fo.services, " ".join([f.title, " ".join(memcgs)])):
        return TARGET, []
    if f.data.get("precursor"):        # what moved before the incident (flight recorder): early by design
        return HOST, []
    specific = bool(pids) or bool(memcgs) or ino is not None
    if fo.explicit and specific and not f.data.get("global"):
        return ELSEWHERE, []
    when = f.last_time or f.time
    if f.data.get("before_window") or (fo.start is not None and when is not None and when < fo.start):
        return ELSEWHERE, []
    return HOST, []


def _label(b: "Bundle | None", f: Finding, pids: list[int]) -> str:
    """The process a finding is about, as "comm (pid N)" (+ how many more), or "" for host-wide ones."""
    pool = pids or _pids(f)
    if not pool:
        comm = f.data.get("comm")
        return str(comm) if comm and f.rule in ("oom_kill",) else ""
    pid = pool[0]
    comm = ""
    if b is not None:
        comm = str(b.target_info(pid).get("comm") or "")
    if not comm and isinstance(f.data.get("comm"), str):
        comm = f.data["comm"]
    label = f"{comm} (pid {pid})" if comm else f"pid {pid}"
    return label + (f" +{len(pool) - 1}" if len(pool) > 1 else "")


def _cause_rank(rule: str) -> int:
    """Causes first, in CAUSES' order; a rule not named here (a newer one: limits, history...) right after the
    ones that name a blocked thread's culprit and before pile-ups, which are as often the consequence of a limit
    or a slow backend as a cause; symptoms last."""
    if rule in CAUSES:
        return 10 * CAUSES.index(rule)
    if rule in SYMPTOMS:
        return 1000 + SYMPTOMS.index(rule)
    return 10 * CAUSES.index("pileups") - 5


def tier(f: Finding) -> int:
    sev = RANK[f.severity]
    if f.scope == ELSEWHERE:
        return 6 + sev
    return 2 * sev + (0 if f.scope == TARGET else 1)


def sort_key(f: Finding) -> tuple:
    t = f.time.timestamp() if f.time else float("inf")
    return (f.rule != "bundle_integrity", tier(f), _cause_rank(f.rule), t, f.host, f.title)


def rank(findings: list[Finding], bundles: Iterable["Bundle"]) -> list[Finding]:
    """Give every finding its scope and process, and sort them target first (in place; returned too)."""
    by_host: dict[str, list["Bundle"]] = {}
    for b in bundles:
        by_host.setdefault(b.host, []).append(b)
    for f in findings:
        bs = by_host.get(f.host, [])
        seen = [(scope_of(f, focus_of(b)), b) for b in bs]
        pick = next((x for x in seen if x[0][0] == TARGET), None) or \
            next((x for x in seen if x[0][0] == ELSEWHERE), None)
        (scope, hits), where = pick if pick else ((HOST, []), bs[0] if bs else None)
        if f.rule == "bundle_integrity":
            scope = HOST
        f.scope = scope
        f.process = _label(where, f, hits)
        if hits:
            f.data.setdefault("targets", hits)
    findings.sort(key=sort_key)
    return findings


@dataclass
class TargetRow:
    host: str
    bundle: str
    pid: int
    name: str
    runtime: str
    reason: str
    state: str = ""
    threads: int | None = None
    fds: int | None = None
    fd_limit: int | None = None
    cpu_percent: float | None = None
    rss_bytes: int | None = None
    worst: Finding | None = None
    anchor: int | None = None              # the worst finding's position in the report (1-based)

    def to_json(self) -> dict[str, Any]:
        w = self.worst
        return {"host": self.host, "bundle": self.bundle, "pid": self.pid, "name": self.name,
                "runtime": self.runtime, "reason": self.reason, "state": self.state, "threads": self.threads,
                "fds": self.fds, "fd_limit": self.fd_limit, "cpu_percent": self.cpu_percent,
                "rss_bytes": self.rss_bytes,
                "worst_finding": {"severity": w.severity, "title": w.title, "rule": w.rule, "index": self.anchor}
                if w else None}


def strip(bundles: Iterable["Bundle"], findings: list[Finding]) -> list[TargetRow]:
    """One row per target, with its facts and its worst finding (the first about it), the worst first.

    Targets the capture picked by itself (the busiest processes, when none was named) are shown only when
    no target was named in any bundle, or when a finding is about them: they are a guess, not the question."""
    bundles = list(bundles)
    named = any(focus_of(b).explicit for b in bundles)
    rows = []
    for b in bundles:
        for t in b.manifest.targets:
            pid = t.get("pid")
            if not isinstance(pid, int):
                continue
            p = b.json(f"collectors/process/{pid}/process.json")
            p = p if isinstance(p, dict) else {}
            fd = p.get("fd") if isinstance(p.get("fd"), dict) else {}
            mem = p.get("memory") if isinstance(p.get("memory"), dict) else {}
            cpu = (p.get("cpu_sample") or {}).get("cpu_percent") if isinstance(p.get("cpu_sample"), dict) else None
            row = TargetRow(host=b.host, bundle=b.name, pid=pid, name=str(t.get("comm") or p.get("comm") or "?"),
                            runtime=str(t.get("runtime") or p.get("runtime") or "?"),
                            reason=str(t.get("reason") or ""),
                            state=str(p.get("state_name") or p.get("state") or ""),
                            threads=_int(p.get("num_threads")), fds=_int(fd.get("count")),
                            fd_limit=_int(fd.get("limit")), cpu_percent=num(cpu),
                            rss_bytes=_int(mem.get("VmRSS")))
            for i, f in enumerate(findings, 1):
                if f.host == b.host and pid in (f.data.get("targets") or []):
                    row.worst, row.anchor = f, i
                    break
            if named and row.reason.startswith("top") and row.worst is None:
                continue
            rows.append(row)
    rows.sort(key=lambda r: (RANK[r.worst.severity] if r.worst else len(RANK), r.anchor or 0))
    return rows


def _int(v: Any) -> int | None:
    n = num(v)
    return int(n) if n is not None else None
