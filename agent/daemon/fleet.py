"""The daemon's fleet mode: the fleet watcher (``agent.fleet.watcher``) wired to this daemon.

Where it sits: with ``fleet.servers`` set, the ``Service`` builds one ``FleetAgent`` with
a ``DaemonRunner`` and starts it next to the webhook receiver (which keeps working; a host
can take its own webhooks and fleet records at once). No inbound port is needed: the
agent connects out to NATS.

``DaemonRunner`` is the watcher's ``Runner`` on this daemon:

- ``start(job)`` queues a ``CaptureRequest`` (the incident's own ID, source and title; a
  trigger of kind ``fleet`` saying why this host is concerned, the capture revision and
  whether it is late) on the daemon's one capture queue at once, as a webhook would, and
  returns a future of its result; ``job.mark_started`` runs when the worker starts it (status
  ``capturing``). A full queue is waited out (the capture is still wanted); a job not
  started yet when the incident is resolved is dropped by the worker.
- ``upload(job, captured)`` kicks the daemon's uploader (one child uploads every pending
  bundle, with its own backoff) and waits for the bundle's upload receipt. The worker does
  not kick the uploader after a fleet capture: the watcher waits its random spread first.
  The periodic upload round (``daemon.upload_interval_s``) may take the bundle earlier;
  both moments are random across hosts.

Fleet incidents also go into the daemon's state (``<source>/<id>``, status open/resolved),
so the pre-restart hook and ``GET /v1/incidents`` see them, and a webhook for the same
incident on this host is recognised as a duplicate.
"""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.config import Config, ConfigError
from agent.daemon.request import CaptureRequest
from agent.daemon.state import State, state_dir
from agent.fleet import conn, keys
from agent.fleet.local import FleetState
from agent.fleet.records import IncidentRecord
from agent.fleet.watcher import Captured, CaptureFailed, FleetAgent, FleetJob, Options, UploadFailed
from agent.incident import Incident, Trigger
from agent.store import Store

if TYPE_CHECKING:
    from agent.daemon.jobs import JobRunner


