"""The bundle: one ``.tar.zst`` (or ``.tar.gz``) per capture, verifiable file by file.

Where it sits: after the runner, before the store publishes and the uploader sends.
``pack`` streams every staged file into the archive once: each read feeds the
file's SHA-256 and the compressor, and the compressed bytes feed the bundle's own
SHA-256 as they are written. ``manifest.json`` and ``SHA256SUMS`` go in last. The
archive is written under a temporary name, fsynced and published by atomic
rename, with ``<bundle>.sha256`` (``sha256sum -c`` format) and the manifest sidecar beside it,
written before the rename that publishes all three. The archive ends with goldenhour's index
(the manifest's SHA-256 in a zstd skippable frame, or an empty gzip member).

Layout inside the archive, under one top folder named like the bundle::

    <top>/collectors/<name>[/<pid>]/...   evidence
    <top>/goldenhour.log                  what the agent did
    <top>/manifest.json                   see agent/manifest.py (schema v1)
    <top>/SHA256SUMS                      every file above, `sha256sum -c` format

Reading: ``scan`` reads an archive once, hashing every member and the archive
itself; ``agent.manifest.check`` (the one integrity check, shared by ``verify``,
``fetch`` and the report) then compares every member with both ``SHA256SUMS`` and
the manifest, and the archive with its ``.sha256``; ``scan`` also walks the archive's framing
to its end (cut short, bytes after it). ``load_manifest`` reads a local bundle's manifest
through the one reader: its sidecar when the archive's index names it, else the archive's.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import stat
import struct
import tarfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterable

import zstandard

from agent.manifest import (FORMAT, MANIFEST, MEMBER, SUMS, TRAILING, UNREADABLE, Expected, Integrity, Manifest,
                            Problem, Seen, Sidecar, check, sidecar_difference)
from agent.manifest import read as read_manifest_data
from agent.reserve import free_bytes, is_full, reserve_for  # noqa: F401 - reserve_for is part of this API

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


PACK_SLACK = 1 << 20           # beside the staged evidence, what packing needs: manifest, sums, framing, sidecars


class _HashingWriter(io.RawIOBase):
    """File writer that hashes what it writes and guards the free-space reserve (before every write)."""

    def __init__(self, fh: IO[bytes], guard_dir: Path, reserve: int):
        self.fh, self.guard_dir, self.reserve = fh, guard_dir, reserve
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[override]
        n = len(b)
        if self.reserve and free_bytes(self.guard_dir) - n < self.reserve:
            raise DiskFullError(f"the store reached its free-space reserve ({_mib(self.reserve)}) while packing")
        try:
            self.fh.write(b)
        except OSError as exc:
            if is_full(exc):
                raise DiskFullError(f"no space left on the store while packing ({exc.strerror})") from None
            raise
        self.sha.update(b)
        self.size += n
        return n

    def tell(self) -> int:
        return self.size


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n < 10 * 2**20 else f"{n // 2**20} MiB"


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


def partial_path(dest: Path) -> Path:
    """Where ``pack`` writes a bundle before publishing it (a hidden name no command takes for a bundle)."""
    return dest.with_name(f".{dest.name}.partial")


def pack(staging: Path, top: str, dest: Path, *, compression: str = "zstd", level: int = 3,
         max_bundle_bytes: int = 8 * 2**30, reserve: int = 0,
         log_file: Path | None = None, log_filter: Callable[[bytes], bytes] | None = None,
         sidecar: Path | None = None,
         manifest: Callable[[dict[str, dict[str, Any]], list[dict[str, Any]]], dict[str, Any]],
         progress: Callable[[int], None] | None = None) -> PackResult:
    """Write the bundle for ``staging`` to ``dest`` (final path); return its hash and file list.

    ``manifest(files, left_out)`` is called once all evidence is in and returns the
    manifest dict, which is written as ``manifest.json`` (and as ``sidecar``, the manifest
    beside the bundle, when given). The archive is written under ``partial_path(dest)`` and
    fsynced, then ``<bundle>.sha256`` and the sidecar, then the archive is renamed into place:
    the rename publishes all three. Raises DiskFullError when the reserve would be crossed,
    having removed everything it wrote. When the staged evidence and its bundle would not fit
    side by side above the reserve, each staged file is removed once it is in the archive.
    """
    tmp = partial_path(dest)
    files: dict[str, dict[str, Any]] = {}
    left_out: list[dict[str, Any]] = []
    total = 0
    staged = list(_walk(staging / "collectors"))
    staged_bytes = 0
    for path in staged:
        try:
            staged_bytes += path.lstat().st_size
        except OSError:
            pass
    tight = bool(reserve) and free_bytes(dest.parent) - reserve < staged_bytes + PACK_SLACK + 2048 * len(staged)
    try:
        fh = open(tmp, "wb")
    except OSError as exc:
        if is_full(exc):
            raise DiskFullError(f"no space left on the store ({exc.strerror})") from None
        raise
    try:
        raw = _HashingWriter(fh, dest.parent, reserve)
        comp = _open_compressor(raw, compression, level)
        counter = _Counter(comp)
        tar = tarfile.open(fileobj=counter, mode="w", format=tarfile.PAX_FORMAT)  # type: ignore[arg-type]
        tar.copybufsize = BUF  # type: ignore[attr-defined]

        def add_bytes(rel: str, data: bytes) -> None:
            tar.addfile(_tarinfo(f"{top}/{rel}", len(data), time.time()), io.BytesIO(data))
            files[rel] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

        for path in staged:
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
            if tight:                  # in the archive now: its staged copy makes room for the rest
                path.unlink(missing_ok=True)
            if progress:
                progress(size)
        if log_file is not None and log_file.exists():
            data = log_file.read_bytes()
            add_bytes("goldenhour.log", log_filter(data) if log_filter else data)
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
        raw.write(index_bytes(compression, files[MANIFEST]["sha256"]))
        fh.flush()
        os.fsync(fh.fileno())
    except BaseException:
        fh.close()
        tmp.unlink(missing_ok=True)
        raise
    fh.close()
    digest = raw.sha.hexdigest()
    beside = [(dest.with_name(dest.name + ".sha256"), f"{digest}  {dest.name}\n".encode())]
    if sidecar is not None:
        beside.append((sidecar, man_bytes))
    written: list[Path] = []
    try:
        for path, data in beside:
            if reserve and free_bytes(dest.parent) - len(data) - 4096 < reserve:
                raise DiskFullError(f"the store reached its free-space reserve ({_mib(reserve)}) while publishing")
            atomic_write(path, data)
            written.append(path)
        os.replace(tmp, dest)           # the commit point: the bundle and what is beside it appear together
    except BaseException as exc:
        for path in [tmp, *written]:
            path.unlink(missing_ok=True)
        if isinstance(exc, OSError) and is_full(exc):
            raise DiskFullError(f"no space left on the store while publishing ({exc.strerror})") from None
        raise
    fsync_dir(dest.parent)
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
    """Write ``path`` whole or not at all (a temporary name, fsync, rename; the temporary removed on failure)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# -- reading -----------------------------------------------------------------

