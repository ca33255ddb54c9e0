"""Hostile-client helpers for the HTTP servers' connection tests (the daemon's and the relay's)."""
from __future__ import annotations

import socket


def closed_by_server(s: socket.socket, within: float) -> bytes | None:
    """What the server sent before closing, or None if it kept the connection open ``within`` seconds."""
    s.settimeout(within)
    got = b""
    try:
        while True:
            b = s.recv(65536)
            if not b:
                return got
            got += b
    except (TimeoutError, socket.timeout):
        return None
    except ConnectionResetError:
        return got
