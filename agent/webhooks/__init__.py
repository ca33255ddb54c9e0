"""Incident-tracker webhook receivers: one module per tracker, one small interface.

Where it sits: ``agent.daemon`` receives ``POST /v1/webhooks/<tracker>``, reads the
raw body (capped), and calls the tracker's module:

``verify(raw_body, headers, secrets, *, opts=None, now=None)``
    checks the tracker's own authentication over the *raw* bytes (never a
    re-serialised body), with constant-time comparisons; raises ``Unauthorized``
    (401: the auth header is missing), ``Forbidden`` (403: present but wrong, or a
    signed timestamp outside the tolerance window) or ``Malformed`` (400: an auth
    header that cannot be parsed). ``headers`` is any mapping; names are matched
    case-insensitively. ``secrets`` is the list from the config (several during
    rotation: any one may match). Secrets never appear in an exception message.

``parse(body, *, opts=None)``
    maps the decoded JSON body to a list of ``Event`` (``trigger``, ``resolve``,
    ``ignore`` or ``ping``); raises ``Malformed`` (400) when required fields are
    missing. It knows nothing about this host: targeting is the daemon's job
    (``agent.targeting``).

``delivery_id(headers, body)``
    the tracker's idempotency key for this delivery ("" when it has none), so a
    retried delivery is recognised even before parsing the incident.

Each module documents its wire format, what maps to which action, and the
tracker UI steps (README "The daemon and webhooks" repeats them).
"""
from __future__ import annotations

import hashlib
import hmac
import importlib
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any, Mapping

from agent.incident import ID_RE, parse_iso

TRACKERS = ("pagerduty", "incidentio", "alertmanager", "opsgenie", "generic")

TRIGGER, RESOLVE, ACK, IGNORE, PING = "trigger", "resolve", "acknowledge", "ignore", "ping"


class WebhookError(Exception):
    """A delivery refused with an HTTP status and a short reason (safe to return and log)."""

    status = 400
    outcome = "malformed"

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Malformed(WebhookError):
    status, outcome = 400, "malformed"


class Unauthorized(WebhookError):
    status, outcome = 401, "unauthorized"


class Forbidden(WebhookError):
    status, outcome = 403, "forbidden"


@dataclass
class Event:
    """One thing a delivery says about one incident."""

    action: str                       # trigger | resolve | acknowledge | ignore | ping
    incident_id: str = ""
    source: str = ""
    kind: str = ""                    # the tracker's own event type, e.g. incident.triggered
    title: str = ""
    url: str = ""
    severity: str = ""
    services: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    reopen: bool = False              # a trigger that may capture again after a resolve (PD reopened)
    force: bool = False               # capture again even if already captured (generic "recapture")
    occurred_at: float | None = None  # epoch s the event happened (PagerDuty): older than dedupe_hours = stale
    reason: str = ""                  # why ignored

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def load(tracker: str) -> ModuleType:
    if tracker not in TRACKERS:
        raise KeyError(tracker)
    return importlib.import_module(f"agent.webhooks.{tracker}")


# -- helpers shared by the modules --------------------------------------------

def header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup on any mapping (starlette Headers, dict)."""
    v = headers.get(name)
    if v is not None:
        return v
    low = name.lower()
    for k, val in headers.items():
        if k.lower() == low:
            return val
    return None


def hmac_sha256(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def any_equal(provided: list[str], expected: list[str]) -> bool:
    """True if any provided value equals any expected one; every pair compared in constant time."""
    ok = False
    for p in provided:
        for e in expected:
            ok |= hmac.compare_digest(p.encode(), e.encode())
    return ok


def incident_id(raw: Any, prefix: str = "") -> str:
    """A tracker's incident id as a goldenhour incident ID; hashed when it would not pass the rule."""
    s = str(raw or "").strip()
    if not s:
        raise Malformed("no incident id in the payload")
    if ID_RE.fullmatch(s) and ".." not in s:
        return s
    return f"{prefix or 'inc'}-{hashlib.sha256(s.encode()).hexdigest()[:16]}"


def parse_time(value: Any) -> float | None:
    """ISO 8601 / RFC 3339 text, epoch seconds or epoch milliseconds -> epoch seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        v = float(value)
        while v > 1e11:        # ms, us or ns
            v /= 1000.0
        return v
    dt = parse_iso(value)
    return dt.timestamp() if dt else None


def strs(value: Any) -> list[str]:
    """A list of non-empty strings from a string, a list, or nothing."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if v is not None and str(v).strip()]
    return [str(value)]


def obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Malformed(f"{what} must be a JSON object")
    return value
