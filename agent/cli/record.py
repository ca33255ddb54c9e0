"""``goldenhour record`` (the flight recorder) and ``goldenhour history`` (read it on the host).

The logic lives in ``agent.recorder.cli``; this module only declares the commands.
"""
from __future__ import annotations

import sys

import click

from agent.cli.app import CONTEXT, App, emit_json, pass_app
from agent.errors import UsageError


@click.command("record", context_settings=CONTEXT, epilog="""\b
Examples:
  goldenhour record                          record with the config's settings (systemd runs this)
  goldenhour record --interval 1 --ring-mib 16
  systemctl enable --now goldenhour-recorder the unit: its own, capped, independent of the daemon

\b
The ring (recorder.path, default <store>/recorder/ring) is created at its full size once and
never grows; it survives restarts (recording resumes after the last good record) and reboots.
Every capture's `history` collector takes the window before the incident from it.
Exit: 0 stopped by SIGTERM/SIGINT, 2 bad option or config, 3 another recorder holds the ring.""")
@click.option("--interval", type=click.FloatRange(0.05, 3600), metavar="SECONDS",
              help="Sampling interval (default recorder.interval_s, 5).")
@click.option("--process-interval", type=click.FloatRange(0.05, 3600), metavar="SECONDS",
              help="Process and cgroup scan interval (default recorder.process_interval_s, 10).")
@click.option("--ring", metavar="PATH", help="Ring file (default recorder.path, else <store>/recorder/ring).")
@click.option("--ring-mib", type=click.IntRange(1, 65536), metavar="MIB",
              help="Size of a new ring (default recorder.ring_mib, 64); an existing ring keeps its size.")
@click.option("--socket", "socket_path", metavar="PATH", help="Unix socket (default recorder.socket; '' for none).")
@click.option("--store", metavar="DIR", envvar="GOLDENHOUR_STORE", help="Local store (default: store.path).")
@click.option("--duration", type=click.FloatRange(0.1), metavar="SECONDS",
              help="Stop after this long (tests, benchmarks).")
@pass_app
def record(app: App, interval: float | None, process_interval: float | None, ring: str | None, ring_mib: int | None,
           socket_path: str | None, store: str | None, duration: float | None) -> None:
    """The flight recorder: sample this host every few seconds into a bounded ring file.

    CPU, memory, PSI, paging, disks, TCP/UDP counters and listen-queue drops,
    conntrack, descriptors, per-service cgroups, the top processes and the
    processes that start and exit (names only: never command lines or
    environments). It runs in the foreground until stopped.
    """
    from agent.recorder.cli import record as run
    app.store_override(store)
    sys.exit(run(app.cfg, interval=interval, process_interval=process_interval, ring=ring, ring_mib=ring_mib,
                 socket_path=socket_path, duration=duration))


@click.command("history", context_settings=CONTEXT, epilog="""\b
Examples:
  goldenhour history                          the last 60 minutes: gaps, first departures, processes
  goldenhour history --since 2h --until 30m   from 2 h ago to 30 min ago
  goldenhour history --since 09:00 --t0 "2026-11-23 09:20"   baseline before the page at 09:20
  goldenhour history --signal 'psi.*' --signal cpu.busy_pct  print these series too
  goldenhour history --csv --signal '*' > host.csv           every signal, one column each
  goldenhour history --file BUNDLE_DIR/collectors/history/ring-slice.bin   a bundle's window

\b
TIME: 30m, 2h, 90s, 1d (ago), now, 2026-11-23T10:00:00Z (UTC unless it has an offset), or epoch
seconds. Exit: 0 ok, 2 bad option, 4 no history (no ring, no recorder, or no such file).""")
@click.option("--since", default="60m", show_default=True, metavar="TIME", help="Start of the window.")
@click.option("--until", default="now", show_default=True, metavar="TIME", help="End of the window.")
@click.option("--t0", metavar="TIME",
              help="When the incident began: the baseline ends 15 min before it (default: --until).")
@click.option("--signal", "signals", multiple=True, metavar="GLOB", help="Also print these series (repeatable).")
@click.option("--file", metavar="PATH", help="Read a bundle's ring-slice.bin or history.jsonl (or its folder) instead.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: window, gaps, departures, processes, series.")
@click.option("--csv", "as_csv", is_flag=True,
              help="CSV: a row per sample, a column per signal (--signal, default all).")
@click.option("--jsonl", "as_jsonl", is_flag=True, help="The decoded records, one JSON object per line.")
@click.option("--store", metavar="DIR", envvar="GOLDENHOUR_STORE", help="Local store (default: store.path).")
@pass_app
def history(app: App, since: str, until: str, t0: str | None, signals: tuple[str, ...], file: str | None,
            as_json: bool, as_csv: bool, as_jsonl: bool, store: str | None) -> None:
    """What the flight recorder saw: read a time range of this host's ring.

    Prints the window and its gaps (with why), clock steps and reboots, the
    first signals that left their baseline and when, and the processes that
    started or exited: the questions "when did it start?" and "what moved
    first?" without taking a capture.
    """
    from agent.recorder import cli as rc
    if sum((as_json, as_csv, as_jsonl)) > 1:
        raise UsageError("use one of --json, --csv, --jsonl")
    app.store_override(store)
    now = rc.now()
    t_since = rc.parse_when(since, now, "--since")
    t_until = rc.parse_when(until, now, "--until")
    t_zero = rc.parse_when(t0, now, "--t0")
    if file and since == "60m":
        t_since = None                       # a bundle's file: its whole window unless asked
    if file and until == "now":
        t_until = None
    if t_since is not None and t_until is not None and t_since >= t_until:
        raise UsageError("--since must be before --until")
    win = rc.load(app.cfg, t_since, t_until, file)
    if as_jsonl:
        sys.stdout.buffer.write(rc.jsonl(win))
        return
    data = rc.history_data(win, t_zero, signals or (("*",) if as_csv else ()))
    if as_json:
        emit_json(rc.public(data))
    elif as_csv:
        click.echo(rc.render_csv(data), nl=False)
    else:
        click.echo(rc.render_table(data, t_zero), nl=False)
