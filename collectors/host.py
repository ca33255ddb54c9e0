"""Host facts: kernel, OS, load, memory, pressure, CPU, disks, file descriptors, processes.

What: uname and os-release, uptime and load, ``/proc/meminfo``, ``/proc/pressure/*``
(PSI), ``/proc/vmstat``, ``/proc/stat`` (and the CPU busy/iowait/steal split over a short
window), CPU model and counts, mounts with usage (``statvfs`` of every real mount, pseudo
filesystems skipped), ``/proc/sys/fs/file-nr``, the top processes by CPU now (over the
window), by CPU time since start and by RSS, every process in uninterruptible sleep
(D state) with its kernel wait channel, cgroup limits and usage of the root and the
top-level cgroups (v2, or the v1 memory/cpu/pids hierarchies), and the sysctls that
explain classic incidents (overcommit, swappiness, somaxconn, SYN backlog, file-max,
pid_max, conntrack max...).
Why: the first screen of any RCA: was the host out of memory, CPU, disk, file descriptors
or PIDs, was it stalling (PSI, D state), and which processes were the heavy ones.
Produces: raw copies under ``proc/`` (meminfo, vmstat, stat, loadavg, uptime, pressure-*,
fs-file-nr, mountinfo, cpuinfo...), ``os-release``, and ``host.json``: kernel, os, uptime_s,
boot_time, timezone ``{name, utc_offset, abbreviation}``, load, cpu (counts, model, usage
over the window), memory (meminfo in bytes), memory_summary,
psi ``{cpu|memory|io: {some: {avg10, avg60, avg300, total}, full: {...}}}``, vmstat,
fd ``{allocated, unused, max}``, processes, mounts (with usage), top_processes
``{by_cpu_now, by_cpu, by_rss}``, d_state (command lines redacted by agent/redact.py), cgroups,
sysctls, errors. A process fact that could
not be read (user, cmdline, fds) is null, and the row's ``unreadable`` says why
(``{fact: denied | gone | other}``).
Overhead: reads /proc files and /proc/PID/stat of every process twice, ``cpu_sample_s``
apart (the rest of the work is done inside that window); details (user, cmdline, fd count,
wchan, cgroup) only for the processes listed. No helper process. About 0.3 s in all.
Caveats: ``by_cpu`` is CPU time since each process started; ``by_cpu_now`` is the rate
over the window (100 % = one CPU). goldenhour's own processes are left out of the
rankings (never out of ``d_state``). Reads that can block on a sick host (``statvfs`` of a
hung NFS/FUSE mount, ``/proc/PID/cmdline`` of a process whose memory map lock is held)
run in a watchdog thread and are abandoned after ``read_timeout_s``, with the reason
recorded, so one stuck mount cannot cost the whole host picture. Mounts are those of
goldenhour's mount namespace.
Options: ``[collectors.host] top`` (default 50) processes per list, ``cpu_sample_s``
(default 0.25; 0 = no window, ``by_cpu_now`` empty), ``read_timeout_s`` (default 1.0).
"""
from __future__ import annotations

import os
import pwd
import queue
import re
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable

from agent import cgroups, procfs
from agent.collector import Collector, Option, Scope, read_text
from agent.redact import RULES, Redactor

# Filesystems with no disk space to run out of (tmpfs, overlay, network filesystems are kept).
PSEUDO_FS = frozenset({
    "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "securityfs", "pstore", "debugfs",
    "tracefs", "bpf", "mqueue", "hugetlbfs", "configfs", "fusectl", "autofs", "rpc_pipefs", "nsfs",
    "binfmt_misc", "selinuxfs", "efivarfs", "ramfs", "nfsd", "devfs", "squashfs", "iso9660"})
NETWORK_FS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "9p", "afs",
                        "lustre", "gpfs", "beegfs"})
