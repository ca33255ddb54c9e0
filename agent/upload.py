"""Object storage: every bundle into S3 under its incident, from a local spool that loses nothing.

Where it sits: after ``capture`` has published a bundle in the local store (the bundle
is complete on disk before any upload starts). ``snapshot`` calls ``upload_bundle``
right away when an upload is configured; ``goldenhour upload --pending`` and the
daemon's timer call ``upload_pending``. ``agent/retrieve.py`` is the reading side.

Key layout (PREFIX may be empty)::

    s3://BUCKET/PREFIX/incidents/<incident>/<host>/<bundle>.tar.zst         the bundle
    s3://BUCKET/PREFIX/incidents/<incident>/<host>/<bundle>.manifest.json   its manifest
    s3://BUCKET/PREFIX/incidents/<incident>/<host>/<bundle>.tar.zst.sha256  sha256sum -c format
    s3://BUCKET/PREFIX/incidents/<incident>/custody/<time>-<host>-<action>-<rand>.json

The spool. A bundle is *pending* until ``<bundle>.upload.json`` (the receipt) exists;
a failed attempt leaves ``<bundle>.pending.json`` with ``attempts``, ``last_error``,
``exit_code`` and ``next_try`` (epoch seconds; the delay doubles from
``upload.retry_initial_s`` up to ``upload.retry_max_s``), and ``url`` when the URL was
given on the command line (``snapshot --upload s3://...``): retries go there. Nothing
pending is ever removed (``Store.prune`` only removes bundles that have a receipt). With
no upload.url and no remembered URL a bundle is local-only, not pending (agent/store.py).

Idempotence. The key is fixed by the bundle's name. Before sending, the key is
HEADed: an object there with our SHA-256 metadata, our size and a matching S3
checksum is accepted as is (the receipt is written, nothing is sent again); an
object there with other content is never overwritten (exit 14). Multipart uploads
left behind by an interrupted attempt (a killed process, a dropped link) are
aborted before a fresh one starts, so a retry never duplicates or mixes parts.

Integrity end to end. The bundle is read once per part: each part's SHA-256 goes
with it (S3 rejects a part whose bytes differ) and the parts' hashes roll into the
whole file's SHA-256, which must equal the ``.sha256`` written at capture time
before the upload is completed (a bundle corrupted on disk is never uploaded).
After the upload the object is HEADed: size, SHA-256 metadata and S3's SHA-256
checksum (the hash of the part hashes, ``...-N``, for multipart) must all match
before the receipt is written. Parts stream from the file, so memory stays at a
few MiB whatever the bundle's size.

Credentials come from the standard boto3 chain (environment, ``upload.profile``,
web identity, instance/container role) and never enter a bundle or a record.
``upload.endpoint_url``, or ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` (honoured
natively by boto3), points at an S3-compatible store.

Chain of custody: each upload (and each fetch, see retrieve.py) PUTs one small JSON
object under ``incidents/<incident>/custody/`` -- one object per event, so there is
no read-modify-write race between hosts. Who: the STS caller ARN when STS answers,
else ``upload.principal``, else user@host.

Errors: every boto/botocore exception goes through ``storage_error`` (the one place)
and becomes a one-line ``StorageError`` with a distinct exit code (agent/errors.py).

Public API:
    upload_bundle(cfg, bundle) -> receipt dict        (raises StorageError)
    upload_pending(cfg, respect_backoff=True) -> list of result dicts, one per pending
        bundle, oldest first: {"bundle": path, "status": "uploaded", **receipt} or
        {"bundle", "status": "pending", "error", "exit_code", "attempts", "next_try"} or
        {"bundle", "status": "waiting", "next_try", "attempts", "last_error"} (backoff not over) or
        {"bundle", "status": "busy", "error"} (another goldenhour process is uploading it);
        each also with "upload_url", where it went (or was to go).
    storage_error(exc, what) -> StorageError
"""
from __future__ import annotations

import base64
import errno
import fcntl
import getpass
import hashlib
import io
import json
import os
import random
import secrets
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from agent import __version__
from agent.bundle import (BUF, BundleError, SidecarMismatch, atomic_write, fsync_dir, manifest_bytes, manifest_sidecar,
                          read_sidecar, verify_file, write_sidecar)
from agent.config import Config
from agent.errors import (EXIT_ACCESS_DENIED, EXIT_DISK_FULL, EXIT_NO_BUCKET,
                          EXIT_NO_CREDENTIALS, EXIT_NOT_FOUND, EXIT_PENDING, EXIT_REJECTED, EXIT_TAMPERED,
                          EXIT_UNREACHABLE, EXIT_USAGE, GoldenhourError)
