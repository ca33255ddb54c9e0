"""CPU and I/O priority of goldenhour's own processes: low while collecting, normal while a target is paused.

Where it sits: a leaf (it imports nothing of goldenhour). The capture process lowers itself
(``agent.capture``), each collector child lowers itself again (``agent.runner``), and a
collector that pauses its target returns to normal priority for the pause
(``normal_priority``, called through ``agent.safety``). All of it is best effort: a host
without autogroup, psutil or the right to change a value keeps the priority it had.
"""
from __future__ import annotations

import os


def set_autogroup_nice(nice: int) -> None:
    """Give this session's scheduler autogroup the nice value ``nice`` (Linux, CONFIG_SCHED_AUTOGROUP).

    With autogroup on (the default on most distributions), each session (``setsid``) is its
    own scheduling group, and the groups share the CPU by the *group's* nice: a process's own
    nice then only orders it against its own session. A collector runs in a session of its
    own, so without this its nice 10 would still take a full share from the workload's
    session (measured in bench/README.md, "overhead"). Only for a session goldenhour leads:
    the group holds only goldenhour's processes. Best effort (no autogroup: nothing to do).
    """
    try:
        if os.getsid(0) != os.getpid():
            return
        with open("/proc/self/autogroup", "w") as fh:
            fh.write(str(max(-20, min(19, nice))))
    except OSError:
        pass


def set_low_priority(nice: int, idle_io: bool) -> None:
    """Run this process at CPU nice ``nice`` (at least: never raised back) and, if asked, the idle I/O class.

    Absolute, so calling it again (the capture process, then each collector it forks) is harmless.
    """
    try:
        if nice and os.getpriority(os.PRIO_PROCESS, 0) < nice:
            os.setpriority(os.PRIO_PROCESS, 0, min(nice, 19))
    except OSError:
        pass
    if idle_io:
        try:
            import psutil
            psutil.Process().ionice(psutil.IOPRIO_CLASS_IDLE)
        except Exception:  # noqa: BLE001 - priority is best effort
            pass


def normal_priority() -> None:
    """While a target is paused, work at normal CPU and I/O priority: collectors run niced in the
    idle I/O class, which would stretch the very pause goldenhour must keep short. Best effort."""
    try:
        cur = os.getpriority(os.PRIO_PROCESS, 0)
        if cur > 0:
            os.setpriority(os.PRIO_PROCESS, 0, 0)
    except OSError:
        pass
    set_autogroup_nice(0)           # the collector's own session: its scheduling group too
    try:
        import psutil
        psutil.Process().ionice(psutil.IOPRIO_CLASS_BE, 4)
    except Exception:  # noqa: BLE001 - best effort
        pass
