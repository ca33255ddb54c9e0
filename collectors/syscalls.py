"""System call latency per process and per system call, from the kernel (eBPF, bcc).

What: for a window of ``capture.probe_seconds`` (default 5 s, ``--probe-seconds``), every
system call's latency from the ``raw_syscalls:sys_enter``/``sys_exit`` tracepoints,
aggregated in the kernel per (process, system call): count, errors (negative
returns), total, min and max, and a log2 histogram in microseconds (BPF maps; no
per-event output, so a million calls per second cost map updates, not copies to user
space). Calls still blocked when the window ends are listed with their age so
far. With targets given (``--pid``/``--process``/``--unit`` or configured services),
only those processes (and children they fork during the window) are traced;
otherwise the whole host, except goldenhour's own processes and what they start.
Why: metrics average away what a stall looks like from inside the kernel. Which
calls of which process got slow (``fsync`` at 800 ms, ``connect`` timing out,
``futex`` waits piling up, ``read`` on a hung NFS mount) points at the resource a
service was waiting for during the incident, and ``errors`` shows calls failing
fast (EAGAIN storms, ENOSPC...).
Produces: ``syscalls.json`` (``window`` start/end UTC and seconds, ``filter``,
``attached`` tracepoints, ``records``: one per (pid, comm, syscall) with nr, count,
errors, total_us, mean_us, min_us, max_us, p50_us, p90_us, p99_us and ``hist`` as
``{low_us, high_us, count}`` log2 buckets; ``in_flight``: calls not returned at the end;
``dropped``: calls lost to a full map or to two threads sharing a start slot);
``syscalls.txt`` (the top entries by total
time with bcc-style histograms); ``attached.json`` (when the window began, program
and map IDs).
Overhead: two short BPF programs (raw tracepoints) run on every system call of every
process while the window lasts. Measured by ``bench/bench_probes.py`` on the 2-core test
VM: 0.24-0.28 µs of CPU added per call (medians of three runs), 0.14-0.2 µs for calls of
processes outside the targets, which are filtered out first thing. A tight ``getppid()``
loop, nothing but system calls, slows down by 51-59 %; a loopback HTTP server loses an
estimated 0.3-0.7 % of its throughput as a uvicorn/Starlette app (3.2 calls, 105-240 µs of
CPU per request), and 3.8-6.8 % as a lean asyncio server answering 13 bytes (2.1 calls,
8-14 µs per request: over the 5 % target when a request costs under ~10 µs). Rule of
thumb: a process making N system calls per second loses N × 0.3 µs of CPU per second
(100,000/s: 3 %). Compiling the probe costs ~1 s of CPU and ~160 MB of memory (clang)
once per capture. Maps: ~8 MB of locked kernel memory, freed at the end of the window.
(The first version, on perf-event tracepoints with a hash map of start times, cost
~0.75 µs per call.)
Caveats: p50/p90/p99 are estimated from the log2 histogram (linear within the
bucket, bounded by the exact min and max), so they are exact only to the bucket.
Calls that started before the window are not counted; long calls (``epoll_wait``,
``futex``) are waits by design, not slowness. Syscall numbers are x86_64's (32-bit
compat processes use other numbers; names may then be wrong). PIDs are those of
the host's PID namespace. bcc compiles against the kernel headers; where the running
kernel has none, the distribution's nearest headers are linked (recorded under
``kernel_headers`` in the manifest); this probe reads only the raw tracepoints'
arguments (syscall number, return value) and helper results, so no structure offset
depends on the headers. Threads whose IDs are equal modulo 65,536 share a start slot:
if two of them are in a call at once, one call is lost (counted in ``dropped``).
Safety: programs are detached and maps freed at the end of the window, on error,
and when the collector is killed (the kernel releases them with the process's
descriptors; nothing is pinned). Tracepoints only (no kprobes).
Options: ``[collectors.syscalls] filter`` = "auto" (default: the targets when given,
else host-wide) | "targets" (also the automatic top processes) | "host"; ``top`` =
entries shown in ``syscalls.txt`` (default 25).
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from agent.collector import Collector, Option, Scope, read_text
from collectors import _bpf

TRACEPOINTS = ("raw_syscalls:sys_enter", "raw_syscalls:sys_exit")
FORK_TP = "sched:sched_process_fork"
START_SLOTS = 65536          # in-flight calls, indexed by thread id modulo this (a power of two)
TAB_SLOTS = 16384            # (process, syscall) stats, direct slots (a power of two)
STAT_ENTRIES = 16384         # ... and the overflow map for keys whose slot was taken
ALLOW_ENTRIES, EXCL_ENTRIES = 8192, 8192
SLOTS = 32                   # log2 microsecond buckets kept per (process, syscall): up to ~35 min
IN_FLIGHT_SHOWN = 50
INLINE_PIDS = 8              # up to this many target processes are compared inline, not looked up

# Measured cost per system call on this 2-core VM (bench/bench_probes.py, getppid loop): perf-event
# tracepoints with a hash map for start times cost ~750 ns; raw tracepoints with the start time in an
# array slot per thread and the histogram inside the per-(process, syscall) value cost ~300 ns.
BPF_TEXT = r"""
struct gh_start_t { u32 tid; u32 nr; u64 ts; };
struct gh_key_t { u32 tgid; u32 nr; };
struct gh_stat_t { u64 key; u64 count; u64 errors; u64 total_ns; u64 max_ns; u64 min_ns; char comm[16];
                   u32 slots[GH_SLOTS]; };

