"""The incident commander's operations: status (once, live, or until done), trigger, resolve, recapture, hosts.

Where it sits: ``agent/cli/fleet.py`` parses options and prints; these coroutines do the
work with the commander's credentials (``fleet.*`` keys of the commander's config) and
return JSON-ready dicts. ``fleet init`` creates the buckets.

``follow`` keeps three watches open -- the incident's record, its hosts' statuses, the
host registry -- and re-summarises (``overview.summarize``) on every change and once a
second (a host turns ``offline`` by the clock, not by a message), so ``--watch`` and
``--wait`` see a host's ``uploaded`` the moment it is written.
"""
from __future__ import annotations

import asyncio
import getpass
import os
import time
from typing import Any, Callable

from agent.errors import NotFoundError, UsageError
from agent.fleet import conn, incidents, keys, overview
from agent.fleet.local import cancel_all, wait_event
from agent.fleet.records import RecordError, Scope, parse_incident


async def session(s: conn.Settings, create: bool = False):
    """(connection, buckets) with the commander's credentials; ``FleetError`` when unreachable."""
    nc = await conn.connect(s, name="goldenhour fleet", inbox_prefix=conn.inbox_for(s, "commander") or None,
                            forever=False)
    try:
        js = nc.jetstream(timeout=s.timeout_s)
        b = await (conn.ensure_buckets(js, s.replicas, s.max_hosts) if create else conn.open_buckets(js))
    except BaseException:
        await nc.close()
        raise
    return nc, b


def who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"commander:{user}@{os.uname().nodename}"


async def init(s: conn.Settings) -> dict[str, Any]:
    nc, b = await session(s, create=True)
    out = {}
    for name, kv in b.items():
        st = await kv.status()
        out[name] = {"history": st.history, "max_age_s": st.ttl, "values": st.values,
                     "max_consumers": st.stream_info.config.max_consumers}
    await nc.close()
    return {"fleet": s.fleet, "buckets": out}


async def _read_record(b, fleet: str, incident: str):
    try:
        rec, _ = await incidents.read(b[keys.INCIDENTS], fleet, incident)
    except RecordError as exc:
        raise UsageError(f"the record of incident {incident} does not parse: {exc}") from None
    if rec is None:
        raise NotFoundError(f"no incident {incident} in fleet {fleet} (declared through the relay or "
                            "`goldenhour fleet trigger`)")
    return rec


async def status(s: conn.Settings, incident: str, *, offline_after_s: float, stale_after_s: float = 900
                 ) -> dict[str, Any]:
    nc, b = await session(s)
    try:
        rec = await _read_record(b, s.fleet, incident)
        hosts, r1 = overview.parse_hosts(await overview.read_bucket(b[keys.HOSTS], f"{s.fleet}.*"))
        sts, r2 = overview.parse_statuses(await overview.read_bucket(
            b[keys.STATUS], f"{s.fleet}.{keys.encode(incident)}.*"))
    finally:
        await nc.close()
    out = overview.summarize(rec, hosts, sts, offline_after_s=offline_after_s, stale_after_s=stale_after_s)
    out["refused_records"] = r1 + r2
    return out