from agent.incident import iso, utcnow
from agent.manifest import RECORD, Manifest, filed_problems
from agent.manifest import read as read_manifest
from agent.store import Store

MiB = 2**20


class StorageError(GoldenhourError):
    """An object-storage failure: one line, and an exit code from 10-17 (or 2, 4)."""

    exit_code = EXIT_UNREACHABLE


# -- configuration ------------------------------------------------------------

def parse_url(url: str) -> tuple[str, str]:
    """``s3://BUCKET/PREFIX`` -> (bucket, prefix without slashes at either end)."""
    if not url or not url.startswith("s3://"):
        raise StorageError(f"not an s3:// URL: {url!r} (expected s3://BUCKET/PREFIX)", EXIT_USAGE)
    bucket, _, prefix = url[5:].partition("/")
    if not bucket:
        raise StorageError(f"no bucket in {url!r} (expected s3://BUCKET/PREFIX)", EXIT_USAGE)
    return bucket, prefix.strip("/")


def _endpoint(cfg: Config) -> str | None:
    # AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL are honoured by boto3 itself (>= 1.28)
    return cfg["upload.endpoint_url"] or None


def client(cfg: Config):
    """An S3 client and its session from the config and the standard credential chain."""
    import boto3
    from botocore.config import Config as BotoConfig
    try:
        session = boto3.session.Session(profile_name=cfg["upload.profile"] or None,
                                        region_name=cfg["upload.region"] or None)
        kw: dict[str, Any] = {"config": BotoConfig(
            retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60,
            max_pool_connections=max(10, cfg["upload.concurrency"] + 2),
            # we send our own SHA-256s and check downloads ourselves (composite checksums too)
            request_checksum_calculation="when_required", response_checksum_validation="when_required")}
        if _endpoint(cfg):
            kw["endpoint_url"] = _endpoint(cfg)
        if not session.region_name:
            kw["region_name"] = "us-east-1"
        return session.client("s3", **kw), session
    except Exception as exc:  # noqa: BLE001 - ProfileNotFound, a bad endpoint URL...
        raise storage_error(exc, "object storage client") from None


def object_key(prefix: str, incident: str, host: str, name: str) -> str:
    return "/".join(p for p in (prefix, "incidents", incident, host, name) if p)


# -- errors: the one place boto exceptions become exit codes -------------------------

_CRED_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "ExpiredTokenException",
               "InvalidToken", "TokenRefreshRequired", "InvalidClientTokenId", "UnrecognizedClientException",
               "AuthorizationHeaderMalformed"}
_DENIED_CODES = {"AccessDenied", "AccessDeniedException", "AllAccessDisabled", "AccountProblem", "403",
                 "Forbidden", "KMS.AccessDeniedException", "KMS.DisabledException"}
_DOWN_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "500", "502", "503", "504",
               "Throttling", "ThrottlingException", "RequestTimeTooSkewed"}
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound", "NoSuchVersion"}


