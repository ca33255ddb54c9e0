"""The bundle: one ``.tar.zst`` (or ``.tar.gz``) per capture, verifiable file by file.

Where it sits: after the runner, before the store publishes and the uploader sends.
``pack`` streams every staged file into the archive once: each read feeds the
file's SHA-256 and the compressor, and the compressed bytes feed the bundle's own
SHA-256 as they are written. ``manifest.json`` and ``SHA256SUMS`` go in last. The
archive is written under a temporary name, fsynced and published by atomic
rename, with ``<bundle>.sha256`` beside it (``sha256sum -c`` format).

Layout inside the archive, under one top folder named like the bundle::

    <top>/collectors/<name>[/<pid>]/...   evidence
    <top>/goldenhour.log                  what the agent did
    <top>/manifest.json                   see agent/manifest.py (schema v1)
    <top>/SHA256SUMS                      every file above, `sha256sum -c` format

Reading: ``scan`` reads an archive once, hashing every member and the archive
itself; ``agent.manifest.check`` (the one integrity check, shared by ``verify``,
``fetch`` and the report) then compares every member with both ``SHA256SUMS`` and
the manifest, and the archive with its ``.sha256``. ``load_manifest`` reads a local
bundle's manifest (its sidecar, else the archive's) through the one reader.
"""
from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterable

import zstandard

from agent.manifest import (FORMAT, MANIFEST, MEMBER, SUMS, UNREADABLE, Expected, Integrity, Manifest, Problem, Seen,
                            check)
from agent.manifest import read as read_manifest_data

BUF = 1 << 20
EXTENSIONS = {"zstd": ".tar.zst", "gzip": ".tar.gz"}


class BundleError(Exception):
    """A bundle could not be written or read (message says why)."""


class NotABundle(BundleError):
    """The file is not a zstd or gzip archive at all (empty, or another format)."""

    def __init__(self, name: str, why: str):
        self.why = why
        super().__init__(f"{name} is {why}")


class DiskFullError(BundleError):
    """Writing would eat into the store's free-space reserve (or the disk is full)."""


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def reserve_for(path: Path, reserve_bytes: int, reserve_percent: float) -> int:
    st = os.statvfs(path)
    return max(reserve_bytes, int(st.f_blocks * st.f_frsize * reserve_percent / 100))


class _HashingWriter(io.RawIOBase):
    """File writer that hashes what it writes and guards the free-space reserve."""

    def __init__(self, fh: IO[bytes], guard_dir: Path, reserve: int):
        self.fh, self.guard_dir, self.reserve = fh, guard_dir, reserve
        self.sha = hashlib.sha256()
        self.size = 0
        self._since_check = 4 * BUF   # check before the first write too

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[override]
        n = len(b)
        self._since_check += n
        if self._since_check >= 4 * BUF:
            self._since_check = 0
            if free_bytes(self.guard_dir) - n < self.reserve:
                raise DiskFullError(
                    f"the store's filesystem reached its free-space reserve ({self.reserve // 2**20} MiB); "
                    "capture stopped before filling the disk")
        try:
            self.fh.write(b)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DiskFullError("no space left on the store's filesystem") from None
            raise
        self.sha.update(b)
        self.size += n
        return n

    def tell(self) -> int:
        return self.size


class _HashingReader(io.RawIOBase):
    def __init__(self, fh: IO[bytes]):
        self.fh = fh
        self.sha = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        b = self.fh.read(n)
        self.sha.update(b)
        self.size += len(b)
        return b

    def readinto(self, buf) -> int:  # type: ignore[override]
        b = self.read(len(buf))
        buf[:len(b)] = b
        return len(b)


@dataclass
class PackResult:
    path: Path
    sha256: str
    size: int
    files: dict[str, dict[str, Any]] = field(default_factory=dict)   # relpath -> {bytes, sha256}
    left_out: list[dict[str, Any]] = field(default_factory=list)


def _tarinfo(arcname: str, size: int, mtime: float, mode: int = 0o644) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(arcname)
    ti.size, ti.mtime, ti.mode = size, int(mtime), mode
    ti.uname = ti.gname = "root"
    return ti


def _open_compressor(raw: _HashingWriter, compression: str, level: int) -> IO[bytes]:
    if compression == "zstd":
        cctx = zstandard.ZstdCompressor(level=level, threads=-1, write_checksum=True)
        return cctx.stream_writer(raw, write_size=BUF, closefd=False)   # type: ignore[return-value]
    return gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=min(max(level, 1), 9), mtime=0)  # type: ignore[return-value]


