"""A real S3 API on loopback: moto's standalone server, started as a subprocess."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="session")
def s3_server():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **CREDS})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("moto server did not start")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3(s3_server, monkeypatch):
    import boto3
    for k, v in CREDS.items():
        monkeypatch.setenv(k, v)
    c = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    name = f"evidence-{os.urandom(4).hex()}"
    c.create_bucket(Bucket=name)
    return c, name


@pytest.fixture
def s3_config(store, tmp_path, s3, s3_server):
    """Write a config pointing at the bucket; returns (path, writer for extra sections)."""
    _, bucket = s3

    def write(extra: str = "", endpoint: str | None = None, host: str = "host-a") -> str:
        p = tmp_path / f"s3-{host}.toml"
        p.write_text(f'[store]\npath = "{store}"\n[host]\nname = "{host}"\n'
                     f'[upload]\nurl = "s3://{bucket}/prod"\nendpoint_url = "{endpoint or s3_server}"\n'
                     f'multipart_threshold_mb = 5\nmultipart_chunk_mb = 5\n{extra}')
        return str(p)
    return write
