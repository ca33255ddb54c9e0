"""``goldenhour fleet enroll``: credentials for hosts, relays and commanders, and the server's permission entries.

Where it sits: run by whoever operates the NATS server. Each principal gets its own nkey
(an Ed25519 key pair; the server stores only the public key, the principal proves itself
by signing a nonce, no shared secret travels) and an allow-list of subjects, so that

- a **host** can write only its own status keys (``$KV.GH_STATUS.<fleet>.*.<host>``) and
  its own heartbeat (``$KV.GH_HOSTS.<fleet>.<host>``), read only its own status back,
  watch the incidents, and receive only on its own inbox (``_GH.<fleet>.host.<host>.>``):
  it cannot create or change an incident, write another host's key, or read other hosts'
  status;
- a **relay** can create and update incidents of its fleet and read the host registry
  (the expected host count sets the upload spread), and create the buckets;
- a **commander** (the incident commander's ``goldenhour fleet`` CLI) can do what the
  relay does and also read every host's status.

Everything else is denied (NATS allow-lists deny what they do not list). The test suite
runs the real daemon and relay under exactly these permissions against a real
nats-server, and tries the forbidden writes.

Layout of an enrolment directory (``--dir``, default ``/etc/goldenhour/fleet``)::

    principals/<kind>-<name>.json   public key, fleet, permissions (no secret)
    seeds/<kind>-<name>.nk          the seed (mode 0600): copy it to that host's
                                    fleet.nkey_seed_file, then delete it here
    nats-users.conf                 ``authorization { users = [...] }`` for every
                                    principal; ``include`` it from nats-server.conf and
                                    reload the server (``nats-server --signal reload``)

For thousands of hosts a server in decentralized JWT mode scales better (a user added
without a server reload, revocation per user): ``permissions(...)`` gives the same
allow-lists for ``nsc add user --allow-pub ... --allow-sub ...``, and the host then uses
``fleet.creds_file``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import UsageError
from agent.fleet import keys

KINDS = ("host", "relay", "commander")
JS = "$JS.API"


def inbox_prefix(kind: str, fleet: str, who: str) -> str:
    """The principal's private reply subjects; its credential may subscribe to nothing else.

    ``who`` is the host name for a host, the public key (``U...``) for a relay or a
    commander: those processes find it in their own seed, so they need no name in the config.
    """
    token = keys.host_token(who) if kind == "host" else keys.encode(who)
    return f"_GH.{keys.check_fleet(fleet)}.{kind}.{token}"


def _bucket_read(bucket: str, key_filter: str) -> list[str]:
    """Subjects to open, watch and read ``bucket`` (direct gets limited to ``key_filter``)."""
    s = keys.stream(bucket)
    return [f"{JS}.STREAM.INFO.{s}", f"{JS}.CONSUMER.CREATE.{s}", f"{JS}.CONSUMER.CREATE.{s}.>",
            f"{JS}.CONSUMER.INFO.{s}.*", f"{JS}.CONSUMER.DELETE.{s}.*",
            f"{JS}.DIRECT.GET.{s}.{keys.subject(bucket, key_filter)}"]


def _manage() -> list[str]:
    """Create the buckets, and raise the incidents bucket's consumer limit (``conn.ensure_buckets``)."""
    return [*[f"{JS}.STREAM.CREATE.{keys.stream(b)}" for b in keys.BUCKETS],
            f"{JS}.STREAM.UPDATE.{keys.stream(keys.INCIDENTS)}"]


def permissions(kind: str, fleet: str, name: str, public_key: str = "") -> dict[str, Any]:
    """The allow-lists of one principal: ``{"publish": {"allow": [...]}, "subscribe": {"allow": [...]}}``."""
    keys.check_fleet(fleet)
    f = fleet
    if kind == "host":
        t = keys.host_token(name)
        pub = [keys.subject(keys.STATUS, f"{f}.*.{t}"), keys.subject(keys.HOSTS, f"{f}.{t}"),
               f"{JS}.STREAM.INFO.{keys.stream(keys.STATUS)}", f"{JS}.STREAM.INFO.{keys.stream(keys.HOSTS)}",
               f"{JS}.DIRECT.GET.{keys.stream(keys.STATUS)}.{keys.subject(keys.STATUS, f'{f}.*.{t}')}",
               *[p for p in _bucket_read(keys.INCIDENTS, f"{f}.*") if ".DIRECT.GET." not in p],
               "$JS.FC.>"]
    elif kind == "relay":
        pub = [keys.subject(keys.INCIDENTS, f"{f}.*"), f"{JS}.INFO", *_manage(),
               *_bucket_read(keys.INCIDENTS, f"{f}.*"), *_bucket_read(keys.HOSTS, f"{f}.*"),
               f"{JS}.STREAM.INFO.{keys.stream(keys.STATUS)}", "$JS.FC.>"]
    elif kind == "commander":
        pub = [keys.subject(keys.INCIDENTS, f"{f}.*"), f"{JS}.INFO", *_manage(),
               *_bucket_read(keys.INCIDENTS, f"{f}.*"), *_bucket_read(keys.HOSTS, f"{f}.*"),
               *_bucket_read(keys.STATUS, f"{f}.*.*"), "$JS.FC.>"]
    else:
        raise UsageError(f"unknown principal kind {kind!r}; one of {', '.join(KINDS)}")
    sub = [f"{inbox_prefix(kind, fleet, name if kind == 'host' else public_key)}.>"]
    if kind == "host":
        sub.append(keys.ring_subject(fleet))         # the fast path of new records (incidents.ring)
    else:
        pub.append(keys.ring_subject(fleet))
    return {"publish": {"allow": sorted(set(pub))}, "subscribe": {"allow": sub}}


