"""The daemon's fleet watcher (real code path, real nats-server), with the capture stubbed.

Exactly once per capture revision, whatever happens: duplicates, reconnects, restarts,
server restarts, wiped local state. Hosts that were away capture on return only while the
incident is open and before its deadline. The real daemon does the same in
test_fleet_daemon.py; these tests cover the decision rules quickly.
"""
from __future__ import annotations

import asyncio
import json
import shutil

from agent.fleet import incidents, keys
from agent.fleet.records import Scope, make_incident
from agent.fleet.overview import read_bucket
from fleetlib import FLEET, start_agent, until


def declare(b, inc: str, deadline_s: float = 3600, delivery: str = "", **scope):
    return incidents.declare(b[keys.INCIDENTS], incidents.new_record(
        FLEET, inc, scope=Scope(**scope), profile="quick", deadline_s=deadline_s), delivery=delivery)


async def statuses(b, inc: str) -> dict[str, dict]:
    out = {}
    for e in await read_bucket(b[keys.STATUS], f"{FLEET}.{keys.encode(inc)}.*"):
        d = json.loads(e.value)
        out[d["host"]] = d
    return out


def test_concerned_hosts_capture_once_and_recapture_once_more(fleet, tmp_path):
    async def body():
        w1 = await start_agent(fleet, "web-1", tmp_path / "w1", services=["checkout"])
        w2 = await start_agent(fleet, "web-2", tmp_path / "w2", services=["checkout"])
        db = await start_agent(fleet, "db-1.example.com", tmp_path / "db", tags=["role=db"])
        nc, b = await fleet.buckets("commander")
        out = await declare(b, "INC-1", delivery="pagerduty/d1", services=["checkout"])
        assert out.status == "created"
        # the same delivery at a second relay, and a retry with another delivery id: no change
        assert (await declare(b, "INC-1", delivery="pagerduty/d1", services=["checkout"])).status == "duplicate"
        assert (await declare(b, "INC-1", delivery="pagerduty/d2", services=["checkout"])).status == "duplicate"
        await until(lambda: w1.counts.get("status_uploaded") and w2.counts.get("status_uploaded"))
        for a in (w1, w2):
            await a.writer.flushed(10)
        got = await statuses(b, "INC-1")
        assert set(got) == {"web-1", "web-2"}
        for h, st in got.items():
            assert st["state"] == "uploaded" and st["capture_rev"] == 1 and not st["late"]
            assert st["bundle"]["key"].startswith(f"incidents/INC-1/{h}/") and len(st["bundle"]["sha256"]) == 64
            assert st["matched_by"] == "service checkout"
        rc = await incidents.recapture(b[keys.INCIDENTS], FLEET, "INC-1", delivery="commander/x")
        assert rc.status == "recaptured" and rc.record.capture_rev == 2
        assert (await incidents.recapture(b[keys.INCIDENTS], FLEET, "INC-1", delivery="commander/x")).status == \
            "duplicate"
        await until(lambda: len(w1.runner.captures) == 2 and len(w2.runner.captures) == 2)
        await until(lambda: w1.counts.get("status_uploaded") == 2 and w2.counts.get("status_uploaded") == 2)
        # a scope that grows reaches the new host, and only it
        up = await declare(b, "INC-1", delivery="alertmanager/g", tags=["role=db"])
        assert up.status == "updated"
        await until(lambda: len(db.runner.captures) == 1)
        await asyncio.sleep(0.5)
        assert [len(a.runner.captures) for a in (w1, w2, db)] == [2, 2, 1]
        for a in (w1, w2, db):
            await a.stop()
        await nc.close()
    asyncio.run(body())


