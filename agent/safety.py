"""Non-destructive guarantees, enforced in one place: which signals goldenhour may send, and
when a ptrace-based dump may attach.

Where it sits: every collector that touches a target (``threads``, ``heap``) and the pause
ledger (``agent.pauses``) go through here; nothing else in goldenhour signals a process.

Signals (the rules, in order; a refused signal raises ``UnsafeSignal`` with the reason):

1. The target is re-identified by (PID, start time) through a pidfd opened *before* the check,
   so a PID reused by another program can never receive the signal (``pidfd_send_signal``).
2. ``SIGCONT`` (default action: continue) is the only signal sent without further checks; it
   is sent only by the pause ledger to a process it may have left stopped.
3. Stop signals (SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU) are never sent: a dump never pauses a
   target by group-stop (ptrace does not resume a group-stopped tracee when its tracer dies).
4. Every other signal's default action ends the process, so it is sent only when it is on the
   allow-list for the target's runtime (``ALLOWED``: SIGUSR1 to Node.js, which opens the
   inspector) *and* the target's ``SigCgt`` mask has it *and* ``SigIgn`` does not. A handler
   alone is not enough: Go's runtime catches SIGQUIT and then exits, CPython catches SIGINT and
   raises KeyboardInterrupt; hence the allow-list.

Signals sent by helpers: ``jcmd`` sends SIGQUIT itself when the JVM's attach listener is not
running yet. ``jvm_attach_precheck`` is the gate before any jcmd: libjvm.so mapped, SIGQUIT
caught and not ignored (a ``-Xrs`` JVM, or one still initialising, dies of SIGQUIT), the JVM
finished initialising when its perf data says so. Delve and gdb are never allowed to kill:
see the collectors.

ptrace (``ptrace_precheck``): refused when another tracer is attached (``TracerPid``), when
Yama forbids it, and when a thread of the target is in uninterruptible sleep (D): PTRACE_ATTACH
queues a SIGSTOP that a D-state thread only takes when it wakes, possibly after goldenhour has
given up, which would leave the target group-stopped with nobody to resume it.
"""
from __future__ import annotations

import os
import signal
from typing import Any

from agent import procfs
from agent.collector import TargetGone, read_text
# Pausing collectors call safety.normal_priority() before they stop a target (see its docstring).
from agent.priority import normal_priority as normal_priority

# Default action "continue", "ignore" or "stop": everything else terminates (signal(7)).
NOT_TERMINATING = frozenset({signal.SIGCHLD, signal.SIGCONT, signal.SIGURG, signal.SIGWINCH})
STOPPING = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})
# The only terminating-by-default signals goldenhour sends, and to which runtimes.
ALLOWED: dict[int, frozenset[str]] = {signal.SIGUSR1: frozenset({"node"})}
# Signals a runtime catches but then exits on (Go: os/signal docs; SIGQUIT dumps and exits 2).
FATAL_EVEN_IF_CAUGHT: dict[str, frozenset[int]] = {
    "go": frozenset({signal.SIGQUIT, signal.SIGILL, signal.SIGTRAP, signal.SIGABRT, signal.SIGSYS}),
}


class UnsafeSignal(Exception):
    """A signal goldenhour refuses to send; the message says why."""


def masks(pid: int, st: dict[str, str] | None = None) -> dict[str, int]:
    """SigCgt/SigIgn/SigBlk/SigPnd/ShdPnd of a process as integers (bit n-1 = signal n).

    ``st`` is the process's status if already read; else it is read (``procfs.ProcError`` if it cannot be).
    """
    st = st if st is not None else procfs.status(pid)
    return {k: int(st.get(k, "0") or "0", 16) for k in ("SigCgt", "SigIgn", "SigBlk", "SigPnd", "ShdPnd")}


def catches(pid: int, sig: int, st: dict[str, str] | None = None) -> bool:
    """True if the process has a handler for ``sig`` and does not ignore it."""
    m = masks(pid, st)
    bit = 1 << (int(sig) - 1)
    return bool(m["SigCgt"] & bit) and not (m["SigIgn"] & bit)


def caught_names(mask: int) -> list[str]:
    out = []
    for n in range(1, 65):
        if mask & (1 << (n - 1)):
            try:
                out.append(signal.Signals(n).name)
            except ValueError:
                out.append(f"SIG{n}")
    return out


