"""Retrieval for RCA: list, fetch, verify and safely extract the bundles of an incident.

Where it sits: the responder's side, after ``upload`` (agent/upload.py has the key
layout). Three entry points:

- ``list_bundles(cfg, incident, host)``: every bundle of the local store and of S3
  (from the small ``.manifest.json`` sidecars: no bundle is downloaded), one row
  per bundle with its source (local, s3 or local+s3), host, time, size, state and
  collectors' statuses.
- ``fetch(cfg, incident, host, dest)``: downloads each of the incident's bundles
  from S3 once, streaming: the bytes go to disk and through ``bundle.verify_stream``
  (the one integrity check, ``agent.manifest.check``) together, so one pass checks the
  archive's SHA-256 against the object's ``sha256`` metadata, the ``.sha256`` object and the
  custody record of its upload, S3's own SHA-256 checksum (recomputed per part for multipart objects) and every
  file against ``SHA256SUMS`` and the manifest. A bundle that fails any check is
  refused (exit 14) and deleted. Verified bundles are then extracted by our own
  loop: only regular files and folders under the bundle's one top folder; an
  absolute path, a ``..``, a link, a device or a fifo refuses the whole bundle and
  nothing of it is left (it is extracted into a hidden staging folder first).
  Free space is checked before downloading; a disk that fills anyway is exit 15,
  with the partial files removed. Each fetch writes a custody record.
- ``verify_remote(cfg, "s3://BUCKET/KEY")``: the same checks, streaming, nothing
  written to disk (``goldenhour verify s3://...``).
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from agent import bundle as bundle_mod
from agent import scratch
from agent.config import Config
from agent.errors import (EXIT_DISK_FULL, EXIT_NOT_FOUND, EXIT_TAMPERED,
                          EXIT_USAGE, NotFoundError)
from agent.incident import check_id
from agent.manifest import Expected, Integrity, Manifest, ManifestError, Sidecar, filed_problems
from agent.manifest import read as read_manifest
from agent.store import Store
from agent.upload import (StorageError, b64, client, composite, custody, object_key, parse_url, same_checksum,
                          storage_error)

EXTS = tuple(bundle_mod.EXTENSIONS.values())
Progress = Callable[[str, int, int], None]      # (bundle name, bytes done, bytes total)


# -- listing --------------------------------------------------------------------

def _strip_ext(name: str) -> str:
    for ext in EXTS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def _row(m: Manifest) -> dict[str, Any]:
    statuses = m.statuses
    counts: dict[str, int] = {}
    for s in statuses.values():
        counts[s] = counts.get(s, 0) + 1
    return {"bundle": m.bundle, "incident": m.incident.id, "host": m.host.hostname,
            "time": m.clocks.start_utc or None, "profile": m.profile or None,
            "trigger": m.trigger.kind if m.trigger else None, "files": m.summary.files if m.summary else None,
            "bytes": m.summary.bytes if m.summary else None, "collectors": statuses, "collector_counts": counts}


def list_local(cfg: Config, incident: str | None = None, host: str | None = None) -> list[dict[str, Any]]:
    rows = []
    for b in Store(cfg.store_path).bundles(incident):
        try:
            row = _row(bundle_mod.load_manifest(b))
        except bundle_mod.SidecarMismatch as exc:
            row = {"bundle": _strip_ext(b.name), "incident": "?", "host": "?", "time": None,
                   "collectors": {}, "collector_counts": {}, "problem": str(exc)}
        except (OSError, ManifestError, bundle_mod.BundleError) as exc:
            row = {"bundle": _strip_ext(b.name), "incident": b.parent.name, "host": "?", "time": None,
                   "collectors": {}, "collector_counts": {},
                   "problem": f"manifest unreadable: {getattr(exc, 'strerror', None) or exc}"}
        if host and row["host"] != host:
            continue
        receipt = Store.receipt(b)
        url = None
        if receipt.exists():
            try:
                url = json.loads(receipt.read_text()).get("url")
            except (OSError, ValueError):
                pass
        row.update(source="local", path=str(b), url=url, size=b.stat().st_size, sha256=bundle_mod.read_sidecar(b),
                   state=Store.upload_state(b, cfg["upload.url"]))
        rows.append(row)
    return rows


def list_remote(cfg: Config, incident: str | None = None, host: str | None = None) -> list[dict[str, Any]]:
    """Bundles in S3 from their manifest sidecars (small GETs, in parallel); raises StorageError."""
    bucket, prefix = parse_url(cfg["upload.url"])
    s3, _ = client(cfg)
    base = "/".join(p for p in (prefix, "incidents", incident or "", host if incident else "") if p) + "/"
    try:
        bundles: dict[str, dict[str, Any]] = {}     # key without extension -> listing entry
        sidecars: list[str] = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
            for o in page.get("Contents", []):
                k = o["Key"]
                if "/custody/" in k:
                    continue
                if k.endswith(EXTS):
                    bundles[_strip_ext(k)] = o
                elif k.endswith(".manifest.json"):
                    sidecars.append(k)

        def get(k: str) -> tuple[str, Manifest | str]:
            o = bundles.get(k[: -len(".manifest.json")])
            if o is None:
                return k, "no bundle"
            name = k.rsplit("/", 1)[-1]
            body = s3.get_object(Bucket=bucket, Key=k)["Body"].read()
            try:
                m = read_manifest(body, name)
            except ManifestError as exc:
                return k, f"manifest sidecar unreadable: {exc}"
            why = _remote_binding(s3, bucket, o, name, body, m)
            return k, why or m

        with ThreadPoolExecutor(max_workers=8) as pool:
            manifests = list(pool.map(get, sidecars))
    except Exception as exc:  # noqa: BLE001 - translated in one place
        raise storage_error(exc, "listing bundles in S3", bucket) from None
    rows = []
    for k, m in manifests:
        o = bundles.get(k[: -len(".manifest.json")])
        if o is None:
            continue                    # a sidecar whose bundle is not (yet) there
        if isinstance(m, str):
            row = {"bundle": _strip_ext(o["Key"].rsplit("/", 1)[1]), "incident": "?", "host": "?", "time": None,
                   "collectors": {}, "collector_counts": {}, "problem": m}
        else:
            row = _row(m)
        if host and row["host"] != host:
            continue
        row.update(source="s3", path=None, url=f"s3://{bucket}/{o['Key']}", key=o["Key"], size=o["Size"],
                   state="uploaded", uploaded=o["LastModified"].isoformat() if o.get("LastModified") else None)
        rows.append(row)
    return rows


def _key_place(key: str) -> tuple[str | None, str | None]:
    """(incident, host) of a bundle key ``.../incidents/<incident>/<host>/<name>``."""
    parts = key.split("/")
    if len(parts) >= 4 and parts[-4] == "incidents":
        return parts[-3], parts[-2]
    return None, None


def _remote_binding(s3, bucket: str, o: dict[str, Any], name: str, body: bytes, m: Manifest) -> str | None:
    """Why an S3 manifest sidecar is not its bundle's own manifest (None when it is): the bundle's index
    (its last bytes, one ranged GET) must name the sidecar's SHA-256, and the key's incident, host and
    name must be the manifest's. A bundle uploaded before the index existed gets the key checks only."""
    archive = o["Key"].rsplit("/", 1)[-1]
    incident, host = _key_place(o["Key"])
    filed = filed_problems(archive, m, incident, host)
    if filed:
        return str(filed[0])
    n = bundle_mod.ZSTD_INDEX_LEN if archive.endswith(".zst") else bundle_mod.GZIP_INDEX_LEN
    if o.get("Size", 0) <= n:
        return None
    tail = s3.get_object(Bucket=bucket, Key=o["Key"], Range=f"bytes=-{n}")["Body"].read()
    index = bundle_mod.parse_index(tail, "zstd" if archive.endswith(".zst") else "gzip")
    if index is not None and index != hashlib.sha256(body).hexdigest():
        return (f"{name} is not the manifest.json of {archive}: its SHA-256 {hashlib.sha256(body).hexdigest()} "
                f"differs from the one the bundle's index names ({index})")
    return None


