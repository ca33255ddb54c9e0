"""Upload against a real S3 API (moto server on loopback, real HTTP): layout, multipart, metadata,
checksums, SSE, Object Lock, custody records, receipts, idempotence and refusals."""
from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

from tests.storage.conftest import boto

MiB = 2**20


def parts_checksum(path: Path, part: int) -> str:
    """S3's composite SHA-256 computed here, independently of agent/upload.py."""
    data = path.read_bytes()
    digests = b"".join(hashlib.sha256(data[i:i + part]).digest() for i in range(0, len(data), part))
    return base64.b64encode(hashlib.sha256(digests).digest()).decode() + f"-{-(-len(data) // part)}"


def keys(client, bucket: str, prefix: str = "") -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]


def test_snapshot_uploads_multipart_with_metadata_checksums_sse_and_custody(run, s3, s3_config):
    client, bucket = s3
    cfg = s3_config('sse = "AES256"', after="[collectors.bulk]\nmb = 12\n")
    cp = run(cfg, "snapshot", "--json", "--incident", "INC-s3", "--collector", "bulk")
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    up, bundle = out["upload"], Path(out["bundle"])
    assert up["status"] == "uploaded", up
    key = f"prod/incidents/INC-s3/host-a/{bundle.name}"
    assert up["key"] == key and up["url"] == f"s3://{bucket}/{key}"

    head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert head["ContentLength"] == bundle.stat().st_size > 12 * MiB
    meta = head["Metadata"]
    assert meta["sha256"] == out["sha256"] and meta["incident"] == "INC-s3" and meta["host"] == "host-a"
    assert meta["agent-version"] and meta["part-size"] == str(5 * MiB)
    assert head["ETag"].strip('"').endswith("-3")                       # 3 parts of 5 MiB
    assert head["ChecksumSHA256"].split("-")[0] == parts_checksum(bundle, 5 * MiB).split("-")[0]
    assert head["ServerSideEncryption"] == "AES256"
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == out["sha256"]
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")

    # sidecars beside it, the same bytes as on the host
    man_key = key.replace(".tar.zst", ".manifest.json")
    side = client.get_object(Bucket=bucket, Key=man_key)
    assert side["Body"].read() == Path(out["manifest"]).read_bytes()
    assert side["ServerSideEncryption"] == "AES256"
    sha_obj = client.get_object(Bucket=bucket, Key=key + ".sha256")["Body"].read().decode()
    assert sha_obj == f"{out['sha256']}  {bundle.name}\n"

    # one custody record: who (STS caller), when, from which host, what
    custody = keys(client, bucket, "prod/incidents/INC-s3/custody/")
    assert len(custody) == 1 and "-host-a-upload-" in custody[0]
    rec = json.loads(client.get_object(Bucket=bucket, Key=custody[0])["Body"].read())
    assert rec["action"] == "upload" and rec["sha256"] == out["sha256"] and rec["key"] == key
    assert rec["who"].startswith("arn:aws:") and rec["who_source"] == "sts"
    assert rec["from_host"] == "host-a" and rec["when"] and rec["os_user"]
    assert "testing" not in json.dumps(rec)                              # no credentials anywhere

    # the receipt makes the bundle uploaded (not pending)
    receipt = json.loads(bundle.with_name(bundle.name.replace(".tar.zst", ".upload.json")).read_text())
    assert receipt["key"] == key and receipt["etag"] == head["ETag"].strip('"')
    assert receipt["checksum_verified"] and receipt["parts"] == 3 and receipt["custody_key"] == custody[0]
    assert receipt["sha256"] == out["sha256"] and receipt["uploaded_at"]
    assert not bundle.with_name(bundle.name.replace(".tar.zst", ".pending.json")).exists()