BPF_ARRAY(gh_sc_start, struct gh_start_t, GH_START_SLOTS);
/* (process, syscall) -> stats: an array slot chosen by a hash of the key and claimed with a
   compare-and-swap (no hashing helper, no bucket lock); keys whose slot is taken go to the map */
BPF_ARRAY(gh_sc_tab, struct gh_stat_t, GH_TAB_SLOTS);
BPF_HASH(gh_sc_stat, struct gh_key_t, struct gh_stat_t, GH_STAT_ENTRIES);
BPF_HASH(gh_sc_allow, u32, u8, GH_ALLOW_ENTRIES);
BPF_HASH(gh_sc_excl, u32, u8, GH_EXCL_ENTRIES);
BPF_ARRAY(gh_sc_drop, u64, 4);    /* 0: start slot taken by another thread, 1: stat map full */
BPF_ARRAY(gh_sc_kids, u32, 1);    /* set once a target forks: the allow map is then consulted */

static inline void gh_dropped(int i) {
    u64 *d = gh_sc_drop.lookup(&i);
    if (d) __sync_fetch_and_add(d, 1);
}

/* raw tracepoint sys_enter(struct pt_regs *regs, long id) */
int gh_sc_enter(struct bpf_raw_tracepoint_args *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32, tid = (u32)id;
    if (tgid == GH_SELF)
        return 0;
#ifdef GH_FILTER
#ifdef GH_ALLOWED
    /* a few targets: compared inline (as bcc's tools do with -p); the map only once one has forked */
    if (!(GH_ALLOWED(tgid))) {
        int z = 0;
        u32 *kids = gh_sc_kids.lookup(&z);
        if (!kids || !*kids || !gh_sc_allow.lookup(&tgid))
            return 0;
    }
#else
    if (!gh_sc_allow.lookup(&tgid))
        return 0;
#endif
#endif
    /* host-wide, goldenhour's own processes (gh_sc_excl) are left out when the maps are read:
       one hash lookup less on every system call of the host */
    u32 i = tid & (GH_START_SLOTS - 1);
    struct gh_start_t *s = gh_sc_start.lookup(&i);
    if (!s)
        return 0;
    if (s->ts != 0 && s->tid != tid)
        gh_dropped(0);                   /* another thread with the same slot is in a call */
    s->tid = tid;
    s->nr = ctx->args[1];
    s->ts = bpf_ktime_get_ns();
    return 0;
}