async def follow(s: conn.Settings, incident: str, *, offline_after_s: float, stale_after_s: float = 900,
                 until_done: bool = False, timeout_s: float | None = None,
                 on_update: Callable[[dict[str, Any]], None] | None = None) -> tuple[dict[str, Any], bool]:
    """Summaries as things change; returns (last summary, timed out)."""
    from agent.fleet.records import parse_host, parse_status
    nc, b = await session(s)
    view: dict[str, Any] = {"rec": None, "hosts": {}, "statuses": {}}
    changed = asyncio.Event()
    ready = {"inc": asyncio.Event(), "hosts": asyncio.Event(), "status": asyncio.Event()}

    async def pump(kv, filt: str, what: str, apply) -> None:
        w = await kv.watch(filt)
        async for e in w:
            if e is None:
                ready[what].set()
            elif e.operation not in ("DEL", "PURGE"):
                try:
                    apply(e)
                except (RecordError, keys.BadName):
                    continue
            changed.set()

    def on_inc(e):
        view["rec"] = parse_incident(e.value or b"", key=e.key, fleet=s.fleet)

    def on_host(e):
        h = parse_host(e.value or b"", key=e.key)
        view["hosts"][h.host] = (h, overview._aware(e.created))

    def on_status(e):
        st = parse_status(e.value or b"", key=e.key)
        view["statuses"][st.host] = (st, overview._aware(e.created))

    tasks = [asyncio.create_task(pump(b[keys.INCIDENTS], keys.incident_key(s.fleet, incident), "inc", on_inc)),
             asyncio.create_task(pump(b[keys.HOSTS], f"{s.fleet}.*", "hosts", on_host)),
             asyncio.create_task(pump(b[keys.STATUS], f"{s.fleet}.{keys.encode(incident)}.*", "status", on_status))]
    start = time.monotonic()
    try:
        async with asyncio.timeout(max(5.0, s.timeout_s * 2)):
            await asyncio.gather(*(e.wait() for e in ready.values()))
        if view["rec"] is None:
            raise NotFoundError(f"no incident {incident} in fleet {s.fleet}")
        while True:
            summary = overview.summarize(view["rec"], view["hosts"], view["statuses"],
                                         offline_after_s=offline_after_s, stale_after_s=stale_after_s)
            if on_update:
                on_update(summary)
            if until_done and summary["done"]:
                return summary, False
            left = None if timeout_s is None else timeout_s - (time.monotonic() - start)
            if left is not None and left <= 0:
                return summary, True
            changed.clear()
            await wait_event(changed, min(1.0, left) if left is not None else 1.0)
            await asyncio.sleep(0.05)             # gather a burst of updates into one render
    except TimeoutError:
        raise conn.FleetError("the fleet's buckets did not answer in time") from None
    finally:
        await cancel_all(tasks)
        await nc.close()


async def _spread(b, fleet: str, rec, rate: float, max_s: float) -> float:
    hosts, _ = overview.parse_hosts(await overview.read_bucket(b[keys.HOSTS], f"{fleet}.*"))
    return min(max_s, len(overview.expected_for(rec, hosts)) / rate)


async def trigger(s: conn.Settings, incident: str, scope: Scope, *, profile: str, deadline_s: float,
                  title: str = "", severity: str = "", upload_rate: float = 50, spread_max_s: float = 300
                  ) -> dict[str, Any]:
    if scope.empty():
        raise UsageError("name the hosts, services, labels or tags the incident concerns, or --all")
    try:
        rec = incidents.new_record(s.fleet, incident, scope=scope, profile=profile, deadline_s=deadline_s,
                                   source="commander", title=title, severity=severity, requested_by=who())
    except RecordError as exc:
        raise UsageError(str(exc)) from None
    nc, b = await session(s)
    try:
        rec.upload_spread_s = round(await _spread(b, s.fleet, rec, upload_rate, spread_max_s), 1)
        out = await incidents.declare(b[keys.INCIDENTS], rec, deadline_s=deadline_s)
        await incidents.ring(nc, out)
    finally:
        await nc.close()
    return out.to_json()


async def resolve(s: conn.Settings, incident: str, state: str = "resolved") -> dict[str, Any]:
    nc, b = await session(s)
    try:
        out = await incidents.resolve(b[keys.INCIDENTS], s.fleet, incident, state=state,
                                      delivery=f"{who()}/{state}/{time.time():.3f}")
        await incidents.ring(nc, out)
    finally:
        await nc.close()
    if out.status == "unknown":
        raise NotFoundError(out.reason)
    return out.to_json()


async def recapture(s: conn.Settings, incident: str, *, deadline_s: float) -> dict[str, Any]:
    nc, b = await session(s)
    try:
        out = await incidents.recapture(b[keys.INCIDENTS], s.fleet, incident, deadline_s=deadline_s, by=who(),
                                        delivery=f"{who()}/recapture/{time.time():.3f}")
        await incidents.ring(nc, out)
    finally:
        await nc.close()
    if out.status == "unknown":
        raise NotFoundError(out.reason)
    return out.to_json()


async def hosts(s: conn.Settings, *, offline_after_s: float) -> dict[str, Any]:
    nc, b = await session(s)
    try:
        found, refused = overview.parse_hosts(await overview.read_bucket(b[keys.HOSTS], f"{s.fleet}.*"))
    finally:
        await nc.close()
    rows = overview.host_rows(found, offline_after_s)
    return {"fleet": s.fleet, "hosts": rows, "online": sum(1 for r in rows if r["online"]),
            "offline": sum(1 for r in rows if not r["online"]), "refused_records": refused}
