"""The spool: the endpoint down during a capture, goldenhour killed mid-multipart, backoff, busy bundles,
broken bundles -- nothing pending is ever dropped, and retries never duplicate or corrupt an object."""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from tests.storage.conftest import ROOT, TcpProxy, env_for, free_port


def bundles_in(client, bucket: str, prefix: str) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
            if o["Key"].endswith(".tar.zst")]


def test_endpoint_down_for_a_capture_then_back(run, s3, s3_config, store):
    client, bucket = s3
    down = s3_config(endpoint=f"http://127.0.0.1:{free_port()}")       # nothing listens there
    cp = run(down, "snapshot", "--incident", "INC-down", "--collector", "host")
    assert cp.returncode == 0, cp.stderr                                  # safe on local disk: exit 0
    assert "upload  PENDING" in cp.stdout and "unreachable" in cp.stdout and "upload --pending" in cp.stdout
    cp = run(down, "snapshot", "--json", "--incident", "INC-down", "--collector", "host")
    second = json.loads(cp.stdout)
    assert second["upload"]["status"] == "pending" and second["upload"]["exit_code"] == 12
    pending = sorted(store.glob("incidents/INC-down/*.tar.zst"), key=lambda p: p.stat().st_mtime)
    assert len(pending) == 2 and not list(store.glob("incidents/INC-down/*.upload.json"))

    cp = run(down, "upload", "--pending")
    assert cp.returncode == 16, cp.stdout + cp.stderr
    assert cp.stdout.count("PENDING") == 2 and "unreachable" in cp.stdout and "still pending" in cp.stderr
    assert "not tried" in cp.stdout.splitlines()[1]          # the endpoint is down: the rest are not hammered
    state = json.loads(pending[0].with_name(pending[0].name.replace(".tar.zst", ".pending.json")).read_text())
    assert state["attempts"] == 1 and state["exit_code"] == 12 and state["next_try"] > time.time() + 500

    # the daemon's call honours the backoff: a bundle is not tried again before its next_try
    from agent import config, upload
    res = upload.upload_pending(config.load(down), respect_backoff=True)
    assert [r["status"] for r in res] == ["waiting", "pending"]
    assert [r["status"] for r in upload.upload_pending(config.load(down))] == ["waiting", "waiting"]

    up = s3_config()
    cp = run(up, "upload", "--pending", "--json")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    res = json.loads(cp.stdout)
    assert [r["status"] for r in res] == ["uploaded", "uploaded"]
    assert [Path(r["bundle"]) for r in res] == pending                     # oldest first
    for r, p in zip(res, pending, strict=True):
        body = client.get_object(Bucket=bucket, Key=r["key"])["Body"].read()
        assert hashlib.sha256(body).hexdigest() == p.with_name(p.name + ".sha256").read_text().split()[0]
        assert not p.with_name(p.name.replace(".tar.zst", ".pending.json")).exists()
    cp = run(up, "upload", "--pending")
    assert cp.returncode == 0 and "nothing pending" in cp.stdout


def test_killed_in_the_middle_of_a_multipart_upload(run, s3, s3_config, moto_server, store):
    """The link stalls after the first part, goldenhour is SIGKILLed; `upload --pending` completes it once."""
    client, bucket = s3
    proxy = TcpProxy(urlparse(moto_server).port, stall_after=5 * 2**20 + 256 * 1024)
    try:
        cfg = s3_config("concurrency = 1", endpoint=proxy.url, after="[collectors.bulk]\nmb = 16\n")
        proc = subprocess.Popen([sys.executable, "-m", "agent", "snapshot", "--incident", "INC-kill",
                                 "--collector", "bulk", "--json"], cwd=ROOT, env={**os.environ, **env_for(cfg)},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            parts = []
            while not parts:                  # wait until S3 holds a part of an unfinished upload
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "no multipart upload started"
                uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
                if uploads and proxy.stalled.is_set():
                    u = uploads[0]
                    parts = client.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]).get("Parts", [])
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.communicate()
    finally:
        proxy.close()
    key = u["Key"]
    assert len(parts) == 1 and not bundles_in(client, bucket, "prod/")   # mid-upload: one part, no object
    (bundle,) = store.glob("incidents/INC-kill/*.tar.zst")
    assert key.endswith(bundle.name) and not bundle.with_name(bundle.name.replace(".tar.zst", ".upload.json")).exists()

    cp = run(s3_config("concurrency = 1"), "upload", "--pending", "--json")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    (r,) = json.loads(cp.stdout)
    assert r["status"] == "uploaded" and r["key"] == key and r["parts"] == 4 and not r["reused"]
    assert bundles_in(client, bucket, "prod/") == [key]                     # exactly one object
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")   # the stale upload was aborted
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == bundle.with_name(bundle.name + ".sha256").read_text().split()[0]


def test_a_broken_or_busy_bundle_never_stops_the_others_and_is_never_dropped(run, s3, s3_config, store):
    client, bucket = s3
    cfg = s3_config()
    outs = [json.loads(run(cfg, "snapshot", "--json", "--incident", "INC-mix", "--collector", "host",
                           "--no-upload").stdout) for _ in range(3)]
    broken, busy, good = (Path(o["bundle"]) for o in outs)
    broken.write_bytes(broken.read_bytes()[:100])                          # truncated archive...
    broken.with_name(broken.name.replace(".tar.zst", ".manifest.json")).write_text("{not json")   # ...and sidecar
    fd = os.open(busy, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)                                         # another uploader holds it
    try:
        cp = run(cfg, "upload", "--pending", "--json")
    finally:
        os.close(fd)
    assert cp.returncode == 16
    res = {Path(r["bundle"]): r for r in json.loads(cp.stdout)}
    assert res[good]["status"] == "uploaded"
    assert res[busy]["status"] == "busy" and "another goldenhour process" in res[busy]["error"]
    assert res[broken]["status"] == "pending" and "cannot read its manifest" in res[broken]["error"]
    assert broken.exists() and busy.exists()                               # nothing dropped
    cp = run(cfg, "upload", "--pending", "--json")
    assert cp.returncode == 16
    res = {Path(r["bundle"]): r["status"] for r in json.loads(cp.stdout)}
    assert res == {broken: "pending", busy: "uploaded"}
    assert len(bundles_in(client, bucket, "prod/incidents/INC-mix/")) == 2