/* raw tracepoint sys_exit(struct pt_regs *regs, long ret) */
int gh_sc_exit(struct bpf_raw_tracepoint_args *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    u32 i = tid & (GH_START_SLOTS - 1);
    struct gh_start_t *s = gh_sc_start.lookup(&i);
    if (!s || s->ts == 0 || s->tid != tid)
        return 0;
    u64 delta = bpf_ktime_get_ns() - s->ts;
    struct gh_key_t k = {.tgid = id >> 32, .nr = s->nr};
    s->ts = 0;
    u64 key = ((u64)k.tgid << 32) | k.nr | (1ULL << 31);     /* never 0: 0 marks a free slot */
    u32 h = ((k.tgid * 2654435761u) ^ (k.nr * 2246822519u)) & (GH_TAB_SLOTS - 1);
    struct gh_stat_t *st = gh_sc_tab.lookup(&h);
    if (st && st->key != key && (st->key != 0 || __sync_val_compare_and_swap(&st->key, 0, key) != 0))
        st = 0;
    if (!st) {
        struct gh_stat_t zero = {.key = key};
        st = gh_sc_stat.lookup_or_try_init(&k, &zero);
        if (!st) {
            gh_dropped(1);
            return 0;
        }
    }
    if (st->comm[0] == 0)
        bpf_get_current_comm(&st->comm, sizeof(st->comm));
    __sync_fetch_and_add(&st->count, 1);
    __sync_fetch_and_add(&st->total_ns, delta);
    if ((long)ctx->args[1] < 0)
        __sync_fetch_and_add(&st->errors, 1);
    if (delta > st->max_ns)
        st->max_ns = delta;
    if (st->min_ns == 0 || delta < st->min_ns)
        st->min_ns = delta;
    u32 slot = bpf_log2l(delta / 1000);
    if (slot >= GH_SLOTS)
        slot = GH_SLOTS - 1;
    __sync_fetch_and_add(&st->slots[slot], 1);
    return 0;
}

/* goldenhour's processes, and the targets, keep their status in children forked during the window */
int gh_sc_fork(struct tracepoint__sched__sched_process_fork *args) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    u32 child = args->child_pid;
    u8 one = 1;
    if (gh_sc_excl.lookup(&tgid))
        gh_sc_excl.update(&child, &one);
#ifdef GH_FILTER
    if (gh_sc_allow.lookup(&tgid)) {
        gh_sc_allow.update(&child, &one);
        int z = 0;
        u32 *kids = gh_sc_kids.lookup(&z);
        if (kids)
            *kids = 1;
    }
#endif
    return 0;
}
"""

# Syscalls newer than Debian 12's libc headers (x86_64 numbers, from the kernel's syscall_64.tbl).
NEWER_X86_64 = {
    451: "cachestat", 452: "fchmodat2", 453: "map_shadow_stack", 454: "futex_wake", 455: "futex_wait",
    456: "futex_requeue", 457: "statmount", 458: "listmount", 459: "lsm_get_self_attr",
    460: "lsm_set_self_attr", 461: "lsm_list_modules", 462: "mseal", 463: "setxattrat", 464: "getxattrat",
    465: "listxattrat", 466: "removexattrat", 467: "open_tree_attr", 468: "file_getattr", 469: "file_setattr",
}
UNISTD_HEADERS = ("/usr/include/x86_64-linux-gnu/asm/unistd_64.h", "/usr/include/asm/unistd_64.h",
                  "arch/x86/include/generated/uapi/asm/unistd_64.h")


def parse_unistd(text: str) -> dict[int, str]:
    """``#define __NR_read 0`` lines -> {0: "read"}."""
    out = {}
    for m in re.finditer(r"^#define\s+__NR_(\w+)\s+(\d+)\s*$", text, re.M):
        out[int(m.group(2))] = m.group(1)
    return out


def syscall_table() -> tuple[dict[int, str], str]:
    """Syscall names by number for x86_64, and where they came from."""
    build = Path(f"/lib/modules/{os.uname().release}/build")
    table: dict[int, str] = {}
    source = "built-in"
    for p in UNISTD_HEADERS:
        path = Path(p) if p.startswith("/") else build / p
        text = read_text(path, "")
        if text:
            table = parse_unistd(text)
            if table:
                source = str(path)
                break
    if not table:
        try:
            from bcc.syscall import syscalls as bcc_table   # old but complete up to ~2018
            table = {int(k): v.decode() for k, v in bcc_table.items()}
            source = "bcc.syscall"
        except Exception:  # noqa: BLE001
            pass
    for nr, name in NEWER_X86_64.items():
        table.setdefault(nr, name)
    return table, source