def storage_error(exc: BaseException, what: str, bucket: str | None = None) -> StorageError:
    """Translate any exception of a storage call into a one-line StorageError with its exit code."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, GoldenhourError):
        return StorageError(str(exc), exc.exit_code)
    from botocore import exceptions as bx
    where = f" (bucket {bucket})" if bucket else ""
    if isinstance(exc, bx.ProfileNotFound):
        return StorageError(f"{what}: AWS profile not found: {exc.kwargs.get('profile')}", EXIT_NO_CREDENTIALS)
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError, bx.CredentialRetrievalError,
                        bx.NoAuthTokenError, bx.TokenRetrievalError, bx.SSOError)):
        return StorageError(f"{what}: no AWS credentials found (environment, upload.profile, web identity or "
                            f"instance role): {exc}", EXIT_NO_CREDENTIALS)
    if isinstance(exc, bx.FlexibleChecksumError):
        return StorageError(f"{what}: the object's bytes do not match its S3 checksum; refused", EXIT_TAMPERED)
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError,
                        bx.ConnectionClosedError, bx.ProxyConnectionError, bx.SSLError, bx.HTTPClientError)):
        return StorageError(f"{what}: object storage unreachable: {exc}", EXIT_UNREACHABLE)
    if isinstance(exc, bx.ParamValidationError):
        return StorageError(f"{what}: bad request parameter: {exc}", EXIT_USAGE)
    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        msg = err.get("Message") or ""
        if code == "NoSuchBucket":
            name = err.get("BucketName") or bucket or ""
            return StorageError(f"{what}: no such bucket {name!r}", EXIT_NO_BUCKET)
        if code in _CRED_CODES:
            return StorageError(f"{what}: credentials rejected ({code}: {msg})", EXIT_NO_CREDENTIALS)
        if code in _DENIED_CODES:
            return StorageError(f"{what}: access denied{where} ({code}); check the IAM policy (docs/production.md "
                                "lists the permissions each call needs)", EXIT_ACCESS_DENIED)
        if code in _NOT_FOUND_CODES:
            return StorageError(f"{what}: not found{where}", EXIT_NOT_FOUND)
        if code in _DOWN_CODES:
            return StorageError(f"{what}: object storage unavailable ({code}: {msg})", EXIT_UNREACHABLE)
        if code in ("BadDigest", "XAmzContentSHA256Mismatch", "InvalidDigest"):
            return StorageError(f"{what}: data changed in transit ({code}); will be retried", EXIT_UNREACHABLE)
        return StorageError(f"{what}: object storage refused the request ({code}: {msg})", EXIT_REJECTED)
    text = str(exc)     # boto3's transfer errors wrap a ClientError in their message
    if "NoSuchBucket" in text:
        return StorageError(f"{what}: no such bucket{where}", EXIT_NO_BUCKET)
    if "AccessDenied" in text:
        return StorageError(f"{what}: access denied{where}", EXIT_ACCESS_DENIED)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(f"{what}: disk full: {exc.strerror}", EXIT_DISK_FULL)
    if isinstance(exc, OSError):
        return StorageError(f"{what}: {exc.strerror or exc}", EXIT_UNREACHABLE)
    if isinstance(exc, ValueError) and "endpoint" in text.lower():
        return StorageError(f"{what}: {text}", EXIT_USAGE)
    return StorageError(f"{what}: {type(exc).__name__}: {exc}", EXIT_REJECTED)


# -- checksums ----------------------------------------------------------------

def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def composite(part_digests: list[bytes]) -> str:
    """S3's SHA-256 checksum of a multipart object: the hash of the parts' hashes, ``-N``."""
    return f"{b64(hashlib.sha256(b''.join(part_digests)).digest())}-{len(part_digests)}"


def expected_checksum(path: Path, part_size: int, sha256: str | None = None) -> str:
    """S3's SHA-256 checksum of ``path`` uploaded in parts of ``part_size`` (0: in one piece).

    In one piece it is the file's own SHA-256 (from ``sha256`` when known, no read).
    """
    if part_size == 0 and sha256:
        return b64(bytes.fromhex(sha256))
    parts: list[bytes] = []
    with open(path, "rb") as fh:
        while True:
            h, got = hashlib.sha256(), 0
            while part_size == 0 or got < part_size:
                b = fh.read(BUF if part_size == 0 else min(BUF, part_size - got))
                if not b:
                    break
                h.update(b)
                got += len(b)
            if part_size == 0:
                return b64(h.digest())
            if got == 0:
                break
            parts.append(h.digest())
            if got < part_size:
                break
    return composite(parts)


def same_checksum(a: str | None, b: str | None) -> bool:
    """Compare S3 checksums, tolerating a missing ``-N`` on one side (some stores drop it on HEAD)."""
    if not a or not b:
        return False
    return a.split("-")[0] == b.split("-")[0]


# -- custody ------------------------------------------------------------------

_PRINCIPAL: dict[tuple, tuple[str, str]] = {}


def principal(cfg: Config, session) -> tuple[str, str]:
    """(who, how we know): the STS caller ARN, else ``upload.principal``, else user@host."""
    cache_key = (cfg["upload.profile"], cfg["upload.endpoint_url"], os.environ.get("AWS_ACCESS_KEY_ID"))
    if cache_key in _PRINCIPAL:
        return _PRINCIPAL[cache_key]
    who = None
    try:
        from botocore.config import Config as BotoConfig
        sts = session.client("sts", endpoint_url=_endpoint(cfg), region_name=session.region_name or "us-east-1",
                             config=BotoConfig(retries={"max_attempts": 1}, connect_timeout=3, read_timeout=5))
        who = (sts.get_caller_identity()["Arn"], "sts")
    except Exception:  # noqa: BLE001 - an on-prem store has no STS: fall back, never fail the upload
        pass
    if who is None:
        if cfg["upload.principal"]:
            who = (cfg["upload.principal"], "config")
        else:
            who = (f"{_os_user()}@{os.uname().nodename}", "local-user")
    _PRINCIPAL[cache_key] = who
    return who


def _os_user() -> str:
    try:
        me = getpass.getuser()
    except Exception:  # noqa: BLE001
        me = str(os.geteuid())
    return os.environ.get("SUDO_USER") or me


def custody_key(prefix: str, incident: str, host: str, action: str) -> str:
    t = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    return "/".join(p for p in (prefix, "incidents", incident, "custody",
                                f"{t}-{host}-{action}-{secrets.token_hex(4)}.json") if p)


def custody(cfg: Config, s3, session, bucket: str, prefix: str, incident: str, action: str,
            sha256: str, key: str, **extra: Any) -> str:
    """Write one chain-of-custody record (one object per event); returns its key."""
    who, how = principal(cfg, session)
    host = cfg.hostname
    rec = {"action": action, "who": who, "who_source": how, "os_user": _os_user(),
           "when": iso(utcnow()), "from_host": host, "machine": os.uname().nodename,
           "incident": incident, "bucket": bucket, "key": key, "sha256": sha256,
           "agent": f"goldenhour {__version__}", **extra}
    ckey = custody_key(prefix, incident, host, action)
    body = (json.dumps(rec, indent=1, default=str) + "\n").encode()
    s3.put_object(Bucket=bucket, Key=ckey, Body=body, ContentType="application/json",
                  **_put_args(cfg, hashlib.sha256(body).digest()))
    return ckey


# -- object arguments -----------------------------------------------------------

def _protect_args(cfg: Config) -> dict[str, Any]:
    """SSE and Object Lock arguments for every object we write."""
    args: dict[str, Any] = {}
    if cfg["upload.sse"]:
        args["ServerSideEncryption"] = cfg["upload.sse"]
        if cfg["upload.sse"].startswith("aws:kms") and cfg["upload.kms_key_id"]:
            args["SSEKMSKeyId"] = cfg["upload.kms_key_id"]
    if cfg["upload.object_lock_mode"] and cfg["upload.object_lock_days"] > 0:
        args["ObjectLockMode"] = cfg["upload.object_lock_mode"]
        args["ObjectLockRetainUntilDate"] = _retain_until(cfg)
    return args


def _retain_until(cfg: Config) -> datetime:
    return (datetime.now(timezone.utc) + timedelta(days=cfg["upload.object_lock_days"])).replace(microsecond=0)


def _put_args(cfg: Config, digest: bytes) -> dict[str, Any]:
    return {"ChecksumAlgorithm": "SHA256", "ChecksumSHA256": b64(digest), **_protect_args(cfg)}


# -- the upload -----------------------------------------------------------------

def _pending_file(bundle: Path) -> Path:
    return Store.pending_record(bundle)


def _atomic_json(path: Path, obj: Any) -> None:
    """Written and renamed durably: receipts and retry states survive a crash."""
    atomic_write(path, (json.dumps(obj, indent=1, default=str) + "\n").encode())
    fsync_dir(path.parent)


class Busy(StorageError):
    """Another goldenhour process holds the bundle's upload lock (it stays pending meanwhile)."""

    exit_code = EXIT_PENDING


