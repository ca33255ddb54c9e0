"""docs/production.md, run as written: its IAM policies, its config and its nginx snippet.

The page's blocks marked ``<!-- test: NAME -->`` are read from the page itself, so the page cannot
drift from what works:

- the hosts' and the responders' IAM policies are applied to moto's S3 server with IAM enforcement
  on (real HTTP, SigV4, each request checked against the user's policy; moto maps requests to the
  S3 actions, e.g. ``?uploads`` to ``s3:ListBucketMultipartUploads``; it does not check KMS
  permissions, nor tell ``PutObjectRetention`` from ``PutObject``);
- every S3 call in agent/ maps to an action those policies grant (a new call fails this test until
  the page lists its action);
- the config loads as written; the test changes only what a test machine must (paths, the
  listen port, the S3 endpoint, the collectors of a capture, multipart sizes);
- nginx runs the snippet (certificate paths and ports replaced) in front of the real daemon: a
  PagerDuty-signed delivery through TLS is captured and uploaded with the host's policy; the
  paths the snippet does not route answer 404 from nginx; a responder lists, fetches, verifies and
  reports with the responders' policy, and cannot upload.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import httpx
import pytest

from gh_webhook_payloads import pagerduty_delivery
from tests.helpers.moto import free_port, start_moto, stop

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "production.md"
BUCKET = "acme-incident-evidence"
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "eu-west-1",
         "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent",
         "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
SECRET = "pagerduty-signing-secret-of-the-production-test"

# boto3 S3 operations goldenhour calls -> the IAM actions they need (AWS's S3 API reference).
S3_ACTIONS = {
    "put_object": {"s3:PutObject"}, "create_multipart_upload": {"s3:PutObject"},
    "upload_part": {"s3:PutObject"}, "complete_multipart_upload": {"s3:PutObject"},
    "abort_multipart_upload": {"s3:AbortMultipartUpload"},
    "list_multipart_uploads": {"s3:ListBucketMultipartUploads"},
    "head_object": {"s3:GetObject", "s3:ListBucket"}, "get_object": {"s3:GetObject"},
    "list_objects_v2": {"s3:ListBucket"},
    "put_object_retention": {"s3:PutObjectRetention"},
}


def doc_blocks() -> dict[str, str]:
    """``<!-- test: NAME -->`` followed by a fenced block, from docs/production.md."""
    text = DOC.read_text()
    found = dict(re.findall(r"<!-- test: ([a-z-]+) -->\n```[a-z]*\n(.*?)\n```", text, re.S))
    assert set(found) >= {"iam-host", "iam-responder", "config", "nginx"}, sorted(found)
    return found


def test_the_policies_grant_every_s3_call_goldenhour_makes():
    blocks = doc_blocks()
    granted = set()
    for name in ("iam-host", "iam-responder"):
        for st in json.loads(blocks[name])["Statement"]:
            granted.update(st["Action"])
    called = set()
    for path in (ROOT / "agent").rglob("*.py"):
        src = path.read_text()
        called.update(re.findall(r"\bs3\.(\w+)\(", src))
        called.update(re.findall(r"get_paginator\(\"(\w+)\"\)", src))
        if re.search(r"args\[\"VersionId\"\]", src) and "get_object(**args)" in src:
            assert "s3:GetObjectVersion" in granted, f"{path.name} reads a version: s3:GetObjectVersion"
    assert called, "no S3 call found: has agent/ stopped calling s3.<operation>(...)?"
    unknown = called - set(S3_ACTIONS) - {"get_paginator"}
    assert not unknown, f"S3 calls this test does not know (add their IAM actions here and to the page): {unknown}"
    missing = {a for op in called if op in S3_ACTIONS for a in S3_ACTIONS[op]} - granted
    assert not missing, f"docs/production.md's policies lack {missing}"
    kms = re.search(r"```json\n(\{ \"Sid\": \"GoldenhourEvidenceKey\".*?)\n```", DOC.read_text(), re.S)
    assert kms and set(json.loads(kms.group(1))["Action"]) == {"kms:GenerateDataKey", "kms:Decrypt"}


def test_the_config_loads_as_written(tmp_path):
    from agent import config
    p = tmp_path / "config.toml"
    p.write_text(doc_blocks()["config"] + "\n")
    cfg = config.load(p)
    assert cfg["upload.url"] == f"s3://{BUCKET}/prod" and cfg.webhook("pagerduty")["enabled"]
    assert cfg["daemon.listen"] == "127.0.0.1:8787" and "checkout-api" in cfg["daemon.services"]


# -- the whole path -----------------------------------------------------------------------

def _toml(data: dict) -> str:
    """The config back as TOML (its values are strings, numbers, booleans and lists of strings)."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v)

    out = []
    def section(name: str, body: dict) -> None:
        flat = {k: v for k, v in body.items() if not isinstance(v, dict)}
        if flat:
            out.append(f"[{name}]")
            out.extend(f"{k} = {value(v)}" for k, v in flat.items())
        for k, v in body.items():
            if isinstance(v, dict):
                section(f"{name}.{k}", v)
    for name, body in data.items():
        section(name, body)
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def aws():
    """moto with the page's policies on three users (host, host narrowed to web-3, responder), enforced."""
    import boto3
    proc, url = start_moto(CREDS)
    try:
        kw = {"endpoint_url": url, "region_name": "eu-west-1", "aws_access_key_id": "testing",
              "aws_secret_access_key": "testing"}
        boto3.client("s3", **kw).create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True,
                                               CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        iam = boto3.client("iam", **kw)
        blocks = doc_blocks()
        narrow = json.loads(blocks["iam-host"])
        narrow["Statement"][0]["Resource"] = [f"arn:aws:s3:::{BUCKET}/prod/incidents/*/web-3/*",
                                              f"arn:aws:s3:::{BUCKET}/prod/incidents/*/custody/*-web-3-upload-*"]
        users = {}
        for user, policy in (("host", blocks["iam-host"]), ("responder", blocks["iam-responder"]),
                             ("web-3", json.dumps(narrow))):
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName="goldenhour", PolicyDocument=policy)
            key = iam.create_access_key(UserName=user)["AccessKey"]
            users[user] = {**CREDS, "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                           "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        req = urllib.request.Request(f"{url}/moto-api/reset-auth", data=b"0", method="POST",
                                     headers={"Content-Type": "text/plain"})
        assert json.loads(urllib.request.urlopen(req, timeout=30).read())["status"] == "ok"
        yield url, users
    finally:
        stop(proc)


def _cert(d: Path) -> tuple[Path, Path]:
    crt, key = d / "web-3.example.com.pem", d / "web-3.example.com.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", str(key),
                    "-out", str(crt), "-subj", "/CN=web-3.example.com",
                    "-addext", "subjectAltName=DNS:web-3.example.com,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return crt, key


def _nginx(d: Path, snippet: str, port: int, upstream: str, crt: Path, key: Path) -> subprocess.Popen:
    subs = [("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;"),
            ("/etc/ssl/certs/web-3.example.com.pem", str(crt)),
            ("/etc/ssl/private/web-3.example.com.key", str(key)),
            ("proxy_pass http://127.0.0.1:8787;", f"proxy_pass {upstream};")]
    for old, new in subs:
        assert snippet.count(old) == 1, f"the nginx snippet no longer has {old!r} once"
        snippet = snippet.replace(old, new)
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    conf = d / "nginx.conf"
    conf.write_text(f"""daemon off;
user root;
worker_processes 1;
pid {d}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
{snippet}
}}
""")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    cp = subprocess.run([nginx, "-t", "-e", "stderr", "-p", str(d), "-c", str(conf)], capture_output=True, text=True,
                        timeout=60)
    assert cp.returncode == 0, cp.stderr
    proc = subprocess.Popen([nginx, "-e", "stderr", "-p", str(d), "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                why = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"nginx did not start: {why}") from None
            time.sleep(0.05)


def _stop_nginx(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)      # nginx's fast shutdown; its workers are in its group
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _wait(what: str, fn, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s")


@pytest.mark.skipif(not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")),
                    reason="nginx is not installed (scripts/setup-host.sh test installs it)")
def test_pagerduty_through_the_tls_proxy_to_s3_and_back_to_a_responder(aws, new_daemon, tmp_path):
    endpoint, users = aws
    blocks = doc_blocks()
    extra = {"GOLDENHOUR_EXTRA_COLLECTORS": "tests.helpers.bulk"}
    dd = new_daemon("web-3", env={**users["host"], **extra})
    secret = dd.dir / "pagerduty.secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    cfg = tomllib.loads(blocks["config"])
    cfg["store"].update(path=str(dd.store), reserve_bytes=0, reserve_percent=0.0)
    cfg["upload"].update(endpoint_url=endpoint, multipart_threshold_mb=5, multipart_chunk_mb=5)
    cfg["daemon"].update(listen="127.0.0.1:0", socket=str(dd.socket), collectors=["host"])
    cfg["webhooks"]["pagerduty"]["secret_file"] = str(secret)
    dd.cfg.write_text(_toml(cfg))
    dd.start()

    crt, key = _cert(tmp_path)
    port = free_port()
    proxy = _nginx(tmp_path / "nginx", blocks["nginx"], port, dd.url, crt, key)
    tls = ssl.create_default_context(cafile=str(crt))
    try:
        https = f"https://127.0.0.1:{port}"
        raw, headers = pagerduty_delivery(incident_id="Q1PROD01", service="checkout-api", secret=SECRET)
        r = httpx.post(f"{https}/v1/webhooks/pagerduty", content=raw, headers=headers, verify=tls, timeout=30)
        assert r.status_code == 202 and r.json()["status"] == "queued", r.text
        bad = httpx.post(f"{https}/v1/webhooks/pagerduty", content=raw + b" ", headers=headers, verify=tls,
                         timeout=30)
        assert bad.status_code == 403, bad.text                  # the signature covers the raw body nginx passes on
        for method, path in (("GET", "/healthz"), ("GET", "/metrics"), ("POST", "/v1/snapshot"),
                             ("GET", "/v1/incidents")):
            assert httpx.request(method, https + path, verify=tls, timeout=30).status_code == 404, path
        big = httpx.post(f"{https}/v1/webhooks/pagerduty", content=b"x" * (1024 * 1024 + 1), headers=headers,
                         verify=tls, timeout=30)
        assert big.status_code == 413
    finally:
        _stop_nginx(proxy)

    def uploaded() -> list[Path]:
        last = dd.health().get("last_upload") or {}
        assert last.get("ok") is not False, f"the daemon's upload failed: {last}"
        return sorted((dd.store / "incidents" / "Q1PROD01").glob("*.upload.json"))

    receipts = _wait("the daemon's capture uploaded", uploaded)
    receipt = json.loads(receipts[0].read_text())
    assert receipt["key"].startswith("prod/incidents/Q1PROD01/web-3/")
    assert receipt["object_lock"]["mode"] == "GOVERNANCE"
    health = dd.health()
    assert health["pending_uploads"] == 0 and health["status"] == "ok" and health["trackers"] == ["pagerduty"], health

    # the same host, narrowed to its own name: a multipart upload after an interrupted one
    import boto3
    cp = dd.gh("snapshot", "--incident", "Q1PROD01", "--collector", "bulk", "--no-upload", "--json",
               env={**users["web-3"], **extra})
    assert cp.returncode == 0, cp.stderr
    bundle = Path(json.loads(cp.stdout)["bundle"])
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="eu-west-1",
                      aws_access_key_id=users["web-3"]["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=users["web-3"]["AWS_SECRET_ACCESS_KEY"])
    stale_key = f"prod/incidents/Q1PROD01/web-3/{bundle.name}"
    s3.create_multipart_upload(Bucket=BUCKET, Key=stale_key)       # what a killed upload leaves
    cp = dd.gh("upload", "--pending", "--json", env={**users["web-3"], **extra})
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert json.loads(cp.stdout)[0]["status"] == "uploaded", cp.stdout
    assert not s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads")

    # a responder's machine: its own empty store, the page's small config
    rdir = tmp_path / "responder"
    rdir.mkdir()
    rcfg = rdir / "goldenhour.toml"
    rcfg.write_text(f'[store]\npath = "{rdir / "store"}"\n[upload]\nurl = "s3://{BUCKET}/prod"\n'
                    f'region = "eu-west-1"\nendpoint_url = "{endpoint}"\n')
    renv = {**users["responder"], "GOLDENHOUR_CONFIG": str(rcfg)}

    def responder(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, cwd=rdir,
                              env={**os.environ, **renv}, timeout=300)

    cp = responder("bundles", "list", "--incident", "Q1PROD01", "--json")
    assert cp.returncode == 0, cp.stderr
    assert len(json.loads(cp.stdout)) == 2
    cp = responder("fetch", "--incident", "Q1PROD01", "--json")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert all(row["status"] == "verified" for row in json.loads(cp.stdout)), cp.stdout
    cp = responder("verify", f"s3://{BUCKET}/{receipt['key']}")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    cp = responder("report", "--incident", "Q1PROD01", "--fetch", "--out", str(rdir / "r.html"))
    assert cp.returncode == 0, cp.stdout + cp.stderr
    cp = responder("upload", str(bundle), "--url", f"s3://{BUCKET}/prod")
    assert cp.returncode == 11, cp.stdout + cp.stderr                 # responders read; they do not write bundles
