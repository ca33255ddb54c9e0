"""The daemon's service object: its parts wired together, lifecycle, health, metrics.

Where it sits: ``agent.daemon.server`` builds one ``Service`` per process, starts it
once the sockets are bound and stops it on SIGTERM; the HTTP app calls into it.
It owns the config check, the store, the state, this host's identity, the
telemetry, the job runner (``jobs``), the webhook receiver and the intake:

    Receiver (verify, parse) -> Intake (target, dedupe) -> JobRunner (queue, child) -> state

At start: the ledgers' sweep when they have entries (resume any target a dead
goldenhour left stopped, remove the scratch files a killed goldenhour left outside its
staging folder; in a child, like every piece of capture-side code),
salvage of interrupted captures, re-queueing of the captures that were queued when
the daemon stopped. At stop: a running capture may finish for ``SHUTDOWN_GRACE_S``;
queued ones stay queued in the state file.
"""
from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import pkgutil
import time
from typing import Any

from agent import __version__, targeting
from agent.config import Config, ConfigError
from agent.daemon.client import read_token
from agent.daemon.guard import Guard
from agent.daemon.intake import Intake, Receiver
from agent.daemon.childproc import stop_proc
from agent.daemon.jobs import JobRunner
from agent.daemon.kvlog import kv
from agent.daemon.request import CaptureRequest, RequestError
from agent.daemon.state import State, state_dir
from agent.daemon.telemetry import Telemetry
from agent.store import Store

SHUTDOWN_GRACE_S = 20.0      # how long a stopping daemon lets a running capture finish


def collector_names() -> list[str]:
    """Collector names without importing the modules or their package (the registry names each
    after its module), so the daemon never loads collector code (bcc...) into its own process."""
    spec = importlib.util.find_spec("collectors")
    paths = list(spec.submodule_search_locations or []) if spec else []
    names = [m.name for m in pkgutil.iter_modules(paths) if not m.name.startswith("_")]
    names += [d.strip().rsplit(".", 1)[-1] for d in os.environ.get("GOLDENHOUR_EXTRA_COLLECTORS", "").split(",")
              if d.strip()]
    return sorted(names)


