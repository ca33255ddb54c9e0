"""The connection to the fleet's NATS servers, and the buckets behind it.

Where it sits: the daemon's fleet mode, the relay and the commander's CLI all connect
through ``connect()`` with the ``fleet.*`` config keys (``Settings.from_config``):

- **Credentials**: an nkey seed file (``fleet.nkey_seed_file``, what ``goldenhour fleet
  enroll`` writes; the server config lists the public key with its permissions) or a
  creds file (``fleet.creds_file``: user JWT + seed, for servers run in decentralized
  JWT mode). Neither is ever logged.
- **TLS**: ``tls://`` URLs, or any URL with ``fleet.tls_ca_file`` (and optionally a client
  certificate, ``fleet.tls_cert_file`` / ``fleet.tls_key_file``, for mutual TLS).
- **Reconnects forever, with jitter**: nats-py's default gives up after 60 attempts, 2 s
  apart (two minutes of outage); long-running processes (``forever=True``) never give up,
  and wait a random 0..``fleet.reconnect_jitter_s`` before the first attempt after a drop,
  then back off exponentially to 30 s, so a server restart does not bring a thousand hosts
  back in the same millisecond (Velociraptor's reconnect storm, issue #948). The CLI
  (``forever=False``) tries once and fails with a one-line error.
- **Buckets**: ``ensure_buckets`` creates the three buckets when missing (relay, commander,
  ``fleet init``: host credentials may not create streams); ``open_buckets`` binds to them.
"""
from __future__ import annotations

import logging
import random
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from agent.errors import EXIT_FLEET, GoldenhourError
from agent.fleet import keys

log = logging.getLogger("goldenhour.fleet")

MAX_VALUE = 64 * 1024
DAY = 86400.0
# bucket -> (history, max age s): incidents outlive any deadline; status and heartbeats a month
BUCKET_LIMITS: dict[str, tuple[int, float]] = {
    keys.INCIDENTS: (5, 7 * DAY),
    keys.STATUS: (5, 30 * DAY),
    keys.HOSTS: (1, 30 * DAY),
}


class FleetError(GoldenhourError):
    """The fleet cannot be reached, refuses us, or is not set up (one line, never a secret)."""

    exit_code = EXIT_FLEET


@dataclass
class Settings:
    servers: list[str]
    fleet: str = "default"
    seed_file: str = ""
    creds_file: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    timeout_s: float = 5.0
    jitter_s: float = 5.0
    replicas: int = 1
    max_hosts: int = 10000
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg) -> "Settings":
        if not cfg["fleet.servers"]:
            raise FleetError("no fleet is configured: set fleet.servers (and fleet.nkey_seed_file) in the config")
        return cls(servers=list(cfg["fleet.servers"]), fleet=cfg["fleet.name"],
                   seed_file=cfg["fleet.nkey_seed_file"], creds_file=cfg["fleet.creds_file"],
                   tls_ca=cfg["fleet.tls_ca_file"], tls_cert=cfg["fleet.tls_cert_file"],
                   tls_key=cfg["fleet.tls_key_file"], timeout_s=float(cfg["fleet.timeout_s"]),
                   jitter_s=float(cfg["fleet.reconnect_jitter_s"]), replicas=int(cfg["fleet.replicas"]),
                   max_hosts=int(cfg["fleet.max_hosts"]))

    def tls_context(self) -> ssl.SSLContext | None:
        wants = self.tls_ca or self.tls_cert or any(s.startswith(("tls://", "wss://")) for s in self.servers)
        if not wants:
            return None
        try:
            ctx = ssl.create_default_context(cafile=self.tls_ca or None)
            if self.tls_cert:
                ctx.load_cert_chain(self.tls_cert, self.tls_key or None)
        except (OSError, ssl.SSLError) as exc:
            raise FleetError(f"cannot load the fleet's TLS files: {getattr(exc, 'strerror', None) or exc}") from None
        return ctx

    def auth(self) -> dict[str, Any]:
        for f in (self.seed_file, self.creds_file):
            if f and not Path(f).is_file():
                raise FleetError(f"fleet credentials file {f} does not exist or is not a file")
        if self.seed_file:
            try:
                import nkeys
                nkeys.from_seed(bytearray(Path(self.seed_file).read_bytes().strip()))
            except ImportError:
                raise FleetError("the nkeys package is missing (pip install nkeys)") from None
            except OSError as exc:
                raise FleetError(f"cannot read {self.seed_file}: {exc.strerror}") from None
            except Exception:  # noqa: BLE001 - nkeys raises its own error types on a bad seed
                raise FleetError(f"{self.seed_file} does not hold an nkey seed (expected one line "
                                 "starting with S, as `goldenhour fleet enroll` writes)") from None
            return {"nkeys_seed": self.seed_file}
        if self.creds_file:
            return {"user_credentials": self.creds_file}
        return {}