class _BundleLock:
    """An exclusive flock on the bundle file: one uploader per bundle (CLI and daemon may overlap)."""

    def __init__(self, bundle: Path):
        self.bundle = bundle
        self.fd = -1

    def __enter__(self) -> "_BundleLock":
        try:
            self.fd = os.open(self.bundle, os.O_RDONLY)
        except FileNotFoundError:
            raise StorageError(f"{self.bundle}: no such bundle", EXIT_NOT_FOUND) from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise Busy(f"{self.bundle.name}: another goldenhour process is uploading it") from None
        return self

    def __exit__(self, *exc: Any) -> None:
        os.close(self.fd)


class _Slice(io.RawIOBase):
    """``length`` bytes of a file from ``offset``, seekable (botocore rewinds bodies on retry)."""

    def __init__(self, path: Path, offset: int, length: int):
        self.fh = open(path, "rb")
        self.offset, self.length, self.pos = offset, length, 0
        self.fh.seek(offset)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        left = self.length - self.pos
        if n is None or n < 0 or n > left:
            n = left
        if n <= 0:
            return b""
        b = self.fh.read(n)
        self.pos += len(b)
        return b

    def readinto(self, buf) -> int:  # type: ignore[override]
        b = self.read(len(buf))
        buf[:len(b)] = b
        return len(b)

    def seek(self, pos: int, whence: int = 0) -> int:
        new = {0: pos, 1: self.pos + pos, 2: self.length + pos}[whence]
        self.pos = max(0, min(new, self.length))
        self.fh.seek(self.offset + self.pos)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def __len__(self) -> int:
        return self.length

    def close(self) -> None:
        self.fh.close()
        super().close()


