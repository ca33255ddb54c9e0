"""The ``goldenhour`` command line (click).

Where it sits: the front door. Each command parses its options, loads the
config, calls one pipeline function (``capture``, ``bundle.verify_file``...)
and prints either a human summary or, with ``--json``, one JSON object that
scripts can rely on. Errors print one line ``goldenhour: error: ...`` and exit
with the code documented in ``agent/errors.py`` and README.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from agent import __version__
from agent import config as config_mod
from agent.errors import EXIT_MISMATCH, GoldenhourError, NotFoundError, UsageError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class App:
    """What every command gets: the loaded config (lazily) and the global flags."""

    def __init__(self, config_path: str | None):
        self.config_path = config_path
        self._cfg: config_mod.Config | None = None

    @property
    def cfg(self) -> config_mod.Config:
        if self._cfg is None:
            try:
                self._cfg = config_mod.load(self.config_path)
            except config_mod.ConfigError as exc:
                raise UsageError(str(exc)) from None
            env_store = os.environ.get("GOLDENHOUR_STORE")
            if env_store:
                self._cfg.set("store.path", env_store)
        return self._cfg

    def store_override(self, store: str | None) -> None:
        if store:
            self.cfg.set("store.path", store)


pass_app = click.make_pass_decorator(App)


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=1, default=str))


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


class Group(click.Group):
    """Turns GoldenhourError into one line on stderr and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GoldenhourError as exc:
            click.echo(f"goldenhour: error: {exc}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=Group, context_settings=CONTEXT, epilog="""\b
Examples:
  goldenhour snapshot --incident INC-123            capture this host now
  goldenhour snapshot --incident INC-123 --pid 4242 --profile full
  goldenhour collectors                             what will run here, and why not
  goldenhour verify /var/lib/goldenhour/incidents/INC-123/*.tar.zst
  goldenhour show BUNDLE

Exit codes: 0 ok, 1 verification failed, 2 usage/bad input, 3 capture failed,
4 not found, 5 daemon unreachable, 10-17 object storage (see README).""")
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


# -- snapshot ----------------------------------------------------------------

@main.command(context_settings=CONTEXT, epilog="""\b
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
@click.option("--log", "logs", multiple=True, metavar="PATH_OR_GLOB", help="Extra log file or glob to tail (repeatable).")
@click.option("--collector", "-c", "only", multiple=True, metavar="NAME",
              help="Run only these collectors (repeatable). See `goldenhour collectors`.")
@click.option("--skip", multiple=True, metavar="NAME", help="Do not run this collector (repeatable).")
@click.option("--pid", "pids", multiple=True, type=int, metavar="PID", help="Target process (repeatable).")
@click.option("--process", "processes", multiple=True, metavar="REGEX",
              help="Target processes whose name or command line matches (repeatable).")
@click.option("--unit", "units", multiple=True, metavar="UNIT", help="Target the processes of a systemd unit (repeatable).")
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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of progress and a summary.")
@click.option("--upload", "upload_opt", is_flag=False, flag_value="-", default=None, metavar="[s3://BUCKET/PREFIX]",
              help="Upload after capturing, to upload.url or to this S3 location (default: when upload.url is set).")
@click.option("--no-upload", "no_upload", is_flag=True, help="Keep the bundle in the local store only (it stays pending).")
@click.option("--upload-url", "upload_url", metavar="s3://BUCKET/PREFIX", help="Same as --upload s3://BUCKET/PREFIX.")
@click.option("--via-daemon", is_flag=True,
              help="Ask the running daemon to capture (its queue and config) and wait; exit 5 if unreachable.")
@pass_app
def snapshot(app: App, incident: str, profile: str | None, store: str | None, logs: tuple[str, ...],
             only: tuple[str, ...], skip: tuple[str, ...], pids: tuple[int, ...], processes: tuple[str, ...],
             units: tuple[str, ...], heap: bool, time_budget: float | None, probe_seconds: float | None,
             netns: str | None, reason: str, title: str, as_json: bool, upload_opt: str | None, no_upload: bool,
             upload_url: str | None, via_daemon: bool = False) -> None:
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
    if netns:
        netns = _netns_path(netns)
        if via_daemon:
            raise UsageError("--netns is for a local capture; leave out --via-daemon")
    if via_daemon:
        from agent.cli_daemon import snapshot_via_daemon
        snapshot_via_daemon(app, {
            "incident": incident, "title": title, "profile": profile, "collectors": list(only), "skip": list(skip),
            "pids": list(pids), "processes": list(processes), "units": list(units), "logs": list(logs),
            "time_budget_s": time_budget, "probe_seconds": probe_seconds, "heap": heap, "reason": reason,
            "unit": units[0] if units else "", "by": _who()}, as_json)
        return
    app.store_override(store)
    if incident is not None:
        try:
            inc = Incident(id=incident, title=title)
        except IncidentIdError as exc:
            raise UsageError(str(exc)) from None
    elif reason == "pre-restart":
        from agent.cli_daemon import pre_restart_incident
        chosen, why = pre_restart_incident(app, units)
        if chosen is None:
            emit_json({"captured": False, "reason": why}) if as_json else click.echo(f"goldenhour: {why}")
            return
        if not as_json:
            click.echo(f"goldenhour: {why}: capturing before the restart", err=True)
        inc, incident = chosen, chosen.id
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
    upload_info = _maybe_upload(app, res, do_upload, upload_url, as_json)
    statuses = res.statuses
    if as_json:
        out = {"bundle": str(res.bundle), "sha256": res.sha256, "size": res.size, "incident": incident,
               "host": res.manifest["host"]["hostname"], "profile": req.profile,
               "duration_s": res.manifest["clocks"]["duration_s"], "collectors": statuses,
               "manifest": str(_sidecar(res.bundle))}
        if upload_info is not None:
            out["upload"] = upload_info
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


def _maybe_upload(app: App, res: Any, do_upload: bool | None, url: str | None, as_json: bool) -> dict | None:
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
        return {"status": "pending", "error": str(exc), "exit_code": exc.exit_code}


# -- verify / show / collectors ----------------------------------------------

@main.command(context_settings=CONTEXT, epilog="""\b
Examples:
  goldenhour verify /var/lib/goldenhour/incidents/INC-123/INC-123_web-1_20261123T101500Z_ab12cd34.tar.zst
  goldenhour verify --json BUNDLE

Exit 0 when intact, 1 on any mismatch (each difference is named), 4 if not found.""")
@click.argument("bundles", nargs=-1, required=True, metavar="BUNDLE...")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
@pass_app
def verify(app: App, bundles: tuple[str, ...], as_json: bool) -> None:
    """Check bundles: every file against manifest.json and SHA256SUMS, the archive against its .sha256.

    BUNDLE is a path, a bundle name from the local store, or (with upload
    support) an s3:// URL.
    """
    from agent.bundle import verify_file
    reports = []
    for b in bundles:
        if b.startswith("s3://"):
            from agent import retrieve
            rep = retrieve.verify_remote(app.cfg, b)
        else:
            path = _resolve_bundle(app, b)
            rep = verify_file(path)
        reports.append(rep)
        if not as_json:
            if rep.ok:
                click.echo(f"OK        {rep.bundle} ({rep.files_checked} files, sha256 {rep.sha256})")
            else:
                click.echo(f"MISMATCH  {rep.bundle}")
                for p in rep.problems:
                    click.echo(f"  - {p}")
    if as_json:
        emit_json(reports[0].to_json() if len(reports) == 1 else [r.to_json() for r in reports])
    if not all(r.ok for r in reports):
        sys.exit(EXIT_MISMATCH)


def _resolve_bundle(app: App, name: str) -> Path:
    from agent.store import Store
    p = Path(name)
    if p.exists():
        return p
    found = Store(app.cfg.store_path).find(name)
    if found is None:
        raise NotFoundError(f"no bundle {name!r} (neither a file nor a bundle in {app.cfg.store_path})")
    return found


@main.command(context_settings=CONTEXT)
@click.argument("bundle", metavar="BUNDLE")
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON.")
@pass_app
def show(app: App, bundle: str, as_json: bool) -> None:
    """Summarise a bundle's manifest: incident, host, times, each collector's status, sizes."""
    from agent.bundle import BundleError, read_manifest
    path = _resolve_bundle(app, bundle)
    try:
        m = read_manifest(path)
    except (BundleError, OSError, ValueError) as exc:
        raise GoldenhourError(f"cannot read the manifest of {path}: {exc}", 1) from None
    if as_json:
        emit_json(m)
        return
    inc, host, clocks = m["incident"], m["host"], m["clocks"]
    click.echo(f"bundle     {m['bundle']}  ({human_size(path.stat().st_size)} on disk)")
    click.echo(f"incident   {inc['id']}" + (f"  {inc['title']}" if inc.get("title") else "")
               + f"  [source {inc.get('source', '')}]")
    click.echo(f"trigger    {m['trigger']['kind']}" + (f" ({m['trigger']['reason']})" if m['trigger'].get('reason') else "")
               + f" by {m['trigger'].get('by', '')}")
    click.echo(f"host       {host['hostname']}  kernel {host['kernel']}  {host.get('os', '')}")
    click.echo(f"time       {clocks['start_utc']} -> {clocks['end_utc']}  ({clocks['duration_s']} s), "
               f"profile {m.get('profile')}")
    click.echo(f"evidence   {m['summary']['files']} files, {human_size(m['summary']['bytes'])} uncompressed")
    if m.get("targets"):
        click.echo("targets    " + ", ".join(f"{t['pid']} {t['comm']} ({t['runtime']})" for t in m["targets"]))
    click.echo("collectors")
    for c in m["collectors"]:
        size = sum(f["bytes"] for f in c.get("files", []))
        reason = f"  {c['reason']}" if c.get("reason") else ""
        click.echo(f"  {c['status']:<13} {c['key']:<28} {c.get('duration_s', 0):7.3f} s "
                   f"{human_size(size):>10}{reason}")
    if m.get("left_out"):
        click.echo(f"left out   {len(m['left_out'])} files (caps): " + ", ".join(x['path'] for x in m['left_out'][:5]))


@main.command("collectors", context_settings=CONTEXT, epilog="""\b
Status: 'ready' will run when selected; 'unavailable' says what is missing here
(install it, or run as root); 'broken' means the module itself failed to load.""")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.option("--profile", type=click.Choice(["quick", "standard", "full"]), help="Mark which run in this profile.")
@pass_app
def collectors_cmd(app: App, as_json: bool, profile: str | None) -> None:
    """Every collector: what it captures, its profiles, and whether it can run on this host."""
    from agent import registry
    found, broken = registry.discover()
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
                     "in_profile": (profile in c.profiles) if profile else None})
    for b in broken:
        rows.append({"name": b.name, "summary": "", "status": "broken", "reason": b.error})
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        if r["status"] == "broken":
            click.echo(f"{r['name']:<14} BROKEN       {r['reason']}")
            continue
        mark = "ready" if r["status"] == "ready" else "unavailable"
        prof = ",".join(r["profiles"])
        extra = " [pauses target]" if r["pauses_target"] else ""
        click.echo(f"{r['name']:<14} {mark:<12} {prof:<20} {r['summary']}{extra}")
        if r["reason"]:
            click.echo(f"{'':<14} {'':<12} {'':<20} ↳ {r['reason']}")


def run() -> None:  # pragma: no cover
    main(prog_name="goldenhour")


# Commands of other areas register themselves here (each module adds to ``main``).
from agent import cli_extra  # noqa: E402,F401
