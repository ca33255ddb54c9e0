"""Tails of application and system logs: the last N lines, read from the end, plus the journal.

What: the last ``log_lines`` (default 10,000) lines of every configured file or glob
(``logs.paths`` plus ``snapshot --log``); when a live file holds fewer lines, the rest
from its newest rotated sibling (``app.log.1``, ``app.log.1.gz``, ``app.log-20261122``,
``app.log.2026-11-22``; gz, xz, bz2 and zst are decompressed streaming); and the system
journal (``journalctl``) when there is one and ``logs.journal`` is on.
Why: what the applications and the system said just before and during the incident;
logs rotate and restarts bury the interesting lines under start-up noise.
Produces: ``files/<path with every character but [A-Za-z0-9._-] as _>`` (the tails, with
credentials redacted by ``agent.redact.LogRedactor`` unless ``logs.redact = false``: rotated
sibling's lines first, then the live file's), ``journal.txt`` (``short-iso-precise``,
redacted likewise), ``logs.json``: ``lines_requested``, ``redacted`` and per file ``path``,
``requested`` (explicit/default), ``resolved``, ``size``, ``inode``, ``mtime``, ``file``,
``lines_kept``, ``bytes_kept``, ``truncated`` (older lines were left), ``rotated_sibling``,
``sibling_lines``, ``rotated_during_read``, ``shrank_during_read``, ``redacted`` (secrets
replaced), ``errors``; and ``journal``. The manifest's ``redaction.logs`` counts them per file.
Overhead: ``tail_lines`` reads backwards with pread in growing blocks (64 KiB x4 up to
8 MiB) and finds line starts with ``rfind`` (memrchr), so a multi-GB or sparse file costs
what its last N lines cost; it never reads a whole file (a file without newlines stops at
the per-file cap). Compressed siblings must be decompressed to their end, in 1 MiB steps
keeping only the last lines. Redaction reads the tail through Python and examines only the
lines holding a trigger word; with ``logs.redact = false`` the tail is copied in the kernel.
Caveats: bytes are kept as they are (CRLF, NUL bytes, invalid UTF-8) but for redacted secrets,
and every line is kept (line numbers stay those of the source's tail); a last line without a
trailing newline counts as a line, as in GNU tail. Each file is opened once and read through
that descriptor: if it is rotated (renamed) meanwhile we keep reading the file we opened
(its inode is recorded, ``rotated_during_read`` says the path now names another file); if it
is truncated under us (copytruncate) the read restarts at the new size
(``shrank_during_read``). A missing or unreadable path is recorded with its error, never
fatal; it marks the result partial only when it was asked for explicitly (``--log``).
Targets' logs: the files each target holds open for writing whose names look like logs
(``*.log``, ``*.out``, ``*.err``, under a ``log``/``logs`` folder) are tailed too (``requested``
"target", ``target_pid``; through ``/proc/PID/root`` for a process in another mount namespace),
so a capture with ``--pid`` has the service's own log without naming it.
Options: ``[collectors.logs] max_files`` (default 50: a glob keeps its most recently
modified files), ``max_decompressed_bytes`` (default 4 GiB per compressed sibling),
``target_logs`` (true), ``max_target_logs`` (8 per target).
"""
from __future__ import annotations

import bz2
import errno
import glob as globmod
import gzip
import hashlib
import lzma
import os
import re
import stat
import threading
import time
from collections import deque
from datetime import datetime, timezone
from typing import IO, Any, Callable

from agent.collector import Collector, Option, Scope, which
from agent.redact import LOG_RULES, LogRedactor

BLOCK = 64 * 1024
MAX_BLOCK = 8 * 2**20
DECOMPRESS_STEP = 2**20


class FileShrank(OSError):
    """The file got shorter while we read it (truncated in place, e.g. logrotate copytruncate)."""


_scratch = threading.local()


def _buffer(size: int) -> memoryview:
    """A per-thread read buffer, kept between calls: fresh memory costs page faults."""
    buf = getattr(_scratch, "buf", None)
    if buf is None or len(buf) < size:
        buf = _scratch.buf = bytearray(size)
    return memoryview(buf)