def check_signal(pid: int, sig: int, runtime: str) -> None:
    """Raise UnsafeSignal unless rules 2-4 allow ``sig`` to this process."""
    sig = signal.Signals(sig)
    if sig in STOPPING:
        raise UnsafeSignal(f"{sig.name} would stop the process: goldenhour never stops a target by signal")
    if sig in NOT_TERMINATING:
        return
    if runtime not in ALLOWED.get(sig, frozenset()):
        raise UnsafeSignal(f"{sig.name}'s default action ends the process and goldenhour does not send it to "
                           f"{runtime or 'unknown'} processes")
    if sig in FATAL_EVEN_IF_CAUGHT.get(runtime, frozenset()):
        raise UnsafeSignal(f"{runtime} exits on {sig.name} even though it catches it")
    try:
        m = masks(pid)
    except procfs.ProcessGone:
        raise
    except procfs.ProcError as exc:
        raise UnsafeSignal(f"{sig.name} not sent: its handlers cannot be checked ({exc})") from None
    bit = 1 << (sig - 1)
    if not (m["SigCgt"] & bit) or m["SigIgn"] & bit:
        why = "ignores it" if m["SigIgn"] & bit else "has no handler for it"
        raise UnsafeSignal(f"process {pid} {why} (SigCgt {m['SigCgt']:016x}): {sig.name} would end it")


def send(pid: int, start_time: int, sig: int, runtime: str) -> None:
    """Send ``sig`` to the process (pid, start_time) if the rules allow it; else raise.

    Raises TargetGone if the process exited or the PID now names another process.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise TargetGone(f"process {pid} exited") from None
    try:
        procfs.Identity(pid, start_time).check()     # the pidfd now pins whatever holds the PID
        check_signal(pid, sig, runtime)
        signal.pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:
        raise TargetGone(f"process {pid} exited") from None
    finally:
        os.close(pidfd)


# -- ptrace ------------------------------------------------------------------

def yama_scope() -> int | None:
    v = read_text("/proc/sys/kernel/yama/ptrace_scope")
    try:
        return int(v.strip()) if v else None
    except ValueError:
        return None


def ptrace_precheck(pid: int, *, allow_d_state: bool = False) -> str | None:
    """Why a ptrace attach to ``pid`` must not (or cannot) happen now, or None.

    Raises ``TargetGone`` (a ``procfs.ProcessGone``) if the process exited.
    """
    try:
        st = procfs.status(pid)
        states = procfs.thread_states(pid)
    except procfs.ProcessGone:
        raise
    except procfs.ProcError as exc:
        return f"its state cannot be checked before attaching: {exc}"
    tracer = int(st.get("TracerPid", "0") or 0)
    if tracer:
        comm = (read_text(f"/proc/{tracer}/comm", "?") or "?").strip()
        return f"already traced by PID {tracer} ({comm}): a process has one tracer at a time"
    scope = yama_scope()
    if scope == 3:
        return "kernel.yama.ptrace_scope=3 forbids ptrace attach on this host"
    if scope == 2 and os.geteuid() != 0:
        return "kernel.yama.ptrace_scope=2 needs CAP_SYS_PTRACE (run as root)"
    stopped = [t for t, s in states.items() if s in ("T", "t")]
    if stopped:
        return f"{len(stopped)} thread(s) already stopped (state T/t): not attaching to a stopped process"
    d = [t for t, s in states.items() if s == "D"]
    if d and not allow_d_state:
        return (f"{len(d)} thread(s) in uninterruptible sleep (D): a ptrace attach would wait for them and could "
                "leave the process stopped; their kernel stacks are in the process collector")
    if states and all(s == "Z" for s in states.values()):
        return "the process is a zombie"
    return None


# -- JVM ---------------------------------------------------------------------

NO_SIGQUIT_HANDLER = "the JVM has no SIGQUIT handler"

def jvm_attach_precheck(pid: int, start_time: int, maps: str | None = None,
                        perf: dict[str, Any] | None = None) -> str | None:
    """Why jcmd (which may send SIGQUIT) must not be run against ``pid``, or None (danger list 1-2)."""
    procfs.Identity(pid, start_time).check()        # TargetGone if it exited or its PID was reused
    maps = maps if maps is not None else (read_text(f"/proc/{pid}/maps", "") or "")
    if "libjvm.so" not in maps:
        return "libjvm.so is not mapped: not a HotSpot JVM, and jcmd's SIGQUIT would kill it"
    try:
        m = masks(pid)
    except procfs.ProcessGone:
        raise
    except procfs.ProcError as exc:
        return f"its SIGQUIT handler cannot be checked ({exc}): not attaching"
    bit = 1 << (signal.SIGQUIT - 1)
    if m["SigIgn"] & bit:
        return "the JVM ignores SIGQUIT: its attach mechanism cannot be started (jcmd would hang)"
    if not m["SigCgt"] & bit:
        return (f"{NO_SIGQUIT_HANDLER} (-Xrs, or not initialised yet): jcmd's SIGQUIT could kill it; "
                "not attaching")
    if perf and perf.get("sun.rt.vmInitDoneTime") == 0:
        return "the JVM is still initialising (sun.rt.vmInitDoneTime = 0): SIGQUIT could kill it"
    return None