def list_bundles(cfg: Config, incident: str | None = None, host: str | None = None,
                 errors: list[str] | None = None) -> list[dict[str, Any]]:
    """Local and S3 bundles, one row per bundle (``source`` local, s3 or local+s3), oldest first.

    With ``errors`` given, a failing S3 listing is appended there (the local rows
    are still returned); otherwise it raises StorageError.
    """
    rows = {r["bundle"]: r for r in list_local(cfg, incident, host)}
    if cfg["upload.url"]:
        try:
            remote = list_remote(cfg, incident, host)
        except StorageError as exc:
            if errors is None:
                raise
            errors.append(str(exc))
            remote = []
        for r in remote:
            mine = rows.get(r["bundle"])
            if mine is None:
                rows[r["bundle"]] = r
            else:
                mine.update(source="local+s3", url=r["url"], key=r["key"], state="uploaded")
    return sorted(rows.values(), key=lambda r: (r.get("time") or "", r["bundle"] or ""))


# -- streaming verification -----------------------------------------------------------

class _Tee(io.RawIOBase):
    """Reads the S3 body once: writes it to ``out``, hashes it per part (for S3's checksum), reports progress.

    Any error of the body or of the disk is kept in ``error`` (``verify_stream``
    would otherwise report it as an unreadable archive) and re-raised.
    """

    def __init__(self, body, out, part_size: int, name: str, total: int, progress: Progress | None):
        self.body, self.out, self.part_size = body, out, part_size
        self.name, self.total, self.progress = name, total, progress
        self.count = 0
        self.error: BaseException | None = None
        self.whole = hashlib.sha256()
        self.part = hashlib.sha256()
        self.in_part = 0
        self.parts: list[bytes] = []

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        try:
            b = self.body.read(n if n and n > 0 else bundle_mod.BUF)
            if b and self.out is not None:
                self.out.write(b)
        except BaseException as exc:
            self.error = exc
            raise
        if b:
            self._hash(b)
            self.count += len(b)
            if self.progress:
                self.progress(self.name, self.count, self.total)
        return b

    def _hash(self, b: bytes) -> None:
        self.whole.update(b)
        if not self.part_size:
            return
        mv = memoryview(b)
        while mv:
            take = min(len(mv), self.part_size - self.in_part)
            self.part.update(mv[:take])
            self.in_part += take
            mv = mv[take:]
            if self.in_part == self.part_size:
                self.parts.append(self.part.digest())
                self.part, self.in_part = hashlib.sha256(), 0

    def readinto(self, buf) -> int:  # type: ignore[override]
        b = self.read(len(buf))
        buf[:len(b)] = b
        return len(b)

    def checksum(self) -> str:
        if not self.part_size:
            return b64(self.whole.digest())
        parts = self.parts + ([self.part.digest()] if self.in_part else [])
        return composite(parts)


