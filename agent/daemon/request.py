"""What travels between the daemon's hops: one capture request, one child job, one result.

Where it sits: shared by every part of ``agent.daemon`` and imports nothing of the
capture pipeline (standard library and ``agent.incident`` only), so the daemon's
own process can build, persist and read these without loading collectors.

``CaptureRequest`` is the one request type, its fields named once:

    local API body ──from_api──┐
    webhook / fleet intake ────┼─> CaptureRequest ─> queue (Job) ─> state file
                               │     (to_json / from_json; reads the ``only``
                               │      key of state files written before)
                               └─> ChildJob on the child's stdin ─> agent.daemon.child
                                   ─> agent.capture.CaptureRequest (the pipeline's own)

The only other spelling is the local API's documented wire name ``logs`` for
``log_paths``, translated in ``from_api``.

``JobResult`` is what the child prints (one JSON object on stdout) and the parent
reads; its kind-specific parts are ``Captured`` (a published bundle) and
``UploadRound`` (counts over ``agent.upload.upload_pending``'s result statuses).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from agent.incident import Incident, IncidentIdError, Trigger, parse_iso

PROFILES = ("quick", "standard", "full")
KINDS = ("capture", "upload", "salvage", "sweep")
_LISTS = ("collectors", "skip", "processes", "units", "log_paths")


class RequestError(ValueError):
    """A request that cannot be run; the message is one line, safe to return to the caller with ``status``."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class CaptureRequest:
    """One capture the daemon runs: for which incident, why, with what scope.

    ``trigger.at`` stays empty until the capture starts: the child stamps it, so the
    manifest's trigger time is when capturing began, as for every daemon capture.
    """

    incident: Incident
    trigger: Trigger
    profile: str                                            # "": capture.profile
    collectors: list[str] = field(default_factory=list)     # empty: the profile's collectors
    skip: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    processes: list[str] = field(default_factory=list)
    units: list[str] = field(default_factory=list)
    log_paths: list[str] = field(default_factory=list)
    time_budget_s: float | None = None
    probe_seconds: float | None = None
    heap: bool = False

    def to_json(self) -> dict[str, Any]:
        """The persisted and child form; fields at their defaults are left out (compact state file)."""
        out: dict[str, Any] = {"incident": self.incident.to_json(),
                               "trigger": {k: v for k, v in self.trigger.to_json().items() if v},
                               "profile": self.profile}
        for k in (*_LISTS, "pids", "time_budget_s", "probe_seconds", "heap"):
            v = getattr(self, k)
            if v:
                out[k] = list(v) if isinstance(v, list) else v
        return out

    @classmethod
    def from_json(cls, d: Any) -> "CaptureRequest":
        """Read a request from the state file or the child's stdin (also ``only``, the old name of
        ``collectors``, in state files written before); raises RequestError."""
        if not isinstance(d, dict):
            raise RequestError("a capture request is a JSON object")
        d = dict(d)
        if "collectors" not in d and "only" in d:
            d["collectors"] = d["only"]
        inc, trig = d.get("incident"), d.get("trigger") or {}
        if not isinstance(inc, dict) or not isinstance(trig, dict):
            raise RequestError("incident and trigger must be JSON objects")
        try:
            incident = Incident(**{k: v for k, v in inc.items()
                                   if k in ("id", "source", "title", "url", "severity", "services", "started_at")})
            trigger = Trigger(**{"at": "", **{k: v for k, v in trig.items()
                                             if k in ("kind", "reason", "by", "at", "payload_sha256")}})
        except (IncidentIdError, TypeError) as exc:
            raise RequestError(str(exc)) from None
        return cls(incident=incident, trigger=trigger, profile=str(d.get("profile") or ""),
                   **_scope(d, {k: k for k in (*_LISTS, "pids")}))

    @classmethod
    def from_api(cls, body: dict[str, Any], *, incident: Incident, trigger: Trigger,
                 default_profile: str) -> "CaptureRequest":
        """Validate the scope of a ``POST /v1/snapshot`` body; raises RequestError (HTTP 400; 404 for an
        unknown collector)."""
        profile = body.get("profile") or default_profile
        if profile not in PROFILES:
            raise RequestError("profile must be quick, standard or full")
        started = body.get("started_at")
        if started:                     # when the incident began (snapshot --started-at): the history's T0
            if not isinstance(started, str) or parse_iso(started) is None:
                raise RequestError("started_at must be an ISO 8601 time")
            incident.started_at = started
        names = {"collectors": "collectors", "skip": "skip", "processes": "processes", "units": "units",
                 "logs": "log_paths", "pids": "pids"}
        scope = _scope(body, names)
        if scope["collectors"] or scope["skip"]:        # names read from the source: no collector is imported
            from agent.options import collector_modules
            known = collector_modules()
            unknown = [c for c in scope["collectors"] + scope["skip"] if c not in known]
            if unknown:
                raise RequestError(f"unknown collector {', '.join(unknown)}; known: {', '.join(sorted(known))}", 404)
        return cls(incident=incident, trigger=trigger, profile=profile, **scope)


