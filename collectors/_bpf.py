"""Shared plumbing for the eBPF collectors (bcc, tracepoints only): not a collector.

Every probe collector (syscalls, runqlat, tcpretrans, biolatency, oomkill) does the same
things, in this order, inside its own child process:

1. ``requirements(...)``/``check()`` at plan time: root, the ``bcc`` Python module, kernel
   headers, each tracepoint, and a tracefs that is mounted or mountable.
2. ``ensure_tracefs()``: bcc reads tracepoint formats and IDs from tracefs. A host
   without systemd may not have it mounted; the collector then mounts it in a
   private mount namespace of its own process (the host's mounts are unchanged and
   the mount disappears with the process).
3. ``Probe``: compiles the C text (with ``#define``s prepended, as bcc's tools do),
   attaches the named functions to the tracepoints that exist, writes
   ``attached.json`` (which tracepoints, the kernel's program and map IDs) so a test
   or an operator can see the window has begun, and always detaches and closes
   everything at the end (``finally``). If the process is killed instead (timeout,
   goldenhour killed), closing its descriptors is what detaches: tracepoint programs
   are held only by the perf-event descriptors of this process, nothing is pinned.
4. ``window()``: the probe window, ``capture["probe_seconds"]`` (default 5 s), clipped
   so the maps can still be read before the collector's deadline.
5. Reading the maps and turning bcc's log2 slots into buckets and percentiles.

Our BPF functions and maps are named ``gh_*`` so ``bpftool prog show`` tells them apart.
"""
from __future__ import annotations

import ctypes
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

from agent import procfs
from agent.collector import Requirement, Skip, read_text
from agent.incident import iso, utcnow

TRACEFS_PATHS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
PROBE_SECONDS = 5.0
READ_RESERVE_S = 3.0       # kept before the deadline for reading maps and writing files
CLONE_NEWNS = 0x00020000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x4000, 0x40000
AUTO_TARGET_REASON = "top cpu/rss"    # agent.targets.resolve's reason for automatic targets


# -- plan time ------------------------------------------------------------------------------

def requirements(*tracepoints: str) -> tuple[Requirement, ...]:
    """What every probe needs, then its tracepoints (the first one unmet is the reason shown)."""
    return (Requirement("root", why="loading BPF programs"),
            Requirement("python_module", "bcc", why="Debian package python3-bpfcc"),
            Requirement("kernel_headers", why="bcc compiles the probes against them"),
            *(Requirement("tracepoint", tp) for tp in tracepoints))


def check() -> str | None:
    """Plan-time check beyond the requirements: a tracefs we can read or mount."""
    if tracefs_path():
        return None
    if "tracefs" not in (read_text("/proc/filesystems", "") or ""):
        return "the kernel has no tracefs: tracepoints cannot be attached"
    return None   # mountable: each probe mounts it privately in its own process


# -- tracefs, tracepoints -----------------------------------------------------------------------

def tracefs_path() -> str | None:
    for base in TRACEFS_PATHS:
        if os.path.isdir(f"{base}/events"):
            return base
    return None


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def ensure_tracefs() -> dict[str, Any]:
    """A readable tracefs for bcc, in a private mount namespace of this process.

    The collector's child process gets its own mount namespace (propagation private), so
    someone unmounting the host's tracefs mid-window cannot pull it away, and when the
    host has none mounted (no systemd), the one mounted here is seen by nothing else and
    disappears with the process.
    """
    global _TRACEFS
    if _TRACEFS is not None and os.getpid() == _TRACEFS[0]:
        return _TRACEFS[1]
    info = _ensure_tracefs()
    _TRACEFS = (os.getpid(), info)
    return info


_TRACEFS: tuple[int, dict[str, Any]] | None = None


def _ensure_tracefs() -> dict[str, Any]:
    libc = _libc()
    private = libc.unshare(CLONE_NEWNS) == 0 and libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) == 0
    err = ctypes.get_errno()
    base = tracefs_path()
    if base:
        return {"path": base, "mount": "host" + (" (private copy)" if private else "")}
    if "tracefs" not in (read_text("/proc/filesystems", "") or ""):
        raise Skip("the kernel has no tracefs: tracepoints cannot be attached")
    if not private:
        raise Skip(f"tracefs is not mounted and a private mount namespace was refused: {os.strerror(err)}")
    if libc.mount(b"tracefs", TRACEFS_PATHS[0].encode(), b"tracefs", MS_NOSUID | MS_NODEV | MS_NOEXEC, None) != 0:
        err = ctypes.get_errno()
        raise Skip(f"tracefs is not mounted and could not be mounted privately: {os.strerror(err)}")
    return {"path": TRACEFS_PATHS[0],
            "mount": "private (this collector's own mount namespace; the host's mounts are unchanged)"}


