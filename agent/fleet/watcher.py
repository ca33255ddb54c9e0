"""The daemon's fleet mode: heartbeat, watch the incidents, capture what concerns this host, report.

Where it sits: ``goldenhour daemon`` with ``fleet.servers`` set starts one ``FleetAgent``
next to its webhook server; the fleet benchmark runs hundreds of them with a stub
``Runner`` (the capture is the only part replaced). The loop:

1. **Connect out** (``agent.fleet.conn``: reconnects for ever, with jitter); no inbound port.
2. **Heartbeat**: this host's identity (``HostRecord``) into ``GH_HOSTS`` every
   ``fleet.heartbeat_s`` and right after each reconnect.
3. **Watch** ``GH_INCIDENTS`` (``<fleet>.*``). A watch first replays the current record of
   every incident, then streams changes. After a reconnect the watch is re-created after a
   random delay (jitter, ``fleet.reconnect_jitter_s``), so an incident written while this
   host was away arrives in the replay: such records are marked **late**. For each record, in order:

   * it does not parse (``records.RecordError``: bad JSON, wrong schema, path-like ID, a
     key naming another incident) -> refused, logged with the reason;
   * not ``open`` -> a capture still queued for it is cancelled; nothing else;
   * it does not concern this host (``agent.targeting.concerns``, the rule a webhook
     uses; ``scope.all`` concerns everyone) -> nothing, or status ``not_matched`` when
     the scope names this host;
   * this host already acted on this ``capture_rev`` (local ``FleetState``; on a wiped
     disk, its own status record in NATS) -> nothing: duplicates never capture;
   * past its ``deadline`` (judged by the later of this host's clock and the server's
     timestamp of the record) -> status ``expired``;
   * late and ``fleet.late_join = skip``, or ``fleet.max_captures_per_hour`` reached ->
     status ``skipped`` with the reason;
   * otherwise the revision is recorded, the capture is queued **at once** (nothing is
     awaited on the way) and the statuses follow: ``seen``, ``capturing``, ``captured``
     (bundle and SHA-256 on local disk), then after a random ``uniform(0, spread)``
     ``uploading`` and ``uploaded`` (S3 key and SHA-256), or ``failed`` with the reason.

4. A restart resumes: a revision whose capture was queued is queued again (if the record
   is still open and before its deadline), one that was running is reported ``failed``
   (interrupted; the daemon salvages its evidence), a captured bundle not yet uploaded is
   uploaded.

The ``Runner`` is what the host provides: ``start(job)`` queues one capture synchronously
(the daemon puts it on its worker's queue; its child process runs it) and returns what to
await for the result, and ``upload(job, captured)`` uploads the bundle and returns the
receipt.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol

from agent import __version__
from agent.fleet import conn, keys
from agent.fleet.incidents import KEY_HEADER, REVISION_HEADER
from agent.fleet.local import FleetState, StatusWriter, cancel_all, wait_event
from agent.fleet.records import (PROFILES, Bundle, HostRecord, IncidentRecord, RecordError, StatusRecord,
                                 parse_incident, parse_status)
from agent.incident import iso, utcnow
from agent.targeting import Identity, concerns

log = logging.getLogger("goldenhour.fleet")
# the watch's consumer outlives its connection this long: a host that reconnects makes a new one
# anyway, and a departed host's should not count against the bucket's consumer limit for long
WATCH_INACTIVE_S = 60.0
# a ring message's KV revision may be at most this far beyond the highest the watch has shown: the
# ring cannot make a host skip the next real revisions of an incident by announcing a huge one
RING_AHEAD = 10_000


def kv(level: int, event: str, msg: str = "", **fields: Any) -> None:
    log.log(level, msg, extra={"kv": {"event": event, **fields}})


# -- what the host provides ------------------------------------------------------------

@dataclass
class FleetJob:
    """One capture a fleet record asks of this host."""

    record: IncidentRecord
    host: str
    profile: str
    matched_by: str
    late: bool
    started: asyncio.Event = field(default_factory=asyncio.Event)     # set by the runner when it starts
    started_at: str = ""

    def mark_started(self) -> None:
        self.started_at = iso(utcnow())
        self.started.set()


@dataclass
class Captured:
    bundle: str                     # local path
    sha256: str
    size: int
    collectors: dict[str, int] = field(default_factory=dict)


class CaptureFailed(Exception):
    """The capture wrote no bundle (message: why)."""


class UploadFailed(Exception):
    """The upload did not complete (message: why); the bundle stays in the local spool."""


class Runner(Protocol):
    uploads: bool

    def start(self, job: FleetJob) -> Awaitable[Captured]:
        """Queue (or begin) the capture *now*, synchronously, and return what to await for its result;
        ``job.mark_started()`` when it really starts. Cancelling the awaitable before that drops it."""
        ...

    async def upload(self, job: FleetJob, captured: Captured) -> dict[str, Any]: ...


def _profile(asked: str, ceiling: str) -> str:
    return asked if PROFILES.index(asked) <= PROFILES.index(ceiling) else ceiling


@dataclass
class Options:
    """The ``fleet.*`` keys the watcher reads (``from_config``), as plain values the benchmark can set."""

    heartbeat_s: float = 30.0
    max_profile: str = "standard"
    max_captures_per_hour: int = 6
    late_join: str = "capture"
    jitter_s: float = 5.0
    spread_max_s: float = 300.0
    upload_retry_s: float = 30.0
    upload_retry_max_s: float = 3600.0

    @classmethod
    def from_config(cls, cfg) -> "Options":
        return cls(heartbeat_s=float(cfg["fleet.heartbeat_s"]), max_profile=cfg["fleet.max_profile"],
                   max_captures_per_hour=int(cfg["fleet.max_captures_per_hour"]), late_join=cfg["fleet.late_join"],
                   jitter_s=float(cfg["fleet.reconnect_jitter_s"]),
                   spread_max_s=float(cfg["fleet.upload_spread_max_s"]),
                   upload_retry_s=float(cfg["upload.retry_initial_s"]),
                   upload_retry_max_s=float(cfg["upload.retry_max_s"]))


class _Lost(Exception):
    """The connection dropped: re-create the watch after it is back."""


@dataclass
class _RingEntry:
    """A record from the ring, shaped like a KV watch entry (no server timestamp: the host's clock judges)."""

    key: str
    value: bytes
    revision: int
    created: Any = None
    operation: Any = None


# -- the agent ---------------------------------------------------------------------------

class FleetAgent:
    def __init__(self, settings: conn.Settings, host: str, identity: Identity, runner: Runner,
                 state: FleetState, options: Options | None = None, *,
                 on_seen: Callable[[IncidentRecord, str], None] | None = None,
                 on_closed: Callable[[IncidentRecord], None] | None = None):
        self.settings = settings
        self.fleet = settings.fleet
        self.host = keys.check_host(host)
        self.identity = identity
        self.runner = runner
        self.state = state
        self.opt = options or Options()
        self.on_seen = on_seen                  # the daemon remembers fleet incidents as open (pre-restart hook)
        self.on_closed = on_closed              # ... and as resolved
        self.nc = None
        self.kv: dict[str, Any] = {}
        self.writer: StatusWriter | None = None
        self.tasks: list[asyncio.Task] = []
        self.jobs: dict[str, asyncio.Task] = {}           # incident -> its job task
        self.queued: dict[str, FleetJob] = {}             # incident -> job not started yet
        self.connected = asyncio.Event()
        self._lost = asyncio.Event()
        self._beat = asyncio.Event()
        self.started_at = iso(utcnow())
        self.counts: dict[str, int] = {}
        self.watching = False
        self.ready = asyncio.Event()                      # set after the first watch replayed everything
        self.resubmit: set[str] = set()
        self.revisions: dict[str, int] = {}               # key -> highest KV revision acted on (watch or ring)
        self._decide = asyncio.Lock()                     # one record at a time, from the watch or the ring

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Start in the background: never blocks the daemon's start, whether NATS is up or not."""
        self.state.load()
        if self.state.problem:
            kv(logging.ERROR, "fleet_state", self.state.problem)
        self.state.prune()
        for inc, rec in self.state.incidents.items():
            if rec.get("phase") == "running":
                rec["phase"] = "failed"
                rec["error"] = "interrupted: the daemon stopped during the capture (its evidence is salvaged locally)"
                rec["report"] = True
            elif rec.get("phase") == "queued":
                self.resubmit.add(inc)
        self.tasks.append(asyncio.create_task(self._main(), name="fleet"))

    async def stop(self) -> None:
        await cancel_all(list(self.jobs.values()) + self.tasks)
        try:
            self.state.save()
        except OSError:
            pass
        if self.nc is not None:
            try:
                async with asyncio.timeout(5):
                    await self.nc.close()
            except Exception:  # noqa: BLE001 - closing a dead connection: nothing left to do
                pass

    def reconfigure(self, identity: Identity, cfg: Any = None) -> None:
        """A reloaded config (the daemon's SIGHUP): the new identity targets from now on and is heartbeaten
        at once; the runner gets the new config (collectors...). fleet.* keys need a restart."""
        self.identity = identity
        if cfg is not None and hasattr(self.runner, "cfg"):
            self.runner.cfg = cfg
        self._beat.set()

    def healthy(self) -> tuple[bool, str]:
        for t in self.tasks:
            if t.done() and not t.cancelled():
                return False, f"fleet task {t.get_name()} ended"
        return True, ""

    def summary(self) -> dict[str, Any]:
        rep = getattr(self.nc, "gh_reporter", None)
        return {"fleet": self.fleet, "host": self.host, "connected": self.connected.is_set(),
                "watching": self.watching, "last_error": rep.last_error if rep else "",
                "drops": rep.drops if rep else 0, "counts": dict(self.counts),
                "status_pending": len(self.writer._pending) if self.writer else 0}

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    async def _on_change(self, what: str) -> None:
        if what == "reconnected":
            self.connected.set()
            self._beat.set()
            if self.writer:
                self.writer.kick()
        else:
            self.connected.clear()
            self._lost.set()

    async def _main(self) -> None:
        self.nc = await conn.connect(self.settings, name=f"goldenhour {self.host}",
                                     inbox_prefix=conn.inbox_for(self.settings, "host", self.host),
                                     forever=True, on_change=self._on_change)
        self.connected.set()
        kv(logging.INFO, "fleet_connected", fleet=self.fleet, host=self.host)
        js = self.nc.jetstream(timeout=self.settings.timeout_s)
        delay = 2.0
        while True:
            try:
                self.kv = await conn.open_buckets(js)
                break
            except conn.FleetError as exc:
                kv(logging.ERROR, "fleet_buckets", str(exc), retry_s=round(delay))
            except Exception as exc:  # noqa: BLE001 - timeouts while the server is away
                kv(logging.WARNING, "fleet_buckets", conn._describe(exc), retry_s=round(delay))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60)
        self.writer = StatusWriter(self._put_status)
        self.tasks.append(asyncio.create_task(self.writer.run(), name="fleet-status"))
        try:
            await self.nc.subscribe(keys.ring_subject(self.fleet), cb=self._on_ring)
        except Exception as exc:  # noqa: BLE001 - the ring is a fast path; the watch alone still works
            kv(logging.WARNING, "fleet_ring", conn._describe(exc))
        self.tasks.append(asyncio.create_task(self._heartbeat(), name="fleet-heartbeat"))
        for inc, rec in list(self.state.incidents.items()):
            if rec.get("report"):
                self._report_from_state(inc, rec)
            elif rec.get("phase") == "captured" and rec.get("job"):
                self._resume_upload(inc, rec)
        await self._watch_forever()

    async def _put_status(self, key: str, value: bytes) -> int:
        return await self.kv[keys.STATUS].put(key, value)

    # -- heartbeat ---------------------------------------------------------------------------
    def host_record(self) -> HostRecord:
        i = self.identity
        return HostRecord(fleet=self.fleet, host=self.host, names=sorted(i.names), addresses=sorted(i.addresses),
                          services=sorted(i.services), tags=sorted(i.tags), capture_all=i.capture_all,
                          agent_version=__version__, started_at=self.started_at, sent_at=iso(utcnow()),
                          heartbeat_s=self.opt.heartbeat_s, max_profile=self.opt.max_profile)

    async def _heartbeat(self) -> None:
        key = keys.host_key(self.fleet, self.host)
        last_err = ""
        while True:
            try:
                await self.kv[keys.HOSTS].put(key, self.host_record().encode())
                last_err = ""
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - NATS away or a permission problem: say so once, keep trying
                text = conn._describe(exc)
                if text != last_err:
                    kv(logging.WARNING, "fleet_heartbeat", text, key=key)
                last_err = text
            self._beat.clear()
            await wait_event(self._beat, self.opt.heartbeat_s)

    # -- watch ----------------------------------------------------------------------------------
    async def _watch_forever(self) -> None:
        while True:
            await self.connected.wait()       # reconnects are jittered already (conn.backoff)
            self._lost.clear()
            try:
                w = await self.kv[keys.INCIDENTS].watch(f"{self.fleet}.*", inactive_threshold=WATCH_INACTIVE_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the server is not back yet, or the watch was refused
                kv(logging.WARNING, "fleet_watch", conn._describe(exc))
                await asyncio.sleep(conn.backoff(1, self.opt.jitter_s))
                continue
            self.watching = True
            try:
                await self._consume(w)
            except _Lost:
                kv(logging.INFO, "fleet_rewatch", "connection lost; the watch is re-created after reconnecting")
            finally:
                self.watching = False
                try:
                    async with asyncio.timeout(2):
                        await w.stop()
                except Exception:  # noqa: BLE001 - a watch on a dead connection: nothing to stop
                    pass

    async def _consume(self, w) -> None:
        replay = True
        lost = asyncio.ensure_future(self._lost.wait())
        nxt: asyncio.Future | None = None
        try:
            while True:
                nxt = asyncio.ensure_future(w.__anext__())
                done, _ = await asyncio.wait({nxt, lost}, return_when=asyncio.FIRST_COMPLETED)
                if nxt not in done:
                    raise _Lost()
                try:
                    entry = nxt.result()
                except StopAsyncIteration:
                    raise _Lost() from None
                finally:
                    nxt = None
                if entry is None:                 # the replay of current values is over
                    replay = False
                    self.ready.set()
                    continue
                try:
                    await self.on_entry(entry, late=replay)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - one bad record never stops the watch
                    kv(logging.ERROR, "fleet_record", f"{type(exc).__name__}: {exc}", key=entry.key)
        finally:
            lost.cancel()
            if nxt is not None:
                nxt.cancel()
                nxt.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def _on_ring(self, msg) -> None:
        """A record from the ring (``agent.fleet.incidents.ring``): the same decision, sooner. Only once the
        watch has replayed (so "late" keeps its meaning); the watch delivers it again, as a duplicate."""
        if not (self.watching and self.ready.is_set()):
            return
        h = msg.headers or {}
        try:
            rev = int(h.get(REVISION_HEADER, "0"))
        except ValueError:
            rev = 0
        key = h.get(KEY_HEADER, "")
        highest = max(self.revisions.values(), default=0)
        if not key or rev <= 0 or (highest and rev > highest + RING_AHEAD):
            return                  # a revision far beyond any the stream has shown: not one to remember
        self._count("ring")
        try:
            await self.on_entry(_RingEntry(key=key, value=msg.data, revision=rev), late=False)
        except Exception as exc:  # noqa: BLE001 - one bad record never stops the subscription
            kv(logging.ERROR, "fleet_record", f"{type(exc).__name__}: {exc}", key=key)

    async def on_entry(self, entry, late: bool) -> None:
        """Decide what one incident record means for this host (module docstring, step 3)."""
        async with self._decide:
            rev = int(entry.revision or 0)
            if rev and rev <= self.revisions.get(entry.key, 0):
                self._count("seen_revision")         # the ring's copy of a watch entry, or the reverse
                return
            if rev:
                self.revisions[entry.key] = rev
            await self._on_entry(entry, late)

    async def _on_entry(self, entry, late: bool) -> None:
        self._count("records")
        if entry.operation in ("DEL", "PURGE"):
            self._cancel_queued_key(entry.key, "the incident record was deleted")
            return
        try:
            rec = parse_incident(entry.value or b"", key=entry.key, fleet=self.fleet)
        except RecordError as exc:
            self._count("refused")
            kv(logging.WARNING, "fleet_refused", str(exc), key=entry.key, revision=entry.revision)
            return
        inc = rec.incident_id
        if rec.state != "open":
            self._cancel_queued(inc, f"the incident was {rec.state} before its capture started")
            if self.on_closed:
                self.on_closed(rec)
            return
        why = "scope: all hosts" if rec.scope.all else concerns(rec.event(), self.identity)
        named = self._named(rec)
        local = self.state.get(inc)
        done_rev = int(local.get("rev", 0)) if local else 0
        if done_rev >= rec.capture_rev:
            if inc in self.resubmit and local and local.get("phase") == "queued":
                self.resubmit.discard(inc)
                if why and not self._expired(rec, entry):
                    self._count("resubmitted")
                    self._launch(rec, why, late=True, resumed=True)
                    return
                self.state.set(inc, phase="failed", error="queued when the daemon stopped; not captured since")
                self._save()
            self._count("duplicate")
            return
        if not why:
            if named:
                self._mark(inc, rec, "done")
                self._status(rec, "not_matched", error="named by the incident, but this host's identity does "
                             f"not match it ({', '.join(sorted(self.identity.names)) or '?'})")
            return
        if self.on_seen:
            self.on_seen(rec, why)
        if self._expired(rec, entry):
            self._count("expired")
            self._mark(inc, rec, "done")
            self._status(rec, "expired", matched_by=why, late=late, error=f"seen after its deadline {rec.deadline}")
            return
        if late and self.opt.late_join == "skip":
            self._mark(inc, rec, "done")
            self._status(rec, "skipped", matched_by=why, late=True, error="incident already open when this host "
                         "connected, and fleet.late_join = skip")
            return
        if late and not self.state.existed and await self._reported_before(rec):
            self._mark(inc, rec, "done")
            self._count("duplicate")
            return
        if self.state.captures_last_hour() >= self.opt.max_captures_per_hour:
            self._count("capped")
            self._mark(inc, rec, "done")
            self._status(rec, "skipped", matched_by=why, late=late,
                         error=f"{self.opt.max_captures_per_hour} fleet-triggered captures in the last hour "
                               "(fleet.max_captures_per_hour)")
            kv(logging.WARNING, "fleet_capped", incident=inc, limit=self.opt.max_captures_per_hour)
            return
        self._launch(rec, why, late)

    def _named(self, rec: IncidentRecord) -> bool:
        from agent.targeting import Identity as _I
        me = _I(names=self.identity.names, addresses=self.identity.addresses)
        return bool(rec.scope.hosts) and concerns(rec.event(), me) is not None

    def _expired(self, rec: IncidentRecord, entry) -> bool:
        now = utcnow()
        server = entry.created if isinstance(entry.created, datetime) else None
        if server is not None and server.tzinfo is None:
            server = server.replace(tzinfo=timezone.utc)
        return max(now, server or now) > rec.deadline_dt()

    async def _reported_before(self, rec: IncidentRecord) -> bool:
        """On a new or wiped disk: did this host already act on this revision? (its own status key)."""
        try:
            e = await self.kv[keys.STATUS].get(keys.status_key(self.fleet, rec.incident_id, self.host))
            st = parse_status(e.value or b"")
        except Exception:  # noqa: BLE001 - not found, or unreadable: act
            return False
        return st.capture_rev >= rec.capture_rev and st.state not in ("seen", "not_matched")

    def _mark(self, inc: str, rec: IncidentRecord, phase: str, **extra: Any) -> None:
        local = self.state.get(inc)
        if local and int(local.get("rev", 0)) > rec.capture_rev:
            return                  # a newer revision took over; this older job's progress is history
        self.state.set(inc, rev=rec.capture_rev, phase=phase, requested_at=rec.requested_at, **extra)
        self._save()

    def _save(self) -> None:
        try:
            self.state.save()
        except OSError as exc:
            kv(logging.ERROR, "fleet_state", f"cannot save the fleet state: {exc}")

    def _status(self, rec: IncidentRecord, state: str, **fields: Any) -> StatusRecord:
        st = StatusRecord(fleet=self.fleet, incident_id=rec.incident_id, host=self.host, state=state,
                          capture_rev=rec.capture_rev, requested_at=rec.requested_at, agent_version=__version__,
                          will_upload=bool(self.runner.uploads),
                          updated_at=iso(utcnow()), **fields)
        local = self.state.get(rec.incident_id)
        if local and int(local.get("rev", 0)) > rec.capture_rev:
            return st               # never overwrite the status of a newer revision
        self._count(f"status_{state}")
        if self.writer is not None:
            self.writer.submit(st)
        return st

    # -- jobs ---------------------------------------------------------------------------------
    def _launch(self, rec: IncidentRecord, why: str, late: bool, resumed: bool = False) -> None:
        inc = rec.incident_id
        job = FleetJob(record=rec, host=self.host, profile=_profile(rec.profile, self.opt.max_profile),
                       matched_by=why, late=late)
        now = time.time()
        self.state.captures.append(now)
        self._mark(inc, rec, "queued", late=late, matched_by=why, queued_at=now, error="")
        self.queued[inc] = job
        cap = self.runner.start(job)              # at once: nothing is awaited between the record and this
        self.jobs[inc] = asyncio.create_task(self._run_job(job, cap), name=f"fleet-job-{inc}")
        self._count("captures")
        kv(logging.INFO, "fleet_capture", incident=inc, rev=rec.capture_rev, matched_by=why, late=late,
           profile=job.profile, resumed=resumed)

    def _cancel_queued(self, inc: str, why: str) -> None:
        job = self.queued.pop(inc, None)
        if job is None or job.started.is_set():
            return
        t = self.jobs.get(inc)
        if t is not None:
            t.cancel()
        self._count("cancelled")
        self.state.set(inc, phase="done", error=why)
        self._save()
        self._status(job.record, "skipped", matched_by=job.matched_by, late=job.late, error=why)

    def _cancel_queued_key(self, key: str, why: str) -> None:
        try:
            _, inc = keys.split_incident_key(key)
        except keys.BadName:
            return
        self._cancel_queued(inc, why)

    async def _run_job(self, job: FleetJob, started_capture: Awaitable[Captured]) -> None:
        rec, inc = job.record, job.record.incident_id
        base = {"matched_by": job.matched_by, "late": job.late, "profile": job.profile}
        seen_at = iso(utcnow())
        cap = asyncio.ensure_future(started_capture)
        self._status(rec, "seen", seen_at=seen_at, **base)
        try:
            started = asyncio.ensure_future(job.started.wait())
            await asyncio.wait({cap, started}, return_when=asyncio.FIRST_COMPLETED)
            started.cancel()
            if job.started.is_set():
                self.queued.pop(inc, None)
                self._mark(inc, rec, "running")
                self._status(rec, "capturing", seen_at=seen_at, capture_started_at=job.started_at, **base)
            captured = await cap
        except asyncio.CancelledError:
            cap.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - CaptureFailed, or anything the runner did not expect
            self.queued.pop(inc, None)
            err = str(exc) if isinstance(exc, CaptureFailed) else f"{type(exc).__name__}: {exc}"
            self._mark(inc, rec, "failed", error=err)
            self._status(rec, "failed", seen_at=seen_at, capture_started_at=job.started_at, error=err, **base)
            kv(logging.ERROR, "fleet_capture_failed", err, incident=inc)
            return
        self.queued.pop(inc, None)
        bundle = Bundle(name=Path(captured.bundle).name, sha256=captured.sha256, bytes=captured.size)
        common = dict(seen_at=seen_at, capture_started_at=job.started_at, captured_at=iso(utcnow()),
                      collectors=dict(captured.collectors), **base)
        self._mark(inc, rec, "captured", job={"bundle": captured.bundle, "sha256": captured.sha256,
                                              "size": captured.size, "collectors": captured.collectors,
                                              "started_at": job.started_at, "seen_at": seen_at,
                                              "captured_at": common["captured_at"], **base})
        self._status(rec, "captured", bundle=bundle, **common)
        if not self.runner.uploads:
            return
        spread = min(rec.upload_spread_s, self.opt.spread_max_s)
        if spread > 0:
            await asyncio.sleep(random.uniform(0, spread))
        await self._upload(job, captured, bundle, common)

    async def _upload(self, job: FleetJob, captured: Captured, bundle, common: dict[str, Any]) -> None:
        rec, inc = job.record, job.record.incident_id
        delay = self.opt.upload_retry_s
        self._status(rec, "uploading", bundle=bundle, **common)
        while True:
            try:
                receipt = await self.runner.upload(job, captured)
                break
            except UploadFailed as exc:
                self._status(rec, "captured", bundle=bundle, error=f"upload failed, retrying in {delay:.0f} s: {exc}",
                             **common)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.opt.upload_retry_max_s)
                self._status(rec, "uploading", bundle=bundle, **common)
        up = Bundle(name=bundle.name, sha256=receipt.get("sha256") or bundle.sha256, bytes=int(receipt.get("size") or
                                                                                                 bundle.bytes),
                    url=receipt.get("url", ""), bucket=receipt.get("bucket", ""), key=receipt.get("key", ""))
        self._mark(inc, rec, "uploaded")
        self._status(rec, "uploaded", bundle=up, uploaded_at=receipt.get("uploaded_at") or iso(utcnow()), **common)

    def _resume_upload(self, inc: str, local: dict[str, Any]) -> None:
        """A bundle captured before a restart and not uploaded yet: upload it now."""
        j = local["job"]
        rec = self._stub(inc, local)
        job = FleetJob(record=rec, host=self.host, profile=j.get("profile", ""), matched_by=j.get("matched_by", ""),
                       late=bool(j.get("late")))
        job.started_at = j.get("started_at", "")
        captured = Captured(bundle=j["bundle"], sha256=j["sha256"], size=int(j.get("size", 0)),
                            collectors=dict(j.get("collectors") or {}))
        bundle = Bundle(name=Path(captured.bundle).name, sha256=captured.sha256, bytes=captured.size)
        common = {"seen_at": j.get("seen_at", ""), "capture_started_at": j.get("started_at", ""),
                      "captured_at": j.get("captured_at", ""), "collectors": dict(captured.collectors),
                      "matched_by": job.matched_by, "late": job.late, "profile": job.profile}
        if self.runner.uploads:
            self.jobs[inc] = asyncio.create_task(self._upload(job, captured, bundle, common), name=f"fleet-up-{inc}")

    def _stub(self, inc: str, local: dict[str, Any]) -> IncidentRecord:
        """Enough of a record to report on a revision remembered locally (before the watch replays it)."""
        return IncidentRecord(fleet=self.fleet, incident_id=inc, declared_at="", published_at="", deadline="",
                              requested_at=local.get("requested_at", ""), capture_rev=int(local.get("rev", 1)))

    def _report_from_state(self, inc: str, local: dict[str, Any]) -> None:
        rec = self._stub(inc, local)
        self._status(rec, "failed", error=local.get("error", ""), late=bool(local.get("late")),
                     matched_by=local.get("matched_by", ""))
        local.pop("report", None)
        self._save()
