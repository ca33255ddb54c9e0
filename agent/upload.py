"""Object storage: upload bundles to S3 under their incident, from the local spool.

Where it sits: after ``capture`` has published a bundle in the local store. A bundle
is *pending* until ``<bundle>.upload.json`` (the receipt) exists; ``upload_pending``
retries pending bundles oldest first, with backoff state in ``<bundle>.pending.json``,
and is what ``goldenhour upload --pending`` and the daemon's timer call.

Key layout: ``s3://BUCKET/PREFIX/incidents/<incident>/<host>/<bundle>.tar.zst`` with
``<bundle>.manifest.json`` and ``<bundle>.tar.zst.sha256`` beside it. Uploads are
idempotent: the key is fixed by the bundle's name, an object already there with the
same SHA-256 and size is accepted as is, and every upload is verified (size and the
SHA-256 metadata, plus S3's own SHA-256 checksum) before the receipt is written.
Credentials come from the standard boto3 chain and never enter a bundle.
"""
from __future__ import annotations

import getpass
import json
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any

from agent import __version__
from agent.bundle import manifest_sidecar, read_manifest, read_sidecar
from agent.config import Config
from agent.errors import GoldenhourError
from agent.incident import iso, utcnow
from agent.store import Store

EXIT_NO_CREDENTIALS, EXIT_ACCESS_DENIED, EXIT_UNREACHABLE, EXIT_NO_BUCKET, EXIT_TAMPERED, \
    EXIT_DISK_FULL, EXIT_PENDING = 10, 11, 12, 13, 14, 15, 16


class StorageError(GoldenhourError):
    exit_code = EXIT_UNREACHABLE


def parse_url(url: str) -> tuple[str, str]:
    if not url.startswith("s3://"):
        raise StorageError(f"not an s3:// URL: {url!r}", 2)
    bucket, _, prefix = url[5:].partition("/")
    if not bucket:
        raise StorageError(f"no bucket in {url!r}", 2)
    return bucket, prefix.strip("/")


def client(cfg: Config):
    import boto3
    from botocore.config import Config as BotoConfig
    session = boto3.session.Session(profile_name=cfg["upload.profile"] or None,
                                    region_name=cfg["upload.region"] or None)
    kw: dict[str, Any] = {"config": BotoConfig(retries={"max_attempts": 2, "mode": "standard"},
                                               connect_timeout=5, read_timeout=60)}
    endpoint = cfg["upload.endpoint_url"] or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        kw["endpoint_url"] = endpoint
    if not session.region_name:
        kw["region_name"] = "us-east-1"
    return session.client("s3", **kw), session


