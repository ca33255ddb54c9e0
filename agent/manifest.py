"""The bundle's manifest (schema v1) as typed data, its one reader, and the one integrity check.

Where it sits: ``capture`` builds a ``Manifest`` and writes ``to_json()`` into the bundle
(``manifest.json``) and beside it (``<bundle>.manifest.json``); everything that reads a
manifest (``show``, ``bundles list``, ``fetch``, ``upload``, the report) reads it through
``read``, which names the field that is missing or of the wrong type. ``check`` is the
only integrity check: given what one pass over a bundle saw (each file's SHA-256,
``SHA256SUMS``, ``manifest.json``; see ``bundle.scan``) it compares every file with
``SHA256SUMS`` and the manifest, and the archive with its recorded SHA-256, and returns
each difference as a ``Problem`` (the file, one line why). ``verify``, ``fetch`` and the
report all print the same problems in the same words. A manifest sidecar is bound to its
archive: ``check`` compares it with the archive's manifest.json (``sidecar_difference`` names
the fields that differ), the archive's index must name the manifest.json inside, and
``filed_problems`` compares where a bundle is filed (its name, its S3 key's incident and host)
with what its manifest says.

Schema v1, the keys every goldenhour writes (the reader requires the starred ones, and
checks the type of every other one that is present)::

    schema* (1)  bundle*  bundle_id  profile
    incident*  {id*, source, title, url, severity, services, started_at}
    trigger    {kind, reason, by, at, payload_sha256}
    host*      {hostname*, nodename, machine_id, boot_id, kernel, kernel_version, arch, os,
                cpus, memory_bytes, uptime_s, addresses, tags}
    agent      {name, version, python, pid, argv, uid, kernel_headers}
    clocks     {start_utc, collected_utc, end_utc, duration_s, boot_time_utc}
    collectors [{name*, key*, status*, reason, target, started_at, duration_s, timeout_s,
                 commands, notes, events, pause, files [{path*, bytes*, sha256*}]}]
    summary    {collectors {name: status}, files, bytes}
    targets, target_problems, resumed_targets, broken_collectors, left_out   lists
    limits, redaction, salvaged (only in a salvaged capture)                 objects

(* ``schema`` may be absent in hand-made manifests and is then read as 1.)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from agent.incident import Incident, IncidentIdError, Trigger

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"


class ManifestError(ValueError):
    """A manifest that is not valid JSON or not a v1 manifest; the message names the field."""

    def __init__(self, source: str, why: str, field_name: str = ""):
        self.source, self.field, self.why = source, field_name, why
        super().__init__(f'{source}: field "{field_name}" {why}' if field_name else f"{source}: {why}")


# -- the schema ------------------------------------------------------------------------------

@dataclass(frozen=True)
class FileEntry:
    path: str           # inside the bundle's top folder: collectors/<key>/...
    bytes: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "bytes": self.bytes, "sha256": self.sha256}


@dataclass
class CollectorEntry:
    """One collector run (one per target for per-process collectors); what ``runner.ItemResult`` records."""
    name: str
    key: str                                   # name, or name/PID
    status: str                                # ok, partial, failed, timeout, skipped, target_exited, interrupted
    reason: str = ""
    target: dict[str, Any] | None = None
    started_at: str = ""
    duration_s: float = 0.0
    timeout_s: float = 0.0
    commands: list[dict[str, Any]] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    pause: dict[str, Any] | None = None
    files: list[FileEntry] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = {"name": self.name, "key": self.key, "status": self.status, "reason": self.reason,
             "target": self.target, "started_at": self.started_at, "duration_s": self.duration_s,
             "timeout_s": self.timeout_s, "commands": self.commands, "notes": self.notes, "events": self.events,
             "pause": self.pause, "files": [f.to_json() for f in self.files]}
        return {k: v for k, v in d.items() if k in ("status", "files") or v not in (None, "", [], {})}


@dataclass
class Host:
    hostname: str                              # host.name from the config: the S3 key and report name
    nodename: str = ""
    machine_id: str = ""
    boot_id: str = ""
    kernel: str = ""
    kernel_version: str = ""
    arch: str = ""
    os: str = ""
    cpus: int | None = None
    memory_bytes: int = 0
    uptime_s: float = 0.0
    addresses: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Clocks:
    start_utc: str = ""
    collected_utc: str = ""                    # when the last collector ended
    end_utc: str = ""
    duration_s: float = 0.0
    boot_time_utc: str = ""

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Summary:
    collectors: dict[str, str] = field(default_factory=dict)   # collector name -> one status over its targets
    files: int = 0
    bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"collectors": dict(self.collectors), "files": self.files, "bytes": self.bytes}


@dataclass
class Manifest:
    bundle: str
    incident: Incident
    host: Host
    trigger: Trigger | None = None
    profile: str = ""
    bundle_id: str = ""
    schema: int = SCHEMA_VERSION
    agent: dict[str, Any] = field(default_factory=dict)
    clocks: Clocks = field(default_factory=Clocks)
    targets: list[dict[str, Any]] = field(default_factory=list)
    target_problems: list[Any] = field(default_factory=list)
    resumed_targets: list[Any] = field(default_factory=list)
    collectors: list[CollectorEntry] = field(default_factory=list)
    broken_collectors: list[dict[str, Any]] = field(default_factory=list)
    summary: Summary | None = None
    limits: dict[str, Any] = field(default_factory=dict)
    left_out: list[dict[str, Any]] = field(default_factory=list)
    redaction: dict[str, Any] = field(default_factory=dict)
    salvaged: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)   # the object as read

    @property
    def statuses(self) -> dict[str, str]:
        """One status per collector (the summary's), or per collector run when there is no summary."""
        if self.summary is not None and self.summary.collectors:
            return dict(self.summary.collectors)
        return {c.key: c.status for c in self.collectors}

    def entries(self, name: str | None = None) -> list[CollectorEntry]:
        """Collector runs: all, or those of the collector ``name`` (one per target)."""
        return [c for c in self.collectors if name is None or c.name == name]

    def target(self, pid: int) -> dict[str, Any]:
        """The target record of ``pid`` (comm, cmdline, runtime...), {} if it was not a target."""
        return next((t for t in self.targets if t.get("pid") == pid), {})

    def to_json(self) -> dict[str, Any]:
        """The JSON object goldenhour writes (a manifest read from disk keeps what it read in ``raw``)."""
        out: dict[str, Any] = {
            "schema": self.schema, "bundle": self.bundle, "bundle_id": self.bundle_id,
            "incident": self.incident.to_json(), "trigger": self.trigger.to_json() if self.trigger else None,
            "profile": self.profile, "host": self.host.to_json(), "agent": self.agent,
            "clocks": self.clocks.to_json(), "targets": self.targets, "target_problems": self.target_problems,
            "resumed_targets": self.resumed_targets, "collectors": [c.to_json() for c in self.collectors],
            "broken_collectors": self.broken_collectors,
            "summary": self.summary.to_json() if self.summary else None,
            "limits": self.limits, "left_out": self.left_out, "redaction": self.redaction,
        }
        if self.salvaged is not None:
            out["salvaged"] = self.salvaged
        return out

    def dumps(self) -> bytes:
        """``to_json()`` as written into the bundle and its sidecar."""
        return (json.dumps(self.to_json(), indent=1, default=str) + "\n").encode()


# -- the reader ------------------------------------------------------------------------------

_KINDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
          dict: "an object"}


