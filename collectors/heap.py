"""Heap dumps and memory images of each target: what the process held when it was sick.

What, per runtime:
- JVM: ``jcmd PID GC.heap_dump ABS_PATH`` (HPROF; a full GC then the dump, one stop-the-world
  of about 1 s per GB live; never ``-gz``: compression would run inside the pause). The JVM
  itself writes the file, in its own mount namespace, as its own user: goldenhour picks a
  directory the JVM can write on a real disk (``jvm_dump_dir``, else ``/var/tmp``, ``/tmp``,
  the JVM's working directory; never tmpfs, which a container's memory limit pays for), with
  room for the estimate, then moves the file into the bundle through ``/proc/PID/root`` (a
  rename on the same filesystem, else a streamed copy) and deletes the JVM's copy whatever
  happens: its path is in the scratch ledger (agent/scratch.py) before the JVM is asked to
  write it, so even a goldenhour killed mid-dump has it removed at its next start. Same
  SIGQUIT/identity checks as ``threads``.
- Node.js: a V8 heap snapshot over the inspector (``HeapProfiler.takeHeapSnapshot``), streamed
  chunk by chunk into the bundle by goldenhour (the target writes nothing). It blocks the event
  loop for the whole snapshot (5-7.5 s for 256 MiB) and needs about twice the heap in free
  memory: refused when the target's cgroup or the host lacks it (an OOM kill is worse than no
  snapshot).
- everything else (CPython, Go, native): ``gcore``, i.e. gdb attaches, writes every dumpable
  mapping and detaches (``gdb -batch -nx ... -ex 'gcore FILE'``, no debuginfod, no shared
  library symbols: nothing but the dump happens while the target is stopped). Read later with
  ``gdb`` (CPython: its ``py-bt`` extension), ``dlv core``, ``eu-stack --core``. ``method = "gcore"``
  forces it for any runtime.
Before starting, the dump's size is estimated (JVM: heap used from its perf counters × 1.2;
Node: V8 heap used; gcore: VmSize, since gdb 13 also writes reserved regions) and checked
against the store's free space minus its reserve (``capture.reserve_bytes``), against
``max_dump_bytes`` and, for gcore, against ``max_pause_s`` at a pessimistic 0.3 GB/s; a dump
that would not fit or pause too long is skipped with the numbers. The JVM heap dump and the
Node snapshot first pass ``agent.preflight`` (``jvm_heap_dump``: room for the Attach Listener
thread, its socket and the file, and 64 MiB in the JVM's memory cgroup; ``node_inspector``
before SIGUSR1, then ``node_heap_snapshot``: twice the V8 heap): a target at or near its pids,
descriptor or memory limit is not dumped (``skipped``, with the figures in ``preflight.json``
and the skipped technique in the manifest's notes); gcore asks nothing of its target.
Why: a leak, a runaway cache, a pile of requests: the heap says what the process was doing with
its memory, and it is gone on restart.
Produces: ``heap.hprof`` / ``heap.heapsnapshot`` / ``core.<pid>``, and ``heap.json`` {runtime,
method, file, bytes, estimate_bytes, pause, ...}. The bundler streams the file into the bundle
afterwards; nothing is compressed while the target is paused.
Overhead: pauses the target for the whole dump (docs/dumps.md has the measured pauses); writes the
dump's size to the store. Runs in profile full or with ``--heap``.
Caveats: dumps hold everything the process held, secrets included: no redaction is possible.
Analysing a core needs the same binaries (``process``'s ``proc/maps`` lists them).
Options: ``[collectors.heap] method`` ("auto" or "gcore"), ``jvm_dump_dir``,
``allow_tmpfs`` (false), ``max_dump_bytes`` (8 GiB, the default bundle cap), ``max_pause_s``
(60), tool paths ``jcmd``, ``gdb``.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import time
from typing import Any

from agent import preflight, procfs, safety, scratch
from agent.collector import Collector, Option, Scope, Skip, TargetGone, read_text
from collectors.threads import _gone_or, _tail, gdb_argv, jcmd, node_preflight, tool

GCORE_PESSIMISTIC_BPS = 0.3e9       # measured 0.2-2 GB/s; plan for the slow end
CHUNK = 8 * 2**20


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def store_room(ctx) -> int:
    """Bytes that may still be written into the store before its reserve."""
    st = os.statvfs(ctx.out)
    return st.f_bavail * st.f_frsize - int(ctx.capture.get("reserve_bytes") or 0)


def check_room(ctx, estimate: int, what: str) -> None:
    room = store_room(ctx)
    cap = int(ctx.options.get("max_dump_bytes", 8 * 2**30))
    ctx.note(estimate_bytes=estimate, store_room_bytes=room)
    if estimate > room:
        raise Skip(f"{what} of about {_gb(estimate)} would not fit: the store has {_gb(max(room, 0))} free above "
                   f"its reserve")
    if estimate > cap:
        raise Skip(f"{what} of about {_gb(estimate)} exceeds max_dump_bytes ({_gb(cap)})")


def _status(pid: int) -> dict[str, str]:
    """The target's status; empty if unreadable, ``TargetGone`` if it exited."""
    try:
        return procfs.status(pid)
    except procfs.ProcessGone:
        raise
    except procfs.ProcError:
        return {}


