"""What the flight recorder reads each interval: /proc and cgroupfs, directly and cheaply.

Host (every interval): ``/proc/stat`` (CPU jiffies, context switches, forks, running and
blocked tasks), ``/proc/meminfo``, ``/proc/vmstat`` (paging, reclaim, OOM kills, refaults),
``/proc/pressure/*`` (PSI stall totals in µs plus avg10), ``/proc/loadavg``,
``/proc/net/snmp`` and ``/proc/net/netstat`` (TCP/UDP counters, listen-queue overflows and
drops), ``/proc/net/sockstat``, ``/proc/net/dev``, ``/proc/diskstats`` (whole disks),
conntrack count, max and drop/insert_failed stats, ``/proc/sys/fs/file-nr``.

Processes and cgroups (every ``process_interval``): one read of ``/proc/PID/stat`` per
process (about 5 µs each here); kept per sample: the top N by CPU over the last interval
and the top N by resident memory, every process in D state (at most 20), each with its
run-queue wait from ``schedstat`` (its main thread's); processes started and exited since the last
scan as (pid, name), at most 25 each plus a count of the rest; totals. Names only: no
command line, no environment (``process_names = false`` leaves even the names out).
Cgroup counters come from ``agent.recorder.cgroups``.

Files read every interval stay open and are re-read with ``pread`` (no path lookup per
sample). Nothing here blocks on a target's locks: ``/proc/PID/cmdline``, ``environ`` and
``statvfs`` (which can hang behind a stuck process or mount) are never read.
Values are stored as the kernel gives them (cumulative counters, gauges); rates are
computed when reading (``agent.recorder.signals``), so a missed sample costs one point.
"""
from __future__ import annotations

import os
import time
from typing import Any

from agent.recorder.cgroups import CgroupSampler, parse_pressure

MEMINFO = (b"MemTotal", b"MemFree", b"MemAvailable", b"Buffers", b"Cached", b"SwapCached", b"Active",
           b"Inactive", b"Dirty", b"Writeback", b"AnonPages", b"Mapped", b"Shmem", b"Slab", b"SReclaimable",
           b"SUnreclaim", b"KernelStack", b"PageTables", b"Committed_AS", b"SwapTotal", b"SwapFree")
VMSTAT = (b"pgpgin", b"pgpgout", b"pswpin", b"pswpout", b"pgfault", b"pgmajfault", b"pgscan_kswapd",
          b"pgscan_direct", b"pgsteal_kswapd", b"pgsteal_direct", b"oom_kill", b"workingset_refault_anon",
          b"workingset_refault_file", b"compact_stall", b"thp_fault_fallback", b"nr_dirty", b"nr_writeback")
TCP = ("ActiveOpens", "PassiveOpens", "AttemptFails", "EstabResets", "CurrEstab", "InSegs", "OutSegs",
       "RetransSegs", "InErrs", "OutRsts")
TCPEXT = ("ListenOverflows", "ListenDrops", "TCPTimeouts", "TCPSynRetrans", "TCPLostRetransmit",
          "TCPAbortOnMemory", "TCPAbortOnTimeout", "TCPAbortOnData", "TCPBacklogDrop", "TCPMemoryPressures",
          "TCPReqQFullDrop", "SyncookiesSent", "TCPOFODrop", "PruneCalled", "TCPRcvQDrop", "TW")
UDP = ("InDatagrams", "NoPorts", "InErrors", "OutDatagrams", "RcvbufErrors", "SndbufErrors")
CT_STATS = ("drop", "early_drop", "insert_failed", "search_restart", "invalid")
CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
MAX_BORN = 25
MAX_D = 20
HZ = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def _ints(parts: list[bytes]) -> list[int]:
    out = []
    for p in parts:
        try:
            out.append(int(p))
        except ValueError:
            out.append(0)
    return out


def parse_stat(data: bytes) -> dict[str, Any]:
    cpu: dict[str, int] = {}
    st: dict[str, int] = {}
    n = 0
    for line in data.split(b"\n"):
        if line.startswith(b"cpu "):
            cpu = dict(zip(CPU_FIELDS, _ints(line.split()[1:9]), strict=False))
        elif line.startswith(b"cpu"):
            n += 1
        elif line.startswith((b"ctxt ", b"processes ", b"procs_running ", b"procs_blocked ")):
            k, _, v = line.partition(b" ")
            st[{"ctxt": "ctxt", "processes": "forks", "procs_running": "running",
                "procs_blocked": "blocked"}[k.decode()]] = int(v)
    cpu["n"] = n
    return {"cpu": cpu, "stat": st}


