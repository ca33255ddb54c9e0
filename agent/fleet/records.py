"""The three records of a fleet, as dataclasses with strict parsers: incident, status, host.

Where it sits: the relay and the commander write ``IncidentRecord``s into ``GH_INCIDENTS``;
each daemon writes its own ``StatusRecord``s into ``GH_STATUS`` and its ``HostRecord``
(heartbeat) into ``GH_HOSTS``; ``fleet status`` reads all three. Every record is one JSON
object with a ``schema`` field naming its kind and major version.

Parsing is strict because a daemon acts on what it reads: ``parse_*`` raises
``RecordError`` (a one-line reason, safe to log) on anything that is not exactly a record
of this version -- not JSON, the wrong schema, a field of the wrong type, an incident ID
that could escape a path (``../x``), a record stored under a key that names another
incident or fleet, a deadline that does not parse. Unknown *extra* fields are ignored, so a
newer relay can add a field without stopping older daemons. What a daemon does with a
record that parses but is past its deadline is the watcher's business
(``agent.fleet.watcher``).

Times are ISO 8601 UTC strings with milliseconds (``agent.incident.iso``).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from agent.fleet import keys
from agent.incident import IncidentIdError, check_id, iso, parse_iso, utcnow
from agent.webhooks import TRIGGER, Event

INCIDENT_SCHEMA = "goldenhour.fleet.incident/1"
STATUS_SCHEMA = "goldenhour.fleet.status/1"
HOST_SCHEMA = "goldenhour.fleet.host/1"
MAX_RECORD_BYTES = 64 * 1024
PROFILES = ("quick", "standard", "full")
INCIDENT_STATES = ("open", "resolved", "cancelled")
# a host's progress on one incident, in the order it normally moves through them
STATUS_STATES = ("seen", "capturing", "captured", "uploading", "uploaded",
                 "failed", "expired", "skipped", "not_matched")
TERMINAL_OK = ("captured", "uploaded")        # evidence is safe (on local disk / in the bucket)
MAX_DELIVERIES = 32                           # delivery keys remembered in an incident record


class RecordError(ValueError):
    """A record that is refused; ``str()`` is the reason, one line."""


# -- field checks -----------------------------------------------------------------

def _load(raw: bytes | str, what: str) -> dict[str, Any]:
    if isinstance(raw, str):
        raw = raw.encode()
    if len(raw) > MAX_RECORD_BYTES:
        raise RecordError(f"{what} record is {len(raw)} bytes, more than {MAX_RECORD_BYTES}")
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise RecordError(f"{what} record is not valid JSON") from None
    if not isinstance(obj, dict):
        raise RecordError(f"{what} record is not a JSON object")
    return obj


def _schema(obj: dict[str, Any], want: str, what: str) -> None:
    got = obj.get("schema")
    if got != want:
        raise RecordError(f"{what} record has schema {got!r}, expected {want!r}")


def _str(obj: dict[str, Any], name: str, *, required: bool = False, limit: int = 2048) -> str:
    v = obj.get(name)
    if v is None or v == "":
        if required:
            raise RecordError(f"field {name!r} is missing")
        return ""
    if not isinstance(v, str):
        raise RecordError(f"field {name!r} must be a string, not {type(v).__name__}")
    if len(v) > limit:
        raise RecordError(f"field {name!r} is longer than {limit} characters")
    return v


def _strs(obj: dict[str, Any], name: str, limit: int = 256) -> list[str]:
    v = obj.get(name)
    if v is None:
        return []
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise RecordError(f"field {name!r} must be a list of strings")
    if len(v) > limit:
        raise RecordError(f"field {name!r} has more than {limit} entries")
    return list(v)


def _int(obj: dict[str, Any], name: str, *, minimum: int = 0, default: int | None = None) -> int:
    v = obj.get(name, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise RecordError(f"field {name!r} must be an integer")
    if v < minimum:
        raise RecordError(f"field {name!r} must be at least {minimum}")
    return v


def _num(obj: dict[str, Any], name: str, default: float = 0.0) -> float:
    v = obj.get(name, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v < 0:
        raise RecordError(f"field {name!r} must be a non-negative number")
    return float(v)


def _bool(obj: dict[str, Any], name: str, default: bool = False) -> bool:
    v = obj.get(name, default)
    if not isinstance(v, bool):
        raise RecordError(f"field {name!r} must be true or false")
    return v


def _time(obj: dict[str, Any], name: str, *, required: bool = False) -> str:
    v = _str(obj, name, required=required, limit=64)
    if v and parse_iso(v) is None:
        raise RecordError(f"field {name!r} is not an ISO 8601 time: {v!r}")
    return v


def _choice(obj: dict[str, Any], name: str, choices: tuple[str, ...]) -> str:
    v = _str(obj, name, required=True, limit=32)
    if v not in choices:
        raise RecordError(f"field {name!r} is {v!r}, not one of {', '.join(choices)}")
    return v


def _incident_id(obj: dict[str, Any]) -> str:
    v = _str(obj, "incident_id", required=True, limit=256)
    try:
        return check_id(v)
    except IncidentIdError:
        raise RecordError(f"incident ID {v!r} is refused (path-like or not 1-128 letters, digits, '.', '_', '-')") \
            from None


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


# -- incident ----------------------------------------------------------------------

@dataclass
class Scope:
    """Which hosts an incident concerns: exactly what ``agent.targeting.concerns`` reads, plus ``all``."""

    hosts: list[str] = field(default_factory=list)
    services: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    all: bool = False

    @classmethod
    def parse(cls, v: Any) -> "Scope":
        if v is None:
            return cls()
        if not isinstance(v, dict):
            raise RecordError("field 'scope' must be an object")
        labels = v.get("labels") or {}
        if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(x, str)
                                                    for k, x in labels.items()):
            raise RecordError("field 'scope.labels' must map strings to strings")
        return cls(hosts=_strs(v, "hosts", 4096), services=_strs(v, "services"), labels=dict(labels),
                   tags=_strs(v, "tags"), all=_bool(v, "all"))

    def empty(self) -> bool:
        return not (self.hosts or self.services or self.labels or self.tags or self.all)

    def describe(self) -> str:
        parts = ["all hosts"] if self.all else []
        parts += [f"host={h}" for h in self.hosts[:5]] + (["..."] if len(self.hosts) > 5 else [])
        parts += [f"service={s}" for s in self.services] + [f"{k}={v}" for k, v in self.labels.items()]
        parts += [f"tag={t}" for t in self.tags]
        return ", ".join(parts) or "nothing"


@dataclass
class IncidentRecord:
    """The desired state of one incident across the fleet (``GH_INCIDENTS``, key ``<fleet>.<incident>``).

    ``capture_rev`` starts at 1 and is bumped only by an explicit recapture or a reopen:
    a daemon captures when ``capture_rev`` is above the revision it captured. ``requested_at``
    is when the current ``capture_rev`` was asked for (trigger -> capture latencies count from
    it). No capture may start after ``deadline``. ``deliveries`` remembers the last tracker
    deliveries applied, so the same delivery at two relays changes the record once.
    """

    fleet: str
    incident_id: str
    declared_at: str
    requested_at: str
    published_at: str
    deadline: str
    source: str = "manual"
    title: str = ""
    url: str = ""
    severity: str = ""
    state: str = "open"
    capture_rev: int = 1
    scope: Scope = field(default_factory=Scope)
    profile: str = "quick"
    upload_spread_s: float = 0.0
    requested_by: str = ""
    resolved_at: str = ""
    deliveries: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        spread = d.pop("upload_spread_s")
        return {"schema": INCIDENT_SCHEMA, **d, "upload": {"spread_s": spread}}

    def encode(self) -> bytes:
        return _dumps(self.to_json())

    @property
    def key(self) -> str:
        return keys.incident_key(self.fleet, self.incident_id)

    def deadline_dt(self) -> datetime:
        dt = parse_iso(self.deadline)
        assert dt is not None        # checked by parse_incident / make_incident
        return dt

    def event(self) -> Event:
        """The record as the webhook ``Event`` that ``targeting.concerns`` takes."""
        s = self.scope
        return Event(action=TRIGGER, incident_id=self.incident_id, source=self.source, kind="fleet",
                     title=self.title, url=self.url, severity=self.severity, services=list(s.services),
                     hosts=list(s.hosts), labels=dict(s.labels), tags=list(s.tags))


def parse_incident(raw: bytes | str, *, key: str | None = None, fleet: str | None = None) -> IncidentRecord:
    """A record read from ``GH_INCIDENTS``; ``key`` (and ``fleet``) must agree with its content."""
    obj = _load(raw, "incident")
    _schema(obj, INCIDENT_SCHEMA, "incident")
    inc = _incident_id(obj)
    fl = _str(obj, "fleet", required=True, limit=64)
    try:
        keys.check_fleet(fl)
    except keys.BadName as exc:
        raise RecordError(str(exc)) from None
    if fleet is not None and fl != fleet:
        raise RecordError(f"record is for fleet {fl!r}, this host is in fleet {fleet!r}")
    if key is not None and key != keys.incident_key(fl, inc):
        raise RecordError(f"record for incident {inc!r} is stored under another key ({key!r})")
    upload = obj.get("upload") or {}
    if not isinstance(upload, dict):
        raise RecordError("field 'upload' must be an object")
    deliveries = _strs(obj, "deliveries", MAX_DELIVERIES * 4)
    return IncidentRecord(
        fleet=fl, incident_id=inc,
        declared_at=_time(obj, "declared_at", required=True), requested_at=_time(obj, "requested_at", required=True),
        published_at=_time(obj, "published_at", required=True), deadline=_time(obj, "deadline", required=True),
        source=_str(obj, "source", limit=64) or "manual", title=_str(obj, "title"), url=_str(obj, "url"),
        severity=_str(obj, "severity", limit=64), state=_choice(obj, "state", INCIDENT_STATES),
        capture_rev=_int(obj, "capture_rev", minimum=1), scope=Scope.parse(obj.get("scope")),
        profile=_choice(obj, "profile", PROFILES), upload_spread_s=_num(upload, "spread_s"),
        requested_by=_str(obj, "requested_by", limit=512), resolved_at=_time(obj, "resolved_at"),
        deliveries=deliveries)


def make_incident(fleet: str, incident_id: str, *, deadline_s: float, profile: str = "quick",
                  scope: Scope | None = None, **fields: Any) -> IncidentRecord:
    """A new open record at capture revision 1, declared now; raises ``RecordError`` on a bad ID."""
    try:
        check_id(incident_id)
        keys.check_fleet(fleet)
    except (IncidentIdError, keys.BadName) as exc:
        raise RecordError(str(exc)) from None
    if profile not in PROFILES:
        raise RecordError(f"profile {profile!r} is not one of {', '.join(PROFILES)}")
    now = utcnow()
    t = iso(now)
    return IncidentRecord(fleet=fleet, incident_id=incident_id, declared_at=t, requested_at=t, published_at=t,
                          deadline=iso(now + timedelta(seconds=deadline_s)), profile=profile,
                          scope=scope or Scope(), **fields)


# -- status ------------------------------------------------------------------------

@dataclass
class Bundle:
    """Where a host's evidence for an incident is: local name, then the S3 object once uploaded."""

    name: str = ""
    sha256: str = ""
    bytes: int = 0
    url: str = ""
    bucket: str = ""
    key: str = ""

    @classmethod
    def parse(cls, v: Any) -> "Bundle | None":
        if v is None:
            return None
        if not isinstance(v, dict):
            raise RecordError("field 'bundle' must be an object")
        sha = _str(v, "sha256", limit=64)
        if sha and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
            raise RecordError("field 'bundle.sha256' is not a SHA-256 hex digest")
        return cls(name=_str(v, "name", limit=512), sha256=sha, bytes=_int(v, "bytes", default=0),
                   url=_str(v, "url"), bucket=_str(v, "bucket", limit=256), key=_str(v, "key", limit=1024))


