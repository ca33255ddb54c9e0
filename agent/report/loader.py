"""Read bundles for the report: archives streamed once (never extracted to disk) or extracted folders.

Where it sits: the first step of ``goldenhour report``. An archive is read in one
pass: every member is hashed (so the report can say the evidence matches its
manifest and ``SHA256SUMS``), and only what the rules read is kept in memory:
JSON files whole (up to 64 MiB each), log tails and the journal up to their last
4 MiB (line numbers stay those of the bundle's file), small text files. Heap dumps,
core images and raw tables are hashed and passed over.

A source may be a ``.tar.zst`` / ``.tar.gz`` bundle, an extracted bundle folder (the
one holding ``manifest.json``, or a folder holding exactly one such folder), a
folder of bundles (an incident folder of the store), or a bundle name from the store.
"""
from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import json
import os
import tarfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable

import zstandard

from agent.bundle import EXTENSIONS, BundleError, manifest_sidecar, open_stream, read_sidecar
from agent.errors import NotFoundError, UsageError

BUF = 1 << 20
WHOLE_MAX = 64 * 2**20          # JSON evidence kept whole up to this size
TAIL_MAX = 4 * 2**20            # log tails: the last 4 MiB
SMALL_TEXT_MAX = 2 * 2**20      # other text files kept when this small
JSONL_MAX = 32 * 2**20          # record streams (sockets.jsonl) kept whole up to this size


def keep_mode(rel: str, size: int) -> str | None:
    """How much of a bundle member the report keeps in memory: "whole", "tail" or None (hash only)."""
    if rel in ("manifest.json", "SHA256SUMS"):
        return "whole"
    if rel == "goldenhour.log":
        return "tail"
    if not rel.startswith("collectors/"):
        return None
    name = rel.rsplit("/", 1)[-1]
    if rel.startswith("collectors/logs/files/") or name == "journal.txt":
        return "tail"
    if name.endswith(".json"):
        return "whole" if size <= WHOLE_MAX else "tail"
    if name.endswith(".jsonl") and size <= JSONL_MAX:
        return "whole"
    if name.endswith((".txt", ".log")) and size <= SMALL_TEXT_MAX:
        return "whole"
    return None


@dataclass
class Integrity:
    checked: int = 0
    problems: list[str] = field(default_factory=list)
    archive_sha256: str = ""
    expected_sha256: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "files_checked": self.checked, "problems": self.problems,
                "archive_sha256": self.archive_sha256, "expected_sha256": self.expected_sha256}


class Bundle:
    """One bundle's evidence, as the rules see it (paths relative to the bundle's top folder)."""

    def __init__(self, source: str, kind: str):
        self.source = source
        self.kind = kind                          # "archive" or "folder"
        self.manifest: dict[str, Any] = {}
        self.sizes: dict[str, int] = {}           # every member -> bytes
        self.hashes: dict[str, str] = {}
        self._data: dict[str, bytes] = {}
        self.lines_dropped: dict[str, int] = {}   # tail-kept files: lines cut from their head
        self.cut: set[str] = set()                # kept partially (tail) or not kept
        self.integrity = Integrity()
        self.problems: list[str] = []             # evidence the report could not read
        self._json: dict[str, Any] = {}

    # -- identity ---------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.manifest.get("bundle") or Path(self.source).name

    @property
    def host(self) -> str:
        h = self.manifest.get("host") or {}
        return h.get("hostname") or h.get("nodename") or "?"

    @property
    def incident(self) -> str:
        return (self.manifest.get("incident") or {}).get("id", "")

    # -- evidence ---------------------------------------------------------------------
    def has(self, rel: str) -> bool:
        return rel in self.sizes

    def files(self, pattern: str = "*") -> list[str]:
        return sorted(r for r in self.sizes if fnmatch.fnmatchcase(r, pattern))

    def read(self, rel: str) -> bytes | None:
        return self._data.get(rel)

    def text(self, rel: str) -> str | None:
        b = self.read(rel)
        return None if b is None else b.decode("utf-8", "replace")

    def first_line(self, rel: str) -> int:
        """The bundle file's line number of the first line kept in memory (1 unless the head was cut)."""
        return self.lines_dropped.get(rel, 0) + 1

    def json(self, rel: str) -> Any:
        """A JSON evidence file, parsed (None if absent; an unparsable file is recorded as a problem)."""
        if rel in self._json:
            return self._json[rel]
        raw = self.read(rel)
        val = None
        if raw is not None:
            if rel in self.cut:
                self.problems.append(f"{rel} is larger than {WHOLE_MAX // 2**20} MiB: not read")
            else:
                try:
                    val = json.loads(raw)
                except ValueError as exc:
                    self.problems.append(f"{rel} is not valid JSON: {exc}")
        self._json[rel] = val
        return val

    def collectors(self, name: str | None = None) -> list[dict[str, Any]]:
        """Manifest entries of collectors (all, or those named ``name``, one per target)."""
        out = self.manifest.get("collectors") or []
        return [c for c in out if name is None or c.get("name") == name]

    def targets(self, collector: str) -> list[int]:
        """PIDs that have a folder under ``collectors/<collector>/``."""
        pids = set()
        prefix = f"collectors/{collector}/"
        for rel in self.sizes:
            if rel.startswith(prefix):
                part = rel[len(prefix):].split("/", 1)[0]
                if part.isdigit() and "/" in rel[len(prefix):]:
                    pids.add(int(part))
        return sorted(pids)

    def target_info(self, pid: int) -> dict[str, Any]:
        for t in self.manifest.get("targets") or []:
            if t.get("pid") == pid:
                return t
        return {}

    # -- loading ----------------------------------------------------------------------
    def _keep(self, rel: str, data: bytes, dropped_lines: int = 0, cut: bool = False) -> None:
        self._data[rel] = data
        if dropped_lines:
            self.lines_dropped[rel] = dropped_lines
        if cut:
            self.cut.add(rel)

    def _check_hashes(self) -> None:
        """Every member against SHA256SUMS and manifest.json (like ``goldenhour verify``)."""
        integ = self.integrity
        sums = self.read("SHA256SUMS")
        if sums is None:
            integ.problems.append("SHA256SUMS missing")
        else:
            listed = {}
            for line in sums.decode("utf-8", "replace").splitlines():
                digest, _, rel = line.partition("  ")
                listed[rel] = digest
            for rel, digest in listed.items():
                if rel not in self.hashes:
                    integ.problems.append(f"{rel}: listed in SHA256SUMS but missing")
                elif self.hashes[rel] != digest:
                    integ.problems.append(f"{rel}: sha256 differs from SHA256SUMS")
            for rel in self.hashes:
                if rel not in listed and rel != "SHA256SUMS":
                    integ.problems.append(f"{rel}: not listed in SHA256SUMS")
        for c in self.manifest.get("collectors") or []:
            for fe in c.get("files") or []:
                rel = fe.get("path")
                if rel in self.hashes and self.hashes[rel] != fe.get("sha256"):
                    integ.problems.append(f"{rel}: sha256 differs from manifest.json")
                elif rel not in self.hashes and not any(p.startswith(f"{rel}:") for p in integ.problems):
                    integ.problems.append(f"{rel}: in manifest.json but missing")
        integ.checked = len([r for r in self.hashes if r != "SHA256SUMS"])