def _status_bytes(pid: int, key: str) -> int:
    v = _status(pid).get(key, "").split()
    return int(v[0]) * 1024 if v else 0


# -- gcore -----------------------------------------------------------------------------

def dump_gcore(ctx) -> dict[str, Any]:
    t = ctx.target
    gdb = tool(ctx, "gdb", "gdb")
    if not gdb:
        raise Skip("gdb not found (Debian: gdb): no core image")
    why = safety.ptrace_precheck(t.pid)
    if why:
        raise Skip(why)
    estimate = _status_bytes(t.pid, "VmSize")
    check_room(ctx, estimate, "a core image")
    predicted = estimate / GCORE_PESSIMISTIC_BPS
    max_pause = float(ctx.options.get("max_pause_s", 60))
    if predicted > max_pause:
        raise Skip(f"a core image of about {_gb(estimate)} could stop the process for up to {predicted:.0f} s "
                   f"(at 0.3 GB/s), over max_pause_s = {max_pause:g}")
    out = ctx.path(f"core.{t.pid}")
    t.ensure_alive()
    safety.normal_priority()
    res = ctx.run(gdb_argv(gdb, t.pid, [f"gcore {out}"], symbols=False), stdout="gcore.log",
                  env={**os.environ, "DEBUGINFOD_URLS": ""}, timeout_s=max(5.0, ctx.remaining() - 2),
                  space=int(estimate * 1.1) + 2**20)
    size = out.stat().st_size if out.exists() else 0
    log = (ctx.out / "gcore.log").read_text(errors="replace") if (ctx.out / "gcore.log").exists() else ""
    if not res.ok or "Saved corefile" not in log:
        out.unlink(missing_ok=True)      # an incomplete core only costs space
        if not t.alive():
            raise TargetGone(f"process {t.pid} ({t.comm}) exited during the core dump; the partial core was removed")
        raise RuntimeError(f"gcore failed (rc {res.returncode}{', killed' if res.killed else ''}): "
                           f"{(log.strip().splitlines() or [''])[-1][:200] or _tail(ctx, res.stderr)}")
    return {"method": "gcore", "file": out.name, "bytes": size, "estimate_bytes": estimate,
            "pause": {"technique": "gcore (ptrace stop for the whole dump)", "upper_bound_s": res.duration_s,
                      "how": "gdb's wall time: the process is stopped from attach to detach"},
            "analyse": {"python": "gdb PYTHON FILE (CPython's gdb extension: py-bt)", "go": "dlv core BINARY FILE",
                        "native": "gdb BINARY FILE / eu-stack --core FILE"}.get(t.runtime, "gdb BINARY FILE")}


