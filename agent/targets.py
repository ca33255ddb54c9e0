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

from agent import procfs
from agent.collector import TargetGone, read_text
from agent.redact import Redactor


class TargetError(ValueError):
    """A target given on the command line could not be resolved (clear message)."""


RUNTIMES = ("jvm", "python", "node", "go", "native")
PY_EXE = re.compile(r"^python(\d(\.\d+)?)?[a-z]*(-dbg)?$")
NODE_EXE = re.compile(r"^(node|nodejs)(\d+)?$")


def detect_runtime(pid: int, exe: str = "", maps: str | None = None) -> str:
    """jvm | python | node | go | native (see ``runtime_evidence`` for the why)."""
    return runtime_evidence(pid, exe, maps)[0]


def runtime_evidence(pid: int, exe: str = "", maps: str | None = None,
                     environ: dict[str, str] | None = None) -> tuple[str, str]:
    """The runtime and the evidence for it, from the mapped libraries, the executable and the environment.

    In order: ``libjvm.so`` mapped (HotSpot; also java launched under another name), an
    executable named like CPython or ``libpython`` mapped (uwsgi, embedded interpreters),
    an executable named ``node`` or ``libnode.so`` mapped, an ELF with Go's build-info
    sections; then the executable's dynamic symbols (``_PyRuntime`` for a renamed CPython,
    ``napi_module_register`` for a renamed Node); the environment last, for interpreters
    whose executable cannot be read (``GOMAXPROCS``/``GODEBUG``/``GOTRACEBACK`` set).
    """
    base = os.path.basename(exe.removesuffix(" (deleted)"))
    if maps is None:
        maps = read_text(f"/proc/{pid}/maps", "") or ""
    if "/libjvm.so" in maps:
        return "jvm", "libjvm.so mapped"
    if PY_EXE.match(base):
        return "python", f"executable {base}"
    m = re.search(r"/(libpython\d[\w.]*\.so)", maps)
    if m:
        return "python", f"{m.group(1)} mapped"
    if NODE_EXE.match(base):
        return "node", f"executable {base}"
    if "/libnode.so" in maps:
        return "node", "libnode.so mapped"
    elf = elf_facts(f"/proc/{pid}/exe")
    if elf.get("go"):
        return "go", f"ELF section {elf['go']}"
    if elf.get("python"):
        return "python", "executable exports _PyRuntime"
    if elf.get("node"):
        return "node", "executable exports napi_module_register"
    if environ is None:
        environ = read_environ(pid)
    if not elf.get("readable") and any(k in environ for k in ("GOMAXPROCS", "GODEBUG", "GOTRACEBACK")):
        return "go", "environment GOMAXPROCS/GODEBUG/GOTRACEBACK (executable unreadable)"
    return "native", "no runtime recognised"


def read_environ(pid: int) -> dict[str, str]:
    raw = read_text(f"/proc/{pid}/environ", "") or ""
    out = {}
    for item in raw.split("\0"):
        k, sep, v = item.partition("=")
        if sep:
            out[k] = v
    return out


def elf_facts(path: str, max_bytes: int = 64 * 2**20) -> dict[str, Any]:
    """Go build-info sections and a few telling dynamic symbols of an ELF file, from its headers."""
    import struct
    out: dict[str, Any] = {"readable": False}
    try:
        fh = open(path, "rb")
    except OSError:
        return out
    with fh:
        head = fh.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF":
            return out
        out["readable"] = True
        is64, e = head[4] == 2, "<" if head[5] == 1 else ">"
        try:
            if is64:
                shoff, = struct.unpack(e + "Q", head[40:48])
                shentsize, shnum, shstrndx = struct.unpack(e + "HHH", head[58:64])
            else:
                shoff, = struct.unpack(e + "I", head[32:36])
                shentsize, shnum, shstrndx = struct.unpack(e + "HHH", head[46:52])
            if not shoff or not shnum or shnum > 4096:
                return out
            fh.seek(shoff)
            table = fh.read(shentsize * shnum)
            secs = []
            for i in range(shnum):
                ent = table[i * shentsize:(i + 1) * shentsize]
                if is64:
                    name, typ, _fl, _addr, off, size = struct.unpack(e + "IIQQQQ", ent[:40])
                else:
                    name, typ, _fl, _addr, off, size = struct.unpack(e + "IIIIII", ent[:24])
                secs.append((name, typ, off, size))
            _n, _t, stroff, strsize = secs[shstrndx]
            fh.seek(stroff)
            names = fh.read(min(strsize, 2**20))

            def sec_name(n: int) -> str:
                return names[n:names.index(b"\0", n)].decode("ascii", "replace") if n < len(names) else ""
            by_name = {sec_name(n): (off, size) for n, _t, off, size in secs}
        except (struct.error, ValueError, IndexError, OSError):
            return out
        for go in (".go.buildinfo", ".note.go.buildid", ".gopclntab"):
            if go in by_name:
                out["go"] = go
                break
        if ".dynstr" in by_name:
            off, size = by_name[".dynstr"]
            fh.seek(off)
            dynstr = fh.read(min(size, max_bytes))
            out["python"] = b"\0_PyRuntime\0" in dynstr
            out["node"] = b"\0napi_module_register\0" in dynstr
    return out


