"""bench_fleet.py's realistic tiers: the relay's webhook -> record latency, and real daemons over a WAN.

``relay_latency``: a real ``goldenhour relay`` (relay credential, generic tracker) on loopback
with nats-server; signed webhooks for new incidents; per delivery the HTTP answer (verify, parse,
create-if-absent in JetStream, then 202) and the time until a commander's watch sees the record.

``real_daemons``: N real ``goldenhour daemon`` processes, each in its own network namespace
(``fleet_netlab``), with its own identity, store and host credential, reaching nats-server
through a proxy that adds DELAY +- JITTER ms each way and nftables dropping LOSS % of packets in
both directions of every namespace; captures are real (the ``host`` collector; a full quick
capture on 20 hosts sharing 2 cores would measure the collectors competing), uploads go to
moto's S3 on the bridge. Per incident, from the webhook POST at the relay: each daemon's capture
start (its ``capture_started_at``, same machine, one wall clock) and every ``uploaded`` status.
Then what a host that was away costs: (a) its daemon stopped and started again (a host powered
off): from the start to its late capture start; (b) its link taken down for a few seconds while
an incident is declared, then back (a partition): from the link coming back to its capture start
-- TCP's retransmission backoff, not goldenhour, sets that one.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "fleet"))

from agent.fleet import keys
from agent.fleet.overview import read_bucket
from fleetlib import FleetDaemon, FleetEnv, RelayProc, generic_delivery

SERVICE = "checkout"


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def _statuses(env: FleetEnv, inc: str) -> dict[str, dict]:
    nc, b = await env.buckets("commander")
    try:
        return {json.loads(e.value)["host"]: json.loads(e.value)
                for e in await read_bucket(b[keys.STATUS], f"{env.fleet}.{keys.encode(inc)}.*")}
    finally:
        await nc.close()


def _wait_states(env: FleetEnv, inc: str, hosts: set[str], state: str, timeout: float) -> dict[str, dict]:
    """Statuses of ``inc`` once every one of ``hosts`` is in ``state`` (``"started"``: has a capture
    start), or what there is at the timeout."""
    deadline = time.monotonic() + timeout
    got: dict[str, dict] = {}
    while time.monotonic() < deadline:
        got = asyncio.run(_statuses(env, inc))
        if all((got.get(h, {}).get("capture_started_at") if state == "started" else got.get(h, {}).get("state")
                == state) for h in hosts):
            return got
        time.sleep(0.1)
    return got


def relay_latency(tmp: Path, n: int) -> dict[str, list[float]]:
    env = FleetEnv(tmp / "relay-env", hosts=("web-1",), fleet="bench")
    env.server.start()
    relay = None
    try:
        async def init():
            nc, _ = await env.buckets("commander", create=True)
            await nc.close()
        asyncio.run(init())
        relay = RelayProc(env, tmp / "relay").start()

        async def measure() -> dict[str, list[float]]:
            import httpx
            nc, b = await env.buckets("commander")
            seen: dict[str, float] = {}
            w = await b[keys.INCIDENTS].watch(f"{env.fleet}.*")

            async def collect():
                async for e in w:
                    if e is not None:
                        seen.setdefault(e.key, time.monotonic())
            task = asyncio.create_task(collect())
            answer, visible = [], []
            async with httpx.AsyncClient(timeout=30) as c:
                for i in range(n + 1):
                    inc = f"RELAY-{i}"
                    raw, h = generic_delivery(inc, services=[SERVICE], delivery=f"r{i}")
                    t0 = time.monotonic()
                    r = await c.post(f"{relay.url}/v1/webhooks/generic", content=raw, headers=h)
                    t1 = time.monotonic()
                    assert r.status_code == 202, r.text
                    key = keys.incident_key(env.fleet, inc)
                    while key not in seen:
                        await asyncio.sleep(0.001)
                    if i:                       # the first one warms the relay's connection and the bucket
                        answer.append((t1 - t0) * 1000)
                        visible.append((seen[key] - t0) * 1000)
            task.cancel()
            await w.stop()
            await nc.close()
            return {"answer_ms": answer, "visible_ms": visible}
        return asyncio.run(measure())
    finally:
        if relay:
            relay.stop()
        env.server.stop()


def real_daemons(tmp: Path, n: int, delay_ms: float, jitter_ms: float, loss: float, incidents: int) -> dict[str, Any]:
    import fleet_netlab as nl

    from tests.helpers.moto import free_port
    hosts = [f"real-{i:02d}" for i in range(n)]
    env = FleetEnv(tmp / "real-env", hosts=tuple(hosts), fleet="bench")
    lab = nl.Lab()
    procs: list[subprocess.Popen] = []
    daemons: list[FleetDaemon] = []
    relay = None
    out: dict[str, Any] = {"start_ms": [], "all_uploaded_s": [], "dups": 0, "missed": 0}
    try:
        env.server.host = lab.gw
        env.server.start()
        mport, pport = free_port(), free_port()
        moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", lab.gw, "-p", str(mport)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        procs.append(moto)
        procs.append(nl.start_proxy(f"{lab.gw}:{pport}", f"{lab.gw}:{env.server.port}", delay_ms, jitter_ms))
        s3 = (f"http://{lab.gw}:{mport}", "evidence")
        _bucket(s3)

        async def init():
            nc, _ = await env.buckets("commander", create=True)
            await nc.close()
        asyncio.run(init())
        for i, h in enumerate(hosts):
            ns, addr = lab.add_host(i)
            lab.loss(ns, loss)
            d = FleetDaemon(env, h, tmp / "real" / h, services=[SERVICE], s3=s3, netns=ns, listen=f"{addr}:0",
                            servers=[f"nats://{lab.gw}:{pport}"],
                            fleet_extra="upload_rate = 50\nupload_spread_max_s = 5\n")
            daemons.append(d)
        for d in daemons:                                   # start all, then wait for all
            d.start(timeout=120, wait_fleet=False)
        for d in daemons:
            d.wait(lambda hh: (hh.get("fleet") or {}).get("watching"), 120, "fleet watch")
        relay = RelayProc(env, tmp / "real-relay").start()
        for k in range(incidents):
            inc = f"REAL-{k}"
            t0 = time.time()
            r = relay.post(generic_delivery(inc, services=[SERVICE], delivery=f"real-{k}"))
            assert r.status_code == 202, r.text
            got = _wait_states(env, inc, set(hosts), "uploaded", 180)
            t_all = max((_ts(s["uploaded_at"]) for s in got.values() if s.get("uploaded_at")), default=None)
            out["start_ms"] += [(_ts(s["capture_started_at"]) - t0) * 1000 for s in got.values()
                                if s.get("capture_started_at")]
            out["all_uploaded_s"].append(t_all - t0 if t_all and len(got) == n else None)
            out["missed"] += n - sum(1 for s in got.values() if s.get("state") == "uploaded")
        out["dups"] = sum(max(0, len(d.bundles(f"REAL-{k}")) - 1) for d in daemons for k in range(incidents))
        # (a) a host powered off during an incident, then back
        d0 = daemons[0]
        d0.stop()
        r = relay.post(generic_delivery("AWAY-STOP", services=[SERVICE], delivery="away-stop"))
        assert r.status_code == 202, r.text
        _wait_states(env, "AWAY-STOP", set(hosts[1:]), "uploaded", 120)
        t0 = time.time()
        d0.start(timeout=120, wait_fleet=False)
        got = _wait_states(env, "AWAY-STOP", {d0.host}, "uploaded", 120)
        st = got.get(d0.host, {})
        out["back_after_stop_ms"] = (_ts(st["capture_started_at"]) - t0) * 1000 if st.get("late") else None
        # (b) a partition: the link down while an incident is declared, then back
        ns0 = d0.netns
        lab.down(ns0)
        r = relay.post(generic_delivery("AWAY-LINK", services=[SERVICE], delivery="away-link"))
        assert r.status_code == 202, r.text
        _wait_states(env, "AWAY-LINK", set(hosts[1:]), "uploaded", 120)
        time.sleep(3)
        t0 = time.time()
        lab.up(ns0)
        st = _wait_states(env, "AWAY-LINK", {d0.host}, "started", 180).get(d0.host, {})
        out["back_after_link_ms"] = (_ts(st["capture_started_at"]) - t0) * 1000 if st.get("capture_started_at") \
            else None
        out["violations"] = env.server.log.read_text().count("Violation")
        return out
    finally:
        for d in daemons:
            d.stop(timeout=30)
        if relay:
            relay.stop()
        for p in procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        env.server.stop()
        lab.close()


def _bucket(s3: tuple[str, str]) -> None:
    import boto3
    deadline = time.monotonic() + 60
    while True:
        try:
            boto3.client("s3", endpoint_url=s3[0], region_name="us-east-1", aws_access_key_id="testing",
                         aws_secret_access_key="testing").create_bucket(Bucket=s3[1])
            return
        except Exception:  # moto still starting
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