# -- JVM -----------------------------------------------------------------------------------

def _mount_of(pid: int, path: str) -> tuple[str, str]:
    """(mount point, fstype) holding ``path`` in the process's mount namespace."""
    best, fstype = "", ""
    for line in (read_text(f"/proc/{pid}/mountinfo", "") or "").splitlines():
        left, _, right = line.partition(" - ")
        parts = left.split()
        if len(parts) < 5 or not right:
            continue
        mp = parts[4].replace("\\040", " ")
        if (path == mp or path.startswith(mp.rstrip("/") + "/")) and len(mp) >= len(best):
            best, fstype = mp, right.split()[0]
    return best, fstype


def jvm_dump_dir(ctx, estimate: int) -> str:
    """A directory the JVM can write, on a real disk, with room: its path in the JVM's namespace."""
    t = ctx.target
    cands = [ctx.options["jvm_dump_dir"]] if ctx.options.get("jvm_dump_dir") else []
    try:
        cwd = os.readlink(f"/proc/{t.pid}/cwd")
    except OSError:
        cwd = ""
    cands += ["/var/tmp", "/tmp"] + ([cwd] if cwd.startswith("/") else [])
    status = _status(t.pid)
    uid = int(status.get("Uid", "0").split()[1]) if status.get("Uid") else 0
    gid = int(status.get("Gid", "0").split()[1]) if status.get("Gid") else 0
    tried = []
    for d in cands:
        host = f"/proc/{t.pid}/root{d}"
        try:
            st = os.stat(host)
            vfs = os.statvfs(host)
        except OSError as exc:
            tried.append(f"{d} ({exc.strerror})")
            continue
        _, fstype = _mount_of(t.pid, d)
        free = vfs.f_bavail * vfs.f_frsize
        writable = uid == 0 or (st.st_uid == uid and st.st_mode & 0o200) or \
            (st.st_gid == gid and st.st_mode & 0o020) or st.st_mode & 0o002
        if fstype in ("tmpfs", "ramfs") and not ctx.options.get("allow_tmpfs"):
            tried.append(f"{d} ({fstype}: memory the target's cgroup pays for)")
        elif not writable:
            tried.append(f"{d} (not writable by uid {uid})")
        elif free < estimate * 1.1:
            tried.append(f"{d} ({_gb(free)} free)")
        else:
            ctx.note(jvm_dump_dir={"path": d, "fstype": fstype, "free_bytes": free})
            return d
    raise Skip(f"no directory where the JVM can write a heap dump of about {_gb(estimate)} on a real disk: "
               + "; ".join(tried))


def _disk(pid: int, d: str, estimate: int) -> dict[str, Any]:
    """The preflight's disk figures: where the JVM will write, the room there, the dump's estimate."""
    try:
        vfs = os.statvfs(f"/proc/{pid}/root{d}")
        free = vfs.f_bavail * vfs.f_frsize
    except OSError:
        free = None
    return {"dir": d, "free_bytes": free, "estimate_bytes": estimate}