NS_KINDS = ("pid", "mnt", "net", "user", "uts", "ipc", "cgroup")


def namespaces(pid: int) -> dict[str, dict[str, Any]]:
    """Each namespace of the process and whether it differs from goldenhour's."""
    out: dict[str, dict[str, Any]] = {}
    for ns in NS_KINDS:
        try:
            theirs = os.readlink(f"/proc/{pid}/ns/{ns}")
        except OSError:
            continue
        try:
            ours = os.readlink(f"/proc/self/ns/{ns}")
        except OSError:
            ours = ""
        out[ns] = {"id": theirs, "shared_with_agent": theirs == ours}
    return out


_CONTAINER_PATTERNS = (
    ("kubernetes", re.compile(r"kubepods.*?(?:cri-containerd-|crio-|docker-|/)([0-9a-f]{64})")),
    ("docker", re.compile(r"(?:/docker/|docker-)([0-9a-f]{64})")),
    ("podman", re.compile(r"libpod-(?:conmon-)?([0-9a-f]{64})")),
    ("containerd", re.compile(r"cri-containerd-([0-9a-f]{64})")),
    ("lxc", re.compile(r"/lxc(?:\.payload)?[./]([^/]+)")),
    ("systemd-nspawn", re.compile(r"machine\.slice/(?:systemd-nspawn@|machine-)([^/]+?)(?:\.service|\.scope)")),
)


def cgroup_path(pid: int) -> str:
    text = read_text(f"/proc/{pid}/cgroup", "") or ""
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return text.splitlines()[0].split(":", 2)[-1] if text.strip() else ""


