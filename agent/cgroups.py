"""Reading cgroups, v1 and v2: which cgroups a process is in, every cgroup on the way to the
root, and what each one says (limits, usage, throttling, events, pressure), as facts.

Where it sits: a leaf beside ``agent.procfs`` (it imports nothing else of goldenhour). The
``cgroups`` collector records the targets' and units' cgroups with it, the preflight
(``agent.preflight``) finds a target's tightest pids and memory limits with it, and any other
reader (the flight recorder's sampler) can use ``hierarchies``/``membership``/``read`` with
only the ``sections`` it needs.

The model:

- A **hierarchy** is one mounted cgroup tree: v2 (``cgroup2``, all its controllers in one
  tree) or a v1 tree with its controllers (``cpu``, ``memory``, ``pids``, ``cpu,cpuacct``...,
  or ``name=systemd`` with none). ``hierarchies()`` finds them in ``/proc/self/mountinfo``,
  each with its mount point and the mount's root inside the tree (a container's
  ``/sys/fs/cgroup`` is often mounted from a non-root cgroup).
- A process's **membership** is ``/proc/PID/cgroup``: one path per hierarchy (``ID:ctrls:path``;
  v2 is ``0::path``). Paths are relative to goldenhour's cgroup namespace, so goldenhour
  reads them from the host's namespace.
- A **chain** is a cgroup and its ancestors up to the root: limits nest, so the limit that
  binds a process is the tightest one anywhere on its chain (a ``pids.max`` of 100 on a
  slice binds every service below it, whatever their own ``pids.max`` says).
- ``read(h, path)`` gives one cgroup's facts in one shape for both versions, with the raw
  text of every file read (``raw``) so evidence can carry the kernel's own words:

  ``cpu``: ``quota_us`` (None = no limit), ``period_us``, ``quota_cores``, ``burst_us``,
  ``weight``/``shares``, ``usage_usec``/``user_usec``/``system_usec`` (v2 ``cpu.stat``; v1
  ``cpuacct``), ``nr_periods``, ``nr_throttled``, ``throttled_usec`` (v1 ``throttled_time``
  is in ns and is converted); ``memory``: ``max_bytes`` (None = no limit), ``high_bytes``,
  ``current_bytes``, ``working_set_bytes`` (current minus inactive file pages, what the kernel
  cannot drop easily; cAdvisor's definition), ``swap_*``, ``peak_bytes``, ``events`` (v2
  ``memory.events``: low, high, max, oom, oom_kill, oom_group_kill), v1 ``failcnt`` and
  ``oom_control`` (under_oom, oom_kill); ``pids``: ``max`` (None = no limit), ``current``,
  ``peak``, ``events`` (``max``: forks refused by this limit); ``io``: per device and total
  bytes and operations (v2 ``io.stat``; v1 ``blkio.throttle.io_service*_recursive``);
  ``pressure``: ``cpu``/``memory``/``io`` PSI (v2, where present); ``cpuset``: the effective
  CPUs.
- ``rates(a, b)`` turns two readings of one cgroup taken ``interval`` apart into what changed:
  CPU used (cores), periods and throttled periods, throttled time per second, new memory
  events, new failcnt, new refused forks, I/O per second.

Facts only: what is "near a limit" is decided by the report's rules (and, for the safety of a
dump, by ``agent.preflight``). A file that does not exist is simply absent (a controller not
enabled there, an older kernel); a cgroup directory that vanished between reads is
``exists: False``.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Iterable

SECTIONS = ("cpu", "memory", "pids", "io", "pressure", "cpuset")
UNLIMITED_V1 = 2**62          # v1 prints "no limit" as a huge page-rounded number (9223372036854771712)
V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "blkio", "cpuset")
MEMORY_STAT_KEYS = ("anon", "file", "kernel", "kernel_stack", "sock", "shmem", "file_mapped", "file_dirty",
                    "file_writeback", "active_anon", "inactive_anon", "active_file", "inactive_file", "slab",
                    "slab_reclaimable", "slab_unreclaimable", "pgfault", "pgmajfault", "workingset_refault_file",
                    "pgscan", "pgsteal",
                    # v1 names (``total_*`` include the descendants: hierarchical)
                    "cache", "rss", "rss_huge", "mapped_file", "dirty", "writeback", "swap",
                    "total_cache", "total_rss", "total_shmem", "total_mapped_file", "total_dirty",
                    "total_writeback", "total_swap", "total_active_anon", "total_inactive_anon",
                    "total_active_file", "total_inactive_file", "total_pgmajfault",
                    "hierarchical_memory_limit", "hierarchical_memsw_limit")


# -- the mounted hierarchies ------------------------------------------------------------------

@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup tree."""

    version: int                     # 1 or 2
    controllers: tuple[str, ...]     # v1: from the mount options; v2: the root's cgroup.controllers
    mount: str                       # where it is mounted (in goldenhour's mount namespace)
    root: str = "/"                  # the mount's root inside the tree (mountinfo field 4)
    name: str = ""                   # v1 named hierarchy (name=systemd)

    @property
    def label(self) -> str:
        """``v2``, or the v1 controllers joined by commas (``cpu,cpuacct``), or ``name=systemd``."""
        if self.version == 2:
            return "v2"
        return ",".join(self.controllers) or (f"name={self.name}" if self.name else "none")

    def has(self, controller: str) -> bool:
        return controller in self.controllers

    def dir_of(self, path: str) -> str | None:
        """The directory of cgroup ``path`` (as /proc/PID/cgroup names it), or None when the
        mount does not reach it (a cgroup outside a container's mounted subtree)."""
        root = self.root.rstrip("/")
        if not root:
            rel = "" if path in ("", "/") else path
        elif path == root:
            rel = ""
        elif path.startswith(root + "/"):
            rel = path[len(root):]
        else:
            return None
        return self.mount.rstrip("/") + rel.rstrip("/")

    def key(self, path: str) -> str:
        """The cgroup's name in evidence: ``<label>:<path>`` (``memory:/system.slice/x.service``)."""
        return f"{self.label}:{path}"


