"""Nested cgroups for tests: real v1 (or v2) cgroups a few levels below the test's own, like a
systemd slice and service (``gh-<id>/svc.slice/app.service``), holding real target processes.

Each tree is made below the test process's own cgroup in every hierarchy asked for (so a memory
limit set here never escapes the limits the test runs under), and removed at the end: its
processes must be gone or moved by then; removal waits for the kernel to release them.
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


def _own(controller: str) -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hid, ctrls, path = line.split(":", 2)
        if controller in ctrls.split(","):
            return path
    return "/"


def available(*controllers: str) -> bool:
    return os.geteuid() == 0 and all((ROOT / c / "cgroup.procs").exists() for c in controllers)


class Nested:
    """``gh-<id>/<parts...>`` in each v1 controller hierarchy; ``dir(ctrl, level)`` is a level's
    folder (0 = the top, -1 = the leaf), ``path(level)`` its cgroup path as /proc/PID/cgroup names it
    below the test's own cgroup."""

    def __init__(self, *controllers: str, parts: tuple[str, ...] = ("svc.slice", "app.service")):
        self.controllers = controllers
        self.top = f"gh-{uuid.uuid4().hex[:8]}"
        self.parts = (self.top, *parts)
        self.dirs: dict[str, list[Path]] = {}
        for c in controllers:
            base = ROOT / c / _own(c).lstrip("/")
            levels = []
            d = base
            for p in self.parts:
                d = d / p
                d.mkdir()
                levels.append(d)
            self.dirs[c] = levels

    def dir(self, controller: str, level: int = -1) -> Path:
        return self.dirs[controller][level]

    def path(self, controller: str, level: int = -1) -> str:
        return "/" + str(self.dir(controller, level).relative_to(ROOT / controller))

    def add(self, pid: int) -> None:
        for c in self.controllers:
            (self.dir(c) / "cgroup.procs").write_text(str(pid))

    def set(self, controller: str, level: int, name: str, value: object) -> None:
        (self.dir(controller, level) / name).write_text(str(value))

    def read(self, controller: str, level: int, name: str) -> str:
        return (self.dir(controller, level) / name).read_text()

    def close(self, timeout: float = 20.0) -> None:
        for levels in self.dirs.values():
            parent = levels[0].parent
            for d in reversed(levels):
                for pid in (d / "cgroup.procs").read_text().split() if d.exists() else ():
                    try:
                        (parent / "cgroup.procs").write_text(pid)      # a straggler: back where it came from
                    except OSError:
                        pass
                deadline = time.monotonic() + timeout
                while d.exists():
                    try:
                        d.rmdir()
                    except OSError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)

    def __enter__(self) -> "Nested":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
