"""Tails of application and system logs: the last N lines, read from the end.

What: the last ``log_lines`` (default 10,000) lines of every configured file or glob
(``logs.paths`` plus ``snapshot --log``), the newest rotated sibling when the live
file holds fewer lines (``app.log.1``, ``app.log.1.gz``, ``app.log-20261122``), and
the system journal (``journalctl``) when there is one.
Why: what the application said just before and during the incident; logs rotate
and restarts bury the interesting lines under start-up noise.
Produces: ``files/<path with / as _>`` (the tails, raw bytes), ``journal.txt``,
``logs.json`` (per file: path, resolved path, size, inode, mtime, lines and bytes kept,
whether more was there, rotated sibling used, errors).
Overhead: reads backwards in growing blocks (64 KiB up to 8 MiB) until N newlines are
found, so a multi-GB file costs about as much as its last N lines; never reads a whole
file. Gzip siblings are decompressed streaming, keeping only the last lines.
Caveats: bytes are kept as they are (CRLF, NUL bytes, invalid UTF-8); a last line with
no trailing newline counts as a line. A file rotated while being read is read through
the descriptor opened first (its inode is recorded).
Options: ``[collectors.logs] max_files`` (default 50) caps how many files a glob adds.
"""
from __future__ import annotations

import glob as globmod
import gzip
import os
import re
import shutil
import stat
from collections import deque
from pathlib import Path
from typing import Any

from agent.collector import Collector, Scope, which

BLOCK = 64 * 1024
MAX_BLOCK = 8 * 2**20


def tail_fd(fd: int, n: int, size: int | None = None) -> bytes:
    """The last ``n`` lines of an open file, read backwards with pread."""
    if n <= 0:
        return b""
    if size is None:
        size = os.fstat(fd).st_size
    if size == 0:
        return b""
    end = size
    # A trailing newline ends the last line; it does not start an empty one.
    last = os.pread(fd, 1, size - 1)
    need = n + 1 if last == b"\n" else n       # newlines to find before the first kept line
    chunks: list[bytes] = []
    found = 0
    block = BLOCK
    pos = end
    while pos > 0:
        start = max(0, pos - block)
        buf = os.pread(fd, pos - start, start)
        count = buf.count(b"\n")
        if found + count >= need:
            # locate the (need - found)-th newline from the end of this buffer
            idx = len(buf)
            for _ in range(need - found):
                idx = buf.rindex(b"\n", 0, idx)
            chunks.append(buf[idx + 1:])
            return b"".join(reversed(chunks))
        found += count
        chunks.append(buf)
        pos = start
        block = min(block * 2, MAX_BLOCK)
    return b"".join(reversed(chunks))