# -- the archive's framing ---------------------------------------------------------------
#
# A bundle is one zstd frame (or one gzip member) holding the tar, then goldenhour's index:
# a zstd skippable frame (gzip: an empty member whose comment is the line) holding one line,
# ``goldenhour-index 1 manifest.json sha256 <hex>``. Decompressors skip it (``zstd -d``,
# ``tar``, ``gzip -d`` and Python's readers give the tar alone); ``load_manifest`` reads it from
# the archive's last bytes to bind the manifest sidecar without decompressing anything, and
# ``scan`` checks it against the manifest.json it read. ``scan`` also walks every frame
# and block header, so an archive cut short (even by the one byte of a zstd checksum, which
# libzstd's stream reader lets pass) or followed by anything is named, like ``zstd -t`` does.

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
_SKIPPABLE = range(0x184D2A50, 0x184D2A60)
INDEX_MAGIC = 0x184D2A5E                     # the skippable frame goldenhour writes its index in
INDEX_PREFIX = b"goldenhour-index 1 manifest.json sha256 "
_INDEX_LINE = re.compile(re.escape(INDEX_PREFIX) + rb"([0-9a-f]{64})\n")
INDEX_TEXT_LEN = len(INDEX_PREFIX) + 65
_GZ_INDEX_HEAD = b"\x1f\x8b\x08\x10\x00\x00\x00\x00\x00\xff"     # deflate, FCOMMENT, mtime 0, OS unknown
_GZ_INDEX_TAIL = b"\x00\x03\x00" + b"\x00" * 8                       # end of comment, empty deflate, CRC 0, size 0
ZSTD_INDEX_LEN = 8 + INDEX_TEXT_LEN
GZIP_INDEX_LEN = len(_GZ_INDEX_HEAD) + INDEX_TEXT_LEN - 1 + len(_GZ_INDEX_TAIL)
MAX_BLOCK = 128 * 1024                       # zstd's Block_Maximum_Size


