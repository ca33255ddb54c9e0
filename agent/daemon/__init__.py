"""``goldenhour daemon``: webhook receiver, capture queue, spool uploader, local API.

One asyncio process (uvicorn serving a Starlette app) that never captures in its
own process. Its parts, in the order a webhook meets them:

    server.py     sockets, signals (SIGHUP reloads), sd_notify/watchdog; ``run(cfg)`` is the entry point
    http_app.py   Starlette routes: HTTP in, intake/service calls, HTTP out
    intake.py     the synchronous decisions: authenticate + parse (Receiver), then
                  target, dedupe, queue (Intake); reused by the fleet relay and watcher
    request.py    the one CaptureRequest, the child's ChildJob and JobResult
    jobs.py       the job runner: queue, worker, uploader with backoff, the child's parent side
    child.py      the child side (``goldenhour daemon-job``): the only module here that
                  imports the capture pipeline or collectors
    service.py    the parts wired together: lifecycle, health, config check
    reload.py     SIGHUP: the config re-read, checked whole and swapped in; start-up warnings
    telemetry.py  the Prometheus metrics
    state.py      the state file (open incidents, captures, deliveries seen)
    client.py     the local-API client (``snapshot --via-daemon``)
    kvlog.py      key=value log lines

This file imports nothing, so ``agent.daemon.state`` and ``agent.daemon.client`` stay
cheap for the CLI.
"""