def find_tail_start(fd: int, n: int, size: int, max_bytes: int | None = None) -> tuple[int, int]:
    """Where the last ``n`` lines of an open file start, reading backwards from ``size``.

    Args: fd: an open descriptor (read with pread; its offset is not moved). n: lines wanted
        (> 0). size: the end to count from. max_bytes: never look further back than this.
    Returns: (offset of the first kept byte, number of lines in [offset, size)); a last line
        without a newline counts, and so does a first line cut by ``max_bytes``.
    Errors: FileShrank if the file became shorter than ``size``; OSError from pread.
    """
    floor = 0 if max_bytes is None else max(0, size - max_bytes)
    if n <= 0 or size <= floor:
        return size, 0
    need = n            # line starts still to find, i.e. the newlines just before them
    pos = size
    block = BLOCK
    first = True
    while pos > floor:
        start = max(floor, pos - block)
        length = pos - start
        mv = _buffer(length)
        buf = mv.obj
        if os.preadv(fd, [mv[:length]], start) != length:
            raise FileShrank(f"file shrank below {pos} bytes while being read")
        end = length
        if first:
            first = False
            if buf[length - 1] == 10:
                end -= 1    # the trailing newline ends the last line; it does not start one
        rfind = buf.rfind
        while need:
            i = rfind(b"\n", 0, end)
            if i < 0:
                break
            need -= 1
            end = i
        if not need:
            return start + end + 1, n
        pos = start
        block = min(block * 4, MAX_BLOCK)
    return floor, n - need + 1


def tail_fd(fd: int, n: int, size: int | None = None, max_bytes: int | None = None) -> bytes:
    """The last ``n`` lines of an open file, read backwards with pread.

    Args: fd: an open descriptor (its offset is not used or moved). n: lines wanted.
        size: the size to read up to (default: fstat now), so lines appended meanwhile are
        not half-read. max_bytes: never read or return more than this many bytes from the end.
    Returns: the raw bytes of the last ``n`` lines exactly as ``tail -n`` prints them (a final
        line without newline counts as a line); the whole file if it has fewer lines; only the
        last ``max_bytes`` bytes if the lines are longer than that.
    Errors: FileShrank if the file became shorter than ``size``; OSError from pread.
    """
    if size is None:
        size = os.fstat(fd).st_size
    start, _ = find_tail_start(fd, n, size, max_bytes)
    data = os.pread(fd, size - start, start)
    if len(data) != size - start:
        raise FileShrank(f"file shrank below {size} bytes while being read")
    return data


