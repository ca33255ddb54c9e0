"""OOM kills during the probe window, as the kernel marks each victim (eBPF, oom:mark_victim).

What: every process the kernel's OOM killer chose during the window
(``oom:mark_victim``): the victim's pid, and on kernels that record them (6.8 and
later) its command, uid, total-vm, anon/file/shmem RSS, page tables and
oom_score_adj; plus the task whose allocation triggered the kill (pid, command) and
its cgroup (v2 path when it can be resolved), with the time.
Why: an OOM kill during the incident is often the incident: a worker dies, its
connections reset, a restart loop begins. The kernel log says so too (``dmesg``),
but it can be rate-limited, rotated away or unreadable in a container; this records
the kill from the kernel's own hook with who caused it.
Produces: ``oomkill.json``: ``window``, ``attached``, ``count``, ``events``: one per
victim with pid, comm, time (UTC), total_vm_kb, anon_rss_kb, file_rss_kb,
shmem_rss_kb, pgtables_kb, uid, oom_score_adj (where the kernel has them),
trigger_pid, trigger_comm, and on cgroup v2 hosts cgroup_id and cgroup; ``oomkill.txt``. ``attached.json``.
Overhead: the tracepoint fires only when the OOM killer picks a victim: none.
Compiling: ~0.5 s of CPU and ~100 MB of memory for clang, which on a host that is
already out of memory is not free: that is why it is in the full profile only (the
``dmesg`` collector reads the same kills from the kernel log at no cost).
Caveats: only kills inside the window (earlier ones are in ``dmesg`` and the cgroups'
``memory.events``). On kernels before 6.8 the tracepoint carries only the pid; the
command then comes from the triggering context when it is the victim itself, else
it is unknown. Fields are read at the offsets of this kernel's tracepoint format.
Safety: tracepoints only; programs and maps are released at the end of the window
and when the collector is killed. Never provokes anything.
Options: none.
"""
from __future__ import annotations

import os
from typing import Any

from agent.collector import Collector, Scope, Skip, read_text
from collectors import _bpf

TRACEPOINT = "oom:mark_victim"
EVENT_ENTRIES = 1024
NUMERIC = ("total_vm", "anon_rss", "file_rss", "shmem_rss", "pgtables", "uid", "oom_score_adj")

HEAD = r"""
struct gh_oom_t { u64 ts; u64 cgroup_id; u32 pid; u32 trigger_pid; u64 total_vm; u64 anon_rss; u64 file_rss;
                  u64 shmem_rss; u64 pgtables; u64 uid; s64 oom_score_adj; u32 has; u32 pad;
                  char comm[16]; char trigger_comm[16]; };
BPF_HASH(gh_oom_events, u32, struct gh_oom_t, GH_EVENT_ENTRIES);
BPF_ARRAY(gh_oom_count, u64, 1);
"""


def program(fields: dict[str, dict[str, Any]]) -> str:
    """The C text for this kernel's mark_victim format (each field read at its offset)."""
    if "pid" not in fields:
        raise Skip(f"{TRACEPOINT} has no pid field in this kernel")
    width = {1: "u8", 2: "u16", 4: "u32", 8: "u64"}
    signed = {1: "s8", 2: "s16", 4: "s32", 8: "s64"}
    lines = ["int gh_oom_victim(void *ctx) {",
             "    struct gh_oom_t e = {};",
             "    e.ts = bpf_ktime_get_ns();",
             "    e.cgroup_id = bpf_get_current_cgroup_id();",
             "    e.trigger_pid = bpf_get_current_pid_tgid() >> 32;",
             "    bpf_get_current_comm(&e.trigger_comm, sizeof(e.trigger_comm));",
             f"    {{ u32 v = 0; bpf_probe_read_kernel(&v, 4, (u8 *)ctx + {fields['pid']['offset']}); e.pid = v; }}"]
    has = 0
    for i, name in enumerate(NUMERIC):
        f = fields.get(name)
        if not f or f["size"] not in width:
            continue
        t = (signed if name == "oom_score_adj" else width)[f["size"]]
        lines.append(f"    {{ {t} v = 0; bpf_probe_read_kernel(&v, {f['size']}, (u8 *)ctx + {f['offset']}); "
                     f"e.{name} = v; }}")
        has |= 1 << i
    if "comm" in fields and fields["comm"]["data_loc"]:
        lines.append(f"    {{ u32 loc = 0; bpf_probe_read_kernel(&loc, 4, (u8 *)ctx + {fields['comm']['offset']}); "
                     "bpf_probe_read_kernel_str(&e.comm, sizeof(e.comm), (u8 *)ctx + (loc & 0xffff)); }")
        has |= 1 << 15
    elif "comm" in fields:
        lines.append(f"    bpf_probe_read_kernel_str(&e.comm, sizeof(e.comm), (u8 *)ctx + {fields['comm']['offset']});")
        has |= 1 << 15
    lines += [f"    e.has = {has};",
              "    u32 k = e.pid;",
              "    gh_oom_events.update(&k, &e);",
              "    int i = 0;",
              "    u64 *c = gh_oom_count.lookup(&i);",
              "    if (c) __sync_fetch_and_add(c, 1);",
              "    return 0;", "}"]
    return _bpf.defines(GH_EVENT_ENTRIES=EVENT_ENTRIES) + HEAD + "\n".join(lines) + "\n"