def _scope(d: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """The scope fields of a request from ``d``, whose keys ``names`` maps to field names."""
    out: dict[str, Any] = {}
    for key, name in names.items():
        v = d.get(key) or []
        if not isinstance(v, list):
            raise RequestError(f"{key} must be a list")
        if name == "pids":
            try:
                out[name] = [int(p) for p in v]
            except (TypeError, ValueError):
                raise RequestError("pids must be integers") from None
        elif not all(isinstance(x, str) for x in v):
            raise RequestError(f"{key} must be a list of strings")
        else:
            out[name] = list(v)
    for key in ("time_budget_s", "probe_seconds"):
        v = d.get(key)
        if v in (None, "", 0):                  # the configured default
            out[key] = None
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise RequestError(f"{key} must be a positive number of seconds")
        else:
            out[key] = float(v)
    out["heap"] = bool(d.get("heap"))
    return out


@dataclass
class ChildJob:
    """The one JSON object ``goldenhour daemon-job`` reads on stdin."""

    kind: str                                   # capture | upload | salvage | sweep
    store: str = ""                             # the daemon's store.path
    request: CaptureRequest | None = None       # for kind capture
    config: dict[str, Any] | None = None        # the config the daemon runs with (its file as last (re)loaded)

    def to_json(self) -> dict[str, Any]:
        out = {"kind": self.kind, "store": self.store, "request": self.request.to_json() if self.request else None}
        if self.config is not None:
            out["config"] = self.config
        return out

    @classmethod
    def from_json(cls, d: Any) -> "ChildJob":
        if not isinstance(d, dict) or d.get("kind") not in KINDS:
            raise RequestError(f"unknown job kind {d.get('kind') if isinstance(d, dict) else d!r}")
        req = None
        if d["kind"] == "capture":
            req = CaptureRequest.from_json(d.get("request"))
        config = d.get("config")
        if config is not None and not isinstance(config, dict):
            raise RequestError("config must be an object")
        return cls(kind=d["kind"], store=str(d.get("store") or ""), request=req, config=config)


@dataclass
class Captured:
    """A capture the child published; also the body of the local API's ``done`` answer."""

    bundle: str
    sha256: str
    size: int
    incident: str
    host: str
    profile: str
    duration_s: float
    collectors: dict[str, str]                  # name -> status
    collector_results: list[dict[str, Any]]     # name, key, status, duration_s per collector run


@dataclass
class UploadRound:
    """One ``upload_pending`` round: bundles uploaded, failed (``pending``: the attempt failed and
    backs off; ``busy``: another goldenhour holds it) and waiting for their backoff to end."""

    uploaded: int = 0
    failed: int = 0
    waiting: int = 0
    error: str = ""                  # why the first failed bundle failed (one line)


@dataclass
class JobResult:
    """What a child job printed: ``ok`` with the part of its kind, or an ``error`` (one line)."""

    kind: str
    ok: bool
    error: str = ""
    exit_code: int = 0
    captured: Captured | None = None
    upload: UploadRound | None = None
    salvaged: list[str] = field(default_factory=list)       # bundles published from interrupted captures
    resumed: list[dict[str, Any]] = field(default_factory=list)  # pause-ledger sweep results
    scratch: list[dict[str, Any]] = field(default_factory=list)  # scratch-ledger sweep: files removed

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, kind: str, d: Any) -> "JobResult":
        """The parent's reading; anything unexpected is a failed result without an error text
        (the parent then reports the child's stderr)."""
        if not isinstance(d, dict) or d.get("kind") != kind:
            return cls(kind=kind, ok=False)
        try:
            cap, up = d.get("captured"), d.get("upload")
            return cls(kind=kind, ok=bool(d.get("ok")), error=str(d.get("error") or ""),
                       exit_code=int(d.get("exit_code") or 0),
                       captured=Captured(**cap) if isinstance(cap, dict) else None,
                       upload=UploadRound(**up) if isinstance(up, dict) else None,
                       salvaged=[str(b) for b in d.get("salvaged") or []],
                       resumed=[r for r in d.get("resumed") or [] if isinstance(r, dict)],
                       scratch=[r for r in d.get("scratch") or [] if isinstance(r, dict)])
        except (TypeError, ValueError):
            return cls(kind=kind, ok=False)