def tail_lines(path: str | os.PathLike[str], n: int, max_bytes: int | None = None) -> bytes:
    """The last ``n`` lines of the file at ``path``, bytes as they are, reading from the end only.

    Args: path: a regular file. n: lines wanted. max_bytes: cap on what is read and returned.
    Returns: as ``tail -n N path`` prints them.
    Errors: OSError when the file cannot be opened or read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        return tail_fd(fd, n, max_bytes=max_bytes)
    finally:
        os.close(fd)


def copy_range(src: int, dst: int, offset: int, count: int) -> int:
    """Copy ``count`` bytes of ``src`` from ``offset`` to ``dst``'s current position, in the kernel
    when it can (copy_file_range, then sendfile), else through a buffer. Returns bytes copied."""
    done = 0
    for how in ("copy_file_range", "sendfile"):
        try:
            while done < count:
                if how == "copy_file_range":
                    k = os.copy_file_range(src, dst, count - done, offset + done)
                else:
                    k = os.sendfile(dst, src, offset + done, count - done)
                if k == 0:
                    return done
                done += k
            return done
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF):
                raise
    while done < count:
        chunk = os.pread(src, min(MAX_BLOCK, count - done), offset + done)
        if not chunk:
            break
        os.write(dst, chunk)
        done += len(chunk)
    return done


def _zstd_open(path: str) -> IO[bytes]:
    import zstandard
    return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)


OPENERS: dict[str, Callable[[str], IO[bytes]]] = {
    ".gz": lambda p: gzip.open(p, "rb"), ".xz": lambda p: lzma.open(p, "rb"),
    ".bz2": lambda p: bz2.open(p, "rb"), ".zst": _zstd_open}


def tail_compressed(path: str, n: int, *, max_bytes: int | None = None, max_input: int = 4 * 2**30,
                    deadline: float | None = None) -> bytes:
    """The last ``n`` lines of a compressed file, decompressed streaming (only the tail is kept).

    Errors: OSError/EOFError/ValueError from the decompressor; TimeoutError if ``deadline``
    (monotonic) passes or more than ``max_input`` bytes come out before the end.
    """
    opener = OPENERS[os.path.splitext(path)[1]]
    keep: deque[bytes] = deque()
    kept_nl = 0           # newlines in keep[1:] (the first chunk may be dropped when these suffice)
    total = 0
    with opener(path) as fh:
        while True:
            chunk = fh.read(DECOMPRESS_STEP)
            if not chunk:
                break
            total += len(chunk)
            if total > max_input:
                raise TimeoutError(f"more than {max_input} bytes decompressed; gave up")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("out of time while decompressing")
            if keep:
                kept_nl += chunk.count(b"\n")
            keep.append(chunk)
            while len(keep) > 1 and kept_nl > n:       # the rest still holds n full lines
                keep.popleft()
                kept_nl -= keep[0].count(b"\n")
    data = b"".join(keep)
    tail = _tail_bytes(data, n)
    return tail[-max_bytes:] if max_bytes is not None and len(tail) > max_bytes else tail


def _tail_bytes(data: bytes, n: int) -> bytes:
    """``tail -n`` of a bytes object (same rules as ``tail_fd``)."""
    if n <= 0 or not data:
        return b""
    end = len(data) - 1 if data.endswith(b"\n") else len(data)
    for _ in range(n):
        i = data.rfind(b"\n", 0, end)
        if i < 0:
            return data
        end = i
    return data[end + 1:]


def count_lines(data: bytes) -> int:
    """Lines in ``data`` as tail counts them: newlines, plus one for a final unterminated line."""
    if not data:
        return 0
    return data.count(b"\n") + (0 if data.endswith(b"\n") else 1)


_ROTATED = re.compile(r"^(?P<base>.+?)(?:\.(?P<n>\d{1,4})|-(?P<date>\d{8,10})|\.(?P<isodate>\d{4}-\d{2}-\d{2}))"
                      r"(?P<ext>\.gz|\.xz|\.bz2|\.zst)?$")


def rotated_sibling(path: str) -> str | None:
    """The newest rotated file of ``path``.

    Args: path: a live log file.
    Returns: ``name.1`` beats ``name.2`` (numbered rotation: lower is newer), the latest date
        wins among ``name-YYYYMMDD[HH]`` and ``name.YYYY-MM-DD``; if both schemes are present,
        the newer file by mtime. Compressed (.gz .xz .bz2 .zst) or not. None if there is none.
    Errors: none (an unreadable folder means no sibling).
    """
    d, base = os.path.split(path)
    try:
        names = os.listdir(d or ".")
    except OSError:
        return None
    numbered: list[tuple[int, str]] = []
    dated: list[tuple[str, str]] = []
    for name in names:
        m = _ROTATED.match(name)
        if not m or m.group("base") != base:
            continue
        full = os.path.join(d, name)
        if m.group("n") is not None:
            numbered.append((int(m.group("n")), full))
        else:
            dated.append(((m.group("date") or m.group("isodate").replace("-", "")), full))
    best = [p for p in (min(numbered)[1] if numbered else None, max(dated)[1] if dated else None) if p]
    if len(best) == 2:
        try:
            best.sort(key=lambda p: os.stat(p).st_mtime, reverse=True)
        except OSError:
            pass
    return best[0] if best else None


def out_name(path: str, used: set[str]) -> str:
    """The bundle name of a log's tail: ``files/`` + the path with unsafe characters as ``_``;
    long names are cut and suffixed with a hash, a name already used gets ``~2``, ``~3``..."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", path.lstrip("/")) or "_"
    if name.startswith("."):
        name = "_" + name
    if len(name) > 180:
        name = name[:160] + "~" + hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    cand, i = name, 1
    while cand in used:
        i += 1
        cand = f"{name}~{i}"
    used.add(cand)
    return "files/" + cand


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _err(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"


def _tail_any(ctx, sib: str, n: int, max_bytes: int) -> bytes:
    if os.path.splitext(sib)[1] in OPENERS:
        return tail_compressed(sib, n, max_bytes=max_bytes, deadline=ctx.deadline - 2.0,
                               max_input=int(ctx.options.get("max_decompressed_bytes", 4 * 2**30)))
    return tail_lines(sib, n, max_bytes=max_bytes)


def _redact_range(fd: int, out: IO[bytes], offset: int, count: int, red: LogRedactor) -> int:
    """Copy ``count`` bytes of ``fd`` from ``offset`` into ``out`` through the redactor; returns bytes read."""
    done = 0
    while done < count:
        chunk = os.pread(fd, min(MAX_BLOCK, count - done), offset + done)
        if not chunk:
            break
        out.write(red.feed(chunk))
        done += len(chunk)
    return done


def redact_file(path: os.PathLike[str] | str) -> int:
    """Rewrite a captured log through the redactor (streaming, atomically); returns how many secrets."""
    red = LogRedactor()
    tmp = f"{path}.redacting"
    with open(path, "rb") as src, open(tmp, "wb") as out:
        for chunk in iter(lambda: src.read(MAX_BLOCK), b""):
            out.write(red.feed(chunk))
        out.write(red.finish())
    os.replace(tmp, path)
    return red.count


def tail_one(ctx, path: str, n: int, requested: str, used: set[str], redact: bool = True) -> dict[str, Any]:
    """Tail one log into ``files/``; returns its logs.json entry (errors recorded, never raised).

    The live file's tail is located by ``find_tail_start`` and copied to the bundle through the
    descriptor opened first: through the redactor (``agent.redact.LogRedactor``), or with
    ``redact`` off in the kernel (copy_file_range), bytes as they are.
    """
    entry: dict[str, Any] = {"path": path, "requested": requested, "errors": []}
    cap = ctx.limits.max_file_bytes
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)   # NONBLOCK: a FIFO must not hang us
    except OSError as exc:
        entry["errors"].append(_err(exc))
        return entry
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = ("directory" if stat.S_ISDIR(st.st_mode) else "fifo" if stat.S_ISFIFO(st.st_mode)
                    else "socket" if stat.S_ISSOCK(st.st_mode) else "device")
            entry["errors"].append(f"not a regular file ({kind})")
            return entry
        entry.update(resolved=os.path.realpath(path), size=st.st_size, inode=st.st_ino, device=st.st_dev,
                     mtime=_iso(st.st_mtime), rotated_sibling=None)
        data: bytes | None = None            # a compressed live file is decompressed into memory
        size = st.st_size
        if os.path.splitext(path)[1] in OPENERS:
            data = _tail_any(ctx, path, n, cap)
            start, lines, live_bytes = 0, count_lines(data), len(data)
            entry["decompressed"] = True
        else:
            for _ in range(3):
                try:
                    start, lines = find_tail_start(fd, n, size, max_bytes=cap)
                    break
                except FileShrank:           # truncated in place (copytruncate): start again at its new end
                    entry["shrank_during_read"] = True
                    size = os.fstat(fd).st_size
            else:
                raise OSError("the file kept shrinking while being read")
            live_bytes = size - start
        older = b""
        if lines < n and live_bytes < cap:
            sib = rotated_sibling(path)
            if sib:
                entry["rotated_sibling"] = sib
                try:
                    older = _tail_any(ctx, sib, n - lines, cap - live_bytes)
                    if older and not older.endswith(b"\n"):
                        older += b"\n"      # keep the sibling's last line apart from the live file's first
                    entry["sibling_lines"] = count_lines(older)
                except (OSError, EOFError, ValueError, TimeoutError, ImportError) as exc:
                    entry["errors"].append(f"rotated sibling {sib}: {_err(exc)}")
        total = len(older) + live_bytes
        room = total + (total // 8 if redact else 0)      # a mask can be longer than what it hides
        if not ctx.claim(room):
            entry["errors"].append("left out: the store reached its free-space reserve")
            ctx.partial(f"log {path} left out: the store reached its free-space reserve")
            return entry
        name = out_name(path, used)
        red = LogRedactor() if redact else None
        with open(ctx.path(name), "wb") as out:
            if red is None:
                out.write(older)
                if data is not None:
                    out.write(data)
                    copied = len(data)
                else:
                    out.flush()
                    copied = copy_range(fd, out.fileno(), start, live_bytes)
            else:                            # through the redactor: the same lines, secrets replaced
                out.write(red.feed(older))
                if data is not None:
                    out.write(red.feed(data))
                    copied = len(data)
                else:
                    copied = _redact_range(fd, out, start, live_bytes, red)
                out.write(red.finish())
        if copied < live_bytes:
            entry["shrank_during_read"] = True
            entry["errors"].append(f"the file shrank while being copied: {copied} of {live_bytes} bytes kept")
        entry.update(file=name, lines_kept=entry.get("sibling_lines", 0) + lines if copied == live_bytes
                     else count_lines(ctx.path(name).read_bytes()),
                     bytes_kept=ctx.path(name).stat().st_size,
                     truncated=(start > 0) if data is None else None)
        if red is not None:
            entry["redacted"] = red.count
        ctx.release(room - entry["bytes_kept"])
    except (OSError, EOFError, ValueError, TimeoutError, ImportError) as exc:
        entry["errors"].append(_err(exc))
        return entry
    finally:
        os.close(fd)
    try:   # rotated underneath? the path now names another file
        now = os.stat(path)
        entry["rotated_during_read"] = (now.st_ino, now.st_dev) != (entry["inode"], entry["device"])
    except OSError:
        entry["rotated_during_read"] = True
    return entry


def expand(pattern: str, max_files: int) -> tuple[list[str], list[str]]:
    """A path or glob to the files to tail and the matches left out.

    A glob keeps its ``max_files`` most recently modified matches, and leaves out the rotated
    siblings of files it also matched (they are read only to fill a short live file).
    """
    if not globmod.has_magic(pattern):
        return [pattern], []
    matches = sorted(set(globmod.glob(pattern)))
    live = set(matches)
    keep, dropped = [], []
    for m in matches:
        r = _ROTATED.match(os.path.basename(m))
        if r and os.path.join(os.path.dirname(m), r.group("base")) in live:
            dropped.append(m)
            continue
        keep.append(m)

    def mtime(p: str) -> float:
        try:
            return os.stat(p).st_mtime
        except OSError:
            return 0.0
    keep.sort(key=mtime, reverse=True)
    return sorted(keep[:max_files]), dropped + keep[max_files:]


def journal_files() -> list[str]:
    """The system journal's files (persistent or volatile), if any."""
    out = []
    for d in ("/var/log/journal", "/run/log/journal"):
        out += globmod.glob(f"{d}/*/*.journal") + globmod.glob(f"{d}/*/*.journal~")
    return out


MAX_TARGET_LOGS = 8
LOG_NAME = re.compile(r"(?:\.log(?:\.\d+)?|\.out|\.err|/log/[^/]+|/logs/[^/]+)$")


def target_logs(targets: list[dict[str, Any]], limit: int) -> list[tuple[int, str, str]]:
    """The log files each target writes: regular files it holds open for writing, named like logs (``*.log``,
    ``*.out``, ``*.err``, under a ``log``/``logs`` folder). As (pid, the path to read, the path as the process
    sees it): a process in another mount namespace is read through ``/proc/PID/root``."""
    out: list[tuple[int, str, str]] = []
    for t in targets:
        pid = t.get("pid")
        if not isinstance(pid, int):
            continue
        other_mnt = ((t.get("namespaces") or {}).get("mnt") or {}).get("shared_with_agent") is False
        found = 0
        try:
            fds = sorted(os.listdir(f"/proc/{pid}/fd"), key=lambda x: int(x) if x.isdigit() else 0)
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                flags = 0
                with open(f"/proc/{pid}/fdinfo/{fd}") as fh:
                    for line in fh:
                        if line.startswith("flags:"):
                            flags = int(line.split()[1], 8)
            except (OSError, ValueError):
                continue
            if not link.startswith("/") or link.startswith(("/dev/", "/proc/")) or link.endswith(" (deleted)"):
                continue
            if flags & os.O_ACCMODE == os.O_RDONLY or not LOG_NAME.search(link):
                continue
            read = f"/proc/{pid}/root{link}" if other_mnt else link
            if not stat.S_ISREG(_mode(read)):
                continue
            out.append((pid, read, link))
            found += 1
            if found >= limit:
                break
    return out


def _mode(path: str) -> int:
    try:
        return os.stat(path).st_mode
    except OSError:
        return 0


def collect(ctx) -> None:
    n = int(ctx.capture.get("log_lines") or 10000)
    paths = list(ctx.capture.get("log_paths") or [])
    explicit = set(ctx.capture["explicit_log_paths"]) if "explicit_log_paths" in ctx.capture else set(paths)
    max_files = int(ctx.options.get("max_files", 50))
    redact = bool(ctx.capture.get("log_redact", True))
    seen: set[str] = set()
    used: set[str] = set()
    entries: list[dict[str, Any]] = []
    for pattern in paths:
        requested = "explicit" if pattern in explicit else "default"
        matches, dropped = expand(pattern, max_files)
        if not matches:
            entries.append({"path": pattern, "requested": requested, "glob": True,
                            "errors": ["no file matches"]})
            if requested == "explicit":
                ctx.partial(f"log {pattern}: no file matches")
            continue
        for path in matches:
            if path in seen:
                continue
            seen.add(path)
            e = tail_one(ctx, path, n, requested, used, redact)
            if path != pattern:
                e["glob"] = pattern
            entries.append(e)
            if e["errors"] and requested == "explicit" and "file" not in e:
                ctx.partial(f"log {path}: {e['errors'][0]}")
        if dropped:
            entries.append({"path": pattern, "requested": requested, "glob": True, "errors": [],
                            "not_tailed": dropped[:200], "not_tailed_count": len(dropped)})
    if ctx.options.get("target_logs", True):
        for pid, path, seen_as in target_logs(ctx.capture.get("targets") or [],
                                              int(ctx.options.get("max_target_logs", MAX_TARGET_LOGS))):
            if path in seen or seen_as in seen:
                continue
            seen.add(path)
            e = tail_one(ctx, path, n, "target", used, redact)
            e["target_pid"] = pid
            if seen_as != path:
                e["path"], e["read_via"] = seen_as, path
            entries.append(e)
    journal: dict[str, Any] = {"requested": bool(ctx.capture.get("journal", True))}
    if not journal["requested"]:
        journal["reason"] = "logs.journal is off"
    elif not which("journalctl"):
        journal["reason"] = "journalctl not installed"
    elif not journal_files():
        journal["reason"] = "no journal files in /var/log/journal or /run/log/journal"
    else:
        since = int(ctx.capture.get("journal_since_s") or 3600)
        argv = ["journalctl", "--no-pager", "-o", "short-iso-precise", "--since", f"-{since}s", "-n", str(n)]
        res = ctx.run(argv, stdout="journal.txt", timeout_s=min(20.0, max(1.0, ctx.remaining() - 1)))
        journal.update(argv=argv, returncode=res.returncode, killed=res.killed, file="journal.txt")
        if res.ok:
            with open(ctx.path("journal.txt"), "rb") as fh:
                journal["lines"] = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(2**20), b""))
        else:
            journal["reason"] = res.error or f"journalctl exited {res.returncode}"
        if redact and ctx.path("journal.txt").exists():
            size = ctx.path("journal.txt").stat().st_size       # redacted into a copy: room for it first
            if ctx.claim(size + size // 8):
                journal["redacted"] = redact_file(ctx.path("journal.txt"))
                ctx.release(size + size // 8 - max(0, ctx.path("journal.txt").stat().st_size - size))
            else:
                ctx.path("journal.txt").unlink()
                journal.update(file=None, reason="left out: no room above the store's reserve to redact it")
                ctx.partial("journal.txt left out: the store reached its free-space reserve")
    ctx.write_json("logs.json", {"lines_requested": n, "redacted": redact, "files": entries, "journal": journal})
    files = {f"collectors/logs/{e['file']}": e.get("redacted", 0) for e in entries if "file" in e}
    if "redacted" in journal:
        files["collectors/logs/journal.txt"] = journal["redacted"]
    ctx.note(files=sum(1 for e in entries if "file" in e), errors=sum(1 for e in entries if e["errors"]),
             journal=journal.get("file") is not None,
             redaction={"count": sum(files.values()), "rules": LOG_RULES, "files": files} if redact
             else {"count": 0, "raw": True, "why": "logs.redact = false"})


OPTIONS = {
    "max_files": Option(50, int, "Files one glob may bring in (its most recently modified ones)."),
    "max_decompressed_bytes": Option(4 * 2**30, int, "Most bytes decompressed from one compressed rotated sibling."),
    "target_logs": Option(True, bool, "Also tail the log files the targets have open (found from their descriptors)."),
    "max_target_logs": Option(8, int, "Most log files tailed per target with target_logs."),
}

COLLECTOR = Collector(
    name="logs", summary="last N lines of configured logs and of the logs the targets write (+ newest rotated "
                         "sibling), and the journal",
    scope=Scope.HOST, collect=collect, timeout_s=30, volatility=60, options=OPTIONS)
