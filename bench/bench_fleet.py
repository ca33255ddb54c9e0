#!/usr/bin/env python3
"""Benchmark: one incident declaration reaching every concerned host through NATS JetStream.

Three tiers, each labelled in the results for what it shows (README "Fleet", bench/README.md):

1. **Simulated agents** -- 10, 100 and 1,000 (``--quick``: 10 and 100): each a real
   ``FleetAgent`` with its own NATS connection, its own enrolled nkey credential (a host's
   permissions) and its own state directory, packed ``PER_WORKER`` to a process
   (``bench/fleet_sim.py``); only the capture is stubbed. The bench declares incidents the
   way the relay does (``agent.fleet.incidents.declare`` with the relay's credential) and
   takes, per incident: declaration -> each agent's capture start (``time.monotonic_ns``, one
   clock for every process of this machine), and declaration -> every ``uploaded`` status
   seen by a commander's watch. It checks exactly one capture per agent (duplicates and
   misses are counted, the target is zero of each), memory per agent (the workers' RSS
   growth over their RSS before any agent, divided by the agents), the server's CPU time
   per fan-out, what an agent that was away costs when it comes back (connect, replay,
   late capture), and how long 1,000 agents take to watch again after a server restart
   (each waits a random 0-5 s first, ``fleet.reconnect_jitter_s``).
   *Not shown*: network latency and loss (loopback), and a fair server figure (the server
   shares 2 cores with every agent): an upper bound for broker + client cost.
2. **Real daemons in network namespaces** (``fleet_real.real_daemons``): 10 (``--quick``: 5)
   real ``goldenhour daemon`` processes, each in its own namespace, through a proxy adding
   20 +- 5 ms each way and nftables dropping 1 % of packets; a signed webhook at a real relay;
   real captures and uploads to moto's S3; what a host that was away costs.
3. **Relay** (``fleet_real.relay_latency``): a signed webhook at ``goldenhour relay`` -> 202
   (the record is stored) and -> the record seen by a watcher.

    .venv/bin/python bench/bench_fleet.py [--quick]
"""
from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.fleet import conn, enroll, incidents, keys
from agent.fleet.records import Scope
from tests.helpers.nats_server import NatsServer

FLEET = "bench"
PER_WORKER = 250
SERVICE = "checkout"


def _row(name: str, unit: str, values: list[float], target: str = "", met: bool | None = None,
         notes: str = "") -> dict[str, Any]:
    vals = [v for v in values if v is not None]
    r: dict[str, Any] = {"name": name, "unit": unit, "median": round(statistics.median(vals), 4) if vals else None,
                         "min": round(min(vals), 4) if vals else None, "max": round(max(vals), 4) if vals else None,
                         "runs": len(vals), "notes": notes}
    if target:
        r["target"] = target
        r["met"] = met
    return r


def say(*a: Any) -> None:
    print("bench_fleet:", *a, file=sys.stderr, flush=True)


def _pct(vals: list[float], q: float) -> float:
    v = sorted(vals)
    return v[min(len(v) - 1, max(0, int(round(q / 100 * (len(v) - 1)))))]


