"""The collector interface: what a module in ``collectors/`` exports and what it is given.

Where it sits: ``registry`` discovers ``Collector`` values, ``plan`` selects them,
``runner`` runs each one in its own child process and hands it a ``Context``.
A collector writes files into ``ctx.out`` and nothing else; it never bundles,
uploads, or knows about webhooks.

Outcomes are signalled by returning (ok), calling ``ctx.partial(reason)``,
raising ``Skip`` (a requirement found unmet at run time), ``TargetGone`` (the
target process exited), or any other exception (failed, traceback kept).
``ReserveReached``, raised by the ``Context`` writers at the store's free-space
reserve (agent/reserve.py), ends the collector as partial with what it wrote.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from agent import procfs
from agent import reserve as reserve_mod
# Option is part of this interface; it is defined where options are read without importing a collector.
from agent.options import Option as Option
# ReserveReached (a write would cross the store's free-space reserve) is part of this interface too.
from agent.reserve import ReserveReached as ReserveReached
# TargetGone is part of this interface; it is defined with the /proc reader, whose ProcessGone is one.
from agent.procfs import TargetGone as TargetGone

if TYPE_CHECKING:  # pragma: no cover
    from agent.targets import Target

# Statuses recorded for every run of a collector (per target for process scope).
OK, PARTIAL, FAILED, TIMEOUT, SKIPPED, TARGET_EXITED, INTERRUPTED = (
    "ok", "partial", "failed", "timeout", "skipped", "target_exited", "interrupted")
STATUSES = (OK, PARTIAL, FAILED, TIMEOUT, SKIPPED, TARGET_EXITED, INTERRUPTED)
PROFILES = ("quick", "standard", "full")
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Scope(str, Enum):
    HOST = "host"          # once per capture
    PROCESS = "process"    # once per target process


class Skip(Exception):
    """Raised by a collector when it cannot run here; the message is the reason."""


def which(name: str) -> str | None:
    """Like shutil.which, but also looks in the sbin folders a root tool lives in."""
    path = os.environ.get("PATH", "")
    return shutil.which(name, path=f"{path}:{SBIN_PATH}" if path else SBIN_PATH)


def tracefs_mounted() -> bool:
    return any(os.path.isdir(f"{b}/events") for b in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"))


_TRACEPOINTS: frozenset[str] | None = None


def kernel_tracepoints() -> frozenset[str]:
    """Names of the kernel's tracepoints from /proc/kallsyms (``__traceiter_<name>``), for hosts
    where tracefs is not mounted (no systemd to mount it); event names only, without category."""
    global _TRACEPOINTS
    if _TRACEPOINTS is None:
        names = set()
        try:
            with open("/proc/kallsyms", "rb") as fh:
                for line in fh:
                    parts = line.split() if b"__trace" in line else ()
                    sym = parts[2] if len(parts) > 2 else b""   # "addr type name [module]"
                    for prefix in (b"__traceiter_", b"__tracepoint_"):
                        if sym.startswith(prefix):
                            names.add(sym[len(prefix):].decode("ascii", "replace"))
        except OSError:
            pass
        _TRACEPOINTS = frozenset(names)
    return _TRACEPOINTS


@dataclass(frozen=True)
class Requirement:
    """Something a collector needs on the host; ``unmet()`` says why not, in words."""

    kind: str   # executable | path | root | python_module | tracepoint | kernel_headers
    value: str = ""
    why: str = ""

    def unmet(self) -> str | None:
        k, v = self.kind, self.value
        why = f" ({self.why})" if self.why else ""
        if k == "executable":
            return None if which(v) else f"{v} not found on PATH{why}"
        if k == "path":
            if not os.path.exists(v):
                return f"{v} does not exist{why}"
            return None if os.access(v, os.R_OK) else f"{v} is not readable{why}"
        if k == "root":
            return None if os.geteuid() == 0 else f"needs root{why}"
        if k == "python_module":
            try:
                found = importlib.util.find_spec(v) is not None
            except (ImportError, ValueError):
                found = False
            return None if found else f"Python module {v} is not importable{why}"
        if k == "tracepoint":
            cat, _, name = v.partition(":")
            for base in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
                if os.path.isdir(f"{base}/events/{cat}/{name}"):
                    return None
            if not tracefs_mounted() and name in kernel_tracepoints():
                return None   # tracefs is not mounted here; the kernel's symbols show the tracepoint
            return f"tracepoint {v} not available in this kernel{why}"
        if k == "kernel_headers":
            rel = os.uname().release
            return None if os.path.isdir(f"/lib/modules/{rel}/build") else (
                f"no kernel headers at /lib/modules/{rel}/build (run `make kernel-headers`){why}")
        raise ValueError(f"unknown requirement kind {k!r}")


@dataclass(frozen=True, kw_only=True)
class Collector:
    """One unit of evidence. The module name, bundle folder and config key are ``name``."""

    name: str
    summary: str
    scope: Scope
    collect: Callable[["Context"], None]
    requires: tuple[Requirement, ...] = ()
    profiles: frozenset[str] = frozenset(PROFILES)   # which profiles run it
    runtimes: frozenset[str] = frozenset()           # process scope: e.g. {"python"}; empty = any
    timeout_s: float = 10.0
    pauses_target: bool = False       # ptrace/safepoint style: serialised per target, resume verified
    side_effects: tuple[str, ...] = ()
    volatility: int = 50              # lower = more volatile = started earlier (RFC 3227 order)
    check: Callable[[], str | None] | None = None    # extra availability check: None or a reason
    # [collectors.<name>] keys beside enabled/timeout_s: name -> Option(default, type, doc); a literal
    # (agent/options.py reads it from the source, so loading a config never imports a collector)
    options: dict[str, Option] = field(default_factory=dict, hash=False, compare=False)

    def unavailable(self) -> str | None:
        """Why this collector cannot run on this host, or None."""
        for req in self.requires:
            reason = req.unmet()
            if reason:
                return reason
        if self.check is not None:
            try:
                return self.check()
            except Exception as exc:  # noqa: BLE001 - a broken check must not break planning
                return f"availability check failed: {exc}"
        return None


@dataclass
class HelperResult:
    """What ``Context.run`` did: recorded in the manifest as one command."""

    argv: list[str]
    returncode: int | None
    duration_s: float
    killed: bool = False
    truncated: bool = False
    stdout: str | None = None      # file name relative to the collector's folder
    stderr: str | None = None
    error: str | None = None       # e.g. executable not found

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.killed and self.error is None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class Limits:
    max_file_bytes: int = 256 * 2**20


class Context:
    """What a running collector is given. Lives in the collector's child process.

    Every fact for the manifest (commands, notes, the partial flag) is appended to
    ``journal`` as one JSON line at once, so the runner still has it if the child is
    killed at its deadline.
    """

    def __init__(self, *, name: str, out: Path, journal: Path, deadline: float,
                 target: "Target | None" = None, options: dict[str, Any] | None = None,
                 capture: dict[str, Any] | None = None, limits: Limits | None = None,
                 log: logging.Logger | None = None, proc: Path = Path("/proc")):
        self.name = name
        self.out = out
        self.journal = journal
        self.deadline = deadline
        self.target = target
        self.options = options or {}       # config [collectors.<name>]
        self.capture = capture or {}       # capture-wide settings: incident, targets, probe window...
        self.limits = limits or Limits()
        self.log = log or logging.getLogger(f"goldenhour.collector.{name}")
        self.proc = proc
        out.mkdir(parents=True, exist_ok=True)

    # -- bookkeeping -----------------------------------------------------
    def _record(self, kind: str, **data: Any) -> None:
        with open(self.journal, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"kind": kind, **data}, default=str) + "\n")

    def note(self, **facts: Any) -> None:
        """Add facts to this collector's manifest entry (tool versions, method used...)."""
        self._record("note", facts=facts)

    def partial(self, reason: str) -> None:
        """Mark the result partial (some evidence missing) without failing."""
        self.log.warning("partial: %s", reason)
        self._record("partial", reason=reason)

    def below_reserve(self, extra: int = 0) -> bool:
        """True when writing ``extra`` more bytes would cross the store's free-space reserve (agent/reserve.py)."""
        reserve = int(self.capture.get("reserve_bytes") or 0)
        return bool(reserve) and reserve_mod.room(self.out, reserve) < extra

    @property
    def budget(self) -> reserve_mod.Budget | None:
        """The capture's shared space budget (agent/reserve.py), None outside a capture with a reserve."""
        path = self.capture.get("space_budget")
        return reserve_mod.Budget(path) if path else None

    def claim(self, n: int) -> bool:
        """Before writing ``n`` bytes of evidence by any means: True when they fit above the store's reserve
        (claimed from the capture's shared budget, and there on disk); False: leave them out."""
        budget = self.budget
        if budget is not None and not budget.claim(n):
            return False
        if self.below_reserve(n):
            if budget is not None:
                budget.release(n)
            return False
        return True

    def release(self, n: int) -> None:
        """Give back ``n`` claimed bytes that were not written."""
        budget = self.budget
        if budget is not None:
            budget.release(n)

    def _check_room(self, name: str, size: int) -> None:
        if not self.claim(size):
            raise ReserveReached(f"{name} ({size} bytes) not written: the store reached its free-space reserve")

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def path(self, name: str) -> Path:
        """A path inside ``out`` for ``name`` (subfolders created); refuses escapes."""
        p = (self.out / name).resolve()
        if not str(p).startswith(str(self.out.resolve()) + os.sep):
            raise ValueError(f"output name escapes the collector folder: {name!r}")
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    # -- writing evidence --------------------------------------------------
    def write_text(self, name: str, text: str) -> Path:
        return self.write_bytes(name, text.encode("utf-8", "surrogateescape"))

    def write_bytes(self, name: str, data: bytes) -> Path:
        """Write one evidence file (its tail kept past ``max_file_bytes``); raises ReserveReached rather than
        cross the store's free-space reserve (the runner records the collector as partial, with the reason)."""
        p = self.path(name)
        if len(data) > self.limits.max_file_bytes:
            data = data[-self.limits.max_file_bytes:]
            self._record("truncated", file=name, kept_bytes=len(data))
        self._check_room(name, len(data))
        try:
            p.write_bytes(data)
        except OSError as exc:
            if reserve_mod.is_full(exc):
                p.unlink(missing_ok=True)
                raise ReserveReached(f"{name} not written: no space left on the store ({exc.strerror})") from None
            raise
        return p

    def open_out(self, name: str, mode: str = "wb", **kw: Any) -> reserve_mod.GuardedFile:
        """Open an evidence file to stream into (``with ctx.open_out("x.jsonl", "w") as fh``): its writes raise
        ReserveReached at the store's free-space reserve."""
        return reserve_mod.GuardedFile(open(self.path(name), mode, **kw), name, self.claim, self.release)

    def write_json(self, name: str, obj: Any) -> Path:
        return self.write_text(name, json.dumps(obj, indent=1, sort_keys=False, default=str) + "\n")

    def copy(self, src: str | os.PathLike[str], name: str | None = None, *,
             tail_bytes: int | None = None, missing_ok: bool = True) -> Path | None:
        """Copy a file (a /proc or /sys file too: size 0 but readable) into the bundle.

        Keeps the last ``tail_bytes`` (default: the per-file cap) of a larger file.
        A missing or unreadable file is noted (``missing_ok``) rather than raised, with its
        cause (``denied``, ``gone`` or ``other``: see ``agent.procfs``).
        """
        src = Path(src)
        name = name or src.name
        cap = min(tail_bytes or self.limits.max_file_bytes, self.limits.max_file_bytes)
        try:
            with open(src, "rb") as fh:
                try:
                    size = os.fstat(fh.fileno()).st_size
                except OSError:
                    size = 0
                if size > cap:
                    fh.seek(size - cap)
                    self._record("truncated", file=name, source=str(src), size=size, kept_bytes=cap)
                data = fh.read(cap + 1)
                if len(data) > cap:   # a pseudo-file larger than the cap: keep its head
                    data = data[:cap]
                    self._record("truncated", file=name, source=str(src), kept_bytes=cap)
        except OSError as exc:
            if not missing_ok:
                raise
            self._record("unreadable", source=str(src), error=f"{type(exc).__name__}: {exc.strerror or exc}",
                         cause=procfs.cause_of(exc))     # denied | gone | other
            return None
        if not self.claim(len(data)):
            self.partial(f"{src} left out: the store reached its free-space reserve")
            return None
        p = self.path(name)
        try:
            p.write_bytes(data)
        except OSError as exc:
            if not reserve_mod.is_full(exc):
                raise
            p.unlink(missing_ok=True)
            self.release(len(data))
            self.partial(f"{src} left out: no space left on the store ({exc.strerror})")
            return None
        return p

    # -- helpers -----------------------------------------------------------
    def run(self, argv: Sequence[str], *, stdout: str | None = None, stderr: str | None = None,
            timeout_s: float | None = None, max_bytes: int | None = None,
            env: dict[str, str] | None = None, stdin: bytes | None = None,
            cwd: str | None = None, space: int | None = None) -> HelperResult:
        """Run a helper program: argv only (no shell), own process group, bounded time and output.

        stdout/stderr go straight to files in ``out`` (``stderr`` defaults to
        ``<stdout>.stderr``). The helper is killed (only it and its children) at
        ``timeout_s`` or the collector's deadline, whichever is sooner, and when its
        output passes ``max_bytes`` (the file is then cut to the cap). In a capture with a
        reserve, the helper may write ``space`` bytes (default: half of what the capture's
        budget has left, at most the per-file cap), claimed before it starts and enforced as
        its RLIMIT_FSIZE; what it did not write is given back when it ends.
        """
        argv = [str(a) for a in argv]
        exe = which(argv[0]) if "/" not in argv[0] else argv[0]
        budget = self.remaining() if timeout_s is None else min(timeout_s, self.remaining())
        cap = min(max_bytes or self.limits.max_file_bytes, self.limits.max_file_bytes)
        if stderr is None and stdout is not None:
            stderr = f"{stdout}.stderr"
        res = HelperResult(argv=argv, returncode=None, duration_s=0.0, stdout=stdout, stderr=stderr)
        if exe is None:
            res.error = f"{argv[0]} not found"
            self._record("command", **res.to_json())
            return res
        out_f = open(self.path(stdout), "wb") if stdout else subprocess.DEVNULL
        err_f = open(self.path(stderr), "wb") if stderr else subprocess.DEVNULL
        run_env = dict(os.environ if env is None else env)
        run_env.setdefault("PATH", SBIN_PATH)
        reserve = int(self.capture.get("reserve_bytes") or 0)
        allowance = None
        before = _tree_bytes(self.out) if reserve else 0
        if reserve:
            space_budget = self.budget
            left = min(space_budget.remaining() if space_budget is not None else 1 << 62,
                       reserve_mod.room(self.out, reserve))
            allowance = max(0, min(space if space is not None else left // 2, cap, left))
            if not self.claim(allowance):
                allowance = 0

        def setup() -> None:
            die_with_parent()
            if allowance is not None:    # no file the helper writes may cross the reserve
                reserve_mod.limit_file_size(allowance)
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(
                [exe, *argv[1:]], stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=out_f, stderr=err_f, env=run_env, cwd=cwd, process_group=0, close_fds=True,
                preexec_fn=setup)
        except OSError as exc:
            res.error = f"{type(exc).__name__}: {exc}"
            self._record("command", **res.to_json())
            return res
        finally:
            for f in (out_f, err_f):
                if f is not subprocess.DEVNULL:
                    f.close()
        self._record("helper_started", pid=proc.pid, pgid=proc.pid, argv=argv)
        if stdin is not None:
            try:
                proc.stdin.write(stdin)  # type: ignore[union-attr]
                proc.stdin.close()       # type: ignore[union-attr]
            except BrokenPipeError:
                pass
        out_path = self.path(stdout) if stdout else None
        while True:
            try:
                proc.wait(timeout=0.05)
                break
            except subprocess.TimeoutExpired:
                pass
            elapsed = time.monotonic() - t0
            if out_path is not None and out_path.stat().st_size > cap:
                res.truncated = True
                kill_group(proc)
                break
            if self.below_reserve():
                res.killed = True
                res.error = "stopped: the store reached its free-space reserve"
                self.partial(res.error)
                kill_group(proc)
                break
            if elapsed > budget:
                res.killed = True
                kill_group(proc)
                break
        res.returncode = proc.returncode
        res.duration_s = round(time.monotonic() - t0, 4)
        if out_path is not None and out_path.stat().st_size > cap:
            res.truncated = True
            with open(out_path, "r+b") as fh:
                fh.truncate(cap)
        if stderr is not None:
            err_path = self.path(stderr)
            if err_path.exists() and err_path.stat().st_size == 0:
                err_path.unlink()
                res.stderr = None
        if allowance is not None:
            # a helper stopped by its file size limit may exit 0 all the same (ss does): an output that reached
            # the limit is cut, and said so, never taken for whole
            cut = [f for f in (res.stdout, res.stderr) if f and (self.out / f).exists()
                   and (self.out / f).stat().st_size >= allowance]
            if cut:
                res.truncated = True
                self.partial(f"{', '.join(cut)} cut at {allowance} bytes: the store reached its free-space reserve")
            # what the helper did not write goes back to the budget (what it wrote past it, stdout and stderr
            # both, is taken)
            used = max(0, _tree_bytes(self.out) - before)
            if used <= allowance:
                self.release(allowance - used)
            elif self.budget is not None:
                self.budget.take(used - allowance)
        self._record("command", **res.to_json())
        return res


def _tree_bytes(root: Path) -> int:
    """Bytes of the files under ``root`` (a collector's folder: what its helpers wrote)."""
    total = 0
    for dirpath, _, names in os.walk(root):
        for n in names:
            try:
                total += os.lstat(os.path.join(dirpath, n)).st_size
            except OSError:
                pass
    return total


_libc = None


def die_with_parent() -> None:
    """PR_SET_PDEATHSIG(SIGKILL): if our parent (goldenhour or a collector) dies, so do we.

    A collector child and its helpers must never outlive the run that bounds their time.
    """
    global _libc
    try:
        if _libc is None:
            import ctypes
            _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl(1, signal.SIGKILL, 0, 0, 0)   # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def kill_group(proc: subprocess.Popen, grace_s: float = 0.5) -> None:
    """SIGTERM then SIGKILL a helper's own process group (never anything else)."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait)
            # the group leader is gone; its children may linger in the group
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return
        except subprocess.TimeoutExpired:
            continue


def read_text(path: str | os.PathLike[str], default: str | None = None) -> str | None:
    """Read a small text file (a /proc or /sys file); ``default`` when it cannot be read.

    For reads whose failure the evidence must explain (denied, or the process gone), use
    ``agent.procfs``, whose errors keep their cause.
    """
    try:
        with open(path, "rb") as fh:
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return default


def first_unmet(reqs: Iterable[Requirement]) -> str | None:
    for r in reqs:
        why = r.unmet()
        if why:
            return why
    return None
