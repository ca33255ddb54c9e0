"""Per-service cgroup counters for the flight recorder: cgroup v2 (unified) and v1 (legacy, hybrid).

Which groups: the top-level groups and their children (``system.slice/nginx.service``,
``kubepods/burstable``), at most ``max_groups`` (top level first). The root is left out:
the host counters already cover it.

cgroup v2 (one hierarchy; ``/sys/fs/cgroup`` is ``cgroup2``): per group ``cpu.stat``
(usage, user, system, throttling), ``memory.current``, ``memory.max``, ``memory.swap.current``,
``memory.events`` (low, high, max, oom, oom_kill, oom_group_kill), ``io.stat`` summed over
devices (rbytes, wbytes, rios, wios), ``pids.current``, and the stall totals of
``cpu.pressure``, ``memory.pressure`` and ``io.pressure`` (microseconds, like /proc/pressure).

cgroup v1 (one hierarchy per controller; hybrid hosts too, like this project's test
machine): groups found under the memory and cpuacct hierarchies; per group
``memory.usage_in_bytes``, ``memory.limit_in_bytes``, ``memory.failcnt``, ``oom_kill`` and
``under_oom`` from ``memory.oom_control``, ``cpuacct.usage`` (ns), ``cpu.stat`` throttling,
``pids.current``.

Every value is a cumulative counter or a gauge as the kernel gives it (rates are computed
when reading). Parsing is tolerant: a file that is missing, unreadable or malformed is left
out of that group, never fatal (below#8122: a recorder must survive layouts it did not expect).
"""
from __future__ import annotations

import os
from typing import Any, Callable

V2_FLAT = ("cpu.stat", "memory.events")
V2_CPU_KEYS = ("usage_usec", "user_usec", "system_usec", "nr_periods", "nr_throttled", "throttled_usec")
V2_EVENT_KEYS = ("low", "high", "max", "oom", "oom_kill", "oom_group_kill")
PSI_FILES = (("cpu.pressure", "cpu"), ("memory.pressure", "memory"), ("io.pressure", "io"))


def read(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 65536)
    except OSError:
        return None
    finally:
        os.close(fd)


def parse_flat(data: bytes | None, keys: tuple[str, ...] | None = None) -> dict[str, int]:
    """A flat-keyed cgroup file (``key value`` per line: cpu.stat, memory.events, memory.stat)."""
    out: dict[str, int] = {}
    if not data:
        return out
    for line in data.split(b"\n"):
        k, _, v = line.partition(b" ")
        if not v:
            continue
        key = k.decode("ascii", "replace")
        if keys is not None and key not in keys:
            continue
        try:
            out[key] = int(v)
        except ValueError:
            continue
    return out


def parse_value(data: bytes | None) -> int | None:
    """A single-value file; ``max`` (no limit) is None, as is anything unreadable."""
    if not data:
        return None
    s = data.strip()
    if s == b"max":
        return None
    try:
        return int(s)
    except ValueError:
        return None


def parse_pressure(data: bytes | None) -> dict[str, int]:
    """``some``/``full`` stall totals (µs) of a pressure file (/proc/pressure/* or a cgroup's)."""
    out: dict[str, int] = {}
    if not data:
        return out
    for line in data.split(b"\n"):
        kind, _, rest = line.partition(b" ")
        if kind not in (b"some", b"full"):
            continue
        for part in rest.split():
            if part.startswith(b"total="):
                try:
                    out[kind.decode()] = int(part[6:])
                except ValueError:
                    pass
    return out


def parse_io_stat(data: bytes | None) -> dict[str, int]:
    """v2 ``io.stat`` (``MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. dbytes=.. dios=..`` per device), summed."""
    out: dict[str, int] = {}
    if not data:
        return out
    for line in data.split(b"\n"):
        for part in line.split()[1:]:
            k, _, v = part.partition(b"=")
            if k in (b"rbytes", b"wbytes", b"rios", b"wios"):
                try:
                    key = k.decode()
                    out[key] = out.get(key, 0) + int(v)
                except ValueError:
                    pass
    return out


def parse_oom_control(data: bytes | None) -> dict[str, int]:
    """v1 ``memory.oom_control``: oom_kill (kernel 4.13+) and under_oom."""
    d = parse_flat(data, ("oom_kill", "under_oom"))
    return d


def detect(root: str = "/sys/fs/cgroup", mounts: str = "/proc/self/mounts") -> int:
    """2 when ``root`` is a cgroup2 mount, 1 when it holds v1 controller hierarchies, 0 otherwise."""
    data = read(mounts) or b""
    for line in data.split(b"\n"):
        parts = line.split()
        if len(parts) > 2 and parts[1].decode(errors="replace") == root and parts[2] == b"cgroup2":
            return 2
    return 1 if os.path.isdir(os.path.join(root, "memory")) or os.path.isdir(os.path.join(root, "cpuacct")) else 0