def tracepoint_exists(tp: str) -> bool:
    base = tracefs_path()
    cat, _, name = tp.partition(":")
    return bool(base) and os.path.isfile(f"{base}/events/{cat}/{name}/id")


def tracepoint_fields(tp: str) -> dict[str, dict[str, Any]]:
    """The fields of a tracepoint from its tracefs ``format`` (name -> {type, size, offset})."""
    base = tracefs_path()
    cat, _, name = tp.partition(":")
    text = read_text(f"{base}/events/{cat}/{name}/format", "") if base else ""
    return parse_format(text or "")


def parse_format(text: str) -> dict[str, dict[str, Any]]:
    fields: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("field:"):
            continue
        parts = {k.strip(): v.strip() for k, v in (p.split(":", 1) for p in line.split(";") if ":" in p)}
        decl = parts.get("field", "")
        fname = decl.split()[-1].split("[")[0] if decl.split() else ""
        if not fname or fname.startswith("common_"):
            continue
        fields[fname] = {"type": decl, "size": int(parts.get("size", "0") or 0),
                         "offset": int(parts.get("offset", "0") or 0),
                         "data_loc": "__data_loc" in decl}
    return fields


# -- host facts for the manifest ---------------------------------------------------------------------

def headers_info() -> dict[str, Any]:
    """Which kernel headers bcc compiles against: the kernel's own, or distribution headers linked."""
    rel = os.uname().release
    build = Path(f"/lib/modules/{rel}/build")
    info: dict[str, Any] = {"running_kernel": rel, "path": str(build), "present": build.is_dir()}
    if build.is_symlink():
        info["resolves_to"] = os.path.realpath(build)
    m = None
    uts = read_text(build / "include/generated/utsrelease.h", "") or ""
    for line in uts.splitlines():
        if "UTS_RELEASE" in line and '"' in line:
            m = line.split('"')[1]
    info["headers_release"] = m
    if not info["present"]:
        kh = Path("/sys/kernel/kheaders.tar.xz")
        info["source"] = "in-kernel headers (/sys/kernel/kheaders.tar.xz)" if kh.exists() else "none"
    elif m == rel:
        info["source"] = "the running kernel's own headers"
    else:
        info["source"] = ("distribution headers linked as the running kernel's build folder "
                          f"(nearest available: {m or 'unknown release'}; the kernel is {rel})")
    info["matches_running_kernel"] = m == rel
    return info


def bcc_version() -> str:
    try:
        import bcc
        return str(getattr(bcc, "__version__", "") or "unknown")
    except Exception as exc:  # noqa: BLE001
        return f"unavailable ({exc})"


# -- which processes ---------------------------------------------------------------------------------

def _ppids() -> dict[int, int]:
    out = {}
    for pid in procfs.pids():
        try:
            out[pid] = procfs.stat(pid).ppid
        except procfs.ProcError:
            continue      # exited meanwhile
    return out


def with_descendants(pids: Iterable[int]) -> set[int]:
    """``pids`` and every live process descending from them (found through /proc)."""
    seen = {int(p) for p in pids}
    children: dict[int, list[int]] = {}
    for pid, ppid in _ppids().items():
        children.setdefault(ppid, []).append(pid)
    todo = list(seen)
    while todo:
        for c in children.get(todo.pop(), ()):
            if c not in seen:
                seen.add(c)
                todo.append(c)
    return seen


def excluded_pids(ctx) -> set[int]:
    """goldenhour's own processes: the capture's, this collector's, and what they started."""
    return with_descendants({os.getpid(), *(int(p) for p in ctx.capture.get("exclude_pids") or [])})