def _custody_shas(s3, bucket: str, key: str) -> dict[str, set[str]]:
    """SHA-256s that the custody records of the incident say were uploaded at ``key``."""
    parts = key.split("/")
    try:
        i = len(parts) - 1 - parts[::-1].index("incidents")
    except ValueError:
        return {}
    base = "/".join(parts[: i + 2]) + "/custody/"
    found: dict[str, set[str]] = {}
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
        keys += [o["Key"] for o in page.get("Contents", []) if "-upload-" in o["Key"].rsplit("/", 1)[-1]]

    def get(k: str) -> dict[str, Any] | None:
        try:
            return json.loads(s3.get_object(Bucket=bucket, Key=k)["Body"].read())
        except Exception:  # noqa: BLE001 - an unreadable record is not a verdict
            return None

    with ThreadPoolExecutor(max_workers=8) as pool:
        for rec in pool.map(get, keys):
            if rec and rec.get("action") == "upload" and rec.get("key"):
                found.setdefault(rec["key"], set()).add(rec.get("sha256", ""))
    return found


def _sidecar_object(s3, bucket: str, key: str) -> Sidecar | None:
    """The manifest sidecar object beside a bundle's key, None when there is none."""
    side = _strip_ext(key) + ".manifest.json"
    try:
        return Sidecar(side.rsplit("/", 1)[-1], s3.get_object(Bucket=bucket, Key=side)["Body"].read())
    except Exception as exc:
        if storage_error(exc, "").exit_code != EXIT_NOT_FOUND:
            raise
        return None


