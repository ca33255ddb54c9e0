"""Upload, spool and retrieval against a real S3 API (moto server on loopback, real HTTP)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import zstandard

from tests.storage.conftest import CREDS, free_port

BIG = "tests.helpers.bulk"


def env(cfg: str) -> dict:
    return {"GOLDENHOUR_CONFIG": cfg, "GOLDENHOUR_EXTRA_COLLECTORS": BIG, **CREDS}


def test_snapshot_uploads_multipart_with_metadata_checksum_and_sse(gh, s3, s3_config):
    client, bucket = s3
    cfg = s3_config('sse = "AES256"\n[collectors.bulk]\nmb = 12\n')
    cp = gh("snapshot", "--json", "--incident", "INC-s3", "--collector", "bulk", env=env(cfg))
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    assert out["upload"]["status"] == "uploaded", out
    key = out["upload"]["key"]
    assert key == f"prod/incidents/INC-s3/host-a/{Path(out['bundle']).name}"
    head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert head["Metadata"]["sha256"] == out["sha256"] and head["Metadata"]["incident"] == "INC-s3"
    assert head["ServerSideEncryption"] == "AES256"
    assert "-" in head["ETag"]                                   # multipart: the bundle is over 5 MB
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == out["sha256"]
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert key.replace(".tar.zst", ".manifest.json") in keys
    custody = [k for k in keys if "/custody/" in k]
    rec = json.loads(client.get_object(Bucket=bucket, Key=custody[0])["Body"].read())
    assert rec["action"] == "upload" and rec["sha256"] == out["sha256"] and rec["who"]
    receipt = json.loads(Path(out["bundle"].replace(".tar.zst", ".upload.json")).read_text())
    assert receipt["key"] == key and receipt["etag"]


def test_endpoint_down_keeps_the_bundle_pending_until_it_comes_back(gh, s3, s3_config):
    client, bucket = s3
    down = s3_config(endpoint=f"http://127.0.0.1:{free_port()}")
    cp = gh("snapshot", "--json", "--incident", "INC-down", "--collector", "bulk", env=env(down))
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    assert out["upload"]["status"] == "pending" and out["upload"]["exit_code"] == 12
    cp = gh("upload", "--pending", env=env(down))
    assert cp.returncode == 16 and "unreachable" in cp.stdout
    assert Path(out["bundle"]).exists()
    up = s3_config()
    cp = gh("upload", "--pending", "--json", env=env(up))
    assert cp.returncode == 0, cp.stdout + cp.stderr
    res = json.loads(cp.stdout)
    assert [r["status"] for r in res] == ["uploaded"]
    body = client.get_object(Bucket=bucket, Key=res[0]["key"])["Body"].read()
    assert hashlib.sha256(body).hexdigest() == out["sha256"]
    # idempotent: nothing pending, and uploading again reuses the same object
    assert json.loads(gh("upload", "--pending", "--json", env=env(up)).stdout) == []
    assert gh("upload", out["bundle"], env=env(up)).returncode == 0
    assert len([o for o in client.list_objects_v2(Bucket=bucket)["Contents"] if o["Key"].endswith(".tar.zst")]) == 1


def test_fetch_two_hosts_verifies_both_and_refuses_a_tampered_object(gh, s3, s3_config, tmp_path):
    client, bucket = s3
    for host in ("web-1", "web-2"):
        cp = gh("snapshot", "--json", "--incident", "INC-2h", "--collector", "bulk", env=env(s3_config(host=host)))
        assert json.loads(cp.stdout)["upload"]["status"] == "uploaded"
    cfg = s3_config(host="laptop")
    listing = json.loads(gh("bundles", "list", "--incident", "INC-2h", "--json", env=env(cfg)).stdout)
    assert sorted(r["host"] for r in listing if r["source"] == "s3") == ["web-1", "web-2"]
    cp = gh("fetch", "--incident", "INC-2h", "--dest", str(tmp_path / "rca"), "--json", env=env(cfg))
    assert cp.returncode == 0, cp.stderr
    rows = json.loads(cp.stdout)
    assert sorted(r["host"] for r in rows) == ["web-1", "web-2"]
    for r in rows:
        assert Path(r["extracted"], "manifest.json").exists()
        assert gh("verify", f"s3://{bucket}/{r['key']}", env=env(cfg)).returncode == 0
    # tamper with one object in place (same metadata): refused with exit 14
    key = rows[0]["key"]
    obj = client.get_object(Bucket=bucket, Key=key)
    data = bytearray(obj["Body"].read())
    data[len(data) // 2] ^= 1
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data), Metadata=obj["Metadata"])
    cp = gh("fetch", "--incident", "INC-2h", "--host", rows[0]["host"], "--dest", str(tmp_path / "again"),
            env=env(cfg))
    assert cp.returncode == 14 and "refused" in cp.stderr
    assert gh("verify", f"s3://{bucket}/{key}", env=env(cfg)).returncode == 1


def _evil_bundle(member: tarfile.TarInfo, data: bytes = b"x") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        if member.isfile():
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
        else:
            tar.addfile(member)
    return zstandard.ZstdCompressor().compress(buf.getvalue())


def test_safe_extract_refuses_escapes_links_and_devices(tmp_path):
    from agent.errors import GoldenhourError
    from agent.retrieve import safe_extract
    link = tarfile.TarInfo("top/evil")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    dev = tarfile.TarInfo("top/dev")
    dev.type = tarfile.CHRTYPE
    for i, m in enumerate([tarfile.TarInfo("../../etc/x"), tarfile.TarInfo("/etc/x"),
                           tarfile.TarInfo("top/../../x"), link, dev]):
        p = tmp_path / f"evil{i}.tar.zst"
        p.write_bytes(_evil_bundle(m))
        dest = tmp_path / f"dest{i}"
        dest.mkdir()
        try:
            safe_extract(p, dest)
            raise AssertionError(f"{m.name} was extracted")
        except GoldenhourError as exc:
            assert exc.exit_code == 14 and "refused" in str(exc)
        assert not any(dest.rglob("*")) and not (tmp_path.parent / "x").exists()


def test_wrong_bucket_and_no_credentials_have_distinct_exit_codes(gh, s3_config, store):
    cfg = s3_config()
    cp = gh("snapshot", "--json", "--incident", "INC-e", "--collector", "bulk", env=env(cfg))
    bundle = json.loads(cp.stdout)["bundle"]
    e = env(cfg)
    cp = gh("upload", bundle, "--url", "s3://no-such-bucket-gh/x", env=e)
    assert cp.returncode == 13 and "no such bucket" in cp.stdout
    noenv = {k: "" for k in CREDS} | {"GOLDENHOUR_CONFIG": cfg, "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                                      "AWS_CONFIG_FILE": "/nonexistent", "AWS_EC2_METADATA_DISABLED": "true"}
    cp = gh("upload", bundle, env=noenv)
    assert cp.returncode == 10 and "credentials" in cp.stdout
