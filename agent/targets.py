"""Target processes: identity, resolution and runtime detection.

Where it sits: ``plan`` asks ``resolve()`` for the processes a capture concerns;
process-scope collectors get one ``Target`` each. A target is identified by
(PID, start time), so a PID reused by another program is never touched by
mistake: ``Target.alive()`` re-checks the identity before every intrusive step.
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from agent.collector import TargetGone, read_text


class TargetError(ValueError):
    """A target given on the command line could not be resolved (clear message)."""


def parse_stat(text: str) -> dict[str, Any]:
    """Parse /proc/PID/stat; comm may hold spaces and parentheses, so split at the last ')'."""
    lpar, rpar = text.index("("), text.rindex(")")
    rest = text[rpar + 2:].split()
    return {
        "pid": int(text[:lpar]),
        "comm": text[lpar + 1:rpar],
        "state": rest[0],
        "ppid": int(rest[1]),
        "pgrp": int(rest[2]),
        "session": int(rest[3]),
        "utime": int(rest[11]),
        "stime": int(rest[12]),
        "num_threads": int(rest[17]),
        "starttime": int(rest[19]),
        "vsize": int(rest[20]),
        "rss_pages": int(rest[21]),
    }


def proc_stat(pid: int) -> dict[str, Any] | None:
    text = read_text(f"/proc/{pid}/stat")
    if not text:
        return None
    try:
        return parse_stat(text)
    except (ValueError, IndexError):
        return None


def parse_status(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        k, sep, v = line.partition(":")
        if sep:
            out[k.strip()] = v.strip()
    return out


def detect_runtime(pid: int, exe: str = "", maps: str | None = None) -> str:
    """jvm | python | node | go | native, from the executable, its maps and (Go) ELF notes."""
    base = os.path.basename(exe)
    if maps is None:
        maps = read_text(f"/proc/{pid}/maps", "") or ""
    if "libjvm.so" in maps:
        return "jvm"
    if re.match(r"^python(\d(\.\d+)?)?[a-z]*$", base) or re.search(r"/libpython\d", maps):
        return "python"
    if base in ("node", "nodejs") or "libnode.so" in maps:
        return "node"
    if _is_go_binary(pid):
        return "go"
    return "native"


def _is_go_binary(pid: int) -> bool:
    """Go binaries carry a .note.go.buildid / .go.buildinfo section; look for its magic."""
    try:
        with open(f"/proc/{pid}/exe", "rb") as fh:
            head = fh.read(4 * 2**20)
    except OSError:
        return False
    return b"\xff Go buildinf:" in head or b"Go build ID:" in head


@dataclass
class Target:
    pid: int
    start_time: int                  # clock ticks since boot (/proc/PID/stat field 22)
    comm: str = ""
    exe: str = ""
    cmdline: list[str] = field(default_factory=list)
    runtime: str = "native"
    uid: int | None = None
    nspid: list[int] = field(default_factory=list)   # the PID in each nested PID namespace
    container: bool = False          # in another PID or mount namespace than ours
    reason: str = ""                 # why it was chosen (--pid, --unit x, top-cpu...)

    @classmethod
    def from_pid(cls, pid: int, reason: str = "") -> "Target":
        st = proc_stat(pid)
        if st is None:
            raise TargetError(f"no process with PID {pid}")
        status = parse_status(read_text(f"/proc/{pid}/status", "") or "")
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            exe = ""
        raw = (read_text(f"/proc/{pid}/cmdline", "") or "")
        cmdline = [a for a in raw.split("\0") if a]
        nspid = [int(x) for x in status.get("NSpid", str(pid)).split()]
        uid = int(status["Uid"].split()[0]) if "Uid" in status else None
        container = len(nspid) > 1 or _other_ns(pid, "mnt")
        return cls(pid=pid, start_time=st["starttime"], comm=st["comm"], exe=exe, cmdline=cmdline,
                   runtime=detect_runtime(pid, exe), uid=uid, nspid=nspid, container=container,
                   reason=reason)

    @property
    def key(self) -> str:
        return f"{self.pid}"

    def alive(self) -> bool:
        """True if the same process (PID and start time) still exists."""
        st = proc_stat(self.pid)
        return st is not None and st["starttime"] == self.start_time

    def ensure_alive(self) -> None:
        if not self.alive():
            raise TargetGone(f"process {self.pid} ({self.comm}) exited")

    def state(self) -> str | None:
        st = proc_stat(self.pid)
        return st["state"] if st and st["starttime"] == self.start_time else None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _other_ns(pid: int, ns: str) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}")
    except OSError:
        return False


def _all_pids() -> Iterable[int]:
    for name in os.listdir("/proc"):
        if name.isdigit():
            yield int(name)


def _own_pids() -> set[int]:
    """goldenhour itself and its ancestors: never chosen as targets automatically."""
    own, pid = set(), os.getpid()
    while pid > 1:
        own.add(pid)
        st = proc_stat(pid)
        if st is None:
            break
        pid = st["ppid"]
    return own


def unit_pids(unit: str) -> list[int]:
    """PIDs in a systemd unit's cgroup (cgroup v2 path …/<unit>/cgroup.procs), found via /proc."""
    if not re.fullmatch(r"[A-Za-z0-9:_.@\\-]+", unit):
        raise TargetError(f"invalid unit name {unit!r}")
    if "." not in unit:
        unit += ".service"
    pids = []
    own = _own_pids()   # the pre-restart hook runs inside the unit's cgroup (ExecStop=): never target ourselves
    for pid in _all_pids():
        if pid in own:
            continue
        cg = read_text(f"/proc/{pid}/cgroup", "") or ""
        for line in cg.splitlines():
            path = line.split(":", 2)[-1]
            if f"/{unit}/" in path + "/" or path.endswith(f"/{unit}"):
                pids.append(pid)
                break
    return sorted(pids)