def _unoctal(s: str) -> str:
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


def hierarchies(mountinfo: str | None = None, prefix: str = "") -> list[Hierarchy]:
    """The cgroup hierarchies mounted here, one per tree (the first mount of each).

    ``mountinfo``: the text of ``/proc/self/mountinfo`` (read when None); ``prefix``: a folder
    prepended to every mount point (recorded files from another host, in tests).
    """
    if mountinfo is None:
        try:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
                mountinfo = fh.read()
        except OSError:
            mountinfo = ""
    out: list[Hierarchy] = []
    seen: set[tuple[int, tuple[str, ...], str]] = set()
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        lf, rf = left.split(), right.split()
        if len(lf) < 5 or len(rf) < 3 or rf[0] not in ("cgroup", "cgroup2"):
            continue
        root, mnt = _unoctal(lf[3]), prefix + _unoctal(lf[4])
        if rf[0] == "cgroup2":
            ctrls = tuple(_read(f"{mnt}/cgroup.controllers", "").split())
            h = Hierarchy(2, ctrls, mnt, root)
        else:
            opts = rf[2].split(",")
            name = next((o[5:] for o in opts if o.startswith("name=")), "")
            known = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls", "net_prio", "blkio",
                     "perf_event", "hugetlb", "pids", "rdma", "misc")
            ctrls = tuple(sorted(o for o in opts if o in known))
            h = Hierarchy(1, ctrls, mnt, root, name)
        ident = (h.version, h.controllers if h.version == 1 else (), h.name)
        if ident in seen:
            continue
        seen.add(ident)
        out.append(h)
    return out


# -- membership and chains --------------------------------------------------------------------

def parse_membership(text: str) -> list[tuple[str, tuple[str, ...], str]]:
    """``/proc/PID/cgroup`` as [(hierarchy id, controllers, path)]; v2's line is ("0", (), path)."""
    out = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, ctrls, path = parts
        out.append((hid, tuple(sorted(c for c in ctrls.split(",") if c)), path))
    return out


