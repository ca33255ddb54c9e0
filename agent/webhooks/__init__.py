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
tracker UI steps (docs/trackers.md repeats them). The helpers
below are shared by the modules: constant-time token and ``Authorization``
checks, and the rules that turn alert labels and ``key:value`` tags into hosts,
services and labels for targeting.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import importlib
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any, Mapping

from agent.incident import ID_RE, parse_iso

TRACKERS = ("pagerduty", "incidentio", "alertmanager", "opsgenie", "generic",
            "grafana_irm", "grafana_alerting", "firehydrant", "rootly", "jsm", "datadog")
DEFAULT_TOKEN_HEADER = "X-Goldenhour-Token"

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
    started_at: float | None = None   # epoch s the incident/alert began per the tracker (the history window's T0)
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
    """ISO 8601 / RFC 3339 text, epoch seconds or epoch milliseconds -> epoch seconds.

    Also FireHydrant's ``"2023-07-25 13:34:49 UTC"`` and epoch digits sent as text
    (Datadog's ``$DATE`` in a JSON string).
    """
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        v = float(value)
        while v > 1e11:        # ms, us or ns
            v /= 1000.0
        return v
    if isinstance(value, str) and value.rstrip().endswith(" UTC"):
        value = value.rstrip()[:-4]
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


# -- authentication helpers -----------------------------------------------------

def token_header(headers: Mapping[str, str], name: str, secrets: list[str]) -> bool:
    """A shared-token header: False when absent, True when it equals a secret, else ``Forbidden``."""
    value = header(headers, name)
    if not value or not value.strip():
        return False
    if not any_equal([value.strip()], secrets):
        raise Forbidden(f"wrong {name} token")
    return True


def check_authorization(value: str, secrets: list[str], *, username: str = "", verbatim: bool = False) -> None:
    """An ``Authorization`` header: ``Bearer <secret>``, or Basic ``username:<secret>`` when a user is set.

    ``verbatim`` also accepts the whole value equal to a secret (Grafana IRM sends its
    "Authorization header" field as typed). Raises ``Unauthorized``/``Forbidden``/``Malformed``.
    """
    auth = (value or "").strip()
    if not auth:
        raise Unauthorized("missing Authorization header (bearer token or basic auth)")
    if verbatim and any_equal([auth], secrets):
        return
    scheme, _, cred = auth.partition(" ")
    cred = cred.strip()
    if scheme.lower() == "bearer":
        if not any_equal([cred], secrets):
            raise Forbidden("wrong bearer token")
        return
    if scheme.lower() == "basic":
        try:
            user, sep, password = base64.b64decode(cred, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise Malformed("malformed basic auth") from None
        if not sep:
            raise Malformed("malformed basic auth")
        # both compared in constant time, always both
        ok_user = any_equal([user], [username]) if username else False
        ok_pass = any_equal([password], secrets)
        if not (ok_user and ok_pass):
            raise Forbidden("wrong basic auth credentials")
        return
    if verbatim:
        raise Forbidden("wrong Authorization header")
    raise Unauthorized("Authorization must be Bearer or Basic")


def hex_digest(value: str, what: str) -> str:
    """A hex signature from a header, lower-cased; ``Malformed`` when it is not hex."""
    v = (value or "").strip().lower()
    try:
        bytes.fromhex(v)
    except ValueError:
        raise Malformed(f"{what} is not a hex digest") from None
    if not v:
        raise Malformed(f"{what} is empty")
    return v


# -- targeting helpers: labels and tags -> hosts, services, labels -----------------

HOST_LABELS = ("instance", "host", "hostname", "node", "nodename", "server", "fqdn")
SERVICE_LABELS = ("service", "job", "app", "application", "component", "container", "systemd_unit",
                  "unit", "name")
HOST_TAGS = ("host", "hostname", "instance", "node", "server")
SERVICE_TAGS = ("service", "app", "unit")


def host_from_label(value: str) -> str:
    """``web-3:9100`` -> ``web-3``; ``[2001:db8::1]:9100`` -> ``2001:db8::1``; other values as they are."""
    v = value.strip()
    if v.startswith("["):                     # [2001:db8::1]:9100
        return v[1:].split("]", 1)[0]
    if v.count(":") == 1:                      # web-3:9100
        return v.split(":", 1)[0]
    return v


def label_targets(labels: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """Hosts and services named by Prometheus-style alert labels (the Alertmanager rules)."""
    lab = {str(k): str(v) for k, v in labels.items() if v is not None}
    hosts = [host_from_label(lab[k]) for k in HOST_LABELS if lab.get(k)]
    services = [lab[k] for k in SERVICE_LABELS if lab.get(k)]
    return hosts, services


def split_tag(tag: str) -> tuple[str, str] | None:
    """``host:web-3`` or ``host=web-3`` -> ``("host", "web-3")``; a bare tag -> None."""
    for sep in (":", "="):
        if sep in tag:
            k, v = tag.split(sep, 1)
            return k.strip().lower(), v.strip()
    return None


def tag_targets(tags: list[str]) -> tuple[list[str], list[str], dict[str, str]]:
    """Hosts, services and labels named by ``key:value`` tags (Opsgenie, Datadog, Jira labels)."""
    hosts: list[str] = []
    services: list[str] = []
    labels: dict[str, str] = {}
    for t in tags:
        kv = split_tag(t)
        if not kv:
            continue
        k, v = kv
        labels[k] = v
        if k in HOST_TAGS:
            hosts.append(v)
        elif k in SERVICE_TAGS:
            services.append(v)
    return hosts, services, labels


def names(value: Any, *keys: str) -> list[str]:
    """Names from a list of strings or of objects (their first present key of ``keys``)."""
    out: list[str] = []
    for item in value if isinstance(value, list) else []:
        if isinstance(item, dict):
            for k in keys:
                if item.get(k):
                    out.append(str(item[k]))
                    break
        elif item is not None and str(item).strip():
            out.append(str(item).strip())
    return out