def process_pids(pattern: str) -> list[int]:
    """PIDs whose comm or command line matches the regular expression ``pattern``."""
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise TargetError(f"invalid --process regex {pattern!r}: {exc}") from None
    own = _own_pids()
    hits = []
    for pid in _all_pids():
        if pid in own:
            continue
        st = proc_stat(pid)
        if st is None or st["ppid"] == 2 or pid == 2:   # kernel threads
            continue
        cmd = (read_text(f"/proc/{pid}/cmdline", "") or "").replace("\0", " ").strip()
        if rx.search(st["comm"]) or (cmd and rx.search(cmd)):
            hits.append(pid)
    return sorted(hits)


def top_pids(limit: int) -> list[int]:
    """The busiest user processes by CPU time and RSS (half each), excluding goldenhour."""
    own = _own_pids()
    rows = []
    for pid in _all_pids():
        if pid in own:
            continue
        st = proc_stat(pid)
        if st is None or st["ppid"] == 2 or pid == 2 or st["rss_pages"] == 0:
            continue
        rows.append((pid, st["utime"] + st["stime"], st["rss_pages"]))
    by_cpu = [r[0] for r in sorted(rows, key=lambda r: -r[1])]
    by_rss = [r[0] for r in sorted(rows, key=lambda r: -r[2])]
    chosen: list[int] = []
    for a, b in zip(by_cpu, by_rss):
        for pid in (a, b):
            if pid not in chosen and len(chosen) < limit:
                chosen.append(pid)
        if len(chosen) >= limit:
            break
    return chosen


def resolve(pids: Iterable[int] = (), processes: Iterable[str] = (), units: Iterable[str] = (),
            config_units: Iterable[str] = (), config_processes: Iterable[str] = (),
            auto_limit: int = 5) -> tuple[list[Target], list[dict[str, Any]]]:
    """Targets for a capture, and a list of problems (recorded, never fatal).

    Explicit --pid/--process/--unit win; with none, the configured services'
    processes; with none configured, the top processes by CPU and RSS.
    """
    chosen: dict[int, Target] = {}
    problems: list[dict[str, Any]] = []

    def add(pid: int, reason: str) -> None:
        if pid in chosen:
            return
        try:
            chosen[pid] = Target.from_pid(pid, reason)
        except TargetError as exc:
            problems.append({"target": reason, "error": str(exc)})

    pids, processes, units = list(pids), list(processes), list(units)
    for pid in pids:
        add(int(pid), f"--pid {pid}")
    for pat in processes:
        found = process_pids(pat)
        if not found:
            problems.append({"target": f"--process {pat}", "error": "no matching process"})
        for pid in found:
            add(pid, f"--process {pat}")
    for unit in units:
        found = unit_pids(unit)
        if not found:
            problems.append({"target": f"--unit {unit}", "error": "no process in the unit's cgroup"})
        for pid in found:
            add(pid, f"--unit {unit}")
    if not (pids or processes or units):
        for unit in config_units:
            for pid in unit_pids(unit):
                add(pid, f"service {unit}")
        for pat in config_processes:
            for pid in process_pids(pat):
                add(pid, f"service process {pat}")
        if not chosen and auto_limit > 0:
            for pid in top_pids(auto_limit):
                add(pid, "top cpu/rss")
    return list(chosen.values()), problems