def membership(pid: int | str, text: str | None = None) -> list[tuple[str, tuple[str, ...], str]]:
    """The process's cgroups (``parse_membership`` of its ``/proc/PID/cgroup``).

    Raises ``OSError`` (ENOENT/ESRCH) if the process is gone.
    """
    if text is None:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    return parse_membership(text)


def ancestry(path: str) -> list[str]:
    """``/a/b/c`` -> [``/a/b/c``, ``/a/b``, ``/a``, ``/``]: the cgroup, then each parent."""
    out = [path or "/"]
    while out[-1] not in ("/", ""):
        parent = os.path.dirname(out[-1].rstrip("/")) or "/"
        out.append(parent)
    return out


def placed(hiers: Iterable[Hierarchy], members: list[tuple[str, tuple[str, ...], str]]
           ) -> list[tuple[Hierarchy, str]]:
    """Each mounted hierarchy with the path the process has in it."""
    out = []
    for h in hiers:
        for hid, ctrls, path in members:
            if h.version == 2 and hid == "0" and not ctrls:
                out.append((h, path))
                break
            if h.version == 1 and hid != "0":
                names = tuple(c for c in ctrls if not c.startswith("name="))
                nm = next((c[5:] for c in ctrls if c.startswith("name=")), "")
                if (names and names == h.controllers) or (nm and nm == h.name):
                    out.append((h, path))
                    break
    return out


def chains(pid: int | str, hiers: list[Hierarchy] | None = None, cgroup_text: str | None = None
           ) -> list[tuple[Hierarchy, list[str]]]:
    """For each hierarchy the process is in: its cgroup path, then every ancestor up to the root."""
    hiers = hierarchies() if hiers is None else hiers
    return [(h, ancestry(p)) for h, p in placed(hiers, membership(pid, cgroup_text))]


# -- reading one cgroup ----------------------------------------------------------------------

def _read(path: str, default: Any = None) -> Any:
    try:
        with open(path, "rb") as fh:
            return fh.read(1 << 20).decode("utf-8", "replace")
    except OSError:
        return default


def _int(v: str | None) -> int | None:
    if v is None:
        return None
    v = v.strip()
    try:
        return int(v)
    except ValueError:
        return None


