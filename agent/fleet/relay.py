"""``goldenhour relay``: the trackers' webhooks, verified centrally, become incident records in NATS.

Where it sits: run once or twice per fleet behind the TLS proxy the trackers post to (the
hosts need no inbound port). It uses the daemon's own receivers (``agent.daemon.intake.
Receiver``: the same route checks, the same signature verification over the raw body, the
same parsers), then, instead of deciding for one host, writes each incident's record with
``agent.fleet.incidents`` -- create-if-absent for a trigger (the fleet-wide dedupe: the same
delivery at two relays makes one record), a resolve, a recapture or a reopen -- and answers
only after NATS has stored it:

- ``202`` a record was created or changed (``created``, ``updated``, ``reopened``,
  ``recaptured``, ``resolved``); ``200`` nothing to change (``duplicate``, ``ignored``,
  ``stale``, ``ping``); 4xx as the daemon answers a bad delivery (nothing written);
- ``503`` (``Retry-After``) when NATS cannot take the record -- not connected, or no answer
  within ``fleet.timeout_s``: the tracker retries (PagerDuty for up to 48 h) and nothing is
  lost; a write that reached NATS after all makes the retry a duplicate.

The relay keeps a live copy of the host registry to size each incident's upload spread
(expected hosts / ``fleet.upload_rate``, at most ``fleet.upload_spread_max_s``).
``GET /healthz`` (503 while NATS is not connected) and ``GET /metrics``.

The relay faces the internet (behind its TLS proxy), so its HTTP server keeps the daemon's
connection rules (``agent.daemon.guard``, the same ``daemon.header_timeout_s``,
``daemon.body_timeout_s``, ``daemon.max_connections`` and ``daemon.log_interval_s`` keys):
half-sent requests are answered 408 and closed, one connection too many gets 503, accept()
failures and clients gone mid-body are one log line per interval, never a traceback.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import OrderedDict
from typing import Any

from agent import __version__, sdnotify
from agent import webhooks as wh
from agent.config import Config, ConfigError
from agent.daemon.guard import Guard
from agent.daemon.intake import Delivery, Receiver, Refused
from agent.daemon.kvlog import kv, setup_logging
from agent.fleet import conn, incidents, keys
from agent.fleet.overview import HostMirror
from agent.fleet.records import RecordError, Scope
from agent.metrics import CONTENT_TYPE, Counter, Gauge, Histogram, Registry

WRITTEN = ("created", "updated", "reopened", "recaptured", "resolved", "cancelled")
ORDER = ["unavailable", *WRITTEN, "duplicate", "stale", "ignored", "ping"]


class Unavailable(Exception):
    """NATS cannot take the record now (503)."""


class Relay:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.receiver = Receiver(cfg)
        if not self.receiver.enabled():
            raise ConfigError("the relay has no tracker enabled: set [webhooks.<tracker>] enabled = true")
        self.settings = conn.Settings.from_config(cfg)
        self.settings.auth()
        self.fleet = self.settings.fleet
        self.nc = None
        self.kv: dict[str, Any] = {}
        self.hosts: HostMirror | None = None
        self.tasks: list[asyncio.Task] = []
        self.started_at = time.time()
        r = self.registry = Registry()
        r.add(Gauge("goldenhour_build_info", "Agent version (value is always 1).", ["version"])).set(1, __version__)
        r.add(Gauge("goldenhour_relay_nats_connected", "1 while the relay can write to NATS.",
                    fn=lambda: 1 if self.ready() else 0))
        r.add(Gauge("goldenhour_relay_known_hosts", "Hosts in the fleet's registry (the relay's live copy).",
                    fn=lambda: len(self.hosts.hosts) if self.hosts else 0))
        self.deliveries = r.add(Counter("goldenhour_relay_deliveries_total",
                                        "Webhook deliveries by tracker and outcome.", ["tracker", "outcome"]))
        self.write_s = r.add(Histogram("goldenhour_relay_record_seconds",
                                       "Time to write a delivery's records to NATS.",
                                       [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5]))
        self.http_events = r.add(Counter(
            "goldenhour_http_events_total",
            "Connection trouble by event (http_connection_limit, http_header_timeout, http_body_timeout, "
            "http_accept_failed, http_client_gone, http_bad_request).", ["event"]))
        self.guard = Guard.from_config(cfg, count=lambda event: self.http_events.inc(event))

    # -- NATS -----------------------------------------------------------------------
    def ready(self) -> bool:
        return self.nc is not None and self.nc.is_connected and bool(self.kv)

    async def start(self) -> None:
        self.tasks.append(asyncio.create_task(self._connect(), name="nats"))

    async def _connect(self) -> None:
        self.nc = await conn.connect(self.settings, name="goldenhour relay",
                                     inbox_prefix=conn.inbox_for(self.settings, "relay") or None, forever=True)
        kv(logging.INFO, "relay_connected", fleet=self.fleet)
        js = self.nc.jetstream(timeout=self.settings.timeout_s)
        delay = 1.0
        while not self.kv:
            try:
                self.kv = await conn.ensure_buckets(js, self.settings.replicas, self.settings.max_hosts)
            except Exception as exc:  # noqa: BLE001 - not yet (server away, or a permission): say so, retry
                kv(logging.ERROR, "relay_buckets", conn._describe(exc), retry_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)
        self.hosts = HostMirror(self.kv[keys.HOSTS], self.fleet)
        self.hosts.start()

    async def stop(self) -> None:
        from agent.fleet.local import cancel_all
        if self.hosts:
            await self.hosts.stop()
        await cancel_all(self.tasks)
        if self.nc is not None:
            try:
                async with asyncio.timeout(5):
                    await self.nc.close()
            except Exception:  # noqa: BLE001 - closing a dead connection: nothing left to do
                pass

    # -- deliveries ---------------------------------------------------------------------
    async def handle(self, d: Delivery) -> tuple[int, str, dict[str, Any]]:
        """(HTTP status, outcome, body) for a verified, parsed delivery."""
        if any(e.action == wh.PING for e in d.events):
            return 200, "ping", {"status": "ping"}
        by_incident: OrderedDict[str, list[wh.Event]] = OrderedDict()
        ignored = []
        for e in d.events:
            if e.incident_id:
                by_incident.setdefault(e.incident_id, []).append(e)
            else:
                ignored.append({"kind": e.kind, "reason": e.reason or "no incident"})
        if not by_incident:
            return 200, "ignored", {"status": "ignored", "ignored": ignored}
        if not self.ready():
            raise Unavailable("not connected to the fleet's NATS servers")
        dkey = f"{d.tracker}/{d.delivery}" if d.delivery else f"{d.tracker}/sha256:{d.payload_sha256[:32]}"
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                results = [await self._incident(d.tracker, inc, evs, dkey) for inc, evs in by_incident.items()]
        except TimeoutError:
            raise Unavailable(f"NATS did not store the record within {self.settings.timeout_s:g} s") from None
        except RecordError as exc:
            raise Unavailable(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - any NATS error: the tracker retries, nothing is lost
            raise Unavailable(conn._describe(exc)) from None
        self.write_s.observe(time.monotonic() - t0)
        outcome = min((r["status"] for r in results), key=ORDER.index)
        body: dict[str, Any] = {"status": outcome, "incidents": results}
        if ignored:
            body["ignored"] = ignored
        return (202 if outcome in WRITTEN else 200), outcome, body

    async def _incident(self, tracker: str, inc: str, evs: list[wh.Event], dkey: str) -> dict[str, Any]:
        cfg, b = self.cfg, self.kv[keys.INCIDENTS]
        deadline_s = cfg["fleet.deadline_minutes"] * 60.0
        triggers = [e for e in evs if e.action == wh.TRIGGER]
        if triggers:
            max_age = float(cfg["daemon.dedupe_hours"]) * 3600
            fresh = [e for e in triggers if e.occurred_at is None or time.time() - e.occurred_at <= max_age]
            if not fresh:
                return {"incident": inc, "status": "stale", "reason": "event older than daemon.dedupe_hours"}
            scope = Scope()
            for e in fresh:
                scope.hosts += [h for h in e.hosts if h not in scope.hosts]
                scope.services += [s for s in e.services if s not in scope.services]
                scope.labels.update(e.labels)
                scope.tags += [t for t in e.tags if t not in scope.tags]
            first = fresh[0]
            try:
                rec = incidents.new_record(self.fleet, inc, scope=scope, profile=cfg["fleet.profile"],
                                           deadline_s=deadline_s, source=tracker, title=first.title, url=first.url,
                                           severity=first.severity, requested_by=f"relay:{dkey}")
            except RecordError as exc:
                return {"incident": inc, "status": "ignored", "reason": str(exc)}
            expected = self.hosts.count_for(rec) if self.hosts else 0
            rec.upload_spread_s = round(min(float(cfg["fleet.upload_spread_max_s"]),
                                            expected / float(cfg["fleet.upload_rate"])), 1)
            out = await incidents.declare(b, rec, delivery=dkey, reopen=any(e.reopen for e in fresh),
                                          force=any(e.force for e in fresh), deadline_s=deadline_s)
            await incidents.ring(self.nc, out)
            return {**out.to_json(), "expected_hosts": expected}
        closing = any(e.action == wh.RESOLVE for e in evs) or (
            cfg["daemon.close_on_ack"] and any(e.action == wh.ACK for e in evs))
        if closing:
            out = await incidents.resolve(b, self.fleet, inc, delivery=dkey)
            await incidents.ring(self.nc, out)
            if out.status == "unknown":
                return {"incident": inc, "status": "ignored", "reason": "no such incident in the fleet"}
            return out.to_json()
        why = "acknowledged (daemon.close_on_ack is off)" if any(e.action == wh.ACK for e in evs) else \
            "; ".join(sorted({e.reason for e in evs if e.reason}))
        return {"incident": inc, "status": "ignored", "reason": why}


# -- HTTP -------------------------------------------------------------------------------------

def app(relay: Relay):
    from starlette.applications import Starlette
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    max_body = int(relay.cfg["daemon.max_body_bytes"])

    def answer(tracker: str, status: int, outcome: str, body: dict[str, Any], t0: float,
               headers: dict[str, str] | None = None, **fields: Any) -> Response:
        relay.deliveries.inc(tracker, outcome)
        kv(logging.WARNING if status >= 400 else logging.INFO, "relay_webhook", tracker=tracker, status=status,
           outcome=outcome, ms=round((time.monotonic() - t0) * 1000, 1), **fields)
        return JSONResponse(body, status_code=status, headers=headers)

    async def webhook(request: Request) -> Response:
        t0 = time.monotonic()
        tracker = request.path_params["tracker"]
        denied = relay.receiver.route(tracker, request.method)
        if denied is not None:
            return answer(denied.label, denied.status, denied.outcome, {"error": denied.error}, t0, denied.headers)
        cl = request.headers.get("content-length", "")
        chunks: list[bytes] = []
        n = 0
        if not (cl.isdigit() and int(cl) > max_body):
            try:
                async for chunk in request.stream():
                    chunks.append(chunk)
                    n += len(chunk)
                    if n > max_body:
                        break
            except ClientDisconnect:
                relay.guard.note("http_client_gone", "a client hung up before its request body was in",
                                 level=logging.INFO, path=request.url.path, received=n)
                return Response(status_code=400)       # never sent: the client is not there to read it
        if n > max_body or (cl.isdigit() and int(cl) > max_body):
            return answer(tracker, 413, "too_large", {"error": f"body larger than {max_body} bytes"}, t0)
        raw = b"".join(chunks)
        try:
            d = relay.receiver.receive(tracker, raw, request.headers)
        except Refused as r:
            return answer(r.label, r.status, r.outcome, {"error": r.error}, t0, r.headers, **r.logged)
        try:
            status, outcome, body = await relay.handle(d)
        except Unavailable as exc:
            return answer(tracker, 503, "unavailable", {"error": f"the fleet cannot take the record now ({exc}); "
                                                                 "retry"}, t0, {"Retry-After": "5"})
        incs = ",".join(r["incident"] for r in body.get("incidents", []))
        return answer(tracker, status, outcome, body, t0, delivery=d.delivery or "-", incidents=incs or "-")

    async def healthz(request: Request) -> Response:
        ok = relay.ready()
        rep = getattr(relay.nc, "gh_reporter", None)
        body = {"status": "ok" if ok else "unavailable", "version": __version__, "fleet": relay.fleet,
                "uptime_s": round(time.time() - relay.started_at, 1), "nats_connected": ok,
                "last_error": rep.last_error if rep else "", "trackers": relay.receiver.enabled(),
                "known_hosts": len(relay.hosts.hosts) if relay.hosts else 0}
        return JSONResponse(body, status_code=200 if ok else 503)

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(relay.registry.render(), media_type=CONTENT_TYPE)

    return Starlette(routes=[
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/webhooks/{tracker}", webhook, methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]),
    ])


async def serve(cfg: Config) -> int:
    import uvicorn

    from agent.daemon.client import parse_listen
    from agent.daemon.guard import protocol, quiet_uvicorn
    from agent.errors import UsageError
    relay = Relay(cfg)
    listen = parse_listen(cfg["relay.listen"])
    if not listen:
        raise UsageError("relay.listen is empty: the relay needs an HTTP address")
    try:
        infos = socket.getaddrinfo(listen[0], listen[1], type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        # IPPROTO_TCP named, so asyncio sets TCP_NODELAY on each connection (with proto 0 it does not, and
        # Nagle plus the tracker's delayed ACK hold the response body back ~40 ms)
        sock = socket.socket(infos[0][0], socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(infos[0][4])
        sock.listen(512)
        sock.setblocking(False)
    except OSError as exc:
        raise UsageError(f"cannot listen on {cfg['relay.listen']}: {exc.strerror or exc}") from None
    h, p = sock.getsockname()[:2]
    await relay.start()
    asyncio.get_running_loop().set_exception_handler(relay.guard.loop_exception_handler)
    quiet_uvicorn(relay.guard)
    server = uvicorn.Server(uvicorn.Config(app(relay), log_config=None, access_log=False, lifespan="off",
                                           loop="asyncio", http=protocol(relay.guard), ws="none", timeout_keep_alive=5,
                                           server_header=False, timeout_graceful_shutdown=10))
    _STOP["server"] = server
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if task.done():
        await relay.stop()
        task.result()
        return 1
    sdnotify.notify(f"READY=1\nSTATUS=listening on {h}:{p}\nMAINPID={os.getpid()}")
    wd = sdnotify.watchdog_interval()
    if wd:
        async def ping() -> None:
            while True:
                sdnotify.notify("WATCHDOG=1")
                await asyncio.sleep(wd)
        relay.tasks.append(asyncio.create_task(ping(), name="watchdog"))
    kv(logging.INFO, "ready", listen=f"{h}:{p}", pid=os.getpid(), version=__version__, fleet=relay.fleet,
       trackers=",".join(relay.receiver.enabled()), nats=",".join(relay.settings.servers))
    try:
        await task
    finally:
        sdnotify.notify("STOPPING=1")
        await relay.stop()
        kv(logging.INFO, "stopped")
    return 0


_STOP: dict[str, Any] = {"server": None}


def run(cfg: Config) -> int:
    import signal

    def on_signal(signum: int, frame: Any) -> None:
        if _STOP["server"] is not None:
            _STOP["server"].should_exit = True
    setup_logging()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        return asyncio.run(serve(cfg))
    except KeyboardInterrupt:
        return 0