def public_key(s: Settings) -> str:
    """The public nkey (``U...``) of our own credentials: relays and commanders derive their inbox from it."""
    import nkeys
    try:
        if s.seed_file:
            raw = Path(s.seed_file).read_bytes().strip()
        elif s.creds_file:
            text = Path(s.creds_file).read_text()
            raw = text.split("-----BEGIN USER NKEY SEED-----", 1)[1].split("------END", 1)[0].strip().encode()
        else:
            return ""
        kp = nkeys.from_seed(bytearray(raw))
        pub = kp.public_key.decode()
        kp.wipe()
        return pub
    except (OSError, IndexError, ValueError, nkeys.NkeysError) as exc:
        raise FleetError(f"cannot read the fleet credentials: {type(exc).__name__}") from None


def inbox_for(s: Settings, kind: str, host: str = "") -> str:
    """Our inbox prefix as ``agent.fleet.enroll`` allowed it (a host by name, others by public key)."""
    from agent.fleet.enroll import inbox_prefix
    if kind == "host":
        return inbox_prefix("host", s.fleet, host)
    pub = public_key(s)
    return inbox_prefix(kind, s.fleet, pub) if pub else ""


def backoff(attempt: int, jitter_s: float) -> float:
    """Seconds before reconnect attempt ``attempt`` (0 = the first after a drop): jitter, then 1, 2, 4 .. 30 s."""
    if attempt <= 0:
        return random.uniform(0, max(0.0, jitter_s))
    return min(30.0, 2.0 ** min(attempt - 1, 5)) * random.uniform(0.5, 1.0)


class _Reporter:
    """Turns nats-py's callbacks into a few log lines (not one per 2 s retry) and a state others read."""

    def __init__(self, what: str, on_change: Callable[[str], Awaitable[None] | None] | None = None):
        self.what = what
        self.connected = False
        self.last_error = ""
        self.since = time.monotonic()
        self._logged_at = 0.0
        self.on_change = on_change
        self.drops = 0

    async def error(self, exc: Exception) -> None:
        text = _describe(exc)
        now = time.monotonic()
        if text != self.last_error or now - self._logged_at > 60:
            log.warning("", extra={"kv": {"event": "fleet_error", "what": self.what, "error": text}})
            self._logged_at = now
        self.last_error = text

    async def disconnected(self) -> None:
        if self.connected:
            self.drops += 1
            log.warning("", extra={"kv": {"event": "fleet_disconnected", "what": self.what}})
        self.connected = False
        self.since = time.monotonic()
        await self._notify("disconnected")

    async def reconnected(self) -> None:
        self.connected = True
        self.since = time.monotonic()
        log.info("", extra={"kv": {"event": "fleet_reconnected", "what": self.what}})
        await self._notify("reconnected")

    async def closed(self) -> None:
        self.connected = False
        await self._notify("closed")

    async def _notify(self, what: str) -> None:
        if self.on_change is not None:
            r = self.on_change(what)
            if r is not None:
                await r


def _describe(exc: BaseException) -> str:
    name = type(exc).__name__
    text = str(exc).strip() or name
    if "Authorization" in name or "authorization" in text.lower():
        return "authorization violation: the server does not accept these credentials"
    return text if name in text else f"{name}: {text}"


