"""Commands for object storage: ``upload``, ``bundles list``, ``fetch`` (see agent/upload.py, retrieve.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from agent.cli import CONTEXT, App, emit_json, human_size, main, pass_app
from agent.errors import GoldenhourError, UsageError


@main.command(context_settings=CONTEXT, epilog="""\b
Examples:
  goldenhour upload --pending                      retry every pending bundle, oldest first
  goldenhour upload BUNDLE --url s3://evidence/prod

Exit 0 when everything asked for is uploaded, 16 when some bundles stay pending
(each with its reason), 10-13 for credentials, access, endpoint and bucket errors.""")
@click.argument("bundles", nargs=-1, metavar="[BUNDLE]...")
@click.option("--pending", is_flag=True, help="Upload every bundle in the store that has no upload receipt.")
@click.option("--url", metavar="s3://BUCKET/PREFIX", help="Override upload.url.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of results.")
@pass_app
def upload(app: App, bundles: tuple[str, ...], pending: bool, url: str | None, as_json: bool) -> None:
    """Upload bundles from the local store to S3 under their incident (idempotent, verified)."""
    from agent import upload as up
    from agent.cli import _resolve_bundle
    if url:
        app.cfg.set("upload.url", url)
    if not app.cfg["upload.url"]:
        raise UsageError("no upload.url configured; pass --url s3://BUCKET/PREFIX")
    if not bundles and not pending:
        raise UsageError("name bundles to upload, or --pending")
    results = []
    if pending:
        results = up.upload_pending(app.cfg, respect_backoff=False)
    for b in bundles:
        path = _resolve_bundle(app, b)
        try:
            results.append({"bundle": str(path), "status": "uploaded", **up.upload_bundle(app.cfg, path)})
        except GoldenhourError as exc:
            results.append({"bundle": str(path), "status": "pending", "error": str(exc), "exit_code": exc.exit_code})
    if as_json:
        emit_json(results)
    else:
        for r in results:
            if r["status"] == "uploaded":
                click.echo(f"uploaded  {Path(r['bundle']).name} -> {r['url']}")
            else:
                click.echo(f"PENDING   {Path(r['bundle']).name}: {r.get('error', '')}")
        if not results:
            click.echo("nothing pending")
    failed = [r for r in results if r["status"] != "uploaded"]
    if failed:
        codes = {r.get("exit_code") for r in failed}
        sys.exit(codes.pop() if len(codes) == 1 and None not in codes and not pending else up.EXIT_PENDING)


@main.group(context_settings=CONTEXT)
def bundles() -> None:
    """Find bundles: in the local store and in S3 (from manifest sidecars, no download)."""


@bundles.command("list", context_settings=CONTEXT)
@click.option("--incident", metavar="ID", help="Only this incident.")
@click.option("--host", metavar="HOST", help="Only this host.")
@click.option("--url", metavar="s3://BUCKET/PREFIX", help="Override upload.url.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@pass_app
def bundles_list(app: App, incident: str | None, host: str | None, url: str | None, as_json: bool) -> None:
    """List bundles with host, time, size, state and collectors' statuses."""
    from agent.incident import IncidentIdError, check_id
    from agent.retrieve import list_bundles
    if incident:
        try:
            check_id(incident)
        except IncidentIdError as exc:
            raise UsageError(str(exc)) from None
    if url:
        app.cfg.set("upload.url", url)
    rows = list_bundles(app.cfg, incident, host)
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        bad = sum(1 for s in r["collectors"].values() if s not in ("ok", "skipped"))
        click.echo(f"{r['source']:<5} {r['incident']:<20} {r['host']:<16} {r['time']}  {human_size(r['size']):>10}"
                   f"  {r['state']:<8} {len(r['collectors'])} collectors ({bad} not ok)  {r['location']}")
    if not rows:
        click.echo("no bundles")


@main.command(context_settings=CONTEXT, epilog="""\b
Examples:
  goldenhour fetch --incident INC-123 --dest ./INC-123
  goldenhour fetch --incident INC-123 --host web-3 --no-extract

Every bundle is checked against its object's SHA-256, its own sha256 and every file's
hash before extraction; a tampered object is refused (exit 14).""")
@click.option("--incident", required=True, metavar="ID", help="The incident whose bundles to fetch.")
@click.option("--host", metavar="HOST", help="Only this host's bundles.")
@click.option("--dest", type=click.Path(file_okay=False), default=".", show_default=True, help="Destination folder.")
@click.option("--url", metavar="s3://BUCKET/PREFIX", help="Override upload.url.")
@click.option("--extract/--no-extract", default=True, help="Extract the verified bundles (safely).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@pass_app
def fetch(app: App, incident: str, host: str | None, dest: str, url: str | None, extract: bool,
          as_json: bool) -> None:
    """Download, verify and safely extract every bundle of an incident from S3."""
    from agent.incident import IncidentIdError
    from agent.retrieve import fetch as do_fetch
    if url:
        app.cfg.set("upload.url", url)
    progress = None
    if not as_json and sys.stderr.isatty():
        done = [0]

        def progress(n: int) -> None:
            done[0] += n
            click.echo(f"\r  {human_size(done[0])} downloaded", nl=False, err=True)
    try:
        rows = do_fetch(app.cfg, incident, host, Path(dest), extract=extract, progress=progress)
    except IncidentIdError as exc:
        raise UsageError(str(exc)) from None
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        click.echo(f"verified  {r['host']:<16} {r['path']}  ({r['files_checked']} files, sha256 {r['sha256']})"
                   + (f"\n          extracted to {r['extracted']}" if r.get("extracted") else ""))