def _verify_object(s3, bucket: str, key: str, out, progress: Progress | None,
                   custody_shas: dict[str, set[str]] | None) -> tuple[Integrity, dict[str, Any]]:
    """Stream one object through every check; returns the report and facts about the object."""
    head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    meta = head.get("Metadata", {})
    expected = meta.get("sha256") or None
    part_size = int(meta.get("part-size", "0") or 0)
    name = key.rsplit("/", 1)[-1]
    args: dict[str, Any] = {"Bucket": bucket, "Key": key, "IfMatch": head["ETag"]}
    if head.get("VersionId"):
        args["VersionId"] = head["VersionId"]
    sidecar = _sidecar_object(s3, bucket, key)
    obj = s3.get_object(**args)
    tee = _Tee(obj["Body"], out, part_size, name, head["ContentLength"], progress)
    rep = bundle_mod.verify_stream(tee, f"s3://{bucket}/{key}",
                                   Expected(expected, "its sha256 metadata") if expected else None, sidecar)
    if tee.error is not None:
        raise tee.error
    checks = ["bundle sha256 vs object metadata", "every file vs SHA256SUMS and manifest.json",
              "incident, host and name of the key vs manifest.json"]
    if sidecar is not None:
        checks.append("manifest sidecar vs manifest.json")
    if rep.manifest is not None:
        rep.problems += filed_problems(name, rep.manifest, *_key_place(key))
    if tee.count != head["ContentLength"]:
        rep.add(name, f"read {tee.count} bytes, the object has {head['ContentLength']}")
    if expected is None:
        rep.add(name, "the object has no sha256 metadata to compare with (not uploaded by goldenhour?)")
    s3_sum = head.get("ChecksumSHA256")
    multipart = "-" in head.get("ETag", "").strip('"')
    if s3_sum and (part_size or not multipart):
        checks.append("S3 SHA-256 checksum")
        if not same_checksum(s3_sum, tee.checksum()):
            rep.add(name, f"S3's SHA-256 checksum {s3_sum} differs from the bytes read ({tee.checksum()})")
    try:
        side = s3.get_object(Bucket=bucket, Key=key + ".sha256")["Body"].read().decode().split()
        checks.append(".sha256 object")
        if side:
            rep.compare(Expected(side[0], "its .sha256"))
    except Exception as exc:
        if storage_error(exc, "").exit_code != EXIT_NOT_FOUND:
            raise
    if custody_shas is None:
        custody_shas = _custody_shas(s3, bucket, key)
    if key in custody_shas:
        checks.append("custody record of the upload")
        if rep.sha256 not in custody_shas[key]:
            rep.add(name, f"sha256 {rep.sha256} differs from the custody record of its upload "
                          f"({', '.join(sorted(custody_shas[key]))})")
    info = {"size": head["ContentLength"], "etag": head.get("ETag", "").strip('"'),
            "version_id": head.get("VersionId"), "checksum_sha256": s3_sum, "checks": checks,
            "incident": meta.get("incident"), "host": meta.get("host")}
    return rep, info


def verify_remote(cfg: Config, url: str) -> Integrity:
    """Verify ``s3://BUCKET/KEY`` by streaming it (nothing is written to disk)."""
    bucket, key = parse_url(url)
    if not key:
        raise StorageError(f"{url}: name an object (s3://BUCKET/KEY), not a bucket", EXIT_USAGE)
    s3, _ = client(cfg)
    try:
        rep, _info = _verify_object(s3, bucket, key, None, None, None)
    except Exception as exc:  # noqa: BLE001
        raise storage_error(exc, f"verify of {url}", bucket) from None
    return rep


# -- safe extraction ---------------------------------------------------------------

def _refuse(archive: str, member: str, why: str) -> StorageError:
    return StorageError(f"{archive}: member {member!r} {why}; refused, nothing extracted", EXIT_TAMPERED)


def _check_member(archive: str, m, top: str | None) -> str:
    """The member's safe relative path, or a refusal naming it."""
    name = m.name
    if not name or "\x00" in name:
        raise _refuse(archive, name, "has an empty or invalid name")
    if name.startswith("/"):
        raise _refuse(archive, name, "is an absolute path")
    parts = PurePosixPath(name).parts
    if ".." in parts:
        raise _refuse(archive, name, "would escape the destination ('..')")
    if m.issym() or m.islnk():
        raise _refuse(archive, name, f"is a {'symbolic' if m.issym() else 'hard'} link (to {m.linkname!r})")
    if m.ischr() or m.isblk():
        raise _refuse(archive, name, "is a device file")
    if m.isfifo():
        raise _refuse(archive, name, "is a fifo")
    if not (m.isreg() or m.isdir()):
        raise _refuse(archive, name, "is not a regular file or folder")
    if top is not None and parts[0] != top:
        raise _refuse(archive, name, f"is outside the bundle's top folder {top!r}")
    return "/".join(parts)