def test_host_away_during_the_trigger(fleet, tmp_path):
    """Captures on return (late) while open; never after a resolve or past the deadline."""
    async def body():
        nc, b = await fleet.buckets("commander")
        await declare(b, "OPEN-1", hosts=["web-1"])
        await declare(b, "RESOLVED-1", hosts=["web-1"])
        await incidents.resolve(b[keys.INCIDENTS], FLEET, "RESOLVED-1")
        past = make_incident(FLEET, "PAST-1", deadline_s=-60, scope=Scope(hosts=["web-1"]))
        await b[keys.INCIDENTS].create(past.key, past.encode())
        w1 = await start_agent(fleet, "web-1", tmp_path / "w1")
        await until(lambda: w1.counts.get("status_uploaded") == 1 and w1.counts.get("status_expired") == 1)
        await w1.writer.flushed(10)
        assert [c["incident"] for c in w1.runner.captures] == ["OPEN-1"]
        assert w1.runner.captures[0]["late"] is True
        got = {**await statuses(b, "OPEN-1"), **{f"past:{k}": v for k, v in (await statuses(b, "PAST-1")).items()}}
        assert got["web-1"]["late"] is True and got["web-1"]["state"] == "uploaded"
        assert got["past:web-1"]["state"] == "expired"
        assert await statuses(b, "RESOLVED-1") == {}
        await w1.stop()
        await nc.close()
    asyncio.run(body())


def test_restart_and_wiped_state_capture_nothing_twice(fleet, tmp_path):
    async def body():
        nc, b = await fleet.buckets("commander")
        w1 = await start_agent(fleet, "web-1", tmp_path / "w1")
        await declare(b, "INC-2", all=True)
        await until(lambda: w1.counts.get("status_uploaded") == 1)
        await w1.writer.flushed(10)
        await w1.stop()
        again = await start_agent(fleet, "web-1", tmp_path / "w1")          # same local state
        assert again.counts.get("duplicate") == 1 and again.runner.captures == []
        await again.stop()
        shutil.rmtree(tmp_path / "w1")                                       # a wiped disk
        fresh = await start_agent(fleet, "web-1", tmp_path / "w1")
        assert fresh.runner.captures == [] and fresh.counts.get("duplicate") == 1
        await fresh.stop()
        await nc.close()
    asyncio.run(body())


def test_server_restart_loses_no_trigger_and_doubles_no_capture(fleet, tmp_path):
    async def body():
        w1 = await start_agent(fleet, "web-1", tmp_path / "w1")
        w2 = await start_agent(fleet, "web-2", tmp_path / "w2")
        nc, b = await fleet.buckets("commander")
        await declare(b, "INC-3", all=True)
        await until(lambda: w1.counts.get("status_uploaded") and w2.counts.get("status_uploaded"))
        await nc.close()
        fleet.server.restart()
        await until(lambda: w1.connected.is_set() and w2.connected.is_set() and w1.watching and w2.watching,
                    what="reconnected and watching")
        nc, b = await fleet.buckets("commander")
        await declare(b, "INC-4", all=True)                 # after the restart: still delivered
        await until(lambda: len(w1.runner.captures) == 2 and len(w2.runner.captures) == 2)
        await asyncio.sleep(0.5)
        for a in (w1, w2):
            assert [c["incident"] for c in a.runner.captures] == ["INC-3", "INC-4"]
            await a.stop()
        await nc.close()
    asyncio.run(body())


def test_resolve_cancels_a_capture_not_started(fleet, tmp_path):
    async def body():
        from tests.helpers.fleet_stub import StubRunner
        runner = StubRunner(tmp_path / "b")
        runner.gate = asyncio.Event()
        w1 = await start_agent(fleet, "web-1", tmp_path / "w1", runner=runner)
        nc, b = await fleet.buckets("commander")
        await declare(b, "INC-5", all=True)
        await until(lambda: "INC-5" in w1.queued)
        await incidents.resolve(b[keys.INCIDENTS], FLEET, "INC-5")
        await until(lambda: w1.counts.get("cancelled") == 1)
        runner.gate.set()
        await w1.writer.flushed(10)
        await asyncio.sleep(0.3)
        assert runner.captures == []
        st = (await statuses(b, "INC-5"))["web-1"]
        assert st["state"] == "skipped" and "resolved" in st["error"]
        await w1.stop()
        await nc.close()
    asyncio.run(body())


