"""Block I/O latency per device and operation (eBPF, block tracepoints; bcc's biolatency -D -F).

What: for the probe window, the time from a request being issued to the device driver
(``block:block_rq_issue``) to its completion (``block:block_rq_complete``), per disk
and per operation (read, write, flush, discard...), aggregated in the kernel: count,
bytes, errors, total, min and max, and a log2 histogram in microseconds. Also who
issued the requests (the issuing task's name per device and operation) and the
requests still outstanding when the window ends, with the oldest one's age.
Why: "the disk is slow" is the cause of many incidents that show up as slow
``fsync``/``read`` calls, D-state processes and IO pressure. Device latency per disk
says whether the storage itself stalled (a p99 in hundreds of ms, requests stuck for
seconds) or whether the wait is above it (queueing in the filesystem, throttling).
Produces: ``biolatency.json``: ``window``; ``devices``: one record per (device, op)
with device (name), dev (major:minor), op, count, bytes, errors, total_us, mean_us,
min_us, max_us, p50_us/p90_us/p99_us and ``hist``; ``issuers`` (comm, device, op,
count, bytes); ``in_flight`` per device (count, oldest_us); ``biolatency.txt``: the
table and per-device histograms. ``attached.json``.
Overhead: two short programs per block request (a busy NVMe disk does 100,000+ per
second): around 1-2 % of a CPU at that rate, nothing on an idle disk. In the full
profile only (or ``[collectors.biolatency] enabled = true``). Compiling: ~0.5 s of CPU.
Caveats: device time only (issue to completion), not the time a request waited in the
scheduler queue before it. Requests are matched by (device, sector): two concurrent
requests to the same sector (flushes) may be merged into one sample. Requests
issued before the window are not counted. Device-mapper and MD stacks show their
underlying disks. Fields are read at the offsets of this kernel's tracepoint format,
so nothing depends on the kernel headers' structure layouts.
Safety: tracepoints only; programs and maps are released at the end of the window
and when the collector is killed.
Options: ``[collectors.biolatency] top`` = issuers listed (default 20).
"""
from __future__ import annotations

import time
from typing import Any

from agent.collector import Collector, Option, Scope, Skip, read_text
from collectors import _bpf

TRACEPOINTS = ("block:block_rq_issue", "block:block_rq_complete")
START_ENTRIES, STAT_ENTRIES = 65536, 1024
OPS = {"R": "read", "W": "write", "D": "discard", "F": "flush", "E": "secure_erase", "N": "other"}

HEAD = r"""
struct gh_rq_t { u32 dev; u32 pad; u64 sector; };
struct gh_rqv_t { u64 ts; u64 bytes; u32 op; u32 pad; };
struct gh_dkey_t { u32 dev; u32 op; };
struct gh_hkey_t { u32 dev; u32 op; u64 slot; };
struct gh_dstat_t { u64 count; u64 bytes; u64 errors; u64 total_ns; u64 max_ns; u64 min_ns; };
struct gh_ikey_t { char comm[16]; u32 dev; u32 op; };
struct gh_ival_t { u64 count; u64 bytes; };

BPF_HASH(gh_bio_start, struct gh_rq_t, struct gh_rqv_t, GH_START_ENTRIES);
BPF_HASH(gh_bio_stat, struct gh_dkey_t, struct gh_dstat_t, GH_STAT_ENTRIES);
BPF_HASH(gh_bio_hist, struct gh_hkey_t, u64, GH_STAT_ENTRIES * 16);
BPF_HASH(gh_bio_who, struct gh_ikey_t, struct gh_ival_t, GH_STAT_ENTRIES * 4);
BPF_ARRAY(gh_bio_drop, u64, 1);

static inline void gh_drop(void) {
    int i = 0;
    u64 *d = gh_bio_drop.lookup(&i);
    if (d) __sync_fetch_and_add(d, 1);
}

/* the operation: the first letter of rwbs, or the second after F (a flush before a write) */
static inline u32 gh_op(void *ctx, int off) {
    char rwbs[2] = {};
    bpf_probe_read_kernel(&rwbs, 2, (u8 *)ctx + off);
    if (rwbs[0] == 'F' && rwbs[1] != 0)
        return rwbs[1];
    return rwbs[0];
}
"""

