"""Commands for object storage: ``upload``, ``bundles list``, ``fetch`` (agent/upload.py, agent/retrieve.py).

``verify s3://...`` lives in agent/cli/verify.py and calls ``retrieve.verify_remote``.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, TextIO

import click

from agent.cli.app import CONTEXT, App, emit_json, human_size, pass_app, resolve_bundle
from agent.errors import EXIT_MISMATCH, EXIT_PENDING, GoldenhourError, NotFoundError, UsageError


class Bar:
    """A one-line progress bar on a terminal (stderr) for transfers of ``min_bytes`` or more."""

    def __init__(self, stream: TextIO = sys.stderr, enabled: bool = True, min_bytes: int = 8 * 2**20):
        self.stream = stream
        self.on = enabled and stream.isatty()
        self.min_bytes = min_bytes
        self.t0: dict[str, float] = {}
        self.last = 0.0

    def __call__(self, name: str, done: int, total: int) -> None:
        if not self.on or total < self.min_bytes:
            return
        now = time.monotonic()
        t0 = self.t0.setdefault(name, now)
        if done < total and now - self.last < 0.1:
            return
        self.last = now
        frac = min(1.0, done / total) if total else 1.0
        width = 28
        fill = int(frac * width)
        rate = done / (now - t0) if now > t0 else 0.0
        short = name if len(name) <= 44 else name[:20] + "…" + name[-23:]
        self.stream.write(f"\r  {short:<44} [{'#' * fill}{'.' * (width - fill)}] {frac * 100:5.1f}% "
                          f"{human_size(done)}/{human_size(total)} {human_size(rate)}/s\x1b[K")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def _set_url(app: App, url: str | None) -> None:
    if url:
        from agent.upload import parse_url
        parse_url(url)
        app.cfg.set("upload.url", url)


# -- upload ------------------------------------------------------------------------

@click.command(context_settings=CONTEXT, epilog="""\b
Examples:
  goldenhour upload --pending                       retry every pending bundle, oldest first
  goldenhour upload --pending --json
  goldenhour upload BUNDLE --url s3://evidence/prod

A bundle is pending until its upload receipt (<bundle>.upload.json) exists. Each goes to
--url, else the URL it was given by `snapshot --upload s3://...` (remembered when that
upload failed), else upload.url. Uploads are idempotent: an interrupted one is retried
under the same key, never duplicated.
Exit 0 when everything asked for is uploaded; with --pending, 16 when some bundles stay
pending (each is named with its reason); for named bundles, the error's own code:
10 credentials, 11 access denied, 12 endpoint unreachable, 13 no such bucket,
14 the bundle or an object in the way does not match, 17 request rejected.""")
@click.argument("bundles", nargs=-1, metavar="[BUNDLE]...")
@click.option("--pending", is_flag=True, help="Upload every bundle of the local store that has no upload receipt.")
@click.option("--url", metavar="s3://BUCKET/PREFIX", help="Upload there instead of upload.url.")
@click.option("--store", metavar="DIR", envvar="GOLDENHOUR_STORE", help="Local store (default: store.path).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list with one result per bundle.")
@pass_app
def upload(app: App, bundles: tuple[str, ...], pending: bool, url: str | None, store: str | None,
           as_json: bool) -> None:
    """Upload bundles from the local store to S3 under their incident (idempotent, verified)."""
    from agent import upload as up
    from agent.store import Store
    app.store_override(store)
    if url:
        up.parse_url(url)
    if not bundles and not pending:
        raise UsageError("name the bundles to upload, or --pending")
    paths = [resolve_bundle(app, b) for b in bundles]
    default = url or app.cfg["upload.url"]
    nowhere = [p for p in paths if not (default or Store.remembered_url(p))]
    if nowhere or (pending and not default and not Store(app.cfg.store_path).pending("")):
        raise UsageError("no upload.url configured; set it in the config or pass --url s3://BUCKET/PREFIX")

    def show(r: dict[str, Any]) -> None:
        if as_json:
            return
        name = Path(r["bundle"]).name
        if r["status"] == "uploaded":
            again = " (already there, verified)" if r.get("reused") else ""
            click.echo(f"uploaded  {name} -> {r['url']}{again}")
        elif r["status"] == "busy":
            click.echo(f"busy      {name}: {r['error']}")
        elif r["status"] == "failed":
            click.echo(f"FAILED    {name}: {r['error']}")
        else:
            click.echo(f"PENDING   {name}: {r.get('error', '')}")

    results: list[dict[str, Any]] = []
    if pending:
        results = up.upload_pending(app.cfg, respect_backoff=False, url=url or "", on_result=show)
    for path in paths:
        target = url or Store.remembered_url(path) or app.cfg["upload.url"]
        receipt = _receipt(path)
        try:
            r = {"bundle": str(path), "status": "uploaded", **up.upload_bundle(app.cfg, path, url=target)}
        except up.Busy as exc:
            r = {"bundle": str(path), "status": "busy", "error": str(exc), "exit_code": exc.exit_code}
        except GoldenhourError as exc:
            if receipt is not None:         # uploaded before: that receipt stands, this attempt failed
                r = {"bundle": str(path), "status": "failed", "error": str(exc), "exit_code": exc.exit_code,
                     "uploaded_before": receipt.get("url")}
            else:
                r = {"bundle": str(path), "status": "pending", "error": str(exc), "exit_code": exc.exit_code}
                if path.exists():
                    up.record_failure(app.cfg, path, exc, url=url or "")
        r["upload_url"] = target
        results.append(r)
        show(r)
    if as_json:
        emit_json(results)
    elif not results:
        click.echo("nothing pending")
    failed = [r for r in results if r["status"] != "uploaded"]
    if not failed:
        return
    codes = {r.get("exit_code") for r in failed}
    code = codes.pop() if (not pending and len(codes) == 1 and None not in codes) else EXIT_PENDING
    stuck = [r for r in failed if r["status"] != "failed"]
    if stuck:
        click.echo(f"goldenhour: error: {len(stuck)} of {len(results)} bundle(s) not uploaded, still pending "
                   "in the local store (nothing is dropped; `goldenhour upload --pending` retries)", err=True)
    for r in failed:
        if r["status"] == "failed":
            click.echo(f"goldenhour: error: {Path(r['bundle']).name} was not uploaded to {r['upload_url']}; it "
                       f"stays uploaded as its receipt records ({r['uploaded_before']})", err=True)
    sys.exit(code)


def _receipt(path: Path) -> dict[str, Any] | None:
    """The bundle's upload receipt, or None when it has none (it is pending or local-only)."""
    import json
    from agent.store import Store
    try:
        return json.loads(Store.receipt(path).read_text())
    except (OSError, ValueError):
        return None