def new_seed() -> tuple[bytes, str]:
    """A fresh user nkey: (seed ``SU...``, public key ``U...``)."""
    import nkeys
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    kp = nkeys.from_seed(bytearray(seed))
    public = kp.public_key.decode()
    kp.wipe()
    return bytes(seed), public


@dataclass
class Principal:
    kind: str
    name: str
    fleet: str
    public_key: str
    permissions: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.kind}-{self.name}"

    def user_entry(self) -> dict[str, Any]:
        return {"nkey": self.public_key, "permissions": self.permissions}


def make(kind: str, name: str, fleet: str) -> tuple[Principal, bytes]:
    """A new principal and its seed (nothing written)."""
    if kind == "host":
        name = keys.check_host(name)
    elif not name or not keys.FLEET_RE.fullmatch(name):
        raise UsageError(f"invalid {kind} name {name!r}: use 1-32 letters, digits, '_' or '-'")
    seed, public = new_seed()
    return Principal(kind, name, fleet, public, permissions(kind, fleet, name, public)), seed


def render_users(principals: list[Principal]) -> str:
    """nats-server config text: one ``authorization`` block with every principal (JSON is valid NATS config)."""
    lines = ["# goldenhour fleet users: generated by `goldenhour fleet enroll`; do not edit, re-run it.",
             "authorization {", "  users = ["]
    for p in sorted(principals, key=lambda p: (p.fleet, p.kind, p.name)):
        lines.append(f"    # {p.kind} {p.name} (fleet {p.fleet})")
        lines.append("    " + json.dumps(p.user_entry(), sort_keys=True) + ",")
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


def load_principals(directory: Path) -> list[Principal]:
    out = []
    pdir = directory / "principals"
    for f in sorted(pdir.glob("*.json")) if pdir.is_dir() else []:
        try:
            d = json.loads(f.read_text())
            out.append(Principal(d["kind"], d["name"], d["fleet"], d["public_key"], d["permissions"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"{f} is not an enrolment record ({type(exc).__name__}); remove or fix it") from None
    return out


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def enroll(directory: Path, kind: str, name: str, fleet: str, *, rotate: bool = False) -> dict[str, Any]:
    """Create (or with ``rotate`` replace) one principal in ``directory``; rewrite nats-users.conf.

    Returns what the CLI prints: the seed file, the users file, the public key.
    """
    directory = Path(directory)
    p, seed = make(kind, name, fleet)
    rec = directory / "principals" / f"{fleet}-{p.label}.json"
    if rec.exists() and not rotate:
        raise UsageError(f"{kind} {p.name} of fleet {fleet} is enrolled already ({rec}); --rotate replaces its key")
    seed_file = directory / "seeds" / f"{fleet}-{p.label}.nk"
    _write(seed_file, seed + b"\n", 0o600)
    _write(rec, json.dumps({"kind": p.kind, "name": p.name, "fleet": fleet, "public_key": p.public_key,
                            "permissions": p.permissions}, indent=1, sort_keys=True).encode() + b"\n", 0o644)
    users = directory / "nats-users.conf"
    _write(users, render_users(load_principals(directory)).encode(), 0o644)
    return {"kind": p.kind, "name": p.name, "fleet": fleet, "public_key": p.public_key, "seed_file": str(seed_file),
            "users_file": str(users),
            "inbox_prefix": inbox_prefix(p.kind, fleet, p.name if p.kind == "host" else p.public_key),
            "permissions": p.permissions}


def remove(directory: Path, kind: str, name: str, fleet: str) -> dict[str, Any]:
    """Revoke a principal: drop it from nats-users.conf (reload the server to take effect)."""
    directory = Path(directory)
    label = f"{kind}-{keys.check_host(name) if kind == 'host' else name}"
    rec = directory / "principals" / f"{fleet}-{label}.json"
    if not rec.exists():
        raise UsageError(f"{kind} {name} of fleet {fleet} is not enrolled in {directory}")
    rec.unlink()
    (directory / "seeds" / f"{fleet}-{label}.nk").unlink(missing_ok=True)
    users = directory / "nats-users.conf"
    _write(users, render_users(load_principals(directory)).encode(), 0o644)
    return {"removed": label, "fleet": fleet, "users_file": str(users)}
