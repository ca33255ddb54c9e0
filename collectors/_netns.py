"""Shared helper: run a network collector inside another network namespace.

``capture["netns"]`` (or ``[collectors.<name>] netns``) names a namespace file, e.g.
``/run/netns/blue`` or ``/proc/<pid>/ns/net`` of a container's process. The collector
runs in its own child process, so entering the namespace affects only that child:
``/proc/net/*``, ``/proc/sys/net/*`` and netlink then show that namespace.
"""
from __future__ import annotations

import os


def enter(ctx) -> str | None:
    """Enter the configured network namespace, if any; returns its path (for the manifest)."""
    path = ctx.options.get("netns") or ctx.capture.get("netns")
    if not path:
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        os.setns(fd, os.CLONE_NEWNET)
    finally:
        os.close(fd)
    ctx.note(netns=path)
    return path
