"""Run-queue latency: how long runnable threads waited for a CPU (eBPF, bcc's runqlat on tracepoints).

What: for the probe window, the time from a thread becoming runnable (woken up,
``sched:sched_wakeup``/``sched_wakeup_new``, or preempted while still runnable,
``sched:sched_switch``) until it runs (``sched_switch`` to it), as a host-wide log2
histogram in microseconds and per thread, aggregated in the kernel; per process in
the output (threads summed).
Why: a service whose threads wait for a CPU adds that wait to every request, while
its own CPU use looks normal: more runnable work than CPUs, a cgroup CPU quota
throttling it, noisy neighbours or CPU steal. This is the direct measure; load
average and PSI only hint at it.
Produces: ``runqlat.json``: ``window``; host-wide ``count``, ``total_us``, ``max_us``,
``p50_us``/``p90_us``/``p99_us`` and ``hist`` (``{low_us, high_us, count}``); ``per_pid``:
one record per process (pid, comm, threads, the same fields), sorted by total wait
(the capture's targets only, when targets were given); ``runqlat.txt``: the
histogram and the top processes. ``attached.json``.
Overhead: the scheduler tracepoints fire on every wake-up and context switch (10,000-
100,000 per second per busy CPU), each running a short program (wake-up times in an
array slot per thread, one hash lookup per switch). Measured by ``bench/bench_probes.py``:
+0.74-1.06 µs (medians of two runs) per pipe round trip between two processes on one CPU,
which is two wake-ups and two switches: ~0.2-0.25 µs per event, a few percent of a CPU on a host
switching heavily. That is why it is in the full profile only (or ``[collectors.runqlat]
enabled = true``). Compiling: ~1 s of CPU, ~160 MB of memory (clang), once.
Caveats: a thread's wait is attributed to the thread id; threads are grouped into
processes when the window ends (a thread that exited by then keeps its own id, with
the comm it last ran under). The host-wide histogram includes goldenhour's own
threads (they are left out of ``per_pid``). Percentiles are estimated from the log2
buckets, bounded by the exact max.
Safety: tracepoints only; programs and maps are released at the end of the window
and when the collector is killed.
Options: ``[collectors.runqlat] filter`` = "auto" | "targets" | "host" (as for
``syscalls``: which processes ``per_pid`` lists); ``top`` = processes listed in the
text (default 20).
"""
from __future__ import annotations

from typing import Any

from agent.collector import Collector, Option, Scope
from collectors import _bpf

TRACEPOINTS = ("sched:sched_wakeup", "sched:sched_wakeup_new", "sched:sched_switch")
START_SLOTS, TID_ENTRIES = 65536, 16384
SLOTS = 40

# Wake-up times live in an array slot per thread id (modulo START_SLOTS, the id kept to detect a
# collision), not in a hash map: no bucket lock on every wake-up and context switch.
BPF_TEXT = r"""
struct gh_wake_t { u32 tid; u32 pad; u64 ts; };
struct gh_tstat_t { u64 count; u64 total_ns; u64 max_ns; char comm[16]; u32 slots[GH_SLOTS]; };

BPF_ARRAY(gh_rq_start, struct gh_wake_t, GH_START_SLOTS);
BPF_ARRAY(gh_rq_all, u64, GH_SLOTS);                       /* host-wide log2 histogram */
BPF_ARRAY(gh_rq_sum, u64, 4);                             /* 0 count, 1 total_ns, 2 max_ns, 3 drops */
BPF_HASH(gh_rq_tstat, u32, struct gh_tstat_t, GH_TID_ENTRIES);

static inline void gh_add(int i, u64 v) {
    u64 *p = gh_rq_sum.lookup(&i);
    if (p) __sync_fetch_and_add(p, v);
}

static inline int gh_enqueue(u32 tid) {
    if (tid == 0)
        return 0;
    u32 i = tid & (GH_START_SLOTS - 1);
    struct gh_wake_t *w = gh_rq_start.lookup(&i);
    if (!w)
        return 0;
    w->tid = tid;
    w->ts = bpf_ktime_get_ns();
    return 0;
}

int gh_rq_wakeup(struct tracepoint__sched__sched_wakeup *args) {
    return gh_enqueue(args->pid);
}

int gh_rq_wakeup_new(struct tracepoint__sched__sched_wakeup_new *args) {
    return gh_enqueue(args->pid);
}

int gh_rq_switch(struct tracepoint__sched__sched_switch *args) {
    /* the previous task is still runnable (preempted): it waits in the queue from now */
    if ((args->prev_state & 0xff) == 0)
        gh_enqueue(args->prev_pid);
    u32 tid = args->next_pid;
    if (tid == 0)
        return 0;
    u32 i = tid & (GH_START_SLOTS - 1);
    struct gh_wake_t *w = gh_rq_start.lookup(&i);
    if (!w || w->ts == 0 || w->tid != tid)
        return 0;
    u64 delta = bpf_ktime_get_ns() - w->ts;
    w->ts = 0;
    u32 slot = bpf_log2l(delta / 1000);
    if (slot >= GH_SLOTS)
        slot = GH_SLOTS - 1;
    u64 *c = gh_rq_all.lookup(&slot);
    if (c)
        __sync_fetch_and_add(c, 1);
    gh_add(0, 1);
    gh_add(1, delta);
    int m = 2;
    u64 *mx = gh_rq_sum.lookup(&m);
    if (mx && delta > *mx)
        *mx = delta;
    struct gh_tstat_t zero = {};
    struct gh_tstat_t *st = gh_rq_tstat.lookup_or_try_init(&tid, &zero);
    if (!st) {
        gh_add(3, 1);
        return 0;
    }
    if (st->comm[0] == 0)
        bpf_probe_read_kernel(&st->comm, sizeof(st->comm), args->next_comm);
    __sync_fetch_and_add(&st->count, 1);
    __sync_fetch_and_add(&st->total_ns, delta);
    if (delta > st->max_ns)
        st->max_ns = delta;
    __sync_fetch_and_add(&st->slots[slot], 1);
    return 0;
}
"""


