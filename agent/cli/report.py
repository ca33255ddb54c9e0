"""``goldenhour report``: findings, plots and a timeline from the bundles of an incident.

Registered on ``main`` by ``agent/cli/__init__.py``. The work is in
``agent/report/``; this module parses options, finds the bundles (paths, folders,
store names, or every bundle of ``--incident`` in the local store, plus with ``--fetch``
those only in S3, downloaded and verified by ``agent.retrieve`` into a temporary folder
removed afterwards) and writes the result.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import click

from agent.cli.app import CONTEXT, App, pass_app
from agent.errors import EXIT_MISMATCH, EXIT_NOT_FOUND, GoldenhourError, NotFoundError, UsageError


@click.command("report", context_settings=CONTEXT, epilog="""\b
Examples:
  goldenhour report --incident INC-123                  every host's bundle of INC-123 -> HTML
  goldenhour report BUNDLE.tar.zst --out /tmp/r.html
  goldenhour report ./INC-123_web-1_20261123T101500Z_ab12cd34/   an extracted bundle
  goldenhour report --incident INC-123 --format md > report.md
  goldenhour report --incident INC-123 --timeline-md    rows for the postmortem's Timeline table
  goldenhour report --incident INC-123 --format json | jq '.findings[].title'
  goldenhour report --incident INC-123 --fetch --url s3://evidence/prod   also the bundles only in S3

