"""Retrieval for RCA: list, fetch, verify and safely extract the bundles of an incident.

Where it sits: the responder's side, after ``upload``. Listing reads only the small
``.manifest.json`` sidecars; fetching downloads each bundle, checks it against the
object's SHA-256 metadata and every file against ``SHA256SUMS`` and the manifest, and
extracts only regular files and folders inside the destination: a member with an
absolute path, ``..``, a link or a device is refused, and nothing is extracted.
"""
from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any

from agent import bundle as bundle_mod
from agent.config import Config
from agent.errors import EXIT_MISMATCH, GoldenhourError
from agent.incident import check_id
from agent.store import Store
from agent.upload import EXIT_DISK_FULL, EXIT_TAMPERED, StorageError, client, custody, parse_url, storage_error

EXTS = tuple(bundle_mod.EXTENSIONS.values())


def list_bundles(cfg: Config, incident: str | None = None, host: str | None = None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for b in Store(cfg.store_path).bundles(incident):
        try:
            m = bundle_mod.read_manifest(b)
        except (OSError, ValueError, bundle_mod.BundleError):
            continue
        if host and m["host"]["hostname"] != host:
            continue
        rows.append(_row(m, "local", str(b), b.stat().st_size,
                         "uploaded" if Store.receipt(b).exists() else "pending"))
    if cfg["upload.url"]:
        bucket, prefix = parse_url(cfg["upload.url"])
        s3, _ = client(cfg)
        base = "/".join(p for p in (prefix, "incidents", incident or "") if p) + "/"
        try:
            sizes: dict[str, int] = {}
            sidecars = []
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
                for o in page.get("Contents", []):
                    if o["Key"].endswith(EXTS):
                        sizes[o["Key"]] = o["Size"]
                    elif o["Key"].endswith(".manifest.json"):
                        sidecars.append(o["Key"])
            for key in sidecars:
                m = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
                if host and m["host"]["hostname"] != host:
                    continue
                bkey = next((k for k in sizes if k.startswith(key[: -len(".manifest.json")] + ".tar.")), None)
                if bkey:
                    rows.append(_row(m, "s3", f"s3://{bucket}/{bkey}", sizes[bkey], "uploaded"))
        except StorageError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise storage_error(exc, "listing bundles") from None
    return rows


def _row(m: dict[str, Any], source: str, where: str, size: int, state: str) -> dict[str, Any]:
    return {"source": source, "location": where, "incident": m["incident"]["id"], "host": m["host"]["hostname"],
            "time": m["clocks"]["start_utc"], "size": size, "bundle": m["bundle"], "state": state,
            "collectors": m.get("summary", {}).get("collectors", {})}


def safe_extract(path: Path, dest: Path) -> Path:
    """Extract a verified bundle; refuse anything that could escape ``dest`` or is not a file/dir."""
    dest = dest.resolve()
    with open(path, "rb") as fh, bundle_mod.open_stream(fh, str(path)) as tar:
        members = []
        for m in tar:
            name = m.name
            target = (dest / name).resolve()
            if name.startswith("/") or ".." in Path(name).parts or not str(target).startswith(str(dest) + os.sep):
                raise GoldenhourError(f"{path.name}: member {name!r} would escape the destination; refused",
                                      EXIT_TAMPERED)
            if not (m.isfile() or m.isdir()):
                raise GoldenhourError(f"{path.name}: member {name!r} is a link or device; refused", EXIT_TAMPERED)
            members.append(m)
    top = None
    with open(path, "rb") as fh, bundle_mod.open_stream(fh, str(path)) as tar:
        for m in tar:
            target = dest / m.name
            top = top or dest / m.name.split("/", 1)[0]
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(m)
            try:
                with open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)  # type: ignore[arg-type]
            except OSError as exc:
                raise GoldenhourError(f"cannot write {target}: {exc.strerror}", EXIT_DISK_FULL) from None
    return top or dest


def fetch(cfg: Config, incident: str, host: str | None, dest: Path, extract: bool = True,
          progress=None) -> list[dict[str, Any]]:
    check_id(incident)
    if not cfg["upload.url"]:
        raise GoldenhourError("fetch needs upload.url (s3://BUCKET/PREFIX) in the config or --url", 2)
    bucket, prefix = parse_url(cfg["upload.url"])
    s3, session = client(cfg)
    rows = [r for r in list_bundles_remote_only(cfg, incident, host)]
    if not rows:
        raise GoldenhourError(f"no bundles for incident {incident} in s3://{bucket}/{prefix}", 4)
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for r in rows:
        key = r["location"][len(f"s3://{bucket}/"):]
        local = dest / Path(key).name
        tmp = local.with_name("." + local.name + ".part")
        try:
            head = s3.head_object(Bucket=bucket, Key=key)
            s3.download_file(bucket, key, str(tmp), Callback=progress)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise GoldenhourError(f"disk full or unwritable while fetching {key}: {exc.strerror}", EXIT_DISK_FULL)
        except Exception as exc:  # noqa: BLE001
            tmp.unlink(missing_ok=True)
            raise storage_error(exc, f"fetch of {key}") from None
        expected = head.get("Metadata", {}).get("sha256")
        with open(tmp, "rb") as fh:
            rep = bundle_mod.verify_stream(fh, key, expected)
        if not rep.ok:
            tmp.unlink(missing_ok=True)
            raise GoldenhourError(f"{key} failed verification, refused: {'; '.join(rep.problems[:3])}", EXIT_TAMPERED)
        os.replace(tmp, local)
        (local.with_name(local.name + ".sha256")).write_text(f"{rep.sha256}  {local.name}\n")
        row = {"key": key, "path": str(local), "sha256": rep.sha256, "files_checked": rep.files_checked,
               "host": r["host"]}
        if extract:
            row["extracted"] = str(safe_extract(local, dest))
        custody(cfg, s3, session, bucket, prefix, incident, "fetch", rep.sha256, key)
        out.append(row)
    return out


def list_bundles_remote_only(cfg: Config, incident: str, host: str | None) -> list[dict[str, Any]]:
    return [r for r in list_bundles(cfg, incident, host) if r["source"] == "s3"]


def verify_remote(cfg: Config, url: str) -> bundle_mod.VerifyReport:
    bucket, key = parse_url(url)
    s3, _ = client(cfg)
    try:
        obj = s3.get_object(Bucket=bucket, Key=key)
    except Exception as exc:  # noqa: BLE001
        raise storage_error(exc, f"verify of {url}") from None
    return bundle_mod.verify_stream(obj["Body"], url, obj.get("Metadata", {}).get("sha256"))


__all__ = ["list_bundles", "fetch", "verify_remote", "safe_extract", "EXIT_MISMATCH"]
