"""Fixtures of the daemon tests: the real daemon (`python -m agent daemon`) on loopback.

Each daemon gets its own directory with a config, tracker secrets, a store and a Unix
socket; it listens on 127.0.0.1 port 0 and the fixture learns the port from the
``event=ready`` log line. Captures use ``daemon.collectors = ["host"]`` (quick, real).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from gh_webhook_payloads import HOST, SECRETS

ROOT = Path(__file__).resolve().parents[2]


def write_config(d: Path, extra: str = "", daemon_extra: str = "", host_extra: str = "") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for tracker, secret in SECRETS.items():
        p = d / f"{tracker}.secret"
        p.write_text(secret + "\n")
        p.chmod(0o600)
    (d / "api.token").write_text("local-api-token-0123456789\n")
    (d / "api.token").chmod(0o600)
    (d / "store").mkdir(exist_ok=True)
    cfg = d / "config.toml"
    cfg.write_text(f"""
[store]
path = "{d / 'store'}"
reserve_bytes = 0
reserve_percent = 0.0
[capture]
profile = "quick"
time_budget_s = 30
[host]
name = "{HOST}"
tags = ["role=db", "tag1"]
{host_extra}
[daemon]
listen = "127.0.0.1:0"
socket = "{d / 'api.sock'}"
profile = "quick"
collectors = ["host"]
services = ["API Service", "checkout-api"]
pre_restart_budget_s = 10
api_token_file = "{d / 'api.token'}"
upload_interval_s = 3600
{daemon_extra}
[webhooks.pagerduty]
enabled = true
secret_file = "{d / 'pagerduty.secret'}"
[webhooks.incidentio]
enabled = true
secret_file = "{d / 'incidentio.secret'}"
[webhooks.alertmanager]
enabled = true
secret_file = "{d / 'alertmanager.secret'}"
[webhooks.opsgenie]
enabled = true
secret_file = "{d / 'opsgenie.secret'}"
[webhooks.generic]
enabled = true
secret_file = "{d / 'generic.secret'}"
{extra}
""")
    return cfg


class Daemon:
    """A real `goldenhour daemon` process and helpers to talk to it."""

    def __init__(self, d: Path, env: dict | None = None, **cfg_kw):
        self.dir = d
        self.cfg = write_config(d, **cfg_kw)
        self.store = d / "store"
        self.socket = d / "api.sock"
        inherited = {k: v for k, v in os.environ.items()
                     if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")}
        self.env = {**inherited, "GOLDENHOUR_CONFIG": str(self.cfg), **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self.url = ""

    def start(self, timeout: float = 30, prefix: list[str] | None = None) -> "Daemon":
        """Start it (``prefix``: a wrapper command, e.g. ``prlimit --nofile=N``) and wait for its ready line."""
        self.lines = []
        ready = threading.Event()
        self.proc = subprocess.Popen([*(prefix or []), sys.executable, "-m", "agent", "--config", str(self.cfg),
                                      "daemon"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                     env=self.env, start_new_session=True)

        def pump() -> None:
            assert self.proc and self.proc.stderr
            for line in self.proc.stderr:
                self.lines.append(line.rstrip("\n"))
                m = re.search(r"event=ready listen=(\S+)", line)
                if m:
                    self.url = f"http://{m.group(1)}"
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(timeout) or not self.url:
            self.stop()
            raise RuntimeError("daemon did not become ready:\n" + "\n".join(self.lines[-30:]))
        return self

    def stop(self, timeout: float = 60) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        rc = self.proc.returncode
        self.proc = None
        return rc

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- HTTP ------------------------------------------------------------------
    def post(self, tracker: str, delivery: tuple[bytes, dict], **kw) -> httpx.Response:
        raw, headers = delivery
        return httpx.post(f"{self.url}/v1/webhooks/{tracker}", content=raw, headers=headers, timeout=10, **kw)

    def health(self) -> dict:
        return httpx.get(f"{self.url}/healthz", timeout=10).json()

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=10).text

    def wait_idle(self, timeout: float = 120) -> dict:
        """Until no capture is queued or running (polls /healthz)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            h = self.health()
            if h["queue"] == 0 and h["running"] is None:
                return h
            time.sleep(0.05)
        raise AssertionError(f"daemon still busy after {timeout}s: {self.health()}")

    def wait_running(self, timeout: float = 60) -> dict:
        """Until a capture job is running (polls /healthz)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            h = self.health()
            if h["running"] is not None:
                return h
            time.sleep(0.01)
        raise AssertionError(f"no capture started in {timeout}s: {self.health()}")

    # -- store -----------------------------------------------------------------
    def bundles(self, incident: str | None = None) -> list[Path]:
        base = self.store / "incidents"
        dirs = [base / incident] if incident else [p for p in base.glob("*") if p.is_dir()]
        return sorted(b for d in dirs for b in d.glob("*.tar.zst"))

    def state(self) -> dict:
        p = self.store / "state" / "daemon-state.json"
        return json.loads(p.read_text()) if p.exists() else {}

    def gh(self, *args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, cwd=ROOT,
                              timeout=timeout, env={**self.env, **(env or {})})


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """One daemon shared by a test module (tests use distinct incident IDs)."""
    d = Daemon(tmp_path_factory.mktemp("ghd"))
    d.start()
    yield d
    d.stop()


@pytest.fixture
def new_daemon(tmp_path):
    """Factory for daemons with their own config; all stopped at the end of the test."""
    made: list[Daemon] = []

    def _make(sub: str = "d", **kw) -> Daemon:
        dd = Daemon(tmp_path / sub, **kw)
        made.append(dd)
        return dd
    yield _make
    for dd in made:
        dd.stop()
