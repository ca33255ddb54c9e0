"""Incidents and triggers: the validated identity every capture is filed under.

Where it sits: the very first step of a capture. An incident ID becomes a path
component and an S3 key component, so only ``^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$``
passes; anything else (``../../etc``, slashes, spaces) is refused before anything
is written.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class IncidentIdError(ValueError):
    pass


def check_id(incident_id: str) -> str:
    if not isinstance(incident_id, str) or not ID_RE.fullmatch(incident_id) or ".." in incident_id:
        raise IncidentIdError(
            f"invalid incident ID {incident_id!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (no '/', no '..')")
    return incident_id


def safe_component(text: str, limit: int = 64) -> str:
    """Turn free text (a hostname) into a safe path/key component."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip(".-_") or "host"
    return s[:limit]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_epoch(epoch: Any) -> str:
    """Epoch seconds as ISO UTC, "" for anything else (a tracker's time kept in the daemon's state)."""
    if not isinstance(epoch, (int, float)) or isinstance(epoch, bool):
        return ""
    return iso(datetime.fromtimestamp(epoch, timezone.utc))


def parse_iso(text: Any) -> datetime | None:
    """ISO 8601 / RFC 3339 text (``Z`` or an offset; no offset = UTC) to an aware UTC datetime, else None.

    Python 3.11's ``fromisoformat`` also takes Go's nanosecond fractions (it keeps microseconds).
    """
    if not isinstance(text, str) or not text:
        return None
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


@dataclass
class Incident:
    id: str
    source: str = "manual"            # manual, pre-restart, or a tracker of agent.webhooks.TRACKERS
    title: str = ""
    url: str = ""
    severity: str = ""
    services: list[str] = field(default_factory=list)
    started_at: str = ""              # when the incident began (ISO UTC), if the tracker or the user said

    def __post_init__(self) -> None:
        check_id(self.id)

    @classmethod
    def from_record(cls, inc_id: str, source: str, rec: dict[str, Any]) -> "Incident":
        """The incident a daemon state record describes (its ``started_at`` is epoch seconds there)."""
        return cls(id=inc_id, source=source, title=rec.get("title", ""), url=rec.get("url", ""),
                   severity=rec.get("severity", ""), services=list(rec.get("services") or []),
                   started_at=iso_epoch(rec.get("started_at")))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Trigger:
    kind: str = "manual"              # manual | webhook | pre-restart | daemon-api
    reason: str = ""
    by: str = ""                      # user, tracker delivery id...
    at: str = field(default_factory=lambda: iso(utcnow()))
    payload_sha256: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