# -- bundles list ---------------------------------------------------------------------

@click.group(context_settings=CONTEXT, epilog="""\b
Examples:
  goldenhour bundles list                                  every bundle, local and (with upload.url) in S3
  goldenhour bundles list --incident INC-123               one incident's bundles, all hosts
  goldenhour bundles list --incident INC-123 --host web-3 --json | jq -r '.[].path'

See `goldenhour bundles list --help` for the columns and exit codes.""")
def bundles() -> None:
    """Find bundles: in the local store and in S3 (from manifest sidecars, no download)."""


@bundles.command("list", context_settings=CONTEXT, epilog="""\b
Examples:
  goldenhour bundles list --incident INC-123
  goldenhour bundles list --incident INC-123 --host web-3 --json

SOURCE is local, s3 or local+s3; STATE is uploaded, pending (no receipt yet) or local
(local-only: no upload.url, so kept here and not pending; `goldenhour prune` removes old ones).
With upload.url configured S3 is listed too; if S3 cannot be listed, the local rows are
still printed and the exit code says why (10-13). Exit 4 when --incident/--host match no
bundle (as report and fetch; with --json, [] is printed); 0 for an empty store. A manifest
sidecar that is not its bundle's own manifest (checked against the index at the archive's
end), or a bundle filed under another incident or host than its manifest names, is not
trusted: its row shows '?' and the difference is printed on stderr (exit 1).""")
@click.option("--incident", "-i", metavar="ID", help="Only this incident.")
@click.option("--host", metavar="HOST", help="Only this host.")
@click.option("--url", metavar="s3://BUCKET/PREFIX", help="List there instead of upload.url.")
@click.option("--store", metavar="DIR", envvar="GOLDENHOUR_STORE", help="Local store (default: store.path).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@pass_app
def bundles_list(app: App, incident: str | None, host: str | None, url: str | None, store: str | None,
                 as_json: bool) -> None:
    """List bundles with source, host, time, size, state and collectors' statuses."""
    from agent.incident import IncidentIdError, check_id
    from agent.retrieve import list_bundles
    from agent.upload import StorageError
    if incident:
        try:
            check_id(incident)
        except IncidentIdError as exc:
            raise UsageError(str(exc)) from None
    app.store_override(store)
    _set_url(app, url)
    errors: list[str] = []
    code = 0
    try:
        rows = list_bundles(app.cfg, incident, host)
    except StorageError as exc:
        from agent.retrieve import list_local
        rows, errors, code = list_local(app.cfg, incident, host), [str(exc)], exc.exit_code
    if as_json:
        emit_json(rows)
    elif rows:
        click.echo(f"{'SOURCE':<9} {'TIME (UTC)':<20} {'HOST':<16} {'SIZE':>10}  {'STATE':<8}  "
                   f"{'COLLECTORS':<26} BUNDLE")
        for r in rows:
            counts = r.get("collector_counts") or {}
            cols = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda x: (x[0] != "ok", x[0])))
            t = (r.get("time") or "?")[:19].replace("T", " ")
            click.echo(f"{r['source']:<9} {t:<20} {r['host']:<16} {human_size(r.get('size') or 0):>10}  "
                       f"{r['state']:<8}  {cols or '?':<26} {r.get('url') or r.get('path')}")
    refused = [r for r in rows if r.get("problem")]
    for r in refused:
        click.echo(f"goldenhour: error: {r.get('path') or r.get('url')}: {r['problem']}", err=True)
    if errors:
        click.echo(f"goldenhour: error: {errors[0]} (only the local store was listed)", err=True)
        sys.exit(code)
    if refused:
        sys.exit(EXIT_MISMATCH)
    if not rows:
        what = "no bundles" + (f" of incident {incident}" if incident else "") + (f" from host {host}" if host else "")
        if not (incident or host):
            if not as_json:
                click.echo(what)
            return                              # an empty store is not an error; a filter matching nothing is
        where = f"{app.cfg.store_path}" + (f" nor in {app.cfg['upload.url']}" if app.cfg["upload.url"] else "")
        raise NotFoundError(f"{what} in {where}")