def _kind_of(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true or false"
    if isinstance(v, (int, float)):
        return "a number"
    return _KINDS.get(type(v), type(v).__name__)


class _Fields:
    """Typed access to one JSON object of the manifest; errors name the field's full path."""

    def __init__(self, source: str, obj: Any, path: str):
        self.source, self.path = source, path
        if not isinstance(obj, dict):
            raise ManifestError(source, f"must be an object, not {_kind_of(obj)}", path) if path else \
                ManifestError(source, f"not a manifest: the JSON is {_kind_of(obj)}, not an object")
        self.obj = obj

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, kind: type, default: Any = None, required: bool = False) -> Any:
        v = self.obj.get(key)
        if v is None:
            if required:
                raise ManifestError(self.source, "is missing", self.name(key))
            return default
        ok = (isinstance(v, (int, float)) and not isinstance(v, bool)) if kind is float else \
            (isinstance(v, int) and not isinstance(v, bool)) if kind is int else isinstance(v, kind)
        if not ok:
            raise ManifestError(self.source, f"must be {_KINDS[kind]}, not {_kind_of(v)}", self.name(key))
        return v

    def text(self, key: str, required: bool = False) -> str:
        v = self.get(key, str, "", required)
        if required and not v:
            raise ManifestError(self.source, "is empty", self.name(key))
        return v

    def sub(self, key: str, required: bool = False) -> _Fields | None:
        v = self.obj.get(key)
        if v is None:
            if required:
                raise ManifestError(self.source, "is missing", self.name(key))
            return None
        return _Fields(self.source, v, self.name(key))

    def items(self, key: str, kind: type = dict) -> list[Any]:
        """A list whose every item is of ``kind``."""
        v = self.get(key, list, [])
        for i, item in enumerate(v):
            if not isinstance(item, kind):
                raise ManifestError(self.source, f"must be {_KINDS[kind]}, not {_kind_of(item)}",
                                    f"{self.name(key)}[{i}]")
        return v


