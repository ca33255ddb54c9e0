"""``goldenhour daemon``: webhook receiver, capture queue, spool uploader, local API.

Where it sits: the long-running trigger. One asyncio process (uvicorn serving a
Starlette app) that never captures in its own process:

- ``POST /v1/webhooks/<tracker>``: read the raw body (capped at
  ``daemon.max_body_bytes``), verify the tracker's authentication over those
  bytes (``agent.webhooks.<tracker>``), parse, decide whether the incident
  concerns this host (``agent.targeting``), dedupe (``agent.daemon_state``),
  queue a capture and answer ``202`` — all without awaiting anything but the
  body, so duplicates arriving together are decided one after the other and the
  answer comes in milliseconds.
- The **worker** takes one job at a time from a bounded queue (one capture at a
  time per host; a full queue answers ``503`` so the tracker retries) and runs
  it in a child process, ``python -m agent daemon-job``, which calls
  ``agent.capture.capture``. The daemon never forks itself: the runner forks
  collector children, and forking a multi-threaded asyncio server is unsafe.
  A job that outlives its time budget plus a grace period is stopped (only our
  own child; collectors die with it and their evidence is salvaged).
- The **uploader** runs ``upload_pending`` (from ``agent.upload``) in a child
  every ``daemon.upload_interval_s`` and right after each capture, backing off
  (doubling up to ``upload.retry_max_s``) while uploads fail.
- ``GET /healthz`` (JSON), ``GET /metrics`` (Prometheus text).
- Local API: ``POST /v1/snapshot`` and ``GET /v1/incidents``, over the Unix
  socket ``daemon.socket`` (file permissions are the access control) or over
  HTTP with ``Authorization: Bearer <token from daemon.api_token_file>``.
- systemd: ``READY=1`` once listening, ``WATCHDOG=1`` every half
  ``WatchdogSec`` while the worker and uploader are alive, ``STOPPING=1``;
  logs are ``key=value`` lines on stderr with a ``<N>`` priority prefix when
  stderr is the journal.
- At start: the pause ledger sweep (resume any target a dead goldenhour left
  stopped), salvage of interrupted captures, re-queueing of captures that were
  queued when the daemon stopped.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import secrets as secrets_mod
import signal
import socket
import stat
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import __version__, pauses, targeting
from agent import webhooks as wh
from agent.config import Config, ConfigError, read_secret
from agent.daemon_client import api_socket_path, parse_listen, read_token
from agent.daemon_state import State, state_dir
from agent.errors import UsageError
from agent.metrics import CONTENT_TYPE, Counter, Gauge, Histogram, Registry
from agent.store import Store

log = logging.getLogger("goldenhour.daemon")
JOB_GRACE_S = 120.0          # beyond a capture's time budget: packing, hashing, salvage
SHUTDOWN_GRACE_S = 20.0      # how long a stopping daemon lets a running capture finish
PRIO = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


# -- logging ------------------------------------------------------------------

def _kv_value(v: Any) -> str:
    s = str(v)
    if s == "" or any(c in s for c in ' "=\n\t'):
        return json.dumps(s)
    return s


class KVFormatter(logging.Formatter):
    """``ts=… level=info event=webhook tracker=pagerduty …``: one line, grep- and journald-friendly."""

    def __init__(self, journal: bool = False):
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "kv", None) or {}
        parts = [] if self.journal else [f"ts={time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(record.created))}"
                                         f".{int(record.msecs):03d}Z"]
        parts.append(f"level={record.levelname.lower()}")
        if "event" not in fields:
            parts.append(f"event={record.name.rsplit('.', 1)[-1]}")
        msg = record.getMessage()
        for k, v in fields.items():
            parts.append(f"{k}={_kv_value(v)}")
        if msg:
            parts.append(f"msg={_kv_value(msg)}")
        if record.exc_info:
            parts.append(f"exc={_kv_value(self.formatException(record.exc_info))}")
        line = " ".join(parts)
        return f"<{PRIO.get(record.levelno, 6)}>{line}" if self.journal else line


def setup_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KVFormatter(journal=bool(os.environ.get("JOURNAL_STREAM"))))
    for name in ("goldenhour", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(level if name == "goldenhour" else logging.WARNING)
        lg.propagate = False


def kv(level: int, event: str, msg: str = "", **fields: Any) -> None:
    log.log(level, msg, extra={"kv": {"event": event, **fields}})


# -- systemd ----------------------------------------------------------------------

def sd_notify(message: str) -> bool:
    """Send ``message`` to $NOTIFY_SOCKET (sd_notify(3)); False when not under systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(message.encode())
        return True
    except OSError:
        return False


def watchdog_interval() -> float | None:
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    try:
        return max(int(usec) / 1e6 / 2, 0.05)
    except ValueError:
        return None


# -- jobs -------------------------------------------------------------------------

@dataclass
class Job:
    id: str
    kind: str                       # webhook | api | requeued
    key: str                        # state key "<source>/<id>" ("" for none)
    request: dict[str, Any]         # what daemon-job gets: incident, trigger, profile, only...
    created: float = field(default_factory=time.time)
    started: float | None = None
    future: asyncio.Future | None = None

    def summary(self) -> dict[str, Any]:
        return {"job": self.id, "kind": self.kind, "incident": self.request["incident"]["id"],
                "profile": self.request.get("profile"), "queued_at": self.created, "started_at": self.started}


