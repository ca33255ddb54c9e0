"""The local store: where every capture lands first, and the upload spool.

Where it sits: ``capture`` stages and publishes bundles here; ``upload`` sends
pending ones; ``bundles list`` and ``report`` read them. Layout::

    <store>/incidents/<incident>/<bundle>.tar.zst        the bundle
    <store>/incidents/<incident>/<bundle>.tar.zst.sha256 its SHA-256 (sha256sum -c format)
    <store>/incidents/<incident>/<bundle>.manifest.json  its manifest, readable without unpacking
    <store>/incidents/<incident>/<bundle>.upload.json    upload receipt; absent = pending (or local-only)
    <store>/incidents/<incident>/<bundle>.pending.json   failed upload attempts, and the URL asked for
    <store>/.staging/<bundle>/                           a capture in progress
    <store>/state/pauses/                                the pause ledger (agent/pauses.py)
    <store>/state/scratch/                               the scratch ledger (agent/scratch.py)
    <store>/state/                                       daemon state (dedupe, open incidents)

A bundle without an upload receipt is *pending* when it has somewhere to go (upload.url, or
the URL given to ``snapshot --upload`` remembered in its pending record): nothing pending is
ever removed. On a local-only host (no upload.url) it is *local*: not counted as pending,
kept until ``goldenhour prune --yes`` removes it.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from agent.bundle import EXTENSIONS, manifest_sidecar
from agent.errors import GoldenhourError
from agent.incident import check_id

UPLOADED, PENDING, LOCAL = "uploaded", "pending", "local"     # a local bundle's upload state


class Store:
    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    # -- layout ------------------------------------------------------------
    @property
    def incidents(self) -> Path:
        return self.root / "incidents"

    @property
    def staging(self) -> Path:
        return self.root / ".staging"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def ledger(self) -> Path:
        return self.state / "pauses"

    @property
    def scratch(self) -> Path:
        """The scratch ledger (agent/scratch.py): files made outside a staging folder, removed if their run died."""
        return self.state / "scratch"

    def incident_dir(self, incident: str) -> Path:
        return self.incidents / check_id(incident)

    def ensure(self) -> "Store":
        try:
            for d in (self.root, self.incidents, self.staging, self.state):
                d.mkdir(parents=True, exist_ok=True, mode=0o750)
            probe = self.staging / f".probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise GoldenhourError(f"store {self.root} is not writable: {exc.strerror or exc}") from None
        return self

    # -- bundles -----------------------------------------------------------
    def bundles(self, incident: str | None = None) -> list[Path]:
        """Published bundles, oldest first."""
        dirs = [self.incident_dir(incident)] if incident else (
            sorted(p for p in self.incidents.iterdir() if p.is_dir()) if self.incidents.is_dir() else [])
        found = []
        for d in dirs:
            if not d.is_dir():
                continue
            for p in d.iterdir():
                if p.name.startswith("."):
                    continue
                if any(p.name.endswith(ext) for ext in EXTENSIONS.values()):
                    found.append(p)
        return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))

    @staticmethod
    def receipt(bundle: Path) -> Path:
        return manifest_sidecar(bundle).with_name(
            manifest_sidecar(bundle).name.replace(".manifest.json", ".upload.json"))

    @staticmethod
    def pending_record(bundle: Path) -> Path:
        """``<bundle>.pending.json``: the failed upload attempts (agent/upload.py) and the URL asked for."""
        r = Store.receipt(bundle)
        return r.with_name(r.name.replace(".upload.json", ".pending.json"))

    @staticmethod
    def remembered_url(bundle: Path) -> str:
        """The upload URL given on the command line for this bundle (``snapshot --upload s3://...``) whose
        upload failed, kept in its pending record so a retry goes there; "" when none."""
        try:
            url = json.loads(Store.pending_record(bundle).read_text()).get("url")
        except (OSError, ValueError, AttributeError):
            return ""
        return url if isinstance(url, str) else ""

    @staticmethod
    def upload_state(bundle: Path, upload_url: str) -> str:
        """``uploaded`` (its receipt exists), ``pending`` (no receipt and somewhere to go: ``upload_url``,
        the configured upload.url, or a remembered URL) or ``local`` (local-only: nowhere to upload)."""
        if Store.receipt(bundle).exists():
            return UPLOADED
        return PENDING if upload_url or Store.remembered_url(bundle) else LOCAL

    def pending(self, upload_url: str) -> list[Path]:
        """Bundles waiting for upload, oldest first (``upload_state`` is pending): with no upload.url
        (``upload_url`` ""), only those with a remembered URL. Local-only bundles are not pending."""
        return [b for b in self.bundles() if self.upload_state(b, upload_url) == PENDING]

    def prunable(self, older_than_s: float, upload_url: str, *, local: bool = True,
                 incident: str | None = None) -> list[tuple[Path, str]]:
        """(bundle, state) of the bundles ``prune`` may remove, oldest first: uploaded ones whose bundle and
        receipt are older than ``older_than_s``, and (with ``local``) local-only ones that old. A pending
        bundle is never among them."""
        cutoff = time.time() - older_than_s
        out = []
        for b in self.bundles(incident):
            try:
                st = self.upload_state(b, upload_url)
                old = b.stat().st_mtime < cutoff and (st != UPLOADED or self.receipt(b).stat().st_mtime < cutoff)
            except FileNotFoundError:
                continue                    # removed meanwhile
            if old and (st == UPLOADED or (local and st == LOCAL)):
                out.append((b, st))
        return out

    @staticmethod
    def remove(bundle: Path) -> bool:
        """Remove a bundle and every file beside it (.sha256, manifest, receipt, pending record); False, and
        nothing removed, when another goldenhour process holds its upload lock."""
        try:
            fd = os.open(bundle, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            for p in (bundle.with_name(bundle.name + ".sha256"), manifest_sidecar(bundle), Store.receipt(bundle),
                      Store.pending_record(bundle), bundle):
                p.unlink(missing_ok=True)
        finally:
            os.close(fd)
        return True

    def prune(self, keep_days: int) -> list[Path]:
        """Remove *uploaded* bundles older than ``keep_days`` (0 = never), as every capture does. Pending
        and local-only bundles stay: the only copy is removed only by ``goldenhour prune --yes``."""
        if keep_days <= 0:
            return []
        return [b for b, _ in self.prunable(keep_days * 86400, "", local=False) if self.remove(b)]

    def find(self, name_or_path: str) -> Path | None:
        """A bundle by path, file name or bundle name (without extension)."""
        p = Path(name_or_path)
        if p.exists():
            return p
        for b in self.bundles():
            if b.name == name_or_path or b.name.split(".tar.")[0] == name_or_path:
                return b
        return None