def _children(d: str) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(d) if e.is_dir(follow_symlinks=False))
    except OSError:
        return []


def list_groups(base: str, max_groups: int) -> list[str]:
    """Relative paths of the top-level groups under ``base`` and then their children, at most ``max_groups``."""
    top = _children(base)
    out = top[:max_groups]
    for t in top:
        if len(out) >= max_groups:
            break
        for c in _children(os.path.join(base, t)):
            out.append(f"{t}/{c}")
            if len(out) >= max_groups:
                break
    return out


def sample_v2_group(d: str, reader: Callable[[str], bytes | None] = read) -> dict[str, Any]:
    """One v2 group's counters (keys only for files that could be read)."""
    g: dict[str, Any] = {}
    cpu = parse_flat(reader(f"{d}/cpu.stat"), V2_CPU_KEYS)
    if cpu:
        g["cpu"] = cpu
    for name, key in (("memory.current", "mem"), ("memory.max", "mem_max"), ("memory.swap.current", "swap"),
                      ("pids.current", "pids")):
        v = parse_value(reader(f"{d}/{name}"))
        if v is not None:
            g[key] = v
    ev = parse_flat(reader(f"{d}/memory.events"), V2_EVENT_KEYS)
    if ev:
        g["mem_events"] = ev
    io = parse_io_stat(reader(f"{d}/io.stat"))
    if io:
        g["io"] = io
    psi = {}
    for fname, res in PSI_FILES:
        p = parse_pressure(reader(f"{d}/{fname}"))
        if p:
            psi[res] = p
    if psi:
        g["psi"] = psi
    return g


def sample_v1_group(rel: str, roots: dict[str, str], reader: Callable[[str], bytes | None] = read) -> dict[str, Any]:
    """One v1 group's counters, from the controllers' hierarchies in ``roots`` (memory, cpuacct, cpu, pids)."""
    g: dict[str, Any] = {}
    mem = roots.get("memory")
    if mem:
        d = f"{mem}/{rel}"
        for name, key in (("memory.usage_in_bytes", "mem"), ("memory.limit_in_bytes", "mem_max"),
                          ("memory.failcnt", "failcnt")):
            v = parse_value(reader(f"{d}/{name}"))
            if v is not None:
                if key == "mem_max" and v >= 1 << 62:      # "no limit" in v1 is a huge number
                    continue
                g[key] = v
        oc = parse_oom_control(reader(f"{d}/memory.oom_control"))
        if oc:
            g["mem_events"] = oc
    acct = roots.get("cpuacct")
    if acct:
        v = parse_value(reader(f"{acct}/{rel}/cpuacct.usage"))
        if v is not None:
            g["cpu"] = {"usage_usec": v // 1000}
    cpu = roots.get("cpu")
    if cpu:
        st = parse_flat(reader(f"{cpu}/{rel}/cpu.stat"), ("nr_periods", "nr_throttled", "throttled_time"))
        if st:
            c = g.setdefault("cpu", {})
            c.update({k: v for k, v in st.items() if k != "throttled_time"})
            if "throttled_time" in st:
                c["throttled_usec"] = st["throttled_time"] // 1000
    pids = roots.get("pids")
    if pids:
        v = parse_value(reader(f"{pids}/{rel}/pids.current"))
        if v is not None:
            g["pids"] = v
    return g


class CgroupSampler:
    """Samples the groups of this host's cgroup hierarchy (v2 or v1), re-listing groups each call."""

    def __init__(self, root: str = "/sys/fs/cgroup", max_groups: int = 40, version: int | None = None):
        self.root = root
        self.max_groups = max_groups
        self.version = detect(root) if version is None else version
        self.roots: dict[str, str] = {}
        if self.version == 1:
            for ctrl in ("memory", "cpuacct", "cpu", "pids"):
                for cand in (ctrl, "cpu,cpuacct", "cpuacct,cpu"):
                    p = os.path.join(root, cand)
                    if (ctrl in cand.split(",")) and os.path.isdir(p):
                        self.roots[ctrl] = p
                        break

    def sample(self) -> dict[str, Any]:
        if self.version == 2:
            groups = {rel: sample_v2_group(os.path.join(self.root, rel))
                      for rel in list_groups(self.root, self.max_groups)}
        elif self.version == 1:
            rels: list[str] = []
            for ctrl in ("memory", "cpuacct"):
                base = self.roots.get(ctrl)
                if base:
                    for rel in list_groups(base, self.max_groups):
                        if rel not in rels:
                            rels.append(rel)
            groups = {rel: sample_v1_group(rel, self.roots) for rel in rels[:self.max_groups]}
        else:
            return {}
        return {"v": self.version, "g": {k: v for k, v in groups.items() if v}}