def test_bad_records_are_refused_and_the_cap_holds(fleet, tmp_path):
    async def body():
        w1 = await start_agent(fleet, "web-1", tmp_path / "w1", max_captures_per_hour=1)
        nc, b = await fleet.buckets("commander")
        kv = b[keys.INCIDENTS]
        await kv.put(f"{FLEET}.{keys.encode('../../etc')}", make_incident(FLEET, "X-1", deadline_s=60).encode()
                     .replace(b'"X-1"', b'"../../etc"'))
        await kv.put(keys.incident_key(FLEET, "GARBAGE"), b"{not json")
        await kv.put(keys.incident_key(FLEET, "OTHER"), make_incident(FLEET, "SOMETHING", deadline_s=60,
                                                                      scope=Scope(all=True)).encode())
        await until(lambda: w1.counts.get("refused") == 3)
        await declare(b, "INC-6", all=True)
        await declare(b, "INC-7", all=True)
        await until(lambda: w1.counts.get("capped") == 1)
        assert [c["incident"] for c in w1.runner.captures] == ["INC-6"]
        await w1.writer.flushed(10)
        st = (await statuses(b, "INC-7"))["web-1"]
        assert st["state"] == "skipped" and "max_captures_per_hour" in st["error"]
        await w1.stop()
        await nc.close()
    asyncio.run(body())


def test_the_incidents_bucket_holds_a_consumer_per_host(tmp_path):
    """nats-server 2.15 allows a stream 1,000 consumers unless it names its own limit: the buckets name theirs.

    The server here defaults to 2 per stream; three hosts and a commander's watch still work."""
    from fleetlib import FleetEnv
    env = FleetEnv(tmp_path / "env", js_limits="default_max_consumers: 2")
    env.server.start()

    async def body():
        nc, b = await env.buckets("commander", create=True, max_hosts=3)
        info = await nc.jetstream().stream_info(keys.stream(keys.INCIDENTS))
        assert info.config.max_consumers == 106
        agents = [await start_agent(env, h, tmp_path / h) for h in ("web-1", "web-2", "db-1.example.com")]
        await declare(b, "INC-8", all=True)
        await until(lambda: all(a.runner.captures for a in agents))
        for a in agents:
            await a.stop()
        await nc.close()
    try:
        asyncio.run(body())
    finally:
        env.server.stop()


def test_the_ring_brings_a_record_first_and_the_watch_copy_is_skipped(fleet, tmp_path):
    async def body():
        w1 = await start_agent(fleet, "web-1", tmp_path / "w1")
        nc, b = await fleet.buckets("commander")
        out = await declare(b, "RING-1", all=True)
        assert await incidents.ring(nc, out)
        await until(lambda: w1.runner.captures)
        await until(lambda: w1.counts.get("ring") == 1 and w1.counts.get("seen_revision") == 1)
        assert len(w1.runner.captures) == 1 and w1.runner.captures[0]["late"] is False
        # a ring message claiming a revision far beyond the stream's is not remembered
        await nc.publish(keys.ring_subject(FLEET), out.record.encode(),
                         headers={incidents.KEY_HEADER: out.record.key, incidents.REVISION_HEADER: "999999999"})
        await nc.flush()
        await asyncio.sleep(0.3)
        assert w1.revisions[out.record.key] == out.revision
        up = await incidents.recapture(b[keys.INCIDENTS], FLEET, "RING-1")
        await until(lambda: len(w1.runner.captures) == 2)    # the watch still delivers the next revision
        assert up.record.capture_rev == 2
        await w1.stop()
        await nc.close()
    asyncio.run(body())
