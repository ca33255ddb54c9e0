"""The flight recorder's store: one preallocated ring file of checksummed, compressed records.

Layout (all integers little-endian; format version 1)::

    file header   4 KiB   magic "GHRING\\0\\1", version, segment size, segment count, creation
                          time, a random ring id, CRC-32
    segment 0     seg_size bytes
    segment 1     ...
    segment n-1

    segment  = segment header (64 B: magic "GHSG", segment sequence number, the sequence number
               of its first record, boot ID, wall and monotonic time it began, CRC-32)
               followed by records, back to back, until the next would not fit
    record   = header (40 B: magic "\\xa7GHr", kind, flags, payload length, record sequence
               number, CLOCK_MONOTONIC ns, CLOCK_REALTIME ns, CRC-32 of header and payload)
               followed by the payload (one JSON object, zstd-compressed)

Why this shape:
- **Bounded**: the file is created at its full size (``fallocate``) and never grows; when the
  newest segment is full the oldest one is reused, so the ring keeps the newest data.
- **Crash-safe without fsync per record**: a record is valid only if its CRC matches and its
  sequence number is the one expected (first record of the segment = the header's
  ``first_seq``, then +1). A torn tail, a flipped byte or bytes left from an earlier lap of
  the ring fail one of the two. A corrupt record is skipped: the reader resynchronises on
  the next record header whose sequence number follows and whose CRC is good.
- **Small**: the first sample of each segment is compressed alone and is the zstd
  dictionary ("raw content") of every later record of that segment (3-5x smaller than
  compressing each record alone); losing a segment loses only that segment.
- **Time**: every record carries CLOCK_REALTIME and CLOCK_MONOTONIC; every segment its boot
  ID and a new boot always starts a new segment, so each record's boot is known. Records are
  ordered by sequence number, never by wall-clock time (which can step backwards).

Not a hash chain: the sequence numbers already expose a missing or reordered record, the
CRCs a damaged one; neither (nor a hash chain) stops someone with root from rewriting the
whole file, which only anchoring the ring off-host would (not done).
"""
from __future__ import annotations

import errno
import os
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import zstandard

FILE_MAGIC = b"GHRING\x00\x01"
SEG_MAGIC = b"GHSG"
REC_MAGIC = b"\xa7GHr"
VERSION = 1
FILE_HEADER_SIZE = 4096
_FILE = struct.Struct("<8sHHIIq16s")          # magic, version, reserved, seg_size, nseg, created_ns, ring_id
_SEG = struct.Struct("<4sHHQQ16sqq")          # magic, version, flags, seg_seq, first_seq, boot, wall, mono
SEG_HEADER_SIZE = 64
_REC = struct.Struct("<4sBBHIQqq")            # magic, kind, flags, reserved, length, seq, mono, wall
REC_HEADER_SIZE = _REC.size + 4               # + CRC-32

SAMPLE, EVENT, META = 1, 2, 3                 # record kinds (META: a copy of the segment's dictionary)
KIND_NAMES = {SAMPLE: "sample", EVENT: "event", META: "meta"}
F_ZSTD, F_DICT_USER, F_DICT = 1, 2, 4         # compressed; compressed with the segment's dictionary; is it
ZSTD_LEVEL = 9                                # 70 µs per sample here; 13 % smaller than level 3
PAGE = os.sysconf("SC_PAGE_SIZE")
MIN_SEG, MAX_SEG = 16 * 1024, 1024 * 1024
MIN_RING = FILE_HEADER_SIZE + 2 * MIN_SEG


class RingError(Exception):
    """The file is not a usable ring (missing, foreign, damaged header): the message says which."""


