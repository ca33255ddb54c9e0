"""The store's free-space reserve: one rule for every byte a capture writes.

The rule (docs/bundle.md, "The reserve rule"): a capture never leaves less than the reserve
(``store.reserve_bytes`` / ``store.reserve_percent``, the larger) free on the store's
filesystem. Where it sits:

- ``capture`` refuses to start under the reserve, and gives collectors a stricter one: the
  reserve plus ``headroom(room)``, the space kept for packing the bundle (its manifest, its
  index, tar and zstd framing, the sidecars), so evidence stops before the packing could not fit;
- every write of a collector claims its bytes first from the capture's ``Budget`` (the room
  above the collectors' reserve when collection started, shared by all collector processes)
  and checks the free space: ``Context.write_text/write_bytes/copy``, ``open_out`` (streams,
  claimed 256 KiB ahead), ``Context.claim`` for collectors that write by other means; a refusal
  raises ``ReserveReached``, which the runner records as ``partial`` with what was left out.
  A helper (``Context.run``) gets an allowance claimed for it (half of what remains, or what its
  caller asks) as its ``RLIMIT_FSIZE``, and gives back what it did not write; a collector
  process gets ``RLIMIT_FSIZE`` = what the budget has left at its start, so a collector that
  writes by other means than its Context cannot take more than that in one file either; the
  runner stops every running collector when the reserve is crossed all the same (by another
  program on the host);
- ``bundle.pack`` checks before every write of the archive and, when the staged evidence and
  its bundle would not fit side by side, removes each staged file once it is in the archive;
- the capture's log and the collectors' logs go through ``QuietFileHandler``: a record that
  would cross the reserve, or meet a full disk, is dropped silently (counted), never a
  "Logging error" traceback per record.

A capture that cannot fit anyway ends with exit 3 and one line; its partial archive and
staging folder are removed, so nothing is left that ``verify`` would take for a whole bundle.
"""
from __future__ import annotations

import errno
import logging
import os
import resource
from pathlib import Path

NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
STREAM_CHECK = 256 * 1024          # bytes written to a stream between two checks


class ReserveReached(Exception):
    """Writing would cross the store's free-space reserve: the message says what was left out."""


def free_bytes(path: str | os.PathLike[str]) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def reserve_for(path: str | os.PathLike[str], reserve_bytes: int, reserve_percent: float) -> int:
    """The reserve of the filesystem holding ``path``: the larger of the two settings."""
    st = os.statvfs(path)
    return max(reserve_bytes, int(st.f_blocks * st.f_frsize * reserve_percent / 100))


def room(path: str | os.PathLike[str], reserve: int) -> int:
    """Bytes that may still be written on ``path``'s filesystem before the reserve (may be negative)."""
    try:
        return free_bytes(path) - reserve
    except OSError:
        return 1 << 62          # not measurable: the write itself will say


def headroom(room_bytes: int) -> int:
    """Space kept for packing when collectors stop: a quarter of the room, from 512 KiB to 64 MiB."""
    return min(64 * 2**20, max(512 * 1024, room_bytes // 4))


def limit_file_size(room_bytes: int) -> None:
    """In a child process: no file it (or its helpers) writes may grow past ``room_bytes``; a write past it
    fails with EFBIG (SIGXFSZ ignored) instead of filling the disk."""
    import signal
    limit = max(0, room_bytes)
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    except (OSError, ValueError):
        pass


def is_full(exc: BaseException) -> bool:
    """An OSError that means "no room": disk full, quota, or the file size limit of ``limit_file_size``."""
    return isinstance(exc, OSError) and exc.errno in NO_SPACE


class Budget:
    """The space a capture's collectors may write, shared by every collector process and helper.

    Free space alone cannot keep writers in parallel under the reserve: two of them may each see
    room for what they are about to write, and write both. So the runner fixes the room above the
    collectors' reserve when collection starts (``total``) in a small file of the staging folder,
    and every write claims its bytes from it first, under ``flock`` (released by the kernel if a
    collector is killed holding it): ``claim(n)`` grants all of ``n`` or nothing; a helper's
    allowance that it did not use is given back with ``release``.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    @classmethod
    def create(cls, path: str | os.PathLike[str], total: int) -> "Budget":
        Path(path).write_text(f"{max(0, total)} 0\n")
        return cls(path)

    def _update(self, fn) -> int:
        import fcntl
        with open(self.path, "r+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            total, used = (int(x) for x in fh.read().split())
            used2 = fn(total, used)
            if used2 != used:
                fh.seek(0)
                fh.write(f"{total} {used2}\n")
                fh.truncate()
            return total - used2

    def claim(self, n: int) -> bool:
        """Take ``n`` bytes from the budget: True if granted (all of them), False if they are not there."""
        granted = [False]

        def take(total: int, used: int) -> int:
            if used + n <= total:
                granted[0] = True
                return used + n
            return used
        try:
            self._update(take)
        except (OSError, ValueError):
            return True              # no budget to consult (the statvfs check still applies)
        return granted[0]

    def take(self, n: int) -> None:
        """Count ``n`` bytes that were written past a claim (a helper's stdout and stderr both at its limit)."""
        if n > 0:
            try:
                self._update(lambda total, used: used + n)
            except (OSError, ValueError):
                pass

    def release(self, n: int) -> None:
        if n > 0:
            try:
                self._update(lambda total, used: max(0, used - n))
            except (OSError, ValueError):
                pass

    def remaining(self) -> int:
        try:
            return self._update(lambda total, used: used)
        except (OSError, ValueError):
            return 1 << 62


class GuardedFile:
    """A file opened for writing evidence whose writes stop at the reserve (``ReserveReached``).

    Space is claimed ahead, ``STREAM_CHECK`` bytes at a time, through ``claim`` (the collector's
    ``Context.claim``: the shared budget and the free space); what was claimed and not written is
    given back at close through ``release``. ``name`` is named in the error.
    """

    def __init__(self, fh, name: str, claim, release):
        self.fh, self.name, self.claim, self.release = fh, name, claim, release
        self.claimed = self.written = 0

    def write(self, data) -> int:
        n = len(data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data)
        if self.written + n > self.claimed:
            want = max(STREAM_CHECK, self.written + n - self.claimed)
            if not self.claim(want):
                raise ReserveReached(f"{self.name} cut short: the store reached its free-space reserve")
            self.claimed += want
        try:
            out = self.fh.write(data)
        except OSError as exc:
            if is_full(exc):
                raise ReserveReached(f"{self.name} cut short: no space left on the store "
                                     f"({exc.strerror})") from None
            raise
        self.written += n
        return out

    def close(self) -> None:
        self.fh.close()
        self.release(self.claimed - self.written)
        self.claimed = self.written

    def __getattr__(self, name: str):
        return getattr(self.fh, name)

    def __enter__(self) -> "GuardedFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class QuietFileHandler(logging.FileHandler):
    """A log file that never crosses the store's reserve and never prints a "Logging error" traceback:
    a record that does not fit (reserve reached, disk full) is dropped and counted in ``dropped``."""

    def __init__(self, path: str | os.PathLike[str], reserve: int = 0):
        self.reserve = reserve
        self.dropped = 0
        super().__init__(path)

    def emit(self, record: logging.LogRecord) -> None:
        if self.reserve and room(os.path.dirname(self.baseFilename) or ".", self.reserve) < 64 * 1024:
            self.dropped += 1
            return
        super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        self.dropped += 1
