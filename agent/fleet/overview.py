"""What the incident commander sees: the expected hosts, each one's progress, and the totals.

Where it sits: ``goldenhour fleet status`` and ``fleet hosts`` read the buckets through
``read_bucket`` (a watch that ends after the replay of current values) and summarise with
``summarize`` (a pure function, so its rules are tested without a server); the relay keeps
a live ``HostMirror`` of the registry to size the upload spread.

The rules:

- **Expected** = every registered host (``GH_HOSTS``, online or not; a host leaves the
  registry after 30 days of silence) for which ``targeting.concerns`` is true -- the very
  rule each daemon runs -- plus every host that wrote a status, plus every host the incident
  names that no registered host answers to: ``unknown`` (not enrolled, its daemon not in fleet
  mode, or another name), which keeps the incident from being done until its deadline.
- A host's **state** is its status for the incident's current ``capture_rev``; without one
  it is ``pending``, shown ``offline`` when its last heartbeat (the server's timestamp) is
  older than ``fleet.offline_after_s``. Once the incident is resolved, cancelled or past
  its deadline, a host still without a status will not capture: ``missed``.
- **Done** when every expected host is terminal: ``uploaded``; ``captured`` on a host that
  does not upload; or ``failed`` / ``expired`` / ``skipped`` / ``missed`` (bad);
  ``not_matched`` leaves the expected set. ``stale``: ``capturing`` for longer than
  ``stale_after_s`` (a daemon that died mid-capture reports on its restart).
- **Latency** per host: ``capture_started_at - requested_at`` (two clocks: the relay's and
  the host's; NTP keeps them within milliseconds).
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any

from agent.fleet import keys
from agent.fleet.records import (HostRecord, IncidentRecord, RecordError, StatusRecord, parse_host,
                                 parse_status)
from agent.incident import parse_iso, utcnow
from agent.targeting import concerns

GOOD = ("uploaded",)
BAD = ("failed", "expired", "skipped", "missed")
ACTIVE = ("seen", "capturing", "captured", "uploading")
ORDER = ["failed", "expired", "skipped", "missed", "unknown", "pending", "offline", "seen", "capturing", "captured",
         "uploading", "uploaded", "not_matched"]


async def read_bucket(kv, key_filter: str, timeout: float = 10.0) -> list[Any]:
    """Current entries of ``kv`` under ``key_filter`` (deletes left out)."""
    w = await kv.watch(key_filter, ignore_deletes=True)
    out = []
    try:
        while True:
            e = await w.updates(timeout=timeout)
            if e is None:
                break
            out.append(e)
    finally:
        try:
            await w.stop()
        except Exception:  # noqa: BLE001 - the watch's consumer goes away on its own after inactivity
            pass
    return out


def _aware(dt: Any) -> datetime | None:
    if not isinstance(dt, datetime):
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def parse_hosts(entries: list[Any]) -> tuple[dict[str, tuple[HostRecord, datetime | None]], list[str]]:
    """``{host: (record, server time of its last heartbeat)}`` and the refusals."""
    hosts, refused = {}, []
    for e in entries:
        try:
            h = parse_host(e.value or b"", key=e.key)
        except RecordError as exc:
            refused.append(f"{e.key}: {exc}")
            continue
        hosts[h.host] = (h, _aware(e.created))
    return hosts, refused


def parse_statuses(entries: list[Any]) -> tuple[dict[str, tuple[StatusRecord, datetime | None]], list[str]]:
    out, refused = {}, []
    for e in entries:
        try:
            s = parse_status(e.value or b"", key=e.key)
        except RecordError as exc:
            refused.append(f"{e.key}: {exc}")
            continue
        out[s.host] = (s, _aware(e.created))
    return out, refused


def expected_for(rec: IncidentRecord, hosts: dict[str, tuple[HostRecord, Any]]) -> dict[str, str]:
    """``{host: why}`` of the registered hosts ``rec`` concerns (the daemons' own rule)."""
    ev = rec.event()
    out = {}
    for name, (h, _) in hosts.items():
        why = "scope: all hosts" if rec.scope.all else concerns(ev, h.identity())
        if why:
            out[name] = why
    return out


def unregistered(rec: IncidentRecord, hosts: dict[str, tuple[HostRecord, Any]],
                 statuses: dict[str, Any]) -> list[str]:
    """The incident's named hosts that no registered host answers to (by name or address, as the
    daemons match them) and that reported nothing."""
    from agent.webhooks import TRIGGER, Event
    out = []
    for named in rec.scope.hosts:
        ev = Event(action=TRIGGER, hosts=[named])
        found = False
        for h, _ in hosts.values():
            ident = h.identity()
            ident.capture_all = False            # "answers to this name", not "captures everything"
            if concerns(ev, ident):
                found = True
                break
        if not found and named.lower() not in statuses:
            out.append(named)
    return sorted(set(out))


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(round(q / 100 * (len(v) - 1)))))]


