"""A stub capture for the fleet's watcher: the one part replaced when many agents share one machine.

``StubRunner`` is an ``agent.fleet.watcher.Runner`` whose capture marks the job started,
writes a tiny bundle file and returns its SHA-256, and whose upload returns a receipt
without S3. Everything else -- connection, credentials, watch, targeting, local state,
status records -- is the real fleet code path. ``gate`` (an asyncio.Event) holds captures
before they start, to test cancellation; ``fail`` makes them fail.
"""
from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

from agent.fleet.watcher import Captured, CaptureFailed, FleetJob


class StubRunner:
    def __init__(self, directory: Path | None = None, uploads: bool = True):
        self.dir = directory
        self.uploads = uploads
        self.captures: list[dict[str, Any]] = []     # one per capture that started
        self.uploaded: list[str] = []
        self.gate: asyncio.Event | None = None
        self.fail = ""
        self.started_ns: dict[tuple[str, int], int] = {}

    def start(self, job: FleetJob):
        """The capture starts now (synchronously, as the daemon queues it); gated ones wait for the gate."""
        if self.gate is not None and not self.gate.is_set():
            return asyncio.ensure_future(self._gated(job))
        fut = asyncio.get_running_loop().create_future()
        try:
            fut.set_result(self._capture(job))
        except CaptureFailed as exc:
            fut.set_exception(exc)
        return fut

    async def _gated(self, job: FleetJob) -> Captured:
        assert self.gate is not None
        await self.gate.wait()
        return self._capture(job)

    def _capture(self, job: FleetJob) -> Captured:
        self.started_ns[(job.record.incident_id, job.record.capture_rev)] = time.monotonic_ns()
        job.mark_started()
        self.captures.append({"incident": job.record.incident_id, "rev": job.record.capture_rev, "late": job.late,
                              "profile": job.profile, "matched_by": job.matched_by})
        if self.fail:
            raise CaptureFailed(self.fail)
        data = f"{job.host} {job.record.incident_id} {job.record.capture_rev}".encode()
        name = f"{job.record.incident_id}-{job.host}-r{job.record.capture_rev}.tar.zst"
        path = (self.dir / name) if self.dir else Path(name)
        if self.dir:
            self.dir.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return Captured(bundle=str(path), sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                        collectors={"ok": 1})

    async def upload(self, job: FleetJob, captured: Captured) -> dict[str, Any]:
        self.uploaded.append(captured.bundle)
        key = f"incidents/{job.record.incident_id}/{job.host}/{Path(captured.bundle).name}"
        return {"url": f"s3://stub/{key}", "bucket": "stub", "key": key, "sha256": captured.sha256,
                "size": captured.size}
