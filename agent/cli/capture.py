"""``goldenhour snapshot`` (capture this host now) and ``goldenhour collectors`` (what would run here).

``snapshot`` parses its options into one ``CaptureRequest`` and calls
``agent.capture.capture``; its three side paths (upload right after the capture,
``--reason pre-restart`` without ``--incident``, ``--via-daemon``) are in
``agent/cli/snapshot_support.py``.
"""
from __future__ import annotations

import os
from pathlib import Path

import click

from agent import __version__
from agent.cli.app import CONTEXT, App, emit_json, human_size, pass_app
from agent.cli.snapshot_support import maybe_upload, pre_restart_incident, snapshot_via_daemon
from agent.errors import UsageError


@click.command(context_settings=CONTEXT, epilog="""\b
Examples:
  goldenhour snapshot --incident INC-123
  goldenhour snapshot --incident INC-123 --profile quick --json
  goldenhour snapshot --incident INC-123 --process 'java.*orders' --heap
  goldenhour snapshot --incident INC-123 --unit nginx --log '/var/log/nginx/*.log'
  goldenhour snapshot --incident INC-123 --collector sockets --collector dmesg
  goldenhour snapshot --incident INC-123 --profile quick --netns $(pidof -s envoy)

\b
Profiles:
  quick     host facts, sockets, dmesg, conntrack, logs, process facts (seconds)
  standard  quick + thread dumps + eBPF probe window (default; ~probe window longer)
  full      standard + heap dumps / core images (can pause targets for seconds)

Exit 0 when a bundle was written (failed or skipped collectors are recorded in it),
2 on bad input (nothing written), 3 when no bundle could be written.""")
@click.option("--incident", "-i", metavar="ID",
              help="Incident ID: letters, digits, '.', '_', '-' (e.g. INC-123, a PagerDuty ID). Required, "
                   "except with --reason pre-restart: then the incident open for this host in the daemon's state.")
@click.option("--profile", "-p", type=click.Choice(["quick", "standard", "full"]),
              help="How much to capture (default: capture.profile, standard).")
@click.option("--store", metavar="DIR", envvar="GOLDENHOUR_STORE", help="Local store (default: store.path).")
@click.option("--log", "logs", multiple=True, metavar="PATH_OR_GLOB",
              help="Extra log file or glob to tail (repeatable).")
@click.option("--collector", "-c", "only", multiple=True, metavar="NAME",
              help="Run only these collectors (repeatable). See `goldenhour collectors`.")
@click.option("--skip", multiple=True, metavar="NAME", help="Do not run this collector (repeatable).")
@click.option("--pid", "pids", multiple=True, type=int, metavar="PID", help="Target process (repeatable).")
@click.option("--process", "processes", multiple=True, metavar="REGEX",
              help="Target processes whose name or command line matches (repeatable).")
@click.option("--unit", "units", multiple=True, metavar="UNIT",
              help="Target the processes of a systemd unit (repeatable).")
@click.option("--heap", is_flag=True, help="Also take heap dumps / core images (always on in the full profile).")
@click.option("--time-budget", type=click.FloatRange(1, 3600), metavar="SECONDS",
              help="Overall budget; collectors still running then are stopped (default: capture.time_budget_s).")
@click.option("--probe-seconds", type=click.FloatRange(0.5, 300), metavar="SECONDS",
              help="eBPF probe window (default: capture.probe_seconds, 5).")
@click.option("--netns", metavar="NAME|PATH|PID",
              help="Read sockets and conntrack in this network namespace: a name under /run/netns, a namespace "
                   "file, or a PID (its /proc/PID/ns/net, e.g. a container's process).")
@click.option("--reason", default="", metavar="TEXT", help="Why this capture was taken (kept in the manifest).")
@click.option("--title", default="", metavar="TEXT", help="Incident title (kept in the manifest).")
@click.option("--started-at", metavar="TIME", help="When the incident began (10m = 10 minutes ago, or "
              "2026-11-23T10:02:00Z): the flight recorder's history is taken from an hour before it.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of progress and a summary.")
@click.option("--upload", "upload_opt", is_flag=False, flag_value="-", default=None, metavar="[s3://BUCKET/PREFIX]",
              help="Upload after capturing, to upload.url or to this S3 location (default: when upload.url is set).")
@click.option("--no-upload", "no_upload", is_flag=True,
              help="Keep the bundle in the local store only (it stays pending).")
@click.option("--upload-url", "upload_url", metavar="s3://BUCKET/PREFIX", help="Same as --upload s3://BUCKET/PREFIX.")
@click.option("--via-daemon", is_flag=True,
              help="Ask the running daemon to capture (its queue and config) and wait; exit 5 if unreachable.")