def dump_jvm(ctx) -> dict[str, Any]:
    from collectors import _jvm
    t = ctx.target
    perf = _jvm.perfdata(t.pid, t.ns_pid)
    used = _jvm.heap_used(perf)
    estimate = int(used * 1.2) if used else _status_bytes(t.pid, "RssAnon")
    check_room(ctx, estimate, "a heap dump")
    d = jvm_dump_dir(ctx, estimate)
    inc = re.sub(r"[^A-Za-z0-9_.-]", "_", str(ctx.capture.get("incident") or "capture"))[:40]
    name = f"goldenhour-{inc}-{t.pid}-{secrets.token_hex(4)}.hprof"
    in_target = f"{d.rstrip('/')}/{name}"
    src = f"/proc/{t.pid}/root{in_target}"
    dest = ctx.path("heap.hprof")
    # recorded before the JVM can create it: if goldenhour is killed now, the next start removes it
    entry = scratch.record(ctx.capture.get("scratch_dir"), in_target, "JVM heap dump",
                           writer=procfs.Identity(t.pid, t.start_time))
    try:
        out, pause = jcmd(ctx, ["GC.heap_dump", in_target], "jcmd.txt", timeout_s=max(10.0, ctx.remaining() - 5),
                          technique="jvm_heap_dump", figures={"disk": _disk(t.pid, d, estimate)})
        if not os.path.exists(src) or "Heap dump file created" not in out:
            raise _gone_or(t, f"jcmd GC.heap_dump wrote no file: {out.strip()[-300:]}")
        moved = _fetch(ctx, src, str(dest))
    finally:
        try:
            os.unlink(src)               # never leave a heap dump behind in the target's world
            scratch.release(entry)
        except FileNotFoundError:
            scratch.release(entry)
        except OSError as exc:
            ctx.partial(f"could not remove the JVM's dump file {in_target}: {exc.strerror} (the scratch "
                        "ledger keeps it: the next goldenhour start removes it)")
    return {"method": "jcmd GC.heap_dump", "file": dest.name, "bytes": dest.stat().st_size,
            "estimate_bytes": estimate, "heap_used_bytes": used, "written_by_target_at": in_target,
            "fetched": moved, "pause": pause,
            "analyse": "Eclipse MAT, VisualVM, or jhat-like tools (HPROF)"}


def _fetch(ctx, src: str, dest: str) -> str:
    """Move the target's file into the bundle: rename on one filesystem, else a streamed copy."""
    try:
        os.rename(src, dest)
        os.chown(dest, os.geteuid(), os.getegid())
        return "renamed"
    except OSError:
        pass
    size = os.stat(src).st_size
    if not ctx.claim(size):
        raise Skip(f"the heap dump ({_gb(size)}) does not fit in the store above its reserve")
    with open(src, "rb") as fi, open(dest, "wb") as fo:
        while True:
            b = fi.read(CHUNK)
            if not b:
                break
            fo.write(b)
            if ctx.below_reserve():
                raise RuntimeError("the store reached its free-space reserve while copying the heap dump")
    return "copied"


# -- Node.js -----------------------------------------------------------------------------------

def dump_node(ctx) -> dict[str, Any]:
    from agent.nodecdp import CDPError, Inspector
    t = ctx.target
    t.ensure_alive()
    node_preflight(ctx)            # before SIGUSR1: room for the inspector's thread and descriptors
    dest = ctx.path("heap.heapsnapshot")
    ins = Inspector(t.pid, t.start_time, ctx.capture.get("ledger_dir"))
    facts: dict[str, Any] = {}
    try:
        with ins as sess:
            mem = sess.evaluate("JSON.stringify(process.memoryUsage())", timeout=15)
            mem = json.loads(mem)
            used = int(mem.get("heapUsed") or 0)
            facts.update(memory_usage=mem)
            # the snapshot needs about twice the heap in memory, in the target's cgroup and on the host
            preflight.run(ctx, "node_heap_snapshot", threads=0, fds=0, memory=2 * used,
                          extra={"heap_used_bytes": used})
            check_room(ctx, used, "a heap snapshot")
            safety.normal_priority()
            written = 0
            with ctx.open_out(dest.name, "w", encoding="utf-8") as fh:   # stops at the store's reserve
                def on_chunk(m: dict[str, Any]) -> None:
                    nonlocal written
                    if m.get("method") == "HeapProfiler.addHeapSnapshotChunk":
                        c = m["params"]["chunk"]
                        fh.write(c)
                        written += len(c)
                t0 = time.monotonic()
                sess.call("HeapProfiler.takeHeapSnapshot", on_event=on_chunk, reportProgress=False,
                          timeout=max(10.0, ctx.remaining() - 3))
                took = time.monotonic() - t0
    except safety.UnsafeSignal as exc:
        ctx.note(inspector=ins.facts)
        raise Skip(str(exc)) from None
    except (CDPError, OSError, ConnectionError) as exc:
        ctx.note(inspector=ins.facts)
        dest.unlink(missing_ok=True)
        if not t.alive():
            raise TargetGone(f"process {t.pid} exited during the heap snapshot") from None
        raise RuntimeError(f"Node inspector: {exc}") from None
    except BaseException:
        ctx.note(inspector=ins.facts)
        dest.unlink(missing_ok=True)
        raise
    ctx.note(inspector=ins.facts)
    if ins.facts.get("inspector_closed") is False:
        ctx.partial("the inspector did not close: the ledger keeps it, the next goldenhour start closes it")
    return {"method": "CDP HeapProfiler.takeHeapSnapshot", "file": dest.name, "bytes": dest.stat().st_size,
            "estimate_bytes": facts.get("memory_usage", {}).get("heapUsed"), **facts,
            "pause": {"technique": "V8 heap snapshot (event loop blocked)", "upper_bound_s": round(took, 4),
                      "how": "the CDP call's duration"},
            "analyse": "Chrome DevTools > Memory > Load, or memlab"}