def extract_bundle(path: Path, dest: Path, ledger: Path | None = None) -> tuple[Path, bool]:
    """Extract a bundle into ``dest/<top>``; returns (folder, False if it was there already).

    Our own loop, not ``tarfile.extractall``: every member is checked before it is
    written, files are created with O_EXCL|O_NOFOLLOW and mode 0644, into a hidden
    staging folder renamed into place at the end, so a refused bundle leaves nothing.
    """
    dest.mkdir(parents=True, exist_ok=True)
    real = dest.resolve()
    staging = real / f".goldenhour-extract-{os.urandom(6).hex()}"
    entry = scratch.record(ledger, staging, "bundle being extracted")
    staging.mkdir(mode=0o700)
    top: str | None = None
    try:
        with open(path, "rb") as fh, bundle_mod.open_stream(fh, str(path)) as tar:
            for m in tar:
                rel = _check_member(path.name, m, top)
                top = top or rel.split("/")[0]
                target = staging / rel
                if not target.resolve().is_relative_to(staging):
                    raise _refuse(path.name, m.name, "would escape the destination")
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True, mode=0o755)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
                src = tar.extractfile(m)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
                with os.fdopen(fd, "wb") as out:
                    n = 0
                    while True:
                        b = src.read(bundle_mod.BUF)  # type: ignore[union-attr]
                        if not b:
                            break
                        out.write(b)
                        n += len(b)
                if n != m.size:
                    raise _refuse(path.name, m.name, f"is truncated ({n} of {m.size} bytes)")
                os.utime(target, (m.mtime, m.mtime))
        if top is None:
            raise StorageError(f"{path.name}: the archive is empty; refused", EXIT_TAMPERED)
        final = real / top
        if final.exists():
            return final, False
        os.rename(staging / top, final)
        return final, True
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageError(f"disk full while extracting {path.name} into {dest}; partial files removed",
                               EXIT_DISK_FULL) from None
        raise StorageError(f"cannot extract {path.name} into {dest}: {exc.strerror or exc}", EXIT_USAGE) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        scratch.release(entry)


def safe_extract(path: Path, dest: Path) -> Path:
    """Extract a (verified) bundle safely; returns its folder. See ``extract_bundle``."""
    return extract_bundle(Path(path), Path(dest))[0]


# -- fetch --------------------------------------------------------------------------

class FetchRefused(StorageError):
    """One or more bundles failed verification or extraction; ``rows`` has every bundle's outcome."""

    exit_code = EXIT_TAMPERED

    def __init__(self, message: str, rows: list[dict[str, Any]]):
        super().__init__(message)
        self.rows = rows