@pass_app
def snapshot(app: App, incident: str, profile: str | None, store: str | None, logs: tuple[str, ...],
             only: tuple[str, ...], skip: tuple[str, ...], pids: tuple[int, ...], processes: tuple[str, ...],
             units: tuple[str, ...], heap: bool, time_budget: float | None, probe_seconds: float | None,
             netns: str | None, reason: str, title: str, started_at: str | None, as_json: bool,
             upload_opt: str | None, no_upload: bool, upload_url: str | None, via_daemon: bool = False) -> None:
    """Capture this host's volatile state into one bundle, now.

    Collectors run in parallel, each in its own process with its own time
    budget; a collector that fails or times out is recorded and never stops
    the others. The bundle lands in the local store first and its path and
    SHA-256 are printed; with an upload configured it is then sent to S3.
    """
    from agent.capture import CaptureRequest, capture, lower_priority
    from agent.incident import Incident, IncidentIdError, Trigger
    from agent.progress import Progress

    if only and skip:
        raise UsageError("use either --collector or --skip, not both")
    if no_upload and (upload_opt or upload_url):
        raise UsageError("use either --upload or --no-upload, not both")
    do_upload = False if no_upload else (True if upload_opt else None)
    if upload_opt and upload_opt != "-":
        upload_url = upload_opt
    if upload_url and (not upload_url.startswith("s3://") or len(upload_url) <= 5):
        raise UsageError(f"--upload takes s3://BUCKET/PREFIX, not {upload_url!r}")
    started = _started_at(started_at)
    if netns:
        netns = _netns_path(netns)
        if via_daemon:
            raise UsageError("--netns is for a local capture; leave out --via-daemon")
    if via_daemon:
        snapshot_via_daemon(app, {
            "incident": incident, "title": title, "profile": profile, "collectors": list(only), "skip": list(skip),
            "pids": list(pids), "processes": list(processes), "units": list(units), "logs": list(logs),
            "time_budget_s": time_budget, "probe_seconds": probe_seconds, "heap": heap, "reason": reason,
            "unit": units[0] if units else "", "by": _who(), **({"started_at": started} if started else {})}, as_json)
        return
    app.store_override(store)
    from agent.targets import TargetError, check_selectors
    try:
        check_selectors(processes, units)
    except TargetError as exc:
        raise UsageError(str(exc)) from None
    if only or skip:                        # exit 4 before anything is said or written
        from agent import registry
        from agent.plan import check_names
        check_names(only, registry.collectors(), "--collector")
        check_names(skip, registry.collectors(), "--skip")
    if incident is not None:
        try:
            inc = Incident(id=incident, title=title, started_at=started)
        except IncidentIdError as exc:
            raise UsageError(str(exc)) from None
    elif reason == "pre-restart":
        chosen, why = pre_restart_incident(app, units)
        if chosen is None:
            emit_json({"captured": False, "reason": why}) if as_json else click.echo(f"goldenhour: {why}")
            return
        if not as_json:
            click.echo(f"goldenhour: {why}: capturing before the restart", err=True)
        inc, incident = chosen, chosen.id
        inc.started_at = started or inc.started_at
    else:
        raise UsageError("--incident is required (it may be left out only with --reason pre-restart)")
    cfg = app.cfg
    if reason == "pre-restart" and time_budget is None:
        time_budget = float(cfg["daemon.pre_restart_budget_s"])
    kind = "pre-restart" if reason == "pre-restart" else "manual"
    req = CaptureRequest(
        incident=inc, trigger=Trigger(kind=kind, reason=reason, by=_who()),
        profile=profile or cfg["capture.profile"], only=list(only), skip=list(skip), pids=list(pids),
        processes=list(processes), units=list(units), log_paths=list(logs),
        time_budget_s=time_budget, probe_seconds=probe_seconds, heap=heap, netns=netns)
    progress = Progress(enabled=not as_json)
    if not as_json:
        progress.message(f"goldenhour {__version__}: capturing incident {incident} "
                         f"(profile {req.profile}) into {cfg.store_path}")
    lower_priority(cfg)
    res = capture(cfg, req, on_event=progress)
    upload_info = maybe_upload(app, res, do_upload, upload_url, as_json)
    statuses = res.statuses
    warnings = _target_warnings(res.manifest, statuses)
    for w in warnings:
        click.echo(f"goldenhour: warning: {w}", err=True)
    if as_json:
        out = {"bundle": str(res.bundle), "sha256": res.sha256, "size": res.size, "incident": incident,
               "host": res.manifest["host"]["hostname"], "profile": req.profile,
               "duration_s": res.manifest["clocks"]["duration_s"], "collectors": statuses,
               "manifest": str(_sidecar(res.bundle))}
        if upload_info is not None:
            out["upload"] = upload_info
        if warnings:
            out["warnings"] = warnings
        emit_json(out)
        return
    counts: dict[str, int] = {}
    for s in statuses.values():
        counts[s] = counts.get(s, 0) + 1
    click.echo(f"bundle  {res.bundle}")
    click.echo(f"sha256  {res.sha256}")
    click.echo(f"size    {human_size(res.size)}, {res.manifest['summary']['files']} files, "
               f"{res.manifest['clocks']['duration_s']:.2f} s; collectors: "
               + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    if upload_info is not None:
        if upload_info.get("status") == "uploaded":
            click.echo(f"upload  {upload_info.get('url')}")
        else:
            click.echo(f"upload  PENDING: {upload_info.get('error', 'not uploaded')}; the bundle is safe in the "
                       "local store and `goldenhour upload --pending` (or the daemon) will retry")


def _target_warnings(manifest: dict, statuses: dict[str, str]) -> list[str]:
    """A --pid/--process/--unit that named no process, said where the SRE looks (the bundle has it too)."""
    problems = manifest.get("target_problems") or []
    if not problems:
        return []
    found = manifest.get("targets") or []
    skipped = sorted(n for n, s in statuses.items() if s == "skipped" and n in ("process", "threads", "heap"))
    tail = (f"; per-process collectors skipped ({', '.join(skipped)}), host-wide evidence captured"
            if not found and skipped else "")
    return [f"{p.get('target')}: {p.get('error')}{tail}" for p in problems]


def _started_at(text: str | None) -> str:
    """--started-at as ISO UTC ("" when not given); a time in the future is refused."""
    if not text:
        return ""
    import time
    from datetime import datetime, timezone
    from agent.recorder.cli import parse_when
    now = time.time()
    t = parse_when(text, now, "--started-at")
    if t is None or t > now + 60:
        raise UsageError(f"--started-at {text!r} is in the future")
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _who() -> str:
    import pwd
    try:
        me = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        me = str(os.geteuid())
    user = os.environ.get("SUDO_USER") or me
    return f"{user}@{os.uname().nodename}"


def _sidecar(bundle: Path) -> Path:
    from agent.bundle import manifest_sidecar
    return manifest_sidecar(bundle)


def _netns_path(spec: str) -> str:
    """--netns NAME|PATH|PID -> a network namespace file that exists, else a usage error."""
    path = f"/proc/{spec}/ns/net" if spec.isdigit() else spec if "/" in spec else f"/run/netns/{spec}"
    if not os.path.exists(path):
        raise UsageError(f"--netns {spec}: no network namespace at {path}")
    return path


@click.command("collectors", context_settings=CONTEXT, epilog="""\b
Examples:
  goldenhour collectors                     every collector and whether it can run here
  goldenhour collectors --profile quick     what `snapshot --profile quick` would run here
  goldenhour collectors --json | jq -r '.[] | select(.status != "ready") | "\\(.name): \\(.reason)"'

\b
Status: 'ready' will run when selected; 'unavailable' says what is missing here
(install it, or run as root); 'broken' means the module itself failed to load.
With --profile, only the collectors a capture with that profile selects are listed
(the profile's set, with [collectors.<name>] enabled and capture.heap applied), then
the others by name.""")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.option("--profile", type=click.Choice(["quick", "standard", "full"]),
              help="Show what a capture with this profile runs here.")
@pass_app
def collectors_cmd(app: App, as_json: bool, profile: str | None) -> None:
    """Every collector: what it captures, its profiles, and whether it can run on this host."""
    from agent import registry
    from agent.plan import select
    found, broken = registry.discover()
    heap = bool(app.cfg["capture.heap"])
    selected = {c.name for c in select(found, app.cfg, profile, heap=heap)} if profile else None
    rows = []
    for c in found.values():
        why = c.unavailable()
        enabled = app.cfg.collector(c.name).get("enabled")
        rows.append({"name": c.name, "summary": c.summary, "scope": c.scope.value,
                     "profiles": sorted(c.profiles, key=["quick", "standard", "full"].index),
                     "runtimes": sorted(c.runtimes), "timeout_s": c.timeout_s,
                     "pauses_target": c.pauses_target, "side_effects": list(c.side_effects),
                     "status": "unavailable" if why else "ready", "reason": why or "",
                     "enabled_by_config": enabled,
                     "in_profile": (profile in c.profiles) if profile else None,
                     "selected": (c.name in selected) if selected is not None else None})
    for b in broken:
        rows.append({"name": b.name, "summary": "", "status": "broken", "reason": b.error})
    if as_json:
        emit_json(rows)
        return
    shown = [r for r in rows if selected is None or r.get("selected") or r["status"] == "broken"]
    if profile:
        ready = sum(1 for r in shown if r["status"] == "ready")
        click.echo(f"profile {profile}: {ready} collector(s) run here"
                   + (f", {len(shown) - ready} selected but skipped (unavailable)" if len(shown) > ready else ""))
    for r in shown:
        if r["status"] == "broken":
            click.echo(f"{r['name']:<14} BROKEN       {r['reason']}")
            continue
        mark = "ready" if r["status"] == "ready" else "unavailable"
        prof = ",".join(r["profiles"])
        extra = " [pauses target]" if r["pauses_target"] else ""
        forced = {True: " [enabled by config]", False: ""}.get(r["enabled_by_config"], "") if profile else ""
        click.echo(f"{r['name']:<14} {mark:<12} {prof:<20} {r['summary']}{extra}{forced}")
        if r["reason"]:
            click.echo(f"{'':<14} {'':<12} {'':<20} ↳ {r['reason']}")
    if profile:
        others = [r["name"] for r in rows if r.get("selected") is False]
        if others:
            click.echo(f"not in profile {profile}: {', '.join(others)}")
