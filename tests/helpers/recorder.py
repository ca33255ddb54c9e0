"""A real ``goldenhour record`` process for tests and benchmarks, waited for by its sd_notify READY=1."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def write_config(path: Path, store: Path, *, interval: float = 0.1, process_interval: float | None = None,
                 ring_mib: int = 2, sock: Path | None = None, extra: str = "", sync_s: float = 1) -> Path:
    """A config with the store at ``store``, no free-space reserve, and a fast recorder."""
    path.write_text(f'[store]\npath = "{store}"\nreserve_bytes = 0\nreserve_percent = 0.0\n'
                    f'[recorder]\ninterval_s = {interval}\nprocess_interval_s = {process_interval or interval}\n'
                    f'ring_mib = {ring_mib}\nsocket = "{sock or ""}"\nsync_s = {sync_s}\n{extra}')
    return path


class RecorderProc:
    """``python -m agent --config CFG record ARGS``; ``start()`` returns once it sent READY=1."""

    def __init__(self, config: Path, *args: str, env: dict | None = None, prefix: list[str] | None = None):
        self.config, self.args, self.prefix = config, list(args), prefix or []
        self.env = dict(os.environ, **(env or {}))
        self.proc: subprocess.Popen | None = None
        self.notify: socket.socket | None = None
        self.messages: list[str] = []

    def start(self, timeout: float = 60) -> "RecorderProc":
        d = tempfile.mkdtemp(prefix="gh-rec-notify-")
        path = os.path.join(d, "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(path)
        self.notify.settimeout(timeout)
        env = dict(self.env, NOTIFY_SOCKET=path)
        self.proc = subprocess.Popen(self.prefix + [sys.executable, "-m", "agent", "--config", str(self.config),
                                                    "record", *self.args],
                                     cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.notify.recv(4096).decode()
            except socket.timeout:
                break
            self.messages.append(msg)
            if msg.startswith("READY=1"):
                return self
        self.kill()
        raise RuntimeError(f"recorder not ready: {self.proc.stderr.read()[-2000:] if self.proc else ''}")

    def ask(self, req: dict, timeout: float = 5.0) -> dict | None:
        from agent.recorder.service import ask
        sock = _socket_of(self.config)
        return ask(sock, req, timeout=timeout)

    def wait_samples(self, n: int, timeout: float = 60) -> dict:
        """Wait (by asking its socket) until it has taken ``n`` samples in this run."""
        deadline = time.monotonic() + timeout
        st: dict | None = None
        while time.monotonic() < deadline:
            st = self.ask({"op": "status"})
            if st and st.get("samples", 0) >= n:
                return st
            time.sleep(0.05)
        raise RuntimeError(f"recorder took fewer than {n} samples in {timeout} s: {st}")

    def stop(self, timeout: float = 30) -> int:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        rc = self.proc.wait(timeout)
        self._close()
        return rc

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        self._close()

    def _close(self) -> None:
        if self.notify is not None:
            path = self.notify.getsockname()
            self.notify.close()
            self.notify = None
            try:
                os.unlink(path)
                os.rmdir(os.path.dirname(path))
            except OSError:
                pass
        if self.proc is not None:
            for f in (self.proc.stdout, self.proc.stderr):
                if f and not f.closed:
                    try:
                        f.close()
                    except OSError:
                        pass


def _socket_of(config: Path) -> str:
    import tomllib
    return tomllib.loads(config.read_text()).get("recorder", {}).get("socket", "")


def gh(config: Path, *args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", "--config", str(config), *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=timeout, env=dict(os.environ, **(env or {})))


def gh_json(config: Path, *args: str, timeout: float = 300) -> dict:
    cp = gh(config, *args, timeout=timeout)
    assert cp.returncode == 0, cp.stderr
    return json.loads(cp.stdout)