def fetch(cfg: Config, incident: str, host: str | None, dest: Path, extract: bool = True,
          progress: Progress | None = None, skip_local: bool = False) -> list[dict[str, Any]]:
    """Download, verify and (optionally) extract every S3 bundle of ``incident`` into ``dest``.

    Returns one row per bundle (status "verified"). Raises NotFoundError (4) when
    S3 has none, StorageError 15 when ``dest`` lacks the space, and FetchRefused
    (14) after trying them all when any was refused (the good ones stay fetched).
    ``skip_local`` leaves out bundles the local store already holds.
    """
    check_id(incident)
    if not cfg["upload.url"]:
        raise StorageError("fetch needs upload.url (s3://BUCKET/PREFIX) in the config, or --url", EXIT_USAGE)
    bucket, prefix = parse_url(cfg["upload.url"])
    rows = list_remote(cfg, incident, host)
    if skip_local:
        local = {r["bundle"] for r in list_local(cfg, incident, host)}
        rows = [r for r in rows if r["bundle"] not in local]
    if not rows:
        raise NotFoundError(f"no bundles of incident {incident}{f' from host {host}' if host else ''} "
                            f"in s3://{bucket}/{object_key(prefix, incident, host or '', '')}")
    dest = Path(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create {dest}: {exc.strerror}", EXIT_USAGE) from None
    need = sum(r["size"] for r in rows) + (sum(r.get("bytes") or 0 for r in rows) if extract else 0)
    have = bundle_mod.free_bytes(dest)
    if have < need:
        raise StorageError(f"not enough free space in {dest} for {len(rows)} bundle(s)"
                           f"{' and their extraction' if extract else ''}: need {need // 2**20} MiB, "
                           f"{have // 2**20} MiB free; nothing downloaded", EXIT_DISK_FULL)
    s3, session = client(cfg)
    try:
        shas = _custody_shas(s3, bucket, rows[0]["key"])
    except Exception as exc:  # noqa: BLE001
        raise storage_error(exc, f"fetch of incident {incident}", bucket) from None
    out: list[dict[str, Any]] = []
    for r in rows:
        out.append(_fetch_one(cfg, s3, session, bucket, prefix, incident, r, dest, extract, progress, shas))
    refused = [o for o in out if o["status"] != "verified"]
    if refused:
        raise FetchRefused(
            f"{len(refused)} of {len(out)} bundle(s) refused: "
            + "; ".join(f"{o['bundle']}: {o['problems'][0]}" for o in refused), out)
    return out


def _fetch_one(cfg: Config, s3, session, bucket: str, prefix: str, incident: str, r: dict[str, Any],
               dest: Path, extract: bool, progress: Progress | None,
               shas: dict[str, set[str]]) -> dict[str, Any]:
    key = r["key"]
    name = key.rsplit("/", 1)[-1]
    local = dest / name
    tmp = dest / f".{name}.part-{os.getpid()}"
    row: dict[str, Any] = {"bundle": r["bundle"], "host": r["host"], "incident": incident, "key": key,
                           "url": f"s3://{bucket}/{key}", "path": None}
    ledger = Store(cfg.store_path).scratch
    entry = scratch.record(ledger, tmp.resolve(), "bundle being fetched")
    try:
        with open(tmp, "wb") as fh:
            rep, info = _verify_object(s3, bucket, key, fh, progress, shas)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        scratch.release(entry)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageError(f"disk full while fetching {key} into {dest}; partial file removed",
                               EXIT_DISK_FULL) from None
        if isinstance(exc, Exception):
            raise storage_error(exc, f"fetch of {key}", bucket) from None
        raise
    row.update(sha256=rep.sha256, files_checked=rep.files_checked, size=info["size"],
               checksum_sha256=info["checksum_sha256"], version_id=info["version_id"], checks=info["checks"])
    if not rep.ok:
        tmp.unlink(missing_ok=True)
        scratch.release(entry)
        row.update(status="refused", problems=rep.messages())
        _custody_quiet(cfg, s3, session, bucket, prefix, incident, "fetch-refused", rep.sha256, key, row,
                       problems=rep.messages()[:10])
        return row
    os.replace(tmp, local)
    scratch.release(entry)
    bundle_mod.write_sidecar(local, rep.sha256)
    row.update(status="verified", path=str(local), problems=[])
    if extract:
        try:
            folder, fresh = extract_bundle(local, dest, ledger)
            row.update(extracted=str(folder), freshly_extracted=fresh)
        except StorageError as exc:
            if exc.exit_code != EXIT_TAMPERED:   # disk full, unwritable destination: the bundle is kept
                raise
            local.unlink(missing_ok=True)        # intact but unsafe: nothing of it is kept
            local.with_name(local.name + ".sha256").unlink(missing_ok=True)
            row.update(status="refused", problems=[str(exc)], path=None)
            _custody_quiet(cfg, s3, session, bucket, prefix, incident, "fetch-refused", rep.sha256, key, row,
                           problems=[str(exc)])
            return row
    _custody_quiet(cfg, s3, session, bucket, prefix, incident, "fetch", rep.sha256, key, row,
                   dest=str(dest.resolve()), checks=info["checks"])
    return row


def _custody_quiet(cfg: Config, s3, session, bucket: str, prefix: str, incident: str, action: str,
                   sha256: str, key: str, row: dict[str, Any], **extra: Any) -> None:
    """A fetch is recorded; a responder without write access still gets the evidence (and a warning)."""
    try:
        row["custody_key"] = custody(cfg, s3, session, bucket, prefix, incident, action, sha256, key, **extra)
    except Exception as exc:  # noqa: BLE001
        row["custody_error"] = str(storage_error(exc, "custody record", bucket))


__all__ = ["list_bundles", "list_local", "list_remote", "fetch", "verify_remote", "safe_extract",
           "extract_bundle", "FetchRefused"]