def parse_kv(text: str) -> dict[str, int]:
    """``name value`` lines (cpu.stat, memory.events, memory.stat, pids.events) to {name: int}."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                pass
    return out


def parse_psi(text: str) -> dict[str, dict[str, float]]:
    """A pressure file: {"some": {"avg10", "avg60", "avg300", "total" (µs)}, "full": {...}}."""
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        vals: dict[str, float] = {}
        for kv in parts[1:]:
            k, _, v = kv.partition("=")
            try:
                vals[k] = int(v) if k == "total" else float(v)
            except ValueError:
                continue
        out[parts[0]] = vals
    return out


def parse_io_stat(text: str) -> dict[str, dict[str, int]]:
    """v2 ``io.stat``: {"8:0": {"rbytes": .., "wbytes": .., "rios": .., "wios": .., ...}}."""
    out: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        dev = out.setdefault(parts[0], {})
        for kv in parts[1:]:
            k, _, v = kv.partition("=")
            if v.isdigit():
                dev[k] = int(v)
    return out


def parse_blkio(text: str) -> dict[str, dict[str, int]]:
    """v1 ``blkio.throttle.io_service_bytes``-style: ``8:0 Read 123`` lines to {"8:0": {"read": 123}}."""
    out: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2].isdigit():
            out.setdefault(parts[0], {})[parts[1].lower()] = int(parts[2])
    return out


def cpu_count(cpus: str) -> int | None:
    """Number of CPUs in a list like ``0-3,8,10-11``."""
    n = 0
    for part in cpus.strip().split(","):
        if not part:
            continue
        a, _, b = part.partition("-")
        try:
            n += (int(b) - int(a) + 1) if b else 1
        except ValueError:
            return None
    return n or None


class _Reader:
    def __init__(self, d: str):
        self.d, self.raw = d, {}

    def get(self, name: str) -> str | None:
        v = _read(f"{self.d}/{name}")
        if v is not None:
            self.raw[name] = v
        return v


def _v2(r: _Reader, want: set[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "cpu" in want:
        cpu: dict[str, Any] = {}
        mx = r.get("cpu.max")
        if mx is not None:
            q, _, p = mx.strip().partition(" ")
            cpu["quota_us"] = int(q) if q.isdigit() else None
            cpu["period_us"] = int(p) if p.isdigit() else None
        burst = _int(r.get("cpu.max.burst"))
        if burst is not None:
            cpu["burst_us"] = burst
        w = _int(r.get("cpu.weight"))
        if w is not None:
            cpu["weight"] = w
        st = r.get("cpu.stat")
        if st is not None:
            cpu.update(parse_kv(st))
        if cpu:
            out["cpu"] = cpu
    if "memory" in want:
        mem: dict[str, Any] = {}
        for f, k in (("memory.current", "current_bytes"), ("memory.peak", "peak_bytes"),
                     ("memory.swap.current", "swap_current_bytes")):
            v = _int(r.get(f))
            if v is not None:
                mem[k] = v
        for f, k in (("memory.max", "max_bytes"), ("memory.high", "high_bytes"), ("memory.low", "low_bytes"),
                     ("memory.min", "min_bytes"), ("memory.swap.max", "swap_max_bytes")):
            v = r.get(f)
            if v is not None:
                mem[k] = _int(v)              # "max" -> None: no limit
        ev = r.get("memory.events")
        if ev is not None:
            mem["events"] = parse_kv(ev)
        evl = r.get("memory.events.local")
        if evl is not None:
            mem["events_local"] = parse_kv(evl)
        st = r.get("memory.stat")
        if st is not None:
            kv = parse_kv(st)
            mem["stat"] = {k: v for k, v in kv.items() if k in MEMORY_STAT_KEYS}
            if "current_bytes" in mem and "inactive_file" in kv:
                mem["inactive_file_bytes"] = kv["inactive_file"]
                mem["working_set_bytes"] = max(0, mem["current_bytes"] - kv["inactive_file"])
        if mem:
            out["memory"] = mem
    if "pids" in want:
        pids: dict[str, Any] = {}
        mx = r.get("pids.max")
        if mx is not None:
            pids["max"] = _int(mx)
        for f, k in (("pids.current", "current"), ("pids.peak", "peak")):
            v = _int(r.get(f))
            if v is not None:
                pids[k] = v
        ev = r.get("pids.events")
        if ev is not None:
            pids["events"] = parse_kv(ev)
        evl = r.get("pids.events.local")
        if evl is not None:
            pids["events_local"] = parse_kv(evl)
        if pids:
            out["pids"] = pids
    if "io" in want:
        st = r.get("io.stat")
        if st is not None:
            devs = parse_io_stat(st)
            out["io"] = {"devices": devs, **_io_totals(devs, "rbytes", "wbytes", "rios", "wios")}
        mx = r.get("io.max")
        if mx is not None and mx.strip():
            out.setdefault("io", {})["max"] = mx.strip()
    if "pressure" in want:
        pr = {}
        for res in ("cpu", "memory", "io"):
            v = r.get(f"{res}.pressure")
            if v is not None:
                pr[res] = parse_psi(v)
        if pr:
            out["pressure"] = pr
    if "cpuset" in want:
        v = r.get("cpuset.cpus.effective")
        if v is not None:
            out["cpuset"] = {"effective_cpus": v.strip(), "count": cpu_count(v)}
    return out


def _io_totals(devs: dict[str, dict[str, int]], rb: str, wb: str, ro: str, wo: str) -> dict[str, int]:
    return {"read_bytes": sum(d.get(rb, 0) for d in devs.values()),
            "write_bytes": sum(d.get(wb, 0) for d in devs.values()),
            "read_ios": sum(d.get(ro, 0) for d in devs.values()),
            "write_ios": sum(d.get(wo, 0) for d in devs.values())}


def _v1(h: Hierarchy, r: _Reader, want: set[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "cpu" in want and h.has("cpu"):
        cpu: dict[str, Any] = {}
        q, p = _int(r.get("cpu.cfs_quota_us")), _int(r.get("cpu.cfs_period_us"))
        if p is not None:
            cpu["quota_us"] = q if q is not None and q > 0 else None
            cpu["period_us"] = p
        burst = _int(r.get("cpu.cfs_burst_us"))
        if burst is not None:
            cpu["burst_us"] = burst
        sh = _int(r.get("cpu.shares"))
        if sh is not None:
            cpu["shares"] = sh
        st = r.get("cpu.stat")
        if st is not None:
            kv = parse_kv(st)
            for k in ("nr_periods", "nr_throttled", "nr_bursts"):
                if k in kv:
                    cpu[k] = kv[k]
            if "throttled_time" in kv:
                cpu["throttled_usec"] = kv["throttled_time"] // 1000      # ns in v1
            if "burst_time" in kv:
                cpu["burst_usec"] = kv["burst_time"] // 1000
            for k in ("usage_usec", "user_usec", "system_usec"):          # newer kernels add these to v1
                if k in kv:
                    cpu[k] = kv[k]
        if cpu:
            out["cpu"] = cpu
    if "cpu" in want and h.has("cpuacct"):
        usage = _int(r.get("cpuacct.usage"))
        if usage is not None:
            cpu = out.setdefault("cpu", {})
            cpu["usage_usec"] = usage // 1000                              # ns
            st = r.get("cpuacct.stat")
            if st is not None:
                kv = parse_kv(st)
                hz = os.sysconf("SC_CLK_TCK")
                if "user" in kv:
                    cpu["user_usec"] = kv["user"] * 1_000_000 // hz
                if "system" in kv:
                    cpu["system_usec"] = kv["system"] * 1_000_000 // hz
    if "memory" in want and h.has("memory"):
        mem: dict[str, Any] = {}
        lim = _int(r.get("memory.limit_in_bytes"))
        if lim is not None:
            mem["max_bytes"] = lim if lim < UNLIMITED_V1 else None
        for f, k in (("memory.usage_in_bytes", "current_bytes"), ("memory.max_usage_in_bytes", "peak_bytes"),
                     ("memory.failcnt", "failcnt")):
            v = _int(r.get(f))
            if v is not None:
                mem[k] = v
        soft = _int(r.get("memory.soft_limit_in_bytes"))
        if soft is not None:
            mem["soft_limit_bytes"] = soft if soft < UNLIMITED_V1 else None
        sw = _int(r.get("memory.memsw.limit_in_bytes"))
        if sw is not None:
            mem["memsw_max_bytes"] = sw if sw < UNLIMITED_V1 else None
            mem["memsw_current_bytes"] = _int(r.get("memory.memsw.usage_in_bytes"))
        oc = r.get("memory.oom_control")
        if oc is not None:
            mem["oom_control"] = parse_kv(oc)
        st = r.get("memory.stat")
        if st is not None:
            kv = parse_kv(st)
            mem["stat"] = {k: v for k, v in kv.items() if k in MEMORY_STAT_KEYS}
            inactive = kv.get("total_inactive_file", kv.get("inactive_file"))
            if "current_bytes" in mem and inactive is not None:
                mem["inactive_file_bytes"] = inactive
                mem["working_set_bytes"] = max(0, mem["current_bytes"] - inactive)
        if mem:
            out["memory"] = mem
    if "pids" in want and h.has("pids"):
        pids: dict[str, Any] = {}
        mx = r.get("pids.max")
        if mx is not None:
            pids["max"] = _int(mx)
        for f, k in (("pids.current", "current"), ("pids.peak", "peak")):
            v = _int(r.get(f))
            if v is not None:
                pids[k] = v
        ev = r.get("pids.events")
        if ev is not None:
            pids["events"] = parse_kv(ev)
        if pids:
            out["pids"] = pids
    if "io" in want and h.has("blkio"):
        b = r.get("blkio.throttle.io_service_bytes_recursive") or r.get("blkio.throttle.io_service_bytes")
        o = r.get("blkio.throttle.io_serviced_recursive") or r.get("blkio.throttle.io_serviced")
        if b is not None or o is not None:
            bytes_, ops = parse_blkio(b or ""), parse_blkio(o or "")
            devs = {d: {"rbytes": v.get("read", 0), "wbytes": v.get("write", 0)} for d, v in bytes_.items()
                    if d != "Total"}
            for d, v in ops.items():
                if d != "Total":
                    devs.setdefault(d, {}).update(rios=v.get("read", 0), wios=v.get("write", 0))
            out["io"] = {"devices": devs, **_io_totals(devs, "rbytes", "wbytes", "rios", "wios")}
    if "pressure" in want:
        pr = {}
        for res in ("cpu", "memory", "io"):
            v = r.get(f"{res}.pressure")
            if v is not None:
                pr[res] = parse_psi(v)
        if pr:
            out["pressure"] = pr
    if "cpuset" in want and h.has("cpuset"):
        v = r.get("cpuset.effective_cpus")
        if v is not None:
            out["cpuset"] = {"effective_cpus": v.strip(), "count": cpu_count(v)}
    return out


def read(h: Hierarchy, path: str, sections: Iterable[str] = SECTIONS, raw: bool = True) -> dict[str, Any]:
    """One cgroup's facts: {hierarchy, version, path, dir, exists, at, <section>: {...}, raw: {file: text}}."""
    d = h.dir_of(path)
    rec: dict[str, Any] = {"hierarchy": h.label, "version": h.version, "path": path, "dir": d}
    if d is None or not os.path.isdir(d):
        rec["exists"] = False
        if d is None:
            rec["why"] = f"not reachable through the mount at {h.mount} (its root is {h.root})"
        return rec
    rec["exists"] = True
    rec["at"] = time.monotonic()
    r = _Reader(d)
    want = set(sections)
    rec.update(_v2(r, want) if h.version == 2 else _v1(h, r, want))
    if raw:
        rec["raw"] = r.raw
    return rec


