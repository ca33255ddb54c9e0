"""The side paths of ``goldenhour snapshot``, each called by it and nothing else.

``maybe_upload``: upload right after the capture when configured (a failure leaves
the bundle pending, exit 0, with the URL asked for remembered for the retries).
``pre_restart_incident``: which incident a ``--reason pre-restart`` capture without
``--incident`` belongs to (the daemon's state). ``snapshot_via_daemon``:
``--via-daemon``, the capture asked of the running daemon over its local API.
"""
from __future__ import annotations

import sys
from typing import Any

import click

from agent.cli.app import App, emit_json, human_size
from agent.errors import EXIT_CAPTURE, EXIT_NOT_FOUND, EXIT_USAGE, GoldenhourError, UsageError


def maybe_upload(app: App, res: Any, do_upload: bool | None, url: str | None, as_json: bool) -> dict | None:
    """Upload right after a capture when configured; failures leave the bundle pending (exit 0)."""
    if do_upload is False:
        return None
    if url:
        app.cfg.set("upload.url", url)
    if not app.cfg["upload.url"]:
        if do_upload:
            raise UsageError("--upload needs upload.url in the config or --upload s3://BUCKET/PREFIX")
        return None
    try:
        from agent import upload as upload_mod
    except ImportError:
        return {"status": "pending", "error": "upload support is not installed"}
    try:
        receipt = upload_mod.upload_bundle(app.cfg, res.bundle)
        return {"status": "uploaded", **receipt}
    except GoldenhourError as exc:
        if url:                 # remembered: `upload --pending` and the daemon retry there
            upload_mod.remember_url(res.bundle, url)
        return {"status": "pending", "error": str(exc), "exit_code": exc.exit_code, "upload_url": app.cfg["upload.url"]}


def pre_restart_incident(app: App, units: tuple[str, ...]) -> tuple[Any, str]:
    """(Incident or None, message) for ``snapshot --reason pre-restart`` without ``--incident``."""
    from agent.daemon.state import State, pre_restart_choice
    from agent.incident import Incident
    cfg = app.cfg
    state = State.for_config(cfg)
    if state.problem:
        click.echo(f"goldenhour: warning: {state.problem}", err=True)
    chosen = pre_restart_choice(cfg, state, units[0] if units else "")
    if chosen is None:
        mode = cfg["daemon.pre_restart"]
        why = ("pre-restart captures are off (daemon.pre_restart = never)" if mode == "never" else
               "no incident is open for this host (daemon.pre_restart = incident): nothing captured")
        return None, why
    others = [r["id"] for r in state.open_incidents() if r["id"] != chosen["id"]]
    inc = Incident.from_record(chosen["id"], chosen.get("source", "manual") or "manual", chosen)
    msg = f"incident {inc.id} is open for this host" + (f" (also open: {', '.join(others)})" if others else "")
    return inc, msg


def snapshot_via_daemon(app: App, body: dict[str, Any], as_json: bool) -> None:
    """Send a capture request to the daemon, wait for it, print like ``snapshot`` does; exits on failure."""
    from agent.daemon import client as daemon_client
    cfg = app.cfg
    budget = float(body.get("time_budget_s") or cfg["capture.time_budget_s"])
    status, out = daemon_client.request(cfg, "POST", "/v1/snapshot", {**body, "wait": True, "force": True},
                                        timeout=budget + 600)
    if as_json:
        emit_json({**out, "via": "daemon"})
    if status in (200, 202) and out.get("status") == "skipped":
        if not as_json:
            click.echo(f"goldenhour: {out.get('reason', 'nothing captured')}")
        return
    if status == 200 and out.get("status") == "done":
        if not as_json:
            click.echo(f"bundle  {out['bundle']}")
            click.echo(f"sha256  {out['sha256']}")
            counts: dict[str, int] = {}
            for s in (out.get("collectors") or {}).values():
                counts[s] = counts.get(s, 0) + 1
            click.echo(f"size    {human_size(out.get('size', 0))}, {out.get('duration_s', 0):.2f} s via the daemon "
                       f"(job {out.get('job')}); collectors: "
                       + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
        return
    msg = out.get("error") or out.get("reason") or f"HTTP {status}"
    code = {400: EXIT_USAGE, 404: EXIT_NOT_FOUND}.get(status, EXIT_CAPTURE)
    if not as_json:
        click.echo(f"goldenhour: error: the daemon did not capture: {msg}", err=True)
    sys.exit(code)
