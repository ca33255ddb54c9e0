"""Reading /proc: one reader for a process's stat and status and for its identity, with errors
that keep their cause.

Where it sits: a leaf (it imports nothing of goldenhour). Targets, the safety rules, the pause
ledger, the runner and the collectors read ``/proc/PID/...`` through it, so there is one
``stat`` parser (the command name may hold spaces and parentheses: it is cut at the *last*
``)``) and one answer to "is this still the process we meant?".

Errors are exceptions, one class per cause, so evidence can say why a read failed rather
than showing an empty value (``ProcError.cause`` is the word recorded in the manifest):

- ``AccessDenied`` (``denied``): EACCES/EPERM. Another user's ``environ``/``mem``/``io``/
  ``stack`` read without root, or any process whose ``PR_SET_DUMPABLE`` is 0 read by another
  uid (its /proc files then belong to root).
- ``ProcessGone`` (``gone``): the process (or thread) exited: ESRCH, or ENOENT while its
  ``/proc/PID`` (``/proc/PID/task/TID``) directory no longer exists; also a PID that now names
  another process (``Identity.check``). It is a ``TargetGone``, so a collector that lets one
  escape is recorded ``target_exited``.
- ``ReadFailed`` (``other``): anything else: a file this kernel does not have (ENOENT while the
  process is still there), EIO, a line that does not parse.

``cause_of(exc)`` gives the same word for an ``OSError`` raised elsewhere (``Context.copy``).
A process's identity is (PID, start time in clock ticks after boot, ``stat`` field 22): a PID
reused by another program has another start time, so ``Identity`` never mistakes the two.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import re
from typing import Iterator, NamedTuple

PROC = "/proc"
DENIED, GONE, OTHER = "denied", "gone", "other"
_OWNER = re.compile(r"^/proc/(\d+)(?:/task/(\d+))?(?:/|$)")
_CHUNK = 65536


class TargetGone(Exception):
    """The target process exited (or its PID was reused) mid-collection.

    Part of the collector interface (``agent.collector`` re-exports it); defined here so that
    a ``ProcessGone`` from any /proc read is one.
    """


class ProcError(Exception):
    """A /proc read that failed; ``cause`` says why (``denied``, ``gone`` or ``other``)."""

    cause = OTHER

    def __init__(self, path: str, detail: str, err: int | None = None):
        super().__init__(path, detail, err)
        self.path, self.detail, self.errno = str(path), detail, err

    def __str__(self) -> str:
        return f"cannot read {self.path}: {self.detail}"


class AccessDenied(ProcError):
    """Permission denied (EACCES/EPERM): the process exists but this user may not read that file."""

    cause = DENIED

    def __str__(self) -> str:
        return f"permission denied reading {self.path}"


class ProcessGone(ProcError, TargetGone):
    """The process (or thread) the path names exited, or its PID now belongs to another process."""

    cause = GONE

    def __str__(self) -> str:
        return self.detail


class ReadFailed(ProcError):
    """Any other failure: a file this kernel lacks, an I/O error, text that does not parse."""


def _owner(path: str) -> tuple[str, str] | None:
    """(the /proc directory of the process or thread ``path`` is in, "process N" / "thread N of process M")."""
    m = _OWNER.match(path)
    if not m:
        return None
    pid, tid = m.group(1), m.group(2)
    if tid:
        return f"/proc/{pid}/task/{tid}", f"thread {tid} of process {pid}"
    return f"/proc/{pid}", f"process {pid}"


def error_for(exc: OSError, path: str | os.PathLike[str] | None = None) -> ProcError:
    """The ``ProcError`` for an ``OSError`` met reading ``path`` (default: the error's filename)."""
    p = str(path if path is not None else (exc.filename or "?"))
    code = exc.errno
    if code in (errno.EACCES, errno.EPERM):
        return AccessDenied(p, exc.strerror or str(exc), code)
    owner = _owner(p)
    if code == errno.ESRCH or (code == errno.ENOENT and owner is not None and not os.path.lexists(owner[0])):
        who = owner[1] if owner else "the process"
        return ProcessGone(p, f"{who} exited (reading {p})", code)
    return ReadFailed(p, exc.strerror or str(exc), code)


def cause_of(exc: BaseException) -> str:
    """``denied``, ``gone`` or ``other`` for a ``ProcError`` or an ``OSError`` (classified by its filename)."""
    if isinstance(exc, ProcError):
        return exc.cause
    if isinstance(exc, OSError):
        return error_for(exc).cause
    return OTHER


def path(pid: int | str, name: str = "", tid: int | None = None) -> str:
    """``/proc/PID/NAME``, or ``/proc/PID/task/TID/NAME`` for one thread."""
    base = f"{PROC}/{pid}" if tid is None else f"{PROC}/{pid}/task/{tid}"
    return f"{base}/{name}" if name else base


def read_bytes(p: str | os.PathLike[str], limit: int | None = None) -> bytes:
    """The content of a /proc (or /sys) file, at most ``limit`` bytes; raises ``ProcError``."""
    p = os.fspath(p)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise error_for(exc, p) from None
    try:
        parts, got = [], 0
        while limit is None or got < limit:
            chunk = os.read(fd, _CHUNK if limit is None else min(_CHUNK, limit - got))
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)
    except OSError as exc:
        raise error_for(exc, p) from None
    finally:
        os.close(fd)