@dataclass
class StatusRecord:
    """One host's progress on one incident (``GH_STATUS``, key ``<fleet>.<incident>.<host>``).

    Written only by that host. ``capture_rev`` is the incident revision this status is
    about; ``requested_at`` copies that revision's request time so latencies need no join.
    """

    fleet: str
    incident_id: str
    host: str
    state: str
    capture_rev: int = 0
    requested_at: str = ""
    matched_by: str = ""
    late: bool = False
    seen_at: str = ""
    capture_started_at: str = ""
    captured_at: str = ""
    uploaded_at: str = ""
    bundle: Bundle | None = None
    collectors: dict[str, int] = field(default_factory=dict)
    error: str = ""
    profile: str = ""
    will_upload: bool = True          # False: this host keeps bundles local, ``captured`` is its last state
    agent_version: str = ""
    updated_at: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"schema": STATUS_SCHEMA, **asdict(self)}

    def encode(self) -> bytes:
        return _dumps(self.to_json())

    @property
    def key(self) -> str:
        return keys.status_key(self.fleet, self.incident_id, self.host)


def parse_status(raw: bytes | str, *, key: str | None = None) -> StatusRecord:
    obj = _load(raw, "status")
    _schema(obj, STATUS_SCHEMA, "status")
    inc = _incident_id(obj)
    fl = _str(obj, "fleet", required=True, limit=64)
    host = _str(obj, "host", required=True, limit=253)
    try:
        k = keys.status_key(fl, inc, host)
    except keys.BadName as exc:
        raise RecordError(str(exc)) from None
    if key is not None and key != k:
        raise RecordError(f"status of {host!r} for {inc!r} is stored under another key ({key!r})")
    col = obj.get("collectors") or {}
    if not isinstance(col, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in col.values()):
        raise RecordError("field 'collectors' must map names to counts")
    return StatusRecord(
        fleet=fl, incident_id=inc, host=host.lower(), state=_choice(obj, "state", STATUS_STATES),
        capture_rev=_int(obj, "capture_rev", default=0), requested_at=_time(obj, "requested_at"),
        matched_by=_str(obj, "matched_by", limit=512), late=_bool(obj, "late"), seen_at=_time(obj, "seen_at"),
        capture_started_at=_time(obj, "capture_started_at"), captured_at=_time(obj, "captured_at"),
        uploaded_at=_time(obj, "uploaded_at"), bundle=Bundle.parse(obj.get("bundle")), collectors=dict(col),
        error=_str(obj, "error", limit=4096), profile=_str(obj, "profile", limit=32),
        will_upload=_bool(obj, "will_upload", True),
        agent_version=_str(obj, "agent_version", limit=64), updated_at=_time(obj, "updated_at"))