def cgroup_path(cgid: int) -> str | None:
    """A cgroup v2 id (the inode of its folder) as a path under the unified hierarchy."""
    roots = []
    for line in (read_text("/proc/self/mounts", "") or "").splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[2] == "cgroup2":
            roots.append(parts[1])
    for root in roots:
        for dirpath, dirnames, _ in os.walk(root):
            try:
                if os.stat(dirpath).st_ino == cgid:
                    return "/" + os.path.relpath(dirpath, root).lstrip(".").lstrip("/")
            except OSError:
                continue
            if dirpath.count("/") - root.count("/") > 12:
                dirnames.clear()
    return None


def collect(ctx) -> None:
    _bpf.ensure_tracefs()
    text = program(_bpf.tracepoint_fields(TRACEPOINT))
    with _bpf.Probe(ctx, text, [(TRACEPOINT, "gh_oom_victim")]) as probe:
        win = probe.run_window()
        attached = probe.attached_at_end
        events_raw = _bpf.items(probe["gh_oom_events"])
        c = probe["gh_oom_count"]
        count = int(c[c.Key(0)].value)
    events = []
    for _, e in events_raw:
        rec: dict[str, Any] = {"pid": int(e.pid), "time": _bpf.mono_ns_to_utc(int(e.ts))}
        comm = e.comm.decode("utf-8", "replace") if e.has & (1 << 15) else ""
        trig = e.trigger_comm.decode("utf-8", "replace")
        rec["comm"] = comm or (trig if int(e.trigger_pid) == int(e.pid) else None)
        for i, name in enumerate(NUMERIC):
            if e.has & (1 << i):
                rec[name if name in ("uid", "oom_score_adj") else f"{name}_kb"] = int(getattr(e, name))
        rec.update({"trigger_pid": int(e.trigger_pid), "trigger_comm": trig})
        if int(e.cgroup_id) and os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
            # the triggering task's cgroup (v2 only: on a v1 host the memcg is in dmesg's oom-kill line)
            rec["cgroup_id"] = int(e.cgroup_id)
            rec["cgroup"] = cgroup_path(int(e.cgroup_id))
        events.append(rec)
    events.sort(key=lambda r: r["time"])
    if count > len(events):
        ctx.note(events_merged=count - len(events))   # a pid killed twice, or the map full
    doc = {"window": win, "window_s": win["seconds"], "attached": attached, "count": count, "events": events}
    ctx.write_json("oomkill.json", doc)
    lines = [f"OOM kills, {win['start_utc']} .. {win['end_utc']} ({win['seconds']:.2f} s): {count}"]
    for r in events:
        rss = sum(r.get(k, 0) for k in ("anon_rss_kb", "file_rss_kb", "shmem_rss_kb"))
        lines.append(f"{r['time']} killed pid {r['pid']} ({r.get('comm') or '?'})"
                     + (f" rss {rss} kB total-vm {r.get('total_vm_kb')} kB" if "anon_rss_kb" in r else "")
                     + f"; triggered by {r['trigger_comm']} (pid {r['trigger_pid']})"
                     + (f" in cgroup {r['cgroup']}" if r.get("cgroup") else ""))
    ctx.write_text("oomkill.txt", "\n".join(lines) + "\n")
    ctx.note(kills=count, window_s=win["seconds"])


COLLECTOR = Collector(
    name="oomkill", summary="eBPF: OOM-killer victims during the probe window, with who triggered them",
    scope=Scope.HOST, collect=collect, requires=_bpf.requirements(TRACEPOINT),
    profiles=frozenset({"full"}), timeout_s=60, volatility=5, check=_bpf.check)
