"""A real S3 API on loopback: moto's standalone server as a subprocess, real HTTP through boto3.

Fixtures:
  moto_server  session: ``python -m moto.server`` on a free 127.0.0.1 port (URL)
  s3           a boto3 client and a fresh bucket per test: (client, bucket)
  s3_config    writes a goldenhour config for that bucket: ``s3_config(extra, endpoint=, host=)``
  run          the real CLI with the fake AWS credentials in its environment: ``run(cfg, *args)``
Helpers: ``start_moto`` and ``free_port`` (tests/helpers/moto.py), ``TcpProxy`` (a loopback proxy that can
stall a transfer).
"""
from __future__ import annotations

import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from tests.helpers.moto import free_port, stop  # noqa: F401 - free_port is used by the tests
from tests.helpers.moto import start_moto as _start_moto

ROOT = Path(__file__).resolve().parents[2]
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
         "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent",
         "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
BULK = "tests.helpers.bulk"        # a test collector writing N MiB of random data (incompressible)


def start_moto() -> tuple[subprocess.Popen, str]:
    return _start_moto(CREDS)


@pytest.fixture(scope="session")
def moto_server():
    proc, url = start_moto()
    yield url
    stop(proc)


def boto(url: str, **kw):
    import boto3
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing", **kw)


@pytest.fixture
def s3(moto_server):
    c = boto(moto_server)
    name = f"evidence-{os.urandom(4).hex()}"
    c.create_bucket(Bucket=name)
    return c, name


@pytest.fixture
def s3_config(store, tmp_path, s3, moto_server):
    """Write a config for the test's bucket; returns the path. ``extra`` is appended to [upload]."""
    _, bucket = s3

    def write(extra: str = "", endpoint: str | None = None, host: str = "host-a", bucket_name: str | None = None,
              store_dir: Path | None = None, after: str = "") -> str:
        p = tmp_path / f"s3-{host}-{os.urandom(3).hex()}.toml"
        p.write_text(f'[store]\npath = "{store_dir or store}"\n[host]\nname = "{host}"\n'
                     f'[upload]\nurl = "s3://{bucket_name or bucket}/prod"\n'
                     f'endpoint_url = "{endpoint or moto_server}"\n'
                     f'multipart_threshold_mb = 5\nmultipart_chunk_mb = 5\nretry_initial_s = 600\n{extra}\n{after}')
        return str(p)
    return write


def env_for(cfg: str, **extra: str) -> dict[str, str]:
    return {"GOLDENHOUR_CONFIG": cfg, "GOLDENHOUR_EXTRA_COLLECTORS": BULK, **CREDS, **extra}


@pytest.fixture
def run(gh):
    """``run(cfg, *args, env={})``: the real CLI with this config and the fake credentials."""
    def _run(cfg: str, *args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
        return gh(*args, env={**env_for(cfg), **(env or {})}, **kw)
    return _run


class TcpProxy:
    """A loopback TCP proxy to ``target``; after ``stall_after`` bytes from clients it stops forwarding.

    Real sockets, real HTTP passing through: it stands for a network link that hangs
    in the middle of an upload. ``stalled`` is set when it stops; ``close()`` ends it.
    """

    def __init__(self, target_port: int, stall_after: int | None = None):
        self.target_port = target_port
        self.stall_after = stall_after
        self.sent = 0
        self.stalled = threading.Event()
        self.closing = threading.Event()
        self.lock = threading.Lock()
        self.socks: list[socket.socket] = []
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(16)
        self.port = self.srv.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                c.close()
                continue
            with self.lock:
                self.socks += [c, u]
            threading.Thread(target=self._pump, args=(c, u, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while not self.closing.is_set():
                data = src.recv(65536)
                if not data:
                    break
                if upstream and self.stall_after is not None:
                    with self.lock:
                        room = self.stall_after - self.sent
                        self.sent += len(data)
                    if room <= 0:
                        self.stalled.set()
                        self.closing.wait()
                        return
                    if len(data) > room:
                        dst.sendall(data[:room])
                        self.stalled.set()
                        self.closing.wait()
                        return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            if not self.stalled.is_set():
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

    def close(self) -> None:
        self.closing.set()
        self.srv.close()
        with self.lock:
            for s in self.socks:
                try:
                    s.close()
                except OSError:
                    pass