Writes one self-contained HTML file (no network, opens from disk) unless
--format md/json. Exit 0 when written; 1 when written but a bundle does not match
its hashes; 2 on bad input; 4 when no bundle is found.""")
@click.argument("sources", nargs=-1, metavar="[BUNDLE_OR_DIR]...")
@click.option("--incident", "-i", metavar="ID", help="Every bundle of this incident in the local store (all hosts).")
@click.option("--out", "-o", metavar="FILE",
              help="Where to write ('-' for stdout). Default: HTML to ./goldenhour-report-<incident>.html, "
                   "md/json to stdout.")
@click.option("--format", "fmt", type=click.Choice(["html", "md", "json"]), default="html", show_default=True,
              help="HTML (self-contained), Markdown (postmortem-ready) or JSON.")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("--timeline-md", is_flag=True,
              help="Print only the Markdown \"Timeline (UTC)\" table (header and rows) for the postmortem template.")
@click.option("--window", "window_min", type=click.FloatRange(1, 7 * 24 * 60), default=60.0, show_default=True,
              metavar="MINUTES", help="How far before the trigger the incident reaches: log and kernel lines in the "
              "timeline, and findings older than that count one level less severe.")
@click.option("--store", metavar="DIR", envvar="GOLDENHOUR_STORE", help="Local store (default: store.path).")
@click.option("--fetch", is_flag=True, help="With --incident: also the incident's bundles that are only in S3 "
                                            "(upload.url), downloaded and verified into a temporary folder.")
@click.option("--url", metavar="s3://BUCKET/PREFIX", help="With --fetch: fetch from there instead of upload.url.")
@pass_app
def report_cmd(app: App, sources: tuple[str, ...], incident: str | None, out: str | None, fmt: str,
               as_json: bool, timeline_md: bool, window_min: float, store: str | None, fetch: bool,
               url: str | None) -> None:
    """Turn bundles into an RCA report: findings with evidence, plots, a timeline, thread dumps.

    Reads bundle archives (.tar.zst/.tar.gz, streamed, never extracted to disk),
    extracted bundle folders, bundle names from the local store, or with
    --incident every bundle of that incident (one per host and capture). Needs
    only Python and goldenhour: none of the tools that captured the evidence.
    """
    from agent import report as report_mod
    from agent.incident import IncidentIdError, check_id

    if as_json:
        fmt = "json"
    if not sources and not incident:
        raise UsageError("name bundles (paths, folders or store names) or --incident ID")
    if sources and incident:
        raise UsageError("use either BUNDLE... or --incident, not both")
    if fetch and not incident:
        raise UsageError("--fetch goes with --incident ID")
    if url and not fetch:
        raise UsageError("--url goes with --fetch (it names where the incident's bundles are fetched from)")
    app.store_override(store)
    if url:
        from agent.upload import parse_url
        parse_url(url)
        app.cfg.set("upload.url", url)
    store_root = Path(app.cfg.store_path)
    srcs = list(sources)
    fetched_dir: Path | None = None
    if incident:
        try:
            check_id(incident)
        except IncidentIdError as exc:
            raise UsageError(str(exc)) from None
        from agent.store import Store
        found = Store(store_root).bundles(incident)
        if fetch:
            fetched_dir, fetched = _fetch(app, incident)
            found += fetched
        if not found:
            raise NotFoundError(f"no bundle of incident {incident} in {store_root}"
                                + (" nor only in S3" if fetch else " (add --fetch for those in S3)"))
        srcs = [str(p) for p in found]
    try:
        rep = report_mod.build(srcs, store_root=store_root, window_s=window_min * 60)
    finally:
        if fetched_dir is not None:
            _done(app, fetched_dir)
    if timeline_md:
        from agent.report.timeline import markdown_table
        text = markdown_table(rep.events)
        fmt_out = out or "-"
    else:
        text = report_mod.render(rep, fmt)
        fmt_out = out or ("-" if fmt != "html" else f"goldenhour-report-{_slug(rep)}.html")
    if fmt_out == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        _write(Path(fmt_out), text)
        c = rep.counts()
        click.echo(f"report  {fmt_out}  ({len(rep.bundles)} bundle(s), {c['critical']} critical, "
                   f"{c['warning']} warning, {c['info']} info findings)", err=fmt_out == "-")
    bad = [b for b in rep.bundles if not b.integrity.ok]
    if bad:
        click.echo(f"goldenhour: error: the report was written, but {len(bad)} bundle(s) do not match their hashes: "
                   + "; ".join(f"{b.name}: {b.integrity.problems[0]}" for b in bad), err=True)
        sys.exit(EXIT_MISMATCH)


def _slug(rep) -> str:
    incs = rep.incidents
    return incs[0] if len(incs) == 1 else (rep.bundles[0].name if rep.bundles else "report")


def _write(path: Path, text: str) -> None:
    """Write atomically (a reader never sees half a report); a bad path is one line, exit 2."""
    try:
        if path.parent and not path.parent.exists():
            raise UsageError(f"cannot write {path}: folder {path.parent} does not exist")
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None


def _fetch(app: App, incident: str) -> tuple[Path, list[Path]]:
    """Download (and verify) the incident's bundles that are only in S3, into a temporary folder."""
    try:
        from agent import retrieve
    except ImportError:
        raise UsageError("--fetch needs upload support (agent.retrieve), which is not installed") from None
    from agent import scratch
    from agent.store import Store
    dest = Path(tempfile.gettempdir()) / f"goldenhour-report-{incident}-{os.urandom(6).hex()}"
    scratch.record(Store(app.cfg.store_path).scratch, dest, "bundles fetched for a report")  # released by _done
    dest.mkdir(mode=0o700)
    try:
        rows = retrieve.fetch(app.cfg, incident, None, dest, extract=False)
    except GoldenhourError as exc:
        if exc.exit_code != EXIT_NOT_FOUND:
            _done(app, dest)
            raise
        rows = []                           # nothing in S3 that is not already here
    return dest, [Path(r["path"]) for r in rows]


def _done(app: App, fetched_dir: Path) -> None:
    """Remove the report's download folder and its scratch ledger entry."""
    from agent import scratch
    from agent.store import Store
    shutil.rmtree(fetched_dir, ignore_errors=True)
    scratch.sweep_path(Store(app.cfg.store_path).scratch, fetched_dir)
