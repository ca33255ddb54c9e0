"""``goldenhour record``: the flight recorder's loop, one small process of its own.

Every ``interval_s`` (5 s) it reads one sample (``sampler``; processes and cgroups every
``process_interval_s``), stamps it with the wall clock, CLOCK_MONOTONIC, CLOCK_BOOTTIME and
the boot ID, and appends it to the ring file (``ring``). Between samples it answers its Unix
socket (``status``, ``tail`` of the in-memory copy, ``mark``). It is separate from the
daemon so a daemon restart or crash loses nothing, and systemd caps it on its own.

What it writes down besides samples (event records, ``{"ev": ...}``):
- ``start``: why it started where it did (new ring, resumed after seq N, ring moved aside
  because it was foreign or damaged, boot ID changed) and the gap since the last record;
- ``clock_step``: CLOCK_REALTIME moved against CLOCK_MONOTONIC by more than a second
  (``suspend`` when CLOCK_BOOTTIME moved with it: the machine slept);
- ``late``: a sample came more than one interval late (the recorder was stopped or starved);
- ``process_interval``: the process scan cost more than 2 % of its interval, which grew;
- ``ring_failed`` / ``ring_recovered``: the ring could not be written (I/O error, full disk
  at creation); samples then live only in memory (the last ``memory_minutes``) and the
  socket serves them; it retries every minute;
- ``capture``: a capture began (the ``history`` collector says so), so its own load is
  labelled rather than mistaken for a symptom;
- ``stop``: a clean stop (SIGTERM/SIGINT). A recorder killed mid-write leaves no ``stop``;
  the next ``start`` states the gap.

Durability and disk writes: records reach the ring file in whole pages as they fill (about every
40 s at the defaults) and the tail every ``sync_s`` (60 s) and at stop, each followed by an
fdatasync, so every page of the file is written about once (bench/README.md: recorder). Until
then they wait in a journal beside the socket (the unit's RuntimeDirectory, a tmpfs): a killed
or crashed recorder loses nothing (the next start puts them back), a crashed machine at most
``sync_s``. Captures read the ring and ask the socket (or read the journal) for the rest.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import select
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable

from agent import __version__, sdnotify
from agent.recorder import ring as ringmod
from agent.recorder.sampler import Sampler

log = logging.getLogger("goldenhour.recorder")
SYNC_BYTES = 64 * 1024
RETRY_S = 60.0
CLOCK_STEP_S = 1.0
ADAPT_SHARE = 0.02          # a process scan above 2 % of its interval makes the interval grow
MAX_PROCESS_INTERVAL_S = 60.0


@dataclass
class Settings:
    ring_path: str
    ring_bytes: int = 64 * 2**20
    interval_s: float = 5.0
    process_interval_s: float = 10.0
    sync_s: float = 60.0
    top_n: int = 10
    process_names: bool = True
    max_cgroups: int = 40
    socket_path: str = ""
    memory_minutes: float = 15.0
    reserve_bytes: int = 0               # free space the ring must leave on its filesystem
    journal_path: str | None = None      # records not in the ring yet (default: beside the socket, a tmpfs)
    proc: str = "/proc"
    cgroup_root: str = "/sys/fs/cgroup"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode()


class Clock:
    """The three clocks of one instant, in ns. Replaceable in tests (a wall clock that steps)."""

    def now(self) -> tuple[int, int, int]:
        return time.time_ns(), time.monotonic_ns(), time.clock_gettime_ns(time.CLOCK_BOOTTIME)


class Recorder:
    def __init__(self, st: Settings, *, clock: Clock | None = None, boot: str | None = None,
                 on_sample: Callable[[dict[str, Any]], None] | None = None):
        self.st = st
        self.clock = clock or Clock()
        self.boot = boot if boot is not None else ringmod.boot_id()
        self.sampler = Sampler(st.proc, st.cgroup_root, top_n=st.top_n, process_names=st.process_names,
                               max_cgroups=st.max_cgroups, exclude_pids=())
        self.writer: ringmod.RingWriter | None = None
        self.ring_state = "not opened"
        self.ring_error = ""
        self.ring_retry_at = 0.0
        self.seq = 0                       # next sequence number (the writer's when the ring works)
        self.tail: collections.deque[tuple[int, int, int, bytes]] = collections.deque(
            maxlen=max(2, int(st.memory_minutes * 60 / max(st.interval_s, 0.05)) + 8))
        self.dropped = 0                   # records that reached memory only
        self.samples = 0
        self.proc_interval = st.process_interval_s
        self.last_proc = -1e18
        self.last_sync = time.monotonic()
        self.prev_offsets: tuple[int, int] | None = None
        self.stopping = False
        self.server: socket.socket | None = None
        self.on_sample = on_sample
        self.last_sample_ms = 0.0
        self.started_wall = 0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)

    # -- ring ---------------------------------------------------------------------------
    def _ring_size(self) -> int:
        """The ring's size: as configured, or what the filesystem can hold above the reserve."""
        want = self.st.ring_bytes
        d = os.path.dirname(self.st.ring_path) or "."
        try:
            os.makedirs(d, mode=0o700, exist_ok=True)
            vfs = os.statvfs(d)
        except OSError:
            return want
        if os.path.exists(self.st.ring_path):
            return want                    # an existing ring keeps its size
        room = vfs.f_bavail * vfs.f_frsize - self.st.reserve_bytes
        return min(want, room)

    def open_ring(self, why: str = "start") -> dict[str, Any]:
        info: dict[str, Any] = {}
        size = self._ring_size()
        if size < ringmod.MIN_RING:
            self._ring_failed(f"no room for a ring on {os.path.dirname(self.st.ring_path)}: "
                              f"{max(size, 0)} bytes free above the reserve")
            return {"error": self.ring_error}
        w = ringmod.RingWriter(self.st.ring_path, size, boot=self.boot)
        try:
            info = w.open()
            info.update(w.open_journal(journal_path(self.st)))
        except ringmod.RingError as exc:
            if "in use" in str(exc):
                raise                      # another recorder writes this ring: do not record beside it
            self._ring_failed(f"cannot open {self.st.ring_path}: {exc}")
            return {"error": self.ring_error}
        except OSError as exc:
            self._ring_failed(f"cannot open {self.st.ring_path}: {getattr(exc, 'strerror', None) or exc}")
            return {"error": self.ring_error}
        if w.next_seq < self.seq:          # records kept only in memory meanwhile: keep numbers unique
            w.next_seq = self.seq
            w.seg = None
        self.writer = w
        self.seq = w.next_seq
        self.ring_state, self.ring_error = "ok", ""
        if size < self.st.ring_bytes and info.get("created"):
            info["smaller"] = (f"ring made {size} bytes instead of {self.st.ring_bytes}: "
                               "the filesystem had no more room above its reserve")
        return info

    def _ring_failed(self, why: str) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except OSError:
                pass
        self.writer = None
        self.ring_state, self.ring_error = "memory only", why
        self.ring_retry_at = time.monotonic() + RETRY_S
        log.error("ring: %s (samples kept in memory, retry in %.0f s)", why, RETRY_S)

    def _append(self, kind: int, data: bytes, wall: int, mono: int, keyframe: bool = False) -> None:
        self.tail.append((self.seq, wall, mono, data))
        if self.writer is not None:
            try:
                self.writer.append(kind, data, mono, wall, keyframe=keyframe)
                self.seq = self.writer.next_seq
                return
            except (OSError, ValueError) as exc:
                self._ring_failed(f"write failed: {getattr(exc, 'strerror', None) or exc}")
        self.seq += 1
        self.dropped += 1

    def event(self, ev: str, **fields: Any) -> None:
        wall, mono, bt = self.clock.now()
        body = {"ev": ev, "t": round(wall / 1e9, 3), "m": round(mono / 1e9, 3), "boot": self.boot, **fields}
        self._append(ringmod.EVENT, _dumps(body), wall, mono)

    # -- one sample --------------------------------------------------------------------
    def sample(self) -> dict[str, Any]:
        c0 = time.process_time()
        wall, mono, bt = self.clock.now()
        self._check_clock(wall, mono, bt)
        s: dict[str, Any] = {"v": 1, "t": round(wall / 1e9, 3), "m": round(mono / 1e9, 3),
                             "bt": round(bt / 1e9, 3), "boot": self.boot, "iv": self.st.interval_s}
        s.update(self.sampler.host())
        mono_s = mono / 1e9
        if mono_s - self.last_proc >= self.proc_interval - self.st.interval_s / 2:
            p0 = time.process_time()
            s["proc"] = self.sampler.processes(mono_s)
            s["cg"] = self.sampler.cgroups()
            self.last_proc = mono_s
            self._adapt(time.process_time() - p0)
        ru = os.times()
        s["self"] = {"cpu_s": round(ru.user + ru.system, 3), "rss_kb": _rss_kb(), "sample_ms": self.last_sample_ms,
                     "dropped": self.dropped, "ring": self.ring_state, "pint": self.proc_interval}
        data = _dumps(s)
        self._append(ringmod.SAMPLE, data, wall, mono, keyframe="proc" in s)
        self.samples += 1
        self.last_sample_ms = round((time.process_time() - c0) * 1000, 2)
        if self.on_sample:
            self.on_sample(s)
        return s

    def _check_clock(self, wall: int, mono: int, bt: int) -> None:
        off, boff = wall - mono, bt - mono
        if self.prev_offsets is not None:
            step = (off - self.prev_offsets[0]) / 1e9
            slept = (boff - self.prev_offsets[1]) / 1e9
            if abs(step) > CLOCK_STEP_S:
                if abs(step - slept) <= CLOCK_STEP_S and slept > 0:
                    self.event("suspend", slept_s=round(slept, 3))
                else:
                    self.event("clock_step", step_s=round(step, 3),
                               direction="backwards" if step < 0 else "forwards")
        self.prev_offsets = (off, boff)

    def _adapt(self, scan_cpu_s: float) -> None:
        if scan_cpu_s > ADAPT_SHARE * self.proc_interval and self.proc_interval < MAX_PROCESS_INTERVAL_S:
            old = self.proc_interval
            self.proc_interval = min(MAX_PROCESS_INTERVAL_S, self.proc_interval * 2)
            self.event("process_interval", old_s=old, new_s=self.proc_interval, scan_cpu_ms=round(scan_cpu_s * 1000, 2),
                       why="the process scan cost more than 2 % of its interval")

    # -- socket ------------------------------------------------------------------------------
    def open_socket(self) -> None:
        path = self.st.socket_path
        if not path:
            return
        try:
            os.makedirs(os.path.dirname(path) or ".", mode=0o750, exist_ok=True)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            old = os.umask(0o177)
            try:
                srv.bind(path)
            finally:
                os.umask(old)
            os.chmod(path, 0o600)
            srv.listen(8)
            srv.setblocking(False)
            self.server = srv
        except OSError as exc:
            log.error("socket %s: %s (the capture reads the ring file instead)", path, exc.strerror or exc)
            self.server = None

    def _serve_one(self) -> None:
        assert self.server is not None
        try:
            conn, _ = self.server.accept()
        except (BlockingIOError, InterruptedError):
            return
        with conn:
            conn.settimeout(0.5)
            try:
                buf = b""
                while b"\n" not in buf and len(buf) < 4096:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
                req = json.loads(buf.split(b"\n", 1)[0] or b"{}")
                conn.sendall(self.answer(req if isinstance(req, dict) else {}) + b"\n")
            except (OSError, ValueError):
                return

    def answer(self, req: dict[str, Any]) -> bytes:
        op = req.get("op")
        if op == "status":
            return _dumps(self.status())
        if op == "tail":
            since = int(float(req.get("since") or 0) * 1e9)
            after = req.get("after_seq")
            recs = [(s, w, m, d) for s, w, m, d in self.tail
                    if w >= since and (after is None or s > int(after))]
            parts = [b'{"seq":%d,"wall_ns":%d,"mono_ns":%d,"data":%s}' % (s, w, m, d) for s, w, m, d in recs]
            return b'{"ok":true,"boot":' + _dumps(self.boot) + b',"records":[' + b",".join(parts) + b"]}"
        if op == "mark":
            self.event("capture", **{k: str(v)[:200] for k, v in req.items() if k in ("incident", "bundle", "note")})
            return b'{"ok":true}'
        return b'{"ok":false,"error":"unknown op"}'

    def status(self) -> dict[str, Any]:
        return {"ok": True, "pid": os.getpid(), "version": __version__, "ring": self.st.ring_path,
                "ring_state": self.ring_state, "ring_error": self.ring_error,
                "interval_s": self.st.interval_s, "process_interval_s": self.proc_interval,
                "samples": self.samples, "next_seq": self.seq, "dropped": self.dropped,
                "memory_records": len(self.tail), "boot": self.boot, "started": self.started_wall / 1e9,
                "bytes_written": self.writer.bytes_written if self.writer else 0}

    # -- loop --------------------------------------------------------------------------------
    def run(self, *, max_samples: int | None = None, duration_s: float | None = None) -> int:
        """Sample until SIGTERM/SIGINT (or ``max_samples``/``duration_s``); returns the exit status."""
        self.started_wall = time.time_ns()
        info = self.open_ring()
        self.open_socket()
        start = {"pid": os.getpid(), "version": __version__, "interval_s": self.st.interval_s,
                 "process_interval_s": self.st.process_interval_s, "ring_state": self.ring_state}
        for k in ("created", "resumed", "moved_aside", "reason", "last_seq", "last_boot", "smaller", "size_note",
                  "error", "size"):
            if info.get(k) not in (None, "", False):
                start[k] = info[k]
        wall, mono, _ = self.clock.now()
        if info.get("last_wall_ns"):
            start["gap_s"] = round((wall - info["last_wall_ns"]) / 1e9, 3)
        if info.get("last_boot") and info["last_boot"] != self.boot:
            start["boot_changed"] = True
            start["previous_boot"] = info["last_boot"]
        if info.get("skipped"):
            start["torn_tail"] = info["skipped"][:5]
        self.event("start", **start)
        self._install_signals()
        watchdog = sdnotify.watchdog_interval()
        next_t = time.monotonic()
        last_ping = 0.0
        notified = False
        t_end = time.monotonic() + duration_s if duration_s else None
        try:
            while not self.stopping:
                now = time.monotonic()
                if now >= next_t:
                    late = now - next_t
                    if late > self.st.interval_s:
                        self.event("late", late_s=round(late, 3), why="a sample came more than one interval late")
                        next_t = now
                    self.sample()
                    next_t += self.st.interval_s
                    if not notified:
                        sdnotify.notify(f"READY=1\nSTATUS=recording every {self.st.interval_s:g} s "
                                        f"to {self.st.ring_path}")
                        notified = True
                    self._maybe_sync()
                    if self.writer is None and time.monotonic() >= self.ring_retry_at:
                        got = self.open_ring("retry")
                        if "error" not in got:
                            self.event("ring_recovered", records_in_memory_only=self.dropped)
                        else:
                            self.ring_retry_at = time.monotonic() + RETRY_S
                    if max_samples is not None and self.samples >= max_samples:
                        break
                if t_end is not None and time.monotonic() >= t_end:
                    break
                if watchdog and time.monotonic() - last_ping >= watchdog:
                    sdnotify.notify("WATCHDOG=1")
                    last_ping = time.monotonic()
                self._wait(max(0.0, next_t - time.monotonic()))
        finally:
            self.shutdown()
        return 0

    def _wait(self, timeout: float) -> None:
        """Sleep until the next sample (at most 5 s: the watchdog), serving the socket; a stop signal wakes it."""
        fds: list[Any] = [self._wake_r] + ([self.server] if self.server is not None else [])
        try:
            r, _, _ = select.select(fds, [], [], min(timeout, 5.0))
        except InterruptedError:
            return
        if self.server is not None and self.server in r:
            self._serve_one()

    def _maybe_sync(self) -> None:
        w = self.writer
        if w is None:
            return
        try:
            if w.pending_age() >= self.st.sync_s:          # a partial page waited long enough: write it
                w.flush()
                self.last_sync = time.monotonic()
            elif w.unsynced >= SYNC_BYTES or (w.unsynced and time.monotonic() - self.last_sync >= self.st.sync_s):
                w.sync()
                self.last_sync = time.monotonic()
        except OSError as exc:
            self._ring_failed(f"write failed: {exc.strerror or exc}")

    def _install_signals(self) -> None:
        def stop(signum: int, frame: Any) -> None:
            self.stopping = True
            try:
                os.write(self._wake_w, b"x")      # wake the select() at once
            except OSError:
                pass
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                signal.signal(sig, stop)
            except ValueError:             # not the main thread (tests)
                pass

    def shutdown(self) -> None:
        sdnotify.notify("STOPPING=1")
        try:
            self.event("stop", samples=self.samples, dropped=self.dropped)
        except Exception:  # noqa: BLE001 - stopping must not fail
            pass
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.server is not None:
            try:
                self.server.close()
                os.unlink(self.st.socket_path)
            except OSError:
                pass
            self.server = None
        self.sampler.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


def journal_path(st: Settings) -> str:
    """Where records wait before they reach the ring: ``journal_path``, else the socket's path +
    ``.pending`` (the unit's RuntimeDirectory, a tmpfs: no disk writes, and it outlives a killed
    recorder; one socket, one recorder, one journal)."""
    if st.journal_path is not None:
        return st.journal_path
    return pending_path(st.socket_path)


def pending_path(socket_path: str) -> str:
    return socket_path + ".pending" if socket_path else ""


def _rss_kb() -> int:
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except (OSError, ValueError, IndexError):
        return 0


def ask(socket_path: str, req: dict[str, Any], timeout: float = 0.3) -> dict[str, Any] | None:
    """One request to a running recorder's socket; None when none answers within ``timeout``."""
    if not socket_path or not os.path.exists(socket_path):
        return None
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
            s.settimeout(timeout)
            s.connect(socket_path)
            s.sendall(_dumps(req) + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                s.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                buf += chunk
        obj = json.loads(buf)
        return obj if isinstance(obj, dict) else None
    except (OSError, ValueError):
        return None