def _files(f: _Fields) -> list[FileEntry]:
    out = []
    for i, item in enumerate(f.items("files")):
        e = _Fields(f.source, item, f"{f.name('files')}[{i}]")
        out.append(FileEntry(e.text("path", True), e.get("bytes", int, required=True), e.text("sha256", True)))
    return out


def _collector(f: _Fields) -> CollectorEntry:
    return CollectorEntry(
        name=f.text("name", True), key=f.text("key", True), status=f.text("status", True), reason=f.text("reason"),
        target=f.get("target", dict), started_at=f.text("started_at"), duration_s=f.get("duration_s", float, 0.0),
        timeout_s=f.get("timeout_s", float, 0.0), commands=f.items("commands"), notes=f.get("notes", dict, {}),
        events=f.items("events"), pause=f.get("pause", dict), files=_files(f))


def _incident(f: _Fields) -> Incident:
    ident = f.text("id", True)
    try:
        return Incident(id=ident, source=f.text("source"), title=f.text("title"), url=f.text("url"),
                        severity=f.text("severity"), services=f.items("services", str),
                        started_at=f.text("started_at"))
    except IncidentIdError:
        raise ManifestError(f.source, f"is not a valid incident ID ({ident!r})", f.name("id")) from None


def _manifest(source: str, obj: Any) -> Manifest:
    top = _Fields(source, obj, "")
    schema = top.get("schema", int, SCHEMA_VERSION)
    if schema != SCHEMA_VERSION:
        raise ManifestError(source, f"is {schema}: this goldenhour reads manifests of schema {SCHEMA_VERSION}",
                            "schema")
    inc = _incident(top.sub("incident", required=True))       # type: ignore[arg-type]
    h = top.sub("host", required=True)
    assert h is not None
    host = Host(hostname=h.text("hostname", True), nodename=h.text("nodename"), machine_id=h.text("machine_id"),
                boot_id=h.text("boot_id"), kernel=h.text("kernel"), kernel_version=h.text("kernel_version"),
                arch=h.text("arch"), os=h.text("os"), cpus=h.get("cpus", int),
                memory_bytes=h.get("memory_bytes", int, 0),
                uptime_s=h.get("uptime_s", float, 0.0), addresses=h.items("addresses", str), tags=h.items("tags", str))
    t = top.sub("trigger")
    trigger = None if t is None else Trigger(kind=t.text("kind"), reason=t.text("reason"), by=t.text("by"),
                                             at=t.text("at"), payload_sha256=t.text("payload_sha256"))
    c = top.sub("clocks")
    clocks = Clocks() if c is None else Clocks(
        start_utc=c.text("start_utc"), collected_utc=c.text("collected_utc"), end_utc=c.text("end_utc"),
        duration_s=c.get("duration_s", float, 0.0), boot_time_utc=c.text("boot_time_utc"))
    s = top.sub("summary")
    summary = None
    if s is not None:
        statuses = s.get("collectors", dict, {})
        for k, v in statuses.items():
            if not isinstance(v, str):
                raise ManifestError(source, f"must be a string, not {_kind_of(v)}", f"summary.collectors.{k}")
        summary = Summary(collectors=statuses, files=s.get("files", int, 0), bytes=s.get("bytes", int, 0))
    collectors = [_collector(_Fields(source, item, f"collectors[{i}]"))
                  for i, item in enumerate(top.items("collectors"))]
    return Manifest(
        bundle=top.text("bundle", True), incident=inc, host=host, trigger=trigger, profile=top.text("profile"),
        bundle_id=top.text("bundle_id"), schema=schema, agent=top.get("agent", dict, {}), clocks=clocks,
        targets=top.items("targets"), target_problems=top.get("target_problems", list, []),
        resumed_targets=top.get("resumed_targets", list, []), collectors=collectors,
        broken_collectors=top.items("broken_collectors"), summary=summary, limits=top.get("limits", dict, {}),
        left_out=top.items("left_out"), redaction=top.get("redaction", dict, {}),
        salvaged=top.get("salvaged", dict), raw=obj)


