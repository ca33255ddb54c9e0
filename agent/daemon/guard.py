"""The daemon's connection rules: timeouts, a connection limit, and logs that cannot flood.

Where it sits: ``agent.daemon.server`` serves uvicorn with ``protocol(guard)`` (uvicorn's h11
protocol with these rules) and installs ``guard.loop_exception_handler`` on the event loop;
the HTTP app reports clients that hang up mid-body through ``guard.note``. The rules:

- a request's headers must arrive within ``daemon.header_timeout_s`` of its first byte (of the
  connection, for the first request): half-sent headers and connections that send nothing are
  answered ``408`` and closed (slowloris);
- its body within ``daemon.body_timeout_s`` of its headers: a body that stalls is closed;
- at most ``daemon.max_connections`` connections at once (TCP and the Unix socket), and never
  more than the descriptors the process has left, less ``FD_SPARE`` for its own work (state,
  logs, the children it starts): one more is answered ``503`` with ``Retry-After`` and closed,
  before anything is read from it. 0 = no limit of goldenhour's own;
- accept() failing for want of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM), a
  client gone in the middle of its body, uvicorn's warnings about malformed requests: normal
  events of a server on the internet, logged as one line at most once per
  ``daemon.log_interval_s`` per kind of event, with the count since the last line
  (``count=…``), never a traceback; each is counted in ``/metrics``
  (``goldenhour_http_events_total{event}``).

An idle keep-alive connection is closed after uvicorn's keep-alive timeout (5 s).
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from agent.daemon.kvlog import kv

FD_SPARE = 48                      # descriptors kept for the daemon's own work when it caps connections
ACCEPT_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def free_descriptors() -> int:
    """Descriptors this process may still open (its soft RLIMIT_NOFILE less those open now)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    try:
        used = len(os.listdir("/proc/self/fd"))
    except OSError:
        used = 0
    return (1 << 30 if soft == resource.RLIM_INFINITY else soft) - used


@dataclass
class Guard:
    """The rules (from the config) and the once-per-interval log of what they caught."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 256            # 0: none of our own
    log_interval_s: float = 60.0
    count: Callable[[str], None] = lambda event: None       # Telemetry: goldenhour_http_events_total
    _fd_room: int | None = None
    _last: dict[str, float] = field(default_factory=dict)
    _since: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Any, count: Callable[[str], None] = lambda event: None) -> "Guard":
        g = cls(count=count)
        g.configure(cfg)
        return g

    def configure(self, cfg: Any) -> None:
        """The rules from the config (at start, and on a reload: for the connections that follow)."""
        self.header_timeout_s = float(cfg["daemon.header_timeout_s"])
        self.body_timeout_s = float(cfg["daemon.body_timeout_s"])
        self.log_interval_s = float(cfg["daemon.log_interval_s"])
        self.max_connections = int(cfg["daemon.max_connections"])
        if self._fd_room is None:          # measured once, before any connection holds a descriptor
            self._fd_room = free_descriptors() - FD_SPARE
        if self.max_connections > 0:       # never more connections than descriptors to hold them
            self.max_connections = max(1, min(self.max_connections, self._fd_room))

    def note(self, event: str, msg: str, level: int = logging.WARNING, **fields: Any) -> None:
        """Count one occurrence; log a line (with the count since the last one) at most once per interval."""
        self.count(event)
        self._since[event] = self._since.get(event, 0) + 1
        now = time.monotonic()
        last = self._last.get(event)
        if last is not None and now - last < self.log_interval_s:
            return
        self._last[event] = now
        n = self._since.pop(event)
        kv(level, event, msg, count=n, per_s=int(self.log_interval_s), **fields)

    # -- the event loop's errors ----------------------------------------------------
    def loop_exception_handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """accept() out of descriptors (asyncio retries it every second) is one line per interval, no
        traceback; a connection reset while it was being set up likewise. Anything else: asyncio's own."""
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in ACCEPT_ERRNOS and "accept" in str(context.get("message")):
            self.note("http_accept_failed", "accept() failed: out of descriptors or memory; "
                      "connections wait in the listen backlog", errno=errno.errorcode.get(exc.errno, exc.errno),
                      error=exc.strerror or str(exc), nofile=resource.getrlimit(resource.RLIMIT_NOFILE)[0])
            return
        if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
            self.note("http_client_gone", "a client closed its connection abruptly", level=logging.INFO,
                      error=type(exc).__name__)
            return
        loop.default_exception_handler(context)


