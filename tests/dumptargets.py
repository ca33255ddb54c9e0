"""Real dump targets for the process/threads/heap tests and the non-destructive tests.

The programs live in ``tests/targets/`` (adapted from ../shared/runtime-targets); compiled ones
(C, Java, Go) are built once into ``tests/targets/build/`` (gitignored) and rebuilt only when
their source is newer. Each target prints ``READY <pid>`` when set up, has named threads in
known states (a two-lock deadlock ``gh-deadlock-a``/``gh-deadlock-b``, a worker ``gh-worker``)
and, given a ticker file, appends a CLOCK_MONOTONIC timestamp about every millisecond: a
heartbeat that proves the target runs after a dump.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.proc import Proc

TARGETS = Path(__file__).resolve().parent / "targets"
BUILD = TARGETS / "build"
ROOT = Path(__file__).resolve().parent.parent


def _stale(out: Path, src: Path) -> bool:
    return not out.exists() or out.stat().st_mtime < src.stat().st_mtime


def build_c() -> Path:
    out = BUILD / "gh_target_c"
    src = TARGETS / "gh_target.c"
    if _stale(out, src):
        BUILD.mkdir(parents=True, exist_ok=True)
        subprocess.run(["gcc", "-O1", "-g", "-pthread", "-o", str(out) + ".tmp", str(src)], check=True)
        os.replace(str(out) + ".tmp", out)
    return out


def build_java() -> Path:
    """The class folder holding GhTarget.class."""
    out = BUILD / "java"
    src = TARGETS / "GhTarget.java"
    if _stale(out / "GhTarget.class", src):
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run(["javac", "-d", str(out), str(src)], check=True)
    return out


def build_go() -> Path | None:
    if not shutil.which("go"):
        return None
    out = BUILD / "gh_target_go"
    src = TARGETS / "gh_target.go"
    if _stale(out, src):
        BUILD.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "GO111MODULE": "off", "GOCACHE": str(BUILD / "gocache"), "GOFLAGS": ""}
        subprocess.run(["go", "build", "-o", str(out), str(src)], check=True, env=env, cwd=BUILD)
    return out


class Target(Proc):
    """A running target: ``pid`` (from its ``READY <pid>`` line), ``ticker`` (heartbeat file), ``assert_running()``."""

    def __init__(self, argv: list, ticker: Path | None = None, env: dict | None = None,
                 timeout: float = 60, preexec=None):
        self.ticker = ticker
        super().__init__(argv, timeout=timeout, env=env, preexec=preexec)
        parts = self.ready.split()
        self.pid = int(parts[1]) if len(parts) > 1 else self.popen.pid
        if ticker is not None:
            self.wait_tick()

    def thread_states(self) -> dict[int, str]:
        out = {}
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            try:
                with open(f"/proc/{self.pid}/task/{tid}/stat") as fh:
                    text = fh.read()
                out[int(tid)] = text[text.rindex(")") + 2]
            except (OSError, ValueError):
                continue
        return out

    def ticks(self) -> int:
        try:
            return self.ticker.stat().st_size if self.ticker else 0
        except OSError:
            return 0

    def wait_tick(self, timeout: float = 10.0) -> None:
        start = self.ticks()
        deadline = time.monotonic() + timeout
        while self.ticks() <= start:
            if time.monotonic() > deadline:
                raise AssertionError(f"target {self.pid} did not tick for {timeout} s (state {self.state()})")
            time.sleep(0.005)

    def wait_deadlocked(self, n: int = 2, timeout: float = 10.0) -> "Target":
        """Until ``n`` threads wait on a futex in the kernel (the two deadlocked ones)."""
        deadline = time.monotonic() + timeout
        while True:
            waiting = 0
            for tid in os.listdir(f"/proc/{self.pid}/task"):
                try:
                    with open(f"/proc/{self.pid}/task/{tid}/wchan") as fh:
                        waiting += "futex" in fh.read()
                except OSError:
                    continue
            if waiting >= n:
                return self
            if time.monotonic() > deadline:
                raise AssertionError(f"target {self.pid}: {waiting} threads on a futex, expected {n}")
            time.sleep(0.005)

    def assert_running(self) -> None:
        """Alive, no thread stopped (T/t), and (with a ticker) still ticking."""
        assert self.alive(), f"target {self.argv} died: rc={self.popen.poll()} {self.popen.stderr.read()[-1000:]}"
        stopped = {t: s for t, s in self.thread_states().items() if s in ("T", "t")}
        assert not stopped, f"target {self.pid} has stopped threads: {stopped}"
        if self.ticker is not None:
            self.wait_tick()


def python_target(tmp: Path, *extra: str, env: dict | None = None, prefix: list[str] | None = None,
                  heap_mb: int = 1) -> Target:
    t = Target([*(prefix or []), sys.executable, TARGETS / "gh_target.py", "--ticker", tmp / "py.tick",
                "--heap-mb", str(heap_mb), *extra], ticker=tmp / "py.tick", env=env)
    return t if prefix else t.wait_deadlocked()


def c_target(tmp: Path, heap_mb: int = 4, name: str = "c") -> Target:
    return Target([build_c(), "--ticker", tmp / f"{name}.tick", "--heap-mb", str(heap_mb)],
                  ticker=tmp / f"{name}.tick").wait_deadlocked()


def jvm_target(tmp: Path, *jvm_opts: str, name: str = "jvm", heap_mb: int = 4, extra: tuple = (),
               preexec=None) -> Target:
    """A HotSpot target (Serial GC, 64 MiB heap); ``extra``: GhTarget's own options (``--churn-mb N``)."""
    return Target(["java", "-Xmx64m", "-XX:+UseSerialGC", *jvm_opts, "-cp", build_java(), "GhTarget",
                   "--ticker", tmp / f"{name}.tick", "--heap-mb", str(heap_mb), *extra], ticker=tmp / f"{name}.tick",
                  preexec=preexec)


def node_target(tmp: Path, *extra: str, env: dict | None = None, prefix: list[str] | None = None,
                name: str = "node", heap_mb: int = 4) -> Target:
    return Target([*(prefix or []), "node", TARGETS / "gh_target.js", "--ticker", tmp / f"{name}.tick",
                   "--heap-mb", str(heap_mb), *extra], ticker=tmp / f"{name}.tick", env=env)


def go_target(tmp: Path, *extra: str) -> Target | None:
    exe = build_go()
    if exe is None:
        return None
    return Target([exe, "-ticker", tmp / "go.tick", "-heap-mb", "4", *extra], ticker=tmp / "go.tick")


def agent_target(pid: int, **override):
    """goldenhour's own Target for a PID (what plan/resolve would build)."""
    from agent.targets import Target as T
    t = T.from_pid(pid, "test")
    for k, v in override.items():
        setattr(t, k, v)
    return t


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    import socket
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0
