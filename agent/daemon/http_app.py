"""The daemon's HTTP app: Starlette routes that translate HTTP to intake and service calls.

Where it sits: ``agent.daemon.server`` serves ``app(service)`` with uvicorn on
``daemon.listen`` and the Unix socket ``daemon.socket``. No decision is made
here beyond HTTP itself (method, body size cap, the local API's access rule):

- ``POST /v1/webhooks/<tracker>``: read the raw body (capped at
  ``daemon.max_body_bytes``), then ``Receiver.receive`` and ``Intake.decide``.
- ``GET /healthz`` (JSON, 503 when unhealthy), ``GET /metrics`` (Prometheus text).
- Local API: ``POST /v1/snapshot`` (``Intake.snapshot``; by default waits for the
  capture) and ``GET /v1/incidents``, over the Unix socket (its file mode is the
  access control) or over HTTP with ``Authorization: Bearer <daemon.api_token_file>``.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from agent import webhooks as wh
from agent.daemon.intake import Refused
from agent.daemon.kvlog import kv
from agent.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from agent.daemon.service import Service


class TooLarge(Exception):
    pass


class Gone(Exception):
    """The client hung up before its body was in: nothing to answer (a normal event, logged once per interval)."""


def app(svc: "Service") -> Starlette:
    max_body = int(svc.cfg["daemon.max_body_bytes"])

    async def read_body(request: Request) -> bytes:
        cl = request.headers.get("content-length", "")
        if cl.isdigit() and int(cl) > max_body:
            raise TooLarge()
        chunks, n = [], 0
        try:
            async for chunk in request.stream():
                n += len(chunk)
                if n > max_body:
                    raise TooLarge()
                chunks.append(chunk)
        except ClientDisconnect:
            svc.guard.note("http_client_gone", "a client hung up before its request body was in",
                           level=logging.INFO, path=request.url.path, received=n)
            raise Gone() from None
        return b"".join(chunks)

    gone = Response(status_code=400)           # never sent: the client is not there to read it

    def refused(r: Refused, t0: float) -> Response:
        svc.webhook_answered(r.label, r.status, r.outcome, t0, **r.logged)
        return JSONResponse({"error": r.error}, status_code=r.status, headers=r.headers)

    async def webhook(request: Request) -> Response:
        t0 = time.monotonic()
        tracker = request.path_params["tracker"]
        denied = svc.receiver.route(tracker, request.method)
        if denied is not None:
            return refused(denied, t0)
        try:
            raw = await read_body(request)
        except TooLarge:
            return refused(Refused(413, "too_large", f"body larger than {max_body} bytes", label=tracker), t0)
        except Gone:
            return gone
        try:
            delivery = svc.receiver.receive(tracker, raw, request.headers)
        except Refused as r:
            return refused(r, t0)
        ans = svc.intake.decide(delivery)
        incs = ",".join(r["incident"] for r in ans.body.get("incidents", []))
        svc.webhook_answered(tracker, ans.status, ans.outcome, t0, delivery=delivery.delivery or "-",
                             incidents=incs or "-")
        return JSONResponse(ans.body, status_code=ans.status)

    async def healthz(request: Request) -> Response:
        ok, body = svc.health()
        return JSONResponse(body, status_code=200 if ok else 503)

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(svc.tm.registry.render(), media_type=CONTENT_TYPE)

    def api_auth(request: Request) -> Response | None:
        server = request.scope.get("server")
        if server is None or server[1] is None:      # the Unix socket: its file mode is the access control
            return None
        if not svc.token:
            return JSONResponse({"error": "the local API over HTTP is off: set daemon.api_token_file, "
                                          "or use the Unix socket"}, status_code=403)
        auth = request.headers.get("authorization", "")
        if not auth:
            return JSONResponse({"error": "missing bearer token"}, status_code=401)
        if not wh.any_equal([auth.partition(" ")[2].strip()], [svc.token]) or \
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
            body: Any = json.loads(await read_body(request) or b"{}")
            if not isinstance(body, dict):
                raise ValueError
        except TooLarge:
            return JSONResponse({"error": "body too large"}, status_code=413)
        except Gone:
            return gone
        except (ValueError, UnicodeDecodeError):
            return JSONResponse({"error": "body must be a JSON object"}, status_code=400)
        job, ans = svc.intake.snapshot(body)
        out = ans.body
        kv(logging.INFO, "api_snapshot", status=ans.status, outcome=out.get("status"),
           incident=out.get("incident", body.get("incident", "")), job=out.get("job", "-"))
        if job is None or not body.get("wait", True):
            return JSONResponse(out, status_code=ans.status)
        job.future = asyncio.get_running_loop().create_future()
        result = await job.future
        return JSONResponse({**result, "incident": out["incident"]},
                            status_code=200 if result.get("status") == "done" else 500)

    async def incidents(request: Request) -> Response:
        denied = api_auth(request)
        if denied is not None:
            return denied
        recs = [{k: v for k, v in r.items() if k != "job_request"} for r in svc.state.incidents.values()]
        return JSONResponse({"open": [r["id"] for r in svc.state.open_incidents()], "incidents": recs})

    return Starlette(routes=[
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/webhooks/{tracker}", webhook, methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]),
        Route("/v1/snapshot", snapshot, methods=["GET", "POST", "PUT"]),
        Route("/v1/incidents", incidents, methods=["GET"]),
    ])