def _cpu_s(pid: int) -> float:
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Fleet:
    """The server, the enrolled principals and the simulated workers."""

    def __init__(self, tmp: Path, n_max: int):
        self.tmp = tmp
        self.hosts = [f"sim-{i:04d}" for i in range(n_max)]
        princ, self.seeds = [], {}
        seeds = tmp / "seeds"
        seeds.mkdir(parents=True)
        for kind, name in [("host", h) for h in self.hosts] + [("relay", "bench"), ("commander", "bench")]:
            p, seed = enroll.make(kind, name, FLEET)
            f = seeds / f"{kind}-{name}.nk"
            f.write_bytes(seed + b"\n")
            f.chmod(0o600)
            self.seeds[f"{kind}-{name}"] = str(f)
            princ.append(p)
        self.server = NatsServer(tmp / "nats", enroll.render_users(princ))
        self.workers: list[subprocess.Popen] = []
        # the agents' state files on tmpfs: 250 agents sharing one disk is the harness, not a host
        shm = Path("/dev/shm")
        self.state = Path(tempfile.mkdtemp(prefix="gh-bench-fleet-", dir=shm if shm.is_dir() else tmp))

    def settings(self, who: str) -> conn.Settings:
        return conn.Settings([self.server.url], FLEET, seed_file=self.seeds[who], timeout_s=10)

    async def session(self, who: str, create: bool = False):
        s = self.settings(who)
        nc = await conn.connect(s, name=who, inbox_prefix=conn.inbox_for(s, who.split("-", 1)[0]), forever=False)
        js = nc.jetstream(timeout=10)
        return nc, await (conn.ensure_buckets(js) if create else conn.open_buckets(js))

    # -- workers --------------------------------------------------------------------------
    def spawn(self, n: int, tag: str, jitter_s: float = 5.0) -> None:
        per = PER_WORKER if n > PER_WORKER else n
        for w, start in enumerate(range(0, n, per)):
            agents = [{"host": h, "seed": self.seeds[f"host-{h}"], "services": [SERVICE],
                       "state": str(self.state / tag / h)} for h in self.hosts[start:start + per]]
            spec = self.tmp / f"spec-{tag}-{w}.json"
            spec.write_text(json.dumps({"url": self.server.url, "fleet": FLEET, "agents": agents,
                                        "jitter_s": jitter_s, "heartbeat_s": 30}))
            self.workers.append(subprocess.Popen([sys.executable, str(ROOT / "bench" / "fleet_sim.py"), str(spec)],
                                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                                 cwd=ROOT, start_new_session=True))

    def ask(self, cmd: dict[str, Any], workers: list[subprocess.Popen] | None = None) -> list[dict[str, Any]]:
        ws = workers if workers is not None else self.workers
        for p in ws:
            assert p.stdin is not None
            p.stdin.write(json.dumps(cmd) + "\n")
            p.stdin.flush()
        out = []
        for p in ws:
            assert p.stdout is not None
            line = p.stdout.readline()
            if not line:
                raise RuntimeError(f"a simulated worker ended (exit {p.poll()})")
            out.append(json.loads(line))
        return out

    def stop_workers(self) -> None:
        for p in self.workers:
            try:
                assert p.stdin is not None
                p.stdin.write('{"cmd": "quit"}\n')
                p.stdin.flush()
            except (OSError, ValueError):
                pass
        for p in self.workers:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
                p.wait(10)
        self.workers = []


async def _fanout(fl: Fleet, n: int, inc: str, timeout: float = 120) -> dict[str, Any]:
    """Declare ``inc`` (relay credential) and time the fan-out to ``n`` agents."""
    nc_c, bc = await fl.session("commander-bench")
    nc_r, br = await fl.session("relay-bench")
    uploaded: dict[str, int] = {}
    w = await bc[keys.STATUS].watch(f"{FLEET}.{keys.encode(inc)}.*")

    async def collect():
        async for e in w:
            if e is None or not e.value:
                continue
            d = json.loads(e.value)
            if d["state"] == "uploaded" and d["host"] not in uploaded:
                uploaded[d["host"]] = time.monotonic_ns()
    task = asyncio.create_task(collect())
    rec = incidents.new_record(FLEET, inc, scope=Scope(services=[SERVICE]), profile="quick", deadline_s=3600)
    cpu0 = _cpu_s(fl.server.proc.pid)
    t0 = time.monotonic_ns()
    out = await incidents.declare(br[keys.INCIDENTS], rec, delivery=f"bench/{inc}")
    await incidents.ring(nc_r, out)                 # as the relay does: the record on the fast path too
    t_rec = time.monotonic_ns()
    assert out.status == "created", out
    deadline = time.monotonic() + timeout
    while len(uploaded) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    t_all = max(uploaded.values()) if len(uploaded) >= n else None
    cpu1 = _cpu_s(fl.server.proc.pid)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await w.stop()
    await nc_c.close()
    await nc_r.close()
    caps = [c for r in fl.ask({"cmd": "report", "incident": inc}) for c in r["captures"]]
    say(f"{inc}: {len(caps)} captures, {len(uploaded)} uploaded statuses, record {(t_rec - t0) / 1e6:.1f} ms")
    per_host: dict[str, int] = {}
    for c in caps:
        per_host[c[0]] = per_host.get(c[0], 0) + 1
    lat = [(c[3] - t0) / 1e6 for c in caps if c[3]]
    delivered = [(c[4] - t0) / 1e6 for c in caps if c[4]]
    return {"lat_ms": lat, "delivered_ms": delivered, "record_ms": (t_rec - t0) / 1e6,
            "all_status_s": (t_all - t0) / 1e9 if t_all else None,
            "dups": sum(c - 1 for c in per_host.values()), "missed": n - len(per_host), "server_cpu_s": cpu1 - cpu0}