ISSUE = r"""
int gh_bio_issue(void *ctx) {
    struct gh_rq_t k = {};
    bpf_probe_read_kernel(&k.dev, 4, (u8 *)ctx + OFF_dev);
    bpf_probe_read_kernel(&k.sector, 8, (u8 *)ctx + OFF_sector);
    struct gh_rqv_t v = {.ts = bpf_ktime_get_ns(), .op = gh_op(ctx, OFF_rwbs)};
    u32 nr = 0;
    bpf_probe_read_kernel(&nr, 4, (u8 *)ctx + GH_BYTES_OFF);
    v.bytes = GH_BYTES_SCALE * (u64)nr;
    if (gh_bio_start.update(&k, &v) != 0)
        gh_drop();
    struct gh_ikey_t ik = {};
    bpf_probe_read_kernel(&ik.comm, 16, (u8 *)ctx + OFF_comm);
    ik.dev = k.dev;
    ik.op = v.op;
    struct gh_ival_t zero = {};
    struct gh_ival_t *iv = gh_bio_who.lookup_or_try_init(&ik, &zero);
    if (iv) {
        __sync_fetch_and_add(&iv->count, 1);
        __sync_fetch_and_add(&iv->bytes, v.bytes);
    }
    return 0;
}
"""

COMPLETE = r"""
int gh_bio_done(void *ctx) {
    struct gh_rq_t k = {};
    bpf_probe_read_kernel(&k.dev, 4, (u8 *)ctx + OFF_C_dev);
    bpf_probe_read_kernel(&k.sector, 8, (u8 *)ctx + OFF_C_sector);
    struct gh_rqv_t *s = gh_bio_start.lookup(&k);
    if (!s)
        return 0;
    u64 delta = bpf_ktime_get_ns() - s->ts;
    struct gh_dkey_t dk = {.dev = k.dev, .op = s->op};
    u64 bytes = s->bytes;
    gh_bio_start.delete(&k);
    int err = 0;
    bpf_probe_read_kernel(&err, 4, (u8 *)ctx + OFF_C_error);
    struct gh_dstat_t zero = {};
    struct gh_dstat_t *st = gh_bio_stat.lookup_or_try_init(&dk, &zero);
    if (!st) {
        gh_drop();
        return 0;
    }
    __sync_fetch_and_add(&st->count, 1);
    __sync_fetch_and_add(&st->bytes, bytes);
    __sync_fetch_and_add(&st->total_ns, delta);
    if (err)
        __sync_fetch_and_add(&st->errors, 1);
    if (delta > st->max_ns)
        st->max_ns = delta;
    if (st->min_ns == 0 || delta < st->min_ns)
        st->min_ns = delta;
    struct gh_hkey_t hk = {.dev = k.dev, .op = dk.op, .slot = bpf_log2l(delta / 1000)};
    u64 z = 0;
    u64 *c = gh_bio_hist.lookup_or_try_init(&hk, &z);
    if (c)
        __sync_fetch_and_add(c, 1);
    return 0;
}
"""


def program(issue: dict[str, dict[str, Any]], complete: dict[str, dict[str, Any]]) -> str:
    """The C text for this kernel's block_rq_issue/complete formats (field offsets as #defines)."""
    need_i = {"dev", "sector", "rwbs", "comm"}
    need_c = {"dev", "sector", "rwbs", "error"}
    if not need_i <= set(issue) or not need_c <= set(complete):
        raise Skip(f"block tracepoint formats lack fields: issue {sorted(need_i - set(issue))}, "
                   f"complete {sorted(need_c - set(complete))}")
    if issue["dev"]["size"] != 4 or issue["sector"]["size"] != 8:
        raise Skip("block tracepoint formats have unexpected field sizes")
    if "bytes" in issue:     # bytes of the request; older kernels: sectors of 512 bytes
        size_off, scale = issue["bytes"]["offset"], 1
    else:
        size_off, scale = issue["nr_sector"]["offset"], 512
    d = {f"OFF_{k}": issue[k]["offset"] for k in need_i}
    d.update({f"OFF_C_{k}": complete[k]["offset"] for k in ("dev", "sector", "error")})
    d.update(GH_BYTES_OFF=size_off, GH_BYTES_SCALE=scale, GH_START_ENTRIES=START_ENTRIES,
             GH_STAT_ENTRIES=STAT_ENTRIES)
    return _bpf.defines(**d) + HEAD + ISSUE + COMPLETE


def device_name(dev: int) -> tuple[str, str]:
    """Kernel dev_t (major << 20 | minor) -> ("vda", "254:0")."""
    mm = f"{dev >> 20}:{dev & ((1 << 20) - 1)}"
    for line in (read_text(f"/sys/dev/block/{mm}/uevent", "") or "").splitlines():
        if line.startswith("DEVNAME="):
            return line.split("=", 1)[1], mm
    return mm, mm