def target_pids(ctx, mode: str = "auto") -> tuple[list[int] | None, str]:
    """TGIDs to restrict a probe to (None = host-wide) and why.

    ``auto``: the capture's targets when they were given (--pid/--process/--unit or
    configured services), host-wide when they are only the automatic top processes;
    ``targets``: always the capture's targets; ``host``: never filter.
    """
    targets = [int(t["pid"]) for t in ctx.capture.get("targets") or [] if t.get("pid")]
    explicit = ctx.capture.get("targets_explicit")
    if explicit is None:   # a capture dict without the flag: decide from the targets' reasons
        explicit = any(t.get("reason") != AUTO_TARGET_REASON for t in ctx.capture.get("targets") or [])
    if mode not in ("auto", "targets", "host"):
        raise ValueError(f"filter must be auto, targets or host, not {mode!r}")
    if mode == "host" or not targets:
        return None, "host-wide" + (" (no targets)" if mode != "host" else " (filter = host)")
    if mode == "targets" or explicit:
        return sorted(set(targets)), "the capture's targets" + (" (given)" if explicit else "")
    return None, "host-wide (targets were only the automatic top processes)"


def proc_comm(pid: int) -> str | None:
    c = read_text(f"/proc/{pid}/comm")
    return c.rstrip("\n") if c else None


def tgid_of(tid: int) -> int | None:
    """The process a thread belongs to, or None if it exited."""
    try:
        return int(procfs.status(tid)["Tgid"])
    except (procfs.ProcError, KeyError, ValueError):
        return None


# -- time ----------------------------------------------------------------------------------------------

def mono_ns_to_utc(ns: int) -> str:
    """A bpf_ktime_get_ns() (CLOCK_MONOTONIC) timestamp as UTC ISO time."""
    wall = time.time() - (time.monotonic_ns() - int(ns)) / 1e9
    return iso(datetime.fromtimestamp(wall, timezone.utc))


def window_seconds(ctx) -> float:
    """The probe window: capture["probe_seconds"], clipped to leave time to read the maps."""
    want = float(ctx.capture.get("probe_seconds") or PROBE_SECONDS)
    avail = ctx.remaining() - READ_RESERVE_S
    if avail < want:
        got = max(0.1, avail)
        ctx.partial(f"probe window cut to {got:.1f} s of the {want:g} s asked: the collector's time budget")
        return got
    return want


def window(ctx, seconds: float, tick: Callable[[], None] | None = None) -> dict[str, Any]:
    """Wait out the window (``tick`` runs about every 0.5 s); returns its start, end and length."""
    start, t0 = utcnow(), time.monotonic()
    end = t0 + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(left, 0.5))
        if tick is not None and end - time.monotonic() > 0:
            tick()
    return {"start_utc": iso(start), "end_utc": iso(utcnow()), "seconds": round(time.monotonic() - t0, 3),
            "requested_s": float(ctx.capture.get("probe_seconds") or PROBE_SECONDS)}


# -- log2 histograms ----------------------------------------------------------------------------------

def slot_bounds(slot: int) -> tuple[int, int]:
    """bcc's bpf_log2l() slot as an inclusive value range: 1 -> [0, 1], i -> [2**(i-1), 2**i - 1]."""
    if slot <= 1:
        return 0, 1 if slot == 1 else 0
    return 1 << (slot - 1), (1 << slot) - 1


def log2_buckets(slots: dict[int, int]) -> list[dict[str, int]]:
    """Nonzero slots as ``{"low_us", "high_us", "count"}`` (inclusive bounds, like bcc prints)."""
    out = []
    for s in sorted(slots):
        if slots[s] > 0:
            lo, hi = slot_bounds(s)
            out.append({"low_us": lo, "high_us": hi, "count": int(slots[s])})
    return out


def percentile(buckets: list[dict[str, int]], q: float, lo: float | None = None,
               hi: float | None = None) -> float | None:
    """Estimate the q-quantile: linear inside the log2 bucket holding it, bounded by the exact
    min (``lo``) and max (``hi``) when known. Always within that bucket's range."""
    n = sum(b["count"] for b in buckets)
    if not n:
        return None
    rank = q * n
    seen = 0
    for b in buckets:
        if seen + b["count"] >= rank:
            # the bucket's range, narrowed by the exact min and max when they fall inside it
            a, z = float(b["low_us"]), float(b["high_us"] + 1)
            if lo is not None and a <= lo < z:
                a = lo
            if hi is not None and a <= hi < z:
                z = hi
            frac = (rank - seen) / b["count"]
            return round(min(a + frac * (z - a), float(b["high_us"]) if hi is None else max(hi, a)), 3)
        seen += b["count"]
    return float(buckets[-1]["high_us"])