def parse_kv(data: bytes, want: tuple[bytes, ...], sep: bytes = b" ") -> dict[str, int]:
    """``key value`` lines (vmstat) or ``Key:   value kB`` (meminfo), only the ``want`` keys."""
    out: dict[str, int] = {}
    wanted = set(want)
    for line in data.split(b"\n"):
        k, _, v = line.partition(sep)
        if k in wanted:
            try:
                out[k.decode()] = int(v.split()[0])
            except (ValueError, IndexError):
                pass
    return out


def parse_snmp(data: bytes, sections: dict[bytes, tuple[str, ...]]) -> dict[str, dict[str, int]]:
    """/proc/net/snmp and /proc/net/netstat: pairs of lines (names, values) per protocol."""
    out: dict[str, dict[str, int]] = {}
    lines = data.split(b"\n")
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        proto, _, rest = names.partition(b":")
        want = sections.get(proto)
        if want is None:
            continue
        vals = values.partition(b":")[2].split()
        d = {}
        for k, v in zip(rest.split(), vals, strict=False):
            ks = k.decode()
            if ks in want:
                try:
                    d[ks] = int(v)
                except ValueError:
                    pass
        out[proto.decode().lower()] = d
    return out


def parse_sockstat(data: bytes) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in data.split(b"\n"):
        proto, _, rest = line.partition(b":")
        parts = rest.split()
        p = proto.decode().lower()
        for k, v in zip(parts[::2], parts[1::2], strict=False):
            key = "sockets_used" if p == "sockets" else f"{p}_{k.decode()}"
            if p in ("sockets", "tcp", "udp"):
                try:
                    out[key] = int(v)
                except ValueError:
                    pass
    return out


def parse_netdev(data: bytes, limit: int = 16) -> dict[str, list[int]]:
    """Per interface (not ``lo``): rx bytes, packets, errs, drop, tx bytes, packets, errs, drop."""
    out: dict[str, list[int]] = {}
    for line in data.split(b"\n")[2:]:
        name, _, rest = line.partition(b":")
        name = name.strip()
        if not name or name == b"lo":
            continue
        v = _ints(rest.split())
        if len(v) >= 12:
            out[name.decode()] = v[0:4] + v[8:12]
        if len(out) >= limit:
            break
    return out


def parse_diskstats(data: bytes, devices: set[str]) -> dict[str, list[int]]:
    """Whole disks: reads, sectors read, ms reading, writes, sectors written, ms writing, in flight,
    ms doing I/O, weighted ms."""
    out: dict[str, list[int]] = {}
    for line in data.split(b"\n"):
        parts = line.split()
        if len(parts) < 14:
            continue
        name = parts[2].decode()
        if name in devices:
            v = _ints(parts[3:14])
            out[name] = [v[0], v[2], v[3], v[4], v[6], v[7], v[8], v[9], v[10]]
    return out


def parse_conntrack_stat(data: bytes) -> dict[str, int]:
    """/proc/net/stat/nf_conntrack: a header of names, then one line of hex values per CPU; summed."""
    lines = [l for l in data.split(b"\n") if l.strip()]
    if not lines:
        return {}
    names = lines[0].split()
    out: dict[str, int] = {}
    for line in lines[1:]:
        for k, v in zip(names, line.split(), strict=False):
            ks = k.decode()
            if ks in CT_STATS:
                try:
                    out[ks] = out.get(ks, 0) + int(v, 16)
                except ValueError:
                    pass
    return out


def parse_pid_stat(b: bytes) -> tuple[str, str, int, int, int, int, int, int] | None:
    """(comm, state, utime+stime ticks, threads, start ticks, rss pages, majflt, kthread) from /proc/PID/stat."""
    r = b.rfind(b")")
    if r < 0:
        return None
    f = b[r + 2:].split()
    if len(f) < 22:
        return None
    try:
        return (b[b.find(b"(") + 1:r].decode("utf-8", "replace"), f[0].decode(), int(f[11]) + int(f[12]),
                int(f[17]), int(f[19]), int(f[21]), int(f[9]), (int(f[6]) >> 21) & 1)
    except ValueError:
        return None