class _Reader(io.RawIOBase):
    """Hashes the raw archive bytes as the tar reader pulls them."""

    def __init__(self, fh: IO[bytes]):
        self.fh, self.sha = fh, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[override]
        b = self.fh.read(len(buf))
        self.sha.update(b)
        buf[:len(b)] = b
        return len(b)


def _consume(fh: IO[bytes], mode: str | None, size: int) -> tuple[str, bytes | None, int, bool]:
    """Read one member: its sha256, and what is kept (whole, or the tail with the count of dropped lines)."""
    h = hashlib.sha256()
    if mode == "whole":
        chunks = []
        while True:
            b = fh.read(BUF)
            if not b:
                break
            h.update(b)
            chunks.append(b)
        return h.hexdigest(), b"".join(chunks), 0, False
    if mode == "tail":
        keep: deque[bytes] = deque()
        kept = dropped_lines = 0
        while True:
            b = fh.read(BUF)
            if not b:
                break
            h.update(b)
            keep.append(b)
            kept += len(b)
            while kept - len(keep[0]) >= TAIL_MAX:
                old = keep.popleft()
                kept -= len(old)
                dropped_lines += old.count(b"\n")
        data = b"".join(keep)
        if len(data) > TAIL_MAX or dropped_lines:
            # start at a line boundary, at most TAIL_MAX from the end
            nl = data.find(b"\n", max(0, len(data) - TAIL_MAX) - 1) if len(data) > TAIL_MAX else -1
            if nl >= 0:
                dropped_lines += data[:nl + 1].count(b"\n")
                data = data[nl + 1:]
            elif dropped_lines:
                # the first kept chunk continues a line whose start was dropped: drop its rest too
                nl = data.find(b"\n")
                dropped_lines += 1 if nl >= 0 else 0
                data = data[nl + 1:] if nl >= 0 else data
            return h.hexdigest(), data, dropped_lines, True
        return h.hexdigest(), data, 0, False
    while True:
        b = fh.read(BUF)
        if not b:
            break
        h.update(b)
    return h.hexdigest(), None, 0, False