def read(data: Mapping[str, Any] | bytes | str | Path, source: str | None = None) -> Manifest:
    """The one manifest reader: a parsed JSON object, the file's bytes (or text), or a path.

    Raises ManifestError, whose message starts with ``source`` (default: the path, or
    ``manifest.json``) and names the bad field: ``manifest.json: field "host.hostname" is
    missing``; an unreadable path raises OSError.
    """
    if isinstance(data, Path):
        source = source or data.name
        data = data.read_bytes()
    source = source or MANIFEST
    if isinstance(data, (bytes, str)):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise ManifestError(source, f"not valid JSON ({exc})") from None
    return _manifest(source, data)


# -- the integrity check ---------------------------------------------------------------------

# what a problem is about, for programs (the text is for people)
MEMBER = "member"            # a member the bundle must not hold (outside its folder, a link, a device...)
FORMAT = "format"            # not a zstd or gzip archive at all
UNREADABLE = "unreadable"    # the archive stops, is cut short or is damaged part-way
TRAILING = "trailing"        # bytes after the archive's end (after its last frame, or its index)
ARCHIVE = "archive"          # the archive's SHA-256 differs from its record
RECORD = "record"            # the record of the archive's SHA-256 (its .sha256) is missing
FILE = "file"                # a file differs from, is missing from or is not listed in SHA256SUMS / the manifest
INDEX = "index"              # SHA256SUMS or manifest.json missing or unreadable, or the archive's index disagrees
SIDECAR = "sidecar"          # the manifest sidecar beside the archive is not the archive's own manifest
FILED = "filed"              # the bundle is named or filed (S3 key: incident, host) other than its manifest says
OTHER = "other"              # a check of one transport (S3 checksums, custody records)


@dataclass(frozen=True)
class Problem:
    """One integrity problem: the file it is about (inside the bundle, or the archive, or a record beside
    it) and one line saying what is wrong. ``str()`` is the wording every command prints."""
    file: str
    reason: str
    kind: str = OTHER

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}"


@dataclass
class Seen:
    """What one pass over a bundle read, for ``check`` (made by ``bundle.scan`` or the report's folder reader)."""
    hashes: dict[str, str] = field(default_factory=dict)       # path inside the bundle -> SHA-256
    sums: bytes | None = None                                   # SHA256SUMS
    manifest: bytes | None = None                               # manifest.json
    sha256: str = ""                                            # the archive's own SHA-256 ("" for a folder)
    index: str | None = None                                    # manifest.json's SHA-256, as the archive's index says
    problems: list[Problem] = field(default_factory=list)       # found while reading (members, damage)


