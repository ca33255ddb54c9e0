"""``goldenhour daemon``'s process: sockets, signals, systemd, and the uvicorn server.

Where it sits: ``run(cfg)`` is what the CLI's ``daemon`` command calls. It binds
``daemon.listen`` (TCP; port 0 picks a free one) and the Unix socket
``daemon.socket`` (mode 0660: its file mode is the local API's access control; a
stale socket is replaced, a live one is an error), starts the ``Service``, serves
``http_app.app(service)`` with uvicorn on those sockets, and stops gracefully on
SIGTERM/SIGINT; SIGHUP reloads the config (``agent.daemon.reload``). Connections follow
``agent.daemon.guard``'s rules (header and body timeouts, a connection limit, accept() failures
and hang-ups logged once per interval, never a traceback). systemd
(sd_notify(3)): ``READY=1`` once listening, ``WATCHDOG=1`` every half ``WatchdogSec``
while the worker and uploader are alive, ``RELOADING=1``/``READY=1`` around a reload,
``STOPPING=1``.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import stat
from pathlib import Path
from typing import Any, Callable

from agent import __version__, sdnotify
from agent.config import Config
from agent.daemon.client import api_socket_path, parse_listen
from agent.daemon.guard import protocol, quiet_uvicorn
from agent.daemon.http_app import app
from agent.daemon.kvlog import kv, setup_logging
from agent.daemon.reload import reload, warn_about
from agent.daemon.service import SHUTDOWN_GRACE_S, Service
from agent.errors import UsageError

_STOP: dict[str, Any] = {"requested": False, "server": None}


# -- systemd ----------------------------------------------------------------------

async def _watchdog(svc: Service, every: float) -> None:
    while True:
        ok, why = svc.healthy()
        if ok:
            sdnotify.notify("WATCHDOG=1")
        else:
            kv(logging.ERROR, "watchdog", "not pinging the watchdog", reason=why)
        await asyncio.sleep(every)


async def _stop(svc: Service) -> None:
    sdnotify.notify("STOPPING=1")
    await svc.stop()


# -- sockets ----------------------------------------------------------------------

def _bind_tcp(host: str, port: int) -> socket.socket:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, addr = infos[0]
    # IPPROTO_TCP named so asyncio sets TCP_NODELAY on each connection: with proto 0 it does not, and
    # Nagle plus the client's delayed ACK held a keep-alive answer's body back ~40 ms
    s = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.bind(addr)
    s.listen(128)
    s.setblocking(False)
    return s


def _bind_unix(path: Path) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
                probe.close()
                raise UsageError(f"another daemon already listens on {path}")
            except (ConnectionRefusedError, FileNotFoundError):
                path.unlink()
            finally:
                probe.close()
        else:
            raise UsageError(f"{path} exists and is not a socket")
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o117)
    try:
        s.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o660)
    s.listen(64)
    s.setblocking(False)
    return s


# -- serving ----------------------------------------------------------------------

async def serve(cfg: Config, config_path: str | None = None, load: Callable[[], Config] | None = None) -> int:
    import uvicorn

    svc = Service(cfg, config_path)
    sockets: list[socket.socket] = []
    listen = parse_listen(cfg["daemon.listen"])
    addr_text = ""
    try:
        if listen:
            tcp = _bind_tcp(*listen)
            sockets.append(tcp)
            h, p = tcp.getsockname()[:2]
            addr_text = f"[{h}]:{p}" if ":" in h else f"{h}:{p}"
        sock_path = api_socket_path(cfg)
        if sock_path:
            sockets.append(_bind_unix(sock_path))
    except OSError as exc:
        for s in sockets:
            s.close()
        raise UsageError(f"cannot listen on {cfg['daemon.listen']} / {cfg['daemon.socket']}: "
                         f"{exc.strerror or exc}") from None
    if not sockets:
        raise UsageError("nothing to listen on: set daemon.listen and/or daemon.socket")
    await svc.start()
    asyncio.get_running_loop().set_exception_handler(svc.guard.loop_exception_handler)
    quiet_uvicorn(svc.guard)
    config = uvicorn.Config(app(svc), log_config=None, access_log=False, lifespan="off",
                            loop="asyncio", http=protocol(svc.guard), ws="none", timeout_keep_alive=5,
                            server_header=False, date_header=True, timeout_graceful_shutdown=int(SHUTDOWN_GRACE_S),
                            backlog=128)
    server = uvicorn.Server(config)
    _STOP["server"] = server
    if _STOP["requested"]:
        server.should_exit = True
    serve_task = asyncio.create_task(server.serve(sockets=sockets))
    while not server.started and not serve_task.done():
        await asyncio.sleep(0.01)
    if serve_task.done():
        await _stop(svc)
        serve_task.result()
        return 1
    sdnotify.notify(f"READY=1\nSTATUS=listening on {addr_text or '-'}; queue {svc.jobs.queue.maxsize}\n"
                    f"MAINPID={os.getpid()}")
    wd = sdnotify.watchdog_interval()
    if wd:
        svc.tasks.append(asyncio.create_task(_watchdog(svc, wd), name="watchdog"))
    kv(logging.INFO, "ready", listen=addr_text or "-", socket=str(api_socket_path(cfg) or "-"),
       pid=os.getpid(), version=__version__, store=str(cfg.store_path), host=cfg.hostname,
       trackers=",".join(svc.receiver.enabled()) or "-",
       identity=json.dumps(svc.identity.to_json(), separators=(",", ":")))
    warn_about(cfg, config_path)
    _on_hup(svc, load)
    try:
        await serve_task
    finally:
        kv(logging.INFO, "stopping")
        await _stop(svc)
        p = api_socket_path(cfg)
        if p:
            try:
                if stat.S_ISSOCK(p.lstat().st_mode):
                    p.unlink()
            except OSError:
                pass
        kv(logging.INFO, "stopped")
    return 0


def _on_hup(svc: Service, load: Callable[[], Config] | None) -> None:
    """SIGHUP reloads the config (agent/daemon/reload.py), one at a time; one asked for while the daemon
    was starting is done now. Without a way to load it (``load`` None) it says a restart is needed."""
    loop = asyncio.get_running_loop()
    busy = asyncio.Lock()

    async def hup() -> None:
        if load is None:
            kv(logging.WARNING, "reload", "SIGHUP: this daemon cannot re-read its config; restart it to apply "
               "changes", outcome="unsupported")
            return
        async with busy:
            sdnotify.notify("RELOADING=1")
            try:
                reload(svc, load)
            finally:
                sdnotify.notify("READY=1")

    def handler() -> None:
        kv(logging.INFO, "reload", "SIGHUP received: reloading the config")
        task = loop.create_task(hup(), name="reload")
        svc.tasks.append(task)                  # cancelled with the others at stop
        task.add_done_callback(lambda t: t in svc.tasks and svc.tasks.remove(t))

    loop.add_signal_handler(signal.SIGHUP, handler)
    if _STOP.pop("hup", False):
        handler()


def _early_hup(signum: int, frame: Any) -> None:
    """SIGHUP before the daemon is ready: remembered, and the reload done once it is (never fatal)."""
    _STOP["hup"] = True


def _on_signal(signum: int, frame: Any) -> None:
    """SIGTERM/SIGINT: stop gracefully. Installed before uvicorn's own handlers, which re-raise
    the signal when they are done: it then lands here again, harmlessly, instead of killing us
    before the running capture and the state are settled."""
    _STOP["requested"] = True
    if _STOP["server"] is not None:
        _STOP["server"].should_exit = True


def run(cfg: Config, config_path: str | None = None, load: Callable[[], Config] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; ``load()`` reads the config again for a SIGHUP reload."""
    setup_logging()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)
    signal.signal(signal.SIGHUP, _early_hup)
    try:
        return asyncio.run(serve(cfg, config_path, load))
    except KeyboardInterrupt:
        return 0