def read_text(p: str | os.PathLike[str], limit: int | None = None) -> str:
    """``read_bytes`` decoded as UTF-8 (undecodable bytes replaced); raises ``ProcError``."""
    return read_bytes(p, limit).decode("utf-8", "replace")


def listdir(p: str | os.PathLike[str]) -> list[str]:
    """``os.listdir`` of a /proc directory (``fd``, ``task``); raises ``ProcError``."""
    try:
        return os.listdir(p)
    except OSError as exc:
        raise error_for(exc, os.fspath(p)) from None


def readlink(p: str | os.PathLike[str]) -> str:
    """``os.readlink`` of a /proc link (``exe``, ``cwd``, ``fd/N``, ``ns/*``); raises ``ProcError``."""
    try:
        return os.readlink(p)
    except OSError as exc:
        raise error_for(exc, os.fspath(p)) from None


# -- stat -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class Stat:
    """/proc/PID/stat (proc(5)): the fields goldenhour uses by name, the rest by number (``field``)."""

    pid: int
    comm: str            # (2) up to 15 bytes, any of them spaces or parentheses
    state: str           # (3) R S D T t Z X I ...
    ppid: int            # (4)
    pgrp: int            # (5)
    session: int         # (6)
    utime: int           # (14) clock ticks in user mode
    stime: int           # (15) clock ticks in kernel mode
    num_threads: int     # (20)
    starttime: int       # (22) clock ticks after boot: with pid, the process's identity
    vsize: int           # (23) bytes
    rss_pages: int       # (24)
    fields: tuple[str, ...] = dataclasses.field(default=(), repr=False)   # fields 3 onwards as text

    def field(self, n: int) -> str:
        """Field ``n`` as numbered in proc(5) (3 and above), as text."""
        return self.fields[n - 3]


def parse_stat(text: str) -> Stat:
    """One /proc/PID/stat line. The command name may hold spaces and ``)``: it runs from the first
    ``(`` to the *last* ``)``. Raises ValueError for a line that does not parse."""
    try:
        lpar, rpar = text.index("("), text.rindex(")")
        f = text[rpar + 2:].split()
        return Stat(pid=int(text[:lpar]), comm=text[lpar + 1:rpar], state=f[0], ppid=int(f[1]),
                    pgrp=int(f[2]), session=int(f[3]), utime=int(f[11]), stime=int(f[12]),
                    num_threads=int(f[17]), starttime=int(f[19]), vsize=int(f[20]), rss_pages=int(f[21]),
                    fields=tuple(f))
    except (ValueError, IndexError):
        raise ValueError(f"not a /proc/PID/stat line: {text[:80]!r}") from None


def stat(pid: int | str, tid: int | None = None) -> Stat:
    """The process's (or one thread's) stat; raises ``ProcError`` (``ReadFailed`` if it does not parse)."""
    p = path(pid, "stat", tid)
    text = read_text(p)
    try:
        return parse_stat(text)
    except ValueError as exc:
        raise ReadFailed(p, str(exc)) from None