def simulated(fl: Fleet, sizes: list[int], reps: dict[int, int]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for n in sizes:
        fl.spawn(n, f"n{n}")
        t0 = time.monotonic()
        ready = fl.ask({"cmd": "start"})
        setup = time.monotonic() - t0
        mem_kb = sum(r["rss_kb"] - r["rss0_kb"] for r in ready) / n
        server_mb = _rss_mb(fl.server.proc.pid)
        lat_all, p99s, recs, alls, dups, missed, cpu = [], [], [], [], 0, 0, []
        for i in range(reps[n] + 1):
            r = asyncio.run(_fanout(fl, n, f"SIM-{n}-{i}"))
            if i == 0:              # warm-up: first record of a bucket, first watch deliveries
                continue
            lat_all += r["lat_ms"]
            p99s.append(_pct(r["lat_ms"], 99) if r["lat_ms"] else None)
            recs.append(r["record_ms"])
            alls.append(r["all_status_s"])
            dups += r["dups"]
            missed += r["missed"]
            cpu.append(r["server_cpu_s"])
        tag = f"{n} simulated agents"
        note = f"{len(fl.workers)} worker process(es); loopback; capture stubbed; {reps[n]} incidents"
        p99 = statistics.median([p for p in p99s if p is not None]) if any(p is not None for p in p99s) else None
        rows.append(_row(f"{tag}: declaration -> capture start, p50", "ms", [_pct(lat_all, 50)] if lat_all else [],
                         notes=note))
        rows.append(_row(f"{tag}: declaration -> capture start, p99", "ms", p99s,
                         "< 1000 ms" if n >= 1000 else "", (p99 or 1e9) < 1000 if n >= 1000 else None,
                         "per incident; the median is over incidents; the record reaches agents by the ring "
                         "(core NATS) and by the watch, whichever is first"))
        rows.append(_row(f"{tag}: declaration -> capture start, max", "ms", [max(lat_all)] if lat_all else []))
        rows.append(_row(f"{tag}: declaration -> every 'uploaded' status seen", "s", alls,
                         notes="commander's watch on GH_STATUS; upload stubbed, no spread"))
        rows.append(_row(f"{tag}: duplicate + missed captures", "captures", [dups + missed], "0",
                         dups + missed == 0, f"{dups} duplicates, {missed} missed over {reps[n]} incidents"))
        rows.append(_row(f"{tag}: memory per agent", "KiB", [mem_kb],
                         notes="worker RSS growth / agents (connection, watch, state, asyncio tasks)"))
        rows.append(_row(f"{tag}: set-up (connect, heartbeat, watch)", "s", [setup]))
        rows.append(_row(f"{tag}: server CPU per fan-out", "ms", [c * 1000 for c in cpu],
                         notes=f"nats-server RSS {server_mb:.0f} MB with {n} agents"))
        if n == sizes[-1]:
            rows += _away_and_back(fl, n)
            rows += _server_restart(fl, n)
        fl.stop_workers()
    return rows


def _away_and_back(fl: Fleet, n: int) -> list[dict[str, Any]]:
    """One agent away while an incident is declared; on return: connect, replay, late capture."""
    host = fl.hosts[0]
    w0 = fl.workers[:1]
    costs = []
    for i in range(3):
        fl.ask({"cmd": "away", "hosts": [host]}, w0)
        inc = f"AWAY-{n}-{i}"

        async def declare(inc: str = inc):
            nc, b = await fl.session("relay-bench")
            await incidents.ring(nc, await incidents.declare(b[keys.INCIDENTS], incidents.new_record(
                FLEET, inc, scope=Scope(services=[SERVICE]), profile="quick", deadline_s=3600)))
            await nc.close()
        asyncio.run(declare())
        time.sleep(1.0)         # the others capture meanwhile
        back = fl.ask({"cmd": "back", "hosts": [host]}, w0)[0]
        t_start = back["times_ns"][host][0]
        caps = fl.ask({"cmd": "report", "incident": inc}, w0)[0]["captures"]
        mine = [c for c in caps if c[0] == host]
        assert len(mine) == 1 and mine[0][2] is True, mine
        costs.append((mine[0][3] - t_start) / 1e6)
    return [_row(f"{n} simulated agents: agent back after an incident -> its late capture starts", "ms", costs,
                 notes="new connection, bucket binds, heartbeat, watch replay of every incident record "
                       f"({n} agents connected meanwhile)")]


def _server_restart(fl: Fleet, n: int) -> list[dict[str, Any]]:
    """Restart nats-server under n agents: time until every agent watches again; then nothing twice."""
    before = sum(sum(r["totals"].values()) for r in fl.ask({"cmd": "totals"}))
    fl.server.restart()
    t0 = time.monotonic()
    while True:
        r = fl.ask({"cmd": "watching"})
        if sum(x["watching"] for x in r) >= n:
            break
        if time.monotonic() - t0 > 120:
            break
        time.sleep(0.2)
    took = time.monotonic() - t0
    after = asyncio.run(_fanout(fl, n, f"AFTER-RESTART-{n}"))
    total = sum(sum(r["totals"].values()) for r in fl.ask({"cmd": "totals"}))
    dup = abs(total - before - n) + after["dups"] + after["missed"]
    return [_row(f"{n} simulated agents: server restart -> every agent watching again", "s", [took],
                 notes="agents wait a random 0-5 s (fleet.reconnect_jitter_s) before re-watching"),
            _row(f"{n} simulated agents: captures repeated or missed across the restart", "captures", [dup], "0",
                 dup == 0, "the replayed records capture nothing twice; a record after the restart reaches all")]


def realistic(tmp: Path, quick: bool) -> list[dict[str, Any]]:
    import fleet_real
    rows = []
    say("relay latency")
    r = fleet_real.relay_latency(tmp, 10 if quick else 20)
    rows.append(_row("relay: signed webhook -> 202 (record stored in JetStream)", "ms", r["answer_ms"],
                     "< 1000 ms (PagerDuty waits 5 s)", max(r["answer_ms"]) < 1000,
                     "verify + parse + create-if-absent; loopback"))
    rows.append(_row("relay: signed webhook -> record seen by a watcher", "ms", r["visible_ms"]))
    n, delay, jitter, loss = (5 if quick else 10), 20.0, 5.0, 1.0
    say(f"{n} real daemons")
    d = fleet_real.real_daemons(tmp, n, delay, jitter, loss, incidents=2)
    net = f"{n} real daemons, each in a network namespace, {delay:g} +- {jitter:g} ms each way, {loss:g} % loss"
    lat = d["start_ms"]
    rows.append(_row(f"{net}: webhook at the relay -> capture start, p50", "ms", [_pct(lat, 50)] if lat else [],
                     notes="real captures (host collector), real uploads to moto S3; 2 incidents"))
    rows.append(_row(f"{net}: webhook -> capture start, p99", "ms", [_pct(lat, 99)] if lat else [], "< 1000 ms",
                     bool(lat) and _pct(lat, 99) < 1000))
    rows.append(_row(f"{net}: webhook -> capture start, max", "ms", [max(lat)] if lat else []))
    rows.append(_row(f"{net}: webhook -> every 'uploaded' status", "s", d["all_uploaded_s"],
                     notes="capture + upload spread (<= 5 s here) + upload"))
    rows.append(_row(f"{net}: duplicate + missed captures", "captures", [d["dups"] + d["missed"]], "0",
                     d["dups"] + d["missed"] == 0, f"{d['dups']} duplicates, {d['missed']} missed"))
    rows.append(_row(f"{net}: host powered off during an incident, started again -> its late capture starts", "ms",
                     [d["back_after_stop_ms"]], notes="daemon start, connect, heartbeat, watch replay"))
    rows.append(_row(f"{net}: host's link down during an incident, back -> its capture starts", "ms",
                     [d["back_after_link_ms"]],
                     notes="the connection survives a short partition; TCP's retransmission backoff sets this"))
    rows.append(_row(f"{net}: permission violations at the server", "count", [d["violations"]], "0",
                     d["violations"] == 0, "every daemon and the relay within exactly their own rights"))
    return rows


def run(quick: bool) -> dict[str, Any]:
    # run.py stops an area past its budget with SIGTERM: leave through the finally blocks, which stop
    # our own server and workers (they run in their own sessions) and remove the scratch directories
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sizes = [10, 100] if quick else [10, 100, 1000]
    reps = {10: 5, 100: 5, 1000: 3}
    tmp = Path(tempfile.mkdtemp(prefix="gh-bench-fleet-"))
    fl = Fleet(tmp, max(sizes))
    rows: list[dict[str, Any]] = []
    try:
        fl.server.start()

        async def init():
            nc, _ = await fl.session("commander-bench", create=True)
            await nc.close()
        asyncio.run(init())
        rows += simulated(fl, sizes, reps)
        fl.server.stop()
        rows += realistic(tmp, quick)
    finally:
        fl.stop_workers()
        fl.server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(fl.state, ignore_errors=True)
    return {"area": "fleet", "results": rows,
            "commands": [".venv/bin/python bench/bench_fleet.py" + (" --quick" if quick else "")]}


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