@dataclass
class _Target:
    bucket: str
    prefix: str
    incident: str
    host: str
    key: str
    size: int
    sha256: str


def _local_corrupt(bundle: Path, actual: str, expected: str) -> StorageError:
    return StorageError(f"{bundle.name}: the bundle on disk (sha256 {actual[:16]}…) no longer matches its "
                        f".sha256 ({expected[:16]}…); not uploaded, run `goldenhour verify {bundle}`",
                        EXIT_TAMPERED)


def _hash_range(path: Path, offset: int, length: int, whole: "hashlib._Hash") -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(offset)
        left = length
        while left:
            b = fh.read(min(BUF, left))
            if not b:
                raise BundleError(f"{path.name} shrank while being uploaded")
            h.update(b)
            whole.update(b)
            left -= len(b)
    return h.digest()


def _abort_stale(s3, bucket: str, key: str) -> int:
    """Abort multipart uploads left for ``key`` by an interrupted attempt; returns how many."""
    n = 0
    kw: dict[str, Any] = {"Bucket": bucket, "Prefix": key}
    while True:
        page = s3.list_multipart_uploads(**kw)
        for u in page.get("Uploads", []):
            if u["Key"] == key:
                s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=u["UploadId"])
                n += 1
        if not page.get("IsTruncated"):
            return n
        kw.update(KeyMarker=page.get("NextKeyMarker"), UploadIdMarker=page.get("NextUploadIdMarker"))


def _send_single(cfg: Config, s3, bundle: Path, t: _Target, meta: dict[str, str]) -> str:
    whole = hashlib.sha256()
    digest = _hash_range(bundle, 0, t.size, whole)
    if whole.hexdigest() != t.sha256:
        raise _local_corrupt(bundle, whole.hexdigest(), t.sha256)
    body = _Slice(bundle, 0, t.size)
    try:
        s3.put_object(Bucket=t.bucket, Key=t.key, Body=body, ContentLength=t.size, Metadata=meta,
                      ContentType="application/zstd" if bundle.name.endswith(".zst") else "application/gzip",
                      **_put_args(cfg, digest))
    finally:
        body.close()
    return b64(digest)


def _send_multipart(cfg: Config, s3, bundle: Path, t: _Target, meta: dict[str, str], part_size: int,
                    on_part: Callable[[int, int], None] | None = None) -> str:
    n = (t.size + part_size - 1) // part_size
    if n > 10000:
        raise StorageError(f"{bundle.name}: {n} parts exceed S3's 10000; raise upload.multipart_chunk_mb",
                           EXIT_USAGE)
    created = s3.create_multipart_upload(
        Bucket=t.bucket, Key=t.key, Metadata=meta, ChecksumAlgorithm="SHA256",
        ContentType="application/zstd" if bundle.name.endswith(".zst") else "application/gzip",
        **_protect_args(cfg))
    upload_id = created["UploadId"]
    whole = hashlib.sha256()
    digests: list[bytes] = []
    etags: dict[int, str] = {}
    lock = threading.Lock()

    def put_part(number: int, offset: int, length: int, digest: bytes) -> None:
        body = _Slice(bundle, offset, length)
        try:
            r = s3.upload_part(Bucket=t.bucket, Key=t.key, UploadId=upload_id, PartNumber=number, Body=body,
                               ContentLength=length, ChecksumAlgorithm="SHA256", ChecksumSHA256=b64(digest))
        finally:
            body.close()
        with lock:
            etags[number] = r["ETag"]
        if on_part:
            on_part(number, n)

    concurrency = max(1, int(cfg["upload.concurrency"]))
    try:
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="gh-upload") as pool:
            inflight: set[Future] = set()
            for i in range(n):
                offset = i * part_size
                length = min(part_size, t.size - offset)
                digest = _hash_range(bundle, offset, length, whole)
                digests.append(digest)
                while len(inflight) >= concurrency:
                    done, inflight = wait(inflight, return_when=FIRST_COMPLETED)
                    for f in done:
                        f.result()
                inflight.add(pool.submit(put_part, i + 1, offset, length, digest))
            for f in inflight:
                f.result()
        if whole.hexdigest() != t.sha256:
            raise _local_corrupt(bundle, whole.hexdigest(), t.sha256)
        s3.complete_multipart_upload(
            Bucket=t.bucket, Key=t.key, UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": i + 1, "ETag": etags[i + 1], "ChecksumSHA256": b64(d)}
                                       for i, d in enumerate(digests)]})
    except BaseException:
        try:    # best effort: the next attempt aborts it anyway
            s3.abort_multipart_upload(Bucket=t.bucket, Key=t.key, UploadId=upload_id)
        except Exception:  # noqa: BLE001
            pass
        raise
    return composite(digests)