def geometry(size: int) -> tuple[int, int]:
    """(segment size, segment count) for a ring of about ``size`` bytes: 16 segments or more,
    each 16 KiB to 1 MiB (a 64 MiB ring: 64 segments of 1 MiB)."""
    size = max(int(size), MIN_RING)
    seg = min(MAX_SEG, max(MIN_SEG, (size - FILE_HEADER_SIZE) // 16))
    seg -= seg % 4096
    return seg, max(2, (size - FILE_HEADER_SIZE) // seg)


def _crc(*parts: bytes) -> int:
    c = 0
    for p in parts:
        c = zlib.crc32(p, c)
    return c & 0xFFFFFFFF


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _boot_bytes(boot: str) -> bytes:
    try:
        return bytes.fromhex(boot.replace("-", ""))[:16].ljust(16, b"\0")
    except ValueError:
        return b"\0" * 16


def _boot_str(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}" if raw.strip(b"\0") else ""


@dataclass
class FileHeader:
    seg_size: int
    nseg: int
    created_ns: int
    ring_id: str

    def pack(self) -> bytes:
        body = _FILE.pack(FILE_MAGIC, VERSION, 0, self.seg_size, self.nseg, self.created_ns,
                          bytes.fromhex(self.ring_id))
        return (body + struct.pack("<I", _crc(body))).ljust(FILE_HEADER_SIZE, b"\0")

    @classmethod
    def parse(cls, raw: bytes, where: str = "ring") -> "FileHeader":
        if len(raw) < _FILE.size + 4:
            raise RingError(f"{where} is too short to be a goldenhour ring ({len(raw)} bytes)")
        body = raw[:_FILE.size]
        magic, version, _, seg_size, nseg, created, rid = _FILE.unpack(body)
        if magic != FILE_MAGIC:
            raise RingError(f"{where} is not a goldenhour ring (foreign file: magic {magic[:8]!r})")
        if struct.unpack_from("<I", raw, _FILE.size)[0] != _crc(body):
            raise RingError(f"{where} has a damaged header (CRC mismatch)")
        if version != VERSION:
            raise RingError(f"{where} is ring format version {version}; this goldenhour reads version {VERSION}")
        if not (MIN_SEG <= seg_size <= MAX_SEG and 2 <= nseg <= 1 << 20):
            raise RingError(f"{where} header has an impossible geometry ({nseg} x {seg_size} bytes)")
        return cls(seg_size, nseg, created, rid.hex())

    @property
    def size(self) -> int:
        return FILE_HEADER_SIZE + self.seg_size * self.nseg


@dataclass
class SegHeader:
    index: int                 # slot in the file
    seg_seq: int               # increases by one per segment ever started
    first_seq: int             # sequence number of its first record
    boot: str
    wall_ns: int
    mono_ns: int

    def pack(self) -> bytes:
        body = _SEG.pack(SEG_MAGIC, VERSION, 0, self.seg_seq, self.first_seq, _boot_bytes(self.boot),
                         self.wall_ns, self.mono_ns)
        return (body + struct.pack("<I", _crc(body))).ljust(SEG_HEADER_SIZE, b"\0")

    @classmethod
    def parse(cls, raw: bytes, index: int) -> "SegHeader | None":
        if len(raw) < _SEG.size + 4:
            return None
        body = raw[:_SEG.size]
        magic, version, _, seg_seq, first, boot, wall, mono = _SEG.unpack(body)
        if magic != SEG_MAGIC or version != VERSION or struct.unpack_from("<I", raw, _SEG.size)[0] != _crc(body):
            return None
        return cls(index, seg_seq, first, _boot_str(boot), wall, mono)


@dataclass
class Record:
    seq: int
    kind: int
    flags: int
    mono_ns: int
    wall_ns: int
    boot: str
    payload: bytes            # as stored (compressed)
    raw: bytes = b""          # header + payload exactly as in the file
    data: bytes | None = None  # decompressed JSON, when decoded

    @property
    def wall_s(self) -> float:
        return self.wall_ns / 1e9


def pack_record(kind: int, flags: int, seq: int, mono_ns: int, wall_ns: int, payload: bytes) -> bytes:
    head = _REC.pack(REC_MAGIC, kind, flags, 0, len(payload), seq, mono_ns, wall_ns)
    return head + struct.pack("<I", _crc(head, payload)) + payload


def parse_record_at(buf: bytes | memoryview, off: int, limit: int) -> tuple[Record | None, str]:
    """The record at ``off`` if it is whole and its CRC matches; else (None, why)."""
    if off + REC_HEADER_SIZE > limit:
        return None, "end"
    head = bytes(buf[off:off + _REC.size])
    magic, kind, flags, _, length, seq, mono, wall = _REC.unpack(head)
    if magic != REC_MAGIC:
        return None, "no record header"
    end = off + REC_HEADER_SIZE + length
    if end > limit:
        return None, "length past the segment"
    crc = struct.unpack_from("<I", buf, off + _REC.size)[0]
    payload = bytes(buf[off + REC_HEADER_SIZE:end])
    if crc != _crc(head, payload):
        return None, "CRC mismatch"
    return Record(seq, kind, flags, mono, wall, "", payload, raw=bytes(buf[off:end])), ""


@dataclass
class SegmentScan:
    header: SegHeader
    records: list[Record] = field(default_factory=list)
    end: int = SEG_HEADER_SIZE            # offset after the last valid record
    skipped: list[dict[str, Any]] = field(default_factory=list)   # corrupt stretches skipped inside
    dict_lost: bool = False


def scan_segment(buf: bytes | memoryview, header: SegHeader, *, expect_until: int | None = None,
                 max_resync: int = 100_000) -> SegmentScan:
    """Every valid record of one segment, in order.

    ``expect_until``: the first sequence number of the next segment when one follows (then a
    stop before it is a loss, not the end). A corrupt record (bad CRC, torn length) is
    skipped by searching forward for the next record header whose sequence number is
    within ``max_resync`` after the expected one and whose CRC matches.
    """
    out = SegmentScan(header)
    limit = len(buf)
    off = SEG_HEADER_SIZE
    expect = header.first_seq
    raw = bytes(buf)
    while off < limit:
        if expect_until is not None and expect >= expect_until:
            break
        rec, why = parse_record_at(raw, off, limit)
        if rec is not None and rec.seq == expect:
            rec.boot = header.boot
            out.records.append(rec)
            off += len(rec.raw)
            out.end = off
            expect += 1
            continue
        # Not the expected record: the end of what was written, or damage. Look for a later one.
        nxt = _resync(raw, off + 1, limit, expect, max_resync if expect_until is None else expect_until - expect)
        if nxt is None:
            if expect_until is not None and expect < expect_until:
                out.skipped.append({"at": off, "from_seq": expect, "to_seq": expect_until - 1,
                                    "why": why if rec is None else "stale record (earlier lap)",
                                    "records": expect_until - expect})
            break
        noff, nrec = nxt
        out.skipped.append({"at": off, "from_seq": expect, "to_seq": nrec.seq - 1,
                            "why": why if rec is None else f"unexpected sequence number {rec.seq}",
                            "records": nrec.seq - expect, "bytes": noff - off})
        off, expect = noff, nrec.seq
    return out


def _resync(raw: bytes, start: int, limit: int, expect: int, window: int) -> tuple[int, Record] | None:
    pos = start
    while True:
        pos = raw.find(REC_MAGIC, pos, limit)
        if pos < 0:
            return None
        rec, _ = parse_record_at(raw, pos, limit)
        if rec is not None and expect < rec.seq <= expect + max(window, 1):
            return pos, rec
        pos += 1


class Decoder:
    """Decompresses the records of one segment (the dictionary is the segment's first sample)."""

    def __init__(self) -> None:
        self._plain = zstandard.ZstdDecompressor()
        self._dict: zstandard.ZstdDecompressor | None = None
        self.dict_missing = False

    def decode(self, rec: Record) -> bytes | None:
        try:
            if not rec.flags & F_ZSTD:
                data = rec.payload
            elif rec.flags & F_DICT_USER:
                if self._dict is None:
                    self.dict_missing = True
                    return None
                data = self._dict.decompress(rec.payload)
            else:
                data = self._plain.decompress(rec.payload)
        except zstandard.ZstdError:
            return None
        if rec.flags & F_DICT and self._dict is None:
            self._dict = zstandard.ZstdDecompressor(
                dict_data=zstandard.ZstdCompressionDict(data, dict_type=zstandard.DICT_TYPE_RAWCONTENT))
        rec.data = data
        return data


# -- reading ----------------------------------------------------------------------------------

@dataclass
class RingView:
    """What a reader found in a ring file: its header and valid segments, oldest first."""

    path: str
    header: FileHeader
    segments: list[SegHeader]
    size_on_disk: int
    problems: list[str] = field(default_factory=list)


def open_view(path: str) -> RingView:
    """Read a ring's headers (not its records). RingError when it is missing or not a ring."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise RingError(f"no ring file at {path}") from None
    except OSError as exc:
        raise RingError(f"cannot open {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        hdr = FileHeader.parse(os.pread(fd, FILE_HEADER_SIZE, 0), path)
        segs, problems = [], []
        for i in range(hdr.nseg):
            off = FILE_HEADER_SIZE + i * hdr.seg_size
            if off + SEG_HEADER_SIZE > st.st_size:
                problems.append(f"file is truncated at {st.st_size} bytes of {hdr.size}: "
                                f"segments {i}..{hdr.nseg - 1} are missing")
                break
            sh = SegHeader.parse(os.pread(fd, SEG_HEADER_SIZE, off), i)
            if sh is not None:
                segs.append(sh)
    finally:
        os.close(fd)
    segs.sort(key=lambda s: s.seg_seq)
    # two slots claiming one segment number: keep the one written later (higher first_seq)
    uniq: dict[int, SegHeader] = {}
    for s in segs:
        if s.seg_seq not in uniq or s.first_seq > uniq[s.seg_seq].first_seq:
            uniq[s.seg_seq] = s
    return RingView(path, hdr, sorted(uniq.values(), key=lambda s: s.seg_seq), st.st_size, problems)


def read_segment(path: str, hdr: FileHeader, seg: SegHeader) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(FILE_HEADER_SIZE + seg.index * hdr.seg_size)
        return fh.read(hdr.seg_size)


def select_segments(segs: list[SegHeader], since_ns: int | None, until_ns: int | None) -> list[SegHeader]:
    """The segments that may hold records with wall time in [since, until], by their header times
    (a segment's records run from its start to the next segment's start). A wall-clock step
    backwards inside the ring can make this miss a segment; records are then still never
    reordered, only left out (the summary states the clock steps it saw)."""
    out = []
    for i, s in enumerate(segs):
        nxt = segs[i + 1].wall_ns if i + 1 < len(segs) else None
        if until_ns is not None and s.wall_ns > until_ns and (nxt is None or nxt > s.wall_ns):
            continue
        if since_ns is not None and nxt is not None and nxt < since_ns and nxt >= s.wall_ns:
            continue
        out.append(s)
    return out


def iter_records(view: RingView, since_ns: int | None = None, until_ns: int | None = None,
                 problems: list[dict[str, Any]] | None = None) -> Iterator[tuple[SegmentScan, list[Record]]]:
    """(segment scan, its records with wall time in [since, until]) for each selected segment,
    oldest first. Records keep their compressed payload; decode with ``Decoder`` per segment."""
    segs = view.segments
    chosen = select_segments(segs, since_ns, until_ns)
    index = {s.seg_seq: i for i, s in enumerate(segs)}
    for s in chosen:
        i = index[s.seg_seq]
        nxt = segs[i + 1] if i + 1 < len(segs) else None
        expect_until = nxt.first_seq if nxt is not None and nxt.seg_seq == s.seg_seq + 1 else None
        try:
            buf = read_segment(view.path, view.header, s)
        except OSError as exc:
            if problems is not None:
                problems.append({"segment": s.seg_seq, "why": f"unreadable: {exc.strerror or exc}"})
            continue
        scan = scan_segment(buf, s, expect_until=expect_until)
        if problems is not None:
            for sk in scan.skipped:
                problems.append({"segment": s.seg_seq, **sk})
        recs = [r for r in scan.records
                if (since_ns is None or r.wall_ns >= since_ns) and (until_ns is None or r.wall_ns <= until_ns)]
        yield scan, recs


JOURNAL_MAGIC = b"GHJ1"


def read_journal(path: str, ring_id: str) -> bytes:
    """The records in a recorder's journal for the ring ``ring_id`` (b"" when none, or another ring's)."""
    if not path:
        return b""
    try:
        with open(path, "rb") as fh:
            data = fh.read(20 + MAX_SEG)
    except OSError:
        return b""
    if data[:4] != JOURNAL_MAGIC or data[4:20].hex() != ring_id:
        return b""
    return data[20:]


# -- writing ----------------------------------------------------------------------------------

class RingWriter:
    """Appends records to a ring file; one writer per file (an exclusive ``flock``).

    ``open()`` creates the file at its full size, or resumes an existing one after its last
    valid record (a new segment when the boot ID changed). A foreign or damaged file is
    moved aside to ``<path>.bad`` (one kept) and a new ring is started; ``open()`` returns
    what it found so the recorder can write it down as an event.
    """

    def __init__(self, path: str, size: int, *, boot: str | None = None):
        self.path = path
        self.want_size = int(size)
        self.boot = boot if boot is not None else boot_id()
        self.fd = -1
        self.header: FileHeader | None = None
        self.seg: SegHeader | None = None
        self.off = 0                      # write offset inside the current segment
        self.next_seq = 0
        self.next_seg_seq = 0
        self.bytes_written = 0
        self.unsynced = 0
        self._comp_plain = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        self._comp_dict: zstandard.ZstdCompressor | None = None
        self._dict_pair = False
        self.pending = bytearray()        # records not written to the file yet (less than a page)
        self.pending_off = 0              # their file offset
        self.pending_since = 0.0
        self.jrecs: list[tuple[int, bytes]] = []   # whole records not wholly in the file: (end offset, bytes)
        self.journal_path = ""
        self.journal_fd = -1

    # -- open / create ------------------------------------------------------
    def open(self) -> dict[str, Any]:
        """Open or create the ring; returns {created, resumed, moved_aside, reason, last_seq, last_wall_ns,
        last_mono_ns, last_boot, new_segment, size}."""
        info: dict[str, Any] = {"created": False, "resumed": False, "moved_aside": "", "reason": ""}
        d = os.path.dirname(self.path) or "."
        os.makedirs(d, mode=0o700, exist_ok=True)
        try:
            os.chmod(d, 0o700)
        except OSError:
            pass
        view: RingView | None = None
        if os.path.exists(self.path):
            try:
                view = open_view(self.path)
            except RingError as exc:
                bad = self.path + ".bad"
                os.replace(self.path, bad)
                info.update(moved_aside=bad, reason=str(exc))
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            import fcntl
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    raise RingError(f"{self.path} is in use by another recorder") from None
                raise
            os.fchmod(fd, 0o600)
            self.fd = fd
            if view is None:
                try:
                    self._create()
                except OSError:
                    os.unlink(self.path)          # never leave a half-made ring behind
                    raise
                info["created"] = True
            else:
                self.header = view.header
                if view.size_on_disk < view.header.size:
                    self._allocate(view.header.size)       # a truncated ring is made whole again
                    info["reason"] = (info["reason"] + "; " if info["reason"] else "") + \
                        f"ring file was truncated to {view.size_on_disk} bytes; extended back to {view.header.size}"
                self._resume(view, info)
                want = FILE_HEADER_SIZE + geometry(self.want_size)[0] * geometry(self.want_size)[1]
                if want != view.header.size:
                    info["size_note"] = (f"the ring keeps its size of {view.header.size} bytes (asked: {want}); "
                                         "to resize, stop the recorder and remove the file (its history goes)")
        except BaseException:
            os.close(fd)
            self.fd = -1
            raise
        info["size"] = self.header.size if self.header else 0
        return info

    def _allocate(self, size: int) -> None:
        try:
            os.posix_fallocate(self.fd, 0, size)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):    # no fallocate here: write zeros
                os.ftruncate(self.fd, size)
            else:
                raise

    def _create(self) -> None:
        seg_size, nseg = geometry(self.want_size)
        hdr = FileHeader(seg_size, nseg, time.time_ns(), os.urandom(16).hex())
        os.ftruncate(self.fd, 0)
        try:
            self._allocate(hdr.size)
        except OSError:
            os.ftruncate(self.fd, 0)
            raise
        os.pwrite(self.fd, hdr.pack(), 0)
        os.fdatasync(self.fd)
        self.header = hdr
        self.next_seq = 0
        self.next_seg_seq = 0
        self.seg = None

    def _resume(self, view: RingView, info: dict[str, Any]) -> None:
        if not view.segments:
            self.next_seq = self.next_seg_seq = 0
            return
        newest = view.segments[-1]
        scan = scan_segment(read_segment(self.path, view.header, newest), newest)
        self.next_seg_seq = newest.seg_seq + 1
        last = scan.records[-1] if scan.records else None
        self.next_seq = (last.seq + 1) if last else newest.first_seq
        info.update(resumed=True, last_seq=last.seq if last else None,
                    last_wall_ns=last.wall_ns if last else newest.wall_ns,
                    last_mono_ns=last.mono_ns if last else newest.mono_ns, last_boot=newest.boot,
                    skipped=scan.skipped)
        if newest.boot == self.boot and scan.end + REC_HEADER_SIZE < view.header.seg_size:
            self.seg = newest
            self.off = scan.end
            self._comp_dict = None
            # the dictionary of this segment, if its first sample is intact
            dec = Decoder()
            for r in scan.records:
                dec.decode(r)
                if r.flags & F_DICT and r.data is not None:
                    self._set_dict(r.data)
                    break
            info["new_segment"] = False
        else:
            self.seg = None                      # a new boot (or a full segment): start a new one
            info["new_segment"] = True

    # -- appending ------------------------------------------------------------
    def _set_dict(self, data: bytes) -> None:
        cd = zstandard.ZstdCompressionDict(data, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        cd.precompute_compress(level=ZSTD_LEVEL)
        self._comp_dict = zstandard.ZstdCompressor(level=ZSTD_LEVEL, dict_data=cd)

    def _new_segment(self, wall_ns: int, mono_ns: int) -> None:
        assert self.header is not None
        self.flush()                                 # the old segment's tail first
        index = self.next_seg_seq % self.header.nseg
        self.seg = SegHeader(index, self.next_seg_seq, self.next_seq, self.boot, wall_ns, mono_ns)
        self.next_seg_seq += 1
        os.pwrite(self.fd, self.seg.pack(), FILE_HEADER_SIZE + index * self.header.seg_size)
        # the header first and durable, so a crash never leaves new records behind an old header
        os.fdatasync(self.fd)
        self.off = SEG_HEADER_SIZE
        self._comp_dict = None

    def append(self, kind: int, data: bytes, mono_ns: int, wall_ns: int, *, keyframe: bool = False) -> int:
        """Compress and add one record; returns its sequence number. OSError on I/O errors.

        ``keyframe``: a full sample (processes and cgroups too), fit to be its segment's dictionary.
        Records go to the file in whole pages (``PAGE``) as they fill, the tail when ``flush()`` is
        called (the recorder does every ``sync_s``, and at stop): each page of the file is then
        written about once, not once per record. Until then they are in the journal (when set).
        """
        assert self.header is not None and self.fd >= 0
        if self.seg is None:
            self._new_segment(wall_ns, mono_ns)
        rec = self._pack(kind, data, mono_ns, wall_ns, keyframe)
        if len(rec) > self.header.seg_size - SEG_HEADER_SIZE:
            raise ValueError(f"record of {len(rec)} bytes does not fit a {self.header.seg_size}-byte segment")
        if self.off + len(rec) > self.header.seg_size:
            self._new_segment(wall_ns, mono_ns)
            rec = self._pack(kind, data, mono_ns, wall_ns, keyframe)
        assert self.seg is not None
        seq = self.next_seq
        self._add(rec)
        self.next_seq += 2 if self._dict_pair else 1
        return seq

    def _add(self, rec: bytes) -> None:
        assert self.seg is not None and self.header is not None
        where = FILE_HEADER_SIZE + self.seg.index * self.header.seg_size + self.off
        if not self.pending:
            self.pending_off, self.pending_since = where, time.monotonic()
        self.pending += rec
        self.off += len(rec)
        self.bytes_written += len(rec)
        self.jrecs.append((where + len(rec), rec))
        if self.journal_fd >= 0:
            try:
                os.write(self.journal_fd, rec)
            except OSError:
                self._close_journal()
        end = self.pending_off + len(self.pending)
        cut = end - end % PAGE
        if cut > self.pending_off:                   # whole pages are ready: to the file (page cache)
            n = cut - self.pending_off
            os.pwrite(self.fd, bytes(self.pending[:n]), self.pending_off)
            self.unsynced += n
            del self.pending[:n]
            self.pending_off = cut
            self.pending_since = time.monotonic()    # what is left is the newest record's tail
            self._written_upto(cut)

    def _pack(self, kind: int, data: bytes, mono_ns: int, wall_ns: int, keyframe: bool) -> bytes:
        """The record; for a segment's dictionary, followed by its copy (a META record with the same
        payload): one damaged byte then costs one sample, not the rest of the segment."""
        if self._comp_dict is not None:
            payload, flags = self._comp_dict.compress(data), F_ZSTD | F_DICT_USER
        else:
            payload, flags = self._comp_plain.compress(data), F_ZSTD
            if kind == SAMPLE and keyframe:          # the segment's first full sample: its dictionary
                self._set_dict(data)
                flags |= F_DICT
        rec = pack_record(kind, flags, self.next_seq, mono_ns, wall_ns, payload)
        self._dict_pair = bool(flags & F_DICT)
        if self._dict_pair:
            rec += pack_record(META, flags, self.next_seq + 1, mono_ns, wall_ns, payload)
        return rec

    def pending_age(self) -> float:
        return time.monotonic() - self.pending_since if self.pending else 0.0

    def flush(self) -> None:
        """Write the pending tail (a partial page) and make everything written durable."""
        if self.fd < 0:
            return
        if self.pending:
            os.pwrite(self.fd, bytes(self.pending), self.pending_off)
            self.unsynced += len(self.pending)
            self.pending_off += len(self.pending)
            self.pending.clear()
        if self.unsynced:
            os.fdatasync(self.fd)
            self.unsynced = 0
        self._written_upto(None)

    def sync(self) -> None:
        """fdatasync what was written (whole pages); the pending tail stays pending."""
        if self.fd >= 0 and self.unsynced:
            os.fdatasync(self.fd)
            self.unsynced = 0

    # -- the journal: records not in the file yet, on a tmpfs (they survive the recorder, not a reboot)
    def open_journal(self, path: str) -> dict[str, Any]:
        """Put back into the ring what a killed recorder left in ``path``, then journal there."""
        out: dict[str, Any] = {}
        self.journal_path = path
        if not path or self.header is None:
            return out
        data = read_journal(path, self.header.ring_id)
        recs, off = [], 0
        while off < len(data):
            rec, _ = parse_record_at(data, off, len(data))
            if rec is None:
                break
            recs.append(rec)
            off += len(rec.raw)
        recs = [r for r in recs if r.seq >= self.next_seq]
        if recs and self.seg is not None and self.header is not None and \
                self.off + sum(len(r.raw) for r in recs) <= self.header.seg_size:
            out["recovered"] = len(recs)
            if recs[0].seq > self.next_seq:
                out["lost_before_journal"] = recs[0].seq - self.next_seq
            dec = Decoder()
            for r in recs:
                self._add(r.raw)
                self.next_seq = r.seq + 1
                if self._comp_dict is None and r.flags & F_DICT and dec.decode(r) is not None:
                    self._set_dict(r.data or b"")   # the segment's dictionary was still pending
            self.flush()
        elif recs:
            out["discarded"] = len(recs)          # they belonged to a segment that is no longer current
        try:
            d = os.path.dirname(path) or "."
            os.makedirs(d, mode=0o700, exist_ok=True)
            self.journal_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            os.write(self.journal_fd, self._journal_head() + b"".join(r for _, r in self.jrecs))
        except OSError as exc:
            out["journal_error"] = exc.strerror or str(exc)
            self.journal_fd = -1
        return out

    def _written_upto(self, offset: int | None) -> None:
        """Records wholly in the file up to ``offset`` (None: all) leave the journal."""
        keep = [(end, r) for end, r in self.jrecs if offset is not None and end > offset]
        if len(keep) == len(self.jrecs):
            return
        self.jrecs = keep
        if self.journal_fd < 0:
            return
        try:
            os.ftruncate(self.journal_fd, 0)
            os.lseek(self.journal_fd, 0, os.SEEK_SET)
            os.write(self.journal_fd, self._journal_head() + b"".join(r for _, r in keep))
        except OSError:
            self._close_journal()

    def _journal_head(self) -> bytes:
        assert self.header is not None
        return JOURNAL_MAGIC + bytes.fromhex(self.header.ring_id)

    def _close_journal(self) -> None:
        if self.journal_fd >= 0:
            try:
                os.close(self.journal_fd)
            except OSError:
                pass
            self.journal_fd = -1

    def close(self) -> None:
        if self.fd >= 0:
            try:
                self.flush()
            except OSError:
                pass
            os.close(self.fd)
            self.fd = -1
        self._close_journal()
        if self.journal_path and not self.jrecs:
            try:
                os.unlink(self.journal_path)      # everything is in the ring
            except OSError:
                pass