class _Counter(io.RawIOBase):
    """Pass-through that counts bytes, so tarfile can ``tell()`` on a stream."""

    def __init__(self, inner: IO[bytes]):
        self.inner, self.n = inner, 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[override]
        self.inner.write(b)
        self.n += len(b)
        return len(b)

    def tell(self) -> int:
        return self.n


def pack(staging: Path, top: str, dest: Path, *, compression: str = "zstd", level: int = 3,
         max_bundle_bytes: int = 8 * 2**30, reserve: int = 0,
         log_file: Path | None = None,
         manifest: Callable[[dict[str, dict[str, Any]], list[dict[str, Any]]], dict[str, Any]],
         progress: Callable[[int], None] | None = None) -> PackResult:
    """Write the bundle for ``staging`` to ``dest`` (final path); return its hash and file list.

    ``manifest(files, left_out)`` is called once all evidence is in and returns the
    manifest dict, which is written as ``manifest.json``. Raises DiskFullError (the
    partial file is removed) when the reserve would be crossed.
    """
    tmp = dest.with_name(f".{dest.name}.partial")
    files: dict[str, dict[str, Any]] = {}
    left_out: list[dict[str, Any]] = []
    total = 0
    fh = open(tmp, "wb")
    try:
        raw = _HashingWriter(fh, dest.parent, reserve)
        comp = _open_compressor(raw, compression, level)
        counter = _Counter(comp)
        tar = tarfile.open(fileobj=counter, mode="w", format=tarfile.PAX_FORMAT)  # type: ignore[arg-type]
        tar.copybufsize = BUF  # type: ignore[attr-defined]

        def add_bytes(rel: str, data: bytes) -> None:
            tar.addfile(_tarinfo(f"{top}/{rel}", len(data), time.time()), io.BytesIO(data))
            files[rel] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

        for path in _walk(staging / "collectors"):
            rel = path.relative_to(staging).as_posix()
            try:
                st = path.lstat()
                if not path.is_file() or path.is_symlink():
                    left_out.append({"path": rel, "reason": "not a regular file"})
                    continue
                if total + st.st_size > max_bundle_bytes:
                    left_out.append({"path": rel, "bytes": st.st_size,
                                     "reason": f"bundle cap store.max_bundle_bytes={max_bundle_bytes} reached"})
                    continue
                with open(path, "rb") as src:
                    size = os.fstat(src.fileno()).st_size
                    reader = _HashingReader(src)
                    tar.addfile(_tarinfo(f"{top}/{rel}", size, st.st_mtime), reader)  # type: ignore[arg-type]
            except DiskFullError:
                raise
            except OSError as exc:
                left_out.append({"path": rel, "reason": f"unreadable: {exc.strerror or exc}"})
                continue
            files[rel] = {"bytes": size, "sha256": reader.sha.hexdigest()}
            total += size
            if progress:
                progress(size)
        if log_file is not None and log_file.exists():
            add_bytes("goldenhour.log", log_file.read_bytes())
        man = manifest(files, left_out)
        man_bytes = (json.dumps(man, indent=1, default=str) + "\n").encode()
        add_bytes("manifest.json", man_bytes)
        sums = "".join(f"{files[r]['sha256']}  {r}\n" for r in sorted(files))
        tar.addfile(_tarinfo(f"{top}/SHA256SUMS", len(sums), time.time()), io.BytesIO(sums.encode()))
        tar.close()
        if compression == "zstd":
            comp.flush(zstandard.FLUSH_FRAME)   # ends the frame; the file stays open for fsync
        else:
            comp.close()                         # writes the gzip trailer, leaves the file open
        fh.flush()
        os.fsync(fh.fileno())
    except BaseException:
        fh.close()
        tmp.unlink(missing_ok=True)
        raise
    fh.close()
    os.replace(tmp, dest)
    fsync_dir(dest.parent)
    digest = raw.sha.hexdigest()
    write_sidecar(dest, digest)
    return PackResult(dest, digest, raw.size, files, left_out)


def _walk(root: Path) -> Iterable[Path]:
    if not root.exists():
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name


def fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# -- reading -----------------------------------------------------------------

