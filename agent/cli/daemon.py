"""CLI commands of the daemon area: ``goldenhour daemon`` and the internal ``daemon-job``.

The helpers ``snapshot`` uses for ``--via-daemon`` and for ``--reason pre-restart``
without ``--incident`` are in ``agent/cli/snapshot_support.py``.
"""
from __future__ import annotations

import sys

import click

from agent.cli.app import CONTEXT, App, pass_app
from agent.config import Config
from agent.errors import UsageError
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

Logs are key=value lines on stderr. SIGHUP (systemctl reload goldenhour) re-reads the
config and secrets; a config that does not load is logged and the previous one kept.
Exit 2 on a bad config at start (unknown key, an enabled tracker without a secret, a
socket that cannot be bound).""")
@click.option("--store", metavar="DIR", envvar="GOLDENHOUR_STORE", help="Local store (default: store.path).")
@click.option("--listen", metavar="HOST:PORT", help="Override daemon.listen (port 0: any free port).")
@pass_app
def daemon(app: App, store: str | None, listen: str | None) -> None:
    """Run the webhook receiver and capture queue: incidents declared in your tracker capture this host.

    Verifies each tracker's signature over the raw body, answers 202 at once,
    captures once per incident (duplicates and retries are recognised, also
    across restarts) in a child process, one capture at a time, and uploads
    the spool on a timer. See docs/daemon.md.
    """
    from agent.config import ConfigError
    from agent.daemon import server

    def load() -> Config:
        """The config as at start: the file (again), GOLDENHOUR_STORE, then --store and --listen."""
        fresh = App(app.config_path)
        fresh.store_override(store)
        if listen is not None:
            fresh.cfg.set("daemon.listen", listen)
        return fresh.cfg

    cfg = load()
    try:
        rc = server.run(cfg, app.config_path, load)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    sys.exit(rc)


@click.command("daemon-job", hidden=True, context_settings=CONTEXT)
@pass_app
def daemon_job(app: App) -> None:
    """Internal: run one job of the daemon (JSON on stdin) in this process; print one JSON result.

    The daemon starts this as a child process for each capture, upload round,
    salvage and pause-ledger sweep, so its own process never forks collectors
    (agent/daemon/child.py).
    """
    from agent.daemon import child
    sys.exit(child.main(lambda: app.cfg))