def new_job_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets_mod.token_hex(3)


class TooLarge(Exception):
    pass


def collector_names() -> list[str]:
    """Collector names without importing the modules (the registry names each after its module),
    so the daemon never loads collector code (bcc...) into its own, long-lived process."""
    import pkgutil

    import collectors
    names = [m.name for m in pkgutil.iter_modules(collectors.__path__) if not m.name.startswith("_")]
    names += [d.strip().rsplit(".", 1)[-1] for d in os.environ.get("GOLDENHOUR_EXTRA_COLLECTORS", "").split(",")
              if d.strip()]
    return sorted(names)


# -- the daemon -------------------------------------------------------------------

class Daemon:
    def __init__(self, cfg: Config, config_path: str | None = None):
        self.cfg = cfg
        self.config_path = config_path
        self.store = Store(cfg.store_path)
        self.state = State(state_dir(cfg), cfg["daemon.dedupe_hours"], cfg["daemon.open_hours"])
        self.identity = targeting.identity(cfg)
        self.queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=max(1, int(cfg["daemon.queue_size"])))
        self.running: Job | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.tasks: list[asyncio.Task] = []
        self.upload_kick = asyncio.Event()
        self.stopping = False
        self.started_at = time.time()
        self.secrets: dict[str, list[str]] = {}
        self.token = read_token(cfg)
        self.last_upload: dict[str, Any] = {}
        self.upload_available: bool | None = None
        self.upload_delay = float(cfg["daemon.upload_interval_s"])
        self._pending_cache: tuple[float, int] = (0.0, 0)
        self._setup_metrics()
        self._check_config()

    # -- config ---------------------------------------------------------------
    def _check_config(self) -> None:
        for tracker in wh.TRACKERS:
            opts = self.cfg.webhook(tracker)
            if not opts["enabled"]:
                continue
            sec = read_secret(opts)
            if not sec:
                raise ConfigError(f"[webhooks.{tracker}] is enabled but has no secret or secret_file")
            self.secrets[tracker] = sec
        if self.cfg["daemon.collectors"]:
            known = collector_names()
            bad = [c for c in self.cfg["daemon.collectors"] if c not in known]
            if bad:
                raise ConfigError(f"daemon.collectors names unknown collectors {', '.join(bad)}; "
                                  f"known: {', '.join(known)}")

    # -- metrics --------------------------------------------------------------
    def _setup_metrics(self) -> None:
        r = self.metrics = Registry()
        self.m_info = r.add(Gauge("goldenhour_build_info", "Agent version (value is always 1).", ["version"]))
        self.m_info.set(1, __version__)
        r.add(Gauge("goldenhour_daemon_start_time_seconds", "When the daemon started (Unix time).",
                    fn=lambda: self.started_at))
        self.m_deliveries = r.add(Counter(
            "goldenhour_webhook_deliveries_total",
            "Webhook deliveries by tracker and outcome (queued, duplicate, ignored, ping, resolved, acknowledged, "
            "not_for_host, stale, unauthorized, forbidden, malformed, too_large, unknown_tracker, "
            "method_not_allowed, queue_full, error).", ["tracker", "outcome"]))
        self.m_captures = r.add(Counter("goldenhour_captures_total",
                                        "Captures run by the daemon, by result (ok: a bundle was written; "
                                        "failed: none; timeout: stopped after its budget).", ["status"]))
        self.m_capture_s = r.add(Histogram("goldenhour_capture_duration_seconds",
                                           "Wall time of a capture job, queue wait excluded.",
                                           [1, 2, 5, 10, 20, 30, 60, 120, 300, 600]))
        self.m_queue_wait = r.add(Histogram("goldenhour_capture_queue_wait_seconds",
                                            "Time from webhook/API request to the capture starting.",
                                            [0.1, 0.5, 1, 5, 10, 30, 60, 300]))
        self.m_collector_s = r.add(Histogram("goldenhour_collector_duration_seconds",
                                             "Duration of each collector in daemon captures.",
                                             [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60], ["collector"]))
        self.m_collector_status = r.add(Counter("goldenhour_collector_results_total",
                                                "Collector results in daemon captures.", ["collector", "status"]))
        r.add(Gauge("goldenhour_capture_queue_length", "Capture jobs waiting.", fn=lambda: self.queue.qsize()))
        r.add(Gauge("goldenhour_capture_running", "1 while a capture job runs.",
                    fn=lambda: 1 if self.running else 0))
        r.add(Gauge("goldenhour_open_incidents", "Incidents open for this host (daemon state).",
                    fn=lambda: len(self.state.open_incidents())))
        r.add(Gauge("goldenhour_uploads_pending", "Bundles in the local store without an upload receipt.",
                    fn=self.pending_uploads))
        self.m_uploads = r.add(Counter("goldenhour_uploads_total",
                                       "Bundles the daemon's uploader sent or failed to send.", ["outcome"]))
        self.m_upload_runs = r.add(Counter("goldenhour_upload_runs_total",
                                           "Uploader runs by result (ok, failed, unavailable).", ["result"]))

    def pending_uploads(self) -> int:
        now = time.monotonic()
        if now - self._pending_cache[0] > 2.0:
            try:
                n = len(self.store.pending())
            except OSError:
                n = -1
            self._pending_cache = (now, n)
        return self._pending_cache[1]

    # -- lifecycle ------------------------------------------------------------
    async def start(self) -> None:
        self.store.ensure()
        resumed = pauses.sweep(self.store.ledger)
        if resumed:
            kv(logging.WARNING, "pause_sweep", "resumed targets left stopped by an earlier run", targets=resumed)
        self.state.load(repair=True)
        if self.state.problem:
            kv(logging.ERROR, "state", self.state.problem)
        self.state.prune()
        requeue: list[Job] = []
        for key, rec in self.state.incidents.items():
            if rec.get("capture") == "running":
                rec["capture"] = "interrupted"
                kv(logging.WARNING, "job_interrupted", "a capture was running when the daemon stopped; "
                   "its evidence is salvaged", incident=rec.get("id"), job=rec.get("job"))
            elif rec.get("capture") == "queued":
                if rec.get("job_request"):
                    requeue.append(Job(rec.get("job") or new_job_id(), "requeued", key, rec["job_request"]))
                else:
                    rec["capture"] = "failed"
        for job in requeue:
            try:
                self.queue.put_nowait(job)
            except asyncio.QueueFull:
                self.state.incidents[job.key]["capture"] = "failed"
        self.state.save()
        if any(self.store.staging.glob("*/.request.json")) if self.store.staging.is_dir() else False:
            self.tasks.append(asyncio.create_task(self._salvage(), name="salvage"))
        self.tasks.append(asyncio.create_task(self._worker(), name="worker"))
        self.tasks.append(asyncio.create_task(self._uploader(), name="uploader"))

    def start_watchdog(self) -> None:
        """After READY=1: ping WATCHDOG=1 every WatchdogSec/2 while healthy."""
        wd = watchdog_interval()
        if wd:
            self.tasks.append(asyncio.create_task(self._watchdog(wd), name="watchdog"))

    def healthy(self) -> tuple[bool, str]:
        for t in self.tasks:
            if t.get_name() in ("worker", "uploader") and t.done():
                return False, f"{t.get_name()} task ended"
        return True, ""

    async def stop(self) -> None:
        """Let a running capture finish (up to SHUTDOWN_GRACE_S, then stop it); queued ones stay queued
        in the state file and run after the next start."""
        self.stopping = True
        sd_notify("STOPPING=1")
        if self.running:
            kv(logging.INFO, "shutdown", "waiting for the running capture", job=self.running.id,
               grace_s=SHUTDOWN_GRACE_S)
            deadline = time.monotonic() + SHUTDOWN_GRACE_S
            while self.running and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if self.running and self.proc is not None:
                await self._stop_proc(self.proc)
                deadline = time.monotonic() + 5
                while self.running and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        try:
            self.state.save()
        except OSError:
            pass

    async def _watchdog(self, every: float) -> None:
        while True:
            ok, why = self.healthy()
            if ok:
                sd_notify("WATCHDOG=1")
            else:
                kv(logging.ERROR, "watchdog", "not pinging the watchdog", reason=why)
            await asyncio.sleep(every)

    # -- webhooks -------------------------------------------------------------
    def count(self, tracker: str, outcome: str) -> None:
        self.m_deliveries.inc(tracker, outcome)

    def secrets_for(self, tracker: str) -> list[str]:
        # re-read secret files so a rotated secret works without a restart
        opts = self.cfg.webhook(tracker)
        if opts.get("secret_file"):
            try:
                self.secrets[tracker] = read_secret(opts)
            except ConfigError as exc:
                kv(logging.ERROR, "secret", str(exc), tracker=tracker)
        return self.secrets.get(tracker, [])

    def handle_events(self, tracker: str, events: list[wh.Event], delivery: str, payload_sha: str,
                      ) -> tuple[int, str, dict[str, Any]]:
        """Decide what a verified, parsed delivery does. Synchronous: no await, no interleaving."""
        now = time.time()
        dkey = f"{tracker}/{delivery}" if delivery else ""
        if dkey and dkey in self.state.deliveries:
            seen = self.state.deliveries[dkey]
            return 200, "duplicate", {"status": "duplicate", "delivery": delivery,
                                      "first_outcome": seen.get("outcome", "")}
        if any(e.action == wh.PING for e in events):
            self._record_delivery(dkey, "ping", now)
            return 200, "ping", {"status": "ping"}
        by_incident: OrderedDict[str, list[wh.Event]] = OrderedDict()
        ignored: list[dict[str, str]] = []
        for e in events:
            if not e.incident_id:
                ignored.append({"kind": e.kind, "reason": e.reason or "no incident"})
                continue
            by_incident.setdefault(e.incident_id, []).append(e)
        results = [self._handle_incident(tracker, inc, evs, delivery, payload_sha, now)
                   for inc, evs in by_incident.items()]
        order = ["queued", "queue_full", "resolved", "acknowledged", "duplicate", "not_for_host", "stale", "ignored"]
        outcomes = [r["outcome"] for r in results] or ["ignored"]
        outcome = min(outcomes, key=order.index)
        status = {"queued": 202, "queue_full": 503}.get(outcome, 200)
        if outcome != "queue_full":
            self._record_delivery(dkey, outcome, now)
        self._save()
        body: dict[str, Any] = {"status": outcome, "incidents": results}
        if ignored:
            body["ignored"] = ignored
        return status, outcome, body

    def _record_delivery(self, dkey: str, outcome: str, now: float) -> None:
        if dkey:
            self.state.deliveries[dkey] = {"at": now, "outcome": outcome}

    def _save(self) -> None:
        try:
            self.state.save()
        except OSError as exc:
            kv(logging.ERROR, "state", f"cannot save the daemon state: {exc}")

    def _handle_incident(self, tracker: str, inc_id: str, evs: list[wh.Event], delivery: str,
                         payload_sha: str, now: float) -> dict[str, Any]:
        key = State.key(tracker, inc_id)
        rec = self.state.incidents.get(key)
        res: dict[str, Any] = {"incident": inc_id}
        triggers = [e for e in evs if e.action == wh.TRIGGER]
        if triggers:
            max_age = float(self.cfg["daemon.dedupe_hours"]) * 3600
            fresh = [e for e in triggers if e.occurred_at is None or now - e.occurred_at <= max_age]
            if not fresh:
                return {**res, "outcome": "stale", "reason": "event older than daemon.dedupe_hours"}
            concerned = [(e, why) for e in fresh if (why := targeting.concerns(e, self.identity))]
            if not concerned:
                return {**res, "outcome": "not_for_host",
                        "reason": "no host, service or label of this incident matches this host"}
            e, why = concerned[0]
            force = any(x.force for x, _ in concerned)
            reopen = any(x.reopen for x, _ in concerned)
            if rec is None:
                rec = self.state.incidents[key] = {
                    "id": inc_id, "source": tracker, "status": "open", "opened_at": now, "capture": "",
                    "captures": [], "deliveries": 0}
            for f in ("title", "url", "severity"):
                if getattr(e, f):
                    rec[f] = getattr(e, f)
            rec["services"] = sorted({s for x, _ in concerned for s in x.services})
            rec["hosts"] = sorted({h for x, _ in concerned for h in x.hosts})
            rec["concerns"] = why
            rec["updated_at"] = now
            rec["deliveries"] = int(rec.get("deliveries", 0)) + 1
            was_resolved = rec.get("status") == "resolved"
            if was_resolved and not (reopen or force):
                return {**res, "outcome": "duplicate", "reason": "this incident was resolved here already"}
            rec["status"] = "open"
            rec["triggered_at"] = now
            rec.pop("resolved_at", None)
            need = force or (was_resolved and reopen) or rec.get("capture") in ("", "failed", None)
            if not need:
                return {**res, "outcome": "duplicate", "reason": f"capture {rec.get('capture')} for this incident",
                        "job": rec.get("job", "")}
            request = self.capture_request(
                incident={"id": inc_id, "source": tracker, "title": rec.get("title", ""), "url": rec.get("url", ""),
                          "severity": rec.get("severity", ""), "services": rec["services"]},
                trigger={"kind": "webhook", "reason": f"{tracker} {e.kind}; concerns this host: {why}",
                         "by": f"{tracker}:{delivery or '-'}", "payload_sha256": payload_sha},
                profile=self.cfg["daemon.profile"])
            job = Job(new_job_id(), "webhook", key, request)
            try:
                self.queue.put_nowait(job)
            except asyncio.QueueFull:
                return {**res, "outcome": "queue_full", "reason": "capture queue full"}
            rec["capture"], rec["job"], rec["job_request"] = "queued", job.id, request
            return {**res, "outcome": "queued", "job": job.id, "concerns": why}
        if any(e.action == wh.RESOLVE for e in evs) or (
                self.cfg["daemon.close_on_ack"] and any(e.action == wh.ACK for e in evs)):
            if rec and rec.get("status") == "open":
                rec["status"], rec["resolved_at"], rec["updated_at"] = "resolved", now, now
                return {**res, "outcome": "resolved"}
            return {**res, "outcome": "ignored", "reason": "not an open incident here"}
        if any(e.action == wh.ACK for e in evs):
            if rec and rec.get("status") == "open":
                rec["acknowledged_at"] = rec["updated_at"] = now
                return {**res, "outcome": "acknowledged"}
            return {**res, "outcome": "ignored", "reason": "not an open incident here"}
        return {**res, "outcome": "ignored", "reason": "; ".join(sorted({e.reason for e in evs if e.reason}))}

    def capture_request(self, *, incident: dict[str, Any], trigger: dict[str, Any], profile: str,
                        **extra: Any) -> dict[str, Any]:
        req = {"incident": incident, "trigger": trigger, "profile": profile,
               "only": list(self.cfg["daemon.collectors"]), "store": str(self.cfg.store_path)}
        req.update({k: v for k, v in extra.items() if v not in (None, [], "")})
        return req

    # -- worker ---------------------------------------------------------------
    async def _worker(self) -> None:
        while True:
            job = await self.queue.get()
            if self.stopping:       # stays "queued" in the state file: the next start runs it
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
        self.m_queue_wait.observe(job.started - job.created)
        rec = self.state.incidents.get(job.key) if job.key else None
        if rec is not None:
            rec["capture"] = "running"
            self._save()
        inc = job.request["incident"]["id"]
        kv(logging.INFO, "capture_start", job=job.id, incident=inc, kind=job.kind,
           profile=job.request.get("profile"), queue_wait_s=round(job.started - job.created, 3))
        budget = float(job.request.get("time_budget_s") or self.cfg["capture.time_budget_s"])
        t0 = time.monotonic()
        rc, out, err_tail = await self._run_child({"kind": "capture", **job.request}, budget + JOB_GRACE_S, job.id)
        took = time.monotonic() - t0
        self.m_capture_s.observe(took)
        result: dict[str, Any]
        if rc == 0 and isinstance(out, dict) and out.get("bundle"):
            status = "ok"
            result = {"status": "done", "job": job.id, **out}
            for c in out.get("collector_results", []):
                self.m_collector_s.observe(float(c.get("duration_s") or 0), c.get("name", "?"))
                self.m_collector_status.inc(c.get("name", "?"), c.get("status", "?"))
            kv(logging.INFO, "capture_done", job=job.id, incident=inc, bundle=out.get("bundle"),
               sha256=out.get("sha256"), duration_s=round(took, 3))
        else:
            status = "timeout" if rc is None else "failed"
            error = (out.get("error") if isinstance(out, dict) else "") or err_tail or f"exit status {rc}"
            result = {"status": "failed", "job": job.id, "error": error, "exit_code": rc}
            kv(logging.ERROR, "capture_failed", job=job.id, incident=inc, reason=status, error=error)
        self.m_captures.inc(status)
        self._pending_cache = (0.0, 0)
        rec = self.state.incidents.get(job.key) if job.key else None
        if rec is not None:
            rec["capture"] = "done" if status == "ok" else "failed"
            rec.pop("job_request", None)
            rec.setdefault("captures", []).append({
                "job": job.id, "at": job.started, "status": status, "bundle": result.get("bundle", ""),
                "sha256": result.get("sha256", ""), "error": result.get("error", "")})
            rec["captures"] = rec["captures"][-20:]
            self._save()
        if job.future and not job.future.done():
            job.future.set_result(result)
        if status == "ok":
            self.upload_kick.set()

    async def _run_child(self, job: dict[str, Any], timeout: float, label: str
                         ) -> tuple[int | None, Any, str]:
        """Run ``python -m agent daemon-job`` with ``job`` on stdin; (exit code or None on timeout, JSON, stderr tail)."""
        import agent
        argv = [sys.executable, "-m", "agent"]
        if self.config_path:
            argv += ["--config", str(self.config_path)]
        argv.append("daemon-job")
        env = dict(os.environ)
        env["GOLDENHOUR_STORE"] = str(self.cfg.store_path)
        root = str(Path(agent.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.pop("NOTIFY_SOCKET", None)          # only the daemon talks to systemd
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True, env=env)
        if job.get("kind") == "capture":
            self.proc = proc
        tail: list[str] = []

        async def pump_stderr() -> None:
            assert proc.stderr is not None
            async for raw in proc.stderr:
                line = raw.decode("utf-8", "replace").rstrip()
                if line:
                    tail.append(line)
                    del tail[:-5]
                    kv(logging.INFO, "job_output", line, job=label)

        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(job).encode())
        await proc.stdin.drain()
        proc.stdin.close()
        err_task = asyncio.create_task(pump_stderr())
        try:
            stdout = await asyncio.wait_for(proc.stdout.read(), timeout)
            rc = await asyncio.wait_for(proc.wait(), 30)
        except asyncio.TimeoutError:
            kv(logging.ERROR, "job_timeout", "stopping the job (our own child process)", job=label,
               timeout_s=round(timeout, 1))
            await self._stop_proc(proc)
            err_task.cancel()
            return None, {}, "; ".join(tail[-2:])
        except asyncio.CancelledError:
            await self._stop_proc(proc)
            err_task.cancel()
            raise
        await asyncio.gather(err_task, return_exceptions=True)
        try:
            out = json.loads(stdout.decode() or "{}")
        except ValueError:
            out = {}
        return rc, out, "; ".join(t for t in tail[-2:] if "error" in t.lower()) or (tail[-1] if tail else "")

    @staticmethod
    async def _stop_proc(proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is not None:
            return
        try:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 10)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
        except ProcessLookupError:
            pass

    async def _salvage(self) -> None:
        rc, out, err = await self._run_child({"kind": "salvage"}, 600, "salvage")
        for b in (out or {}).get("salvaged", []) if isinstance(out, dict) else []:
            kv(logging.WARNING, "salvaged", "published an interrupted capture", bundle=b)

    # -- uploader -------------------------------------------------------------
    async def _uploader(self) -> None:
        interval = max(1.0, float(self.cfg["daemon.upload_interval_s"]))
        retry_max = max(interval, float(self.cfg["upload.retry_max_s"]))
        self.upload_delay = interval
        while True:
            try:
                await asyncio.wait_for(self.upload_kick.wait(), self.upload_delay)
            except asyncio.TimeoutError:
                pass
            self.upload_kick.clear()
            if not self.cfg["upload.url"] or self.pending_uploads() == 0:
                self.upload_delay = interval
                continue
            if self.upload_available is None:
                try:
                    import importlib.util
                    self.upload_available = importlib.util.find_spec("agent.upload") is not None
                except (ImportError, ValueError):
                    self.upload_available = False
                if not self.upload_available:
                    kv(logging.WARNING, "upload", "upload.url is set but agent.upload is not installed; "
                       "bundles stay in the local store")
            if not self.upload_available:
                self.m_upload_runs.inc("unavailable")
                self.upload_delay = retry_max
                continue
            t0 = time.monotonic()
            rc, out, err = await self._run_child({"kind": "upload"}, 3600, "upload")
            out = out if isinstance(out, dict) else {}
            self._pending_cache = (0.0, 0)
            uploaded, failed = int(out.get("uploaded", 0)), int(out.get("failed", 0))
            if uploaded:
                self.m_uploads.inc("uploaded", by=uploaded)
            if failed:
                self.m_uploads.inc("failed", by=failed)
            ok = rc == 0 and not failed and not out.get("error")
            self.m_upload_runs.inc("ok" if ok else "failed")
            self.last_upload = {"at": time.time(), "ok": ok, "uploaded": uploaded, "failed": failed,
                                "duration_s": round(time.monotonic() - t0, 3), "error": out.get("error") or (
                                    "" if ok else err)}
            if ok:
                self.upload_delay = interval
            else:
                self.upload_delay = min(max(self.upload_delay * 2, float(self.cfg["upload.retry_initial_s"])),
                                        retry_max)
            kv(logging.INFO if ok else logging.WARNING, "upload", uploaded=uploaded, failed=failed,
               next_s=round(self.upload_delay, 1), error=self.last_upload["error"])

    # -- local API --------------------------------------------------------------
    def api_snapshot_request(self, body: dict[str, Any]) -> tuple[Job | None, dict[str, Any], int]:
        """Validate a /v1/snapshot body and queue it; (job or None, response body, status)."""
        from agent.incident import IncidentIdError, check_id
        reason = str(body.get("reason") or "")
        incident = body.get("incident")
        source = "manual"
        title = str(body.get("title") or "")
        if not incident:
            if reason != "pre-restart":
                return None, {"status": "error", "error": "incident is required (optional only with reason "
                                                          "pre-restart)"}, 400
            found = pre_restart_choice(self.cfg, self.state, str(body.get("unit") or ""))
            if found is None:
                return None, {"status": "skipped", "reason": "no incident open for this host "
                                                             f"(daemon.pre_restart = {self.cfg['daemon.pre_restart']})"}, 200
            incident, source, title = found["id"], found.get("source", "manual"), found.get("title", title)
        try:
            check_id(str(incident))
        except IncidentIdError as exc:
            return None, {"status": "error", "error": str(exc)}, 400
        profile = body.get("profile") or self.cfg["capture.profile"]
        if profile not in ("quick", "standard", "full"):
            return None, {"status": "error", "error": "profile must be quick, standard or full"}, 400
        lists = {}
        for k in ("collectors", "skip", "processes", "units", "logs", "pids"):
            v = body.get(k) or []
            if not isinstance(v, list):
                return None, {"status": "error", "error": f"{k} must be a list"}, 400
            lists[k] = v
        try:
            pids = [int(p) for p in lists["pids"]]
        except (TypeError, ValueError):
            return None, {"status": "error", "error": "pids must be integers"}, 400
        key = State.key(source, str(incident))
        if not body.get("force"):
            done = [r for r in self.state.incidents.values() if r.get("id") == incident and r.get("capture") in (
                "queued", "running", "done")]
            if done:
                return None, {"status": "duplicate", "incident": incident,
                              "reason": f"capture {done[0]['capture']} for this incident (force to capture again)"}, 200
        kind = "pre-restart" if reason == "pre-restart" else "daemon-api"
        if kind == "pre-restart" and not body.get("time_budget_s"):
            body["time_budget_s"] = float(self.cfg["daemon.pre_restart_budget_s"])
        request = self.capture_request(
            incident={"id": incident, "source": source, "title": title},
            trigger={"kind": kind, "reason": reason, "by": str(body.get("by") or "local API")},
            profile=profile, time_budget_s=body.get("time_budget_s"), probe_seconds=body.get("probe_seconds"),
            heap=bool(body.get("heap")), pids=pids, processes=lists["processes"], units=lists["units"],
            log_paths=lists["logs"], skip=lists["skip"])
        if lists["collectors"]:
            request["only"] = lists["collectors"]
        job = Job(new_job_id(), "api", key, request)
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            return None, {"status": "queue_full", "error": "capture queue full"}, 503
        now = time.time()
        # remembered for dedupe; a manual capture does not open an incident (status "manual")
        rec = self.state.incidents.setdefault(key, {"id": incident, "source": source, "status": "manual",
                                                    "opened_at": now, "captures": []})
        rec["capture"], rec["job"], rec["updated_at"], rec["job_request"] = "queued", job.id, now, request
        self._save()
        return job, {"status": "queued", "job": job.id, "incident": incident, "queue_position": self.queue.qsize()}, 202

    # -- HTTP app ---------------------------------------------------------------
    def app(self):
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, PlainTextResponse, Response
        from starlette.routing import Route

        daemon = self
        max_body = int(self.cfg["daemon.max_body_bytes"])

        async def read_body(request: Request) -> bytes:
            cl = request.headers.get("content-length", "")
            if cl.isdigit() and int(cl) > max_body:
                raise TooLarge()
            chunks, n = [], 0
            async for chunk in request.stream():
                n += len(chunk)
                if n > max_body:
                    raise TooLarge()
                chunks.append(chunk)
            return b"".join(chunks)

        def reply(tracker: str, status: int, outcome: str, body: dict[str, Any], t0: float,
                  headers: dict[str, str] | None = None, **fields: Any) -> Response:
            daemon.count(tracker, outcome)
            kv(logging.WARNING if status >= 400 else logging.INFO, "webhook", tracker=tracker, status=status,
               outcome=outcome, ms=round((time.monotonic() - t0) * 1000, 1), **fields)
            return JSONResponse(body, status_code=status, headers=headers)

        async def webhook(request: Request) -> Response:
            t0 = time.monotonic()
            tracker = request.path_params["tracker"]
            if tracker not in wh.TRACKERS:
                return reply("unknown", 404, "unknown_tracker",
                             {"error": f"unknown tracker; known: {', '.join(wh.TRACKERS)}"}, t0)
            if request.method != "POST":
                return reply(tracker, 405, "method_not_allowed", {"error": "use POST"}, t0, headers={"Allow": "POST"})
            opts = daemon.cfg.webhook(tracker)
            if not opts["enabled"]:
                return reply(tracker, 404, "unknown_tracker",
                             {"error": f"tracker {tracker} is not enabled on this host"}, t0)
            try:
                raw = await read_body(request)
            except TooLarge:
                return reply(tracker, 413, "too_large", {"error": f"body larger than {max_body} bytes"}, t0)
            mod = wh.load(tracker)
            try:
                mod.verify(raw, request.headers, daemon.secrets_for(tracker), opts=opts)
            except wh.WebhookError as exc:
                return reply(tracker, exc.status, exc.outcome, {"error": exc.reason}, t0, reason=exc.reason)
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                return reply(tracker, 400, "malformed", {"error": "body is not valid JSON"}, t0)
            try:
                events = mod.parse(body, opts=opts)
            except wh.WebhookError as exc:
                return reply(tracker, exc.status, exc.outcome, {"error": exc.reason}, t0, reason=exc.reason)
            delivery = mod.delivery_id(request.headers, body)
            status, outcome, out = daemon.handle_events(tracker, events, delivery,
                                                        hashlib.sha256(raw).hexdigest())
            incs = ",".join(r["incident"] for r in out.get("incidents", []))
            return reply(tracker, status, outcome, out, t0, delivery=delivery or "-", incidents=incs or "-")

        async def healthz(request: Request) -> Response:
            ok, why = daemon.healthy()
            body = {"status": "ok" if ok else "unhealthy", "version": __version__,
                    "uptime_s": round(time.time() - daemon.started_at, 1), "host": daemon.cfg.hostname,
                    "queue": daemon.queue.qsize(), "queue_size": daemon.queue.maxsize,
                    "running": daemon.running.summary() if daemon.running else None,
                    "open_incidents": len(daemon.state.open_incidents()),
                    "pending_uploads": daemon.pending_uploads(),
                    "trackers": [t for t in wh.TRACKERS if daemon.cfg.webhook(t)["enabled"]],
                    "last_upload": daemon.last_upload or None}
            if not ok:
                body["reason"] = why
            return JSONResponse(body, status_code=200 if ok else 503)

        async def metrics(request: Request) -> Response:
            return PlainTextResponse(daemon.metrics.render(), media_type=CONTENT_TYPE)

        def api_auth(request: Request) -> Response | None:
            server = request.scope.get("server")
            if server is None or server[1] is None:      # the Unix socket: its file mode is the access control
                return None
            if not daemon.token:
                return JSONResponse({"error": "the local API over HTTP is off: set daemon.api_token_file, "
                                              "or use the Unix socket"}, status_code=403)
            auth = request.headers.get("authorization", "")
            if not auth:
                return JSONResponse({"error": "missing bearer token"}, status_code=401)
            if not wh.any_equal([auth.partition(" ")[2].strip()], [daemon.token]) or \
                    auth.partition(" ")[0].lower() != "bearer":
                return JSONResponse({"error": "wrong token"}, status_code=403)
            return None

        async def snapshot(request: Request) -> Response:
            denied = api_auth(request)
            if denied is not None:
                return denied
            if request.method != "POST":
                return JSONResponse({"error": "use POST"}, status_code=405, headers={"Allow": "POST"})
            try:
                body = json.loads(await read_body(request) or b"{}")
                if not isinstance(body, dict):
                    raise ValueError
            except TooLarge:
                return JSONResponse({"error": "body too large"}, status_code=413)
            except (ValueError, UnicodeDecodeError):
                return JSONResponse({"error": "body must be a JSON object"}, status_code=400)
            job, out, status = daemon.api_snapshot_request(body)
            kv(logging.INFO, "api_snapshot", status=status, outcome=out.get("status"),
               incident=out.get("incident", body.get("incident", "")), job=out.get("job", "-"))
            if job is None or not body.get("wait", True):
                return JSONResponse(out, status_code=status)
            job.future = asyncio.get_running_loop().create_future()
            result = await job.future
            return JSONResponse({**result, "incident": out["incident"]},
                                status_code=200 if result.get("status") == "done" else 500)

        async def incidents(request: Request) -> Response:
            denied = api_auth(request)
            if denied is not None:
                return denied
            recs = [{k: v for k, v in r.items() if k != "job_request"} for r in daemon.state.incidents.values()]
            return JSONResponse({"open": [r["id"] for r in daemon.state.open_incidents()], "incidents": recs})

        return Starlette(routes=[
            Route("/healthz", healthz, methods=["GET", "HEAD"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/v1/webhooks/{tracker}", webhook, methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]),
            Route("/v1/snapshot", snapshot, methods=["GET", "POST", "PUT"]),
            Route("/v1/incidents", incidents, methods=["GET"]),
        ])


def pre_restart_choice(cfg: Config, state: State, unit: str = "") -> dict[str, Any] | None:
    """The incident a pre-restart capture is filed under, or None when none should be taken.

    ``daemon.pre_restart``: ``never`` → None; ``incident`` → the most recently
    triggered incident open for this host, or None; ``always`` → that, or a
    synthetic ``restart-<unit>-<time>`` incident.
    """
    mode = cfg["daemon.pre_restart"]
    if mode == "never":
        return None
    found = state.open_incidents()
    if found:
        return found[0]
    if mode == "always":
        from agent.incident import safe_component
        return {"id": f"restart-{safe_component(unit or 'host', 60)}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}",
                "source": "pre-restart", "title": f"restart of {unit}" if unit else "restart"}
    return None


# -- sockets and main -------------------------------------------------------------

def _bind_tcp(host: str, port: int) -> socket.socket:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, addr = infos[0]
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(addr)
    s.listen(128)
    s.setblocking(False)
    return s


def _bind_unix(path: Path) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
                probe.close()
                raise UsageError(f"another daemon already listens on {path}")
            except (ConnectionRefusedError, FileNotFoundError):
                path.unlink()
            finally:
                probe.close()
        else:
            raise UsageError(f"{path} exists and is not a socket")
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o117)
    try:
        s.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o660)
    s.listen(64)
    s.setblocking(False)
    return s


