"""A real process started by a test or a benchmark, waited for by the line it prints when ready.

Used by tests/conftest.py (``spawn``), tests/dumptargets.py (``Target``) and the probe tests.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time


class Proc:
    """A target process started by a test; ``ready`` is the line it printed when set up."""

    def __init__(self, argv: list, ready_prefix: str = "READY", timeout: float = 60,
                 env: dict | None = None, cwd: str | None = None, preexec=None):
        self.argv = argv = [str(a) for a in argv]
        # default signal dispositions, own session: a test's signals never reach it by accident
        self.popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=env, cwd=cwd, start_new_session=True,
                                      restore_signals=True, preexec_fn=preexec)
        self.pid = self.popen.pid
        deadline = time.monotonic() + timeout
        self.ready = ""
        while time.monotonic() < deadline:
            line = self.popen.stdout.readline()
            if not line:
                err = self.popen.stderr.read()
                raise RuntimeError(f"target {argv} exited before ready: rc={self.popen.poll()} {err[-2000:]}")
            if line.startswith(ready_prefix):
                self.ready = line.strip()
                break
        else:
            raise RuntimeError(f"target {argv} not ready in {timeout}s")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def state(self) -> str:
        with open(f"/proc/{self.pid}/stat") as fh:
            text = fh.read()
        return text[text.rindex(")") + 2]

    def stop(self) -> None:
        """Kill it and everything in its process group: a wrapper's child too (``unshare --fork``,
        ``ip netns exec``), which killing the wrapper alone would leave running."""
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(timeout=10)
        for f in (self.popen.stdout, self.popen.stderr):
            if f:
                f.close()
