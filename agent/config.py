"""Configuration: a TOML file (``/etc/goldenhour/config.toml`` or ``--config``), typed and checked.

Where it sits: the CLI and the daemon load a ``Config`` once; every other module
reads keys from it. Every key is declared in ``KEYS`` with its default, type and a
sentence of documentation; docs/config.md's reference is generated from them (a
test checks that). An unknown key is an error, so a typo never silently does
nothing. Flags given on the command line override the file.

Per-collector keys live under ``[collectors.<name>]``: ``enabled``, ``timeout_s``
for every collector, plus the options the collector declares (``COLLECTOR.options``,
read from its source by ``agent.options`` so that loading a config imports no collector).
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path("/etc/goldenhour/config.toml")


class ConfigError(ValueError):
    """The config file is unreadable or holds a bad key or value (message says which)."""


@dataclass(frozen=True)
class Key:
    default: Any
    type: type | tuple[type, ...]
    doc: str


def _store_default() -> str:
    if os.geteuid() == 0:
        return "/var/lib/goldenhour"
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(base, "goldenhour")


KEYS: dict[str, Key] = {
    # -- capture --------------------------------------------------------
    "capture.profile": Key("standard", str, "Profile when none is given: quick, standard or full."),
    "capture.time_budget_s": Key(60.0, (int, float), "Overall time budget of one capture; collectors not started by then are skipped, running ones are stopped."),
    "capture.max_parallel": Key(6, int, "How many collectors run at once."),
    "capture.compression": Key("zstd", str, "Bundle compression: zstd (.tar.zst) or gzip (.tar.gz)."),
    "capture.zstd_level": Key(3, int, "zstd level (1-19); 3 is fast and still small."),
    "capture.nice": Key(10, int, "CPU nice value a capture (its process and every collector) runs at (0 = normal priority, 19 = lowest)."),
    "capture.ionice_idle": Key(True, bool, "Run a capture (its process and every collector) in the idle I/O scheduling class."),
    "capture.probe_seconds": Key(5.0, (int, float), "Window of the eBPF probes (standard and full profiles)."),
    "capture.heap": Key(False, bool, "Take heap dumps / core images in the standard profile too (always in full)."),
    # -- store ------------------------------------------------------------
    "store.path": Key(_store_default(), str, "Local store and upload spool (root: /var/lib/goldenhour; otherwise the user's data dir)."),
    "store.reserve_bytes": Key(1 * 2**30, int, "Free space always left on the store's filesystem; a capture stops cleanly before it."),
    "store.reserve_percent": Key(5.0, (int, float), "Free space always left, as a percentage of the filesystem (the larger of the two reserves applies)."),
    "store.max_file_bytes": Key(256 * 2**20, int, "Cap on one evidence file (logs keep their tail, command output its head)."),
    "store.max_bundle_bytes": Key(8 * 2**30, int, "Cap on the uncompressed evidence of one bundle; files past it are left out and listed."),
    "store.keep_days": Key(30, int, "Uploaded bundles older than this are removed from the local store (0 = keep forever). Pending ones are never removed."),
    # -- host identity, for targeting incidents ----------------------------
    "host.name": Key("", str, "Host name used in bundle names and for webhook targeting (default: the system hostname)."),
    "host.tags": Key([], list, "Tags of this host (e.g. \"role=db\", \"cluster-a\"); an incident whose labels/tags match concerns this host."),
    # -- targets ------------------------------------------------------------
    "targets.services": Key([], list, "systemd units whose processes are dumped when no --pid/--process/--unit is given."),
    "targets.processes": Key([], list, "Regular expressions matched against process names/command lines, as above."),
    "targets.auto_limit": Key(5, int, "With no targets given or configured, this many top processes by CPU and RSS."),
    # -- logs -----------------------------------------------------------------
    "logs.paths": Key(["/var/log/syslog", "/var/log/messages", "/var/log/kern.log"], list, "Log files or globs whose tails are captured (plus any --log)."),
    "logs.lines": Key(10000, int, "Lines taken from the end of each log."),
    "logs.journal": Key(True, bool, "Also capture the system journal (journalctl) when present."),
    "logs.journal_since_s": Key(3600, int, "How far back the journal is read."),
    "logs.redact": Key(True, bool, "Redact credentials in log tails and the journal (Authorization/Bearer, password=, api_key=, URL passwords, JWTs, AWS keys...; counted per file in the manifest). false keeps them raw."),
    # -- upload -----------------------------------------------------------------
    "upload.url": Key("", str, "s3://BUCKET/PREFIX to upload bundles to (empty: local store only)."),
    "upload.endpoint_url": Key("", str, "S3-compatible endpoint (MinIO, Ceph, R2); AWS_ENDPOINT_URL(_S3) is honoured too."),
    "upload.region": Key("", str, "AWS region (default: the boto3 chain's)."),
    "upload.profile": Key("", str, "AWS profile name from the shared config (default: the boto3 credential chain)."),
    "upload.sse": Key("", str, "Server-side encryption: \"\" (bucket default), AES256 or aws:kms."),
    "upload.kms_key_id": Key("", str, "KMS key id for upload.sse = aws:kms."),
    "upload.object_lock_mode": Key("", str, "Object Lock retention mode for bundles: GOVERNANCE or COMPLIANCE (empty: none)."),
    "upload.object_lock_days": Key(0, int, "Object Lock retention in days (with object_lock_mode)."),
    "upload.multipart_threshold_mb": Key(64, int, "Bundles larger than this are uploaded in parts."),
    "upload.multipart_chunk_mb": Key(16, int, "Part size of a multipart upload (at least 5; S3 allows 10000 parts)."),
    "upload.concurrency": Key(4, int, "Parts of a multipart upload sent at once (parts stream from the file: memory stays small)."),
    "upload.principal": Key("", str, "Who uploads/fetches, for the chain of custody when STS cannot say (e.g. an on-prem S3)."),
    "upload.retry_initial_s": Key(30, int, "First retry delay for pending uploads (the daemon doubles it per failure)."),
    "upload.retry_max_s": Key(3600, int, "Longest retry delay for pending uploads."),
    # -- flight recorder (goldenhour record, the history collector) -------------------
    "recorder.interval_s": Key(5.0, (int, float), "How often the flight recorder samples host, network, disk and PSI counters (seconds)."),
    "recorder.process_interval_s": Key(10.0, (int, float), "How often it scans processes and cgroups (grows on its own, up to 60 s, if a scan costs over 2 % of it)."),
    "recorder.ring_mib": Key(64, int, "Size of the ring file (MiB), fixed when it is created; about 5 days at the default intervals. Never grows."),
    "recorder.path": Key("", str, "The ring file (default: <store>/recorder/ring). Root-only (0600)."),
    "recorder.socket": Key("/run/goldenhour-recorder/recorder.sock", str, "Unix socket of the running recorder (status, samples kept in memory); beside it, the same path + .pending holds records not yet in the ring. Root-only; \"\" for neither."),
    "recorder.sync_s": Key(60, (int, float), "The ring's tail is written and synced at least this often: a machine crash loses at most this much (a recorder crash nothing: unwritten records wait on the runtime tmpfs)."),
    "recorder.top_n": Key(10, int, "Processes kept per scan: the top N by CPU and the top N by memory (plus every one in D state)."),
    "recorder.process_names": Key(True, bool, "Record process names (comm); false keeps only PIDs. Command lines and environments are never recorded."),
    "recorder.max_cgroups": Key(40, int, "Cgroups sampled: the top-level ones, then their children, at most this many."),
    "recorder.memory_minutes": Key(15, (int, float), "Minutes of samples the recorder also keeps in memory, served to captures when the ring cannot be written."),
    "recorder.history_before_min": Key(60, (int, float), "Minutes of history a capture takes from before the incident's start (the tracker's start time, else the trigger)."),
    # -- daemon -----------------------------------------------------------------
    "daemon.listen": Key("127.0.0.1:8787", str, "HTTP listen address for webhooks, /healthz and /metrics (put a TLS proxy in front for the internet)."),
    "daemon.socket": Key("/run/goldenhour/api.sock", str, "Unix socket of the local API (snapshot --via-daemon)."),
    "daemon.state_dir": Key("", str, "Where the daemon keeps dedupe and incident state (default: <store>/state)."),
    "daemon.queue_size": Key(16, int, "Bounded capture queue; a full queue answers 503 so the tracker retries."),
    "daemon.max_body_bytes": Key(1 * 2**20, int, "Largest webhook body accepted (413 above)."),
    "daemon.max_connections": Key(256, int, "Connections served at once (HTTP and the Unix socket; never more than the descriptors left); one more is answered 503 and closed. 0 = no limit of goldenhour's own. The relay applies this and the next three keys too."),
    "daemon.header_timeout_s": Key(10.0, (int, float), "A request's headers must arrive within this (from its first byte, or from the connection): slow or silent clients are answered 408 and closed."),
    "daemon.body_timeout_s": Key(30.0, (int, float), "A request's body must arrive within this after its headers, else the connection is closed."),
    "daemon.log_interval_s": Key(60.0, (int, float), "Connection trouble (limit reached, timeouts, accept() out of descriptors, clients gone mid-body, malformed requests) is logged at most once per this interval per kind, with a count."),
    "daemon.profile": Key("standard", str, "Profile of captures triggered by webhooks."),
    "daemon.capture_all": Key(False, bool, "Capture on every incident, whatever its services/hosts/labels."),
    "daemon.services": Key([], list, "Service names this host serves; an incident naming one of them concerns this host."),
    "daemon.dedupe_hours": Key(48, int, "How long a captured incident is remembered so retries do not capture again."),
    "daemon.pre_restart": Key("incident", str, "When the pre-restart hook captures: incident (only while an incident is open here), always, or never."),
    "daemon.pre_restart_budget_s": Key(20, int, "Time budget of a pre-restart capture (keep under the unit's TimeoutStopSec)."),
    "daemon.api_token_file": Key("", str, "File holding a bearer token for the HTTP local API (/v1/snapshot); the Unix socket needs none."),
    "daemon.open_hours": Key(24, int, "An incident with no resolve event counts as open (for the pre-restart hook) this long after its last trigger."),
    "daemon.collectors": Key([], list, "Collectors of daemon captures (webhook and local API); empty: the profile's set."),
    "daemon.upload_interval_s": Key(60, int, "How often the daemon uploads pending bundles (also right after each capture); failures back off up to upload.retry_max_s."),
    "daemon.close_on_ack": Key(False, bool, "Treat an acknowledged incident as closed (default: it stays open, responders are working on it)."),
    # -- fleet (NATS JetStream; see docs/fleet.md) -------------------------------------
    "fleet.servers": Key([], list, "NATS server URLs (nats://, tls://, ws://, wss://) of the fleet; empty: no fleet, the daemon works alone."),
    "fleet.name": Key("default", str, "Fleet name (letters, digits, '_', '-'): the key prefix in the fleet's buckets, so several fleets can share one NATS account."),
    "fleet.nkey_seed_file": Key("", str, "File holding this host's (or the relay's, the commander's) NATS nkey seed, written by `goldenhour fleet enroll`."),
    "fleet.creds_file": Key("", str, "NATS credentials file (user JWT and seed) for servers with decentralized JWT auth; instead of fleet.nkey_seed_file."),
    "fleet.tls_ca_file": Key("", str, "CA bundle that verifies the NATS servers' certificates (default: the system's)."),
    "fleet.tls_cert_file": Key("", str, "Client certificate for NATS servers that require mutual TLS."),
    "fleet.tls_key_file": Key("", str, "Key of fleet.tls_cert_file."),
    "fleet.profile": Key("quick", str, "Profile the relay and `goldenhour fleet trigger` ask of every concerned host (each host runs at most its fleet.max_profile)."),
    "fleet.max_profile": Key("standard", str, "Most expensive profile a fleet trigger may run on this host (quick, standard or full); a record asking for more runs this one."),
    "fleet.heartbeat_s": Key(30, (int, float), "How often the daemon writes its heartbeat (its identity) into the fleet's hosts bucket."),
    "fleet.offline_after_s": Key(90, (int, float), "A host whose last heartbeat is older than this counts as offline (fleet status, fleet hosts)."),
    "fleet.deadline_minutes": Key(240, int, "Relay and fleet trigger: no host starts a capture later than this after the incident was declared (or a recapture asked for)."),
    "fleet.upload_rate": Key(50, (int, float), "Hosts per second that may start uploading a fleet incident's bundles: the upload spread is the expected host count divided by this."),
    "fleet.upload_spread_max_s": Key(300, (int, float), "Longest upload spread: each host waits a random time up to the spread after its capture before uploading."),
    "fleet.max_captures_per_hour": Key(6, int, "Per-host cap on fleet-triggered captures per hour; further incidents are reported skipped (a flapping alert or a misused relay cannot make a host capture more)."),
    "fleet.late_join": Key("capture", str, "An incident already open when the daemon starts or returns: capture (its status says late) or skip."),
    "fleet.reconnect_jitter_s": Key(5.0, (int, float), "Longest random delay before reconnecting and re-watching after the connection to NATS drops (a server restart does not bring every host back at once)."),
    "fleet.timeout_s": Key(5.0, (int, float), "Timeout of one request to NATS; the relay answers 503 when a record cannot be written within it."),
    "fleet.max_hosts": Key(10000, int, "Hosts the fleet's buckets are sized for when `goldenhour fleet init` or the relay creates or checks them: every watching host holds a consumer on the incidents bucket, and nats-server 2.15 allows a stream 1,000 unless it says otherwise; the bucket allows twice this plus 100."),
    "fleet.replicas": Key(1, int, "Replicas of the fleet's buckets when `goldenhour fleet init` or the relay creates them (3 on a three-node cluster)."),
    # -- relay --------------------------------------------------------------------------
    "relay.listen": Key("127.0.0.1:8788", str, "HTTP listen address of `goldenhour relay` (webhooks, /healthz, /metrics); put the TLS proxy in front of it."),
}

# Webhook receivers: [webhooks.<tracker>] with these keys each (agent/webhooks/<tracker>.py says which it reads).
TRACKERS = ("pagerduty", "incidentio", "alertmanager", "opsgenie", "generic",
            "grafana_irm", "grafana_alerting", "firehydrant", "rootly", "jsm", "datadog")
WEBHOOK_KEYS: dict[str, Key] = {
    "enabled": Key(False, bool, "Accept deliveries from this tracker."),
    "secret": Key("", (str, list), "Signing secret(s) or token(s); several during rotation. Prefer secret_file."),
    "secret_file": Key("", str, "File holding the secret (one per line for rotation); never logged."),
    "username": Key("", str, "alertmanager, grafana_alerting, grafana_irm: basic-auth user (password in secret/secret_file)."),
    "header": Key("", str, "opsgenie, jsm, datadog, grafana_irm: the header carrying the token (default X-Goldenhour-Token); grafana_alerting: the HMAC signature header (default X-Grafana-Alerting-Signature)."),
    "timestamp_header": Key("", str, "grafana_alerting: the contact point's HMAC \"Timestamp header\" name; set, every delivery must be signed with a timestamp within tolerance_s."),
    "tolerance_s": Key(300, int, "incidentio, generic, rootly, grafana_alerting: accepted clock skew of the signed timestamp."),
    "capture_test": Key(False, bool, "incidentio, rootly: also capture test/tutorial/example incidents."),
}
COLLECTOR_KEYS: dict[str, Key] = {
    "enabled": Key(None, (bool, type(None)), "Force a collector on or off regardless of the profile."),
    "timeout_s": Key(None, (int, float, type(None)), "Override the collector's own time budget."),
}


class Config:
    """Resolved configuration: ``cfg["capture.profile"]``, ``cfg.collector("logs")``."""

    def __init__(self, data: dict[str, Any] | None = None, path: Path | None = None):
        self.path = path
        self.data = data or {}      # the file as parsed: what the daemon hands its children (ChildJob.config)
        self.values: dict[str, Any] = {k: v.default for k, v in KEYS.items()}
        self.collectors: dict[str, dict[str, Any]] = {}
        self.webhooks: dict[str, dict[str, Any]] = {
            t: {k: v.default for k, v in WEBHOOK_KEYS.items()} for t in TRACKERS}
        if data:
            self._merge(data)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def set(self, key: str, value: Any) -> None:
        if key not in KEYS:
            raise ConfigError(f"unknown config key {key}")
        self.values[key] = value

    def collector(self, name: str) -> dict[str, Any]:
        return self.collectors.get(name, {})

    def webhook(self, tracker: str) -> dict[str, Any]:
        return self.webhooks[tracker]

    @property
    def store_path(self) -> Path:
        return Path(self.values["store.path"])

    @property
    def hostname(self) -> str:
        return self.values["host.name"] or os.uname().nodename

    def _merge(self, data: dict[str, Any]) -> None:
        where = f" in {self.path}" if self.path else ""
        for section, body in data.items():
            if not isinstance(body, dict):
                raise ConfigError(f"top-level key {section!r}{where} must be a [section]")
            if section == "collectors":
                self._merge_collectors(body, where)
                continue
            if section == "webhooks":
                for tracker, opts in body.items():
                    if tracker not in TRACKERS:
                        raise ConfigError(f"unknown tracker [webhooks.{tracker}]{where}; known: {', '.join(TRACKERS)}")
                    for k, v in opts.items():
                        if k not in WEBHOOK_KEYS:
                            raise ConfigError(f"unknown config key webhooks.{tracker}.{k}{where}")
                        _check_type(f"webhooks.{tracker}.{k}", v, WEBHOOK_KEYS[k].type, where)
                        self.webhooks[tracker][k] = v
                continue
            for k, v in body.items():
                key = f"{section}.{k}"
                if key not in KEYS:
                    raise ConfigError(f"unknown config key {key}{where}")
                _check_type(key, v, KEYS[key].type, where)
                self.values[key] = v
        if self.values["capture.profile"] not in ("quick", "standard", "full"):
            raise ConfigError(f"capture.profile must be quick, standard or full{where}")
        if self.values["capture.compression"] not in ("zstd", "gzip"):
            raise ConfigError(f"capture.compression must be zstd or gzip{where}")
        if self.values["daemon.profile"] not in ("quick", "standard", "full"):
            raise ConfigError(f"daemon.profile must be quick, standard or full{where}")
        if self.values["daemon.pre_restart"] not in ("incident", "always", "never"):
            raise ConfigError(f"daemon.pre_restart must be incident, always or never{where}")
        self._check_upload(where)
        self._check_recorder(where)
        self._check_fleet(where)

    def _check_recorder(self, where: str) -> None:
        _check_recorder_values(self.values, where)

    def _check_fleet(self, where: str) -> None:
        from agent.fleet.keys import FLEET_RE
        v = self.values
        if not FLEET_RE.fullmatch(v["fleet.name"]):
            raise ConfigError(f"fleet.name must be 1-32 letters, digits, '_' or '-'{where}")
        for k in ("fleet.profile", "fleet.max_profile"):
            if v[k] not in ("quick", "standard", "full"):
                raise ConfigError(f"{k} must be quick, standard or full{where}")
        if v["fleet.late_join"] not in ("capture", "skip"):
            raise ConfigError(f"fleet.late_join must be capture or skip{where}")
        for url in v["fleet.servers"]:
            if not isinstance(url, str) or "://" not in url or url.split("://", 1)[0] not in (
                    "nats", "tls", "ws", "wss"):
                raise ConfigError(f"fleet.servers entries must be nats://, tls://, ws:// or wss:// URLs, "
                                  f"not {url!r}{where}")
        if v["fleet.nkey_seed_file"] and v["fleet.creds_file"]:
            raise ConfigError(f"set fleet.nkey_seed_file or fleet.creds_file, not both{where}")
        if bool(v["fleet.tls_cert_file"]) != bool(v["fleet.tls_key_file"]):
            raise ConfigError(f"fleet.tls_cert_file and fleet.tls_key_file go together{where}")
        for k in ("fleet.heartbeat_s", "fleet.offline_after_s", "fleet.upload_rate", "fleet.timeout_s"):
            if v[k] <= 0:
                raise ConfigError(f"{k} must be more than 0{where}")
        if v["fleet.offline_after_s"] < v["fleet.heartbeat_s"]:
            raise ConfigError(f"fleet.offline_after_s must be at least fleet.heartbeat_s{where}")
        if v["fleet.deadline_minutes"] < 1 or v["fleet.max_captures_per_hour"] < 0 or v["fleet.replicas"] < 1 \
                or v["fleet.max_hosts"] < 1:
            raise ConfigError(f"fleet.deadline_minutes, fleet.replicas and fleet.max_hosts must be at least 1, "
                              f"fleet.max_captures_per_hour at least 0{where}")

    @property
    def fleet_enabled(self) -> bool:
        return bool(self.values["fleet.servers"])

    def _merge_collectors(self, body: dict[str, Any], where: str) -> None:
        """``[collectors.<name>]``: enabled, timeout_s, and the options the collector declares
        (agent/options.py, read from its source); an unknown collector or key is an error."""
        from agent.options import OptionsError, declared
        try:
            known = declared()
        except OptionsError as exc:
            raise ConfigError(str(exc)) from None
        for name, opts in body.items():
            if not isinstance(opts, dict):
                raise ConfigError(f"[collectors.{name}]{where} must be a table")
            if name not in known:
                raise ConfigError(f"unknown collector [collectors.{name}]{where}{_near(name, known)}; "
                                  f"known: {', '.join(sorted(known))}")
            options = known[name]
            for k, v in opts.items():
                key = f"collectors.{name}.{k}"
                if k in COLLECTOR_KEYS:
                    _check_type(key, v, COLLECTOR_KEYS[k].type, where)
                elif k in options:
                    why = options[k].check(v)
                    if why:
                        raise ConfigError(f"config key {key}{where} {why}")
                else:
                    takes = [*COLLECTOR_KEYS, *options]
                    raise ConfigError(f"unknown config key {key}{where}{_near(k, takes)}; "
                                      f"[collectors.{name}] takes {', '.join(takes)}")
            self.collectors[name] = dict(opts)

    def _check_upload(self, where: str) -> None:
        v = self.values
        if v["upload.url"] and (not v["upload.url"].startswith("s3://") or len(v["upload.url"]) <= 5):
            raise ConfigError(f"upload.url must look like s3://BUCKET/PREFIX, not {v['upload.url']!r}{where}")
        if v["upload.sse"] not in ("", "AES256", "aws:kms", "aws:kms:dsse"):
            raise ConfigError(f"upload.sse must be \"\", AES256, aws:kms or aws:kms:dsse{where}")
        if v["upload.object_lock_mode"] not in ("", "GOVERNANCE", "COMPLIANCE"):
            raise ConfigError(f"upload.object_lock_mode must be \"\", GOVERNANCE or COMPLIANCE{where}")
        if v["upload.object_lock_mode"] and v["upload.object_lock_days"] < 1:
            raise ConfigError(f"upload.object_lock_days must be 1 or more with upload.object_lock_mode{where}")
        if v["upload.multipart_chunk_mb"] < 5 or v["upload.multipart_threshold_mb"] < 5:
            raise ConfigError(f"upload.multipart_chunk_mb and upload.multipart_threshold_mb must be at least 5 "
                              f"(S3's smallest part){where}")
        if not 1 <= v["upload.concurrency"] <= 64:
            raise ConfigError(f"upload.concurrency must be between 1 and 64{where}")


def _near(word: str, choices: Any) -> str:
    import difflib
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _check_recorder_values(v: dict[str, Any], where: str) -> None:
    if not 0.05 <= v["recorder.interval_s"] <= 3600:
        raise ConfigError(f"recorder.interval_s must be between 0.05 and 3600{where}")
    if not v["recorder.interval_s"] <= v["recorder.process_interval_s"] <= 3600:
        raise ConfigError(f"recorder.process_interval_s must be between recorder.interval_s and 3600{where}")
    if not 1 <= v["recorder.ring_mib"] <= 65536:
        raise ConfigError(f"recorder.ring_mib must be between 1 and 65536{where}")
    if not 1 <= v["recorder.top_n"] <= 200 or not 0 <= v["recorder.max_cgroups"] <= 1000:
        raise ConfigError(f"recorder.top_n must be 1-200 and recorder.max_cgroups 0-1000{where}")
    if v["recorder.history_before_min"] < 0 or v["recorder.memory_minutes"] < 0 or v["recorder.sync_s"] <= 0:
        raise ConfigError(f"recorder.history_before_min and memory_minutes must be >= 0, sync_s > 0{where}")


def _check_type(key: str, value: Any, typ: type | tuple[type, ...], where: str) -> None:
    types = typ if isinstance(typ, tuple) else (typ,)
    if isinstance(value, bool) and bool not in types:
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        names = " or ".join(t.__name__ for t in types)
        raise ConfigError(f"config key {key}{where} must be {names}, not {type(value).__name__}")


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Load ``path``, or the default file when it exists, else built-in defaults.

    ``GOLDENHOUR_CONFIG`` names the file when ``path`` is None.
    """
    explicit = path is not None or "GOLDENHOUR_CONFIG" in os.environ
    p = Path(path if path is not None else os.environ.get("GOLDENHOUR_CONFIG", DEFAULT_PATH))
    if not p.exists():
        if explicit:
            raise ConfigError(f"config file {p} does not exist")
        return Config()
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
    return Config(data, path=p)


def read_secret(opts: dict[str, Any]) -> list[str]:
    """Secrets of a webhook section: ``secret`` (str or list) plus lines of ``secret_file``."""
    secrets: list[str] = []
    s = opts.get("secret")
    if isinstance(s, str) and s:
        secrets.append(s)
    elif isinstance(s, list):
        secrets.extend(str(x) for x in s if x)
    f = opts.get("secret_file")
    if f:
        try:
            secrets.extend(l.strip() for l in Path(f).read_text().splitlines() if l.strip())
        except OSError as exc:
            raise ConfigError(f"cannot read secret file {f}: {exc.strerror}") from None
    return secrets