async def serve(cfg: Config, config_path: str | None = None) -> int:
    import uvicorn

    daemon = Daemon(cfg, config_path)
    sockets: list[socket.socket] = []
    listen = parse_listen(cfg["daemon.listen"])
    addr_text = ""
    try:
        if listen:
            tcp = _bind_tcp(*listen)
            sockets.append(tcp)
            h, p = tcp.getsockname()[:2]
            addr_text = f"[{h}]:{p}" if ":" in h else f"{h}:{p}"
        sock_path = api_socket_path(cfg)
        if sock_path:
            sockets.append(_bind_unix(sock_path))
    except OSError as exc:
        for s in sockets:
            s.close()
        raise UsageError(f"cannot listen on {cfg['daemon.listen']} / {cfg['daemon.socket']}: {exc.strerror or exc}") from None
    if not sockets:
        raise UsageError("nothing to listen on: set daemon.listen and/or daemon.socket")
    await daemon.start()
    config = uvicorn.Config(daemon.app(), log_config=None, access_log=False, lifespan="off",
                            loop="asyncio", http="h11", ws="none", timeout_keep_alive=5, server_header=False,
                            date_header=True, timeout_graceful_shutdown=int(SHUTDOWN_GRACE_S))
    server = uvicorn.Server(config)
    _STOP["server"] = server
    if _STOP["requested"]:
        server.should_exit = True
    serve_task = asyncio.create_task(server.serve(sockets=sockets))
    while not server.started and not serve_task.done():
        await asyncio.sleep(0.01)
    if serve_task.done():
        await daemon.stop()
        serve_task.result()
        return 1
    sd_notify(f"READY=1\nSTATUS=listening on {addr_text or '-'}; queue {daemon.queue.maxsize}\nMAINPID={os.getpid()}")
    daemon.start_watchdog()
    kv(logging.INFO, "ready", listen=addr_text or "-", socket=str(api_socket_path(cfg) or "-"),
       pid=os.getpid(), version=__version__, store=str(cfg.store_path), host=cfg.hostname,
       trackers=",".join(t for t in wh.TRACKERS if cfg.webhook(t)["enabled"]) or "-",
       identity=json.dumps(daemon.identity.to_json(), separators=(",", ":")))
    try:
        await serve_task
    finally:
        kv(logging.INFO, "stopping")
        await daemon.stop()
        p = api_socket_path(cfg)
        if p:
            try:
                if stat.S_ISSOCK(p.lstat().st_mode):
                    p.unlink()
            except OSError:
                pass
        kv(logging.INFO, "stopped")
    return 0


_STOP: dict[str, Any] = {"requested": False, "server": None}


def _on_signal(signum: int, frame: Any) -> None:
    """SIGTERM/SIGINT: stop gracefully. Installed before uvicorn's own handlers, which re-raise
    the signal when they are done: it then lands here again, harmlessly, instead of killing us
    before the running capture and the state are settled."""
    _STOP["requested"] = True
    if _STOP["server"] is not None:
        _STOP["server"].should_exit = True


def run(cfg: Config, config_path: str | None = None) -> int:
    setup_logging()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)
    try:
        return asyncio.run(serve(cfg, config_path))
    except KeyboardInterrupt:
        return 0
