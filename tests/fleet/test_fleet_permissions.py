"""Per-principal permissions, proven on the real server: a host writes only its own keys.

The allow-lists come from ``agent.fleet.enroll``; the server refuses the rest with a
permissions violation (the client sees its request time out, the server logs the refusal).
"""
from __future__ import annotations

import asyncio

import nats.errors
from agent.fleet import conn, incidents, keys
from agent.fleet.records import Scope, StatusRecord
from fleetlib import FLEET, start_agent, until


async def _publish(nc, subject: str) -> None:
    await nc.publish(subject, b"{}")
    await nc.flush()
    await asyncio.sleep(30)            # the violation arrives asynchronously; the waiter wins


class Refusals:
    """Collects the server's permission violations (nats-py hands them to the error callback)."""

    def __init__(self):
        self.seen: list[str] = []
        self.new = asyncio.Event()

    async def cb(self, e):
        self.seen.append(str(e))
        self.new.set()

    async def refused(self, coro, what: str) -> bool:
        """True when the server refuses ``coro``'s request (a violation naming ``what``), or it times out."""
        self.new.clear()
        n = len(self.seen)
        task = asyncio.ensure_future(coro)
        waiter = asyncio.ensure_future(self._wait_for(what, n))
        done, _ = await asyncio.wait({task, waiter}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        for t in (task, waiter):
            t.cancel()
        await asyncio.gather(task, waiter, return_exceptions=True)
        if waiter in done:
            return True
        if task in done and task.exception() is not None:
            return isinstance(task.exception(), (nats.errors.TimeoutError, asyncio.TimeoutError))
        return False

    async def _wait_for(self, what: str, n: int) -> None:
        while not any(what.lower() in s.lower() for s in self.seen[n:]):
            self.new.clear()
            await self.new.wait()


def test_host_credential_writes_only_its_own_keys(fleet):
    async def body():
        rf = Refusals()
        nc_r, b_r = await fleet.buckets("relay")
        await incidents.declare(b_r[keys.INCIDENTS], incidents.new_record(FLEET, "INC-1", scope=Scope(all=True),
                                                                          profile="quick", deadline_s=3600))
        nc = await fleet.connect("host-web-1")
        nc._error_cb = rf.cb
        b = await conn.open_buckets(nc.jetstream(timeout=2))
        own = StatusRecord(fleet=FLEET, incident_id="INC-1", host="web-1", state="seen", capture_rev=1)
        await b[keys.STATUS].put(own.key, own.encode())
        assert (await b[keys.STATUS].get(own.key)).value == own.encode()       # reads its own status back
        await b[keys.HOSTS].put(keys.host_key(FLEET, "web-1"), b"{}")
        other = StatusRecord(fleet=FLEET, incident_id="INC-1", host="web-2", state="uploaded", capture_rev=1)
        assert await rf.refused(b[keys.STATUS].put(other.key, other.encode()), other.key)
        assert await rf.refused(b[keys.STATUS].get(other.key), f"direct.get.kv_gh_status.$kv.gh_status.{other.key}")
        assert await rf.refused(b[keys.HOSTS].put(keys.host_key(FLEET, "web-2"), b"{}"), "$kv.gh_hosts.prod.web-2")
        assert await rf.refused(b[keys.INCIDENTS].put(keys.incident_key(FLEET, "INC-2"), b"{}"), "gh_incidents")
        assert await rf.refused(b[keys.INCIDENTS].put(keys.incident_key(FLEET, "INC-1"), b"{}"), "gh_incidents")
        assert await rf.refused(nc.jetstream(timeout=2).delete_stream("KV_GH_INCIDENTS"), "stream.delete")
        # a host cannot watch other hosts' status either, nor listen on another host's inbox
        assert await rf.refused(b[keys.STATUS].watch(f"{FLEET}.INC-1.*"), "consumer.create.kv_gh_status")

        # the ring: a host may listen, never announce
        await nc.subscribe(keys.ring_subject(FLEET))
        assert await rf.refused(_publish(nc, keys.ring_subject(FLEET)), "gh.ring.prod")

        async def listen_elsewhere():
            await nc.subscribe("_GH.prod.host.web-2.>")
            await nc.flush()
            await asyncio.sleep(30)            # the violation arrives asynchronously; the waiter wins
        assert await rf.refused(listen_elsewhere(), "_gh.prod.host.web-2")
        await nc.close()
        # the incidents are unchanged, and no other host's status exists
        nc_c, b_c = await fleet.buckets("commander")
        rec, _ = await incidents.read(b_c[keys.INCIDENTS], FLEET, "INC-1")
        assert rec is not None and rec.capture_rev == 1
        assert await b_c[keys.STATUS].keys() == [own.key]
        await nc_c.close()
        await nc_r.close()
        log = fleet.server.log.read_text()
        assert "Publish Violation" in log and "$KV.GH_STATUS.prod.INC-1.web-2" in log
    asyncio.run(body())


def test_relay_cannot_write_status_or_hosts(fleet):
    async def body():
        nc, b = await fleet.buckets("relay")
        st = StatusRecord(fleet=FLEET, incident_id="INC-1", host="web-1", state="uploaded", capture_rev=1)
        rf = Refusals()
        nc._error_cb = rf.cb
        assert await rf.refused(b[keys.STATUS].put(st.key, st.encode()), st.key)
        assert await rf.refused(b[keys.HOSTS].put(keys.host_key(FLEET, "web-1"), b"{}"), "gh_hosts")
        assert await rf.refused(b[keys.INCIDENTS].put("other.INC-1", b"{}"), "other.inc-1")   # another fleet's key
        await nc.close()
    asyncio.run(body())


def test_agent_works_with_exactly_its_rights(fleet, tmp_path):
    """The real watcher under a host credential: heartbeat, watch, statuses -- and no violation."""
    async def body():
        agent = await start_agent(fleet, "web-1", tmp_path / "w1", services=["checkout"])
        nc, b = await fleet.buckets("commander")
        await incidents.declare(b[keys.INCIDENTS], incidents.new_record(
            FLEET, "INC-9", scope=Scope(services=["checkout"]), profile="quick", deadline_s=3600))
        await until(lambda: agent.counts.get("status_uploaded"), what="uploaded status")
        await agent.writer.flushed(10)
        st = await b[keys.STATUS].get(keys.status_key(FLEET, "INC-9", "web-1"))
        assert b'"state":"uploaded"' in st.value
        hb = await b[keys.HOSTS].get(keys.host_key(FLEET, "web-1"))
        assert b'"checkout"' in hb.value
        await agent.stop()
        await nc.close()
        assert "Violation" not in fleet.server.log.read_text()
    asyncio.run(body())
