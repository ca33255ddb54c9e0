"""CLI commands of the fleet: ``goldenhour fleet status|trigger|resolve|cancel|recapture|hosts|enroll|init``.

The work is in ``agent.fleet.commander`` (NATS) and ``agent.fleet.enroll`` (credentials);
this module parses options, runs the coroutine and prints text or ``--json``. Every
command reads the ``fleet.*`` keys of the config: the commander's own credentials.
"""
from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path
from typing import Any

import click

from agent.cli.app import CONTEXT, App, emit_json, pass_app
from agent.errors import EXIT_FLEET_FAILED, EXIT_FLEET_PENDING, UsageError

EXAMPLES = """\b
Examples:
  goldenhour fleet status --incident Q1ABCDEF
  goldenhour fleet status --incident Q1ABCDEF --wait --timeout 10m && echo "all evidence in"
  goldenhour fleet trigger --incident INC-77 --services checkout --profile quick --deadline 2h
  goldenhour fleet recapture --incident INC-77
  goldenhour fleet resolve --incident INC-77
  goldenhour fleet hosts --offline
  goldenhour fleet enroll --host web-3          (on the NATS server's admin box)

\b
Exit codes: 0 ok; 4 unknown incident; 20 NATS unreachable or credentials refused;
status --wait: 21 all done but some hosts failed/expired/missed, 22 still pending at --timeout."""


def _duration(text: str, what: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text or "")
    if not m:
        raise UsageError(f"{what} must be a duration like 90s, 30m, 4h or 1d, not {text!r}")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _settings(app: App):
    from agent.fleet.conn import Settings
    return Settings.from_config(app.cfg)


def _run(coro) -> Any:
    from agent.fleet.conn import guarded
    return asyncio.run(guarded(coro))


def _split(values: tuple[str, ...]) -> list[str]:
    return [v.strip() for x in values for v in x.split(",") if v.strip()]


@click.group(context_settings=CONTEXT, epilog=EXAMPLES)
def fleet() -> None:
    """The incident commander's view of the fleet: who captured, who is pending, and manual fan-out.

    Trackers declare incidents through `goldenhour relay`; each host's daemon (in fleet
    mode) captures when an incident concerns it and reports its progress. These commands
    read and write the same NATS buckets with the commander's credentials (fleet.* keys).
    See docs/fleet.md.
    """


@fleet.command(context_settings=CONTEXT)
@click.option("--incident", "-i", required=True, metavar="ID", help="Incident ID.")
@click.option("--watch", is_flag=True, help="Keep the view up to date as hosts report (Ctrl-C to stop).")
@click.option("--wait", is_flag=True, help="Wait until every expected host is done; exit code says how it went.")
@click.option("--timeout", default="10m", show_default=True, metavar="DURATION", help="How long --wait waits.")
@click.option("--all-hosts", is_flag=True, help="List every host, also those with evidence (large fleets).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object (with --watch: one per update).")
@pass_app
def status(app: App, incident: str, watch: bool, wait: bool, timeout: str, all_hosts: bool, as_json: bool) -> None:
    """Progress of one incident across the fleet: expected hosts, captured, uploaded, pending, failed.

    Expected hosts are the registered hosts the incident concerns (the daemons' own
    targeting rule). Pending hosts without a heartbeat for fleet.offline_after_s show as
    offline; after a resolve or the deadline they are 'missed'. Latency is trigger ->
    capture start per host. With --wait: exit 0 when every expected host has its
    evidence, 21 when all are done but some failed, 22 when --timeout passes first.
    """
    from agent.fleet import commander, render
    s = _settings(app)
    off = float(app.cfg["fleet.offline_after_s"])
    if not (watch or wait):
        v = _run(commander.status(s, incident, offline_after_s=off))
        emit_json(v) if as_json else click.echo(render.status_text(v, all_hosts))
        return
    tty = sys.stdout.isatty() and not as_json

    def show(v: dict[str, Any]) -> None:
        if as_json:
            if watch:
                click.echo(_one_line(v))
            return
        if tty:
            click.echo("\x1b[H\x1b[2J", nl=False)
        if watch or tty:
            click.echo(render.status_text(v, all_hosts) + "\n")
    limit = _duration(timeout, "--timeout") if wait else None
    try:
        v, timed_out = _run(commander.follow(s, incident, offline_after_s=off, until_done=wait, timeout_s=limit,
                                             on_update=show))
    except KeyboardInterrupt:
        return
    if wait:
        if as_json:
            emit_json({**v, "timed_out": timed_out})
        elif not tty:
            click.echo(render.status_text(v, all_hosts))
        if timed_out:
            sys.exit(EXIT_FLEET_PENDING)
        if v["bad"]:
            sys.exit(EXIT_FLEET_FAILED)


