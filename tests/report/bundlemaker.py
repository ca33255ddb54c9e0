"""Write an extracted bundle folder (manifest, SHA256SUMS, collectors' files) for rule tests.

Used only where the evidence cannot be made on this machine (recorded kernel lines,
or evidence of collectors not present yet) or where a real tool's output (py-spy on a
live target) is put in place of a collector's: the folder has the same layout and
hashes as a real bundle, and the report reads it exactly as it reads one.
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

T0 = datetime(2026, 11, 23, 10, 15, 0, tzinfo=timezone.utc)


def iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dmesg_json(lines: list[tuple[int, str]], start: datetime = T0 - timedelta(minutes=10)) -> dict[str, Any]:
    """dmesg.json for (level, message) pairs, one second apart; continuation lines join the previous record."""
    levels = ("emerg", "alert", "crit", "err", "warn", "notice", "info", "debug")
    recs: list[dict[str, Any]] = []
    for level, msg in lines:
        if msg.startswith(" ") and recs:
            recs[-1]["message"] += "\n" + msg
            continue
        n = len(recs)
        recs.append({"seq": 1000 + n, "level": levels[level], "facility": "kern", "usec": 5_000_000 + n * 1_000_000,
                     "flags": "-", "message": msg, "fields": {},
                     "time": iso(start + timedelta(seconds=n))})
    return {"method": "/dev/kmsg", "records": recs, "gaps": 0}


def make(root: Path, files: dict[str, Any], *, host: str = "db-1", incident: str = "INC-FIX-1",
         collectors: list[dict[str, Any]] | None = None, extra: dict[str, Any] | None = None,
         start: datetime = T0) -> Path:
    name = f"{incident}_{host}_{start.strftime('%Y%m%dT%H%M%SZ')}_f1x7u2e0"
    top = root / name
    written: dict[str, str] = {}
    for rel, content in files.items():
        p = top / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, (dict, list)):
            data = json.dumps(content, indent=1).encode()
        elif isinstance(content, str):
            data = content.encode()
        else:
            data = content
        p.write_bytes(data)
        written[rel] = hashlib.sha256(data).hexdigest()
    if collectors is None:
        names = sorted({rel.split("/")[1] for rel in written if rel.startswith("collectors/")})
        collectors = [{"name": n, "key": n, "status": "ok"} for n in names]
    for c in collectors:
        prefix = f"collectors/{c['key']}/"
        c.setdefault("started_at", iso(start + timedelta(milliseconds=50)))
        c.setdefault("duration_s", 0.1)
        c.setdefault("timeout_s", 30.0)
        c["files"] = [{"path": r, "bytes": (top / r).stat().st_size, "sha256": h}
                      for r, h in sorted(written.items()) if r.startswith(prefix)]
    manifest = {
        "schema": 1, "bundle": name, "bundle_id": name.rsplit("_", 1)[-1],
        "incident": {"id": incident, "source": "manual", "title": "fixture", "url": "", "severity": "",
                     "services": []},
        "trigger": {"kind": "manual", "reason": "", "by": "test", "at": iso(start), "payload_sha256": ""},
        "profile": "standard",
        "host": {"hostname": host, "kernel": "6.1.0-test", "os": "Debian GNU/Linux 12 (bookworm)", "cpus": 4},
        "clocks": {"start_utc": iso(start), "collected_utc": iso(start + timedelta(seconds=6)),
                   "end_utc": iso(start + timedelta(seconds=7)), "duration_s": 7.0},
        "targets": [], "collectors": collectors,
        "summary": {"collectors": {c["name"]: c["status"] for c in collectors}, "files": len(written), "bytes": 0},
        **(extra or {}),
    }
    mdata = (json.dumps(manifest, indent=1) + "\n").encode()
    (top / "manifest.json").write_bytes(mdata)
    written["manifest.json"] = hashlib.sha256(mdata).hexdigest()
    (top / "SHA256SUMS").write_text("".join(f"{h}  {r}\n" for r, h in sorted(written.items())))
    return top


def findings(root: Path, files: dict[str, Any], **kw) -> list:
    """The report's findings on a bundle folder of ``files`` (in collector tests: what the real collector wrote)."""
    from agent.report import from_bundles
    from agent.report.loader import load_folder
    return from_bundles([load_folder(make(root, files, **kw))]).findings