def storage_error(exc: BaseException, what: str) -> StorageError:
    """Translate boto errors into one-line messages with distinct exit codes (the one place)."""
    from botocore import exceptions as bx
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return StorageError(f"{what}: no AWS credentials (environment, profile or instance role)", EXIT_NO_CREDENTIALS)
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError,
                        bx.ConnectionClosedError)):
        return StorageError(f"{what}: object storage unreachable ({exc})", EXIT_UNREACHABLE)
    if isinstance(exc, bx.ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchBucket",):
            return StorageError(f"{what}: no such bucket", EXIT_NO_BUCKET)
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"):
            return StorageError(f"{what}: access denied ({code})", EXIT_ACCESS_DENIED)
        return StorageError(f"{what}: {code or exc}", EXIT_UNREACHABLE)
    text = str(exc)     # boto3's S3UploadFailedError wraps the ClientError in its message
    if "NoSuchBucket" in text:
        return StorageError(f"{what}: no such bucket", EXIT_NO_BUCKET)
    if "AccessDenied" in text or "InvalidAccessKeyId" in text:
        return StorageError(f"{what}: access denied", EXIT_ACCESS_DENIED)
    if isinstance(exc, OSError):
        return StorageError(f"{what}: {exc}", EXIT_UNREACHABLE)
    return StorageError(f"{what}: {type(exc).__name__}: {exc}", EXIT_UNREACHABLE)


def object_key(prefix: str, incident: str, host: str, name: str) -> str:
    parts = [p for p in (prefix, "incidents", incident, host, name) if p]
    return "/".join(parts)


def principal(cfg: Config, session) -> str:
    try:
        return session.client("sts", endpoint_url=cfg["upload.endpoint_url"] or
                               os.environ.get("AWS_ENDPOINT_URL") or None,
                               region_name=session.region_name or "us-east-1").get_caller_identity()["Arn"]
    except Exception:  # noqa: BLE001 - custody falls back to the configured principal
        return cfg["upload.principal"] or f"{getpass.getuser()}@{socket.gethostname()}"


def custody(cfg: Config, s3, session, bucket: str, prefix: str, incident: str, action: str,
            sha256: str, key: str) -> None:
    """One object per event, so concurrent writers never race on a shared file."""
    host = socket.gethostname()
    rec = {"action": action, "who": principal(cfg, session), "when": iso(utcnow()), "from_host": host,
           "sha256": sha256, "key": key, "agent": f"goldenhour {__version__}"}
    ckey = "/".join(p for p in (prefix, "incidents", incident, "custody",
                                f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{host}-{action}-"
                                f"{secrets.token_hex(4)}.json") if p)
    s3.put_object(Bucket=bucket, Key=ckey, Body=json.dumps(rec).encode(), ContentType="application/json")


def upload_bundle(cfg: Config, bundle: Path) -> dict[str, Any]:
    """Upload one local bundle (idempotent) and write its receipt; raises StorageError."""
    from boto3.s3.transfer import TransferConfig
    bucket, prefix = parse_url(cfg["upload.url"])
    man = read_manifest(bundle)
    sha = read_sidecar(bundle) or ""
    incident, host = man["incident"]["id"], man["host"]["hostname"]
    key = object_key(prefix, incident, host, bundle.name)
    size = bundle.stat().st_size
    s3, session = client(cfg)
    try:
        head = _head(s3, bucket, key)
        if not (head and head.get("Metadata", {}).get("sha256") == sha and head["ContentLength"] == size):
            extra: dict[str, Any] = {"Metadata": {"incident": incident, "host": host, "sha256": sha,
                                                  "agent-version": __version__},
                                     "ChecksumAlgorithm": "SHA256", "ContentType": "application/zstd"}
            if cfg["upload.sse"]:
                extra["ServerSideEncryption"] = cfg["upload.sse"]
                if cfg["upload.sse"] == "aws:kms" and cfg["upload.kms_key_id"]:
                    extra["SSEKMSKeyId"] = cfg["upload.kms_key_id"]
            if cfg["upload.object_lock_mode"] and cfg["upload.object_lock_days"]:
                extra["ObjectLockMode"] = cfg["upload.object_lock_mode"]
                extra["ObjectLockRetainUntilDate"] = time.time() + cfg["upload.object_lock_days"] * 86400
                from datetime import datetime, timezone
                extra["ObjectLockRetainUntilDate"] = datetime.fromtimestamp(extra["ObjectLockRetainUntilDate"],
                                                                            timezone.utc)
            mb = 2**20
            tc = TransferConfig(multipart_threshold=cfg["upload.multipart_threshold_mb"] * mb,
                                multipart_chunksize=cfg["upload.multipart_chunk_mb"] * mb)
            s3.upload_file(str(bundle), bucket, key, ExtraArgs=extra, Config=tc)
            head = _head(s3, bucket, key)
        if not head or head["ContentLength"] != size or head.get("Metadata", {}).get("sha256") != sha:
            raise StorageError(f"{key}: uploaded object does not match the bundle (size or sha256)", EXIT_TAMPERED)
        side = manifest_sidecar(bundle)
        s3.put_object(Bucket=bucket, Key=key[: -len(bundle.name)] + side.name, Body=side.read_bytes(),
                      ContentType="application/json", Metadata={"sha256": sha})
        s3.put_object(Bucket=bucket, Key=key + ".sha256", Body=f"{sha}  {bundle.name}\n".encode())
        custody(cfg, s3, session, bucket, prefix, incident, "upload", sha, key)
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - translated in one place
        raise storage_error(exc, f"upload of {bundle.name}") from None
    receipt = {"url": f"s3://{bucket}/{key}", "bucket": bucket, "key": key, "size": size, "sha256": sha,
               "etag": head.get("ETag", "").strip('"'), "version_id": head.get("VersionId"),
               "checksum_sha256": head.get("ChecksumSHA256"), "uploaded_at": iso(utcnow())}
    tmp = Store.receipt(bundle).with_suffix(".tmp")
    tmp.write_text(json.dumps(receipt, indent=1))
    os.replace(tmp, Store.receipt(bundle))
    _pending_file(bundle).unlink(missing_ok=True)
    return receipt


def _head(s3, bucket: str, key: str) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError
    try:
        return s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def _pending_file(bundle: Path) -> Path:
    return Store.receipt(bundle).with_name(Store.receipt(bundle).name.replace(".upload.json", ".pending.json"))


def upload_pending(cfg: Config, respect_backoff: bool = True) -> list[dict[str, Any]]:
    """Try every pending bundle, oldest first; failures stay pending with a backoff record."""
    results = []
    if not cfg["upload.url"]:
        return results
    for bundle in Store(cfg.store_path).pending():
        pf = _pending_file(bundle)
        state = json.loads(pf.read_text()) if pf.exists() else {"attempts": 0}
        if respect_backoff and state.get("next_try", 0) > time.time():
            results.append({"bundle": str(bundle), "status": "waiting", "next_try": state["next_try"]})
            continue
        try:
            r = upload_bundle(cfg, bundle)
            results.append({"bundle": str(bundle), "status": "uploaded", **r})
        except GoldenhourError as exc:
            state["attempts"] = state.get("attempts", 0) + 1
            delay = min(cfg["upload.retry_initial_s"] * 2 ** (state["attempts"] - 1), cfg["upload.retry_max_s"])
            state.update(last_error=str(exc), exit_code=exc.exit_code, next_try=time.time() + delay,
                         last_try=iso(utcnow()))
            pf.write_text(json.dumps(state))
            results.append({"bundle": str(bundle), "status": "pending", "error": str(exc),
                            "exit_code": exc.exit_code})
    return results