def _one_line(v: dict[str, Any]) -> str:
    import json
    return json.dumps(v, separators=(",", ":"), default=str)


@fleet.command(context_settings=CONTEXT)
@click.option("--incident", "-i", required=True, metavar="ID", help="Incident ID (new, or an open one to widen).")
@click.option("--hosts", multiple=True, metavar="NAMES", help="Host names or addresses (comma-separated or repeated).")
@click.option("--services", multiple=True, metavar="NAMES", help="Service names (as in each host's daemon.services).")
@click.option("--labels", multiple=True, metavar="K=V", help="Labels matched against each host's host.tags.")
@click.option("--tags", multiple=True, metavar="TAGS", help="Bare tags matched against host.tags.")
@click.option("--all", "all_hosts", is_flag=True, help="Every host of the fleet.")
@click.option("--profile", type=click.Choice(["quick", "standard", "full"]), help="Default: fleet.profile.")
@click.option("--deadline", metavar="DURATION", help="No capture starts later (default: fleet.deadline_minutes).")
@click.option("--title", default="", help="A title for the status view.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@pass_app
def trigger(app: App, incident: str, hosts, services, labels, tags, all_hosts: bool, profile: str | None,
            deadline: str | None, title: str, as_json: bool) -> None:
    """Declare an incident by hand: every host it concerns captures at once (manual fan-out).

    The scope is a union: a host is concerned when it is named, serves a named
    service, or carries a named label or tag. Triggering an open incident again widens
    its scope (newly concerned hosts capture, the others do not capture twice).
    """
    from agent.fleet import commander
    from agent.fleet.records import Scope
    lab = {}
    for kv in _split(labels):
        k, sep, v = kv.partition("=")
        if not sep or not k:
            raise UsageError(f"--labels takes KEY=VALUE, not {kv!r}")
        lab[k] = v
    scope = Scope(hosts=_split(hosts), services=_split(services), labels=lab, tags=_split(tags), all=all_hosts)
    cfg = app.cfg
    dl = _duration(deadline, "--deadline") if deadline else cfg["fleet.deadline_minutes"] * 60.0
    out = _run(commander.trigger(_settings(app), incident, scope, profile=profile or cfg["fleet.profile"],
                                 deadline_s=dl, title=title, upload_rate=float(cfg["fleet.upload_rate"]),
                                 spread_max_s=float(cfg["fleet.upload_spread_max_s"])))
    _outcome(out, as_json)


def _outcome(out: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(out)
        return
    extra = f" ({out['reason']})" if out.get("reason") else ""
    click.echo(f"incident {out['incident']}: {out['status']}{extra}; state {out['state']}, capture revision "
               f"{out['capture_rev']}, scope {out['scope']}")


@fleet.command(context_settings=CONTEXT)
@click.option("--incident", "-i", required=True, metavar="ID", help="Incident ID.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@pass_app
def resolve(app: App, incident: str, as_json: bool) -> None:
    """Mark an incident resolved: captures not started yet are cancelled, hosts away never capture it."""
    from agent.fleet import commander
    _outcome(_run(commander.resolve(_settings(app), incident)), as_json)


@fleet.command(context_settings=CONTEXT)
@click.option("--incident", "-i", required=True, metavar="ID", help="Incident ID.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@pass_app
def cancel(app: App, incident: str, as_json: bool) -> None:
    """Cancel an incident declared by mistake: like resolve, shown as cancelled."""
    from agent.fleet import commander
    _outcome(_run(commander.resolve(_settings(app), incident, state="cancelled")), as_json)


@fleet.command(context_settings=CONTEXT)
@click.option("--incident", "-i", required=True, metavar="ID", help="Incident ID.")
@click.option("--deadline", metavar="DURATION", help="Deadline of the new capture (default: fleet.deadline_minutes).")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@pass_app
def recapture(app: App, incident: str, deadline: str | None, as_json: bool) -> None:
    """Ask every concerned host for one more capture (a new capture revision; reopens a resolved incident)."""
    from agent.fleet import commander
    dl = _duration(deadline, "--deadline") if deadline else app.cfg["fleet.deadline_minutes"] * 60.0
    _outcome(_run(commander.recapture(_settings(app), incident, deadline_s=dl)), as_json)


@fleet.command(context_settings=CONTEXT)
@click.option("--offline", is_flag=True, help="Only hosts whose last heartbeat is older than fleet.offline_after_s.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def hosts(app: App, offline: bool, as_json: bool) -> None:
    """The host registry: every daemon in fleet mode, its identity, and when it was last heard from."""
    from agent.fleet import commander, render
    v = _run(commander.hosts(_settings(app), offline_after_s=float(app.cfg["fleet.offline_after_s"])))
    if offline:
        v["hosts"] = [r for r in v["hosts"] if not r["online"]]
    emit_json(v) if as_json else click.echo(render.hosts_text(v, offline))


@fleet.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def init(app: App, as_json: bool) -> None:
    """Create the fleet's buckets (GH_INCIDENTS, GH_STATUS, GH_HOSTS) if missing; relay or commander credentials."""
    from agent.fleet import commander
    v = _run(commander.init(_settings(app)))
    if as_json:
        emit_json(v)
        return
    for name, b in v["buckets"].items():
        lim = f", up to {b['max_consumers']} consumers" if (b.get("max_consumers") or 0) > 0 else ""
        click.echo(f"{name:<13} history {b['history']}, max age {b['max_age_s'] / 86400:.0f} d, {b['values']} values"
                   + lim)


@fleet.command(context_settings=CONTEXT, epilog="""\b
Examples:
  goldenhour fleet enroll --host web-3 --dir /etc/goldenhour/fleet
  goldenhour fleet enroll --relay relay-1
  goldenhour fleet enroll --commander alice
  goldenhour fleet enroll --host web-3 --remove""")
@click.option("--host", "host", metavar="NAME", help="A host (its host.name, or its hostname).")
@click.option("--relay", "relay", metavar="NAME", help="A relay.")
@click.option("--commander", "commander", metavar="NAME", help="An incident commander.")
@click.option("--fleet-name", metavar="NAME", help="Fleet (default: fleet.name).")
@click.option("--dir", "directory", default="/etc/goldenhour/fleet", show_default=True, type=click.Path(),
              help="Enrolment directory (seeds, principals, nats-users.conf).")
@click.option("--rotate", is_flag=True, help="Replace the key of an enrolled principal.")
@click.option("--remove", is_flag=True, help="Revoke: drop the principal from nats-users.conf.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def enroll(app: App, host, relay, commander, fleet_name, directory, rotate: bool, remove: bool, as_json: bool) -> None:
    """Make credentials for a host, relay or commander, and the NATS server's permission entries.

    Writes the seed (copy it to that machine's fleet.nkey_seed_file, mode 0600), and
    regenerates nats-users.conf, which nats-server.conf includes; reload the server
    afterwards (nats-server --signal reload). A host's credential can write only its
    own status and heartbeat; see docs/fleet.md for every permission.
    """
    from agent.fleet import enroll as en
    chosen = [(k, v) for k, v in (("host", host), ("relay", relay), ("commander", commander)) if v]
    if len(chosen) != 1:
        raise UsageError("name exactly one of --host, --relay or --commander")
    kind, name = chosen[0]
    fl = fleet_name or app.cfg["fleet.name"]
    try:
        out = en.remove(Path(directory), kind, name, fl) if remove else en.enroll(Path(directory), kind, name, fl,
                                                                               rotate=rotate)
    except (ValueError, OSError) as exc:
        raise UsageError(str(exc)) from None
    if as_json:
        emit_json(out)
    elif remove:
        click.echo(f"removed {out['removed']}; reload the server: nats-server --signal reload")
    else:
        click.echo(f"{kind} {out['name']} (fleet {fl}): public key {out['public_key']}\n"
                   f"seed     {out['seed_file']}  (copy to the {kind}'s fleet.nkey_seed_file, mode 0600; then delete)\n"
                   f"users    {out['users_file']}  (include it in nats-server.conf; nats-server --signal reload)")
