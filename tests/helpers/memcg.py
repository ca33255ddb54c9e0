"""A real OOM kill in a memory cgroup of its own: noise an earlier, unrelated incident leaves in the ring buffer.

``oom_kill_elsewhere()`` makes a fresh memory cgroup (cgroup v1 ``memory.limit_in_bytes``, or v2
``memory.max``) with a 32 MiB limit, starts a child in it that allocates 128 MiB, and lets the kernel's
memory-cgroup OOM killer kill it: the kernel prints its whole report (``invoked oom-killer``, the
backtrace, the cgroup's statistics, the task table, ``oom-kill:constraint=CONSTRAINT_MEMCG``,
``Memory cgroup out of memory: Killed process``). The cgroup is removed afterwards.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

V1 = Path("/sys/fs/cgroup/memory")
V2 = Path("/sys/fs/cgroup")
HOG = ("import os, sys\n"
       "open(sys.argv[1], 'w').write(str(os.getpid()))\n"
       "x = bytearray(128 * 2**20)\n")


def _where() -> tuple[Path, str, str] | None:
    """(parent folder, limit file, procs file) of the memory controller, or None."""
    if (V1 / "memory.limit_in_bytes").exists():
        return V1, "memory.limit_in_bytes", "cgroup.procs"
    ctl = (V2 / "cgroup.subtree_control")
    if ctl.exists() and "memory" in ctl.read_text().split():
        return V2, "memory.max", "cgroup.procs"
    return None


def oom_kill_elsewhere(limit: int = 32 * 2**20) -> tuple[int, str] | None:
    """Run the hog; returns (the killed PID, the cgroup as the kernel names it), or None without a memory
    controller to use."""
    where = _where()
    if where is None:
        return None
    root, limit_file, procs = where
    name = f"gh-noise-{uuid.uuid4().hex[:8]}"
    cg = root / name
    cg.mkdir()
    try:
        (cg / limit_file).write_text(str(limit))
        p = subprocess.Popen([sys.executable, "-c", HOG, str(cg / procs)], stderr=subprocess.PIPE, text=True)
        _, err = p.communicate(timeout=60)
        if p.returncode != -9:
            raise RuntimeError(f"the hog was not OOM-killed: rc {p.returncode} {err[-500:]}")
        pid = p.pid
    finally:
        for _ in range(50):
            try:
                cg.rmdir()
                break
            except OSError:
                time.sleep(0.1)
    return pid, "/" + name


def kernel_said(text: str, timeout: float = 30.0) -> bool:
    """Whether a kernel record containing ``text`` shows up in /dev/kmsg within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    try:
        while time.monotonic() < deadline:
            try:
                rec = os.read(fd, 16384)
            except BlockingIOError:
                time.sleep(0.1)
                continue
            except BrokenPipeError:
                continue
            if text.encode() in rec:
                return True
        return False
    finally:
        os.close(fd)
