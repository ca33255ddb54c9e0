"""Host facts: kernel, load, memory, pressure, CPU, disks, file descriptors, top processes.

What: uname and os-release, uptime and load, ``/proc/meminfo``, ``/proc/pressure/*``
(PSI), ``/proc/vmstat``, ``/proc/stat``, CPU model and count, mounts with usage,
``/proc/sys/fs/file-nr``, the top processes by CPU time and by RSS, processes in
uninterruptible sleep (D state), cgroup v2 limits of the top-level slices, and the
sysctls that explain classic incidents (overcommit, somaxconn, SYN backlog, file-max,
pid_max, conntrack max).
Why: the first screen of any RCA: was the host out of memory, CPU, disk or file
descriptors, and which processes were the heavy ones.
Produces: raw copies under ``proc/`` (meminfo, vmstat, stat, loadavg, pressure-*,
file-nr, mounts...) and ``host.json`` (parsed: load, memory in bytes, psi, fd, mounts,
top_processes, d_state, cgroups, sysctls).
Overhead: reads /proc files and one pass over /proc/PID/stat (about 30 ms per 1,000
processes); no helper process.
Caveats: CPU time in ``top_processes`` is cumulative since each process started, not a
current rate (a rate would need two samples and time the incident does not have).
Options: ``[collectors.host] top`` (default 25) processes per list.
"""
from __future__ import annotations

import os
import pwd
from typing import Any

from agent.collector import Collector, Scope, read_text

PSEUDO_FS = {"proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "securityfs", "pstore",
             "debugfs", "tracefs", "bpf", "mqueue", "hugetlbfs", "configfs", "fusectl", "autofs",
             "rpc_pipefs", "nsfs", "binfmt_misc", "selinuxfs", "efivarfs", "ramfs"}
SYSCTLS = ("vm/overcommit_memory", "vm/overcommit_ratio", "vm/swappiness", "vm/min_free_kbytes",
           "vm/dirty_ratio", "vm/dirty_background_ratio", "vm/panic_on_oom",
           "net/core/somaxconn", "net/core/netdev_max_backlog", "net/ipv4/tcp_max_syn_backlog",
           "net/ipv4/tcp_syncookies", "net/ipv4/ip_local_port_range", "net/ipv4/tcp_tw_reuse",
           "net/ipv4/tcp_fin_timeout", "net/netfilter/nf_conntrack_max", "net/netfilter/nf_conntrack_count",
           "fs/file-max", "fs/nr_open", "fs/inotify/max_user_watches", "kernel/pid_max",
           "kernel/threads-max", "kernel/hung_task_timeout_secs", "kernel/panic", "kernel/tainted")