def index_bytes(compression: str, manifest_sha256: str) -> bytes:
    """The index goldenhour appends to an archive: the SHA-256 of the manifest.json inside it."""
    line = INDEX_PREFIX + manifest_sha256.encode() + b"\n"
    if compression == "zstd":
        return struct.pack("<II", INDEX_MAGIC, len(line)) + line
    return _GZ_INDEX_HEAD + line[:-1] + _GZ_INDEX_TAIL


def parse_index(tail: bytes, compression: str) -> str | None:
    if compression == "zstd":
        if len(tail) != ZSTD_INDEX_LEN or struct.unpack("<II", tail[:8]) != (INDEX_MAGIC, INDEX_TEXT_LEN):
            return None
        m = _INDEX_LINE.fullmatch(tail[8:])
    else:
        if len(tail) != GZIP_INDEX_LEN or not tail.startswith(_GZ_INDEX_HEAD) or not tail.endswith(_GZ_INDEX_TAIL):
            return None
        m = _INDEX_LINE.fullmatch(tail[len(_GZ_INDEX_HEAD):-len(_GZ_INDEX_TAIL)] + b"\n")
    return m.group(1).decode() if m else None


def read_index(path: Path) -> str | None:
    """The manifest.json SHA-256 that the archive's index names, read from its last bytes; None without one
    (a bundle written before the index existed, or not a bundle)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
            compression = "zstd" if head == ZSTD_MAGIC else "gzip" if head[:2] == GZIP_MAGIC else None
            if compression is None:
                return None
            n = ZSTD_INDEX_LEN if compression == "zstd" else GZIP_INDEX_LEN
            size = os.fstat(fh.fileno()).st_size
            if size < n + 4:
                return None
            fh.seek(size - n)
            return parse_index(fh.read(n), compression)
    except OSError:
        return None


class FramingError(Exception):
    """What the framing walk found wrong: ``kind`` is a Problem kind (unreadable or trailing)."""

    def __init__(self, kind: str, why: str):
        self.kind, self.why = kind, why
        super().__init__(why)


class _ZstdFrames:
    """Walks the zstd frames of the compressed bytes as they are read, without decompressing.

    Frame headers, every block header (its type and size), the content checksum, then either
    another frame, goldenhour's index frame (last) or the end. libzstd decompresses and checks
    the checksum; this sees where the archive ends: ``finish`` raises when it ends inside a frame,
    ``feed`` records bytes after the end (anything after the index, or that is no frame).
    """

    def __init__(self) -> None:
        self.pos = 0
        self.need, self.state, self.skip = 4, "magic", 0
        self.buf = bytearray()
        self.frames = 0
        self.checksum = False
        self.frame_at = 0
        self.index: str | None = None
        self.error: FramingError | None = None
        self.error_at = 0                    # where the bytes that are not the archive start

    def feed(self, b: bytes) -> None:
        i, n = 0, len(b)
        while i < n and self.error is None:
            if self.skip:
                k = min(self.skip, n - i)
                self.skip -= k
                i += k
                self.pos += k
                continue
            k = min(self.need - len(self.buf), n - i)
            self.buf += b[i:i + k]
            i += k
            self.pos += k
            if len(self.buf) == self.need:
                hdr = bytes(self.buf)
                self.buf.clear()
                self._step(hdr)

    def _trailing(self, what: str) -> None:
        self.error = FramingError(TRAILING, f"{what} at byte {self.frame_at}, after the end of the archive "
                                            f"(the bundle was {self.frame_at} bytes)")
        self.error_at = self.frame_at

    def _step(self, hdr: bytes) -> None:
        st = self.state
        if st == "magic":
            self.frame_at = self.pos - 4
            magic = struct.unpack("<I", hdr)[0]
            if self.index is not None:
                self._trailing("bytes follow goldenhour's index frame")
            elif hdr == ZSTD_MAGIC:
                self.state, self.need = "fhd", 1
            elif magic in _SKIPPABLE and self.frames:
                self.state, self.need, self.skip_magic = "skipsize", 4, magic
            else:
                self._trailing("bytes that are no zstd frame")
        elif st == "fhd":
            d = hdr[0]
            if d & 0x08:
                self.error = FramingError(UNREADABLE, f"damaged: invalid zstd frame header at byte {self.frame_at}")
                self.error_at = self.frame_at
                return
            single = (d >> 5) & 1
            self.checksum = bool(d & 0x04)
            rest = (0 if single else 1) + (0, 1, 2, 4)[d & 3] + ((1 if single else 0), 2, 4, 8)[d >> 6]
            self.state, self.need = ("fhrest", rest) if rest else ("block", 3)
        elif st == "fhrest":
            self.state, self.need = "block", 3
        elif st == "block":
            v = int.from_bytes(hdr, "little")
            last, btype, size = v & 1, (v >> 1) & 3, v >> 3
            if btype == 3 or (btype != 1 and size > MAX_BLOCK):
                self.error = FramingError(UNREADABLE, f"damaged: invalid zstd block header at byte {self.pos - 3}")
                self.error_at = self.pos - 3
                return
            self.skip = 1 if btype == 1 else size
            if not last:
                self.state, self.need = "block", 3
            elif self.checksum:
                self.state, self.need = "checksum", 4
            else:
                self.frames += 1
                self.state, self.need = "magic", 4
        elif st == "checksum":
            self.frames += 1
            self.state, self.need = "magic", 4
        elif st == "skipsize":
            size = struct.unpack("<I", hdr)[0]
            if self.skip_magic != INDEX_MAGIC or size != INDEX_TEXT_LEN:
                self._trailing(f"a skippable frame (magic {self.skip_magic:#x}, {size} bytes) "
                               "goldenhour does not write")
            else:
                self.state, self.need = "index", size
        elif st == "index":
            m = _INDEX_LINE.fullmatch(hdr)
            if m is None:
                self._trailing("a damaged goldenhour index frame")
                return
            self.index = m.group(1).decode()
            self.state, self.need = "magic", 4

    def finish(self) -> None:
        if self.error is None and self.state == "magic" and self.buf and self.frames:
            self.frame_at = self.pos - len(self.buf)
            self._trailing(f"{len(self.buf)} byte(s) that are no zstd frame")
        if self.error is None and (self.state != "magic" or self.buf or self.skip or not self.frames):
            self.error = FramingError(UNREADABLE, f"cut short: the archive ends inside a zstd frame after {self.pos} "
                                                  "bytes (its end is missing)")


class _Source(io.RawIOBase):
    """The archive file as read once: every byte hashed and counted, and (zstd) its frames walked."""

    def __init__(self, fh: IO[bytes], head: bytes, frames: _ZstdFrames | None):
        self.fh, self.frames = fh, frames
        self.sha = hashlib.sha256()
        self.size = 0
        self.pending = head
        self._eat(head)

    def _eat(self, b: bytes) -> None:
        self.sha.update(b)
        self.size += len(b)
        if self.frames is not None:
            self.frames.feed(b)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self.pending:
            b, self.pending = self.pending, b""
            return b
        if self.frames is not None and self.frames.error is not None:
            return b""
        b = self.fh.read(BUF if n is None or n < 0 else n)
        before = self.size
        if b:
            self._eat(b)
        elif self.frames is not None:
            self.frames.finish()
        if self.frames is not None and self.frames.error is not None:
            # libzstd gets the archive up to where the walk found its end; the walk names what follows
            return b[:max(0, self.frames.error_at - before)]
        return b

    def readinto(self, buf) -> int:  # type: ignore[override]
        b = self.read(len(buf))
        buf[:len(b)] = b
        return len(b)

    def drain(self) -> None:
        """Read (hash, walk) the rest of the file."""
        while True:
            b = self.fh.read(BUF)
            if not b:
                break
            self._eat(b)
        if self.frames is not None:
            self.frames.finish()


class _Gunzip(io.RawIOBase):
    """gzip members one after another, output bounded per read; zlib checks each member's CRC and size.

    After the data members only goldenhour's index member may follow; an archive that ends inside
    a member, or has other bytes after its members, sets ``error``.
    """

    def __init__(self, src: _Source):
        self.src = src
        self.inbuf = b""
        self.d: Any = None
        self.members = 0
        self.index: str | None = None
        self.error: FramingError | None = None
        self.done = False
        self.at = 0                              # compressed offset of the current member

    def readable(self) -> bool:
        return True

    def _fill(self, want: int = BUF) -> bool:
        b = self.src.read(want)
        self.inbuf += b
        return bool(b)

    def read(self, n: int = -1) -> bytes:
        n = BUF if n is None or n < 0 else n
        while not self.done:
            if self.d is None:                   # between members
                while len(self.inbuf) < GZIP_INDEX_LEN and self._fill():
                    pass
                if not self.inbuf:
                    self.done = True
                    if not self.members:
                        self.error = FramingError(UNREADABLE, "cut short: no complete gzip member")
                    break
                self.at = self.src.size - len(self.inbuf)
                if self.members and self.inbuf.startswith(_GZ_INDEX_HEAD):
                    while self._fill():          # the index is last: nothing may follow it
                        pass
                    self.index = parse_index(self.inbuf, "gzip")
                    self.done = True
                    if self.index is None:
                        self.error = FramingError(TRAILING, f"bytes that are no goldenhour index at byte {self.at}, "
                                                            f"after the end of the archive")
                    break
                if not self.inbuf.startswith(GZIP_MAGIC):
                    self.done = True
                    self.error = FramingError(TRAILING, f"bytes that are no gzip member at byte {self.at}, after "
                                                        f"the end of the archive (the bundle was {self.at} bytes)")
                    break
                self.d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            if not self.inbuf and not self._fill():
                self.done = True
                self.error = FramingError(UNREADABLE, f"cut short: the archive ends inside a gzip member after "
                                                      f"{self.src.size} bytes (its end is missing)")
                break
            try:
                out = self.d.decompress(self.inbuf, n)
            except zlib.error as exc:
                self.done = True
                self.error = FramingError(UNREADABLE, f"damaged: the gzip member at byte {self.at} does not "
                                                      f"decompress ({exc})")
                raise
            if self.d.eof:
                self.inbuf = self.d.unused_data
                self.d = None
                self.members += 1
            else:
                self.inbuf = self.d.unconsumed_tail
            if out:
                return out
        return b""

    def readinto(self, buf) -> int:  # type: ignore[override]
        b = self.read(len(buf))
        buf[:len(b)] = b
        return len(b)


class _Opened:
    """An archive opened for one streaming read: ``tar`` (mode ``r|``), the decoded stream, the source."""

    def __init__(self, fileobj: IO[bytes], name: str = ""):
        head = fileobj.read(4)
        if head == ZSTD_MAGIC:
            self.frames: _ZstdFrames | None = _ZstdFrames()
            self.src = _Source(fileobj, head, self.frames)
            self.decoded: Any = zstandard.ZstdDecompressor().stream_reader(self.src, read_size=BUF,
                                                                            read_across_frames=True)
            self.gunzip: _Gunzip | None = None
        elif head[:2] == GZIP_MAGIC:
            self.frames = None
            self.src = _Source(fileobj, head, None)
            self.gunzip = self.decoded = _Gunzip(self.src)
        else:
            raise NotABundle(name or "bundle", "neither zstd nor gzip compressed" if head else "empty (0 bytes)")
        self.tar = tarfile.open(fileobj=self.decoded, mode="r|")  # type: ignore[arg-type]

    def finish(self) -> list[Problem]:
        """After the tar's last member: read the rest, and say what the framing showed (cut, bytes after the end)."""
        extra = 0
        while True:
            b = self.decoded.read(BUF)
            if not b:
                break
            extra += len(b) - b.count(0)
        self.src.drain()
        if self.gunzip is not None:
            while self.gunzip.read(BUF):
                pass
        err = (self.frames or self.gunzip).error   # type: ignore[union-attr]
        out = [Problem("", err.why, err.kind)] if err else []
        if extra and not out:
            out.append(Problem("", f"{extra} bytes of data after the end of the tar archive", TRAILING))
        return out

    @property
    def index(self) -> str | None:
        return (self.frames or self.gunzip).index   # type: ignore[union-attr]