def _head(s3, bucket: str, key: str) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError
    try:
        return s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def _matches(head: dict[str, Any] | None, t: _Target, checksum: str | None) -> bool:
    if not head:
        return False
    if head.get("ContentLength") != t.size or head.get("Metadata", {}).get("sha256") != t.sha256:
        return False
    got = head.get("ChecksumSHA256")
    return got is None or checksum is None or same_checksum(got, checksum)


def _manifest(bundle: Path) -> tuple[Manifest, bytes]:
    """The bundle's own manifest (through the one reader) and the bytes uploaded as its sidecar: the local
    sidecar once bound to the archive (``bundle.manifest_bytes``), or the archive's manifest.json."""
    data, source = manifest_bytes(bundle)
    return read_manifest(data, source), data


def _ensure_sidecars(cfg: Config, s3, bundle: Path, t: _Target, man_bytes: bytes) -> tuple[str, str]:
    """PUT the manifest and .sha256 sidecars unless identical ones are there already."""
    side = manifest_sidecar(bundle)
    mkey = t.key[: -len(bundle.name)] + side.name
    skey = t.key + ".sha256"
    sha_bytes = f"{t.sha256}  {bundle.name}\n".encode()
    for key, body, ctype in ((mkey, man_bytes, "application/json"), (skey, sha_bytes, "text/plain")):
        digest = hashlib.sha256(body).digest()
        head = _head(s3, t.bucket, key)
        if head and head.get("Metadata", {}).get("content-sha256") == digest.hex():
            continue
        s3.put_object(Bucket=t.bucket, Key=key, Body=body, ContentType=ctype,
                      Metadata={"incident": t.incident, "host": t.host, "bundle-sha256": t.sha256,
                                "content-sha256": digest.hex(), "agent-version": __version__},
                      **_put_args(cfg, digest))
    return mkey, skey


def _bundle_sha(bundle: Path) -> str:
    """The SHA-256 recorded at capture time; a bundle whose sidecar was lost is re-verified first."""
    sha = read_sidecar(bundle)
    if sha:
        return sha
    rep = verify_file(bundle)
    problems = [p for p in rep.problems if p.kind != RECORD]
    if problems:
        raise StorageError(f"{bundle.name} has no .sha256 and does not verify ({problems[0]}); not uploaded",
                           EXIT_TAMPERED)
    write_sidecar(bundle, rep.sha256)
    return rep.sha256


