"""Helpers of the fleet tests (imported by name: fleetlib, never as conftest).

``FleetEnv``: a real nats-server with JetStream on a random loopback port, its own store
directory, and the principals ``agent.fleet.enroll`` generates (hosts, a relay, a
commander), each with its own nkey and permissions. ``start_agent``: an in-process fleet
watcher with the stub capture. ``FleetDaemon``: a real ``goldenhour daemon`` in fleet mode.
``gh``: the real CLI without blocking the test's event loop.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from agent.fleet import conn, enroll
from tests.helpers.nats_server import NatsServer

ROOT = Path(__file__).resolve().parents[2]
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent",
          "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
FLEET = "prod"
HOSTS = ("web-1", "web-2", "db-1.example.com")


class FleetEnv:
    def __init__(self, d: Path, hosts=HOSTS, fleet: str = FLEET, js_limits: str = ""):
        self.dir = d
        self.fleet = fleet
        self.enroll_dir = d / "enroll"
        self.principals: dict[str, dict] = {}
        for h in hosts:
            self.principals[f"host-{h}"] = enroll.enroll(self.enroll_dir, "host", h, fleet)
        self.principals["relay"] = enroll.enroll(self.enroll_dir, "relay", "r1", fleet)
        self.principals["commander"] = enroll.enroll(self.enroll_dir, "commander", "ic", fleet)
        self.server = NatsServer(d / "nats", (self.enroll_dir / "nats-users.conf").read_text(), js_limits=js_limits)

    def seed(self, who: str) -> str:
        return self.principals[who]["seed_file"]

    def settings(self, who: str, **kw) -> conn.Settings:
        kw.setdefault("jitter_s", 0.2)
        kw.setdefault("timeout_s", 3.0)
        return conn.Settings([self.server.url], self.fleet, seed_file=self.seed(who), **kw)

    async def connect(self, who: str, **kw):
        p = self.principals[who]
        return await conn.connect(self.settings(who), name=who, inbox_prefix=p["inbox_prefix"], forever=False, **kw)

    async def buckets(self, who: str = "commander", create: bool = False, max_hosts: int = 10000):
        nc = await self.connect(who)
        js = nc.jetstream(timeout=3)
        b = await (conn.ensure_buckets(js, max_hosts=max_hosts) if create else conn.open_buckets(js))
        return nc, b




# -- in-process agents (the real watcher with the stub capture) ------------------------------

def identity(host: str, services=(), tags=()):
    from agent.targeting import Identity, _names
    return Identity(names=_names(host), services={s.lower() for s in services}, tags=set(tags))


async def until(cond, timeout: float = 30.0, what: str = "condition"):
    """Poll ``cond()`` (sync) until true; readiness, not timing: generous timeout."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        v = cond()
        if v:
            return v
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def start_agent(env: FleetEnv, host: str, state_dir: Path, *, services=(), tags=(), runner=None, **opts):
    from agent.fleet.local import FleetState
    from agent.fleet.watcher import FleetAgent, Options
    from tests.helpers.fleet_stub import StubRunner
    runner = runner or StubRunner(state_dir / "bundles")
    opts.setdefault("jitter_s", 0.2)
    opts.setdefault("heartbeat_s", 5)
    agent = FleetAgent(env.settings(f"host-{host}"), host, identity(host, services, tags), runner,
                       FleetState(state_dir), Options(**opts))
    await agent.start()
    await until(lambda: agent.ready.is_set(), what=f"{host} watching")
    return agent


def commander_config(env: FleetEnv, d: Path, **extra) -> Path:
    """A config file for `goldenhour fleet ...` with the commander's credentials."""
    d.mkdir(parents=True, exist_ok=True)
    lines = ["[fleet]", f'servers = ["{env.server.url}"]', f'name = "{env.fleet}"',
             f'nkey_seed_file = "{env.seed("commander")}"', "timeout_s = 3"]
    lines += [f"{k} = {v!r}".replace("'", '"') for k, v in extra.items()]
    p = d / "commander.toml"
    p.write_text("\n".join(lines) + "\n")
    return p


