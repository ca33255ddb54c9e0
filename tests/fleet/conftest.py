"""Fixtures of the fleet tests: a real nats-server with JetStream, enrolled principals, helpers.

``fleet`` starts one nats-server per test on a random loopback port with its own store
directory and the users that ``agent.fleet.enroll`` generated (hosts ``web-1``, ``web-2``,
``db-1`` plus a relay and a commander, each with its own nkey and permissions), and creates
the buckets with the commander's credentials. Nothing of NATS is mocked.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.fleet import conn, enroll
from tests.helpers.nats_server import NatsServer

FLEET = "prod"
HOSTS = ("web-1", "web-2", "db-1.example.com")


class FleetEnv:
    def __init__(self, d: Path, hosts=HOSTS, fleet: str = FLEET):
        self.dir = d
        self.fleet = fleet
        self.enroll_dir = d / "enroll"
        self.principals: dict[str, dict] = {}
        for h in hosts:
            self.principals[f"host-{h}"] = enroll.enroll(self.enroll_dir, "host", h, fleet)
        self.principals["relay"] = enroll.enroll(self.enroll_dir, "relay", "r1", fleet)
        self.principals["commander"] = enroll.enroll(self.enroll_dir, "commander", "ic", fleet)
        self.server = NatsServer(d / "nats", (self.enroll_dir / "nats-users.conf").read_text())

    def seed(self, who: str) -> str:
        return self.principals[who]["seed_file"]

    def settings(self, who: str, **kw) -> conn.Settings:
        kw.setdefault("jitter_s", 0.2)
        kw.setdefault("timeout_s", 3.0)
        return conn.Settings([self.server.url], self.fleet, seed_file=self.seed(who), **kw)

    async def connect(self, who: str, **kw):
        p = self.principals[who]
        return await conn.connect(self.settings(who), name=who, inbox_prefix=p["inbox_prefix"], forever=False, **kw)

    async def buckets(self, who: str = "commander", create: bool = False):
        nc = await self.connect(who)
        js = nc.jetstream(timeout=3)
        b = await (conn.ensure_buckets(js) if create else conn.open_buckets(js))
        return nc, b


@pytest.fixture
def fleet(tmp_path):
    env = FleetEnv(tmp_path)
    env.server.start()

    async def init():
        nc, _ = await env.buckets("commander", create=True)
        await nc.close()
    asyncio.run(init())
    yield env
    env.server.stop()


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
