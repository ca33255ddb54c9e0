"""Process facts for each target, from /proc only: state, threads, descriptors, memory, limits.

What: per target, copies of ``/proc/PID/{status,stat,limits,wchan,stack,smaps_rollup,maps,cgroup,
mountinfo,io,sched,oom_score,oom_score_adj,coredump_filter}``; every thread's state, name, wait
channel and kernel stack (``task/*/{stat,comm,wchan,stack}``); the open file descriptors
(``readlink`` of each, up to ``max_fds``) with counts by type and the count against the soft
``RLIMIT_NOFILE``; namespaces and container facts; the command line and environment with
secrets redacted (rules in ``agent/redact.py`` and docs/safety.md "Redaction").
Why: the cheapest evidence that dies with the process: which threads sat in the kernel and
where (D state, wchan, kernel stacks), how close it was to its descriptor limit, what it was
started with, how much memory it really used (Pss/Swap), which cgroup/container limits applied.
Also: for each sleeping thread the system call it is in (``task/*/syscall``) and how long ago it last ran
(its ``se.exec_start`` against the scheduler clock now: how long it has waited, an estimate), the files
its descriptors are under (``fd.by_dir``), the file locks it holds or waits for (``/proc/locks``, with
the file and the holder's threads), and its CPU use over the collector's run (``cpu_sample``, at least
``cpu_sample_s``, 0.25 s).
Produces: ``proc/*`` raw copies, ``threads.txt`` (one block per thread with its kernel stack),
``fds.txt``, ``cmdline.txt`` and ``environ.txt`` (redacted), and ``process.json``: pid,
start_time, started_at, comm, exe, cmdline, runtime (+ evidence), state, ppid, uid/gid, threads
[{tid, name, state, wchan, kernel_stack, utime, stime}], thread_states, fd {count, limit,
hard_limit, ratio, by_type, by_dir, listed, truncated}, memory (status, bytes), smaps_rollup (bytes),
limits, signals (caught/ignored/blocked), io, sched, namespaces, container, cgroup {path, cgroups (per
hierarchy), tightest (the pids, memory and CPU limits that bind it, v1 or v2)},
tracer_pid, oom_score(_adj), locks {held, waiting [{path, holder_pid, holder}]}, cpu_sample, errors.
Facts only: what they mean (descriptors near the limit, threads in D
state, a stopped, zombie or traced process) is judged by the report's rules (``fd_limits``,
``d_state``, ``process_state``).
Overhead: reads only; no helper process, no signal, no ptrace; ~15 ms for a small process,
~0.2 s for a JVM with hundreds of threads, and at least ``cpu_sample_s`` (0.25 s) of wall time
for the CPU sample. ``smaps_rollup``, ``maps``, ``cmdline`` and
``environ`` take the target's memory-map lock: read once each, in a watchdog thread abandoned
after ``read_timeout_s`` (a process stuck with that lock held cannot stall the collector).
Caveats: ``stack``/``environ``/other users' ``fd`` need root. Thread names are ``comm`` (15
chars). Container paths are as the process sees them.
Options: ``[collectors.process] max_fds`` (default 4096 listed; all are counted),
``max_threads`` (4096 threads detailed), ``environ`` (true), ``read_timeout_s`` (2.0),
``cpu_sample_s`` (0.25).
"""
from __future__ import annotations

import functools
import os
import pwd
import queue
import re
import threading
import time
from datetime import datetime, timezone
from typing import Any

from agent import cgroups, procfs, safety
from agent.collector import Collector, Option, Scope, read_text
from agent.redact import RULES, Redactor
from agent.targets import container_info, namespaces, runtime_evidence

RAW = ("status", "stat", "limits", "wchan", "stack", "cgroup", "mountinfo", "io", "sched", "oom_score",
       "oom_score_adj", "coredump_filter", "personality", "loginuid")