def collect(ctx) -> None:
    top = int(ctx.options.get("top", 20))
    _bpf.ensure_tracefs()
    text = program(_bpf.tracepoint_fields(TRACEPOINTS[0]), _bpf.tracepoint_fields(TRACEPOINTS[1]))
    with _bpf.Probe(ctx, text, [(TRACEPOINTS[1], "gh_bio_done"), (TRACEPOINTS[0], "gh_bio_issue")]) as probe:
        win = probe.run_window()
        attached = probe.attached_at_end
        now = time.monotonic_ns()
        stat = _bpf.items(probe["gh_bio_stat"])
        hist = _bpf.items(probe["gh_bio_hist"])
        who = _bpf.items(probe["gh_bio_who"])
        start = _bpf.items(probe["gh_bio_start"])
        dm = probe["gh_bio_drop"]
        drops = int(dm[dm.Key(0)].value)

    def op_name(op: int) -> str:
        return OPS.get(chr(op) if 0 < op < 128 else "?", f"op_{op}")
    slots: dict[tuple[int, int], dict[int, int]] = {}
    for k, v in hist:
        slots.setdefault((int(k.dev), int(k.op)), {})[int(k.slot)] = int(v)
    devices = []
    for k, v in stat:
        name, mm = device_name(int(k.dev))
        rec = {"device": name, "dev": mm, "op": op_name(int(k.op)), "bytes": int(v.bytes), "errors": int(v.errors)}
        rec.update(_bpf.stats(slots.get((int(k.dev), int(k.op)), {}), int(v.count), int(v.total_ns),
                              int(v.max_ns), int(v.min_ns)))
        devices.append(rec)
    devices.sort(key=lambda r: (-r["total_us"], r["device"], r["op"]))
    issuers = []
    for k, v in who:
        issuers.append({"comm": k.comm.decode("utf-8", "replace"), "device": device_name(int(k.dev))[0],
                        "op": op_name(int(k.op)), "count": int(v.count), "bytes": int(v.bytes)})
    issuers.sort(key=lambda r: (-r["bytes"], -r["count"]))
    pending: dict[str, dict[str, Any]] = {}
    for k, v in start:
        name = device_name(int(k.dev))[0]
        p = pending.setdefault(name, {"device": name, "count": 0, "oldest_us": 0.0})
        p["count"] += 1
        p["oldest_us"] = max(p["oldest_us"], round((now - int(v.ts)) / 1000, 1))
    if drops:
        ctx.partial(f"{drops} block requests not recorded (BPF maps full)")
    doc = {"window": win, "window_s": win["seconds"], "attached": attached, "devices": devices,
           "issuers": issuers[:200], "in_flight": sorted(pending.values(), key=lambda p: -p["oldest_us"]),
           "dropped": drops}
    ctx.write_json("biolatency.json", doc)
    ctx.write_text("biolatency.txt", render(doc, top))
    ctx.note(requests=sum(d["count"] for d in devices), devices=len({d["device"] for d in devices}),
             window_s=win["seconds"])


def render(doc: dict[str, Any], top: int = 20) -> str:
    w = doc["window"]

    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.1f}"
    out = [f"block I/O latency (issue to completion), {w['start_utc']} .. {w['end_utc']} ({w['seconds']:.2f} s)", "",
           f"{'DEVICE':<12} {'OP':<8} {'COUNT':>8} {'MB':>9} {'ERR':>5} {'P50 us':>10} {'P99 us':>10} {'MAX us':>10}"]
    for d in doc["devices"]:
        out.append(f"{d['device']:<12} {d['op']:<8} {d['count']:>8} {d['bytes'] / 2**20:>9.2f} {d['errors']:>5} "
                   f"{f(d['p50_us']):>10} {f(d['p99_us']):>10} {f(d['max_us']):>10}")
    if not doc["devices"]:
        out.append("(no block requests completed in the window)")
    for p in doc["in_flight"]:
        out.append(f"{p['device']}: {p['count']} requests outstanding at the end, "
                   f"oldest {p['oldest_us'] / 1000:.1f} ms")
    for d in doc["devices"][:6]:
        out += ["", f"{d['device']} {d['op']}: {d['count']} requests"]
        out.append(_bpf.render_hist(d["hist"]).rstrip("\n"))
    if doc["issuers"]:
        out += ["", f"Top {min(top, len(doc['issuers']))} issuers:",
                f"{'COMM':<16} {'DEVICE':<12} {'OP':<8} {'COUNT':>8} {'MB':>9}"]
        for r in doc["issuers"][:top]:
            out.append(f"{r['comm']:<16} {r['device']:<12} {r['op']:<8} {r['count']:>8} {r['bytes'] / 2**20:>9.2f}")
    return "\n".join(out) + "\n"


OPTIONS = {
    "top": Option(20, int, "Issuers (processes) listed in the text."),
}

COLLECTOR = Collector(
    name="biolatency", summary="eBPF: block I/O latency per disk and operation, issuers, requests outstanding",
    scope=Scope.HOST, collect=collect, requires=_bpf.requirements(*TRACEPOINTS),
    profiles=frozenset({"full"}), timeout_s=60, volatility=4, check=_bpf.check, options=OPTIONS)