def test_kms_and_object_lock_single_put_and_multipart(run, moto_server, s3_config, store):
    client = boto(moto_server)
    bucket = f"locked-{store.parent.name[-8:].lower().replace('_', '-')}"
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    cfg = s3_config('sse = "aws:kms"\nkms_key_id = "alias/evidence"\nobject_lock_mode = "GOVERNANCE"\n'
                    'object_lock_days = 7', bucket_name=bucket, after="[collectors.bulk]\nmb = 6\n")
    soon = datetime.now(timezone.utc) + timedelta(days=7)
    for collector, parts in (("host", 1), ("bulk", 2)):
        cp = run(cfg, "snapshot", "--json", "--incident", "INC-lock", "--collector", collector)
        out = json.loads(cp.stdout)
        assert cp.returncode == 0 and out["upload"]["status"] == "uploaded", cp.stdout + cp.stderr
        head = client.head_object(Bucket=bucket, Key=out["upload"]["key"], ChecksumMode="ENABLED")
        assert head["ObjectLockMode"] == "GOVERNANCE"
        assert abs((head["ObjectLockRetainUntilDate"] - soon).total_seconds()) < 600
        assert head["ServerSideEncryption"] == "aws:kms" and "evidence" in head["SSEKMSKeyId"]
        assert out["upload"]["version_id"] and out["upload"]["parts"] == parts
        assert out["upload"]["object_lock"]["mode"] == "GOVERNANCE"
        if parts == 1:
            assert head["ChecksumSHA256"] == base64.b64encode(bytes.fromhex(out["sha256"])).decode()
    custody = keys(client, bucket, "prod/incidents/INC-lock/custody/")
    assert len(custody) == 2
    assert all(client.head_object(Bucket=bucket, Key=k)["ObjectLockMode"] == "GOVERNANCE" for k in custody)


def test_upload_again_reuses_the_verified_object_and_never_overwrites_another(run, s3, s3_config):
    client, bucket = s3
    cfg = s3_config()
    out = json.loads(run(cfg, "snapshot", "--json", "--incident", "INC-idem", "--collector", "host").stdout)
    key, bundle = out["upload"]["key"], Path(out["bundle"])
    first = client.head_object(Bucket=bucket, Key=key)
    receipt = bundle.with_name(bundle.name.replace(".tar.zst", ".upload.json"))
    receipt.unlink()                                    # as if killed after the upload, before the receipt
    cp = run(cfg, "upload", "--pending", "--json")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    (r,) = json.loads(cp.stdout)
    assert r["status"] == "uploaded" and r["reused"] and receipt.exists()
    assert client.head_object(Bucket=bucket, Key=key)["LastModified"] == first["LastModified"]   # not sent again
    assert keys(client, bucket, "prod/incidents/INC-idem/host-a/").count(key) == 1
    cp = run(cfg, "upload", "--pending")
    assert cp.returncode == 0 and "nothing pending" in cp.stdout

    # a different object at a bundle's key is never overwritten: refused, the bundle stays pending
    out2 = json.loads(run(cfg, "snapshot", "--json", "--incident", "INC-idem", "--collector", "host",
                          "--no-upload").stdout)
    key2 = f"prod/incidents/INC-idem/host-a/{Path(out2['bundle']).name}"
    client.put_object(Bucket=bucket, Key=key2, Body=b"someone else's bytes")
    cp = run(cfg, "upload", out2["bundle"])
    assert cp.returncode == 14 and "already holds a different object" in cp.stdout, cp.stdout
    assert client.get_object(Bucket=bucket, Key=key2)["Body"].read() == b"someone else's bytes"
    pending = json.loads(Path(out2["bundle"].replace(".tar.zst", ".pending.json")).read_text())
    assert pending["attempts"] == 1 and pending["exit_code"] == 14


def test_a_bundle_corrupted_on_disk_is_not_uploaded(run, s3, s3_config):
    client, bucket = s3
    cfg = s3_config(after="[collectors.bulk]\nmb = 7\n")
    out = json.loads(run(cfg, "snapshot", "--json", "--incident", "INC-rot", "--collector", "bulk",
                         "--no-upload").stdout)
    bundle = Path(out["bundle"])
    with open(bundle, "r+b") as fh:                     # one flipped bit, the .sha256 unchanged
        fh.seek(6 * MiB)
        b = fh.read(1)
        fh.seek(6 * MiB)
        fh.write(bytes([b[0] ^ 1]))
    cp = run(cfg, "upload", "--pending", "--json")
    assert cp.returncode == 16
    (r,) = json.loads(cp.stdout)
    assert r["status"] == "pending" and r["exit_code"] == 14 and "no longer matches its .sha256" in r["error"]
    assert not keys(client, bucket, "prod/incidents/INC-rot/host-a/")        # nothing completed
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")   # and nothing left half-done
    assert bundle.exists()
