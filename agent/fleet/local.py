"""What a daemon remembers about fleet incidents, and how its status records reach NATS.

Where it sits: ``agent.fleet.watcher`` owns both.

``FleetState`` is ``<state>/fleet-state.json`` (next to the daemon's own state file),
rewritten by atomic rename after each change, like ``agent.daemon_state``: per incident
the capture revision this host acted on and how far it got (``queued``, ``running``,
``captured``, ``uploaded``, ``failed``, ``done`` for "nothing to do at this revision"),
the bundle once there is one, and the times of recent fleet captures (the hourly cap).
A revision is recorded *before* its capture is queued, so a restart, a reconnect or a
replayed watch never captures it twice. Entries are forgotten ``keep_days`` after their
last change (incidents outlive no deadline that long).

``StatusWriter`` coalesces: only a host's latest status per incident matters, so it keeps
the latest record per key and one task puts them, after lingering 0.2-0.4 s (statuses that
follow each other closely become one write, and a thousand hosts do not all write while the
server is still delivering the record to the others), retrying (backoff, then again after
each reconnect) until NATS has taken them. A status is never lost to an outage, and never
overtaken by an older one.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any, Callable

from agent.fleet.records import StatusRecord

log = logging.getLogger("goldenhour.fleet")
FILENAME = "fleet-state.json"


async def wait_event(ev: asyncio.Event, timeout: float | None) -> bool:
    """``ev.wait()`` with a timeout; True if set. ``asyncio.timeout``, not ``wait_for``: on Python
    3.11 ``wait_for`` can swallow a cancellation that races the event, leaving a stopped task running."""
    try:
        async with asyncio.timeout(timeout):
            await ev.wait()
        return True
    except TimeoutError:
        return False


async def cancel_all(tasks: list[asyncio.Task], timeout: float = 10.0) -> None:
    """Cancel ``tasks`` and wait for them, cancelling again any that swallowed it (nats-py's requests
    use ``wait_for``, which can), for at most ``timeout`` seconds."""
    pending = {t for t in tasks if not t.done()}
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while pending and loop.time() < end:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)


class FleetState:
    def __init__(self, directory: Path | None, keep_days: float = 30):
        self.dir = Path(directory) if directory else None
        self.path = self.dir / FILENAME if self.dir else None
        self.keep_s = keep_days * 86400
        self.incidents: dict[str, dict[str, Any]] = {}
        self.captures: list[float] = []        # epoch times fleet captures were queued (hourly cap)
        self.existed = False                   # False: a new host or a wiped disk (ask NATS what we did)
        self.problem = ""

    def load(self) -> "FleetState":
        if self.path is None:
            return self
        try:
            data = json.loads(self.path.read_text())
            self.incidents = {str(k): dict(v) for k, v in (data.get("incidents") or {}).items()}
            self.captures = [float(t) for t in data.get("captures") or []]
            self.existed = True
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            self.problem = f"fleet state {self.path} is unreadable ({exc}); asking NATS what this host did instead"
            aside = self.path.with_name(f"{FILENAME}.unreadable-{int(time.time())}")
            try:
                os.replace(self.path, aside)
            except OSError:
                pass
        return self

    def save(self) -> None:
        if self.path is None:
            return
        assert self.dir is not None
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        tmp = self.path.with_name(f".{FILENAME}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": 1, "saved_at": time.time(), "incidents": self.incidents,
                                   "captures": self.captures}, separators=(",", ":")))
        os.replace(tmp, self.path)

    def prune(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.captures = [t for t in self.captures if now - t < 3600]
        for k in [k for k, r in self.incidents.items()
                  if now - float(r.get("updated_at", 0)) > self.keep_s and r.get("phase") not in ("queued", "running")]:
            del self.incidents[k]

    def get(self, incident: str) -> dict[str, Any] | None:
        return self.incidents.get(incident)

    def set(self, incident: str, **fields: Any) -> dict[str, Any]:
        rec = self.incidents.setdefault(incident, {})
        rec.update(fields)
        rec["updated_at"] = time.time()
        return rec

    def captures_last_hour(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        return sum(1 for t in self.captures if now - t < 3600)


class StatusWriter:
    """Puts the latest ``StatusRecord`` per key; retries until NATS takes it (see module docstring)."""

    def __init__(self, put: Callable[[str, bytes], Any], retry_s: float = 2.0, linger_s: float = 0.2):
        self._put = put                          # async (key, value) -> revision
        self.linger_s = linger_s                 # wait this long (plus up to as much again) before writing
        self._pending: dict[str, StatusRecord] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.retry_s = retry_s
        self.written = 0
        self.failures = 0
        self.last_error = ""

    def submit(self, rec: StatusRecord) -> None:
        self._pending[rec.key] = rec
        self._idle.clear()
        self._wake.set()

    def kick(self) -> None:
        """Try the pending records now (after a reconnect)."""
        self._wake.set()

    async def flushed(self, timeout: float | None = None) -> bool:
        return await wait_event(self._idle, timeout)

    async def run(self) -> None:
        delay = self.retry_s
        while True:
            await self._wake.wait()
            if self.linger_s > 0:
                # linger: statuses that follow each other closely (seen, capturing...) become one write,
                # and a thousand hosts do not all write while the server is still fanning the record out
                await asyncio.sleep(self.linger_s * (1 + random.random()))
            self._wake.clear()
            failed = False
            while self._pending:
                key, rec = next(iter(self._pending.items()))
                try:
                    await self._put(key, rec.encode())
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - any NATS error: keep the record, try again later
                    self.failures += 1
                    text = str(exc) or type(exc).__name__
                    if text != self.last_error:
                        log.warning("", extra={"kv": {"event": "fleet_status_put", "key": key,
                                                      "error": text, "retry_s": round(delay, 1)}})
                    self.last_error = text
                    failed = True
                    break
                if self._pending.get(key) is rec:     # not replaced by a newer one meanwhile
                    del self._pending[key]
                self.written += 1
                self.last_error = ""
                delay = self.retry_s
            if failed:
                await wait_event(self._wake, delay)
                delay = min(delay * 2, 30.0)
                self._wake.set()
            elif not self._pending:
                self._idle.set()
