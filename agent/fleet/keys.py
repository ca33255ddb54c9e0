"""Names in NATS: buckets, keys and subjects, and the reversible token encoding under them.

Where it sits: every other ``agent.fleet`` module builds keys and subjects here, and so
does ``fleet enroll`` when it writes a host's permissions, so the key a daemon writes and
the subject its credential allows can never drift apart.

NATS subjects are tokens separated by ``.``; incident IDs (``agent.incident`` allows
``[A-Za-z0-9._-]``) and host names contain dots. A token is therefore escaped: every
character outside ``[A-Za-z0-9_-]`` becomes ``=XX`` per UTF-8 byte (``.`` -> ``=2E``,
``=`` -> ``=3D``), which is valid in KV keys and subjects and decodes back exactly. Host
names are compared case-insensitively everywhere else, so a host's token is the encoded
lower-case name.

Buckets (JetStream key/value, stream ``KV_<bucket>``):

=================  ============================  ====================================
bucket             key                           written by
=================  ============================  ====================================
``GH_INCIDENTS``   ``<fleet>.<incident>``        the relay and the commander
``GH_STATUS``      ``<fleet>.<incident>.<host>`` that host only
``GH_HOSTS``       ``<fleet>.<host>``            that host only (heartbeat)
=================  ============================  ====================================
"""
from __future__ import annotations

import re

INCIDENTS, STATUS, HOSTS = "GH_INCIDENTS", "GH_STATUS", "GH_HOSTS"
BUCKETS = (INCIDENTS, STATUS, HOSTS)

FLEET_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
_PLAIN = re.compile(r"[A-Za-z0-9_-]")
_ESCAPED = re.compile(r"(?:=[0-9A-F]{2})+")


class BadName(ValueError):
    """A fleet name, host name or token that cannot be used (message says which and why)."""


def encode(text: str) -> str:
    """``web-3.example.com`` -> ``web-3=2Eexample=2Ecom``; reversible with ``decode``."""
    if not text:
        raise BadName("an empty name cannot be a key token")
    out = []
    for ch in text:
        if _PLAIN.fullmatch(ch):
            out.append(ch)
        else:
            out.extend(f"={b:02X}" for b in ch.encode("utf-8"))
    return "".join(out)


def decode(token: str) -> str:
    """The inverse of ``encode``; raises ``BadName`` on a token ``encode`` cannot produce."""
    if not token or not re.fullmatch(r"(?:[A-Za-z0-9_-]|=[0-9A-F]{2})+", token):
        raise BadName(f"not an encoded token: {token!r}")
    try:
        text = _ESCAPED.sub(lambda m: bytes.fromhex(m.group(0).replace("=", "")).decode("utf-8"), token)
    except UnicodeDecodeError:
        raise BadName(f"not an encoded token: {token!r}") from None
    if encode(text) != token:
        raise BadName(f"not a canonical token: {token!r}")
    return text


def check_fleet(name: str) -> str:
    if not isinstance(name, str) or not FLEET_RE.fullmatch(name):
        raise BadName(f"invalid fleet name {name!r}: use 1-32 letters, digits, '_' or '-'")
    return name


def check_host(name: str) -> str:
    """A host name as it appears in keys: lower case, ``[a-z0-9][a-z0-9._-]*``."""
    if not isinstance(name, str) or not HOST_RE.fullmatch(name) or ".." in name:
        raise BadName(f"invalid host name {name!r} for the fleet: use letters, digits, '.', '_' or '-', "
                        "starting with a letter or digit")
    return name.lower()


def host_token(host: str) -> str:
    return encode(check_host(host))


def incident_key(fleet: str, incident_id: str) -> str:
    return f"{check_fleet(fleet)}.{encode(incident_id)}"


def status_key(fleet: str, incident_id: str, host: str) -> str:
    return f"{check_fleet(fleet)}.{encode(incident_id)}.{host_token(host)}"


def host_key(fleet: str, host: str) -> str:
    return f"{check_fleet(fleet)}.{host_token(host)}"


def split_incident_key(key: str) -> tuple[str, str]:
    """``<fleet>.<incident>`` -> (fleet, incident ID)."""
    parts = key.split(".")
    if len(parts) != 2:
        raise BadName(f"not an incident key: {key!r}")
    return check_fleet(parts[0]), decode(parts[1])


def split_status_key(key: str) -> tuple[str, str, str]:
    """``<fleet>.<incident>.<host>`` -> (fleet, incident ID, host)."""
    parts = key.split(".")
    if len(parts) != 3:
        raise BadName(f"not a status key: {key!r}")
    return check_fleet(parts[0]), decode(parts[1]), decode(parts[2])


def split_host_key(key: str) -> tuple[str, str]:
    parts = key.split(".")
    if len(parts) != 2:
        raise BadName(f"not a host key: {key!r}")
    return check_fleet(parts[0]), decode(parts[1])


def subject(bucket: str, key: str) -> str:
    """The subject a KV write to ``key`` of ``bucket`` is published on."""
    return f"$KV.{bucket}.{key}"


def stream(bucket: str) -> str:
    return f"KV_{bucket}"


def ring_subject(fleet: str) -> str:
    """The core subject new incident records are also published on (``agent.fleet.incidents.ring``)."""
    return f"gh.ring.{check_fleet(fleet)}"