class Service:
    def __init__(self, cfg: Config, config_path: str | None = None):
        self.cfg = cfg
        self.config_path = config_path          # children get the config itself (ChildJob.config); SIGHUP reloads
        self.store = Store(cfg.store_path)
        self.state = State(state_dir(cfg), cfg["daemon.dedupe_hours"], cfg["daemon.open_hours"])
        self.identity = targeting.identity(cfg)
        self.tasks: list[asyncio.Task] = []
        self.started_at = time.time()
        self.token = read_token(cfg)
        self.tm = Telemetry(started_at=lambda: self.started_at, queue_length=lambda: self.jobs.qsize(),
                            running=lambda: 1 if self.jobs.running else 0,
                            open_incidents=lambda: len(self.state.open_incidents()),
                            pending_uploads=lambda: self.jobs.pending_uploads())
        self.jobs = JobRunner(cfg, config_path, self.store, self.state, self.tm, self.save_state)
        self.guard = Guard.from_config(cfg, count=lambda event: self.tm.http_events.inc(event))
        self.receiver = Receiver(cfg)
        self.intake = Intake(cfg, self.state, self.identity, self.jobs)
        self.fleet = None                       # fleet mode (agent.daemon.fleet) when fleet.servers is set
        if cfg.fleet_enabled:
            from agent.daemon.fleet import make_agent
            self.fleet = make_agent(cfg, self.jobs, self.state, self.save_state, self.identity)
            self.tm.fleet(lambda: 1 if self.fleet and self.fleet.connected.is_set() else 0,
                          lambda: self.fleet.counts if self.fleet else {})
        self.check_collectors(cfg)

    @staticmethod
    def check_collectors(cfg: Config) -> None:
        if cfg["daemon.collectors"]:
            known = collector_names()
            bad = [c for c in cfg["daemon.collectors"] if c not in known]
            if bad:
                raise ConfigError(f"daemon.collectors names unknown collectors {', '.join(bad)}; "
                                  f"known: {', '.join(known)}")

    def save_state(self) -> None:
        self.intake.save()

    # -- lifecycle ------------------------------------------------------------
    async def start(self) -> None:
        self.store.ensure()
        if any(d.is_dir() and any(d.glob("*.json")) for d in (self.store.ledger, self.store.scratch)):
            await self.jobs.sweep()
        self.state.load(repair=True)
        if self.state.problem:
            kv(logging.ERROR, "state", self.state.problem)
        self.state.prune()
        self._requeue()
        self.state.save()
        if self.store.staging.is_dir() and any(self.store.staging.glob("*/.request.json")):
            self.tasks.append(asyncio.create_task(self.jobs.salvage(), name="salvage"))
        self.tasks.append(asyncio.create_task(self.jobs.worker(), name="worker"))
        self.tasks.append(asyncio.create_task(self.jobs.uploader(), name="uploader"))
        if self.fleet is not None:
            await self.fleet.start()            # connects in the background: NATS down never blocks the daemon

    def _requeue(self) -> None:
        for key, rec in self.state.incidents.items():
            if rec.get("capture") == "running":
                rec["capture"] = "interrupted"
                kv(logging.WARNING, "job_interrupted", "a capture was running when the daemon stopped; "
                   "its evidence is salvaged", incident=rec.get("id"), job=rec.get("job"))
            elif rec.get("capture") == "queued":
                try:
                    request = CaptureRequest.from_json(rec["job_request"]) if rec.get("job_request") else None
                except RequestError as exc:
                    kv(logging.ERROR, "state", f"cannot re-queue a capture: {exc}", incident=rec.get("id"))
                    request = None
                if request is None or self.jobs.submit("requeued", key, request, rec.get("job") or "") is None:
                    rec["capture"] = "failed"
                else:
                    rec["job_request"] = request.to_json()

    def healthy(self) -> tuple[bool, str]:
        for t in self.tasks:
            if t.get_name() in ("worker", "uploader") and t.done():
                return False, f"{t.get_name()} task ended"
        return self.fleet.healthy() if self.fleet is not None else (True, "")

    def health(self) -> tuple[bool, dict[str, Any]]:
        """``GET /healthz``: (healthy, body)."""
        ok, why = self.healthy()
        body = {"status": "ok" if ok else "unhealthy", "version": __version__,
                "uptime_s": round(time.time() - self.started_at, 1), "host": self.cfg.hostname,
                "queue": self.jobs.qsize(), "queue_size": self.jobs.queue.maxsize,
                "running": self.jobs.running.summary() if self.jobs.running else None,
                "open_incidents": len(self.state.open_incidents()),
                "pending_uploads": self.jobs.pending_uploads(),
                "trackers": self.receiver.enabled(),
                "last_upload": self.jobs.last_upload or None}
        if self.fleet is not None:
            body["fleet"] = self.fleet.summary()
        if not ok:
            body["reason"] = why
        return ok, body

    def webhook_answered(self, tracker: str, status: int, outcome: str, t0: float, **fields: Any) -> None:
        """Count and log one webhook answer (``t0``: time.monotonic() when the request arrived)."""
        self.tm.deliveries.inc(tracker, outcome)
        kv(logging.WARNING if status >= 400 else logging.INFO, "webhook", tracker=tracker, status=status,
           outcome=outcome, ms=round((time.monotonic() - t0) * 1000, 1), **fields)

    async def stop(self) -> None:
        """Let a running capture finish (up to SHUTDOWN_GRACE_S, then stop it); queued ones stay queued
        in the state file and run after the next start."""
        jobs = self.jobs
        jobs.stopping = True
        if jobs.running:
            kv(logging.INFO, "shutdown", "waiting for the running capture", job=jobs.running.id,
               grace_s=SHUTDOWN_GRACE_S)
            deadline = time.monotonic() + SHUTDOWN_GRACE_S
            while jobs.running and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if jobs.running and jobs.proc is not None:
                await stop_proc(jobs.proc)
                deadline = time.monotonic() + 5
                while jobs.running and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
        if self.fleet is not None:              # after the running capture: its status is written first
            await self.fleet.stop()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        try:
            self.state.save()
        except OSError:
            pass