async def gh(cfg: Path, *args: str, timeout: float = 120) -> tuple[int, str, str]:
    """Run the real CLI (`python -m agent --config cfg ...`) without blocking the test's event loop."""
    import sys
    root = Path(__file__).resolve().parents[2]
    p = await asyncio.create_subprocess_exec(sys.executable, "-m", "agent", "--config", str(cfg), *args, cwd=root,
                                             stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(p.communicate(), timeout)
    return p.returncode, out.decode(), err.decode()


# -- real daemons in fleet mode ---------------------------------------------------------------

class FleetDaemon:
    """A real `goldenhour daemon` (its own process, config, store, credentials) in fleet mode.

    Captures run the ``host`` collector only (quick and real); uploads go to moto's S3 when
    ``s3=(url, bucket)``. ``start()`` returns once /healthz says the fleet watch is up.
    """

    def __init__(self, env: FleetEnv, host: str, d: Path, *, services=(), tags=(), s3=None, seed: str = "",
                 servers: list[str] | None = None, fleet_extra: str = "", extra: str = "", netns: str = "",
                 collectors=("host",), environ: dict | None = None, listen: str = "127.0.0.1:0"):
        self.env, self.host, self.dir, self.netns = env, host, d, netns
        self.environ = environ or {}
        d.mkdir(parents=True, exist_ok=True)
        (d / "store").mkdir(exist_ok=True)
        up = ""
        if s3:
            up = (f'[upload]\nurl = "s3://{s3[1]}/fleet"\nendpoint_url = "{s3[0]}"\nregion = "us-east-1"\n'
                  f"retry_initial_s = 1\nretry_max_s = 5\n")
        urls = json.dumps(servers or [env.server.url])
        self.cfg = d / "config.toml"
        self.cfg.write_text(f"""
[store]
path = "{d / 'store'}"
reserve_bytes = 0
reserve_percent = 0.0
[capture]
profile = "quick"
time_budget_s = 30
[host]
name = "{host}"
tags = {json.dumps(list(tags))}
[daemon]
listen = "{listen}"
socket = "{d / 'api.sock'}"
profile = "quick"
collectors = {json.dumps(list(collectors))}
services = {json.dumps(list(services))}
upload_interval_s = 3600
[fleet]
servers = {urls}
name = "{env.fleet}"
nkey_seed_file = "{seed or env.seed(f'host-{host}')}"
heartbeat_s = 5
offline_after_s = 15
reconnect_jitter_s = 0.5
timeout_s = 3
{fleet_extra}
{up}
{extra}""")
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self.url = ""

    def start(self, timeout: float = 60, wait_fleet: bool = True) -> "FleetDaemon":
        self.lines = []
        ready = threading.Event()
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM")}
        env.update(S3_ENV)
        env.update(self.environ)
        argv = [sys.executable, "-m", "agent", "--config", str(self.cfg), "daemon"]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns] + argv
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                     env=env, start_new_session=True)

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
            raise RuntimeError(f"daemon {self.host} did not start:\n" + "\n".join(self.lines[-30:]))
        if wait_fleet:
            self.wait(lambda h: (h.get("fleet") or {}).get("watching"), timeout, "fleet watch")
        return self

    def health(self) -> dict:
        import httpx
        return httpx.get(f"{self.url}/healthz", timeout=10).json()

    def wait(self, cond, timeout: float = 60, what: str = "condition") -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            h = self.health()
            if cond(h):
                return h
            time.sleep(0.05)
        raise AssertionError(f"{self.host}: no {what} in {timeout}s: {self.health()}\n" + "\n".join(self.lines[-20:]))

    def stop(self, timeout: float = 60) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        rc, self.proc = self.proc.returncode, None
        return rc

    def kill(self) -> None:
        """SIGKILL the daemon and its own capture children (a crash of the host's service: nothing is tidied)."""
        import psutil
        if self.proc is None:
            return
        ours = [p for p in psutil.process_iter(["cmdline"]) if str(self.cfg) in " ".join(p.info["cmdline"] or [])]
        kids = {c for p in ours for c in p.children(recursive=True)}
        for p in [*ours, *kids]:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs([*ours, *kids], timeout=10)
        self.proc.wait(10)
        self.proc = None

    def bundles(self, incident: str) -> list[Path]:
        return sorted((self.dir / "store" / "incidents" / incident).glob("*.tar.zst"))

    def fleet_state(self) -> dict:
        p = self.dir / "store" / "state" / "fleet-state.json"
        return json.loads(p.read_text()) if p.exists() else {}


# -- the relay ------------------------------------------------------------------------------------

GENERIC_SECRET = "generic-hmac-secret-for-fleet-tests-0123"


def generic_delivery(incident_id: str, action: str = "trigger", *, hosts=(), services=(), labels=None,
                     delivery: str | None = None, title: str = "checkout down") -> tuple[bytes, dict]:
    """A generic-tracker delivery signed like a sender would (agent/webhooks/generic.py)."""
    from agent.webhooks import generic
    raw = json.dumps({"incident_id": incident_id, "action": action, "title": title, "severity": "SEV2",
                      "services": list(services), "hosts": list(hosts), "labels": labels or {}},
                     separators=(",", ":")).encode()
    h = {"Content-Type": "application/json", "X-Goldenhour-Signature": generic.sign(raw, GENERIC_SECRET)}
    if delivery:
        h["X-Goldenhour-Delivery"] = delivery
    return raw, h


class RelayProc:
    """A real `goldenhour relay` process with the relay's credential and the generic tracker enabled."""

    def __init__(self, env: FleetEnv, d: Path, servers: list[str] | None = None, seed: str = "", extra: str = ""):
        self.env, self.dir = env, d
        d.mkdir(parents=True, exist_ok=True)
        (d / "generic.secret").write_text(GENERIC_SECRET + "\n")
        self.cfg = d / "relay.toml"
        self.cfg.write_text(f"""
[relay]
listen = "127.0.0.1:0"
[webhooks.generic]
enabled = true
secret_file = "{d / 'generic.secret'}"
[fleet]
servers = {json.dumps(servers or [env.server.url])}
name = "{env.fleet}"
nkey_seed_file = "{seed or env.seed('relay')}"
timeout_s = 2
reconnect_jitter_s = 0.5
{extra}
""")
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self.url = ""

    def start(self, timeout: float = 60, wait_nats: bool = True) -> "RelayProc":
        ready = threading.Event()
        self.proc = subprocess.Popen([sys.executable, "-m", "agent", "--config", str(self.cfg), "relay"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                     start_new_session=True)

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
            raise RuntimeError("relay did not start:\n" + "\n".join(self.lines[-30:]))
        if wait_nats:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        import httpx
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=10).status_code == 200:
                    return
            except httpx.TransportError:        # not listening yet
                pass
            time.sleep(0.05)
        raise AssertionError("relay not connected to NATS:\n" + "\n".join(self.lines[-20:]))

    def post(self, delivery: tuple[bytes, dict], tracker: str = "generic"):
        import httpx
        raw, headers = delivery
        return httpx.post(f"{self.url}/v1/webhooks/{tracker}", content=raw, headers=headers, timeout=30)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        rc, self.proc = self.proc.returncode, None
        return rc