def whole_disks(sys_block: str = "/sys/block") -> set[str]:
    try:
        names = os.listdir(sys_block)
    except OSError:
        return set()
    return {n for n in names if not n.startswith(("loop", "ram"))}


class _Files:
    """Files read every interval, kept open and re-read from offset 0."""

    def __init__(self) -> None:
        self.fds: dict[str, int] = {}
        self.missing: dict[str, float] = {}

    def read(self, path: str, size: int = 262144) -> bytes | None:
        fd = self.fds.get(path)
        if fd is None:
            t = self.missing.get(path)
            if t is not None and time.monotonic() - t < 60:
                return None
            try:
                fd = self.fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self.missing[path] = time.monotonic()
                return None
        try:
            return os.pread(fd, size, 0)
        except OSError:
            os.close(fd)
            del self.fds[path]
            self.missing[path] = time.monotonic()
            return None

    def close(self) -> None:
        for fd in self.fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()


class Sampler:
    """Reads one sample. ``host()`` every interval; ``processes()`` and ``cgroups()`` less often."""

    def __init__(self, proc: str = "/proc", cgroup_root: str = "/sys/fs/cgroup", top_n: int = 10,
                 process_names: bool = True, max_cgroups: int = 40, exclude_pids: tuple[int, ...] = ()):
        self.proc = proc
        self.top_n = top_n
        self.names = process_names
        self.files = _Files()
        self.disks = whole_disks()
        self.disks_at = time.monotonic()
        self.cg = CgroupSampler(cgroup_root, max_groups=max_cgroups)
        self.prev: dict[tuple[int, int], tuple[str, int]] = {}   # (pid, start) -> (comm, cpu ticks)
        self.prev_mono: float | None = None
        self.exclude = set(exclude_pids)

    def close(self) -> None:
        self.files.close()

    # -- host ------------------------------------------------------------------
    def host(self) -> dict[str, Any]:
        rd = self.files.read
        p = self.proc
        s: dict[str, Any] = {}
        data = rd(f"{p}/stat")
        if data:
            s.update(parse_stat(data))
        data = rd(f"{p}/meminfo")
        if data:
            s["mem"] = parse_kv(data, tuple(k + b":" for k in MEMINFO))
            s["mem"] = {k.rstrip(":"): v for k, v in s["mem"].items()}
        data = rd(f"{p}/vmstat")
        if data:
            s["vm"] = parse_kv(data, VMSTAT)
            st = 0
            for line in data.split(b"\n"):
                if line.startswith(b"allocstall"):
                    st += int(line.split()[1])
            s["vm"]["allocstall"] = st
        psi = {}
        for res in ("cpu", "memory", "io", "irq"):
            data = rd(f"{p}/pressure/{res}")
            if data:
                d = parse_pressure(data)
                for line in data.split(b"\n"):
                    if line.startswith(b"some avg10="):
                        d["some10"] = float(line.split()[1][6:])
                psi[res] = d
        if psi:
            s["psi"] = psi
        data = rd(f"{p}/loadavg")
        if data:
            parts = data.split()
            run, _, tot = parts[3].partition(b"/")
            s["load"] = {"1": float(parts[0]), "5": float(parts[1]), "15": float(parts[2]),
                         "runnable": int(run), "tasks": int(tot)}
        data = rd(f"{p}/net/snmp")
        if data:
            s.update(parse_snmp(data, {b"Tcp": TCP, b"Udp": UDP}))
        data = rd(f"{p}/net/netstat")
        if data:
            s.update(parse_snmp(data, {b"TcpExt": TCPEXT}))
        data = rd(f"{p}/net/sockstat")
        if data:
            s["sock"] = parse_sockstat(data)
        data = rd(f"{p}/net/dev")
        if data:
            s["net"] = parse_netdev(data)
        if time.monotonic() - self.disks_at > 60:
            self.disks, self.disks_at = whole_disks(), time.monotonic()
        data = rd(f"{p}/diskstats")
        if data:
            s["disk"] = parse_diskstats(data, self.disks)
        ct: dict[str, int] = {}
        for name, key in (("nf_conntrack_count", "count"), ("nf_conntrack_max", "max")):
            data = rd(f"{p}/sys/net/netfilter/{name}")
            if data:
                ct[key] = int(data.strip() or 0)
        if ct:
            data = rd(f"{p}/net/stat/nf_conntrack")
            if data:
                ct.update(parse_conntrack_stat(data))
            s["ct"] = ct
        data = rd(f"{p}/sys/fs/file-nr")
        if data:
            a, _, m = (data.split() + [b"0", b"0", b"0"])[:3]
            s["fd"] = {"open": int(a), "max": int(m)}
        return s

    # -- processes ---------------------------------------------------------------
    def processes(self, mono: float) -> dict[str, Any]:
        """Top processes, D-state, births and exits since the last call, totals."""
        try:
            names = os.listdir(self.proc)
        except OSError:
            return {}
        cur: dict[tuple[int, int], tuple[str, int]] = {}
        rows = []
        n = threads = kthreads = zombies = dstate = running = 0
        p = self.proc
        for name in names:
            if not name.isdigit():
                continue
            pid = int(name)
            try:
                fd = os.open(f"{p}/{name}/stat", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    b = os.read(fd, 1024)
                finally:
                    os.close(fd)
            except OSError:
                continue
            st = parse_pid_stat(b)
            if st is None:
                continue
            comm, state, cpu, nthr, start, rss, majflt, kthread = st
            n += 1
            threads += nthr
            if kthread:
                kthreads += 1
            if state == "Z":
                zombies += 1
            elif state == "D":
                dstate += 1
            elif state == "R":
                running += 1
            key = (pid, start)
            cur[key] = (comm, cpu)
            if pid in self.exclude:
                continue
            prev = self.prev.get(key)
            rows.append((pid, comm, state, cpu, nthr, start, rss * PAGE_KB, majflt,
                         cpu - prev[1] if prev else None, kthread))
        dt = (mono - self.prev_mono) if self.prev_mono is not None else None
        first = self.prev_mono is None

        def pct(r) -> float | None:
            return round(r[8] * 100.0 / HZ / dt, 1) if (dt and r[8] is not None) else None

        keep: dict[int, Any] = {}
        by_cpu = sorted((r for r in rows if r[8]), key=lambda r: -r[8])[:self.top_n]
        by_rss = sorted((r for r in rows if r[6]), key=lambda r: -r[6])[:self.top_n]
        dlist = [r for r in rows if r[2] == "D"][:MAX_D]
        for r in by_cpu + by_rss + dlist:
            if r[0] in keep:
                continue
            e = {"pid": r[0], "comm": r[1] if self.names else "", "st": r[2], "cpu": r[3], "cpu_pct": pct(r),
                 "rss_kb": r[6], "majflt": r[7], "thr": r[4], "start": r[5]}
            wait = self._run_wait(r[0])
            if wait is not None:
                e["wait_ns"] = wait
            keep[r[0]] = e
        out: dict[str, Any] = {"n": n, "threads": threads, "kthreads": kthreads, "running": running,
                               "dstate": dstate, "zombies": zombies,
                               "top": list(keep.values()), "top_cpu": [r[0] for r in by_cpu],
                               "top_rss": [r[0] for r in by_rss]}
        if not first:
            born = [k for k in cur if k not in self.prev and k[0] not in self.exclude]
            gone = [k for k in self.prev if k not in cur and k[0] not in self.exclude]
            out["born"] = [[k[0], cur[k][0] if self.names else ""] for k in sorted(born)[:MAX_BORN]]
            out["exited"] = [[k[0], self.prev[k][0] if self.names else ""] for k in sorted(gone)[:MAX_BORN]]
            out["born_n"], out["exited_n"] = len(born), len(gone)
            out["dt"] = round(dt, 3) if dt else None
        self.prev, self.prev_mono = cur, mono
        return out

    def _run_wait(self, pid: int) -> int | None:
        """Nanoseconds the process's main thread waited on a run queue (schedstat's second field)."""
        try:
            fd = os.open(f"{self.proc}/{pid}/schedstat", os.O_RDONLY | os.O_CLOEXEC)
            try:
                b = os.read(fd, 128)
            finally:
                os.close(fd)
            return int(b.split()[1])
        except (OSError, ValueError, IndexError):
            return None

    def cgroups(self) -> dict[str, Any]:
        try:
            return self.cg.sample()
        except Exception:  # noqa: BLE001 - a layout we did not expect costs the cgroup part, never the sample
            return {}