@dataclass(frozen=True)
class Expected:
    """The archive's SHA-256 as recorded elsewhere: ``sha256`` None when the record is missing."""
    sha256: str | None
    label: str = "its .sha256"       # "... differs from <label> (<sha256>)"
    record: str = ""                 # the record's file name, named when it is missing


@dataclass
class Integrity:
    """The result of ``check`` for one bundle (``goldenhour verify --json`` prints ``to_json()``)."""
    bundle: str                                 # what was checked: a path, an s3:// URL, a folder
    sha256: str = ""                            # the archive's SHA-256 as read ("" for a folder)
    expected_sha256: str | None = None
    files_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    manifest: Manifest | None = None            # the bundle's manifest.json, when it reads as a v1 manifest

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, file: str, reason: str, kind: str = OTHER) -> None:
        self.problems.append(Problem(file, reason, kind))

    def compare(self, expected: Expected) -> None:
        """The archive's SHA-256 against one record of it (``check`` does its .sha256; fetch adds S3's records)."""
        archive = self.bundle.rstrip("/").rsplit("/", 1)[-1]
        if expected.sha256 is None:
            self.add(expected.record or f"{archive}.sha256", "missing beside the bundle", RECORD)
        elif expected.sha256 != self.sha256:
            self.add(archive, f"sha256 {self.sha256} differs from {expected.label} ({expected.sha256})", ARCHIVE)

    def messages(self) -> list[str]:
        return [str(p) for p in self.problems]

    def to_json(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "ok": self.ok, "sha256": self.sha256,
                "expected_sha256": self.expected_sha256, "files_checked": self.files_checked,
                "problems": self.messages()}


@dataclass(frozen=True)
class Sidecar:
    """A manifest sidecar as read (``<bundle>.manifest.json`` beside the archive, or its S3 object)."""
    name: str
    data: bytes


_MISSING = object()
_FIRST = ("bundle", "incident.id", "host.hostname", "clocks.start_utc")    # named first when they differ


def _flat(obj: Any, path: str = "", out: dict[str, Any] | None = None) -> dict[str, Any]:
    out = {} if out is None else out
    if isinstance(obj, dict) and obj:
        for k, v in obj.items():
            _flat(v, f"{path}.{k}" if path else str(k), out)
    elif isinstance(obj, list) and obj:
        for i, v in enumerate(obj):
            _flat(v, f"{path}[{i}]", out)
    else:
        out[path] = obj
    return out