def collect(ctx) -> None:
    mode = str(ctx.options.get("filter", "auto"))
    top = int(ctx.options.get("top", 20))
    allow, why = _bpf.target_pids(ctx, mode)
    text = _bpf.defines(GH_START_SLOTS=START_SLOTS, GH_TID_ENTRIES=TID_ENTRIES, GH_SLOTS=SLOTS) + BPF_TEXT
    with _bpf.Probe(ctx, text, [(TRACEPOINTS[2], "gh_rq_switch"), (TRACEPOINTS[0], "gh_rq_wakeup"),
                                (TRACEPOINTS[1], "gh_rq_wakeup_new")], optional=[TRACEPOINTS[1]]) as probe:
        win = probe.run_window()
        attached = probe.attached_at_end
        allh = probe["gh_rq_all"]
        all_slots = {i: int(allh[allh.Key(i)].value) for i in range(SLOTS)}
        sm = probe["gh_rq_sum"]
        count, total_ns, max_ns, drops = (int(sm[sm.Key(i)].value) for i in range(4))
        tstat = _bpf.items(probe["gh_rq_tstat"])
    excl = _bpf.excluded_pids(ctx)

    procs: dict[int, dict[str, Any]] = {}
    for k, v in tstat:
        tid = int(k)
        pid = _bpf.tgid_of(tid) or tid
        p = procs.setdefault(pid, {"pid": pid, "comm": None, "tids": set(), "count": 0, "total_ns": 0,
                                   "max_ns": 0, "slots": {}})
        p["tids"].add(tid)
        p["count"] += int(v.count)
        p["total_ns"] += int(v.total_ns)
        p["max_ns"] = max(p["max_ns"], int(v.max_ns))
        p["slots"] = _bpf.merge_slots(p["slots"], {i: int(c) for i, c in enumerate(v.slots) if c})
        if tid == pid or p["comm"] is None:
            p["comm"] = v.comm.decode("utf-8", "replace")
    allowed = _bpf.with_descendants(allow) if allow is not None else None
    per_pid = []
    for pid, p in procs.items():
        if pid in excl or (allowed is not None and pid not in allowed):
            continue
        rec = {"pid": pid, "comm": _bpf.proc_comm(pid) or p["comm"] or "?", "threads": len(p["tids"])}
        rec.update(_bpf.stats(p["slots"], p["count"], p["total_ns"], p["max_ns"]))
        per_pid.append(rec)
    per_pid.sort(key=lambda r: (-r["total_us"], r["pid"]))
    if drops:
        ctx.partial(f"{drops} run-queue samples not recorded (BPF maps full)")
    doc: dict[str, Any] = {"window": win, "window_s": win["seconds"], "attached": attached,
                           "not_attached": probe.missing,
                           "filter": {"mode": mode, "applied": "targets" if allow is not None else "host", "why": why,
                                      "pids": allow or []}, "dropped": drops}
    doc.update(_bpf.stats(all_slots, count, total_ns, max_ns))
    doc["per_pid"] = per_pid
    ctx.write_json("runqlat.json", doc)
    ctx.write_text("runqlat.txt", render(doc, top))
    ctx.note(samples=count, processes=len(per_pid), window_s=win["seconds"])


def render(doc: dict[str, Any], top: int = 20) -> str:
    w = doc["window"]

    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.1f}"
    out = [f"run-queue latency, {w['start_utc']} .. {w['end_utc']} ({w['seconds']:.2f} s), all CPUs: "
           f"{doc['count']} wake-ups to run, p50 {f(doc['p50_us'])} us, p99 {f(doc['p99_us'])} us, "
           f"max {f(doc['max_us'])} us", _bpf.render_hist(doc["hist"]).rstrip("\n"), "",
           f"Top {min(top, len(doc['per_pid']))} processes by time spent waiting for a CPU ({doc['filter']['why']}):",
           f"{'PID':>7} {'COMM':<16} {'THREADS':>7} {'COUNT':>8} {'TOTAL ms':>10} {'P50 us':>10} {'P99 us':>10} "
           f"{'MAX us':>10}"]
    for r in doc["per_pid"][:top]:
        out.append(f"{r['pid']:>7} {r['comm'][:16]:<16} {r['threads']:>7} {r['count']:>8} "
                   f"{r['total_us'] / 1000:>10.2f} "
                   f"{f(r['p50_us']):>10} {f(r['p99_us']):>10} {f(r['max_us']):>10}")
    return "\n".join(out) + "\n"


OPTIONS = {
    "filter": Option("auto", str, "Which processes per_pid lists: auto (the targets when given, else host-wide), "
                     "targets or host.", choices=("auto", "targets", "host")),
    "top": Option(20, int, "Processes listed in the text."),
}

COLLECTOR = Collector(
    name="runqlat", summary="eBPF: run-queue latency (time runnable threads waited for a CPU), per process",
    scope=Scope.HOST, collect=collect, requires=_bpf.requirements(TRACEPOINTS[0], TRACEPOINTS[2]),
    profiles=frozenset({"full"}), timeout_s=60, volatility=2, check=_bpf.check, options=OPTIONS)