def collect(ctx) -> None:
    mode = str(ctx.options.get("filter", "auto"))
    top = int(ctx.options.get("top", 25))
    allow, why = _bpf.target_pids(ctx, mode)
    names, names_from = syscall_table()
    excl = _bpf.excluded_pids(ctx)
    allowed = sorted(_bpf.with_descendants(allow) - excl) if allow is not None else []
    inline = " || ".join(f"(t) == {p}" for p in allowed) if 0 < len(allowed) <= INLINE_PIDS else None
    text = _bpf.defines(GH_SELF=os.getpid(), GH_FILTER=allow is not None, GH_START_SLOTS=START_SLOTS,
                        GH_TAB_SLOTS=TAB_SLOTS,
                        **{"GH_ALLOWED(t)": f"({inline})" if inline else None},
                        GH_STAT_ENTRIES=STAT_ENTRIES, GH_SLOTS=SLOTS, GH_ALLOW_ENTRIES=ALLOW_ENTRIES,
                        GH_EXCL_ENTRIES=EXCL_ENTRIES) + BPF_TEXT
    with _bpf.Probe(ctx, text, [(FORK_TP, "gh_sc_fork"), (TRACEPOINTS[0], "gh_sc_enter"),
                                (TRACEPOINTS[1], "gh_sc_exit")], optional=[FORK_TP], raw=TRACEPOINTS) as probe:
        if allow is not None:
            _bpf.fill(probe["gh_sc_allow"], allowed)
        _bpf.fill(probe["gh_sc_excl"], excl)
        seconds = _bpf.window_seconds(ctx)
        probe.attach()
        # processes goldenhour started between the first scan and the fork probe's attach
        _bpf.fill(probe["gh_sc_excl"], _bpf.excluded_pids(ctx) - excl)
        win = _bpf.window(ctx, seconds)
        probe.detach()
        attached = probe.attached_at_end
        t_read = time.monotonic_ns()
        stat = [v for _, v in _bpf.items(probe["gh_sc_tab"]) if v.key] + \
            [v for _, v in _bpf.items(probe["gh_sc_stat"])]
        start = [(k, v) for k, v in _bpf.items(probe["gh_sc_start"]) if v.ts]
        dt = probe["gh_sc_drop"]
        drops = [int(dt[dt.Key(i)].value) for i in range(2)]
        full = {n: probe.map_full(n) for n in ("gh_sc_stat", "gh_sc_excl", "gh_sc_allow")}
        excluded_final = sorted(int(k) for k, _ in _bpf.items(probe["gh_sc_excl"]))

    comm_cache: dict[int, str | None] = {}

    def comm_of(pid: int, fallback: str) -> str:
        if pid not in comm_cache:
            comm_cache[pid] = _bpf.proc_comm(pid)
        return comm_cache[pid] or fallback

    records: list[dict[str, Any]] = []
    left_out = set(excluded_final)
    for v in stat:
        pid, nr = int(v.key) >> 32, int(v.key) & 0x7FFFFFFF
        if pid in left_out:
            continue
        thread_comm = v.comm.decode("utf-8", "replace")
        rec = {"pid": pid, "comm": comm_of(pid, thread_comm), "syscall": names.get(nr, f"syscall_{nr}"),
               "nr": nr, "errors": int(v.errors)}
        rec.update(_bpf.stats({i: int(c) for i, c in enumerate(v.slots) if c}, int(v.count), int(v.total_ns),
                              int(v.max_ns), int(v.min_ns)))
        if thread_comm != rec["comm"]:
            rec["thread_comm"] = thread_comm   # the first thread seen making this call
        records.append(rec)
    records.sort(key=lambda r: (-r["total_us"], r["pid"], r["nr"]))

    in_flight = []
    for _, v in start:
        tid = int(v.tid)
        pid = _bpf.tgid_of(tid)
        if pid is None or pid in left_out:   # gone (exit_group never returns), or goldenhour's
            continue
        in_flight.append({"pid": pid, "tid": tid, "comm": comm_of(pid, "?"),
                          "syscall": names.get(int(v.nr), f"syscall_{int(v.nr)}"), "nr": int(v.nr),
                          "age_us": round((t_read - int(v.ts)) / 1000, 1), "since_utc": _bpf.mono_ns_to_utc(int(v.ts))})
    in_flight.sort(key=lambda r: -r["age_us"])

    dropped = {"start_slot_collisions": drops[0], "stat_map_full": drops[1]}
    if drops[1]:
        ctx.partial(f"{drops[1]} calls not recorded: the (process, syscall) map was full")
    doc = {
        "window": win, "window_s": win["seconds"],
        "filter": {"mode": mode, "applied": "targets" if allow is not None else "host", "why": why,
                   "pids": allow or [], "excluded_pids": excluded_final[:1000],
                   "excluded_count": len(excluded_final)},
        "attached": attached, "not_attached": probe.missing,
        "syscall_names": names_from,
        "totals": {"records": len(records), "calls": sum(r["count"] for r in records),
                   "processes": len({r["pid"] for r in records}),
                   "time_us": round(sum(r["total_us"] for r in records), 1)},
        "dropped": dropped, "maps_full": [n for n, f in full.items() if f],
        "in_flight": in_flight[:IN_FLIGHT_SHOWN], "in_flight_count": len(in_flight),
        "records": records,
    }
    ctx.write_json("syscalls.json", doc)
    ctx.write_text("syscalls.txt", render(doc, top))
    ctx.note(records=len(records), calls=doc["totals"]["calls"], filter=doc["filter"]["applied"],
             window_s=win["seconds"])


