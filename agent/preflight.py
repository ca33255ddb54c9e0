"""Preflight: before a technique asks a target for something, check that the target has room
for it; at or near a limit the technique is skipped, never tried.

Why: a process at one of its limits is alive and (badly) serving, and one more thread, one
more descriptor or a few more megabytes is exactly what it cannot get. Measured here: a JVM
whose cgroup is at ``pids.max`` *exits* when jcmd attaches ("OutOfMemoryError: unable to
create native thread": the Attach Listener thread cannot start); Node 20 *aborts* on SIGUSR1
when it cannot create the inspector's thread (at ``pids.max``) or lacks the descriptors for
the inspector's event loop (with 0-3 free under ``RLIMIT_NOFILE``: an assertion in
``InspectorIo::ThreadMain``). goldenhour never ends a target, so such techniques get a
preflight, and the thread dump falls back to what needs nothing from the target (native
stacks by ptrace; kernel stacks and JVM counters come from the ``process`` and ``jvmstat``
collectors anyway).

What each technique asks of its target (``NEEDS``; measured on HotSpot 17 and Node 20):

- ``jvm_attach`` (jcmd, or HotSpot's attach socket): the first attach starts the "Attach
  Listener" thread and its listening socket, each connection is one more descriptor: 1
  thread and 2 descriptors, or 1 descriptor when the listener already runs; a thread stack.
- ``jvm_heap_dump``: the attach, the HPROF file (1 descriptor) and 64 MiB in the JVM's memory
  cgroup (the dumper's buffers, the full GC's marking stacks, and the file's dirty page cache,
  which the kernel charges to the cgroup of the process that writes it). Disk is checked
  where the JVM writes (``collectors.heap``).
- ``node_inspector`` (SIGUSR1 + CDP): 1 thread and 7 descriptors (epoll, eventfd, a pipe
  pair, /dev/null, the listening socket, the connection), 32 MiB (the thread, the report).
- ``node_heap_snapshot``: the inspector, and twice the V8 heap in use (Node's docs; measured
  +550 MB peak for a 350 MB process).
- ``go_pprof`` (HTTP to the app's pprof endpoint): 1 descriptor (the connection), 1 thread
  (the Go runtime may start one for the handler).

What is checked, with the figures recorded (``Verdict.to_json``, in the collector's
``preflight.json`` and the manifest's notes):

- threads: every cgroup on the target's chains with a ``pids.max`` (v1 and v2, the tightest
  wins), ``RLIMIT_NPROC`` against the threads of the target's real uid (not enforced for uid 0
  or with CAP_SYS_RESOURCE/CAP_SYS_ADMIN: recorded as such), ``kernel.threads-max`` and
  ``kernel.pid_max`` against the host's threads;
- descriptors: the target's open descriptors against its soft ``RLIMIT_NOFILE``, and the host's
  ``fs.file-nr`` against ``fs.file-max``;
- memory: the tightest cgroup memory limit on the chains against its working set (usage minus
  inactive file pages), and the host's ``MemAvailable``.

The rule, one for every limit: the room left (limit minus in use) must cover the need *plus a
margin* of 5 % of the limit, at least ``FLOOR`` (2 threads, 4 descriptors, 16 MiB), because the
target competes for the same room while we act and what we take it cannot have. These
margins are a safety gate, not a judgment of the evidence (that is the report rules' job).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from agent import cgroups, procfs
from agent.collector import Skip

MiB = 2**20
MARGIN_SHARE = 0.05
FLOOR = {"threads": 2, "fds": 4, "memory": 16 * MiB}
CAP_SYS_ADMIN, CAP_SYS_RESOURCE = 21, 24


@dataclass(frozen=True)
class Needs:
    """What a technique makes the target allocate, and what happens when it cannot."""

    threads: int = 0
    fds: int = 0
    memory: int = 0
    does: str = ""          # what the technique does to the target, in words
    risk: str = ""          # what was seen when the target could not get it


NEEDS: dict[str, Needs] = {
    "jvm_attach": Needs(1, 2, 2 * MiB, "attaching to the JVM (jcmd) starts its Attach Listener thread and socket",
                        "a JVM that cannot create the thread exits (OutOfMemoryError: unable to create native thread)"),
    "jvm_heap_dump": Needs(1, 3, 64 * MiB, "a heap dump attaches to the JVM and makes it write an HPROF file",
                           "a JVM that cannot create the Attach Listener exits; one at its memory limit is OOM-killed"),
    "node_inspector": Needs(1, 7, 32 * MiB, "SIGUSR1 makes Node start its inspector (a thread, an event loop, a "
                                            "listening socket)",
                            "Node aborts when it cannot create the inspector's thread or descriptors"),
    "node_heap_snapshot": Needs(1, 7, 32 * MiB, "a V8 heap snapshot needs the inspector and about twice the heap "
                                                "in memory", "a target at its memory limit is OOM-killed"),
    "go_pprof": Needs(1, 1, 0, "a pprof request opens a connection the Go runtime serves on a goroutine",
                      "the request fails, and the descriptor is one the service needed"),
}


class AtLimit(Skip):
    """The target has no room for what a technique needs: the technique was not tried."""

    def __init__(self, verdict: "Verdict"):
        super().__init__(verdict.reason())
        self.verdict = verdict


@dataclass
class Verdict:
    technique: str
    pid: int
    needs: dict[str, int]
    checks: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def blocked(self) -> list[dict[str, Any]]:
        return [c for c in self.checks if not c["ok"]]

    @property
    def ok(self) -> bool:
        return not self.blocked

    def reason(self) -> str:
        if self.ok:
            return ""
        n = NEEDS.get(self.technique, Needs())
        parts = [c["why"] for c in self.blocked]
        return (f"{self.technique} skipped: " + "; ".join(parts)
                + (f". {n.does[0].upper() + n.does[1:]}; {n.risk}" if n.does else ""))

    def to_json(self) -> dict[str, Any]:
        return {"technique": self.technique, "pid": self.pid, "verdict": "ok" if self.ok else "skipped",
                "reason": self.reason() or None, "needs": self.needs, "checks": self.checks,
                "figures": self.figures}


def margin(kind: str, limit: int) -> int:
    return max(FLOOR[kind], int(limit * MARGIN_SHARE))


def _check(kind: str, what: str, where: str, limit: int, used: int, need: int, unit: str,
           enforced: bool = True, note: str = "") -> dict[str, Any]:
    room = limit - used
    m = margin(kind, limit)
    ok = not enforced or need <= 0 or room >= need + m
    c = {"kind": kind, "limit": what, "where": where, "max": limit, "in_use": used, "room": room, "need": need,
         "margin": m, "enforced": enforced, "ok": ok}
    if note:
        c["note"] = note
    if not ok:
        size = (lambda v: f"{v / MiB:.0f} MiB") if kind == "memory" else (lambda v: str(v))
        at = "at" if room <= 0 else "near"
        units = f" {unit}" if unit else ""
        c["why"] = (f"{where} is {at} its {what}: {size(used)} of {size(limit)}{units} in use, room for "
                    f"{size(max(room, 0))}, and this needs {size(need)} plus a margin of {size(m)}")
    return c


# -- the figures -------------------------------------------------------------------------------

def _limits(pid: int) -> dict[str, tuple[int | None, int | None]]:
    out: dict[str, tuple[int | None, int | None]] = {}
    try:
        text = procfs.read_text(procfs.path(pid, "limits"))
    except procfs.ProcessGone:
        raise
    except procfs.ProcError:
        return out
    for line in text.splitlines()[1:]:
        m = re.match(r"^(?P<name>.+?)\s{2,}(?P<soft>\S+)\s+(?P<hard>\S+)", line)
        if m:
            def num(v: str) -> int | None:
                return int(v) if v.isdigit() else None
            out[m.group("name").strip()] = (num(m.group("soft")), num(m.group("hard")))
    return out


def _sysctl(name: str) -> int | None:
    try:
        return int(procfs.read_text(f"/proc/sys/{name.replace('.', '/')}").split()[0])
    except (procfs.ProcError, ValueError, IndexError):
        return None


def host_threads() -> int | None:
    """Threads (kernel tasks) on the host: the second number of /proc/loadavg's fourth field."""
    try:
        return int(procfs.read_text("/proc/loadavg").split()[3].split("/")[1])
    except (procfs.ProcError, ValueError, IndexError):
        return None