def load_archive(path: Path) -> Bundle:
    """Stream one ``.tar.zst`` / ``.tar.gz`` bundle: hash everything, keep what the rules read."""
    bundle = Bundle(str(path), "archive")
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise NotFoundError(f"cannot open {path}: {exc.strerror or exc}") from None
    top = None
    with fh:
        reader = _Reader(fh)
        try:
            tar = open_stream(io.BufferedReader(reader, BUF), str(path))  # type: ignore[arg-type]
        except BundleError as exc:
            raise UsageError(f"{path} is not a goldenhour bundle: {exc}") from None
        except (OSError, EOFError) as exc:
            raise UsageError(f"{path} is not a goldenhour bundle: {exc}") from None
        try:
            with tar:
                for m in tar:
                    parts = m.name.split("/", 1)
                    if top is None:
                        top = parts[0]
                    if parts[0] != top or len(parts) < 2 or not m.isfile():
                        bundle.integrity.problems.append(f"unexpected member {m.name}")
                        continue
                    rel = parts[1]
                    f = tar.extractfile(m)
                    if f is None:
                        continue
                    mode = keep_mode(rel, m.size)
                    digest, data, dropped, cut = _consume(f, mode, m.size)
                    bundle.sizes[rel] = m.size
                    bundle.hashes[rel] = digest
                    if data is not None:
                        bundle._keep(rel, data, dropped, cut)
            while reader.read(BUF):
                pass
        except (tarfile.TarError, zstandard.ZstdError, EOFError, OSError, gzip.BadGzipFile) as exc:
            bundle.integrity.problems.append(
                f"archive unreadable after {len(bundle.sizes)} files ({type(exc).__name__}: {exc}); "
                "the report uses what could be read")
    bundle.integrity.archive_sha256 = reader.sha.hexdigest()
    bundle.integrity.expected_sha256 = read_sidecar(path)
    if bundle.integrity.expected_sha256 is None:
        bundle.integrity.problems.append(f"{path.name}.sha256 is missing beside the bundle")
    elif bundle.integrity.expected_sha256 != bundle.integrity.archive_sha256:
        bundle.integrity.problems.append("the archive's sha256 differs from its .sha256")
    _set_manifest(bundle, path)
    bundle._check_hashes()
    return bundle


def load_folder(root: Path) -> Bundle:
    """An extracted bundle folder (the one holding ``manifest.json``)."""
    bundle = Bundle(str(root), "folder")
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            try:
                size = p.stat().st_size
                with open(p, "rb") as fh:
                    digest, data, dropped, cut = _consume(fh, keep_mode(rel, size), size)
            except OSError as exc:
                bundle.problems.append(f"{rel}: unreadable ({exc.strerror or exc})")
                continue
            bundle.sizes[rel] = size
            bundle.hashes[rel] = digest
            if data is not None:
                bundle._keep(rel, data, dropped, cut)
    _set_manifest(bundle, None)
    bundle._check_hashes()
    return bundle


def _set_manifest(bundle: Bundle, archive: Path | None) -> None:
    raw = bundle.read("manifest.json")
    man = None
    if raw is not None:
        try:
            man = json.loads(raw)
        except ValueError as exc:
            bundle.integrity.problems.append(f"manifest.json is not valid JSON: {exc}")
    if man is None and archive is not None:
        side = manifest_sidecar(archive)
        try:
            man = json.loads(side.read_text())
            bundle.problems.append("manifest.json unreadable in the archive: the sidecar manifest was used")
        except (OSError, ValueError):
            man = None
    if not isinstance(man, dict):
        raise UsageError(f"{bundle.source} is not a goldenhour bundle: no readable manifest.json")
    bundle.manifest = man


def _is_archive(p: Path) -> bool:
    return p.is_file() and any(p.name.endswith(ext) for ext in EXTENSIONS.values())


def expand(source: str, store_root: Path | None = None) -> list[tuple[str, Path]]:
    """What one command-line source names: [("archive"|"folder", path), ...]."""
    p = Path(source)
    if p.is_file():
        return [("archive", p)]
    if p.is_dir():
        if (p / "manifest.json").is_file():
            return [("folder", p)]
        subdirs = sorted(d for d in p.iterdir() if d.is_dir() and (d / "manifest.json").is_file())
        archives = sorted(f for f in p.iterdir() if _is_archive(f) and not f.name.startswith("."))
        if subdirs or archives:
            return [("folder", d) for d in subdirs] + [("archive", a) for a in archives]
        raise UsageError(f"{p} holds no bundle (no manifest.json, no .tar.zst/.tar.gz bundles)")
    if store_root is not None:
        from agent.store import Store
        found = Store(store_root).find(source)
        if found is not None:
            return [("archive", found)]
    raise NotFoundError(f"no bundle {source!r} (neither a file, a folder nor a bundle in the store)")


def load(sources: Iterable[str], store_root: Path | None = None) -> list[Bundle]:
    """Every bundle the sources name, each read once; duplicates (same bundle twice) are dropped."""
    out: list[Bundle] = []
    seen: set[str] = set()
    for src in sources:
        for kind, path in expand(src, store_root):
            key = str(path.resolve())
            if key in seen:
                continue
            seen.add(key)
            b = load_archive(path) if kind == "archive" else load_folder(path)
            if b.name in {x.name for x in out}:
                continue
            out.append(b)
    out.sort(key=lambda b: ((b.manifest.get("clocks") or {}).get("start_utc", ""), b.host, b.name))
    return out
