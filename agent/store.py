"""The local store: where every capture lands first, and the upload spool.

Where it sits: ``capture`` stages and publishes bundles here; ``upload`` sends
pending ones; ``bundles list`` and ``report`` read them. Layout::

    <store>/incidents/<incident>/<bundle>.tar.zst        the bundle
    <store>/incidents/<incident>/<bundle>.tar.zst.sha256 its SHA-256 (sha256sum -c format)
    <store>/incidents/<incident>/<bundle>.manifest.json  its manifest, readable without unpacking
    <store>/incidents/<incident>/<bundle>.upload.json    upload receipt; absent = pending
    <store>/.staging/<bundle>/                           a capture in progress
    <store>/state/pauses/                                the pause ledger (agent/pauses.py)
    <store>/state/                                       daemon state (dedupe, open incidents)

A bundle without an upload receipt is *pending*: nothing pending is ever removed.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from agent.bundle import EXTENSIONS, manifest_sidecar
from agent.errors import GoldenhourError
from agent.incident import check_id


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

    def pending(self) -> list[Path]:
        """Bundles with no upload receipt, oldest first."""
        return [b for b in self.bundles() if not self.receipt(b).exists()]

    def prune(self, keep_days: int) -> list[Path]:
        """Remove *uploaded* bundles older than ``keep_days`` (0 = never). Pending ones always stay."""
        if keep_days <= 0:
            return []
        cutoff = time.time() - keep_days * 86400
        removed = []
        for b in self.bundles():
            receipt = self.receipt(b)
            if receipt.exists() and b.stat().st_mtime < cutoff and receipt.stat().st_mtime < cutoff:
                for p in (b, b.with_name(b.name + ".sha256"), manifest_sidecar(b), receipt):
                    p.unlink(missing_ok=True)
                removed.append(b)
        return removed

    def find(self, name_or_path: str) -> Path | None:
        """A bundle by path, file name or bundle name (without extension)."""
        p = Path(name_or_path)
        if p.exists():
            return p
        for b in self.bundles():
            if b.name == name_or_path or b.name.split(".tar.")[0] == name_or_path:
                return b
        return None