def render(doc: dict[str, Any], top: int = 25) -> str:
    w, f = doc["window"], doc["filter"]
    out = [f"syscall latency, {w['start_utc']} .. {w['end_utc']} ({w['seconds']:.2f} s), "
           f"{f['why']}" + (f": pids {', '.join(map(str, f['pids']))}" if f["pids"] else ""),
           f"{doc['totals']['calls']} calls, {doc['totals']['processes']} processes, "
           f"{doc['totals']['records']} (pid, syscall) pairs; attached {', '.join(doc['attached'])}", ""]
    hdr = f"{'PID':>7} {'COMM':<16} {'SYSCALL':<18} {'COUNT':>9} {'ERRORS':>7} {'TOTAL ms':>10} " \
          f"{'MEAN us':>10} {'P50 us':>10} {'P99 us':>10} {'MAX us':>11}"
    out.append(f"Top {min(top, len(doc['records']))} by total time:")
    out.append(hdr)

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.1f}"
    for r in doc["records"][:top]:
        out.append(f"{r['pid']:>7} {r['comm'][:16]:<16} {r['syscall'][:18]:<18} {r['count']:>9} {r['errors']:>7} "
                   f"{r['total_us'] / 1000:>10.2f} {fmt(r['mean_us']):>10} {fmt(r['p50_us']):>10} "
                   f"{fmt(r['p99_us']):>10} {fmt(r['max_us']):>11}")
    if doc["in_flight"]:
        out += ["", f"Still in a system call at the end of the window ({doc['in_flight_count']}):"]
        for r in doc["in_flight"][:10]:
            out.append(f"{r['pid']:>7} tid {r['tid']:<7} {r['comm'][:16]:<16} {r['syscall']:<18} "
                       f"for {r['age_us'] / 1000:.1f} ms so far")
    for r in doc["records"][:min(5, top)]:
        out += ["", f"{r['comm']} (pid {r['pid']}) {r['syscall']}: {r['count']} calls"]
        out.append(_bpf.render_hist(r["hist"]).rstrip("\n"))
    return "\n".join(out) + "\n"


OPTIONS = {
    "filter": Option("auto", str, "Which processes are probed: auto (the targets when given, else host-wide), "
                     "targets (also the automatic top processes) or host.", choices=("auto", "targets", "host")),
    "top": Option(25, int, "Entries shown in syscalls.txt."),
}

COLLECTOR = Collector(
    name="syscalls", summary="eBPF: latency of every system call per process and syscall (probe window)",
    scope=Scope.HOST, collect=collect, requires=_bpf.requirements(*TRACEPOINTS),
    profiles=frozenset({"standard", "full"}), timeout_s=60, volatility=1, check=_bpf.check, options=OPTIONS)