def upload_bundle(cfg: Config, bundle: Path | str, *, url: str = "",
                  on_part: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Upload one local bundle (idempotent, verified) to ``url`` (default upload.url) and write its
    receipt; raises StorageError.

    Returns the receipt: url, bucket, key, size, sha256, etag, version_id,
    checksum_sha256, parts, part_size, reused (the object was already there),
    manifest_key, sha256_key, custody_key, sse, object_lock, uploaded_at.
    """
    bundle = Path(bundle)
    with _BundleLock(bundle):
        return _upload_locked(cfg, bundle, on_part, url or cfg["upload.url"])


def _upload_locked(cfg: Config, bundle: Path, on_part: Callable[[int, int], None] | None,
                   url: str) -> dict[str, Any]:
    bucket, prefix = parse_url(url)
    what = f"upload of {bundle.name}"
    try:
        man, man_bytes = _manifest(bundle)
        incident, host = man.incident.id, man.host.hostname
    except SidecarMismatch as exc:
        raise StorageError(f"{what}: {exc}; not uploaded (the key is made from the bundle's own manifest), it "
                           f"stays pending, run `goldenhour verify {bundle}`", EXIT_TAMPERED) from None
    except Exception as exc:  # noqa: BLE001 - a broken bundle stays pending with its reason
        raise StorageError(f"{what}: cannot read its manifest ({type(exc).__name__}: {exc}); it stays pending, "
                           f"run `goldenhour verify {bundle}`", EXIT_TAMPERED) from None
    filed = filed_problems(bundle.name, man)
    if filed:
        raise StorageError(f"{what}: {filed[0]}; not uploaded (its key would not be its own), it stays pending",
                           EXIT_TAMPERED)
    sha = _bundle_sha(bundle)
    size = bundle.stat().st_size
    t = _Target(bucket, prefix, incident, host, object_key(prefix, incident, host, bundle.name), size, sha)
    part_size = cfg["upload.multipart_chunk_mb"] * MiB
    multipart = size > cfg["upload.multipart_threshold_mb"] * MiB
    if not multipart:
        part_size = 0
    meta = {"incident": incident, "host": host, "sha256": sha, "agent-version": __version__,
            "part-size": str(part_size), "bundle": bundle.name}
    s3, session = client(cfg)
    reused = False
    try:
        head = _head(s3, bucket, t.key)
        if head is not None:
            old_ps = int(head.get("Metadata", {}).get("part-size", "0") or 0)
            expected = expected_checksum(bundle, old_ps, sha) if head.get("ChecksumSHA256") else None
            if not _matches(head, t, expected):
                raise StorageError(
                    f"{what}: s3://{bucket}/{t.key} already holds a different object (size "
                    f"{head.get('ContentLength')}, sha256 {head.get('Metadata', {}).get('sha256', '?')[:16]}); "
                    "not overwritten, evidence is never replaced", EXIT_TAMPERED)
            reused, checksum = True, expected
            _abort_stale(s3, bucket, t.key)
        else:
            _abort_stale(s3, bucket, t.key)
            if multipart:
                checksum = _send_multipart(cfg, s3, bundle, t, meta, part_size, on_part)
            else:
                checksum = _send_single(cfg, s3, bundle, t, meta)
            head = _head(s3, bucket, t.key)
            if not _matches(head, t, checksum):
                got = head and {"size": head.get("ContentLength"), "checksum": head.get("ChecksumSHA256")}
                raise StorageError(f"{what}: the uploaded object does not match the bundle ({got}); "
                                   "it stays pending", EXIT_TAMPERED)
        assert head is not None
        lock = _ensure_retention(cfg, s3, t, head)
        mkey, skey = _ensure_sidecars(cfg, s3, bundle, t, man_bytes)
        ckey = custody(cfg, s3, session, bucket, prefix, incident, "upload", sha, t.key,
                       size=size, version_id=head.get("VersionId"), etag=head.get("ETag", "").strip('"'),
                       checksum_sha256=head.get("ChecksumSHA256"), reused_existing_object=reused,
                       bundle=bundle.name)
    except Exception as exc:  # noqa: BLE001 - translated in one place
        raise storage_error(exc, what, bucket) from None
    receipt = {"url": f"s3://{bucket}/{t.key}", "bucket": bucket, "key": t.key, "size": size, "sha256": sha,
               "etag": head.get("ETag", "").strip('"'), "version_id": head.get("VersionId"),
               "checksum_sha256": head.get("ChecksumSHA256") or checksum,
               "checksum_verified": bool(head.get("ChecksumSHA256")),
               "parts": int(checksum.rsplit("-", 1)[1]) if checksum and "-" in checksum else 1,
               "part_size": part_size if not reused else int(head.get("Metadata", {}).get("part-size", "0") or 0),
               "reused": reused, "manifest_key": mkey, "sha256_key": skey, "custody_key": ckey,
               "sse": head.get("ServerSideEncryption"), "sse_kms_key_id": head.get("SSEKMSKeyId"),
               "object_lock": lock, "endpoint": _endpoint(cfg) or os.environ.get("AWS_ENDPOINT_URL_S3")
               or os.environ.get("AWS_ENDPOINT_URL"), "uploaded_at": iso(utcnow())}
    _atomic_json(Store.receipt(bundle), receipt)
    _pending_file(bundle).unlink(missing_ok=True)
    return receipt


def _ensure_retention(cfg: Config, s3, t: _Target, head: dict[str, Any]) -> dict[str, Any] | None:
    """Object Lock on the bundle: set at creation; applied afterwards where a store ignored it."""
    if not cfg["upload.object_lock_mode"]:
        return None
    if not head.get("ObjectLockMode"):
        args: dict[str, Any] = {"Bucket": t.bucket, "Key": t.key, "Retention": {
            "Mode": cfg["upload.object_lock_mode"], "RetainUntilDate": _retain_until(cfg)}}
        if head.get("VersionId"):
            args["VersionId"] = head["VersionId"]
        s3.put_object_retention(**args)
        head = _head(s3, t.bucket, t.key) or {}
    if not head.get("ObjectLockMode"):
        raise StorageError(f"s3://{t.bucket}/{t.key}: Object Lock retention was asked for but the object has "
                           "none (is Object Lock enabled on the bucket?)", EXIT_REJECTED)
    return {"mode": head.get("ObjectLockMode"), "retain_until": head.get("ObjectLockRetainUntilDate")}


# -- the spool ------------------------------------------------------------------

def read_pending_state(bundle: Path) -> dict[str, Any]:
    pf = _pending_file(bundle)
    try:
        return json.loads(pf.read_text())
    except (OSError, ValueError):
        return {"attempts": 0}


def remember_url(bundle: Path, url: str) -> None:
    """Keep ``url``, asked for on the command line (``snapshot --upload s3://...``), in the bundle's pending
    record: retries (``upload --pending``, the daemon) go there, also on a host without upload.url."""
    state = read_pending_state(bundle)
    state.update(bundle=bundle.name, url=url)
    try:
        _atomic_json(_pending_file(bundle), state)
    except OSError:
        pass        # the bundle stays in the store; `upload BUNDLE --url` still sends it


def record_failure(cfg: Config, bundle: Path, exc: GoldenhourError, *, url: str = "") -> dict[str, Any]:
    """Count a failed attempt in the bundle's pending record (backoff); ``url`` as for ``remember_url``."""
    state = read_pending_state(bundle)
    if url:
        state["url"] = url
    state["attempts"] = int(state.get("attempts", 0)) + 1
    base = min(cfg["upload.retry_initial_s"] * 2 ** min(state["attempts"] - 1, 30), cfg["upload.retry_max_s"])
    delay = base * (1 + random.uniform(0, 0.1))       # a little jitter: hosts of one incident spread out
    now = time.time()
    state.setdefault("first_failure", iso(utcnow()))
    state.update(bundle=bundle.name, last_error=str(exc), exit_code=exc.exit_code, last_try=iso(utcnow()),
                 next_try=now + delay,
                 next_try_utc=datetime.fromtimestamp(now + delay, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    try:
        _atomic_json(_pending_file(bundle), state)
    except OSError:
        pass        # the bundle stays pending without its backoff record; nothing is lost
    return state


# failures that concern every bundle alike: after one, the others are reported "not tried"
_GLOBAL_FAILURES = {EXIT_NO_CREDENTIALS, EXIT_ACCESS_DENIED, EXIT_UNREACHABLE, EXIT_NO_BUCKET, EXIT_USAGE}


def upload_pending(cfg: Config, respect_backoff: bool = True, *, url: str = "",
                   on_result: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Upload every pending bundle of the local store, oldest first; failures stay pending.

    The daemon calls this on its timer with ``respect_backoff=True`` (a bundle whose
    ``next_try`` is in the future is reported as ``waiting`` and not tried);
    ``goldenhour upload --pending`` passes False and tries them all. Never raises for
    one bundle's failure: each result says what happened (see the module docstring).
    Each bundle goes to ``url`` (``upload --pending --url``), else the URL remembered in its
    pending record (``snapshot --upload s3://...``), else upload.url. With none of them
    configured only bundles with a remembered URL are pending; local-only ones are not tried.
    """
    results: list[dict[str, Any]] = []
    stopped: dict[str, GoldenhourError] = {}    # upload URL -> the failure that stops it for this round
    for bundle in Store(cfg.store_path).pending(url or cfg["upload.url"]):
        state = read_pending_state(bundle)
        target = url or state.get("url") or cfg["upload.url"]
        stop = stopped.get(target)
        if stop is not None:        # the endpoint, bucket or credentials failed: the rest would too
            r = {"bundle": str(bundle), "status": "pending", "error": f"not tried: {stop}",
                 "exit_code": stop.exit_code, "attempts": state.get("attempts", 0)}
        elif respect_backoff and float(state.get("next_try", 0) or 0) > time.time():
            r = {"bundle": str(bundle), "status": "waiting", "next_try": state.get("next_try"),
                 "attempts": state.get("attempts", 0), "last_error": state.get("last_error")}
        else:
            try:
                r = {"bundle": str(bundle), "status": "uploaded", **upload_bundle(cfg, bundle, url=target)}
            except Busy as exc:
                r = {"bundle": str(bundle), "status": "busy", "error": str(exc), "exit_code": exc.exit_code}
            except GoldenhourError as exc:
                st = record_failure(cfg, bundle, exc)
                r = {"bundle": str(bundle), "status": "pending", "error": str(exc), "exit_code": exc.exit_code,
                     "attempts": st["attempts"], "next_try": st["next_try"]}
                if exc.exit_code in _GLOBAL_FAILURES:
                    stopped[target] = exc
            except Exception as exc:  # noqa: BLE001 - one bad bundle never stops the others
                err = storage_error(exc, f"upload of {bundle.name}")
                st = record_failure(cfg, bundle, err)
                r = {"bundle": str(bundle), "status": "pending", "error": str(err), "exit_code": err.exit_code,
                     "attempts": st["attempts"], "next_try": st["next_try"]}
        r["upload_url"] = target
        results.append(r)
        if on_result:
            on_result(r)
    return results
