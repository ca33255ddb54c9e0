#!/usr/bin/env python3
"""Simulated fleet agents for bench_fleet.py: many real fleet watchers in one process, capture stubbed.

Each agent is an ``agent.fleet.watcher.FleetAgent`` with its **own NATS connection, its own
nkey credentials** (enrolled like a real host: it may write only its own keys), its own
identity and local state directory, running the real code path -- connect, heartbeat,
watch, parse, ``targeting.concerns``, local state, status records -- with the capture
replaced by ``tests.helpers.fleet_stub.StubRunner`` (a tiny bundle, no collectors): 1,000
real captures on 2 cores would measure collectors competing for CPU, not fan-out.

Protocol (one JSON object per line): the driver writes commands on stdin, the worker
answers on stdout.

    {"cmd": "start"}                     -> {"ready": N, "rss_kb": .., "rss0_kb": .., "setup_s": ..}
    {"cmd": "report", "incident": ID}    -> {"captures": [[host, rev, late, started_ns, delivered_ns], ...]}
    {"cmd": "away", "hosts": [...]}      -> {"away": n}          (stop those agents: connection closed)
    {"cmd": "back", "hosts": [...]}      -> {"back": n, "ready_ns": {...}}  (start them again, same state)
    {"cmd": "watching"}                  -> {"watching": n, "connected": n}
    {"cmd": "quit"}

    python bench/fleet_sim.py SPEC.json     (written by bench_fleet.py: server URL, fleet, agents)
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.fleet.conn import Settings
from agent.fleet.local import FleetState
from agent.fleet.watcher import FleetAgent, Options
from agent.targeting import Identity, _names
from tests.helpers.fleet_stub import StubRunner


def rss_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def dump_tasks() -> None:
    """SIGUSR1: every asyncio task's stack into <spec>.tasks (a stuck benchmark says where)."""
    with open(f"{sys.argv[1]}.tasks", "w") as fh:
        for t in asyncio.all_tasks():
            print(f"task {t.get_name()}:", file=fh)
            t.print_stack(limit=8, file=fh)


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Worker:
    def __init__(self, spec: dict):
        self.spec = spec
        self.agents: dict[str, FleetAgent] = {}

    def make(self, a: dict) -> FleetAgent:
        s = Settings([self.spec["url"]], self.spec["fleet"], seed_file=a["seed"], timeout_s=10.0,
                     jitter_s=float(self.spec.get("jitter_s", 5.0)))
        ident = Identity(names=_names(a["host"]), services={x.lower() for x in a.get("services", [])},
                         tags=set(a.get("tags", [])))
        opt = Options(heartbeat_s=float(self.spec.get("heartbeat_s", 30)), jitter_s=float(self.spec.get("jitter_s", 5)),
                      max_captures_per_hour=1000, max_profile="quick")
        ag = FleetAgent(s, a["host"], ident, StubRunner(None), FleetState(Path(a["state"])), opt)
        # measurement only: when each record reached the agent's code (splits NATS delivery from our decision)
        ag.seen_ns = {}
        inner = ag.on_entry

        async def on_entry(entry, late, _inner=inner, _seen=ag.seen_ns):
            _seen.setdefault(entry.key, time.monotonic_ns())
            await _inner(entry, late)
        ag.on_entry = on_entry
        return ag

    async def start(self, hosts: list[dict], limit: int = 64) -> float:
        sem = asyncio.Semaphore(limit)
        t0 = time.monotonic()

        async def one(a: dict) -> None:
            async with sem:
                ag = self.make(a)
                self.agents[a["host"]] = ag
                await ag.start()
                try:
                    await asyncio.wait_for(ag.ready.wait(), 30)
                except asyncio.TimeoutError:
                    print("DEBUG", a["host"], ag.summary(), ag.watching, file=sys.stderr, flush=True)
                    raise
        await asyncio.gather(*(one(a) for a in hosts))
        return time.monotonic() - t0

    def report(self, incident: str) -> dict:
        caps = []
        for host, ag in self.agents.items():
            r: StubRunner = ag.runner  # type: ignore[assignment]
            key = f"{self.spec['fleet']}.{incident}"
            for c in r.captures:
                if c["incident"] == incident:
                    caps.append([host, c["rev"], c["late"], r.started_ns.get((incident, c["rev"])),
                                 ag.seen_ns.get(key)])
        return {"captures": caps, "pending_status": sum(len(a.writer._pending) if a.writer else 0
                                                        for a in self.agents.values())}

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        rss0 = rss_kb()
        by_host = {a["host"]: a for a in self.spec["agents"]}
        while True:
            line = await reader.readline()
            if not line:
                break
            cmd = json.loads(line)
            c = cmd["cmd"]
            if c == "start":
                took = await self.start(self.spec["agents"])
                out = {"ready": len(self.agents), "rss_kb": rss_kb(), "rss0_kb": rss0, "setup_s": round(took, 3)}
            elif c == "report":
                out = self.report(cmd["incident"])
            elif c == "away":
                for h in cmd["hosts"]:
                    await self.agents.pop(h).stop()
                out = {"away": len(cmd["hosts"])}
            elif c == "back":
                t = {}
                for h in cmd["hosts"]:
                    self.back = h
                    t0 = time.monotonic_ns()
                    await self.start([by_host[h]])
                    t[h] = [t0, time.monotonic_ns()]
                out = {"back": len(cmd["hosts"]), "times_ns": t}
            elif c == "totals":
                out = {"totals": {h: len(a.runner.captures) for h, a in self.agents.items()}}
            elif c == "watching":
                out = {"watching": sum(a.watching for a in self.agents.values()),
                       "connected": sum(a.connected.is_set() for a in self.agents.values())}
            elif c == "quit":
                break
            else:
                out = {"error": f"unknown command {c}"}
            sys.stdout.write(json.dumps(out) + "\n")
            sys.stdout.flush()
        await asyncio.gather(*(a.stop() for a in self.agents.values()), return_exceptions=True)


def main() -> int:
    raise_nofile()
    if os.environ.get("GH_SIM_LOG"):                # the agents' log lines, e.g. GH_SIM_LOG=INFO
        from agent.daemon.kvlog import KVFormatter
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(KVFormatter())
        lg = logging.getLogger("goldenhour")
        lg.addHandler(h)
        lg.setLevel(os.environ["GH_SIM_LOG"])
    spec = json.loads(Path(sys.argv[1]).read_text())
    prof = os.environ.get("GH_SIM_PROFILE")       # a profile of the worker, for looking into the harness
    if prof:
        import cProfile
        cProfile.runctx("asyncio.run(Worker(spec).run())", globals(), {"spec": spec, "Worker": Worker},
                        f"{prof}.{os.getpid()}")
        return 0
    asyncio.run(Worker(spec).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