def open_stream(fileobj: IO[bytes], name: str = "") -> tarfile.TarFile:
    """A streaming tar reader for a .tar.zst or .tar.gz file object (sniffs the magic)."""
    head = fileobj.read(4)
    rest = _Prefixed(head, fileobj)
    if head == b"\x28\xb5\x2f\xfd":
        dctx = zstandard.ZstdDecompressor()
        return tarfile.open(fileobj=dctx.stream_reader(rest, read_size=BUF), mode="r|")  # type: ignore[arg-type]
    if head[:2] == b"\x1f\x8b":
        return tarfile.open(fileobj=rest, mode="r|gz")  # type: ignore[arg-type]
    raise NotABundle(name or "bundle", "neither zstd nor gzip compressed" if head else "empty (0 bytes)")


class _Prefixed(io.RawIOBase):
    def __init__(self, prefix: bytes, inner: IO[bytes]):
        self.prefix, self.inner = prefix, inner

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self.prefix:
            if n is None or n < 0:
                b, self.prefix = self.prefix + self.inner.read(), b""
                return b
            b, self.prefix = self.prefix[:n], self.prefix[n:]
            if len(b) < n:
                b += self.inner.read(n - len(b))
            return b
        return self.inner.read(n)

    def readinto(self, buf) -> int:  # type: ignore[override]
        b = self.read(len(buf))
        buf[:len(b)] = b
        return len(b)


VerifyReport = Integrity      # what ``verify`` returns: the one integrity check's result (agent/manifest.py)

Consume = Callable[[str, int, IO[bytes]], tuple[str, "bytes | None"]]


def _hash_only(rel: str, size: int, f: IO[bytes]) -> tuple[str, bytes | None]:
    """Hash a member; keep only the two index files (SHA256SUMS, manifest.json)."""
    h = hashlib.sha256()
    keep = rel in (SUMS, MANIFEST)
    chunks = []
    while True:
        b = f.read(BUF)
        if not b:
            break
        h.update(b)
        if keep:
            chunks.append(b)
    return h.hexdigest(), b"".join(chunks) if keep else None


def _member_kind(m: tarfile.TarInfo) -> str:
    return ("symbolic link" if m.issym() else "hard link" if m.islnk() else "device" if m.isdev()
            else "fifo" if m.isfifo() else "folder" if m.isdir() else "non-file")


def scan(fileobj: IO[bytes], name: str, consume: Consume | None = None) -> Seen:
    """Read a bundle archive once: each member's SHA-256 (and what ``consume`` keeps), the archive's SHA-256.

    ``consume(path, size, stream)`` reads one member and returns its SHA-256 and the bytes it
    keeps (None: nothing); the default keeps only SHA256SUMS and manifest.json. Members outside
    the one top folder or that are not regular files are not read and are problems; so is an
    archive that is not zstd/gzip or is damaged part-way (what was read before is kept).
    Never raises for the archive's content; errors of ``fileobj`` itself (a disk, a network)
    surface as an unreadable archive unless the caller's stream re-raises them.
    """
    consume = consume or _hash_only
    seen = Seen()
    archive = name.rstrip("/").rsplit("/", 1)[-1]
    outer = _HashingReader(fileobj)
    top = None
    try:
        with open_stream(outer, name) as tar:  # type: ignore[arg-type]
            for m in tar:
                parts = m.name.split("/", 1)
                if top is None:
                    top = parts[0]
                if parts[0] != top or len(parts) < 2:
                    seen.problems.append(Problem(m.name, "member outside the bundle's top folder (refused)", MEMBER))
                    continue
                if not m.isfile():
                    seen.problems.append(Problem(m.name, f"{_member_kind(m)} member (refused)", MEMBER))
                    continue
                rel = parts[1]
                f = tar.extractfile(m)
                if f is None:
                    continue
                digest, kept = consume(rel, m.size, f)
                seen.hashes[rel] = digest
                if rel == SUMS:
                    seen.sums = kept
                elif rel == MANIFEST:
                    seen.manifest = kept
        while outer.read(BUF):   # hash trailing bytes the tar reader did not consume
            pass
    except NotABundle as exc:
        seen.problems.append(Problem(archive, f"not a goldenhour bundle: {exc.why}", FORMAT))
    except (tarfile.TarError, zstandard.ZstdError, EOFError, OSError, gzip.BadGzipFile) as exc:
        seen.problems.append(Problem(archive, f"archive unreadable after {len(seen.hashes)} files "
                                              f"({type(exc).__name__}: {exc})", UNREADABLE))
    seen.sha256 = outer.sha.hexdigest()
    return seen


