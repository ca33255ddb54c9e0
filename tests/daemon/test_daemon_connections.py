"""The daemon's HTTP server against hostile and broken clients, on real sockets.

Slowloris-style half-sent headers and bodies, connections that send nothing, more connections than
``daemon.max_connections``, clients that hang up in the middle of a body, and the daemon started
under ``prlimit`` with a file-descriptor limit that accept() runs into: each is closed (or answered
503) within its timeout, the daemon keeps answering, and its log says so once per
``daemon.log_interval_s`` with a count, never with a traceback. The log stays small.
"""
from __future__ import annotations

import shutil
import socket
import time

import httpx
import pytest

from tests.helpers.conns import closed_by_server

TIMEOUTS = "header_timeout_s = 1\nbody_timeout_s = 2\nlog_interval_s = 60\n"


def _port(d) -> tuple[str, int]:
    host, port = d.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _open(d, n: int, payload: bytes = b"") -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(_port(d), timeout=10)
        if payload:
            s.sendall(payload)
        socks.append(s)
    return socks


def _log_ok(d, event: str, most: int = 2) -> list[str]:
    """The daemon's log lines of ``event`` (waited for: the log is read by a thread), never a traceback."""
    deadline = time.monotonic() + 15
    while not [ln for ln in d.lines if f"event={event}" in ln] and time.monotonic() < deadline:
        time.sleep(0.05)
    text = "\n".join(d.lines)
    assert "Traceback" not in text and "Exception in ASGI application" not in text, text[-4000:]
    lines = [ln for ln in d.lines if f"event={event}" in ln]
    assert 1 <= len(lines) <= most, (event, lines, d.lines[-20:])
    return lines


def test_half_sent_headers_and_silent_connections_are_closed(new_daemon):
    d = new_daemon(daemon_extra=TIMEOUTS).start()
    half = _open(d, 20, b"POST /v1/webhooks/generic HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
    silent = _open(d, 20)
    assert httpx.get(f"{d.url}/healthz", timeout=10).status_code == 200      # still serving meanwhile
    for s in half + silent:
        got = closed_by_server(s, 15)
        assert got is not None, "the connection was kept open past the header timeout"
        assert got == b"" or got.startswith(b"HTTP/1.1 408")
        s.close()
    lines = _log_ok(d, "http_header_timeout")
    assert "count=" in lines[0]
    assert 'goldenhour_http_events_total{event="http_header_timeout"} 40' in d.metrics()   # each one counted


def test_half_sent_body_is_closed(new_daemon):
    d = new_daemon(daemon_extra=TIMEOUTS).start()
    head = (b"POST /v1/webhooks/generic HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 10000\r\n\r\n{\"a\": 1")
    socks = _open(d, 10, head)
    for s in socks:
        assert closed_by_server(s, 15) is not None, "the connection was kept open past the body timeout"
        s.close()
    _log_ok(d, "http_body_timeout")
    assert httpx.get(f"{d.url}/healthz", timeout=10).status_code == 200


def test_a_client_gone_mid_body_is_a_normal_event(new_daemon):
    d = new_daemon(daemon_extra=TIMEOUTS).start()
    head = (b"POST /v1/webhooks/generic HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n" + b"x" * 5000)
    for _ in range(20):
        s = socket.create_connection(_port(d), timeout=10)
        s.sendall(head)
        s.close()
    lines = _log_ok(d, "http_client_gone")
    assert "level=info" in lines[0]
    assert httpx.get(f"{d.url}/healthz", timeout=10).status_code == 200
    assert len(d.lines) < 20, d.lines


def test_connections_over_the_limit_are_answered_503_and_closed(new_daemon):
    d = new_daemon(daemon_extra=TIMEOUTS.replace("header_timeout_s = 1", "header_timeout_s = 30")
                   + "max_connections = 10\n").start()
    held = _open(d, 10)
    time.sleep(0.2)
    extra = _open(d, 30)
    answers = [closed_by_server(s, 10) for s in extra]
    assert all(a is not None and a.startswith(b"HTTP/1.1 503 ") and b"retry-after" in a.lower() for a in answers)
    for s in held + extra:
        s.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{d.url}/healthz", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    else:
        pytest.fail("the daemon does not answer once the connections are gone")
    lines = _log_ok(d, "http_connection_limit")
    assert "limit=10" in lines[0]


@pytest.mark.skipif(not shutil.which("prlimit"), reason="prlimit (util-linux) not installed")
def test_at_the_descriptor_limit_accept_failures_are_logged_once(new_daemon):
    """Started with 64 descriptors and no connection limit of its own: accept() hits EMFILE."""
    d = new_daemon(daemon_extra=TIMEOUTS.replace("header_timeout_s = 1", "header_timeout_s = 30")
                   + "max_connections = 0\n")
    d.start(prefix=["prlimit", "--nofile=64:64"])
    socks = []
    try:
        for _ in range(120):
            try:
                s = socket.create_connection(_port(d), timeout=5)
            except OSError:
                break
            socks.append(s)
        time.sleep(3.5)                          # accept() retried every second meanwhile
        assert d.alive()
    finally:
        for s in socks:
            s.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{d.url}/healthz", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    else:
        pytest.fail("the daemon does not answer once descriptors are free again")
    lines = _log_ok(d, "http_accept_failed")
    assert "EMFILE" in lines[0]
    assert sum(len(ln) for ln in d.lines) < 20_000, len(d.lines)