class _UvicornWarnings(logging.Filter):
    """uvicorn's per-request warnings (a malformed request, an oversized header) through ``Guard.note``."""

    def __init__(self, guard: Guard):
        super().__init__()
        self.guard = guard

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        self.guard.note("http_bad_request", record.getMessage())
        return False


def quiet_uvicorn(guard: Guard) -> None:
    lg = logging.getLogger("uvicorn.error")
    for f in [f for f in lg.filters if isinstance(f, _UvicornWarnings)]:
        lg.removeFilter(f)
    lg.addFilter(_UvicornWarnings(guard))


def _answer(status: bytes, body: bytes, *extra: bytes) -> bytes:
    head = [b"HTTP/1.1 " + status, b"content-type: application/json", *extra, b"connection: close",
            b"content-length: " + str(len(body)).encode()]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


BUSY = _answer(b"503 Service Unavailable", b'{"error": "too many connections, retry in a moment"}', b"retry-after: 1")
TIMEOUT = _answer(b"408 Request Timeout", b'{"error": "request not received in time"}')


def protocol(guard: Guard) -> type[H11Protocol]:
    """uvicorn's h11 protocol class with ``guard``'s rules (``uvicorn.Config(http=...)``)."""

    class Guarded(H11Protocol):
        _refused = False
        _timer: asyncio.TimerHandle | None = None
        _waiting: str = ""                       # "header" or "body": what the timer waits for

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if guard.max_connections and len(self.connections) >= guard.max_connections:
                self._refused = True
                self.transport = transport
                guard.note("http_connection_limit", "connection refused: too many open connections (503)",
                           limit=guard.max_connections)
                transport.write(BUSY)
                transport.close()
                return
            super().connection_made(transport)
            self._wait("header")

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_timer()
            if self._refused:
                return
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            super().data_received(data)
            self._follow()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._follow()

        # -- the timers ----------------------------------------------------------
        def _follow(self) -> None:
            """After every step: arm the timer for what the client must send next, or stop it."""
            if self.transport is None or self.transport.is_closing():
                self._stop_timer()
                return
            state = self.conn.their_state
            if state is h11.IDLE:
                # an idle keep-alive connection has uvicorn's keep-alive timer; once bytes of a new
                # request arrived (that timer is gone), its headers are due
                if self.timeout_keep_alive_task is None and self._waiting != "header":
                    self._wait("header")
            elif state is h11.SEND_BODY:
                if self._waiting != "body":
                    self._wait("body")
            elif self._waiting:                  # the request is in: the app may take its time
                self._stop_timer()

        def _wait(self, what: str) -> None:
            self._stop_timer()
            self._waiting = what
            delay = guard.header_timeout_s if what == "header" else guard.body_timeout_s
            self._timer = self.loop.call_later(delay, self._expired)

        def _stop_timer(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._waiting = None, ""

        def _expired(self) -> None:
            what, self._timer = self._waiting, None
            self._waiting = ""
            if self.transport is None or self.transport.is_closing():
                return
            if what == "header":
                guard.note("http_header_timeout", "connection closed: request headers not received in time",
                           timeout_s=guard.header_timeout_s)
                if self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE:
                    self.transport.write(TIMEOUT)
            else:
                guard.note("http_body_timeout", "connection closed: request body not received in time",
                           timeout_s=guard.body_timeout_s)
            self.transport.close()

    return Guarded
