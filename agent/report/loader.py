"""Read bundles for the report: archives streamed once (never extracted to disk) or extracted folders.

Where it sits: the first step of ``goldenhour report``. An archive is read in one
pass (``bundle.scan``): every member is hashed, so ``agent.manifest.check`` (the
check ``goldenhour verify`` and ``fetch`` run, with the same words) can say whether
the evidence matches its manifest, ``SHA256SUMS`` and ``.sha256``; the manifest is
read by ``agent.manifest.read``. Only what the rules read is kept in memory:
JSON files whole (up to 64 MiB each), log tails and the journal up to their last
4 MiB (line numbers stay those of the bundle's file), small text files. Heap dumps,
core images and raw tables are hashed and passed over.

A source may be a ``.tar.zst`` / ``.tar.gz`` bundle, an extracted bundle folder (the
one holding ``manifest.json``, or a folder holding exactly one such folder), a
folder of bundles (an incident folder of the store), or a bundle name from the store.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from collections import deque
from pathlib import Path
from typing import IO, Any, Iterable

from agent.bundle import EXTENSIONS, expected_from_sidecar, manifest_sidecar_of, scan
from agent.errors import NotFoundError, UsageError
from agent.incident import Incident
from agent.manifest import (FORMAT, MANIFEST, SUMS, CollectorEntry, Expected, Host, Integrity, Manifest,
                            ManifestError, Seen, Sidecar, check)
from agent.manifest import read as read_manifest
from agent.redact import redact_log

BUF = 1 << 20
WHOLE_MAX = 64 * 2**20          # JSON evidence kept whole up to this size
TAIL_MAX = 4 * 2**20            # log tails: the last 4 MiB
SMALL_TEXT_MAX = 2 * 2**20      # other text files kept when this small
JSONL_MAX = 32 * 2**20          # record streams (sockets.jsonl) kept whole up to this size


def is_log(rel: str) -> bool:
    """A log in a bundle: the captured tails and journal, goldenhour's and the collectors' own logs. The report
    keeps them only through the redactor (a bundle captured with ``logs.redact = false``, or before logs were
    redacted, never puts a secret in a report)."""
    return (rel.startswith("collectors/logs/files/") or rel in ("collectors/logs/journal.txt", "goldenhour.log")
            or rel.endswith("/collector.log"))


def keep_mode(rel: str, size: int) -> str | None:
    """How much of a bundle member the report keeps in memory: "whole", "tail" or None (hash only)."""
    if rel in (MANIFEST, SUMS):
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


class Bundle:
    """One bundle's evidence, as the rules see it (paths relative to the bundle's top folder)."""

    def __init__(self, source: str, kind: str):
        self.source = source
        self.kind = kind                          # "archive" or "folder"
        self.manifest = Manifest(bundle="", incident=Incident("unknown"), host=Host(""))   # set by the loader
        self.sizes: dict[str, int] = {}           # every member -> bytes
        self.hashes: dict[str, str] = {}
        self._data: dict[str, bytes] = {}
        self.lines_dropped: dict[str, int] = {}   # tail-kept files: lines cut from their head
        self.cut: set[str] = set()                # kept partially (tail) or not kept
        self.integrity = Integrity(bundle=source)   # agent.manifest.check: the same checks as `verify`
        self.problems: list[str] = []             # evidence the report could not read
        self._json: dict[str, Any] = {}

    # -- identity ---------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.manifest.bundle or Path(self.source).name

    @property
    def host(self) -> str:
        return self.manifest.host.hostname or self.manifest.host.nodename or "?"

    @property
    def incident(self) -> str:
        return self.manifest.incident.id

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

    def collectors(self, name: str | None = None) -> list[CollectorEntry]:
        """Manifest entries of collectors (all, or those named ``name``, one per target)."""
        return self.manifest.entries(name)

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
        return self.manifest.target(pid)

    # -- loading ----------------------------------------------------------------------
    def _keep(self, rel: str, data: bytes, dropped_lines: int = 0, cut: bool = False) -> None:
        self._data[rel] = data
        if dropped_lines:
            self.lines_dropped[rel] = dropped_lines
        if cut:
            self.cut.add(rel)

    def _consume(self, rel: str, size: int, fh: IO[bytes]) -> tuple[str, bytes | None]:
        """Hash one member and keep what the rules read (for ``bundle.scan``); logs are kept redacted."""
        digest, data, dropped, cut = _consume(fh, keep_mode(rel, size), size)
        self.sizes[rel] = size
        self.hashes[rel] = digest
        if data is not None:
            kept = redact_log(data)[0] if is_log(rel) else data
            self._keep(rel, kept, dropped, cut)
        return digest, data


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
    with fh:
        seen = scan(fh, str(path), bundle._consume)
    fmt = [p for p in seen.problems if p.kind == FORMAT]
    if fmt:
        raise UsageError(f"{path} is {fmt[0].reason}")
    _checked(bundle, seen, expected_from_sidecar(path), manifest_sidecar_of(path))
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
                    bundle._consume(rel, size, fh)
            except OSError as exc:
                bundle.problems.append(f"{rel}: unreadable ({exc.strerror or exc})")
                continue
    seen = Seen(hashes=dict(bundle.hashes), sums=bundle.read(SUMS), manifest=bundle.read(MANIFEST))
    _checked(bundle, seen, None, None)
    return bundle


def _checked(bundle: Bundle, seen: Seen, expected: Expected | None, sidecar: Sidecar | None) -> None:
    """Run the one integrity check (agent/manifest.py) and set the bundle's manifest from it.

    The sidecar is checked against the archive's manifest.json (a difference is an integrity
    problem). A manifest.json that cannot be read in an archive is taken from the sidecar only
    when the archive's index names that sidecar (and said so); else the source is not a bundle
    the report can read.
    """
    bundle.integrity = check(bundle.source, seen, expected, sidecar)
    man = bundle.integrity.manifest
    why = next((str(p) for p in bundle.integrity.problems if p.file == MANIFEST), "no manifest.json")
    if man is None and sidecar is not None:
        try:
            side = read_manifest(sidecar.data, sidecar.name)
        except ManifestError:
            side = None
        if side is not None and _bound(bundle, seen, side, sidecar):
            man = side
            bundle.problems.append("manifest.json unreadable in the archive: its sidecar was used (the archive's "
                                   "index names it, or every file read agrees with it)")
    if man is None:
        raise UsageError(f"{bundle.source} is not a goldenhour bundle: {why}")
    bundle.manifest = man


def _bound(bundle: Bundle, seen: Seen, side: Manifest, sidecar: Sidecar) -> bool:
    """Whether a sidecar can stand in for an archive's unreadable manifest.json: the archive's index names
    it, or (an archive cut before its end) it names this archive and lists every file read with its hash."""
    if seen.index is not None:
        return seen.index == hashlib.sha256(sidecar.data).hexdigest()
    if side.bundle != Path(bundle.source).name.split(".tar.", 1)[0]:
        return False
    listed = {f.path: f.sha256 for c in side.collectors for f in c.files}
    read = {rel: digest for rel, digest in seen.hashes.items() if rel.startswith("collectors/")}
    return bool(read) and all(listed.get(rel) == digest for rel, digest in read.items())


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
    out.sort(key=lambda b: (b.manifest.clocks.start_utc, b.host, b.name))
    return out
