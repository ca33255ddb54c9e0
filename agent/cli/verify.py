"""``goldenhour verify`` and ``goldenhour show``: check a bundle's hashes, summarise its manifest.

``verify s3://...`` checks a bundle in object storage through ``agent.retrieve``;
everything else reads a local file, an extracted bundle folder, a folder of bundles
or a bundle name from the store. Whatever is named, the answer is a verdict or one
line: never a traceback (docs/cli.md "Exit codes" lists each command's codes).
"""
from __future__ import annotations

import stat
import sys
from pathlib import Path

import click

from agent.cli.app import CONTEXT, App, emit_json, human_size, pass_app, resolve_bundle
from agent.errors import EXIT_MISMATCH, EXIT_USAGE, GoldenhourError, NotFoundError


@click.command(context_settings=CONTEXT, epilog="""\b
Examples:
  goldenhour verify /var/lib/goldenhour/incidents/INC-123/INC-123_web-1_20261123T101500Z_ab12cd34.tar.zst
  goldenhour verify INC-123_web-1_20261123T101500Z_ab12cd34        a bundle name in the local store
  goldenhour verify ./INC-123/INC-123_web-1_20261123T101500Z_ab12cd34/   an extracted bundle folder
  goldenhour verify ./INC-123/                                   every bundle in a folder (fetch's DEST)
  goldenhour verify --json s3://evidence/prod/incidents/INC-123/web-1/BUNDLE.tar.zst

\b
Exit 0 when every bundle is intact; 1 on any mismatch (each difference is named; a file
that is not a bundle, or a folder holding none, is a mismatch too); 4 if a BUNDLE does
not exist; 10-13 when S3 cannot be read.""")
@click.argument("bundles", nargs=-1, required=True, metavar="BUNDLE...")
@click.option("--store", metavar="DIR", envvar="GOLDENHOUR_STORE", help="Local store for bundle names "
              "(default: store.path).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report (a list when several bundles).")
@pass_app
def verify(app: App, bundles: tuple[str, ...], store: str | None, as_json: bool) -> None:
    """Check bundles: every file against manifest.json and SHA256SUMS, the archive against its .sha256,
    its framing to its end, and its manifest sidecar against the manifest inside.

    BUNDLE is a bundle archive, an extracted bundle folder (its files are checked against
    its manifest.json and SHA256SUMS), a folder of bundles, a bundle name from the local
    store, or (with upload support) an s3:// URL.
    """
    app.store_override(store)
    named = [(b, None if b.startswith("s3://") else _local(app, b)) for b in bundles]    # all found, or exit 4
    reports = []
    for b, paths in named:
        if paths is None:
            from agent import retrieve
            found = [retrieve.verify_remote(app.cfg, b)]
        else:
            found = [_verify_local(p) for p in paths]
        reports += found
        if not as_json:
            for rep in found:
                if rep.ok:
                    what = f"sha256 {rep.sha256}" if rep.sha256 else "extracted folder"
                    click.echo(f"OK        {rep.bundle} ({rep.files_checked} files, {what})")
                else:
                    click.echo(f"MISMATCH  {rep.bundle}")
                    for p in rep.problems:
                        click.echo(f"  - {p}")
    if as_json:
        emit_json(reports[0].to_json() if len(reports) == 1 else [r.to_json() for r in reports])
    if not all(r.ok for r in reports):
        sys.exit(EXIT_MISMATCH)


def _local(app: App, name: str) -> list[Path]:
    """What one BUNDLE names: itself (an archive, any other file, a bundle folder), or the bundles
    a folder holds (archives and extracted folders, as ``report`` reads them)."""
    path = resolve_bundle(app, name)
    if not path.is_dir() or _is_bundle_folder(path):
        return [path]
    from agent.bundle import EXTENSIONS
    try:
        entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    except OSError:
        return [path]                   # unreadable: _verify_local says so
    inside = [p for p in entries if (p.is_dir() and _is_bundle_folder(p))
              or (p.is_file() and any(p.name.endswith(ext) for ext in EXTENSIONS.values()))]
    return inside or [path]


def _is_bundle_folder(path: Path) -> bool:
    from agent.bundle import is_bundle_folder
    return is_bundle_folder(path)


def _verify_local(path: Path):
    """The one integrity check of a local archive or extracted folder; anything else is a mismatch
    that says what it is, never an exception."""
    from agent.bundle import verify_file, verify_folder
    from agent.manifest import FORMAT, UNREADABLE, Integrity
    rep = Integrity(bundle=str(path))
    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            if _is_bundle_folder(path):
                return verify_folder(path)
            rep.add(path.name, "not a goldenhour bundle: a folder with no manifest.json or SHA256SUMS, "
                               "and no bundles in it", FORMAT)
        elif stat.S_ISREG(mode):
            return verify_file(path)
        else:
            rep.add(path.name, "not a goldenhour bundle: not a regular file or folder", FORMAT)
    except OSError as exc:
        rep.add(path.name, f"unreadable ({exc.strerror or exc})", UNREADABLE)
    return rep