FALLBACK = {"jvm": "the heap generations' used and capacity and the GC counters, read from the JVM's hsperfdata "
                  "file without attaching (jvmstat)",
            "node": "the process's memory figures (process); no heap snapshot without the inspector"}


def collect(ctx) -> None:
    t = ctx.target
    t.ensure_alive()
    method = str(ctx.options.get("method", "auto") or "auto")
    try:
        if method == "gcore":
            doc = dump_gcore(ctx)
        elif t.runtime == "jvm":
            doc = dump_jvm(ctx)
        elif t.runtime == "node":
            doc = dump_node(ctx)
        else:
            doc = dump_gcore(ctx)
    except preflight.AtLimit as exc:
        # no heap evidence that needs nothing from the target, but what there is, is elsewhere
        preflight.skipped(ctx, exc.verdict.technique, str(exc), FALLBACK.get(t.runtime, "none"))
        raise
    doc = {"runtime": t.runtime, "pid": t.pid, "start_time": t.start_time, **doc}
    ctx.write_json("heap.json", doc)
    ctx.note(method=doc["method"], bytes=doc["bytes"], pause=doc["pause"])
    if not t.alive():
        raise TargetGone(f"process {t.pid} exited during the dump")


OPTIONS = {
    "method": Option("auto", str, "auto (the runtime's own dump: JVM jcmd, Node heap snapshot; else a core image) "
                     "or gcore (always a core image).", choices=("auto", "gcore")),
    "jvm_dump_dir": Option("", str, "Where a JVM writes its HPROF, as the JVM sees it, tried first (then /var/tmp, "
                           "/tmp, its working directory: the first on a real disk with room)."),
    "allow_tmpfs": Option(False, bool, "Let a dump be written to tmpfs/ramfs (memory a container's limit pays for)."),
    "max_dump_bytes": Option(8 * 2**30, int, "A target whose predicted dump is larger is skipped, with the reason."),
    "max_pause_s": Option(60, float, "gcore: a target whose predicted pause (at 0.3 GB/s) is longer is skipped."),
    "jcmd": Option(None, str, "Path of jcmd (unset: found on PATH; empty: never used)."),
    "gdb": Option(None, str, "Path of gdb for gcore (unset: found on PATH; empty: never used)."),
}

COLLECTOR = Collector(
    name="heap",
    summary="per target: heap dump (JVM jcmd GC.heap_dump, Node heap snapshot) or core image (gcore), "
            "size checked against the store's reserve first.",
    scope=Scope.PROCESS, collect=collect, profiles=frozenset({"full"}), timeout_s=300, pauses_target=True,
    volatility=70, options=OPTIONS)
