"""Talking to a running daemon: ``goldenhour snapshot --via-daemon`` and friends.

Where it sits: the CLI side of the local API (``agent.daemon.http_app``). The request
goes over the Unix socket ``daemon.socket`` when it exists (its file mode is
the access control), else over HTTP to ``daemon.listen`` with
``Authorization: Bearer <daemon.api_token_file>``. Standard library only, so
the CLI stays light. A daemon that cannot be reached is exit code 5. The daemon's
server uses ``parse_listen``, ``api_socket_path`` and ``read_token`` too, so both
sides agree on where the API is and what the token is.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
from pathlib import Path
from typing import Any

from agent.config import Config, ConfigError
from agent.daemon.state import state_dir
from agent.errors import EXIT_DAEMON, GoldenhourError

DEFAULT_SOCKET = "/run/goldenhour/api.sock"


class DaemonUnreachable(GoldenhourError):
    exit_code = EXIT_DAEMON


def parse_listen(text: str) -> tuple[str, int] | None:
    text = text.strip()
    if not text:
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"daemon.listen must be HOST:PORT, not {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def api_socket_path(cfg: Config) -> Path | None:
    """The local API's Unix socket; as non-root the default moves into the state dir."""
    p = cfg["daemon.socket"]
    if not p:
        return None
    if p == DEFAULT_SOCKET and os.geteuid() != 0:
        return state_dir(cfg) / "api.sock"
    return Path(p)


def read_token(cfg: Config) -> str:
    f = cfg["daemon.api_token_file"]
    if not f:
        return ""
    try:
        return Path(f).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read daemon.api_token_file {f}: {exc.strerror}") from None


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self._path)
        except OSError:
            s.close()
            raise
        self.sock = s


def request(cfg: Config, method: str, path: str, body: dict[str, Any] | None = None,
            timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
    """One request to the daemon's local API; (HTTP status, JSON body). Raises DaemonUnreachable."""
    sock = api_socket_path(cfg)
    tried: list[str] = []
    conns: list[tuple[str, http.client.HTTPConnection, dict[str, str]]] = []
    if sock is not None and sock.exists():
        conns.append((f"unix:{sock}", _UnixConnection(str(sock), timeout), {}))
    elif sock is not None:
        tried.append(f"no socket at {sock}")
    listen = parse_listen(cfg["daemon.listen"])
    token = ""
    try:
        token = read_token(cfg)
    except ConfigError as exc:
        tried.append(str(exc))
    if listen and token:
        host, port = listen
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        conns.append((f"http://{host}:{port}", http.client.HTTPConnection(host, port, timeout=timeout),
                      {"Authorization": f"Bearer {token}"}))
    elif listen:
        tried.append(f"no daemon.api_token_file for HTTP to {cfg['daemon.listen']}")
    data = json.dumps(body).encode() if body is not None else None
    for where, conn, headers in conns:
        try:
            conn.request(method, path, body=data, headers={"Content-Type": "application/json", **headers})
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            tried.append(f"{where}: {getattr(exc, 'strerror', None) or exc}")
            continue
        finally:
            conn.close()
        try:
            out = json.loads(raw.decode() or "{}")
        except ValueError:
            out = {"error": raw.decode("utf-8", "replace")[:200]}
        if resp.status in (401, 403) and "unix:" not in where:
            raise DaemonUnreachable(f"the daemon at {where} refused the token: {out.get('error', resp.status)}")
        return resp.status, out if isinstance(out, dict) else {"result": out}
    raise DaemonUnreachable("the goldenhour daemon is not reachable (" + "; ".join(tried or ["nothing configured"])
                            + "): is `goldenhour daemon` (goldenhour.service) running?")
