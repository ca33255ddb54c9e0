"""``goldenhour prune``: free the local store of old bundles, a dry run unless ``--yes``.

Every capture already removes *uploaded* bundles older than ``store.keep_days``. A
local-only host (no upload.url) keeps every bundle, since each is the only copy: this
command is how an SRE (or a cron job) removes old ones on purpose. Pending bundles (no
receipt, somewhere to go) are never removed. ``agent.store`` decides (``prunable``,
``remove``, which skips a bundle another goldenhour process is uploading).
"""
from __future__ import annotations

import time
from typing import Any

import click

from agent.cli.app import CONTEXT, App, emit_json, human_size, pass_app
from agent.errors import NotFoundError, UsageError


@click.command(context_settings=CONTEXT, epilog="""\b
Examples:
  goldenhour prune                            what would go: bundles older than store.keep_days
  goldenhour prune --older-than 7 --yes       remove uploaded and local-only bundles over a week old
  goldenhour prune --incident INC-123 --older-than 0 --yes   all of one incident, except pending ones
  goldenhour prune --json

\b
Removed: uploaded bundles (their receipt exists) and local-only bundles (no upload.url,
no URL remembered for them) older than the age, with the files beside them. Never:
a pending bundle (one that still has an upload to make), nor one being uploaded now.
Exit 0 (also when nothing is old enough); 2 on bad input; 4 when --incident has no bundles.""")
@click.option("--older-than", "days", type=click.FloatRange(min=0), metavar="DAYS",
              help="Age in days (default: store.keep_days).")
@click.option("--incident", "-i", metavar="ID", help="Only this incident's bundles.")
@click.option("--yes", is_flag=True, help="Remove them (without it, only say what would be removed).")
@click.option("--store", metavar="DIR", envvar="GOLDENHOUR_STORE", help="Local store (default: store.path).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_app
def prune(app: App, days: float | None, incident: str | None, yes: bool, store: str | None, as_json: bool) -> None:
    """Remove old bundles from the local store (a dry run unless --yes); pending ones are never removed."""
    from agent.incident import IncidentIdError, check_id
    from agent.store import PENDING, Store
    if incident:
        try:
            check_id(incident)
        except IncidentIdError as exc:
            raise UsageError(str(exc)) from None
    app.store_override(store)
    cfg = app.cfg
    st = Store(cfg.store_path)
    if incident and not st.bundles(incident):
        raise NotFoundError(f"no bundles of incident {incident} in {cfg.store_path}")
    if days is None:
        days = float(cfg["store.keep_days"])
        if days <= 0:
            msg = "store.keep_days = 0 (keep forever): nothing to prune; pass --older-than DAYS"
            emit_json({"dry_run": not yes, "older_than_days": None, "bundles": [], "bytes": 0, "kept_pending": 0,
                       "reason": msg}) if as_json else click.echo(msg)
            return
    url = cfg["upload.url"]
    now = time.time()
    rows: list[dict[str, Any]] = []
    for b, state in st.prunable(days * 86400, url, incident=incident):
        try:
            size, age = b.stat().st_size, (now - b.stat().st_mtime) / 86400
        except FileNotFoundError:
            continue
        row = {"bundle": str(b), "incident": b.parent.name, "state": state, "size": size, "age_days": round(age, 1)}
        if yes:
            row["removed"] = st.remove(b)
            if not row["removed"]:
                row["reason"] = "being uploaded by another goldenhour process"
        rows.append(row)
    kept = sum(1 for b in st.bundles(incident) if st.upload_state(b, url) == PENDING)
    freed = sum(r["size"] for r in rows if r.get("removed", not yes))
    if as_json:
        emit_json({"dry_run": not yes, "older_than_days": days, "bundles": rows, "bytes": freed, "kept_pending": kept})
        return
    for r in rows:
        mark = ("removed " if r["removed"] else "SKIPPED ") if yes else "would go"
        why = f"  ({r['reason']})" if r.get("reason") else ""
        click.echo(f"{mark}  {r['state']:<8} {r['age_days']:>6.1f} d {human_size(r['size']):>10}  {r['bundle']}{why}")
    n = sum(1 for r in rows if r.get("removed", not yes))
    verb = "removed" if yes else "would remove"
    click.echo(f"{verb} {n} bundle(s), {human_size(freed)}, older than {days:g} day(s)"
               + ("" if yes or not rows else "; pass --yes to remove them")
               + (f"; kept {kept} pending bundle(s) (never removed)" if kept else ""))
