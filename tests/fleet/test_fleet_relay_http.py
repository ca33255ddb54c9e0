"""The relay faces the internet: its HTTP server keeps the daemon's connection rules (real sockets).

Half-sent headers and silent connections are answered 408 and closed within
``daemon.header_timeout_s``, a client that hangs up in the middle of its body is a normal event,
and each is one log line per interval with a count, never a traceback; the relay keeps answering.
"""
from __future__ import annotations

import socket
import time

import httpx

from tests.fleet.fleetlib import RelayProc
from tests.helpers.conns import closed_by_server

RULES = "[daemon]\nheader_timeout_s = 1\nbody_timeout_s = 2\nlog_interval_s = 60\n"


def _addr(r: RelayProc) -> tuple[str, int]:
    host, port = r.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _lines(r: RelayProc, event: str) -> list[str]:
    deadline = time.monotonic() + 15
    while not [ln for ln in r.lines if f"event={event}" in ln] and time.monotonic() < deadline:
        time.sleep(0.05)
    return [ln for ln in r.lines if f"event={event}" in ln]


def test_half_sent_requests_and_hangups_at_the_relay_are_closed_and_logged_once(fleet, tmp_path):
    r = RelayProc(fleet, tmp_path / "relay", extra=RULES).start()
    try:
        half = []
        for _ in range(10):
            s = socket.create_connection(_addr(r), timeout=10)
            s.sendall(b"POST /v1/webhooks/generic HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
            half.append(s)
        silent = [socket.create_connection(_addr(r), timeout=10) for _ in range(10)]
        assert httpx.get(f"{r.url}/healthz", timeout=10).status_code == 200        # still serving meanwhile
        for s in half + silent:
            got = closed_by_server(s, 15)
            assert got is not None, "the relay kept a half-sent connection open past the header timeout"
            assert got == b"" or got.startswith(b"HTTP/1.1 408")
            s.close()
        for _ in range(5):          # a body promised and not sent: the client hangs up mid-body
            s = socket.create_connection(_addr(r), timeout=10)
            s.sendall(b"POST /v1/webhooks/generic HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 5000\r\n\r\n{\"incident")
            time.sleep(0.05)
            s.close()
        timeouts = _lines(r, "http_header_timeout")
        assert len(timeouts) == 1 and "count=" in timeouts[0], timeouts
        assert 1 <= len(_lines(r, "http_client_gone")) <= 1
        text = "\n".join(r.lines)
        assert "Traceback" not in text and "Exception in ASGI application" not in text, text[-3000:]
        metrics = httpx.get(f"{r.url}/metrics", timeout=10).text
        assert 'goldenhour_http_events_total{event="http_header_timeout"} 20' in metrics
        assert httpx.get(f"{r.url}/healthz", timeout=10).status_code == 200
    finally:
        r.stop()
