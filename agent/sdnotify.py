"""systemd's service protocol for goldenhour's long-running processes (daemon, relay, recorder).

``notify`` sends READY=1 / WATCHDOG=1 / STOPPING=1 / STATUS=... to ``$NOTIFY_SOCKET``
(sd_notify(3)); ``watchdog_interval`` is how often to ping when the unit sets
``WatchdogSec=`` (half of it, as sd_watchdog_enabled(3) advises). Both do nothing outside
systemd. A leaf: it imports nothing of the project.
"""
from __future__ import annotations

import os
import socket


def notify(message: str) -> bool:
    """Send ``message`` to $NOTIFY_SOCKET; False when not under systemd (or the socket is gone)."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(message.encode())
        return True
    except OSError:
        return False


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None when no watchdog is asked of us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    try:
        return max(int(usec) / 1e6 / 2, 0.05)
    except ValueError:
        return None
