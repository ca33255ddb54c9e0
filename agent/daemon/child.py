"""The child side of the daemon's jobs: what ``goldenhour daemon-job`` runs.

Where it sits: the job runner (``agent.daemon.jobs``) starts ``python -m agent
daemon-job`` for each capture, upload round, salvage and ledger sweep, writes
one ``ChildJob`` as JSON on its stdin and reads one ``JobResult`` from its stdout
(both in ``agent.daemon.request``). This is the only module of ``agent.daemon`` that
imports the capture pipeline (capture, pauses, upload) and so, through the registry,
collector code: the daemon's own long-lived process never loads it
(``tests/test_layout.py`` checks this).

Exit status: 0 with ``ok``; a ``GoldenhourError``'s exit code with ``ok: false`` and
its one-line ``error``. Diagnostics go to stderr, which the parent logs line by line.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, TextIO

from agent.config import Config, ConfigError
from agent.daemon.request import Captured, ChildJob, JobResult, RequestError, UploadRound
from agent.errors import GoldenhourError, UsageError
from agent.incident import iso, utcnow
from agent.store import Store


def main(load_config: Callable[[], Config], stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> int:
    """Read one job, run it, print its result; the process's exit status."""
    try:
        raw = json.loads(stdin.read() or "{}")
    except ValueError:
        raise UsageError("daemon-job reads one JSON object on stdin") from None
    try:
        job = ChildJob.from_json(raw)
        cfg = _config(job, load_config)
        if job.store:
            cfg.set("store.path", job.store)
        res = run(cfg, job)
    except RequestError as exc:
        kind = raw.get("kind") if isinstance(raw, dict) else None
        res = JobResult(str(kind), ok=False, error=f"bad job: {exc}", exit_code=UsageError.exit_code)
    except GoldenhourError as exc:
        res = JobResult(job.kind, ok=False, error=str(exc), exit_code=exc.exit_code)
    stdout.write(json.dumps(res.to_json(), indent=1, default=str) + "\n")
    stdout.flush()
    return res.exit_code


def _config(job: ChildJob, load_config: Callable[[], Config]) -> Config:
    """The daemon's config as it runs (sent with the job: an edit not yet reloaded, or a broken one, never
    reaches a capture), else the file."""
    if job.config is None:
        return load_config()
    try:
        return Config(job.config)
    except ConfigError as exc:
        raise UsageError(f"the daemon's config: {exc}") from None


def run(cfg: Config, job: ChildJob) -> JobResult:
    if job.kind == "capture":
        assert job.request is not None
        return JobResult("capture", ok=True, captured=capture(cfg, job))
    if job.kind == "upload":
        return upload(cfg)
    if job.kind == "salvage":
        from agent.capture import salvage
        return JobResult("salvage", ok=True,
                         salvaged=[str(r.bundle) for r in salvage(cfg, Store(cfg.store_path).ensure())])
    if job.kind == "sweep":
        from agent import pauses, scratch
        store = Store(cfg.store_path)
        return JobResult("sweep", ok=True, resumed=pauses.sweep(store.ledger),
                         scratch=scratch.sweep(store.scratch))
    raise UsageError(f"unknown job kind {job.kind!r}")


def capture(cfg: Config, job: ChildJob) -> Captured:
    """Run the daemon's ``CaptureRequest`` through the pipeline, at the capture's low priority."""
    from agent import capture as pipeline
    r = job.request
    assert r is not None
    if not r.trigger.at:
        r.trigger.at = iso(utcnow())
    req = pipeline.CaptureRequest(
        incident=r.incident, trigger=r.trigger, profile=r.profile or cfg["capture.profile"], only=r.collectors,
        skip=r.skip, pids=r.pids, processes=r.processes, units=r.units, log_paths=r.log_paths,
        time_budget_s=r.time_budget_s, probe_seconds=r.probe_seconds, heap=r.heap)
    pipeline.lower_priority(cfg)
    res = pipeline.capture(cfg, req)
    return Captured(
        bundle=str(res.bundle), sha256=res.sha256, size=res.size, incident=res.incident,
        host=res.manifest["host"]["hostname"], profile=req.profile, duration_s=res.manifest["clocks"]["duration_s"],
        collectors=res.statuses,
        collector_results=[{"name": c.get("name"), "key": c.get("key"), "status": c.get("status"),
                            "duration_s": c.get("duration_s")} for c in res.manifest["collectors"]])


def upload(cfg: Config) -> JobResult:
    """One ``upload_pending`` round, honouring each bundle's backoff; counted by its result statuses."""
    try:
        from agent import upload as upload_mod
    except ImportError:
        return JobResult("upload", ok=False, error="upload support (agent.upload) is not installed",
                         upload=UploadRound())
    return JobResult("upload", ok=True, upload=count_uploads(upload_mod.upload_pending(cfg, respect_backoff=True)))


def count_uploads(results: list[dict[str, Any]]) -> UploadRound:
    """``upload_pending``'s statuses (agent/upload.py): uploaded; pending (failed, backs off) and busy
    (another process holds the bundle) count as failed; waiting (backoff not over) as waiting."""
    n = UploadRound()
    for r in results:
        status = r.get("status")
        if status == "uploaded":
            n.uploaded += 1
        elif status in ("pending", "busy"):
            n.failed += 1
            if not n.error and r.get("error"):
                n.error = f"{Path(str(r.get('bundle', ''))).name}: {r['error']}"
        elif status == "waiting":
            n.waiting += 1
    return n

