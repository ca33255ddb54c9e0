"""``goldenhour verify`` and ``goldenhour show``: check a bundle's hashes, summarise its manifest.

``verify s3://...`` checks a bundle in object storage through ``agent.retrieve``;
everything else reads a local file or a bundle name from the store.
"""
from __future__ import annotations

import sys

import click

from agent.cli.app import CONTEXT, App, emit_json, human_size, pass_app, resolve_bundle
from agent.errors import EXIT_MISMATCH, GoldenhourError


@click.command(context_settings=CONTEXT, epilog="""\b
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
            path = resolve_bundle(app, b)
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


@click.command(context_settings=CONTEXT)
@click.argument("bundle", metavar="BUNDLE")
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON.")
@pass_app
def show(app: App, bundle: str, as_json: bool) -> None:
    """Summarise a bundle's manifest: incident, host, times, each collector's status, sizes."""
    from agent.bundle import BundleError, read_manifest
    path = resolve_bundle(app, bundle)
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
    click.echo(f"trigger    {m['trigger']['kind']}"
               + (f" ({m['trigger']['reason']})" if m['trigger'].get('reason') else "")
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