def summarize(rec: IncidentRecord, hosts: dict[str, tuple[HostRecord, datetime | None]],
              statuses: dict[str, tuple[StatusRecord, datetime | None]], *, offline_after_s: float = 90,
              stale_after_s: float = 900, now: datetime | None = None) -> dict[str, Any]:
    """The commander's view of one incident (module docstring); JSON-ready."""
    now = now or utcnow()
    over = rec.state != "open" or now > rec.deadline_dt()
    expected = expected_for(rec, hosts)
    for h in statuses:
        expected.setdefault(h, statuses[h][0].matched_by or "reported a status")
    unknown = unregistered(rec, hosts, statuses)
    rows = []
    latencies = []
    for name in sorted(expected):
        h, seen = hosts.get(name, (None, None))
        st, st_time = statuses.get(name, (None, None))
        online = seen is not None and (now - seen).total_seconds() <= offline_after_s
        row: dict[str, Any] = {"host": name, "matched_by": expected[name], "online": online,
                               "last_heartbeat": seen.isoformat() if seen else None}
        if st is not None and st.capture_rev == rec.capture_rev:
            state = st.state
            if state == "captured" and not st.will_upload:
                row["final"] = True
            row.update(late=st.late, error=st.error or None, profile=st.profile or None)
            if st.bundle is not None:
                row["bundle"] = {k: v for k, v in vars(st.bundle).items() if v}
            t0, t1 = parse_iso(st.requested_at), parse_iso(st.capture_started_at)
            if t0 and t1:
                row["latency_s"] = round((t1 - t0).total_seconds(), 3)
                latencies.append(row["latency_s"])
            upd = parse_iso(st.updated_at) or st_time
            if state == "capturing" and upd and (now - upd).total_seconds() > stale_after_s:
                row["stale"] = True
        else:
            state = "missed" if over else ("pending" if online else "offline")
            if st is not None:
                row["previous"] = f"{st.state} at capture revision {st.capture_rev}"
        row["state"] = state
        rows.append(row)
    for name in unknown:            # named by the incident, never heard of: nothing says it will capture
        rows.append({"host": name, "matched_by": "named by the incident", "online": False, "last_heartbeat": None,
                     "state": "missed" if over else "unknown",
                     "error": "no host of this name or address is registered in the fleet (not enrolled, "
                              "its daemon not in fleet mode, or another name)"})
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    considered = [r for r in rows if r["state"] != "not_matched"]
    good = [r for r in considered if r["state"] in GOOD or r.get("final")]
    bad = [r for r in considered if r["state"] in BAD]
    done = len(good) + len(bad) == len(considered)
    rows.sort(key=lambda r: (ORDER.index(r["state"]) if r["state"] in ORDER else 99, r["host"]))
    return {
        "incident": rec.incident_id, "fleet": rec.fleet, "state": rec.state, "source": rec.source,
        "title": rec.title, "capture_rev": rec.capture_rev, "profile": rec.profile,
        "scope": rec.scope.describe(), "declared_at": rec.declared_at, "requested_at": rec.requested_at,
        "deadline": rec.deadline, "past_deadline": now > rec.deadline_dt(), "upload_spread_s": rec.upload_spread_s,
        "expected": len(considered), "online": sum(1 for r in considered if r["online"]),
        "counts": counts, "ok": len(good), "bad": len(bad), "done": done, "unknown_hosts": unknown,
        "latency_s": {"p50": _pct(latencies, 50), "p90": _pct(latencies, 90), "p99": _pct(latencies, 99),
                      "max": max(latencies) if latencies else None, "n": len(latencies)},
        "hosts": rows,
    }


def host_rows(hosts: dict[str, tuple[HostRecord, datetime | None]], offline_after_s: float,
              now: datetime | None = None) -> list[dict[str, Any]]:
    now = now or utcnow()
    rows = []
    for name in sorted(hosts):
        h, seen = hosts[name]
        age = (now - seen).total_seconds() if seen else None
        rows.append({"host": name, "online": age is not None and age <= offline_after_s,
                     "last_heartbeat": seen.isoformat() if seen else None,
                     "age_s": round(age, 1) if age is not None else None, "services": h.services, "tags": h.tags,
                     "addresses": h.addresses, "capture_all": h.capture_all, "agent_version": h.agent_version,
                     "started_at": h.started_at, "max_profile": h.max_profile})
    return rows


class HostMirror:
    """A live copy of the fleet's host registry (the relay sizes upload spreads from it)."""

    def __init__(self, kv, fleet: str):
        self.kv = kv
        self.fleet = fleet
        self.hosts: dict[str, tuple[HostRecord, datetime | None]] = {}
        self.task: asyncio.Task | None = None
        self.ready = asyncio.Event()

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="fleet-hosts")

    async def _run(self) -> None:
        while True:
            try:
                w = await self.kv.watch(f"{self.fleet}.*")
                async for e in w:
                    if e is None:
                        self.ready.set()
                        continue
                    try:
                        _, host = keys.split_host_key(e.key)
                    except keys.BadName:
                        continue
                    if e.operation in ("DEL", "PURGE"):
                        self.hosts.pop(host, None)
                        continue
                    try:
                        h = parse_host(e.value or b"", key=e.key)
                    except RecordError:
                        continue
                    self.hosts[h.host] = (h, _aware(e.created))
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - server away: try again shortly; the mirror keeps what it had
                await asyncio.sleep(5)

    def count_for(self, rec: IncidentRecord) -> int:
        return len(expected_for(rec, self.hosts))

    async def stop(self) -> None:
        if self.task:
            from agent.fleet.local import cancel_all
            await cancel_all([self.task])
