"""The ``goldenhour`` command line (click): the ``main`` group and the list of its commands.

Where it sits: the front door. Each command parses its options, loads the
config, calls one pipeline function (``capture``, ``bundle.verify_file``...)
and prints either a human summary or, with ``--json``, one JSON object that
scripts can rely on. Errors print one line ``goldenhour: error: ...`` and exit
with the code documented in ``agent/errors.py`` and docs/cli.md.

Layout: ``app.py`` is the shared context every command imports (``App``,
``pass_app``, ``emit_json``, ``resolve_bundle``...); one module per command family
(``capture``, ``verify``, ``daemon``, ``report``, ``storage``) defines its commands
without knowing ``main``; this file registers them. A new command: write it in its
family's module (or a new one) and add one ``main.add_command`` line below.
"""
from __future__ import annotations

import click

from agent import __version__
from agent.cli import capture, daemon, fleet, prune, record, relay, report, storage, verify
from agent.cli.app import CONTEXT, App, Group


@click.group(cls=Group, context_settings=CONTEXT, epilog="""\b
Examples:
  goldenhour snapshot --incident INC-123            capture this host now
  goldenhour snapshot --incident INC-123 --pid 4242 --profile full
  goldenhour collectors                             what will run here, and why not
  goldenhour verify /var/lib/goldenhour/incidents/INC-123/*.tar.zst
  goldenhour show BUNDLE
  goldenhour prune --older-than 30                  what would go from the local store (--yes removes)
  goldenhour history --since 30m                    what the flight recorder saw before now

Exit codes: 0 ok, 1 verification failed, 2 usage/bad input, 3 capture failed,
4 not found, 5 daemon unreachable, 10-17 object storage, 20-22 fleet (see docs/cli.md).""")
@click.version_option(__version__, prog_name="goldenhour")
@click.option("--config", "config_path", metavar="FILE", envvar="GOLDENHOUR_CONFIG",
              help="Config file (default /etc/goldenhour/config.toml if it exists).")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """goldenhour: capture a Linux host's volatile evidence before anyone restarts anything.

    Thread and heap dumps, sockets, kernel messages, conntrack, eBPF syscall
    latency and log tails go into one verifiable bundle per capture, filed
    under the incident ID, stored locally first and then uploaded.
    """
    ctx.obj = App(config_path)


# Capture and read bundles here.
main.add_command(capture.snapshot)
main.add_command(capture.collectors_cmd)
main.add_command(verify.verify)
main.add_command(verify.show)
# The daemon, and the child process it starts for each job.
main.add_command(daemon.daemon)
main.add_command(daemon.daemon_job)
# Reports from bundles.
main.add_command(report.report_cmd)
# The flight recorder, and reading its history on the host.
main.add_command(record.record)
main.add_command(record.history)
# Object storage.
main.add_command(storage.upload)
main.add_command(storage.bundles)
main.add_command(storage.fetch)
# The local store.
main.add_command(prune.prune)
# The fleet: the central relay and the incident commander's commands.
main.add_command(relay.relay)
main.add_command(fleet.fleet)


def run() -> None:  # pragma: no cover
    main(prog_name="goldenhour")