@click.command(context_settings=CONTEXT, epilog="""\b
Examples:
  goldenhour show INC-123_web-1_20261123T101500Z_ab12cd34              a bundle name in the local store
  goldenhour show /var/lib/goldenhour/incidents/INC-123/INC-123_web-1_20261123T101500Z_ab12cd34.tar.zst
  goldenhour show ./INC-123/INC-123_web-1_20261123T101500Z_ab12cd34/    an extracted bundle folder
  goldenhour show --json BUNDLE | jq '.collectors[] | select(.status != "ok")'

\b
Exit 0; 1 when the manifest sidecar beside the archive (<bundle>.manifest.json) is not the
archive's own manifest (the difference is named); 2 when BUNDLE is not a goldenhour bundle
(not a zstd/gzip archive, no readable schema-1 manifest.json), as for `report`; 4 if it does
not exist. `show` reads the manifest only: `verify` checks the hashes.""")
@click.argument("bundle", metavar="BUNDLE")
@click.option("--store", metavar="DIR", envvar="GOLDENHOUR_STORE", help="Local store for bundle names "
              "(default: store.path).")
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON.")
@pass_app
def show(app: App, bundle: str, store: str | None, as_json: bool) -> None:
    """Summarise a bundle's manifest: incident, host, times, each collector's status, sizes.

    BUNDLE is a bundle archive, an extracted bundle folder or a bundle name from the local store.
    """
    app.store_override(store)
    path = resolve_bundle(app, bundle)
    m = _manifest(path)
    if as_json:
        emit_json(m)
        return
    inc, host, clocks = m["incident"], m["host"], m.get("clocks") or {}
    trig = m.get("trigger") or {}
    where = "extracted folder" if path.is_dir() else f"{human_size(path.stat().st_size)} on disk"
    click.echo(f"bundle     {m['bundle']}  ({where})")
    click.echo(f"incident   {inc['id']}" + (f"  {inc['title']}" if inc.get("title") else "")
               + f"  [source {inc.get('source', '')}]")
    click.echo(f"trigger    {trig.get('kind', '?')}" + (f" ({trig['reason']})" if trig.get('reason') else "")
               + f" by {trig.get('by', '')}")
    click.echo(f"host       {host['hostname']}  kernel {host.get('kernel', '?')}  {host.get('os', '')}")
    click.echo(f"time       {clocks.get('start_utc', '?')} -> {clocks.get('end_utc', '?')}  "
               f"({clocks.get('duration_s', '?')} s), profile {m.get('profile')}")
    summary = m.get("summary") or {}
    if summary:
        click.echo(f"evidence   {summary.get('files', 0)} files, {human_size(summary.get('bytes', 0))} uncompressed")
    if m.get("targets"):
        click.echo("targets    " + ", ".join(f"{t.get('pid')} {t.get('comm', '?')} ({t.get('runtime', '?')})"
                                           for t in m["targets"]))
    click.echo("collectors")
    for c in m["collectors"]:
        size = sum(f["bytes"] for f in c.get("files", []))
        reason = f"  {c['reason']}" if c.get("reason") else ""
        click.echo(f"  {c['status']:<13} {c['key']:<28} {c.get('duration_s', 0):7.3f} s "
                   f"{human_size(size):>10}{reason}")
    if m.get("left_out"):
        click.echo(f"left out   {len(m['left_out'])} files (caps): "
                   + ", ".join(str(x.get("path", "?")) for x in m["left_out"][:5]))


def _manifest(path: Path) -> dict:
    """The manifest of an archive (its sidecar when bound to it, else inside) or an extracted folder, through
    the one reader. A sidecar that is not the archive's own: exit 1, the difference named; not a bundle at all:
    exit 2, as ``report`` says of the same input; unreadable: exit 4."""
    from agent import manifest
    from agent.bundle import BundleError, NotABundle, SidecarMismatch, load_manifest
    try:
        if path.is_dir():
            if not (path / manifest.MANIFEST).is_file():
                raise GoldenhourError(f"{path} is not a goldenhour bundle: a folder with no manifest.json",
                                      EXIT_USAGE)
            return manifest.read(path / manifest.MANIFEST).raw
        return load_manifest(path).raw
    except (manifest.ManifestError, NotABundle) as exc:
        why = exc.why if isinstance(exc, NotABundle) else str(exc)
        raise GoldenhourError(f"{path} is not a goldenhour bundle: {why}", EXIT_USAGE) from None
    except SidecarMismatch as exc:         # the sidecar is not the bundle's own manifest: never shown as its
        raise GoldenhourError(f"{path}: {exc}", EXIT_MISMATCH) from None
    except BundleError as exc:
        raise GoldenhourError(f"{exc}: not a goldenhour bundle", EXIT_USAGE) from None
    except OSError as exc:
        raise NotFoundError(f"cannot read {path}: {exc.strerror or exc}") from None