MM_LOCKED = ("smaps_rollup", "maps")   # read under the target's mmap lock: bounded, in a watchdog thread
STATE_NAMES = {"R": "running", "S": "sleeping", "D": "uninterruptible (disk) sleep", "T": "stopped",
               "t": "tracing stop", "Z": "zombie", "X": "dead", "I": "idle", "P": "parked", "W": "waking"}
HZ = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# -- pure parsers ---------------------------------------------------------------

def parse_limits(text: str) -> dict[str, dict[str, Any]]:
    """/proc/PID/limits: {"Max open files": {"soft": 1024, "hard": 4096, "units": "files"}, ...}."""
    out: dict[str, dict[str, Any]] = {}
    for line in text.splitlines()[1:]:
        m = re.match(r"^(?P<name>.+?)\s{2,}(?P<soft>\S+)\s+(?P<hard>\S+)\s*(?P<units>\S*)\s*$", line)
        if not m:
            continue

        def num(v: str) -> int | None:
            return None if v == "unlimited" else int(v) if v.isdigit() else None
        out[m.group("name").strip()] = {"soft": num(m.group("soft")), "hard": num(m.group("hard")),
                                        "units": m.group("units") or None}
    return out


def parse_kv_kb(text: str) -> dict[str, int]:
    """``Key:   123 kB`` lines (status, smaps_rollup) into bytes; plain numbers stay numbers."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z_()]+):\s+(\d+)(?:\s+(kB))?\s*$", line)
        if m:
            out[m.group(1)] = int(m.group(2)) * (1024 if m.group(3) else 1)
    return out


def parse_sched(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        k, sep, v = line.partition(":")
        if sep and k.strip() and not k.startswith("-"):
            try:
                out[k.strip()] = float(v.strip())
            except ValueError:
                continue
    return out


def fd_kind(target: str) -> str:
    """A descriptor's type from its readlink: socket, pipe, anon_inode:<what>, file, device..."""
    if target.startswith("socket:"):
        return "socket"
    if target.startswith("pipe:"):
        return "pipe"
    if target.startswith("anon_inode:"):
        return "anon_inode:" + target.split(":", 1)[1].strip("[]")
    if target.startswith("/memfd:"):
        return "memfd"
    if target.startswith("/dev/"):
        return "device"
    if target.endswith(" (deleted)"):
        return "deleted_file"
    if target.startswith("/"):
        return "file"
    return target.split(":", 1)[0] or "other"


def _bounded(fn, timeout: float, default=None):
    """Run fn() in a daemon thread; give up after ``timeout`` (the thread is abandoned)."""
    q: queue.Queue = queue.Queue(maxsize=1)

    def run() -> None:
        try:
            q.put((True, fn()))
        except BaseException as exc:  # noqa: BLE001
            q.put((False, exc))
    threading.Thread(target=run, daemon=True).start()
    try:
        ok, val = q.get(timeout=timeout)
    except queue.Empty:
        return default, f"timed out after {timeout:g} s (the process's memory-map lock is held?)"
    if ok:
        return val, None
    return default, str(val) if isinstance(val, procfs.ProcError) else f"{type(val).__name__}: {val}"


# -- the collector ----------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _syscall_names() -> dict[int, str]:
    try:
        from collectors.syscalls import syscall_table
        return syscall_table()[0]
    except Exception:  # noqa: BLE001 - names are a convenience: numbers stand on their own
        return {}


def thread_waits(pid: int, tids: list[int], names: dict[int, str] | None = None) -> dict[int, dict[str, Any]]:
    """For the sleeping threads among ``tids``: the system call each is in and how long ago it last ran."""
    names = _syscall_names() if names is None else names
    out: dict[int, dict[str, Any]] = {}
    for tid in tids:
        w = procfs.thread_wait(pid, tid)
        if "nr" in w:
            w["syscall"] = {"nr": w["nr"], "name": names.get(int(w["nr"]), f"syscall_{w['nr']}"),
                            "args": w.pop("args", [])}
            del w["nr"]
        if w:
            out[tid] = w
    return out


