"""CLI commands of the daemon area: ``goldenhour daemon`` and the internal ``daemon-job``.

The helpers ``snapshot`` uses for ``--via-daemon`` and for ``--reason pre-restart``
without ``--incident`` are in ``agent/cli/snapshot_support.py``.
"""
from __future__ import annotations

import json
import sys
from typing import Any

import click

from agent.cli.app import CONTEXT, App, emit_json, pass_app
from agent.errors import GoldenhourError, UsageError
from agent.webhooks import TRACKERS

_TRACKER_LINES = "\n".join("      " + ", ".join(TRACKERS[i:i + 6]) for i in range(0, len(TRACKERS), 6))


@click.command(context_settings=CONTEXT, epilog=f"""\b
Examples:
  goldenhour daemon                                  run in the foreground (systemd: goldenhour.service)
  goldenhour --config /etc/goldenhour/config.toml daemon
  curl -s localhost:8787/healthz; curl -s localhost:8787/metrics

\b
Endpoints:
  POST /v1/webhooks/TRACKER, TRACKER one of:
{_TRACKER_LINES}
  GET  /healthz, /metrics
  POST /v1/snapshot, GET /v1/incidents   (Unix socket daemon.socket, or HTTP with a bearer token)

Logs are key=value lines on stderr. Exit 2 on a bad config (unknown key, an
enabled tracker without a secret, a socket that cannot be bound).""")
@click.option("--store", metavar="DIR", envvar="GOLDENHOUR_STORE", help="Local store (default: store.path).")
@click.option("--listen", metavar="HOST:PORT", help="Override daemon.listen (port 0: any free port).")
@pass_app
def daemon(app: App, store: str | None, listen: str | None) -> None:
    """Run the webhook receiver and capture queue: incidents declared in your tracker capture this host.

    Verifies each tracker's signature over the raw body, answers 202 at once,
    captures once per incident (duplicates and retries are recognised, also
    across restarts) in a child process, one capture at a time, and uploads
    the spool on a timer. See README "The daemon and webhooks".
    """
    from agent import daemon as daemon_mod
    from agent.config import ConfigError
    app.store_override(store)
    cfg = app.cfg
    if listen is not None:
        cfg.set("daemon.listen", listen)
    try:
        rc = daemon_mod.run(cfg, app.config_path)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    sys.exit(rc)


@click.command("daemon-job", hidden=True, context_settings=CONTEXT)
@pass_app
def daemon_job(app: App) -> None:
    """Internal: run one job of the daemon (JSON on stdin) in this process; print one JSON result.

    The daemon starts this as a child process for each capture, upload round
    and salvage, so its own process never forks collectors.
    """
    try:
        job = json.loads(sys.stdin.read() or "{}")
    except ValueError:
        raise UsageError("daemon-job reads one JSON object on stdin") from None
    if job.get("store"):
        app.store_override(job["store"])
    kind = job.get("kind")
    try:
        if kind == "capture":
            out = _job_capture(app, job)
        elif kind == "upload":
            out = _job_upload(app)
        elif kind == "salvage":
            from agent.capture import salvage
            from agent.store import Store
            out = {"salvaged": [str(r.bundle) for r in salvage(app.cfg, Store(app.cfg.store_path).ensure())]}
        else:
            raise UsageError(f"unknown job kind {kind!r}")
    except GoldenhourError as exc:
        emit_json({"error": str(exc), "exit_code": exc.exit_code})
        sys.exit(exc.exit_code)
    emit_json(out)


def _job_capture(app: App, job: dict[str, Any]) -> dict[str, Any]:
    from agent.capture import CaptureRequest, capture, lower_priority
    from agent.incident import Incident, IncidentIdError, Trigger
    try:
        inc = Incident(**{k: v for k, v in job["incident"].items()
                          if k in ("id", "source", "title", "url", "severity", "services")})
        trig = Trigger(**{k: v for k, v in job.get("trigger", {}).items()
                          if k in ("kind", "reason", "by", "at", "payload_sha256")})
    except (IncidentIdError, KeyError, TypeError) as exc:
        raise UsageError(f"bad job: {exc}") from None
    req = CaptureRequest(
        incident=inc, trigger=trig, profile=job.get("profile") or app.cfg["capture.profile"],
        only=list(job.get("only") or []), skip=list(job.get("skip") or []),
        pids=[int(p) for p in job.get("pids") or []], processes=list(job.get("processes") or []),
        units=list(job.get("units") or []), log_paths=list(job.get("log_paths") or []),
        time_budget_s=job.get("time_budget_s"), probe_seconds=job.get("probe_seconds"),
        heap=bool(job.get("heap")))
    lower_priority(app.cfg)
    res = capture(app.cfg, req)
    return {"bundle": str(res.bundle), "sha256": res.sha256, "size": res.size, "incident": res.incident,
            "host": res.manifest["host"]["hostname"], "profile": req.profile,
            "duration_s": res.manifest["clocks"]["duration_s"], "collectors": res.statuses,
            "collector_results": [{"name": c.get("name"), "key": c.get("key"), "status": c.get("status"),
                                   "duration_s": c.get("duration_s")} for c in res.manifest["collectors"]]}


def _job_upload(app: App) -> dict[str, Any]:
    try:
        from agent import upload as upload_mod
    except ImportError:
        return {"error": "upload support (agent.upload) is not installed", "uploaded": 0, "failed": 0}
    res = upload_mod.upload_pending(app.cfg, respect_backoff=True)
    return _count_uploads(res)


def _count_uploads(res: Any) -> dict[str, Any]:
    """Normalise what ``upload_pending`` returns (a dict of counts or lists, or a list of results)."""
    def n(v: Any) -> int:
        return len(v) if isinstance(v, (list, tuple, set, dict)) else int(v or 0)
    if isinstance(res, dict):
        out = {"uploaded": n(res.get("uploaded")), "failed": n(res.get("failed")),
               "skipped": n(res.get("skipped") or res.get("deferred"))}
        if res.get("error"):
            out["error"] = str(res["error"])
        return out
    up = failed = 0
    for r in res or []:
        status = (r.get("status") if isinstance(r, dict) else getattr(r, "status", "")) or ""
        err = r.get("error") if isinstance(r, dict) else getattr(r, "error", None)
        if err or status in ("failed", "error", "pending"):
            failed += 1
        elif status in ("uploaded", "ok", "done", "already", ""):
            up += 1
    return {"uploaded": up, "failed": failed}