def open_stream(fileobj: IO[bytes], name: str = "") -> tarfile.TarFile:
    """A streaming tar reader for a .tar.zst or .tar.gz file object (sniffs the magic; every frame or member)."""
    return _Opened(fileobj, name).tar


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
    archive that is not zstd/gzip, is damaged or cut short part-way (what was read before is
    kept), or has anything after its end. The index goldenhour appends is kept in ``Seen.index``.
    Never raises for the archive's content; errors of ``fileobj`` itself (a disk, a network)
    surface as an unreadable archive unless the caller's stream re-raises them.
    """
    consume = consume or _hash_only
    seen = Seen()
    archive = name.rstrip("/").rsplit("/", 1)[-1]
    top = None
    opened: _Opened | None = None
    try:
        opened = _Opened(fileobj, name)
        with opened.tar as tar:
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
        for p in opened.finish():
            seen.problems.append(Problem(archive, p.reason, p.kind))
        seen.index = opened.index
    except NotABundle as exc:
        seen.problems.append(Problem(archive, f"not a goldenhour bundle: {exc.why}", FORMAT))
    except (tarfile.TarError, zstandard.ZstdError, zlib.error, EOFError, OSError) as exc:
        framing = _framing_error(opened)
        if framing is not None:        # the walk saw why: cut short, damaged, bytes after the end
            seen.problems.append(Problem(archive, framing.why, framing.kind))
        else:
            seen.problems.append(Problem(archive, f"archive unreadable after {len(seen.hashes)} files "
                                                  f"({type(exc).__name__}: {exc})", UNREADABLE))
    if opened is not None:
        try:
            opened.src.drain()
        except OSError:
            pass
        seen.sha256 = opened.src.sha.hexdigest()
    else:
        seen.sha256 = hashlib.sha256(b"").hexdigest()
    return seen


def _framing_error(opened: "_Opened | None") -> FramingError | None:
    if opened is None:
        return None
    try:
        opened.src.drain()
    except OSError:
        pass
    walker = opened.frames or opened.gunzip
    return walker.error if walker is not None else None


def verify_stream(fileobj: IO[bytes], name: str, expected: Expected | None = None,
                  sidecar: Sidecar | None = None) -> Integrity:
    """Check every member against SHA256SUMS and the manifest, the whole against ``expected``, and the
    manifest ``sidecar`` against the archive's manifest.json."""
    return check(name, scan(fileobj, name), expected, sidecar)


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


