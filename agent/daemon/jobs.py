"""The daemon's job runner: the capture queue and worker, the uploader, the parent side of the child.

Where it sits: the intake ``submit``s a ``CaptureRequest``; the **worker** takes one
job at a time from a bounded queue (one capture at a time per host; a full queue
makes the intake answer 503 so the tracker retries) and runs it in a child process,
``python -m agent daemon-job`` (``agent.daemon.child``). The daemon never forks
itself: the runner forks collector children, and forking a multi-threaded asyncio
server is unsafe. A job that outlives its time budget plus ``JOB_GRACE_S`` is
stopped (only our own child, in its own session; collectors die with it and their
evidence is salvaged). Each outcome goes into the state record of its incident.

The **uploader** runs ``upload_pending`` in a child every ``daemon.upload_interval_s`` and
right after each capture (a fleet capture: after its upload spread, ``agent.daemon.fleet``),
backing off (doubling from ``upload.retry_initial_s`` to ``upload.retry_max_s``) while it fails.

Parent and child speak ``ChildJob`` (stdin) and ``JobResult`` (stdout), both in
``agent.daemon.request``; the child's stderr lines are logged as ``job_output``.
"""
from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from agent.config import Config
from agent.daemon import childproc
from agent.daemon.kvlog import kv
from agent.daemon.request import CaptureRequest, ChildJob, JobResult
from agent.daemon.state import State
from agent.daemon.telemetry import Telemetry
from agent.store import Store

JOB_GRACE_S = 120.0          # beyond a capture's time budget: packing, hashing, salvage


@dataclass
class Job:
    id: str
    kind: str                       # webhook | api | requeued
    key: str                        # state key "<source>/<id>" ("" for none)
    request: CaptureRequest
    created: float = field(default_factory=time.time)
    started: float | None = None
    future: asyncio.Future | None = None    # set by a caller that waits for the result (local API, fleet)
    on_start: Callable[[], None] | None = None     # called when the capture starts (fleet: status capturing)
    cancelled: bool = False                 # set before it starts: the worker drops it (fleet: resolved)

    def summary(self) -> dict[str, Any]:
        return {"job": self.id, "kind": self.kind, "incident": self.request.incident.id,
                "profile": self.request.profile, "queued_at": self.created, "started_at": self.started}


def new_job_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