# -- what changed between two readings ---------------------------------------------------------

def _delta(a: dict[str, Any] | None, b: dict[str, Any] | None, key: str) -> int | None:
    if not isinstance(a, dict) or not isinstance(b, dict):
        return None
    x, y = a.get(key), b.get(key)
    if isinstance(x, int) and isinstance(y, int):
        return y - x
    return None


def rates(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """What changed between two ``read``s of one cgroup: per-second rates and new events."""
    if not a.get("exists") or not b.get("exists"):
        return {}
    dt = b["at"] - a["at"]
    if dt <= 0:
        return {}
    out: dict[str, Any] = {"interval_s": round(dt, 3)}
    ca, cb = a.get("cpu"), b.get("cpu")
    du = _delta(ca, cb, "usage_usec")
    if du is not None:
        out["cpu_usage_cores"] = round(du / 1e6 / dt, 3)
    dp, dthr = _delta(ca, cb, "nr_periods"), _delta(ca, cb, "nr_throttled")
    if dp is not None:
        out["periods"] = dp
        out["throttled_periods"] = dthr
        out["throttled_share"] = round(dthr / dp, 3) if dp and dthr is not None else 0.0 if dp == 0 else None
    dtu = _delta(ca, cb, "throttled_usec")
    if dtu is not None:
        out["throttled_s_per_s"] = round(dtu / 1e6 / dt, 3)
    ma, mb = a.get("memory"), b.get("memory")
    if isinstance(ma, dict) and isinstance(mb, dict):
        ev = {k: mb["events"][k] - ma["events"].get(k, 0) for k in (mb.get("events") or {})
              if isinstance(ma.get("events"), dict)}
        if ev:
            out["memory_events"] = ev
        fc = _delta(ma, mb, "failcnt")
        if fc is not None:
            out["memory_failcnt"] = fc
        ok = _delta(ma.get("oom_control"), mb.get("oom_control"), "oom_kill")
        if ok is not None:
            out["memory_oom_kill"] = ok
        cur = _delta(ma, mb, "current_bytes")
        if cur is not None:
            out["memory_growth_bytes_per_s"] = round(cur / dt)
    pa, pb = a.get("pids"), b.get("pids")
    if isinstance(pa, dict) and isinstance(pb, dict):
        m = _delta(pa.get("events"), pb.get("events"), "max")
        if m is not None:
            out["pids_refused"] = m
    ia, ib = a.get("io"), b.get("io")
    for k in ("read_bytes", "write_bytes", "read_ios", "write_ios"):
        d = _delta(ia, ib, k)
        if d is not None:
            out[f"io_{k}_per_s"] = round(d / dt)
    for res in ("cpu", "memory", "io"):
        for kind in ("some", "full"):
            x = ((a.get("pressure") or {}).get(res) or {}).get(kind, {}).get("total")
            y = ((b.get("pressure") or {}).get(res) or {}).get(kind, {}).get("total")
            if isinstance(x, int) and isinstance(y, int):
                out.setdefault("pressure_stalled_share", {})[f"{res}.{kind}"] = round((y - x) / 1e6 / dt, 3)
    return out


# -- the limits that bind a process ----------------------------------------------------------

def tightest(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Of the readings along a process's chains, the cgroup with the least room under each limit.

    Returns {"pids": {cgroup, max, current, room}, "memory": {cgroup, max_bytes, current_bytes,
    working_set_bytes, room_bytes}, "cpu": {cgroup, quota_cores, quota_us, period_us}}, each
    present only when some cgroup on the chain sets that limit. Memory room counts the
    working set (page cache the kernel can drop does not stand in the way).
    """
    out: dict[str, Any] = {}
    for rec in records:
        if not rec.get("exists"):
            continue
        key = f"{rec['hierarchy']}:{rec['path']}"
        p = rec.get("pids") or {}
        if isinstance(p.get("max"), int) and isinstance(p.get("current"), int):
            room = p["max"] - p["current"]
            if "pids" not in out or room < out["pids"]["room"]:
                out["pids"] = {"cgroup": key, "max": p["max"], "current": p["current"], "room": room}
        m = rec.get("memory") or {}
        if isinstance(m.get("max_bytes"), int) and isinstance(m.get("current_bytes"), int):
            used = m.get("working_set_bytes", m["current_bytes"])
            room = m["max_bytes"] - used
            if "memory" not in out or room < out["memory"]["room_bytes"]:
                out["memory"] = {"cgroup": key, "max_bytes": m["max_bytes"], "current_bytes": m["current_bytes"],
                                 "working_set_bytes": used, "room_bytes": room}
        c = rec.get("cpu") or {}
        if isinstance(c.get("quota_us"), int) and c.get("period_us"):
            cores = c["quota_us"] / c["period_us"]
            if "cpu" not in out or cores < out["cpu"]["quota_cores"]:
                out["cpu"] = {"cgroup": key, "quota_cores": round(cores, 3), "quota_us": c["quota_us"],
                              "period_us": c["period_us"]}
    return out


def process_records(pid: int | str, sections: Iterable[str] = ("pids", "memory", "cpu"),
                    hiers: list[Hierarchy] | None = None) -> list[dict[str, Any]]:
    """Every cgroup on the process's chains, read (``sections`` only, no raw text).

    Raises ``OSError`` if the process is gone.
    """
    out = []
    want = tuple(sections)
    for h, chain in chains(pid, hiers):
        if h.version == 1 and not any(h.has(c) for c in _v1_controllers(want)):
            continue
        for p in chain:
            out.append(read(h, p, want, raw=False))
    return out


def _v1_controllers(sections: tuple[str, ...]) -> tuple[str, ...]:
    """The v1 controllers whose hierarchies hold ``sections``."""
    m = {"cpu": ("cpu", "cpuacct"), "memory": ("memory",), "pids": ("pids",), "io": ("blkio",),
         "cpuset": ("cpuset",), "pressure": V1_CONTROLLERS}
    return tuple(c for s in sections for c in m.get(s, ()))