# -- status ---------------------------------------------------------------------------------

def parse_status(text: str) -> dict[str, str]:
    """/proc/PID/status as {key: value}, values stripped (``Uid``: "0 0 0 0", ``SigCgt``: hex...)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        k, sep, v = line.partition(":")
        if sep:
            out[k.strip()] = v.strip()
    return out


def status(pid: int | str, tid: int | None = None) -> dict[str, str]:
    """The process's (or one thread's) status; raises ``ProcError``."""
    return parse_status(read_text(path(pid, "status", tid)))


# -- identity -------------------------------------------------------------------------------

def start_time(pid: int | str) -> int:
    """The process's start time (clock ticks after boot); raises ``ProcError``."""
    return stat(pid).starttime


class Identity(NamedTuple):
    """A process named so that a reused PID is never mistaken for it: (PID, start time)."""

    pid: int
    start_time: int

    @classmethod
    def of(cls, pid: int) -> "Identity":
        """The identity of the process that has ``pid`` now; raises ``ProcError``."""
        return cls(int(pid), start_time(pid))

    def check(self) -> Stat:
        """The process's stat now; ``ProcessGone`` if it exited or the PID names another process."""
        st = stat(self.pid)
        if st.starttime != self.start_time:
            raise ProcessGone(path(self.pid, "stat"),
                              f"process {self.pid} exited (the PID now belongs to another process)")
        return st

    def alive(self) -> bool:
        """True while the same process exists (a zombie too: it has not been reaped)."""
        try:
            self.check()
            return True
        except ProcError:
            return False


# -- enumeration ----------------------------------------------------------------------------

def pids() -> Iterator[int]:
    """The PIDs under /proc now (some may exit before they are read)."""
    for name in os.listdir(PROC):
        if name.isdigit():
            yield int(name)


def tids(pid: int) -> list[int]:
    """The process's thread IDs; raises ``ProcError``."""
    return sorted(int(t) for t in listdir(path(pid, "task")) if t.isdigit())


def thread_states(pid: int) -> dict[int, str]:
    """{tid: state letter} for every thread still there; raises ``ProcError`` if the process is not."""
    out: dict[int, str] = {}
    for tid in tids(pid):
        try:
            out[tid] = stat(pid, tid).state
        except ProcError:
            continue       # that thread exited meanwhile
    return out


# -- what a sleeping thread waits in ------------------------------------------------------------

def sched_exec_start_ms(text: str) -> float | None:
    """``se.exec_start`` of a ``sched`` file: when the task last ran, in the scheduler's clock (ms)."""
    for line in text.splitlines():
        if line.startswith("se.exec_start"):
            try:
                return float(line.split(":", 1)[1])
            except (IndexError, ValueError):
                return None
    return None


def parse_syscall(text: str) -> tuple[int, list[str]] | None:
    """``/proc/PID/task/TID/syscall`` of a blocked thread: (the call's number, its first three arguments);
    None when it runs (``running``) or is not in a system call (``-1``)."""
    f = text.split()
    if not f or not f[0].lstrip("-").isdigit() or int(f[0]) < 0:
        return None
    return int(f[0]), f[1:4]


def thread_wait(pid: int, tid: int) -> dict[str, object]:
    """For a sleeping thread: the system call it is in (``nr``, ``args``) and how long ago it last ran
    (``last_ran_s_ago``: its ``se.exec_start`` against this thread's, which runs now; an estimate in the
    scheduler's clock). Empty where the kernel does not say; never raises.

    Read it before anything ptrace-stops the process: a ptrace stop wakes the thread and restarts its call."""
    out: dict[str, object] = {}
    try:
        call = parse_syscall(read_text(path(pid, "syscall", tid)))
    except ProcError:
        call = None
    if call:
        out["nr"], out["args"] = call
    try:
        ran = sched_exec_start_ms(read_text(path(pid, "sched", tid)))
        now = sched_exec_start_ms(read_text("/proc/thread-self/sched"))
    except ProcError:
        ran = now = None
    if ran is not None and now is not None and now >= ran:
        out["last_ran_s_ago"] = round((now - ran) / 1000, 3)
    return out