def manifest_sidecar_of(bundle: Path) -> Sidecar | None:
    """The bundle's ``<bundle>.manifest.json`` as read, None when there is none."""
    side = manifest_sidecar(bundle)
    try:
        return Sidecar(side.name, side.read_bytes())
    except FileNotFoundError:
        return None


def verify_file(path: Path) -> Integrity:
    """``goldenhour verify`` of a local bundle: every check of ``manifest.check``, against its ``.sha256``
    and its manifest sidecar."""
    sidecar = manifest_sidecar_of(path)
    with open(path, "rb") as fh:
        return verify_stream(fh, str(path), expected_from_sidecar(path), sidecar)


class SidecarMismatch(BundleError):
    """The manifest sidecar beside a bundle is not the bundle's own manifest (the message names the difference)."""


def archive_manifest(path: Path) -> bytes:
    """The manifest.json inside a local bundle's archive (one streaming read up to it).

    Raises OSError, NotABundle, or BundleError when the archive holds no readable manifest.json.
    """
    try:
        with open(path, "rb") as fh, open_stream(fh, str(path)) as tar:
            for m in tar:
                if m.name.endswith("/" + MANIFEST) and m.name.count("/") == 1 and m.isfile():
                    return tar.extractfile(m).read()  # type: ignore[union-attr]
    except (tarfile.TarError, zstandard.ZstdError, zlib.error, EOFError) as exc:
        raise BundleError(f"{path.name}: archive unreadable before its manifest.json ({exc})") from None
    raise BundleError(f"{path.name} has no manifest.json")