def tail_lines(path: str | os.PathLike[str], n: int) -> bytes:
    """The last ``n`` lines of ``path`` (bytes as they are), reading from the end only."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return tail_fd(fd, n)
    finally:
        os.close(fd)


def tail_gzip(path: str | os.PathLike[str], n: int) -> bytes:
    """The last ``n`` lines of a gzip file: it must be decompressed, but only ``n`` lines are kept."""
    keep: deque[bytes] = deque(maxlen=n)
    with gzip.open(path, "rb") as fh:
        for line in fh:
            keep.append(line)
    return b"".join(keep)


def count_lines(data: bytes) -> int:
    if not data:
        return 0
    return data.count(b"\n") + (0 if data.endswith(b"\n") else 1)


_ROTATED = re.compile(r"^(?P<base>.+?)(?:\.(?P<n>\d+)|-(?P<date>\d{8,10}))(?P<gz>\.gz)?$")


def rotated_sibling(path: str) -> str | None:
    """The newest rotated file of ``path``: name.1, name.1.gz, name-YYYYMMDD[.gz]; None if none."""
    d, base = os.path.split(path)
    try:
        names = os.listdir(d or ".")
    except OSError:
        return None
    best: tuple[int, float, str] | None = None
    for name in names:
        m = _ROTATED.match(name)
        if not m or m.group("base") != base:
            continue
        full = os.path.join(d, name)
        try:
            mtime = os.stat(full).st_mtime
        except OSError:
            continue
        num = int(m.group("n")) if m.group("n") else 0
        key = (-num if m.group("n") else 1, mtime, full)   # .1 beats .2; dated ones by mtime
        if best is None or key > best:
            best = key
    return best[2] if best else None


def _out_name(path: str) -> str:
    return "files/" + re.sub(r"[^A-Za-z0-9._-]", "_", path.lstrip("/"))


def tail_one(ctx, path: str, n: int, explicit: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": path}
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        entry["error"] = f"{exc.strerror or exc}"
        if explicit:
            ctx.partial(f"log {path}: {exc.strerror or exc}")
        return entry
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            entry["error"] = "not a regular file"
            if explicit:
                ctx.partial(f"log {path}: not a regular file")
            return entry
        entry.update(resolved=os.path.realpath(path), size=st.st_size, inode=st.st_ino,
                     mtime=st.st_mtime)
        data = tail_fd(fd, n, st.st_size)
    except OSError as exc:
        entry["error"] = f"{exc.strerror or exc}"
        return entry
    finally:
        os.close(fd)
    lines = count_lines(data)
    older = b""
    if lines < n:
        sib = rotated_sibling(path)
        if sib:
            try:
                older = tail_gzip(sib, n - lines) if sib.endswith(".gz") else tail_lines(sib, n - lines)
                if older and not older.endswith(b"\n"):
                    older += b"\n"
                entry["rotated_sibling"] = sib
                entry["rotated_lines"] = count_lines(older)
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                entry["rotated_error"] = f"{sib}: {exc}"
    cap = ctx.limits.max_file_bytes
    body = older + data
    if len(body) > cap:
        body = body[-cap:]
        entry["cut_to_bytes"] = cap
    name = _out_name(path)
    with open(ctx.path(name), "wb") as fh:
        fh.write(body)
    entry.update(file=name, lines_kept=count_lines(body), bytes_kept=len(body),
                 truncated=len(data) < entry.get("size", 0))
    try:   # rotated underneath? the path now names another file
        entry["rotated_during_read"] = os.stat(path).st_ino != entry["inode"]
    except OSError:
        entry["rotated_during_read"] = True
    return entry


def collect(ctx) -> None:
    n = int(ctx.capture.get("log_lines") or 10000)
    explicit = set(ctx.capture.get("explicit_log_paths") or [])
    max_files = int(ctx.options.get("max_files", 50))
    seen: set[str] = set()
    entries = []
    for pattern in ctx.capture.get("log_paths") or []:
        matches = sorted(globmod.glob(pattern)) if globmod.has_magic(pattern) else [pattern]
        if not matches:
            entries.append({"path": pattern, "error": "no file matches"})
            if pattern in explicit:
                ctx.partial(f"log {pattern}: no file matches")
            continue
        for path in matches[:max_files]:
            if path in seen:
                continue
            seen.add(path)
            if pattern not in explicit and not os.path.exists(path):
                continue   # a default path this distribution does not have
            entries.append(tail_one(ctx, path, n, pattern in explicit))
    journal = None
    if ctx.capture.get("journal", True) and which("journalctl") and _has_journal():
        since = int(ctx.capture.get("journal_since_s") or 3600)
        res = ctx.run(["journalctl", "--no-pager", "-o", "short-iso-precise", "--since", f"-{since}s",
                       "-n", str(n)], stdout="journal.txt", timeout_s=min(20.0, ctx.remaining()))
        journal = {"returncode": res.returncode, "killed": res.killed, "file": "journal.txt"}
    ctx.write_json("logs.json", {"lines_requested": n, "files": entries, "journal": journal})
    ctx.note(files=len([e for e in entries if "file" in e]), errors=len([e for e in entries if "error" in e]))


def _has_journal() -> bool:
    return any(os.path.isdir(d) and os.listdir(d) for d in ("/run/log/journal", "/var/log/journal"))


COLLECTOR = Collector(
    name="logs", summary="last N lines of configured logs (+ rotated sibling) and the journal",
    scope=Scope.HOST, collect=collect, timeout_s=30, volatility=60)