def container_info(pid: int, nspid: list[int], ns: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Is the process containerised, by which engine (from its cgroup), and how goldenhour reaches it."""
    ns = ns if ns is not None else namespaces(pid)
    cg = cgroup_path(pid)
    own = [k for k, v in ns.items() if not v["shared_with_agent"]]
    info: dict[str, Any] = {"in_container": len(nspid) > 1 or "mnt" in own, "own_namespaces": own,
                            "cgroup": cg}
    for kind, rx in _CONTAINER_PATTERNS:
        m = rx.search(cg)
        if m:
            info["engine"], info["id"] = kind, m.group(1)
            break
    unit = re.findall(r"([^/]+\.(?:service|scope))(?=/|$)", cg)
    if unit:
        info["unit"] = unit[-1]
    if len(nspid) > 1:
        info["pid_in_namespace"] = nspid[-1]
    if own:
        info["how"] = ("handled from the host: host PID for ptrace tools (py-spy, gdb, eu-stack) and signals; "
                       "files through /proc/PID/root; the Node inspector reached by entering the target's network "
                       "namespace (setns); jcmd through /proc/PID/root/tmp, or inside the target's mount namespace "
                       "(nsenter -m) when only that differs")
    return info


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
    runtime_evidence: str = ""       # why ``runtime`` was chosen
    namespaces: dict[str, Any] = field(default_factory=dict)   # kind -> {id, shared_with_agent}
    container_info: dict[str, Any] = field(default_factory=dict)
    cmdline_redactions: int = 0      # values in ``cmdline`` replaced by agent.redact

    @classmethod
    def from_pid(cls, pid: int, reason: str = "") -> "Target":
        try:
            st = procfs.stat(pid)
        except procfs.ProcessGone:
            raise TargetError(f"no process with PID {pid}") from None
        except procfs.ProcError as exc:
            raise TargetError(f"PID {pid}: {exc}") from None
        try:
            status = procfs.status(pid)
        except procfs.ProcError:
            status = {}
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            exe = ""
        raw = (read_text(f"/proc/{pid}/cmdline", "") or "")
        red = Redactor()
        cmdline = red.argv([a for a in raw.split("\0") if a])   # the manifest lists targets: no secrets
        nspid = [int(x) for x in status.get("NSpid", str(pid)).split()]
        uid = int(status["Uid"].split()[0]) if "Uid" in status else None
        container = len(nspid) > 1 or _other_ns(pid, "mnt")
        runtime, evidence = runtime_evidence(pid, exe)
        ns = namespaces(pid)
        return cls(pid=pid, start_time=st.starttime, comm=st.comm, exe=exe, cmdline=cmdline,
                   runtime=runtime, uid=uid, nspid=nspid, container=container,
                   reason=reason, runtime_evidence=evidence, namespaces=ns,
                   container_info=container_info(pid, nspid, ns), cmdline_redactions=red.count)

    @property
    def key(self) -> str:
        return f"{self.pid}"

    @property
    def ns_pid(self) -> int:
        """The PID as the process sees itself (last NSpid field)."""
        return self.nspid[-1] if self.nspid else self.pid

    @property
    def identity(self) -> procfs.Identity:
        return procfs.Identity(self.pid, self.start_time)

    def alive(self) -> bool:
        """True if the same process (PID and start time) still exists."""
        return self.identity.alive()

    def ensure_alive(self) -> None:
        if not self.alive():
            raise TargetGone(f"process {self.pid} ({self.comm}) exited")

    def state(self) -> str | None:
        try:
            return self.identity.check().state
        except procfs.ProcError:
            return None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _other_ns(pid: int, ns: str) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}")
    except OSError:
        return False


def _stat(pid: int) -> procfs.Stat | None:
    try:
        return procfs.stat(pid)
    except procfs.ProcError:
        return None   # exited meanwhile


def _own_pids() -> set[int]:
    """goldenhour itself and its ancestors: never chosen as targets automatically."""
    own, pid = set(), os.getpid()
    while pid > 1:
        own.add(pid)
        st = _stat(pid)
        if st is None:
            break
        pid = st.ppid
    return own


def check_selectors(processes: Iterable[str] = (), units: Iterable[str] = ()) -> None:
    """Raise TargetError for a --process regex that does not compile or a --unit name that is not one
    (the CLI checks before it captures anything; ``resolve`` records them as problems)."""
    for unit in units:
        if not UNIT_RE.fullmatch(unit):
            raise TargetError(f"invalid unit name {unit!r}")
    for pattern in processes:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise TargetError(f"invalid --process regex {pattern!r}: {exc}") from None


UNIT_RE = re.compile(r"[A-Za-z0-9:_.@\\-]+")


def unit_pids(unit: str) -> list[int]:
    """PIDs in a systemd unit's cgroup (cgroup v2 path …/<unit>/cgroup.procs), found via /proc."""
    if not UNIT_RE.fullmatch(unit):
        raise TargetError(f"invalid unit name {unit!r}")
    if "." not in unit:
        unit += ".service"
    pids = []
    own = _own_pids()   # the pre-restart hook runs inside the unit's cgroup (ExecStop=): never target ourselves
    for pid in procfs.pids():
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
    for pid in procfs.pids():
        if pid in own:
            continue
        st = _stat(pid)
        if st is None or st.ppid == 2 or pid == 2:   # kernel threads
            continue
        cmd = (read_text(f"/proc/{pid}/cmdline", "") or "").replace("\0", " ").strip()
        if rx.search(st.comm) or (cmd and rx.search(cmd)):
            hits.append(pid)
    return sorted(hits)


def top_pids(limit: int) -> list[int]:
    """The busiest user processes by CPU time and RSS (half each), excluding goldenhour."""
    own = _own_pids()
    rows = []
    for pid in procfs.pids():
        if pid in own:
            continue
        st = _stat(pid)
        if st is None or st.ppid == 2 or pid == 2 or st.rss_pages == 0:
            continue
        rows.append((pid, st.utime + st.stime, st.rss_pages))
    by_cpu = [r[0] for r in sorted(rows, key=lambda r: -r[1])]
    by_rss = [r[0] for r in sorted(rows, key=lambda r: -r[2])]
    chosen: list[int] = []
    for a, b in zip(by_cpu, by_rss, strict=True):
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
    for kind, values, find, none in (("--process", processes, process_pids, "no matching process"),
                                     ("--unit", units, unit_pids, "no process in the unit's cgroup (is the unit "
                                                                  "running? is its name right?)")):
        for value in values:
            try:
                found = find(value)
            except TargetError as exc:
                problems.append({"target": f"{kind} {value}", "error": str(exc)})
                continue
            if not found:
                problems.append({"target": f"{kind} {value}", "error": none})
            for pid in found:
                add(pid, f"{kind} {value}")
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