class JobRunner:
    def __init__(self, cfg: Config, config_path: str | None, store: Store, state: State, tm: Telemetry,
                 save_state: Callable[[], None]):
        self.cfg, self.config_path, self.store, self.state, self.tm = cfg, config_path, store, state, tm
        self.save_state = save_state
        self.queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=max(1, int(cfg["daemon.queue_size"])))
        self.running: Job | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.stopping = False
        self.upload_kick = asyncio.Event()
        self.last_upload: dict[str, Any] = {}
        self.upload_available: bool | None = None
        self.upload_delay = float(cfg["daemon.upload_interval_s"])
        self.upload_rounds = 0                  # uploader wake-ups so far (the fleet waits for the next)
        self._pending_cache: tuple[float, int] = (0.0, 0)

    # -- queue ------------------------------------------------------------------
    def submit(self, kind: str, key: str, request: CaptureRequest, job_id: str = "") -> Job | None:
        """Queue a capture; None when the queue is full. Synchronous (the intake's decisions are)."""
        job = Job(job_id or new_job_id(), kind, key, request)
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            return None
        return job

    def qsize(self) -> int:
        return self.queue.qsize()

    def pending_uploads(self) -> int:
        """Bundles waiting for upload (cached 2 s: /metrics and /healthz may be polled often): 0 on a
        local-only host (no upload.url), where bundles are kept, not pending (agent/store.py)."""
        now = time.monotonic()
        if now - self._pending_cache[0] > 2.0:
            try:
                n = len(self.store.pending(self.cfg["upload.url"]))
            except OSError:
                n = -1
            self._pending_cache = (now, n)
        return self._pending_cache[1]

    # -- worker -------------------------------------------------------------------
    async def worker(self) -> None:
        while True:
            job = await self.queue.get()
            if self.stopping or job.cancelled:   # stopping: stays "queued" in the state file, the next start runs it
                self.queue.task_done()
                continue
            try:
                await self._run_capture(job)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one bad job must not stop the worker
                kv(logging.ERROR, "job_error", f"{type(exc).__name__}: {exc}", job=job.id)
                if job.future and not job.future.done():
                    job.future.set_result({"status": "failed", "error": str(exc), "job": job.id})
            finally:
                self.running = None
                self.proc = None
                self.queue.task_done()

    async def _run_capture(self, job: Job) -> None:
        self.running = job
        job.started = time.time()
        if job.on_start is not None:        # the fleet's "capturing" status
            job.on_start()
        self.tm.queue_wait.observe(job.started - job.created)
        rec = self.state.incidents.get(job.key) if job.key else None
        if rec is not None:
            rec["capture"] = "running"
            self.save_state()
        inc = job.request.incident.id
        kv(logging.INFO, "capture_start", job=job.id, incident=inc, kind=job.kind,
           profile=job.request.profile, queue_wait_s=round(job.started - job.created, 3))
        budget = float(job.request.time_budget_s or self.cfg["capture.time_budget_s"])
        t0 = time.monotonic()
        rc, res, err_tail = await self.run_child(ChildJob("capture", request=job.request), budget + JOB_GRACE_S,
                                                 job.id)
        took = time.monotonic() - t0
        self.tm.capture_s.observe(took)
        result: dict[str, Any]
        if rc == 0 and res.ok and res.captured is not None:
            status, cap = "ok", res.captured
            result = {"status": "done", "job": job.id, **res.to_json()["captured"]}
            for c in cap.collector_results:
                self.tm.collector_s.observe(float(c.get("duration_s") or 0), c.get("name", "?"))
                self.tm.collector_status.inc(c.get("name", "?"), c.get("status", "?"))
            kv(logging.INFO, "capture_done", job=job.id, incident=inc, bundle=cap.bundle, sha256=cap.sha256,
               duration_s=round(took, 3))
        else:
            status = "timeout" if rc is None else "failed"
            error = res.error or err_tail or f"exit status {rc}"
            result = {"status": "failed", "job": job.id, "error": error, "exit_code": rc}
            kv(logging.ERROR, "capture_failed", job=job.id, incident=inc, reason=status, error=error)
        self.tm.captures.inc(status)
        self._pending_cache = (0.0, 0)
        rec = self.state.incidents.get(job.key) if job.key else None
        if rec is not None:
            rec["capture"] = "done" if status == "ok" else "failed"
            rec.pop("job_request", None)
            rec.setdefault("captures", []).append({
                "job": job.id, "at": job.started, "status": status, "bundle": result.get("bundle", ""),
                "sha256": result.get("sha256", ""), "error": result.get("error", "")})
            rec["captures"] = rec["captures"][-20:]
            self.save_state()
        if job.future and not job.future.done():
            job.future.set_result(result)
        if status == "ok" and job.kind != "fleet":     # a fleet capture uploads after its random spread
            self.upload_kick.set()

    # -- the child process ----------------------------------------------------------
    async def run_child(self, job: ChildJob, timeout: float, label: str) -> tuple[int | None, JobResult, str]:
        """``agent.daemon.childproc.run_child`` with this daemon's config; a capture's process is kept
        in ``self.proc`` so a stopping daemon can stop it."""
        def started(proc: asyncio.subprocess.Process) -> None:
            if job.kind == "capture":
                self.proc = proc
        return await childproc.run_child(self.cfg, self.config_path, job, timeout, label, on_start=started)

    async def sweep(self) -> None:
        """The start-up sweeps, in a child (the ledgers' code belongs to the capture side): the pause ledger
        (resume targets a dead goldenhour left stopped) and the scratch ledger (remove the files a killed
        goldenhour made outside its staging folder, a JVM's heap dump among them)."""
        _, res, _ = await self.run_child(ChildJob("sweep"), 120, "sweep")
        if res.resumed:
            kv(logging.WARNING, "pause_sweep", "resumed targets left stopped by an earlier run", targets=res.resumed)
        if res.scratch:
            kv(logging.WARNING, "scratch_sweep", "removed scratch files left by a killed goldenhour", files=res.scratch)

    async def salvage(self) -> None:
        _, res, _ = await self.run_child(ChildJob("salvage"), 600, "salvage")
        for b in res.salvaged:
            kv(logging.WARNING, "salvaged", "published an interrupted capture", bundle=b)

    # -- uploader -------------------------------------------------------------------
    async def uploader(self) -> None:
        interval = max(1.0, float(self.cfg["daemon.upload_interval_s"]))
        retry_max = max(interval, float(self.cfg["upload.retry_max_s"]))
        self.upload_delay = interval
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.upload_kick.wait(), self.upload_delay)
            self.upload_kick.clear()
            await self._upload_round(interval, retry_max)
            self.upload_rounds += 1

    async def _upload_round(self, interval: float, retry_max: float) -> None:
        if self.pending_uploads() == 0:   # with no upload.url, only bundles given a URL by snapshot --upload
            self.upload_delay = interval
            return
        if self.upload_available is None:
            try:
                self.upload_available = importlib.util.find_spec("agent.upload") is not None
            except (ImportError, ValueError):
                self.upload_available = False
            if not self.upload_available:
                kv(logging.WARNING, "upload", "upload.url is set but agent.upload is missing; bundles stay local")
        if not self.upload_available:
            self.tm.upload_runs.inc("unavailable")
            self.upload_delay = retry_max
            return
        t0 = time.monotonic()
        rc, res, err = await self.run_child(ChildJob("upload"), 3600, "upload")
        self._pending_cache = (0.0, 0)
        uploaded, failed = (res.upload.uploaded, res.upload.failed) if res.upload else (0, 0)
        for outcome, n in (("uploaded", uploaded), ("failed", failed)):
            if n:
                self.tm.uploads.inc(outcome, by=n)
        ok = rc == 0 and res.ok and not failed
        self.tm.upload_runs.inc("ok" if ok else "failed")
        self.last_upload = {"at": time.time(), "ok": ok, "uploaded": uploaded, "failed": failed,
                            "duration_s": round(time.monotonic() - t0, 3),
                            "error": res.error or ("" if ok else (res.upload.error if res.upload else "") or err
                                                   or f"exit status {rc}")}
        if ok:
            self.upload_delay = interval
        else:
            self.upload_delay = min(max(self.upload_delay * 2, float(self.cfg["upload.retry_initial_s"])), retry_max)
        kv(logging.INFO if ok else logging.WARNING, "upload", uploaded=uploaded, failed=failed,
           next_s=round(self.upload_delay, 1), error=self.last_upload["error"])