class DaemonRunner:
    def __init__(self, cfg: Config, jobs: "JobRunner", state: State, save_state):
        self.cfg, self.jobs, self.state, self.save_state = cfg, jobs, state, save_state
        self.uploads = bool(cfg["upload.url"])

    @staticmethod
    def key(rec: IncidentRecord) -> str:
        return State.key(rec.source or "fleet", rec.incident_id)

    def seen(self, rec: IncidentRecord, why: str) -> None:
        """An incident record that concerns this host: remember it as open here."""
        now = time.time()
        r = self.state.incidents.setdefault(self.key(rec), {
            "id": rec.incident_id, "source": rec.source or "fleet", "status": "open", "opened_at": now,
            "capture": "", "captures": [], "fleet": rec.fleet})
        r.update(status="open", triggered_at=now, updated_at=now, concerns=why, title=rec.title or r.get("title", ""))
        r.pop("resolved_at", None)
        self.save_state()

    def closed(self, rec: IncidentRecord) -> None:
        r = self.state.incidents.get(self.key(rec))
        if r and r.get("status") == "open":
            r["status"], r["resolved_at"], r["updated_at"] = "resolved", time.time(), time.time()
            self.save_state()

    def start(self, job: FleetJob) -> asyncio.Future:
        """Queue the capture now (the worker starts it at its next turn); the future gives its result."""
        rec = job.record
        done = self._captured_here(rec)
        if done is not None:            # this host's own webhook captured it already: report that bundle
            job.mark_started()
            fut = asyncio.get_running_loop().create_future()
            fut.set_result(done)
            return fut
        request = CaptureRequest(
            incident=Incident(id=rec.incident_id, source=rec.source or "fleet", title=rec.title, url=rec.url,
                              severity=rec.severity, services=list(rec.scope.services)),
            trigger=Trigger(kind="fleet", at="", by=rec.requested_by or f"fleet:{rec.fleet}",
                            reason=f"fleet {rec.fleet}: capture revision {rec.capture_rev}"
                                   f"{', late (this host was away when it was declared)' if job.late else ''}; "
                                   f"concerns this host: {job.matched_by}"),
            profile=job.profile, collectors=list(self.cfg["daemon.collectors"]))
        return asyncio.ensure_future(self._run(job, request, self._submit(job, request)))

    def _submit(self, job: FleetJob, request: CaptureRequest):
        queued = self.jobs.submit("fleet", self.key(job.record), request)
        if queued is not None:                       # before the worker can take it (its next turn)
            queued.on_start = job.mark_started
            queued.future = asyncio.get_running_loop().create_future()
        return queued

    async def _run(self, job: FleetJob, request: CaptureRequest, queued) -> Captured:
        key = self.key(job.record)
        while queued is None:                        # the queue is full: wait for room
            await asyncio.sleep(0.5)
            queued = self._submit(job, request)
        r = self.state.incidents.get(key)
        if r is not None:
            r["capture"], r["job"], r["updated_at"] = "queued", queued.id, time.time()
            self.save_state()
        try:
            result: dict[str, Any] = await queued.future
        except asyncio.CancelledError:
            if queued.started is None:               # resolved before it started: never run it
                queued.cancelled = True
                if r is not None and r.get("capture") == "queued":
                    r["capture"] = ""
            raise
        if result.get("status") != "done":
            raise CaptureFailed(str(result.get("error") or "the capture wrote no bundle"))
        counts: dict[str, int] = {}
        for status in (result.get("collectors") or {}).values():
            counts[status] = counts.get(status, 0) + 1
        return Captured(bundle=str(result["bundle"]), sha256=str(result["sha256"]), size=int(result.get("size") or 0),
                        collectors=counts)

    def _captured_here(self, rec: IncidentRecord) -> Captured | None:
        r = self.state.incidents.get(self.key(rec))
        if rec.capture_rev != 1 or not r or r.get("capture") != "done":
            return None
        last = next((c for c in reversed(r.get("captures") or []) if c.get("status") == "ok" and c.get("bundle")),
                    None)
        if last is None or not Path(last["bundle"]).exists():
            return None
        return Captured(bundle=last["bundle"], sha256=last.get("sha256", ""), size=Path(last["bundle"]).stat().st_size)

    async def upload(self, job: FleetJob, captured: Captured) -> dict[str, Any]:
        receipt = Store.receipt(Path(captured.bundle))
        if not receipt.exists():
            before = self.jobs.upload_rounds
            self.jobs._pending_cache = (0.0, 0)     # our bundle is pending: count afresh
            self.jobs.upload_kick.set()
            while not receipt.exists() and self.jobs.upload_rounds == before:
                await asyncio.sleep(0.1)
        if not receipt.exists():
            raise UploadFailed(self.jobs.last_upload.get("error") or "the upload round did not upload it")
        try:
            return json.loads(receipt.read_text())
        except (OSError, ValueError) as exc:
            raise UploadFailed(f"cannot read its upload receipt: {exc}") from None


def make_agent(cfg: Config, jobs: "JobRunner", state: State, save_state, identity) -> FleetAgent:
    """The fleet agent of a daemon (``ConfigError`` when the fleet settings cannot work)."""
    try:
        host = keys.check_host(cfg.hostname)
    except keys.BadName as exc:
        raise ConfigError(f"fleet mode: {exc} (set host.name)") from None
    try:
        settings = conn.Settings.from_config(cfg)
        settings.auth()
        settings.tls_context()
    except conn.FleetError as exc:
        raise ConfigError(str(exc)) from None
    runner = DaemonRunner(cfg, jobs, state, save_state)
    return FleetAgent(settings, host, identity, runner, FleetState(state_dir(cfg)), Options.from_config(cfg),
                      on_seen=runner.seen, on_closed=runner.closed)