SYSCTLS = (
    "vm/overcommit_memory", "vm/overcommit_ratio", "vm/overcommit_kbytes", "vm/swappiness",
    "vm/min_free_kbytes", "vm/dirty_ratio", "vm/dirty_background_ratio", "vm/dirty_bytes",
    "vm/dirty_background_bytes", "vm/panic_on_oom", "vm/max_map_count", "vm/zone_reclaim_mode",
    "net/core/somaxconn", "net/core/netdev_max_backlog", "net/core/rmem_max", "net/core/wmem_max",
    "net/ipv4/tcp_max_syn_backlog", "net/ipv4/tcp_syncookies", "net/ipv4/tcp_abort_on_overflow",
    "net/ipv4/ip_local_port_range", "net/ipv4/tcp_tw_reuse", "net/ipv4/tcp_fin_timeout",
    "net/ipv4/tcp_max_tw_buckets", "net/ipv4/tcp_rmem", "net/ipv4/tcp_wmem", "net/ipv4/tcp_mem",
    "net/netfilter/nf_conntrack_max", "net/netfilter/nf_conntrack_count",
    "net/nf_conntrack_max", "fs/file-max", "fs/nr_open", "fs/inotify/max_user_watches",
    "fs/inotify/max_user_instances", "fs/aio-max-nr", "fs/aio-nr", "kernel/pid_max",
    "kernel/threads-max", "kernel/hung_task_timeout_secs", "kernel/panic", "kernel/panic_on_oops",
    "kernel/softlockup_panic", "kernel/tainted", "kernel/sched_autogroup_enabled")
RAW_FILES = ("meminfo", "vmstat", "stat", "loadavg", "uptime", "self/mountinfo", "swaps", "version",
             "sys/fs/file-nr", "pressure/cpu", "pressure/memory", "pressure/io", "cpuinfo",
             "buddyinfo", "diskstats")
CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest", "guest_nice")
PAGE = os.sysconf("SC_PAGE_SIZE")
HZ = os.sysconf("SC_CLK_TCK")
CMDLINE_MAX = 512


# -- pure parsers ------------------------------------------------------------

def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo to a dict: values in kB become bytes, plain counts stay counts.

    Args: text: the file's contents.
    Returns: {"MemTotal": bytes, ..., "HugePages_Total": count}.
    Errors: none; lines that do not parse are left out.
    """
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


# the pressure files and ``name value`` tables (vmstat, memory.events, cpu.stat) read like the cgroup files:
# one parser each, in agent/cgroups.py
parse_psi = cgroups.parse_psi
parse_kv_table = cgroups.parse_kv


def parse_os_release(text: str) -> dict[str, str]:
    """os-release (shell-style ``KEY="value"``) to {KEY: value} with quotes and escapes removed."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, _, v = line.partition("=")
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
            quote, v = v[0], v[1:-1]
            if quote == '"':
                v = re.sub(r'\\([\\"$`])', r"\1", v)
        out[k.strip()] = v
    return out


def parse_proc_stat(text: str) -> dict[str, Any]:
    """/proc/stat to {"cpu": {user..guest_nice: ticks}, "cpus": N, "ctxt", "btime", "processes",
    "procs_running", "procs_blocked"}; ticks are USER_HZ (``getconf CLK_TCK``)."""
    out: dict[str, Any] = {"cpus": 0}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "cpu":
            out["cpu"] = {k: int(v) for k, v in zip(CPU_FIELDS, parts[1:], strict=False)}
        elif parts[0].startswith("cpu"):
            out["cpus"] += 1
        elif parts[0] in ("ctxt", "btime", "processes", "procs_running", "procs_blocked") and len(parts) == 2:
            out[parts[0]] = int(parts[1])
    return out


def cpu_usage(a: dict[str, int], b: dict[str, int]) -> dict[str, float]:
    """Percent of all CPU time spent in each state between two /proc/stat ``cpu`` samples.

    ``guest`` time is already counted in ``user`` by the kernel, so it is not added again.
    Returns {} when no time passed between the samples.
    """
    delta = {k: max(0, b.get(k, 0) - a.get(k, 0)) for k in CPU_FIELDS}
    total = sum(v for k, v in delta.items() if k not in ("guest", "guest_nice"))
    if total <= 0:
        return {}
    out = {k: round(100.0 * delta[k] / total, 1) for k in CPU_FIELDS[:8]}
    out["busy"] = round(100.0 - out["idle"] - out["iowait"], 1)
    return out


def parse_pid_stat(text: str) -> dict[str, Any] | None:
    """One /proc/PID/stat line to {pid, comm, state, ppid, ticks, threads, start_ticks, rss_bytes}.

    Parsed by ``agent.procfs.parse_stat`` (the command name may hold spaces and parentheses).
    Returns None for a line that does not parse.
    """
    try:
        st = procfs.parse_stat(text)
    except ValueError:
        return None
    return _row(st)