# -- host ----------------------------------------------------------------------------

@dataclass
class HostRecord:
    """A daemon's heartbeat (``GH_HOSTS``, key ``<fleet>.<host>``): who it is, for targeting and the expected set.

    Online-ness is judged by the KV entry's *server* timestamp, not ``sent_at``, so a host
    with a wrong clock is still seen correctly.
    """

    fleet: str
    host: str
    names: list[str] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)
    services: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    capture_all: bool = False
    agent_version: str = ""
    started_at: str = ""
    sent_at: str = ""
    heartbeat_s: float = 30.0
    max_profile: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"schema": HOST_SCHEMA, **asdict(self)}

    def encode(self) -> bytes:
        return _dumps(self.to_json())

    @property
    def key(self) -> str:
        return keys.host_key(self.fleet, self.host)

    def identity(self):
        """As ``agent.targeting.Identity``, so the commander runs the daemons' own targeting rule."""
        from agent.targeting import Identity
        return Identity(names=set(self.names), addresses=set(self.addresses), services=set(self.services),
                        tags=set(self.tags), capture_all=self.capture_all)


def parse_host(raw: bytes | str, *, key: str | None = None) -> HostRecord:
    obj = _load(raw, "host")
    _schema(obj, HOST_SCHEMA, "host")
    fl = _str(obj, "fleet", required=True, limit=64)
    host = _str(obj, "host", required=True, limit=253)
    try:
        k = keys.host_key(fl, host)
    except keys.BadName as exc:
        raise RecordError(str(exc)) from None
    if key is not None and key != k:
        raise RecordError(f"heartbeat of {host!r} is stored under another key ({key!r})")
    return HostRecord(fleet=fl, host=host.lower(), names=_strs(obj, "names"), addresses=_strs(obj, "addresses"),
                      services=_strs(obj, "services"), tags=_strs(obj, "tags"),
                      capture_all=_bool(obj, "capture_all"), agent_version=_str(obj, "agent_version", limit=64),
                      started_at=_time(obj, "started_at"), sent_at=_time(obj, "sent_at"),
                      heartbeat_s=_num(obj, "heartbeat_s", 30.0), max_profile=_str(obj, "max_profile", limit=32))