def _threads(pid: int, limit: int) -> tuple[list[dict[str, Any]], int]:
    try:
        tids = procfs.tids(pid)
    except procfs.ProcError:
        return [], 0
    out = []
    names: dict[int, str] | None = None
    for tid in tids[:limit]:
        base = procfs.path(pid, tid=tid)
        try:
            st = procfs.stat(pid, tid)
        except procfs.ProcError:
            continue      # the thread exited meanwhile
        stack = read_text(f"{base}/stack")
        wchan = (read_text(f"{base}/wchan", "") or "").strip()
        out.append({"tid": tid, "name": st.comm, "state": st.state,
                    "wchan": wchan if wchan not in ("", "0") else None,
                    "utime_s": round(st.utime / HZ, 2), "stime_s": round(st.stime / HZ, 2),
                    "kernel_stack": [l.split("] ", 1)[-1].strip() for l in (stack or "").splitlines() if l.strip()]
                    if stack is not None else None})
        if st.state in ("S", "D"):
            # what a sleeping thread is in (its system call) and since when it has not run: how long it waits
            if names is None:
                names = _syscall_names()
            out[-1].update(thread_waits(pid, [tid], names).get(tid, {}))
    return out, len(tids)


def _fds(pid: int, limit: int) -> dict[str, Any]:
    try:
        names = procfs.listdir(procfs.path(pid, "fd"))
    except procfs.ProcError as exc:
        return {"error": str(exc), "cause": exc.cause}
    nums = sorted(int(n) for n in names if n.isdigit())
    listed, by_type = [], {}
    for n in nums[:limit]:
        try:
            tgt = os.readlink(f"/proc/{pid}/fd/{n}")
        except OSError:
            continue
        listed.append((n, tgt))
        k = fd_kind(tgt)
        by_type[k] = by_type.get(k, 0) + 1
    dirs: dict[str, int] = {}
    for _, tgt in listed:
        if tgt.startswith("/") and not tgt.startswith(("/dev/", "/memfd:")):
            d = os.path.dirname(tgt.removesuffix(" (deleted)")) or "/"
            dirs[d] = dirs.get(d, 0) + 1
    top = sorted(dirs.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    return {"count": len(nums), "listed": len(listed), "truncated": len(nums) > limit,
            "by_type": dict(sorted(by_type.items(), key=lambda kv: -kv[1])),
            "by_dir": [{"dir": d, "count": n} for d, n in top], "_entries": listed}


LOCK_LINE = re.compile(r"^(?P<id>\d+):\s+(?P<waiter>->\s+)?(?P<type>\S+)\s+(?P<kind>\S+)\s+(?P<mode>\S+)\s+"
                       r"(?P<pid>-?\d+)\s+(?P<maj>[0-9a-f]+):(?P<min>[0-9a-f]+):(?P<ino>\d+)\s+(?P<start>\S+)\s+"
                       r"(?P<end>\S+)\s*$")


def parse_locks(text: str) -> list[dict[str, Any]]:
    """/proc/locks: one record per line; a ``waiter`` line waits for the lock with the same id."""
    out = []
    for line in text.splitlines():
        m = LOCK_LINE.match(line.strip())
        if m:
            out.append({"id": int(m.group("id")), "waiter": bool(m.group("waiter")), "type": m.group("type"),
                        "kind": m.group("kind"), "mode": m.group("mode"), "pid": int(m.group("pid")),
                        "dev": f"{int(m.group('maj'), 16)}:{int(m.group('min'), 16)}", "inode": int(m.group("ino")),
                        "range": f"{m.group('start')}-{m.group('end')}"})
    return out


def _holder(pid: int, limit: int = 32) -> dict[str, Any]:
    """What the process holding a lock is doing: name, state, and its threads' wait channels and calls."""
    info: dict[str, Any] = {"pid": pid}
    try:
        st = procfs.stat(pid)
    except procfs.ProcError as exc:
        info["error"] = str(exc)
        return info
    info.update(comm=st.comm, state=st.state, state_name=STATE_NAMES.get(st.state, st.state))
    raw = read_text(f"/proc/{pid}/cmdline", "") or ""
    info["cmdline"] = Redactor().argv([a for a in raw.split("\0") if a])[:20]
    threads, n = _threads(pid, limit)
    info["threads"] = [{k: th.get(k) for k in ("tid", "name", "state", "wchan", "syscall", "last_ran_s_ago")
                        if th.get(k) is not None} for th in threads]
    info["num_threads"] = n
    return info


def _locks(pid: int, entries: list[tuple[int, str]]) -> dict[str, Any] | None:
    """The file locks the process holds or waits for (/proc/locks), with the files they are on and, for a lock
    it waits for, the process holding it. None if it has none."""
    recs = parse_locks(read_text("/proc/locks", "") or "")
    mine = [r for r in recs if r["pid"] == pid]
    if not mine:
        return None
    by_id: dict[int, list[dict[str, Any]]] = {}
    for r in recs:
        by_id.setdefault(r["id"], []).append(r)
    paths: dict[tuple[str, int], str] = {}
    wanted = {(r["dev"], r["inode"]) for r in mine}
    for n, tgt in entries:
        if not tgt.startswith("/"):
            continue
        try:
            st = os.stat(f"/proc/{pid}/fd/{n}")
        except OSError:
            continue
        key = (f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}", st.st_ino)
        if key in wanted:
            paths.setdefault(key, tgt)
    held, waiting = [], {}
    for r in mine:
        group = by_id.get(r["id"], [])
        holder = next((g for g in group if not g["waiter"]), None)
        where = {"type": r["type"], "mode": r["mode"], "dev": r["dev"], "inode": r["inode"], "range": r["range"],
                 "path": paths.get((r["dev"], r["inode"]))}
        if not r["waiter"]:
            others = [g["pid"] for g in group if g["waiter"]]
            held.append({**where, "id": r["id"], "waiters": len(others),
                         "waiter_pids": sorted(set(others))[:20]})
        elif holder is not None:
            w = waiting.setdefault(r["id"], {**where, "id": r["id"], "waiting": 0, "holder_pid": holder["pid"],
                                             "holder_mode": holder["mode"],
                                             "other_waiters": len([g for g in group if g["waiter"]
                                                                   and g["pid"] != pid])})
            w["waiting"] += 1
    for w in waiting.values():
        hp = w["holder_pid"]
        w["holder"] = _holder(hp) if hp > 0 and hp != pid else {"pid": hp}
    return {"held": held, "waiting": list(waiting.values())}


def _cgroup_limits(pid: int) -> dict[str, Any]:
    """The process's cgroup in each hierarchy and the tightest pids, memory and CPU limits on its
    chains (``agent.cgroups``, v1 and v2); the chains themselves, read twice, are the cgroups collector's."""
    try:
        placed = cgroups.chains(pid)
        recs = cgroups.process_records(pid, ("pids", "memory", "cpu"))
    except OSError as exc:
        return {"error": str(exc)}
    return {"cgroups": {h.label: chain[0] for h, chain in placed}, "tightest": cgroups.tightest(recs)}


def collect(ctx) -> None:
    t = ctx.target
    t.ensure_alive()
    pid = t.pid
    base = f"/proc/{pid}"
    opts = ctx.options
    timeout = float(opts.get("read_timeout_s", 2.0))
    errors: list[str] = []
    for name in RAW:
        ctx.copy(f"{base}/{name}", f"proc/{name}")
    st = t.identity.check()                 # TargetGone if it exited or its PID was reused
    cpu_t0, cpu_ticks0 = time.monotonic(), st.utime + st.stime
    status_text = procfs.read_text(f"{base}/status")
    status = procfs.parse_status(status_text)

    threads, nthreads = _threads(pid, int(opts.get("max_threads", 4096)))
    lines = []
    for th in threads:
        lines.append(f"{th['tid']} {th['name']!r} state={th['state']} wchan={th['wchan'] or '-'} "
                     f"utime={th['utime_s']}s stime={th['stime_s']}s")
        for fr in th["kernel_stack"] or []:
            lines.append(f"    {fr}")
    ctx.write_text("threads.txt", "\n".join(lines) + "\n")

    fds = _fds(pid, int(opts.get("max_fds", 4096)))
    entries = fds.pop("_entries", [])
    locks = _locks(pid, entries)
    ctx.write_text("fds.txt", "".join(f"{n}\t{tgt}\n" for n, tgt in entries))
    limits = parse_limits(read_text(f"{base}/limits", "") or "")
    nofile = limits.get("Max open files", {})
    if "count" in fds:
        fds["limit"], fds["hard_limit"] = nofile.get("soft"), nofile.get("hard")
        if fds["limit"]:
            fds["ratio"] = round(fds["count"] / fds["limit"], 4)
    else:
        errors.append(f"fd: {fds.get('error')}")

    # reads under the target's memory-map lock: bounded
    red = Redactor()
    cap = ctx.limits.max_file_bytes
    raw_cmd, err = _bounded(lambda: procfs.read_bytes(f"{base}/cmdline", 1 << 20), timeout, b"")
    if err:
        errors.append(f"cmdline: {err}")
    cmdline = red.argv([a.decode("utf-8", "replace") for a in (raw_cmd or b"").split(b"\0") if a])
    ctx.write_text("cmdline.txt", "\n".join(cmdline) + "\n")
    env_count = None
    if opts.get("environ", True):
        raw_env, err = _bounded(lambda: procfs.read_bytes(f"{base}/environ", 1 << 20), timeout, None)
        if err:
            errors.append(f"environ: {err}")
        if raw_env is not None:
            env = red.env([e.decode("utf-8", "replace") for e in raw_env.split(b"\0") if e])
            env_count = len(env)
            ctx.write_text("environ.txt", "\n".join(env) + "\n")
    smaps: dict[str, int] = {}
    for name in MM_LOCKED:
        data, err = _bounded(lambda n=name: procfs.read_bytes(f"{base}/{n}", cap), timeout, None)
        if err:
            errors.append(f"{name}: {err}")
        elif data is not None:
            ctx.write_text(f"proc/{name}", data.decode("utf-8", "replace"))
            if name == "smaps_rollup":
                smaps = parse_kv_kb(data.decode("utf-8", "replace"))
    ctx.note(redaction={"count": red.count, "rules": RULES})

    try:
        exe = os.readlink(f"{base}/exe")
    except OSError:
        exe = t.exe
    runtime, evidence = runtime_evidence(pid, exe)
    uids = [int(x) for x in status.get("Uid", "").split()] or [None]
    gids = [int(x) for x in status.get("Gid", "").split()] or [None]
    try:
        user = pwd.getpwuid(uids[0]).pw_name if uids[0] is not None else None
    except KeyError:
        user = None
    sig = safety.masks(pid, status)
    ns = namespaces(pid)
    nspid = [int(x) for x in status.get("NSpid", str(pid)).split()]
    cinfo = container_info(pid, nspid, ns)
    boot = _boot_time()
    states: dict[str, int] = {}
    for th in threads:
        states[th["state"]] = states.get(th["state"], 0) + 1
    tracer = int(status.get("TracerPid", "0") or 0)
    started = datetime.fromtimestamp(boot + st.starttime / HZ, timezone.utc) if boot else None
    memory = {k: v for k, v in parse_kv_kb(status_text).items()
              if k.startswith(("Vm", "Rss", "Hugetlb")) or k in ("Threads",)}
    doc = {
        "pid": pid, "start_time": st.starttime,
        "started_at": started.isoformat(timespec="seconds").replace("+00:00", "Z") if started else None,
        "age_s": round(time.time() - (boot + st.starttime / HZ), 1) if boot else None,
        "comm": st.comm, "exe": exe, "cmdline": cmdline, "environ_vars": env_count,
        "runtime": runtime, "runtime_evidence": evidence,
        "state": st.state, "state_name": STATE_NAMES.get(st.state, st.state),
        "ppid": st.ppid, "pgrp": st.pgrp, "session": st.session,
        "uid": uids[0], "euid": uids[1] if len(uids) > 1 else None, "user": user,
        "gid": gids[0], "cpu_s": {"user": round(st.utime / HZ, 2), "system": round(st.stime / HZ, 2)},
        "num_threads": nthreads, "threads_listed": len(threads), "thread_states": states,
        "threads": threads,
        "fd": fds,
        "memory": memory, "smaps_rollup": smaps,
        "limits": limits,
        "signals": {"caught": safety.caught_names(sig["SigCgt"]), "ignored": safety.caught_names(sig["SigIgn"]),
                    "blocked": safety.caught_names(sig["SigBlk"]),
                    "masks": {k: f"{v:016x}" for k, v in sig.items()}},
        "io": parse_kv_kb(read_text(f"{base}/io", "") or ""),
        "sched": {k: v for k, v in parse_sched(read_text(f"{base}/sched", "") or "").items()
                  if k in ("nr_switches", "nr_voluntary_switches", "nr_involuntary_switches",
                           "se.sum_exec_runtime", "nr_migrations", "se.statistics.wait_sum")},
        "oom_score": _int(read_text(f"{base}/oom_score")), "oom_score_adj": _int(read_text(f"{base}/oom_score_adj")),
        "tracer_pid": tracer,
        "nspid": nspid, "namespaces": ns, "container": cinfo,
        "cgroup": {"path": cinfo.get("cgroup", ""), **_cgroup_limits(pid)},
        "locks": locks,
        "cpu_sample": _cpu_sample(t, cpu_t0, cpu_ticks0, float(opts.get("cpu_sample_s", CPU_SAMPLE_S))),
        "errors": errors,
    }
    ctx.write_json("process.json", doc)
    ctx.note(runtime=runtime, threads=nthreads, fds=fds.get("count"), fd_limit=fds.get("limit"),
             container=cinfo.get("in_container"))
    if errors:
        ctx.partial("; ".join(errors))
    t.ensure_alive()


CPU_SAMPLE_S = 0.25


def _cpu_sample(t, t0: float, ticks0: int, least_s: float) -> dict[str, Any] | None:
    """The process's CPU use over the collector's run (at least ``least_s``): busy now, not on average."""
    left = least_s - (time.monotonic() - t0)
    if left > 0:
        time.sleep(left)
    try:
        st = t.identity.check()
    except procfs.ProcError:
        return None
    took = time.monotonic() - t0
    return {"interval_s": round(took, 3), "cpu_percent": round(100 * (st.utime + st.stime - ticks0) / HZ / took, 1)}


def _int(v: str | None) -> int | None:
    try:
        return int(v.strip()) if v is not None else None
    except ValueError:
        return None


def _boot_time() -> float | None:
    for line in (read_text("/proc/stat", "") or "").splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return None


OPTIONS = {
    "max_fds": Option(4096, int, "Descriptors listed per target (all are counted)."),
    "max_threads": Option(4096, int, "Threads detailed per target (kernel stack, wait channel)."),
    "environ": Option(True, bool, "Capture the target's environment (redacted)."),
    "read_timeout_s": Option(2.0, float, "Longest wait for one /proc read of the target."),
    "cpu_sample_s": Option(0.25, float, "Window over which the target's CPU use now is measured."),
}

COLLECTOR = Collector(
    name="process",
    summary="per target: /proc state, threads with kernel stacks, wait channels and system calls, descriptors "
            "vs RLIMIT_NOFILE (and where they point), file locks and their holders, CPU now, memory, limits, "
            "namespaces/container, command line and environment (redacted).",
    scope=Scope.PROCESS, collect=collect, timeout_s=15, volatility=15, options=OPTIONS)