def uid_threads(uid: int) -> int:
    """Threads of every process whose real uid is ``uid`` (what RLIMIT_NPROC counts)."""
    n = 0
    for p in procfs.pids():
        try:
            st = procfs.status(p)
        except procfs.ProcError:
            continue
        if st.get("Uid", "").split()[:1] == [str(uid)]:
            try:
                n += int(st.get("Threads", "1"))
            except ValueError:
                n += 1
    return n


def open_fds(pid: int) -> int:
    """The target's open descriptors (``st_size`` of /proc/PID/fd on Linux >= 6.2, else a listing)."""
    try:
        n = os.stat(procfs.path(pid, "fd")).st_size
        if n > 0:
            return n
    except OSError as exc:
        raise procfs.error_for(exc, procfs.path(pid, "fd")) from None
    return len(procfs.listdir(procfs.path(pid, "fd")))


def _has_cap(status: dict[str, str], bit: int) -> bool:
    try:
        return bool(int(status.get("CapEff", "0"), 16) & (1 << bit))
    except ValueError:
        return False


def check(pid: int, technique: str, *, threads: int | None = None, fds: int | None = None,
          memory: int | None = None, extra: dict[str, Any] | None = None) -> Verdict:
    """Whether ``pid`` has room for ``technique`` (its ``NEEDS``, or the given overrides).

    Raises ``procfs.ProcessGone`` (a ``TargetGone``) if the target exited.
    """
    base = NEEDS[technique]
    needs = {"threads": base.threads if threads is None else threads,
             "fds": base.fds if fds is None else fds,
             "memory": base.memory if memory is None else memory}
    v = Verdict(technique, pid, needs)
    st = procfs.status(pid)
    lim = _limits(pid)
    recs: list[dict[str, Any]] = []
    try:
        recs = cgroups.process_records(pid, ("pids", "memory"))
    except OSError as exc:
        if not os.path.exists(procfs.path(pid)):
            raise procfs.error_for(exc, procfs.path(pid, "cgroup")) from None
        v.figures["cgroup_error"] = str(exc)
    tight = cgroups.tightest(recs)
    v.figures["cgroups"] = [{k: r.get(k) for k in ("hierarchy", "path", "pids", "memory") if r.get(k) is not None}
                            for r in recs if r.get("exists") and (r.get("pids") or r.get("memory"))]
    v.figures["tightest"] = tight
    nthreads = int(st.get("Threads", "1") or 1)
    v.figures["target"] = {"threads": nthreads}

    if needs["threads"] > 0:
        p = tight.get("pids")
        if p:
            v.checks.append(_check("threads", "cgroup pids limit (pids.max)", f"cgroup {p['cgroup']}",
                                   p["max"], p["current"], needs["threads"], "tasks"))
        soft, _hard = lim.get("Max processes", (None, None))
        if soft is not None:
            ruid = int(st.get("Uid", "0").split()[0])
            exempt = ruid == 0 or _has_cap(st, CAP_SYS_RESOURCE) or _has_cap(st, CAP_SYS_ADMIN)
            used = nthreads if exempt else uid_threads(ruid)
            v.checks.append(_check("threads", "RLIMIT_NPROC", f"uid {ruid}'s threads", soft, used, needs["threads"],
                                   "threads", enforced=not exempt,
                                   note="not enforced: uid 0 or CAP_SYS_RESOURCE/CAP_SYS_ADMIN" if exempt else
                                   "threads of every process of the target's real uid"))
        total = host_threads()
        for name in ("kernel.threads-max", "kernel.pid_max"):
            mx = _sysctl(name)
            if mx is not None and total is not None:
                v.checks.append(_check("threads", name, "the host", mx, total, needs["threads"], "threads"))

    if needs["fds"] > 0:
        soft, hard = lim.get("Max open files", (None, None))
        n = open_fds(pid)
        v.figures["target"]["fds"] = n
        if soft is not None:
            v.checks.append(_check("fds", "RLIMIT_NOFILE (soft)", f"process {pid}", soft, n, needs["fds"],
                                   "descriptors", note=f"hard limit {hard}" if hard is not None else ""))
        try:
            alloc, _unused, fmax = (int(x) for x in procfs.read_text("/proc/sys/fs/file-nr").split()[:3])
            v.checks.append(_check("fds", "fs.file-max", "the host", fmax, alloc, needs["fds"], "descriptors"))
        except (procfs.ProcError, ValueError):
            pass

    if needs["memory"] > 0:
        m = tight.get("memory")
        if m:
            v.checks.append(_check("memory", "cgroup memory limit", f"cgroup {m['cgroup']}", m["max_bytes"],
                                   m["working_set_bytes"], needs["memory"], "",
                                   note="in use = working set: usage minus inactive file pages"))
        try:
            mi = {ln.split(":")[0]: int(ln.split()[1]) * 1024 for ln in procfs.read_text("/proc/meminfo").splitlines()
                  if ln.startswith(("MemTotal:", "MemAvailable:"))}
            if "MemTotal" in mi and "MemAvailable" in mi:
                v.checks.append(_check("memory", "memory (MemAvailable)", "the host", mi["MemTotal"],
                                       mi["MemTotal"] - mi["MemAvailable"], needs["memory"], ""))
        except (procfs.ProcError, ValueError, IndexError):
            pass
    if extra:
        v.figures.update(extra)
    return v