def merge_slots(*many: dict[int, int]) -> dict[int, int]:
    acc: dict[int, int] = {}
    for m in many:
        for s, c in m.items():
            acc[s] = acc.get(s, 0) + c
    return acc


def stats(slots: dict[int, int], count: int, total_ns: int, max_ns: int, min_ns: int | None = None
          ) -> dict[str, Any]:
    """The standard latency record fields from a histogram and exact counters (ns -> us)."""
    bs = log2_buckets(slots)
    mn = min_ns / 1000 if min_ns else None
    mx = max_ns / 1000
    return {"count": int(count), "total_us": round(total_ns / 1000, 3),
            "mean_us": round(total_ns / 1000 / count, 3) if count else None,
            "min_us": round(mn, 3) if mn is not None else None, "max_us": round(mx, 3),
            "p50_us": percentile(bs, 0.50, mn, mx), "p90_us": percentile(bs, 0.90, mn, mx),
            "p99_us": percentile(bs, 0.99, mn, mx), "unit": "us", "hist": bs}


def render_hist(buckets: list[dict[str, int]], width: int = 40, label: str = "usecs") -> str:
    """bcc's print_log2_hist layout."""
    if not buckets:
        return "     (no samples)\n"
    peak = max(b["count"] for b in buckets)
    lines = [f"{label:>24} : count     distribution"]
    for b in buckets:
        bar = "*" * max(1, round(b["count"] * width / peak)) if b["count"] else ""
        lines.append(f"{b['low_us']:>10} -> {b['high_us']:<10}: {b['count']:<9} |{bar:<{width}}|")
    return "\n".join(lines) + "\n"


# -- maps -----------------------------------------------------------------------------------------------

def _plain(x: Any) -> Any:
    """Scalar ctypes values (c_uint, c_ulong) as ints; structures unchanged."""
    return x.value if isinstance(x, ctypes._SimpleCData) else x


def items(table) -> list[tuple[Any, Any]]:
    """All (key, value) pairs of a bcc table, scalars as ints: batched where the kernel allows."""
    try:
        pairs = list(table.items_lookup_batch())
    except Exception:  # noqa: BLE001 - old kernels, per-CPU maps, bcc without batch ops
        pairs = list(table.items())
    return [(_plain(k), _plain(v)) for k, v in pairs]


def fill(table, keys: Iterable[int], value: int = 1) -> int:
    n = 0
    for k in keys:
        try:
            table[table.Key(int(k))] = table.Leaf(value)
            n += 1
        except Exception:  # noqa: BLE001 - full map: the rest is noted by the caller
            break
    return n


def fd_ids() -> dict[str, list[int]]:
    """The kernel IDs of the BPF programs and maps this process holds (from /proc/self/fdinfo)."""
    progs, maps = set(), set()
    for fd in os.listdir("/proc/self/fdinfo"):
        text = read_text(f"/proc/self/fdinfo/{fd}", "") or ""
        for line in text.splitlines():
            k, _, v = line.partition(":")
            if k == "prog_id":
                progs.add(int(v))
            elif k == "map_id":
                maps.add(int(v))
    return {"prog_ids": sorted(progs), "map_ids": sorted(maps)}


# -- the probe ------------------------------------------------------------------------------------------

def defines(**values: Any) -> str:
    """``#define`` lines prepended to the C text, as bcc's tools do for their filters."""
    out = []
    for k, v in values.items():
        if v is None or v is False:
            continue
        out.append(f"#define {k} {1 if v is True else v}")
    return "\n".join(out) + "\n"


