"""Shared helper: run a network collector inside another network namespace.

``[collectors.<name>] netns`` (or the capture-wide ``capture["netns"]``) names a
namespace file, e.g. ``/run/netns/blue`` (``ip netns add``) or ``/proc/<pid>/ns/net``
of a container's process. The collector runs in its own forked child, so entering
the namespace affects only that child and the helpers it starts: ``/proc/net/*``,
``/proc/sys/net/*`` and netlink (ss, conntrack) then show that namespace. The PID
namespace is unchanged, so socket owners are still found through /proc.
"""
from __future__ import annotations

import ctypes
import os

CLONE_NEWNET = 0x40000000


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """os.setns (Python 3.12+), or the libc call on older Pythons (Debian 12 has 3.11)."""
    if hasattr(os, "setns"):
        os.setns(fd, nstype)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def enter(ctx) -> str | None:
    """Enter the configured network namespace, if any; returns its path (for the manifest)."""
    path = ctx.options.get("netns") or ctx.capture.get("netns")
    if not path:
        return None
    path = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise RuntimeError(f"cannot open network namespace {path}: {exc.strerror}") from None
    try:
        setns(fd, CLONE_NEWNET)
    except OSError as exc:
        raise RuntimeError(f"cannot enter network namespace {path}: {exc.strerror} "
                           "(needs root, and a network namespace file)") from None
    finally:
        os.close(fd)
    ctx.note(netns=path)
    return path