def manifest_bytes(path: Path) -> tuple[bytes, str]:
    """The manifest of a local bundle as bytes, bound to its archive, and where they came from.

    The sidecar ``<bundle>.manifest.json`` is used when it is the archive's own manifest: its
    SHA-256 is the one the archive's index names (its last bytes: nothing is decompressed). A
    bundle without an index (written before it existed), or whose sidecar differs from the index,
    has its manifest.json read from the archive and compared: the same JSON is accepted, anything
    else raises SidecarMismatch naming the difference. Without a sidecar the archive's is used.
    Raises OSError, or BundleError (NotABundle, SidecarMismatch, no manifest.json).
    """
    sidecar = manifest_sidecar_of(path)
    if sidecar is not None:
        index = read_index(path)
        if index is not None and hashlib.sha256(sidecar.data).hexdigest() == index:
            return sidecar.data, sidecar.name
    inner = archive_manifest(path)
    if sidecar is None:
        return inner, f"{path.name}:{MANIFEST}"
    why = sidecar_difference(sidecar.data, inner)
    if why:
        raise SidecarMismatch(f"{sidecar.name} {why}")
    return sidecar.data, sidecar.name


def load_manifest(path: Path) -> Manifest:
    """The manifest of a local bundle, bound to its archive (see ``manifest_bytes``), through the one
    reader; raises ManifestError (a ValueError) naming the bad field, OSError or BundleError."""
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