class Probe:
    """Compile, attach, detach: ``with Probe(ctx, text, attach=[(tp, fn), ...]) as p: ...``.

    Only the tracepoints that exist are attached (``optional`` ones may be missing);
    ``p.attached`` lists them. Detach and cleanup always run on leaving the block.
    Tracepoints in ``raw`` are attached as raw tracepoints (``BPF_PROG_TYPE_RAW_TRACEPOINT``:
    the program gets the tracepoint's arguments as they are, without the perf record the
    kernel otherwise builds first: cheaper on hot tracepoints such as sys_enter/sys_exit).
    """

    def __init__(self, ctx, text: str, attach: list[tuple[str, str]], *, optional: Iterable[str] = (),
                 raw: Iterable[str] = (), cflags: Iterable[str] = ("-w",)):
        self.ctx = ctx
        self.text = text
        self.wanted = list(attach)
        self.optional = set(optional)
        self.raw = set(raw)
        self.cflags = list(cflags)
        self.bpf = None
        self.attached: list[str] = []
        self.missing: list[str] = []
        self.ids: dict[str, list[int]] = {}

    def __enter__(self) -> "Probe":
        tracefs = ensure_tracefs()
        try:
            import bcc
        except Exception as exc:  # noqa: BLE001
            raise Skip(f"bcc cannot be imported: {exc}") from None
        if not os.path.isdir(f"{bcc.TRACEFS}/events"):   # bcc chose its path before our mount
            bcc.TRACEFS = tracefs["path"]
        self.ctx.note(kernel_headers=headers_info(), bcc_version=bcc_version(), tracefs=tracefs)
        for tp, _ in self.wanted:
            if not tracepoint_exists(tp):
                if tp not in self.optional:
                    raise Skip(f"tracepoint {tp} not available in this kernel")
                self.missing.append(tp)
        log = self.ctx.path("bcc.log")
        saved = os.dup(2)
        try:
            with open(log, "wb") as fh:          # clang's and libbpf's messages go here, not to the terminal
                os.dup2(fh.fileno(), 2)
                try:
                    self.bpf = bcc.BPF(text=self.text, cflags=self.cflags)
                finally:
                    os.dup2(saved, 2)
        except Exception as exc:  # noqa: BLE001
            tail = (read_text(log, "") or "").strip().splitlines()[-3:]
            raise RuntimeError(f"bcc could not compile the probe ({exc}); headers: "
                               f"{headers_info()['source']}; {' | '.join(tail)}") from None
        finally:
            os.close(saved)
            if log.exists() and log.stat().st_size == 0:
                log.unlink()
        return self

    def attach(self, marker: bool = True) -> list[str]:
        """Attach every present tracepoint; note and (``marker``) write ``attached.json``."""
        assert self.bpf is not None
        for tp, fn in self.wanted:
            if tp in self.missing:
                continue
            try:
                if tp in self.raw:
                    self.bpf.attach_raw_tracepoint(tp=tp.partition(":")[2], fn_name=fn)
                else:
                    self.bpf.attach_tracepoint(tp=tp, fn_name=fn)
            except Exception as exc:  # noqa: BLE001
                if tp in self.optional:
                    self.missing.append(tp)
                    continue
                if "Operation not permitted" in str(exc) or "Permission denied" in str(exc):
                    raise Skip(f"the kernel refused to attach a BPF program to {tp}: {exc}") from None
                raise RuntimeError(f"attaching to {tp} failed: {exc}") from None
            self.attached.append(tp)
        self.ids = fd_ids()
        self.ctx.note(attached=list(self.attached), not_attached=list(self.missing), **self.ids,
                      **({"raw_tracepoints": sorted(self.raw & set(self.attached))} if self.raw else {}))
        if marker:
            self.ctx.write_json("attached.json", {"attached": self.attached, "not_attached": self.missing,
                                                  "pid": os.getpid(), "time_utc": iso(utcnow()), **self.ids})
        return self.attached

    def run_window(self) -> dict[str, Any]:
        """Attach, wait out the capture's probe window, detach; returns the window (see ``window``)."""
        seconds = window_seconds(self.ctx)
        self.attach()
        win = window(self.ctx, seconds)
        self.detach()
        return win

    def detach(self) -> None:
        """Stop the probes (maps stay readable until ``close``)."""
        if self.bpf is None:
            return
        for tp in reversed(self.attached):
            try:
                if tp in self.raw:
                    self.bpf.detach_raw_tracepoint(tp.partition(":")[2])
                else:
                    self.bpf.detach_tracepoint(tp)
            except Exception:  # noqa: BLE001 - cleanup() below closes the descriptors anyway
                pass
        self.attached_at_end = list(self.attached)
        self.attached = []

    def close(self) -> None:
        if self.bpf is not None:
            try:
                self.detach()
            finally:
                try:
                    self.bpf.cleanup()
                finally:
                    self.bpf = None

    def __exit__(self, *exc) -> None:
        self.close()

    def __getitem__(self, name: str):
        assert self.bpf is not None
        return self.bpf[name]

    def map_full(self, name: str) -> bool:
        t = self[name]
        try:
            return len(t) >= t.max_entries
        except Exception:  # noqa: BLE001
            return False