def _row(st: procfs.Stat) -> dict[str, Any]:
    return {"pid": st.pid, "comm": st.comm, "state": st.state, "ppid": st.ppid, "ticks": st.utime + st.stime,
            "threads": st.num_threads, "start_ticks": st.starttime, "rss_bytes": st.rss_pages * PAGE}


def _unoctal(s: str) -> str:
    """Undo the ``\\040``-style escapes of /proc mount tables (space, tab, newline, backslash)."""
    if "\\" not in s:
        return s
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 4 <= len(s) and s[i + 1:i + 4].isdigit():
            out.append(chr(int(s[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[dict[str, str]]:
    """/proc/PID/mountinfo to [{mount, fstype, device, options, dev (major:minor), root}], in mount order."""
    out = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        lf, rf = left.split(), right.split()
        if len(lf) < 6 or len(rf) < 2:
            continue
        out.append({"mount": _unoctal(lf[4]), "fstype": rf[0], "device": _unoctal(rf[1]),
                    "options": lf[5], "dev": lf[2], "root": _unoctal(lf[3])})
    return out


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """A summary of /proc/cpuinfo: model, vendor, processors, sockets, physical cores, hypervisor flag."""
    model = vendor = ""
    procs = 0
    sockets, cores = set(), set()
    phys = "0"
    hypervisor = False
    for line in text.splitlines():
        k, _, v = line.partition(":")
        k, v = k.strip(), v.strip()
        if k == "processor":
            procs += 1
        elif k in ("model name", "Model", "cpu model") and not model:
            model = v
        elif k == "vendor_id" and not vendor:
            vendor = v
        elif k == "physical id":
            phys = v
            sockets.add(v)
        elif k == "core id":
            cores.add((phys, v))
        elif k == "flags" and " hypervisor" in f" {v}":
            hypervisor = True
    return {"model": model, "vendor": vendor, "processors": procs, "sockets": len(sockets) or None,
            "cores": len(cores) or None, "hypervisor": hypervisor}


# -- bounded reads -------------------------------------------------------------

class Watchdog:
    """Runs calls that may block forever (statvfs of a hung mount, cmdline of a locked process)
    in a daemon thread, and gives up on one after ``timeout`` seconds.

    A stuck thread is abandoned (it dies with the collector's process) and a new one takes
    the next call; after ``max_stuck`` abandoned calls every further call fails at once.
    """

    STUCK = object()

    def __init__(self, timeout: float, max_stuck: int = 4):
        self.timeout = timeout
        self.max_stuck = max_stuck
        self.stuck = 0
        self._q: queue.Queue | None = None

    def _worker(self, q: queue.Queue) -> None:
        while True:
            fn, args, box, done = q.get()
            try:
                box.append((True, fn(*args)))
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller
                box.append((False, exc))
            done.set()

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, its exception re-raised, or ``Watchdog.STUCK`` if it did not return in time."""
        if self.stuck >= self.max_stuck:
            return self.STUCK
        if self._q is None:
            self._q = queue.Queue()
            threading.Thread(target=self._worker, args=(self._q,), daemon=True, name="host-watchdog").start()
        box: list[tuple[bool, Any]] = []
        done = threading.Event()
        self._q.put((fn, args, box, done))
        if not done.wait(self.timeout):
            self.stuck += 1
            self._q = None          # that worker is stuck in the call; the next call gets a fresh one
            return self.STUCK
        ok, val = box[0]
        if not ok:
            raise val
        return val


# -- readers --------------------------------------------------------------------

def _sample_processes() -> dict[int, dict[str, Any]]:
    rows = {}
    for pid in procfs.pids():
        try:
            rows[pid] = _row(procfs.stat(pid))
        except procfs.ProcError:
            continue     # exited meanwhile
    return rows


_users: dict[int, str | None] = {}


def _user(uid: int) -> str | None:
    if uid not in _users:
        try:
            _users[uid] = pwd.getpwuid(uid).pw_name
        except KeyError:
            _users[uid] = str(uid)
    return _users[uid]


def _details(pid: int, red: Redactor | None = None) -> dict[str, Any]:
    """The slower facts of one process (may block: called through the watchdog).

    A fact that could not be read is None, and ``unreadable`` says why: {fact: denied | gone | other}.
    The command line goes through the redactor (agent/redact.py) before it is cut to ``CMDLINE_MAX``.
    """
    red = red or Redactor()
    d: dict[str, Any] = {}
    unreadable: dict[str, str] = {}
    base = f"/proc/{pid}"
    try:
        d["user"] = _user(os.stat(base).st_uid)
    except OSError as exc:
        d["user"] = None
        unreadable["user"] = procfs.cause_of(exc)
    try:
        raw = procfs.read_bytes(f"{base}/cmdline", 4 * CMDLINE_MAX)
        args = [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]
        if len(raw) == 4 * CMDLINE_MAX and args:
            args = args[:-1] or args         # the last argument was cut by the read: not whole, so dropped
        cmd = " ".join(red.argv(args))
        d["cmdline"] = cmd[:CMDLINE_MAX]
        d["cmdline_truncated"] = len(cmd) > CMDLINE_MAX or len(raw) == 4 * CMDLINE_MAX
    except procfs.ProcError as exc:
        d["cmdline"] = None
        unreadable["cmdline"] = exc.cause
    try:
        n = os.stat(f"{base}/fd").st_size      # Linux >= 6.2: the number of open descriptors
        d["fds"] = n if n > 0 else len(os.listdir(f"{base}/fd"))
    except OSError as exc:
        d["fds"] = None                         # kernel thread, exited, or not permitted
        unreadable["fds"] = procfs.cause_of(exc)
    wchan = (read_text(f"{base}/wchan") or "").strip()
    d["wchan"] = wchan if wchan and wchan != "0" else None
    cg = read_text(f"{base}/cgroup") or ""
    d["cgroup"] = _cgroup_of(cg)
    if unreadable:
        d["unreadable"] = unreadable
    return d


def _cgroup_of(text: str) -> str | None:
    """The process's cgroup: the v1 memory hierarchy path if there is one, else the v2 path."""
    v2 = None
    for line in text.splitlines():
        _, ctrls, path = line.split(":", 2) if line.count(":") >= 2 else ("", "", "")
        if "memory" in ctrls.split(","):
            return path
        if ctrls == "":
            v2 = path
    return v2


def _mounts(wd: Watchdog, errors: list[str], limit: int = 1000) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    visible: dict[str, dict[str, str]] = {}
    for m in parse_mountinfo(read_text("/proc/self/mountinfo", "") or ""):
        visible.pop(m["mount"], None)     # over-mounted: only the last mount on a path is visible
        if m["fstype"] not in PSEUDO_FS:
            visible[m["mount"]] = m
    for mnt, m in list(visible.items())[:limit]:
        row: dict[str, Any] = {"device": m["device"], "mount": mnt, "fstype": m["fstype"],
                               "options": m["options"], "dev": m["dev"],
                               "readonly": "ro" in m["options"].split(","),
                               "network": m["fstype"] in NETWORK_FS or m["fstype"].startswith("fuse.sshfs")}
        try:
            st = wd.call(os.statvfs, mnt)
        except OSError as exc:
            row["error"] = f"statvfs: {exc.strerror or exc}"
            out.append(row)
            continue
        if st is Watchdog.STUCK:
            row["error"] = f"statvfs did not return within {wd.timeout:g} s (hung network or FUSE filesystem?)"
            errors.append(f"mount {mnt}: {row['error']}")
            out.append(row)
            continue
        size = st.f_blocks * st.f_frsize
        if size == 0 and st.f_files == 0:
            continue          # nothing to fill (an empty pseudo mount we did not know)
        avail = st.f_bavail * st.f_frsize
        used = size - st.f_bfree * st.f_frsize
        row.update(size_bytes=size, used_bytes=used, avail_bytes=avail,
                   used_percent=round(100.0 * used / (used + avail), 1) if used + avail else 0.0,
                   inodes=st.f_files, inodes_free=st.f_ffree,
                   inodes_used_percent=round(100.0 * (st.f_files - st.f_ffree) / st.f_files, 1)
                   if st.f_files else 0.0)
        out.append(row)
    if len(visible) > limit:
        errors.append(f"{len(visible) - limit} more mounts not measured (limit {limit})")
    return out


def _intval(text: str | None) -> int | str | None:
    if text is None:
        return None
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        return text


# The files kept per cgroup in host.json, under their own names (what the kernel printed, as numbers).
V2_FILES = ("memory.max", "memory.high", "memory.current", "memory.peak", "memory.swap.max",
            "memory.swap.current", "cpu.max", "cpu.weight", "pids.max", "pids.current")
V1_FILES = ("memory.limit_in_bytes", "memory.usage_in_bytes", "memory.max_usage_in_bytes", "memory.failcnt",
            "memory.memsw.limit_in_bytes", "cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.shares",
            "pids.max", "pids.current")
KV_FILES = ("memory.events", "cpu.stat", "pids.events", "memory.oom_control")
LIMIT_CONTROLLERS = frozenset({"memory", "cpu", "pids"})


def _top_paths(h: cgroups.Hierarchy, limit: int) -> list[str]:
    try:
        subs = sorted(e.name for e in os.scandir(h.mount) if e.is_dir(follow_symlinks=False))
    except OSError:
        return []
    return ["/"] + ["/" + d for d in subs][:limit]


def _cgroups(limit: int = 40) -> tuple[int | None, list[dict[str, Any]]]:
    """(cgroup version, entries for the root and its top-level children) with normalised fields:
    memory_max_bytes (None = unlimited), memory_current_bytes, cpu_quota_cores, pids_max,
    pids_current, oom_kills, throttled {nr_periods, nr_throttled, throttled_usec}; read with
    ``agent.cgroups`` (v2 when its hierarchy holds the memory, cpu or pids controller, else
    v1's hierarchies merged by path). A target's own cgroups, whole, are the cgroups collector's."""
    hiers = cgroups.hierarchies()
    v2 = [h for h in hiers if h.version == 2 and LIMIT_CONTROLLERS & set(h.controllers)]
    v1 = [h for h in hiers if h.version == 1 and LIMIT_CONTROLLERS & set(h.controllers)]
    version, use = (2, v2[:1]) if v2 else (1, v1) if v1 else (None, [])
    merged: dict[str, dict[str, Any]] = {}
    for h in use:
        for path in _top_paths(h, limit):
            rec = cgroups.read(h, path, ("cpu", "memory", "pids"))
            if not rec.get("exists"):
                continue
            e = merged.setdefault(path, {"path": path, "_recs": []})
            e["_recs"].append(rec)
            for f, text in (rec.get("raw") or {}).items():
                if f in KV_FILES:
                    e[f] = parse_kv_table(text)
                elif f in (V2_FILES if version == 2 else V1_FILES):
                    e[f] = _intval(text)
    out = []
    for e in merged.values():
        cpu, mem, pids = {}, {}, {}
        for rec in e.pop("_recs"):
            cpu.update(rec.get("cpu") or {})
            mem.update(rec.get("memory") or {})
            pids.update(rec.get("pids") or {})
        e["memory_max_bytes"] = mem.get("max_bytes")
        e["memory_current_bytes"] = mem.get("current_bytes")
        q, p = cpu.get("quota_us"), cpu.get("period_us")
        e["cpu_quota_cores"] = round(q / p, 3) if isinstance(q, int) and p else None
        e["pids_max"] = pids.get("max")
        e["pids_current"] = pids.get("current")
        e["oom_kills"] = (mem.get("events") or mem.get("oom_control") or {}).get("oom_kill")
        if "nr_throttled" in cpu:
            e["throttled"] = {k: cpu.get(k) for k in ("nr_periods", "nr_throttled", "throttled_usec")}
        if len(e) > 1:
            out.append(e)
    return version, out


def _ours(rows: dict[int, dict[str, Any]], exclude: set[int]) -> set[int]:
    """goldenhour's own processes: the given pids, their children (collectors) and grandchildren (helpers)."""
    ours = set(exclude) | {os.getpid()}
    for _ in range(2):
        ours |= {pid for pid, r in rows.items() if r["ppid"] in ours and r["ppid"] > 1}
    return ours


def _memory_summary(m: dict[str, int]) -> dict[str, Any]:
    total, avail = m.get("MemTotal"), m.get("MemAvailable")
    swap_total, swap_free = m.get("SwapTotal", 0), m.get("SwapFree", 0)
    return {"total_bytes": total, "available_bytes": avail,
            "available_percent": round(100.0 * avail / total, 1) if total and avail is not None else None,
            "swap_total_bytes": swap_total, "swap_used_bytes": swap_total - swap_free,
            "dirty_bytes": m.get("Dirty"), "writeback_bytes": m.get("Writeback"),
            "committed_bytes": m.get("Committed_AS"), "commit_limit_bytes": m.get("CommitLimit"),
            "shmem_bytes": m.get("Shmem"), "slab_unreclaimable_bytes": m.get("SUnreclaim")}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _timezone() -> dict[str, Any]:
    """The host's local time zone, to read its logs' local timestamps against the bundle's UTC."""
    name = (read_text("/etc/timezone", "") or "").strip() or None
    if name is None:
        try:
            link = os.readlink("/etc/localtime")
            name = link.split("zoneinfo/", 1)[1] if "zoneinfo/" in link else link
        except OSError:
            name = None
    t = time.localtime()
    return {"name": name or os.environ.get("TZ") or None, "utc_offset": time.strftime("%z", t),
            "abbreviation": time.tzname[t.tm_isdst > 0]}


def collect(ctx) -> None:
    limit = int(ctx.options.get("top", 50))
    window = float(ctx.options.get("cpu_sample_s", 0.25))
    wd = Watchdog(float(ctx.options.get("read_timeout_s", 1.0)))
    errors: list[str] = []

    # first CPU sample: everything below happens inside the window
    t0 = time.monotonic()
    stat0 = parse_proc_stat(read_text("/proc/stat", "") or "")
    rows0 = _sample_processes() if window > 0 else {}

    for src in RAW_FILES:
        ctx.copy(f"/proc/{src}", "proc/" + src.replace("self/", "").replace("/", "-"))
    ctx.copy("/etc/os-release", "os-release")
    u = os.uname()
    load = (read_text("/proc/loadavg", "") or "").split()
    uptime = (read_text("/proc/uptime", "0 0") or "0 0").split()
    psi = {r: parse_psi(read_text(f"/proc/pressure/{r}", "") or "") for r in ("cpu", "memory", "io")}
    if not any(psi.values()):
        errors.append("no PSI: /proc/pressure missing (kernel without CONFIG_PSI, or psi=0)")
    fdnr = [int(x) for x in (read_text("/proc/sys/fs/file-nr", "0 0 0") or "0 0 0").split()[:3]]
    sysctls = {}
    for s in SYSCTLS:
        v = read_text(f"/proc/sys/{s}")
        if v is not None:
            sysctls[s.replace("/", ".")] = " ".join(v.split())
    meminfo = parse_meminfo(read_text("/proc/meminfo", "") or "")
    mounts = _mounts(wd, errors)
    cg_version, cgroups = _cgroups()
    cpuinfo = parse_cpuinfo(read_text("/proc/cpuinfo", "") or "")

    # second sample
    if window > 0:
        left = window - (time.monotonic() - t0)
        if left > 0:
            time.sleep(left)
    elapsed = time.monotonic() - t0
    stat1 = parse_proc_stat(read_text("/proc/stat", "") or "")
    rows = _sample_processes()
    for pid, r in rows.items():
        r0 = rows0.get(pid)
        r["cpu_s"] = round(r["ticks"] / HZ, 2)
        r["age_s"] = round(float(uptime[0]) - r["start_ticks"] / HZ, 1) if uptime else None
        if r0 is not None and r0["start_ticks"] == r["start_ticks"] and window > 0:
            r["cpu_percent"] = round(100.0 * (r["ticks"] - r0["ticks"]) / HZ / elapsed, 1)
        else:
            r["cpu_percent"] = None
    ours = _ours(rows, {int(p) for p in ctx.capture.get("exclude_pids") or []})
    ranked = [r for pid, r in rows.items() if pid not in ours]

    detailed: dict[int, dict[str, Any]] = {}
    red = Redactor()

    def detail(r: dict[str, Any]) -> dict[str, Any]:
        if r["pid"] not in detailed:
            d = {k: v for k, v in r.items() if k not in ("ticks", "start_ticks")}
            try:
                extra = wd.call(_details, r["pid"], red)
            except OSError:
                extra = {}
            if extra is Watchdog.STUCK:
                extra = {"error": f"reading /proc/{r['pid']} did not return within {wd.timeout:g} s"}
                errors.append(f"process {r['pid']}: {extra['error']}")
            d.update(extra)
            detailed[r["pid"]] = d
        return detailed[r["pid"]]

    by_rss = [detail(r) for r in sorted(ranked, key=lambda r: -r["rss_bytes"])[:limit]]
    by_cpu = [detail(r) for r in sorted(ranked, key=lambda r: -r["ticks"])[:limit]]
    by_now = [detail(r) for r in sorted((r for r in ranked if r["cpu_percent"]),
                                        key=lambda r: -r["cpu_percent"])[:limit]]
    d_state = [detail(r) for r in sorted(rows.values(), key=lambda r: r["pid"]) if r["state"] == "D"][:500]

    btime = stat1.get("btime")
    try:
        available = len(os.sched_getaffinity(0))
    except OSError:
        available = None
    states: dict[str, int] = {}
    for r in rows.values():
        states[r["state"]] = states.get(r["state"], 0) + 1
    osr = parse_os_release(read_text("/etc/os-release") or read_text("/usr/lib/os-release", "") or "")
    summary = {
        "kernel": {"release": u.release, "version": u.version, "machine": u.machine},
        "hostname": u.nodename,
        "os": {k: osr.get(k) for k in ("PRETTY_NAME", "ID", "VERSION_ID", "VERSION_CODENAME") if k in osr},
        "boot_id": (read_text("/proc/sys/kernel/random/boot_id", "") or "").strip() or None,
        "boot_time": _iso(btime) if btime else None,
        "timezone": _timezone(),
        "uptime_s": float(uptime[0]) if uptime else None,
        "load": {"1m": float(load[0]), "5m": float(load[1]), "15m": float(load[2]), "runnable": load[3],
                 "running": int(load[3].split("/")[0]), "scheduling_entities": int(load[3].split("/")[1]),
                 "per_cpu_1m": round(float(load[0]) / (os.cpu_count() or 1), 2)} if len(load) >= 4 else {},
        "cpu": {"count": os.cpu_count(), "configured": os.sysconf("SC_NPROCESSORS_CONF"),
                "available": available, **cpuinfo,
                "window_s": round(elapsed, 3) if window > 0 else None,
                "usage_percent": cpu_usage(stat0.get("cpu", {}), stat1.get("cpu", {})) if window > 0 else {},
                "procs_running": stat1.get("procs_running"), "procs_blocked": stat1.get("procs_blocked"),
                "context_switches": stat1.get("ctxt"), "forks_since_boot": stat1.get("processes")},
        "memory": meminfo,
        "memory_summary": _memory_summary(meminfo),
        "psi": psi,
        "vmstat": parse_kv_table(read_text("/proc/vmstat", "") or ""),
        "fd": {"allocated": fdnr[0], "unused": fdnr[1], "max": fdnr[2]} if len(fdnr) == 3 else {},
        "processes": {"count": len(rows), "threads": sum(r["threads"] for r in rows.values()),
                      "states": states, "goldenhour_pids": sorted(ours & set(rows))},
        "mounts": mounts,
        "top_processes": {"by_cpu_now": by_now, "by_cpu": by_cpu, "by_rss": by_rss},
        "d_state": d_state,
        "cgroup_version": cg_version,
        "cgroups": cgroups,
        "sysctls": sysctls,
        "errors": errors,
    }
    ctx.write_json("host.json", summary)
    if wd.stuck:
        ctx.partial(f"{wd.stuck} read(s) blocked and were abandoned: {'; '.join(errors[:3])}")
    ctx.note(processes=len(rows), d_state=len(d_state), mounts=len(mounts), cgroup_version=cg_version,
             cpu_window_s=round(elapsed, 3) if window > 0 else None, redaction={"count": red.count, "rules": RULES})


OPTIONS = {
    "top": Option(50, int, "Processes per top list (CPU, RSS, D state)."),
    "cpu_sample_s": Option(0.25, float, "Window over which CPU use now is measured (0: no window, by_cpu_now "
                           "empty)."),
    "read_timeout_s": Option(1.0, float, "Longest wait for one /proc or /sys read (a hung NFS mount cannot hang "
                             "the collector)."),
}

COLLECTOR = Collector(
    name="host", summary="kernel, OS, load, memory, PSI, CPU, disks, fds, top and D-state processes, cgroups, sysctls",
    scope=Scope.HOST, collect=collect, timeout_s=15, volatility=40, options=OPTIONS)