def verify_stream(fileobj: IO[bytes], name: str, expected: Expected | None = None) -> Integrity:
    """Check every member against SHA256SUMS and the manifest, and the whole against ``expected``."""
    return check(name, scan(fileobj, name), expected)


def write_sidecar(bundle: Path, sha256: str) -> None:
    """``<bundle>.sha256`` in ``sha256sum -c`` format, written atomically."""
    atomic_write(bundle.with_name(bundle.name + ".sha256"), f"{sha256}  {bundle.name}\n".encode())


def read_sidecar(bundle: Path) -> str | None:
    side = bundle.with_name(bundle.name + ".sha256")
    try:
        return side.read_text().split()[0]
    except (OSError, IndexError):
        return None


def expected_from_sidecar(bundle: Path) -> Expected:
    """The archive's SHA-256 as its ``<bundle>.sha256`` records it (sha256 None when that file is missing)."""
    return Expected(read_sidecar(bundle), "its .sha256", bundle.name + ".sha256")


def verify_file(path: Path) -> Integrity:
    """``goldenhour verify`` of a local bundle: every check of ``manifest.check``, against its ``.sha256``."""
    with open(path, "rb") as fh:
        return verify_stream(fh, str(path), expected_from_sidecar(path))


def manifest_bytes(path: Path) -> tuple[bytes, str]:
    """The manifest of a local bundle as bytes, and where they came from: its sidecar if present, else the archive.

    Raises OSError, or BundleError when the archive holds no manifest.json.
    """
    side = manifest_sidecar(path)
    try:
        return side.read_bytes(), side.name
    except FileNotFoundError:
        pass
    with open(path, "rb") as fh, open_stream(fh, str(path)) as tar:
        for m in tar:
            if m.name.endswith("/" + MANIFEST) and m.name.count("/") == 1:
                return tar.extractfile(m).read(), f"{path.name}:{MANIFEST}"  # type: ignore[union-attr]
    raise BundleError(f"{path} has no manifest.json")


def load_manifest(path: Path) -> Manifest:
    """The manifest of a local bundle (sidecar, else archive) through the one reader; raises
    ManifestError (a ValueError) naming the bad field, OSError or BundleError."""
    data, source = manifest_bytes(path)
    return read_manifest_data(data, source)


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a local bundle as the JSON object it is, checked by the one reader (see ``load_manifest``)."""
    return load_manifest(path).raw


def manifest_sidecar(bundle: Path) -> Path:
    name = bundle.name
    for ext in EXTENSIONS.values():
        if name.endswith(ext):
            name = name[: -len(ext)]
    return bundle.with_name(name + ".manifest.json")


# -- extracted bundle folders -------------------------------------------------

def is_bundle_folder(root: Path) -> bool:
    """A folder that is one extracted bundle: it holds manifest.json or SHA256SUMS at its top."""
    return (root / MANIFEST).is_file() or (root / SUMS).is_file()


def scan_folder(root: Path) -> Seen:
    """Read an extracted bundle folder once, as ``scan`` reads an archive: each file's SHA-256,
    SHA256SUMS and manifest.json kept. A link, device or fifo is a problem and is never
    followed or read; a file that cannot be read is named with why."""
    seen = Seen()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            try:
                st = p.lstat()
                if not stat.S_ISREG(st.st_mode):
                    kind = "symbolic link" if stat.S_ISLNK(st.st_mode) else "non-file"
                    seen.problems.append(Problem(rel, f"{kind} in the bundle folder (not read)", MEMBER))
                    continue
                with open(p, "rb", opener=_nofollow) as fh:
                    digest, kept = _hash_only(rel, st.st_size, fh)
            except OSError as exc:
                seen.problems.append(Problem(rel, f"unreadable ({exc.strerror or exc})", UNREADABLE))
                continue
            seen.hashes[rel] = digest
            if rel == SUMS:
                seen.sums = kept
            elif rel == MANIFEST:
                seen.manifest = kept
    return seen


def _nofollow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK)


def verify_folder(root: Path) -> Integrity:
    """``goldenhour verify`` of an extracted bundle folder: every file against SHA256SUMS and manifest.json
    (there is no archive, so no archive hash to compare)."""
    return check(str(root), scan_folder(root))