# -- fetch ------------------------------------------------------------------------------

@click.command(context_settings=CONTEXT, epilog="""\b
Examples:
  goldenhour fetch --incident INC-123                       into ./INC-123
  goldenhour fetch --incident INC-123 --host web-3 --dest /srv/rca/INC-123
  goldenhour fetch --incident INC-123 --no-extract --json

Each bundle is streamed once: to disk and through every check (the object's sha256
metadata, its .sha256 object, the custody record of its upload, S3's SHA-256 checksum,
every file against SHA256SUMS and manifest.json). Extraction writes only regular files
and folders inside DEST; absolute paths, '..', links, devices and fifos are refused.
Exit 0 when all verified, 4 none found, 14 some bundle refused (the others are kept),
15 disk full (checked before downloading; partial files removed), 10-13 storage errors.""")
@click.option("--incident", "-i", required=True, metavar="ID", help="The incident whose bundles to fetch.")
@click.option("--host", metavar="HOST", help="Only this host's bundles.")
@click.option("--dest", type=click.Path(file_okay=False), metavar="DIR",
              help="Destination folder (default: ./<incident>).")
@click.option("--url", metavar="s3://BUCKET/PREFIX", help="Fetch from there instead of upload.url.")
@click.option("--extract/--no-extract", default=True, help="Extract the verified bundles (safely). Default: yes.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one row per bundle.")
@pass_app
def fetch(app: App, incident: str, host: str | None, dest: str | None, url: str | None, extract: bool,
          as_json: bool) -> None:
    """Download, verify and safely extract every bundle of an incident from S3."""
    from agent.incident import IncidentIdError, check_id
    from agent.retrieve import FetchRefused
    from agent.retrieve import fetch as do_fetch
    try:
        check_id(incident)
    except IncidentIdError as exc:
        raise UsageError(str(exc)) from None
    _set_url(app, url)
    target = Path(dest) if dest else Path(incident)
    bar = Bar(enabled=not as_json)
    refused: FetchRefused | None = None
    try:
        rows = do_fetch(app.cfg, incident, host, target, extract=extract, progress=bar)
    except FetchRefused as exc:
        rows, refused = exc.rows, exc
    if as_json:
        emit_json(rows)
    else:
        for r in rows:
            if r["status"] == "verified":
                click.echo(f"verified  {r['host']:<16} {r['path']}  ({r['files_checked']} files; "
                           f"{', '.join(r['checks'])})")
                if r.get("extracted"):
                    click.echo(f"          extracted to {r['extracted']}"
                               + ("" if r.get("freshly_extracted", True) else " (already there, left as is)"))
            else:
                click.echo(f"REFUSED   {r['host']:<16} {r['url']}")
                for p in r["problems"][:5]:
                    click.echo(f"  - {p}")
    for r in rows:
        if r.get("custody_error"):
            click.echo(f"goldenhour: warning: no custody record for {r['bundle']}: {r['custody_error']}", err=True)
    if refused is not None:
        raise refused