def run(ctx, technique: str, **kw: Any) -> Verdict:
    """``check`` for the collector's target, recorded (``preflight.json`` and the manifest's notes);
    raises ``AtLimit`` (a ``Skip``) when the technique must not run."""
    v = check(ctx.target.pid, technique, **kw)
    done = getattr(ctx, "_preflight", None)
    if done is None:
        done = []
        ctx._preflight = done
    done.append(v.to_json())
    ctx.write_text("preflight.json", json.dumps(done, indent=1, default=str) + "\n")
    ctx.note(preflight=[{"technique": d["technique"], "verdict": d["verdict"],
                         **({"reason": d["reason"]} if d["reason"] else {}),
                         "checks": [{k: c[k] for k in ("limit", "where", "max", "in_use", "need", "ok")}
                                    for c in d["checks"]]} for d in done])
    if not v.ok:
        raise AtLimit(v)
    return v


def skipped(ctx, technique: str, reason: str, fallback: str) -> None:
    """Record in the manifest that ``technique`` was not tried, why, and what was done instead."""
    done = getattr(ctx, "_skipped_techniques", None)
    if done is None:
        done = []
        ctx._skipped_techniques = done
    done.append({"technique": technique, "reason": reason, "fallback": fallback})
    ctx.note(skipped_techniques=list(done))
