"""CLI command of the fleet relay: ``goldenhour relay`` (the work is in ``agent.fleet.relay``)."""
from __future__ import annotations

import sys

import click

from agent.cli.app import CONTEXT, App, pass_app
from agent.errors import UsageError


@click.command(context_settings=CONTEXT, epilog="""\b
Examples:
  goldenhour --config /etc/goldenhour/relay.toml relay      (systemd: goldenhour-relay.service)
  goldenhour relay --listen 127.0.0.1:8788
  curl -s localhost:8788/healthz; curl -s localhost:8788/metrics

\b
Endpoints:
  POST /v1/webhooks/<tracker>   the same trackers, secrets and checks as `goldenhour daemon`
  GET  /healthz                 503 while NATS is not connected; GET /metrics

Answers: 202 the incident's record is stored in NATS, 200 nothing to change (duplicate,
ignored), 4xx a bad delivery (nothing written), 503 NATS cannot take it now (the tracker
retries; nothing is lost). Exit 2 on a bad config (no tracker enabled, no fleet.servers).""")
@click.option("--listen", metavar="HOST:PORT", help="Override relay.listen (port 0: any free port).")
@pass_app
def relay(app: App, listen: str | None) -> None:
    """Receive the trackers' webhooks centrally and fan each incident out to the fleet through NATS.

    Verifies each delivery exactly as the daemon does, then writes the incident's record
    (created once, whatever the number of relays or retries; resolved; recaptured) to the
    fleet's JetStream bucket, and answers the tracker only after NATS stored it. Every
    daemon in fleet mode watches the bucket and captures if the incident concerns its host.
    See docs/fleet.md.
    """
    from agent.config import ConfigError
    from agent.fleet import relay as relay_mod
    from agent.fleet.conn import FleetError
    cfg = app.cfg
    if listen is not None:
        cfg.set("relay.listen", listen)
    try:
        rc = relay_mod.run(cfg)
    except (ConfigError, FleetError) as exc:
        raise UsageError(str(exc)) from None
    sys.exit(rc)
