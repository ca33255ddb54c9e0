"""From recorded samples to named signals: one time series per thing worth watching.

The ring stores what the kernel gave (cumulative counters, gauges); here they become
the values a responder reads: rates per second, percentages of time, MiB. A rate is
computed between two consecutive samples of the same boot over their CLOCK_MONOTONIC
difference (never the wall clock, which can step); a counter that went backwards (a
reset) gives no point. Each point is (wall time of the later sample, value); for rates
the value covers the interval that ends there.

Each signal has a ``Spec``: a label in words, a unit, its kind (``gauge``, ``rate``, or
``event`` for counters whose normal value is zero, like OOM kills and listen-queue
overflows), which direction is bad (``up``, ``down`` or ``both``) and an absolute floor
below which a change is noise (PSI memory some under 1 % is not news). The departure
analysis (``agent.recorder.analysis``) reads these.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from agent.recorder.window import Entry

UP, DOWN, BOTH = "up", "down", "both"
GAUGE, RATE, EVENT = "gauge", "rate", "event"


@dataclass(frozen=True)
class Spec:
    label: str
    unit: str
    kind: str = GAUGE
    direction: str = UP
    floor: float = 0.0
    rel: float = 0.2           # a departure must also exceed this share of the baseline median
    group: str = "host"        # host | network | disk | cgroup | process


@dataclass
class Series:
    name: str
    spec: Spec
    points: list[tuple[float, float]]


def _get(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


# host signals: name -> (spec, how to compute it from (previous sample, sample, seconds between))
Calc = Callable[[dict[str, Any], dict[str, Any], float], float | None]


def _rate(*path: str, scale: float = 1.0) -> Calc:
    def f(a: dict[str, Any], b: dict[str, Any], dt: float) -> float | None:
        x, y = _num(_get(a, *path)), _num(_get(b, *path))
        if x is None or y is None or y < x or dt <= 0:
            return None
        return (y - x) * scale / dt
    return f


def _delta(*path: str) -> Calc:
    def f(a: dict[str, Any], b: dict[str, Any], dt: float) -> float | None:
        x, y = _num(_get(a, *path)), _num(_get(b, *path))
        if x is None or y is None or y < x:
            return None
        return y - x
    return f


def _gauge(*path: str, scale: float = 1.0) -> Calc:
    def f(a: dict[str, Any], b: dict[str, Any], dt: float) -> float | None:
        v = _num(_get(b, *path))
        return None if v is None else v * scale
    return f


def _sum_rate(paths: list[tuple[str, ...]]) -> Calc:
    fs = [_rate(*p) for p in paths]

    def f(a: dict[str, Any], b: dict[str, Any], dt: float) -> float | None:
        vals = [g(a, b, dt) for g in fs]
        vals = [v for v in vals if v is not None]
        return sum(vals) if vals else None
    return f


def _cpu_share(*fields: str) -> Calc:
    def f(a: dict[str, Any], b: dict[str, Any], dt: float) -> float | None:
        ca, cb = a.get("cpu"), b.get("cpu")
        if not isinstance(ca, dict) or not isinstance(cb, dict):
            return None
        keys = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
        tot = sum(cb.get(k, 0) - ca.get(k, 0) for k in keys)
        if tot <= 0:
            return None
        part = sum(cb.get(k, 0) - ca.get(k, 0) for k in fields)
        return max(0.0, min(100.0, 100.0 * part / tot))
    return f


def _busy(a: dict[str, Any], b: dict[str, Any], dt: float) -> float | None:
    idle = _cpu_share("idle", "iowait")(a, b, dt)
    return None if idle is None else 100.0 - idle


def _psi(res: str, line: str) -> Calc:
    return _rate("psi", res, line, scale=100.0 / 1e6)      # µs stalled per s -> % of time


def _ct_pct(a: dict[str, Any], b: dict[str, Any], dt: float) -> float | None:
    c, m = _num(_get(b, "ct", "count")), _num(_get(b, "ct", "max"))
    return 100.0 * c / m if c is not None and m else None


def _mem_avail(a: dict[str, Any], b: dict[str, Any], dt: float) -> float | None:
    v = _num(_get(b, "mem", "MemAvailable"))
    return None if v is None else v / 1024


def _swap_used(a: dict[str, Any], b: dict[str, Any], dt: float) -> float | None:
    t, f = _num(_get(b, "mem", "SwapTotal")), _num(_get(b, "mem", "SwapFree"))
    return None if t is None or f is None or not t else (t - f) / 1024


HOST: dict[str, tuple[Spec, Calc]] = {
    "cpu.busy_pct": (Spec("CPU busy", "%", floor=15), _busy),
    "cpu.iowait_pct": (Spec("CPU iowait", "%", floor=5), _cpu_share("iowait")),
    "cpu.steal_pct": (Spec("CPU steal", "%", floor=5), _cpu_share("steal")),
    "psi.cpu.some_pct": (Spec("PSI cpu some", "%", RATE, floor=10), _psi("cpu", "some")),
    "psi.memory.some_pct": (Spec("PSI memory some", "%", RATE, floor=1), _psi("memory", "some")),
    "psi.memory.full_pct": (Spec("PSI memory full", "%", RATE, floor=1), _psi("memory", "full")),
    "psi.io.some_pct": (Spec("PSI io some", "%", RATE, floor=5), _psi("io", "some")),
    "psi.io.full_pct": (Spec("PSI io full", "%", RATE, floor=5), _psi("io", "full")),
    "load.1": (Spec("load average (1 min)", "", floor=1.0), _gauge("load", "1")),
    "stat.blocked": (Spec("tasks blocked on I/O", "", floor=2), _gauge("stat", "blocked")),
    "stat.forks_ps": (Spec("new tasks (forks)", "/s", RATE, floor=20), _rate("stat", "forks")),
    "stat.ctxt_ps": (Spec("context switches", "/s", RATE, floor=5000, rel=0.5), _rate("stat", "ctxt")),
    "mem.available_mib": (Spec("memory available", "MiB", direction=DOWN, floor=256, rel=0.1), _mem_avail),
    "mem.swap_used_mib": (Spec("swap used", "MiB", floor=64), _swap_used),
    "mem.dirty_mib": (Spec("dirty page cache", "MiB", floor=256), _gauge("mem", "Dirty", scale=1 / 1024)),
    "vm.pgmajfault_ps": (Spec("major page faults", "/s", RATE, floor=50), _rate("vm", "pgmajfault")),
    "vm.pgscan_ps": (Spec("pages scanned for reclaim", "/s", RATE, floor=1000),
                     _sum_rate([("vm", "pgscan_kswapd"), ("vm", "pgscan_direct")])),
    "vm.pgscan_direct_ps": (Spec("direct reclaim scans", "/s", RATE, floor=100), _rate("vm", "pgscan_direct")),
    "vm.swap_ps": (Spec("swap in+out", "pages/s", RATE, floor=10),
                   _sum_rate([("vm", "pswpin"), ("vm", "pswpout")])),
    "vm.refault_ps": (Spec("working-set refaults", "/s", RATE, floor=500),
                      _sum_rate([("vm", "workingset_refault_anon"), ("vm", "workingset_refault_file")])),
    "vm.allocstall": (Spec("allocation stalls", "", EVENT), _delta("vm", "allocstall")),
    "vm.oom_kill": (Spec("OOM kills", "", EVENT), _delta("vm", "oom_kill")),
    "tcp.retrans_ps": (Spec("TCP retransmits", "/s", RATE, floor=5, group="network"), _rate("tcp", "RetransSegs")),
    "tcp.attempt_fails_ps": (Spec("TCP connect failures", "/s", RATE, floor=5, group="network"),
                             _rate("tcp", "AttemptFails")),
    "tcp.estab_resets_ps": (Spec("TCP established resets", "/s", RATE, floor=5, group="network"),
                            _rate("tcp", "EstabResets")),
    "tcp.out_rsts_ps": (Spec("TCP resets sent", "/s", RATE, floor=10, group="network"), _rate("tcp", "OutRsts")),
    "tcp.in_errs": (Spec("TCP bad segments received", "", EVENT, group="network"), _delta("tcp", "InErrs")),
    "tcp.curr_estab": (Spec("TCP connections established", "", direction=BOTH, floor=50, rel=0.3, group="network"),
                       _gauge("tcp", "CurrEstab")),
    "tcpext.listen_overflows": (Spec("listen-queue overflows", "", EVENT, group="network"),
                                _delta("tcpext", "ListenOverflows")),
    "tcpext.listen_drops": (Spec("listen-queue drops", "", EVENT, group="network"), _delta("tcpext", "ListenDrops")),
    "tcpext.timeouts_ps": (Spec("TCP timeouts", "/s", RATE, floor=5, group="network"), _rate("tcpext", "TCPTimeouts")),
    "tcpext.abort_on_memory": (Spec("TCP aborts for lack of memory", "", EVENT, group="network"),
                               _delta("tcpext", "TCPAbortOnMemory")),
    "tcpext.memory_pressures": (Spec("TCP memory pressure entered", "", EVENT, group="network"),
                                _delta("tcpext", "TCPMemoryPressures")),
    "tcpext.backlog_drop": (Spec("TCP backlog drops", "", EVENT, group="network"), _delta("tcpext", "TCPBacklogDrop")),
    "tcpext.reqq_full_drop": (Spec("SYN drops (request queue full)", "", EVENT, group="network"),
                              _delta("tcpext", "TCPReqQFullDrop")),
    "tcpext.syncookies_sent": (Spec("SYN cookies sent", "", EVENT, group="network"),
                               _delta("tcpext", "SyncookiesSent")),
    "tcpext.rcvq_drop": (Spec("TCP receive-queue drops", "", EVENT, group="network"), _delta("tcpext", "TCPRcvQDrop")),
    "udp.rcvbuf_errors": (Spec("UDP receive-buffer errors", "", EVENT, group="network"), _delta("udp", "RcvbufErrors")),
    "udp.in_errors": (Spec("UDP receive errors", "", EVENT, group="network"), _delta("udp", "InErrors")),
    "sock.tcp_tw": (Spec("TCP sockets in TIME-WAIT", "", floor=1000, rel=0.5, group="network"),
                    _gauge("sock", "tcp_tw")),
    "sock.tcp_orphan": (Spec("orphaned TCP sockets", "", floor=50, group="network"), _gauge("sock", "tcp_orphan")),
    "sock.tcp_inuse": (Spec("TCP sockets in use", "", floor=100, rel=0.3, group="network"),
                       _gauge("sock", "tcp_inuse")),
    "ct.count_pct": (Spec("conntrack table use", "% of max", floor=10, group="network"), _ct_pct),
    "ct.drop": (Spec("conntrack drops", "", EVENT, group="network"), _delta("ct", "drop")),
    "ct.early_drop": (Spec("conntrack early drops", "", EVENT, group="network"), _delta("ct", "early_drop")),
    "ct.insert_failed": (Spec("conntrack insert failures", "", EVENT, group="network"), _delta("ct", "insert_failed")),
    "fd.open": (Spec("open files (host)", "", floor=1000, rel=0.2), _gauge("fd", "open")),
    "proc.count": (Spec("processes", "", floor=20, rel=0.1, direction=BOTH, group="process"), _gauge("proc", "n")),
    "proc.dstate": (Spec("processes in D state", "", floor=2, group="process"), _gauge("proc", "dstate")),
    "proc.zombies": (Spec("zombie processes", "", floor=5, group="process"), _gauge("proc", "zombies")),
}

SAFE = re.compile(r"[^A-Za-z0-9_.:@/-]")


def _disk_calc(dev: str, what: str) -> Calc:
    def f(a: dict[str, Any], b: dict[str, Any], dt: float) -> float | None:
        x, y = _get(a, "disk", dev), _get(b, "disk", dev)
        if not isinstance(x, list) or not isinstance(y, list) or len(x) < 9 or len(y) < 9 or dt <= 0:
            return None
        d = [j - i for i, j in zip(x, y, strict=False)]
        if any(v < 0 for i, v in enumerate(d) if i != 6):
            return None
        if what == "util":
            return min(100.0, d[7] / (dt * 1000) * 100)
        ios = d[0] + d[3]
        if what == "await":
            return (d[2] + d[5]) / ios if ios > 0 else None
        return ios / dt
    return f


def _net_calc(dev: str) -> Calc:
    def f(a: dict[str, Any], b: dict[str, Any], dt: float) -> float | None:
        x, y = _get(a, "net", dev), _get(b, "net", dev)
        if not isinstance(x, list) or not isinstance(y, list) or len(x) < 8 or len(y) < 8:
            return None
        d = (y[3] - x[3]) + (y[7] - x[7]) + (y[2] - x[2]) + (y[6] - x[6])
        return d if d >= 0 else None
    return f


def _cg_calc(g: str, what: str) -> Calc:
    def f(a: dict[str, Any], b: dict[str, Any], dt: float) -> float | None:
        x, y = _get(a, "cg", "g", g), _get(b, "cg", "g", g)
        if not isinstance(y, dict):
            return None
        if what == "mem":
            v = _num(y.get("mem"))
            return None if v is None else v / 2**20
        if what == "pids":
            return _num(y.get("pids"))
        if not isinstance(x, dict) or dt <= 0:
            return None
        if what == "cpu":
            u0, u1 = _num(_get(x, "cpu", "usage_usec")), _num(_get(y, "cpu", "usage_usec"))
            return None if u0 is None or u1 is None or u1 < u0 else (u1 - u0) / 1e6 / dt * 100
        if what == "throttled":
            u0, u1 = _num(_get(x, "cpu", "throttled_usec")), _num(_get(y, "cpu", "throttled_usec"))
            return None if u0 is None or u1 is None or u1 < u0 else (u1 - u0) / 1e6 / dt * 100
        if what.startswith("ev:"):
            k = what[3:]
            u0, u1 = _num(_get(x, "mem_events", k)), _num(_get(y, "mem_events", k))
            return None if u0 is None or u1 is None or u1 < u0 else u1 - u0
        if what.startswith("psi:"):
            res = what[4:]
            u0, u1 = _num(_get(x, "psi", res, "some")), _num(_get(y, "psi", res, "some"))
            return None if u0 is None or u1 is None or u1 < u0 else (u1 - u0) / 1e6 / dt * 100
        if what == "io":
            i0, i1 = x.get("io"), y.get("io")
            if not isinstance(i0, dict) or not isinstance(i1, dict):
                return None
            d = sum(i1.get(k, 0) - i0.get(k, 0) for k in ("rbytes", "wbytes"))
            return d / 2**20 / dt if d >= 0 else None
        return None
    return f


def _proc_specs(samples: list[Entry]) -> dict[str, tuple[Spec, Callable[[dict[str, Any]], float | None]]]:
    """Per process (pid and start time) seen in the top lists of at least a quarter of the process samples."""
    seen: dict[tuple[int, int], list[Any]] = {}
    n = 0
    for s in samples:
        p = s.data.get("proc")
        if not isinstance(p, dict):
            continue
        n += 1
        for t in p.get("top") or []:
            if isinstance(t, dict) and "pid" in t:
                k = (t["pid"], t.get("start", 0))
                seen.setdefault(k, [t.get("comm", ""), 0])[1] += 1
    out: dict[str, tuple[Spec, Callable[[dict[str, Any]], float | None]]] = {}
    for (pid, start), (comm, cnt) in seen.items():
        if n and cnt >= max(4, n // 4):
            label = f"{comm or 'pid'}[{pid}]"

            def getter(field: str, pid: int = pid, start: int = start, scale: float = 1.0):
                def g(d: dict[str, Any]) -> float | None:
                    for t in _get(d, "proc", "top") or []:
                        if isinstance(t, dict) and t.get("pid") == pid and t.get("start", 0) == start:
                            return None if _num(t.get(field)) is None else float(t[field]) * scale
                    return None
                return g
            out[f"process.{SAFE.sub('_', label)}.cpu_pct"] = (
                Spec(f"{label} CPU", "% of a core", floor=20, group="process"), getter("cpu_pct"))
            out[f"process.{SAFE.sub('_', label)}.rss_mib"] = (
                Spec(f"{label} resident memory", "MiB", floor=64, group="process"), getter("rss_kb", scale=1 / 1024))
    return out


def build(samples: list[Entry]) -> list[Series]:
    """Every signal of a window's samples (same boot, in sequence order)."""
    samples = [s for s in samples if s.kind == "sample"]
    calcs: dict[str, tuple[Spec, Calc]] = dict(HOST)
    disks: set[str] = set()
    nets: set[str] = set()
    cgs: dict[str, set[str]] = {}
    for s in samples:
        d = s.data
        disks.update(k for k in (d.get("disk") or {}) if isinstance(k, str))
        nets.update(k for k in (d.get("net") or {}) if isinstance(k, str))
        for g, v in (_get(d, "cg", "g") or {}).items():
            if isinstance(v, dict):
                keys = cgs.setdefault(g, set())
                keys.update(v.keys())
                for res in (v.get("psi") or {}):
                    keys.add(f"psi:{res}")
    for dev in sorted(disks):
        calcs[f"disk.{dev}.util_pct"] = (Spec(f"disk {dev} busy", "%", floor=20, group="disk"), _disk_calc(dev, "util"))
        calcs[f"disk.{dev}.await_ms"] = (Spec(f"disk {dev} I/O wait per request", "ms", floor=10, rel=1.0,
                                              group="disk"), _disk_calc(dev, "await"))
    for dev in sorted(nets):
        calcs[f"net.{dev}.drops_errs"] = (Spec(f"{dev} packet drops and errors", "", EVENT, group="network"),
                                          _net_calc(dev))
    for g, keys in sorted(cgs.items()):
        base = f"cgroup.{SAFE.sub('_', g)}"
        if "cpu" in keys:
            calcs[f"{base}.cpu_pct"] = (Spec(f"cgroup {g} CPU", "% of a core", floor=10, group="cgroup"),
                                        _cg_calc(g, "cpu"))
            calcs[f"{base}.throttled_pct"] = (Spec(f"cgroup {g} CPU throttled", "% of time", floor=5, group="cgroup"),
                                              _cg_calc(g, "throttled"))
        if "mem" in keys:
            calcs[f"{base}.mem_mib"] = (Spec(f"cgroup {g} memory", "MiB", floor=32, rel=0.1, group="cgroup"),
                                        _cg_calc(g, "mem"))
        if "pids" in keys:
            calcs[f"{base}.pids"] = (Spec(f"cgroup {g} tasks", "", floor=20, group="cgroup"), _cg_calc(g, "pids"))
        if "io" in keys:
            calcs[f"{base}.io_mibps"] = (Spec(f"cgroup {g} disk I/O", "MiB/s", floor=10, group="cgroup"),
                                         _cg_calc(g, "io"))
        if "mem_events" in keys:
            for k, words in (("oom_kill", "OOM kills"), ("max", "hits of memory.max"), ("high", "hits of memory.high"),
                             ("failcnt", "")):
                if words:
                    calcs[f"{base}.{k}"] = (Spec(f"cgroup {g} {words}", "", EVENT, group="cgroup"),
                                            _cg_calc(g, f"ev:{k}"))
        for k in sorted(x for x in keys if x.startswith("psi:")):
            res = k[4:]
            calcs[f"{base}.psi_{res}_some_pct"] = (
                Spec(f"cgroup {g} PSI {res} some", "%", RATE, floor=1 if res == "memory" else 5, group="cgroup"),
                _cg_calc(g, k))
    series: dict[str, Series] = {}
    host = {k: v for k, v in calcs.items() if not k.startswith(("cgroup.", "proc."))}
    _run(host, samples, series)
    _run({k: v for k, v in calcs.items() if k.startswith("proc.")}, [e for e in samples if "proc" in e.data], series)
    _run({k: v for k, v in calcs.items() if k.startswith("cgroup.")}, [e for e in samples if "cg" in e.data], series)
    for name, (spec, get) in _proc_specs(samples).items():
        pts = []
        for e in samples:
            v = get(e.data)
            if v is not None:
                pts.append((e.wall, v))
        series[name] = Series(name, spec, pts)
    return [s for s in series.values() if s.points]


def _run(calcs: dict[str, tuple[Spec, Calc]], samples: list[Entry], out: dict[str, Series]) -> None:
    """Evaluate ``calcs`` over consecutive samples (rates between neighbours of the same boot)."""
    for name, (spec, _) in calcs.items():
        out[name] = Series(name, spec, [])
    prev: Entry | None = None
    for e in samples:
        pair = prev is not None and prev.boot == e.boot and e.mono > prev.mono
        dt = e.mono - prev.mono if pair and prev is not None else 0.0
        a = prev.data if pair and prev is not None else None
        for name, (_, calc) in calcs.items():
            try:
                v = calc(a if a is not None else {}, e.data, dt)   # rates need a; gauges do not
            except (TypeError, ValueError, ZeroDivisionError, KeyError, AttributeError):
                v = None
            if v is not None:
                out[name].points.append((e.wall, v))
        prev = e


def by_name(series: Iterable[Series]) -> dict[str, Series]:
    return {s.name: s for s in series}