async def connect(s: Settings, *, name: str, inbox_prefix: str | None = None, forever: bool = True,
                  on_change: Callable[[str], Awaitable[None] | None] | None = None):
    """A connected nats-py client (``reporter`` attached as ``nc.gh_reporter``).

    ``forever``: wait for the first connection however long it takes, and reconnect for
    ever with jitter (daemon, relay). Otherwise one attempt, ``FleetError`` on failure (CLI).
    """
    import nats

    rep = _Reporter(name, on_change)
    opts: dict[str, Any] = dict(servers=s.servers, name=name, connect_timeout=max(1, int(s.timeout_s)),
                                error_cb=rep.error, disconnected_cb=rep.disconnected,
                                reconnected_cb=rep.reconnected, closed_cb=rep.closed, **s.auth(), **s.extra)
    tls = s.tls_context()
    if tls is not None:
        opts["tls"] = tls
    if inbox_prefix:
        opts["inbox_prefix"] = inbox_prefix
    if forever:
        def choose(servers, info):
            srv = random.choice(servers)
            return srv, backoff(srv.reconnects, s.jitter_s)
        opts.update(allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=2,
                    reconnect_to_server_handler=choose)
    else:       # nats-py reads 0 as "unlimited": 1 means each server is tried twice, half a second apart
        opts.update(allow_reconnect=False, max_reconnect_attempts=1, reconnect_time_wait=0.5)
    try:
        nc = await nats.connect(**opts)
    except Exception as exc:  # noqa: BLE001 - nats-py raises several unrelated types; all mean "not connected"
        why = rep.last_error or _describe(exc)
        if tls is not None and not s.tls_cert and any(w in why for w in (
                "CERTIFICATE_REQUIRED", "Broken pipe", "Connection lost", "reset by peer")):
            why += " (a server that requires client certificates closes such a connection: set fleet.tls_cert_file)"
        raise FleetError(f"cannot connect to the fleet's NATS servers ({', '.join(s.servers)}): {why}") from None
    rep.connected = True
    nc.gh_reporter = rep
    return nc


async def guarded(coro):
    """Run a one-shot fleet operation; NATS errors become one-line ``FleetError``s (exit 20)."""
    import nats.errors
    import nats.js.errors
    try:
        return await coro
    except GoldenhourError:
        raise
    except (nats.errors.TimeoutError, TimeoutError):
        raise FleetError("NATS did not answer in time (fleet.timeout_s): the server is overloaded, or these "
                         "credentials lack a permission (the server's log names the refused subject)") from None
    except (nats.errors.Error, nats.js.errors.Error) as exc:
        raise FleetError(f"NATS refused the request: {_describe(exc)}") from None


async def open_buckets(js, names: tuple[str, ...] = keys.BUCKETS) -> dict[str, Any]:
    """Bind to existing buckets; ``FleetError`` naming the missing one (run ``goldenhour fleet init``)."""
    import nats.js.errors as jse
    out = {}
    for b in names:
        try:
            out[b] = await js.key_value(b)
        except jse.BucketNotFoundError:
            raise FleetError(f"the fleet's bucket {b} does not exist: run `goldenhour fleet init` "
                             "(or start the relay) with relay or commander credentials") from None
        except jse.APIError as exc:
            raise FleetError(f"cannot open bucket {b}: {exc.description or exc}") from None
    return out


def max_consumers(max_hosts: int) -> int:
    """Consumers the incidents bucket allows: every watching host holds one, and a host that
    reconnects holds a second until its old one times out (``watcher.WATCH_INACTIVE_S``)."""
    return 2 * max_hosts + 100


async def ensure_buckets(js, replicas: int = 1, max_hosts: int = 10000) -> dict[str, Any]:
    """Create the missing buckets (existing ones keep their settings), and make sure the incidents
    bucket allows a consumer per host: nats-server 2.15 gives a stream 1,000 consumers unless the
    stream names its own limit (nats-server PR 8337), and a fleet of 1,000 hosts would hit it."""
    import nats.js.errors as jse
    from nats.js.api import KeyValueConfig, StorageType
    out = {}
    for b in keys.BUCKETS:
        try:
            out[b] = await js.key_value(b)
        except jse.BucketNotFoundError:
            history, ttl = BUCKET_LIMITS[b]
            cfg = KeyValueConfig(bucket=b, history=history, ttl=ttl, storage=StorageType.FILE, replicas=replicas,
                                 max_value_size=MAX_VALUE, direct=True,
                                 description=f"goldenhour fleet: {b.split('_', 1)[1].lower()}")
            try:
                out[b] = await js.create_key_value(cfg)
            except jse.APIError as exc:
                raise FleetError(f"cannot create bucket {b}: {exc.description or exc}") from None
    info = await js.stream_info(keys.stream(keys.INCIDENTS))
    want = max_consumers(max_hosts)
    if (info.config.max_consumers or 0) < want:
        try:
            await js.update_stream(info.config, max_consumers=want)
        except jse.APIError as exc:
            raise FleetError(f"cannot let bucket {keys.INCIDENTS} hold {want} consumers: "
                             f"{exc.description or exc}") from None
    return out