PAGE = os.sysconf("SC_PAGE_SIZE")
HZ = os.sysconf("SC_CLK_TCK")


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo to bytes (values in kB become bytes; counts stay counts)."""
    out = {}
    for line in text.splitlines():
        k, _, rest = line.partition(":")
        parts = rest.split()
        if not parts:
            continue
        try:
            v = int(parts[0])
        except ValueError:
            continue
        out[k.strip()] = v * 1024 if len(parts) > 1 and parts[1] == "kB" else v
    return out


def parse_psi(text: str) -> dict[str, dict[str, float]]:
    """``some avg10=0.00 avg60=0.00 avg300=0.00 total=0`` lines to nested dicts."""
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        vals = {}
        for kv in parts[1:]:
            k, _, v = kv.partition("=")
            try:
                vals[k] = float(v) if k != "total" else int(v)
            except ValueError:
                continue
        out[parts[0]] = vals
    return out


def parse_kv_table(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                pass
    return out


def _processes(limit: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], int, int]:
    rows = []
    threads = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        text = read_text(f"/proc/{name}/stat")
        if not text:
            continue
        try:
            rpar = text.rindex(")")
            comm = text[text.index("(") + 1:rpar]
            f = text[rpar + 2:].split()
            rows.append({"pid": int(name), "comm": comm, "state": f[0], "ppid": int(f[1]),
                         "cpu_s": (int(f[11]) + int(f[12])) / HZ, "threads": int(f[17]),
                         "rss_bytes": int(f[21]) * PAGE, "start_ticks": int(f[19])})
            threads += int(f[17])
        except (ValueError, IndexError):
            continue

    def detail(r: dict[str, Any]) -> dict[str, Any]:
        d = dict(r)
        try:
            d["user"] = pwd.getpwuid(os.stat(f"/proc/{r['pid']}").st_uid).pw_name
        except (KeyError, OSError):
            d["user"] = None
        cmd = (read_text(f"/proc/{r['pid']}/cmdline", "") or "").replace("\0", " ").strip()
        d["cmdline"] = cmd[:300]
        try:
            d["fds"] = len(os.listdir(f"/proc/{r['pid']}/fd"))
        except OSError:
            d["fds"] = None
        wchan = read_text(f"/proc/{r['pid']}/wchan")
        d["wchan"] = wchan.strip() if wchan and wchan.strip() != "0" else None
        return d

    by_cpu = [detail(r) for r in sorted(rows, key=lambda r: -r["cpu_s"])[:limit]]
    by_rss = [detail(r) for r in sorted(rows, key=lambda r: -r["rss_bytes"])[:limit]]
    d_state = [detail(r) for r in rows if r["state"] == "D"][:200]
    return by_cpu, by_rss, d_state, len(rows), threads


def _mounts() -> list[dict[str, Any]]:
    out, seen = [], set()
    for line in (read_text("/proc/self/mounts", "") or "").splitlines():
        parts = line.split()
        if len(parts) < 4 or parts[2] in PSEUDO_FS:
            continue
        mnt = parts[1].replace("\\040", " ")
        if mnt in seen:
            continue
        seen.add(mnt)
        try:
            st = os.statvfs(mnt)
        except OSError:
            continue
        size = st.f_blocks * st.f_frsize
        if size == 0:
            continue
        avail = st.f_bavail * st.f_frsize
        used = size - st.f_bfree * st.f_frsize
        out.append({"device": parts[0], "mount": mnt, "fstype": parts[2], "options": parts[3],
                    "size_bytes": size, "used_bytes": used, "avail_bytes": avail,
                    "used_percent": round(100.0 * used / (used + avail), 1) if used + avail else 0.0,
                    "inodes": st.f_files, "inodes_free": st.f_ffree,
                    "inodes_used_percent": round(100.0 * (st.f_files - st.f_ffree) / st.f_files, 1)
                    if st.f_files else 0.0})
    return out


def _cgroups() -> list[dict[str, Any]]:
    root = "/sys/fs/cgroup"
    out = []
    if not os.path.exists(f"{root}/cgroup.controllers"):
        return out
    dirs = [root] + sorted(os.path.join(root, d) for d in os.listdir(root)
                           if os.path.isdir(os.path.join(root, d)))
    for d in dirs[:40]:
        e: dict[str, Any] = {"path": d[len(root):] or "/"}
        for f in ("memory.max", "memory.current", "memory.high", "memory.swap.max", "cpu.max",
                  "pids.max", "pids.current", "memory.events"):
            v = read_text(f"{d}/{f}")
            if v is not None:
                e[f] = v.strip() if f != "memory.events" else parse_kv_table(v)
        if len(e) > 1:
            out.append(e)
    return out


def collect(ctx) -> None:
    limit = int(ctx.options.get("top", 25))
    for src in ("meminfo", "vmstat", "stat", "loadavg", "uptime", "mounts", "swaps", "version",
                "sys/fs/file-nr", "pressure/cpu", "pressure/memory", "pressure/io", "cpuinfo"):
        ctx.copy(f"/proc/{src}", "proc/" + src.replace("/", "-"))
    ctx.copy("/etc/os-release", "os-release")
    u = os.uname()
    load = (read_text("/proc/loadavg", "") or "").split()
    psi = {r: parse_psi(read_text(f"/proc/pressure/{r}", "") or "") for r in ("cpu", "memory", "io")}
    fdnr = (read_text("/proc/sys/fs/file-nr", "0 0 0") or "0 0 0").split()
    by_cpu, by_rss, d_state, nprocs, nthreads = _processes(limit)
    sysctls = {}
    for s in SYSCTLS:
        v = read_text(f"/proc/sys/{s}")
        if v is not None:
            sysctls[s.replace("/", ".")] = v.strip()
    cpu_model = ""
    for line in (read_text("/proc/cpuinfo", "") or "").splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    meminfo = parse_meminfo(read_text("/proc/meminfo", "") or "")
    ctx.write_json("host.json", {
        "kernel": {"release": u.release, "version": u.version, "machine": u.machine},
        "hostname": u.nodename,
        "uptime_s": float((read_text("/proc/uptime", "0") or "0").split()[0]),
        "load": {"1m": float(load[0]), "5m": float(load[1]), "15m": float(load[2]),
                 "runnable": load[3]} if len(load) >= 4 else {},
        "cpu": {"count": os.cpu_count(), "model": cpu_model},
        "memory": meminfo,
        "psi": psi,
        "vmstat": parse_kv_table(read_text("/proc/vmstat", "") or ""),
        "fd": {"allocated": int(fdnr[0]), "unused": int(fdnr[1]), "max": int(fdnr[2])},
        "processes": {"count": nprocs, "threads": nthreads},
        "mounts": _mounts(),
        "top_processes": {"by_cpu": by_cpu, "by_rss": by_rss},
        "d_state": d_state,
        "cgroups": _cgroups(),
        "sysctls": sysctls,
    })
    ctx.note(processes=nprocs, threads=nthreads, d_state=len(d_state))


COLLECTOR = Collector(
    name="host", summary="kernel, load, memory, PSI, CPU, disks, fds, top and D-state processes, sysctls",
    scope=Scope.HOST, collect=collect, timeout_s=15, volatility=40)