def _shown(v: Any) -> str:
    if v is _MISSING:
        return "absent"
    text = json.dumps(v, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def sidecar_difference(sidecar: bytes, inner: bytes, limit: int = 3) -> str | None:
    """None when a sidecar holds the archive's manifest (the same JSON value), else what differs, in words:
    ``is not the archive's manifest.json: incident.id is "INC-B" here, "INC-A" in the archive``."""
    if sidecar == inner:
        return None
    try:
        mine = json.loads(sidecar)
    except ValueError as exc:
        return f"is not valid JSON ({exc}), so it cannot be the archive's manifest.json"
    try:
        theirs = json.loads(inner)
    except ValueError:
        return "cannot be the archive's manifest.json, which is not valid JSON"
    if mine == theirs:
        return None
    a, b = _flat(mine), _flat(theirs)
    keys = [k for k in dict.fromkeys([*_FIRST, *a, *b]) if a.get(k, _MISSING) != b.get(k, _MISSING)]
    words = [f"{k or 'the whole'} is {_shown(a.get(k, _MISSING))} here, {_shown(b.get(k, _MISSING))} in the archive"
             for k in keys[:limit]]
    more = f" (and {len(keys) - limit} more differences)" if len(keys) > limit else ""
    return "is not the archive's manifest.json: " + "; ".join(words) + more


def filed_problems(archive: str, man: Manifest, incident: str | None = None, host: str | None = None) -> list[Problem]:
    """Where a bundle is filed against what its own manifest says: the archive's name (``bundle`` plus
    extension), and the incident and host of its S3 key (``.../incidents/<incident>/<host>/<name>``)."""
    out = []
    stem = archive.split(".tar.", 1)[0]
    if stem != man.bundle:
        out.append(Problem(archive, f"is named {stem!r} but its manifest.json names bundle {man.bundle!r}", FILED))
    if incident is not None and incident != man.incident.id:
        out.append(Problem(archive, f"is filed under incident {incident!r} but its manifest.json names incident "
                                    f"{man.incident.id!r}", FILED))
    if host is not None and host != man.host.hostname:
        out.append(Problem(archive, f"is filed under host {host!r} but its manifest.json names host "
                                    f"{man.host.hostname!r}", FILED))
    return out


def _listed(sums: bytes) -> dict[str, str]:
    listed = {}
    for line in sums.decode("utf-8", "replace").splitlines():
        digest, _, rel = line.partition("  ")
        listed[rel] = digest
    return listed


def check(bundle: str, seen: Seen, expected: Expected | None = None, sidecar: Sidecar | None = None) -> Integrity:
    """Every file against SHA256SUMS and the manifest, the archive against ``expected``, and the
    manifest ``sidecar`` (when there is one) against the archive's own manifest.json.

    ``bundle`` names what was read (its last path component names the archive in problems).
    The manifest is read with ``read``: a manifest that is not v1 is a problem too. The index
    goldenhour appends to an archive must name the manifest.json the archive holds.
    """
    integ = Integrity(bundle=bundle, sha256=seen.sha256, problems=list(seen.problems))
    if expected is not None:
        integ.expected_sha256 = expected.sha256
        integ.compare(expected)
    actual = {rel: digest for rel, digest in seen.hashes.items() if rel != SUMS}
    if any(p.kind == FORMAT for p in seen.problems):
        return integ                    # not an archive at all: nothing inside to compare
    if seen.sums is None:
        integ.add(SUMS, "missing from the bundle", INDEX)
    else:
        listed = _listed(seen.sums)
        for rel, digest in listed.items():
            if rel not in actual:
                integ.add(rel, "listed in SHA256SUMS but missing from the bundle", FILE)
            elif actual[rel] != digest:
                integ.add(rel, f"sha256 {actual[rel]} differs from SHA256SUMS ({digest})", FILE)
        for rel in actual:
            if rel not in listed:
                integ.add(rel, "in the bundle but not listed in SHA256SUMS", FILE)
    if seen.manifest is None:
        integ.add(MANIFEST, "missing from the bundle", INDEX)
    else:
        try:
            integ.manifest = read(seen.manifest, MANIFEST)
        except ManifestError as exc:
            integ.add(MANIFEST, str(exc).removeprefix(f"{MANIFEST}: "), INDEX)
        archive = bundle.rstrip("/").rsplit("/", 1)[-1]
        if seen.index is not None and seen.index != seen.hashes.get(MANIFEST):
            integ.add(archive, f"its index names manifest.json sha256 {seen.index}, the archive holds "
                               f"{seen.hashes.get(MANIFEST)}", INDEX)
        if sidecar is not None:
            why = sidecar_difference(sidecar.data, seen.manifest)
            if why:
                integ.add(sidecar.name, why, SIDECAR)
        if integ.manifest is not None:
            for c in integ.manifest.collectors:
                for fe in c.files:
                    if fe.path not in actual:
                        integ.add(fe.path, "in manifest.json but missing from the bundle", FILE)
                    elif actual[fe.path] != fe.sha256:
                        integ.add(fe.path, f"sha256 {actual[fe.path]} differs from manifest.json ({fe.sha256})", FILE)
    integ.files_checked = len(actual)
    return integ
