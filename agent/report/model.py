"""What the report is made of: findings with their evidence, and timeline events.

A ``Finding`` is one thing the evidence says, in plain words, with a severity and
pointers into the bundle (file and line, or a record such as ``seq 1234`` of
``dmesg.json``) so a responder can check it. An ``Event`` is one line of the
timeline: a UTC time, the host, where it comes from and what happened.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from agent.incident import iso, parse_iso  # noqa: F401 - the report's modules import them from here

CRITICAL, WARNING, INFO = "critical", "warning", "info"
SEVERITIES = (CRITICAL, WARNING, INFO)
RANK = {CRITICAL: 0, WARNING: 1, INFO: 2}


@dataclass
class Evidence:
    """Where a finding comes from: a file of the bundle and a line or a record in it."""

    host: str
    file: str                       # path inside the bundle, e.g. collectors/dmesg/dmesg.txt
    line: int | None = None         # 1-based line in ``file``
    record: str = ""                # a record locator, e.g. "seq 1234", "pid 4242", "listener 127.0.0.1:80"
    excerpt: str = ""               # the evidence itself, short

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"host": self.host, "file": self.file}
        if self.line is not None:
            d["line"] = self.line
        if self.record:
            d["record"] = self.record
        if self.excerpt:
            d["excerpt"] = self.excerpt
        return d

    def where(self) -> str:
        loc = self.file + (f":{self.line}" if self.line is not None else "")
        return loc + (f" ({self.record})" if self.record else "")


@dataclass
class Finding:
    severity: str
    title: str
    explanation: str
    rule: str
    host: str = ""
    evidence: list[Evidence] = field(default_factory=list)
    time: datetime | None = None    # when it happened (first), if the evidence says
    last_time: datetime | None = None   # when it last happened, for findings grouping repeats
    data: dict[str, Any] = field(default_factory=dict)   # machine-readable facts (counts, pids...)
    scope: str = ""                 # target / host / elsewhere ("also on this host"): agent.report.focus
    process: str = ""               # the process it is about, "comm (pid N)", "" for host-wide ones

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r} is not one of {SEVERITIES}")

    def sort_key(self) -> tuple:
        # evidence that fails its hashes qualifies everything else: it comes first
        return (RANK[self.severity], self.rule != "bundle_integrity", self.time is None,
                self.time or datetime.min.replace(tzinfo=timezone.utc), self.host, self.title)

    def to_json(self) -> dict[str, Any]:
        return {"severity": self.severity, "title": self.title, "explanation": self.explanation,
                "rule": self.rule, "host": self.host,
                "time": iso(self.time) if self.time else None,
                "last_time": iso(self.last_time) if self.last_time else None,
                "scope": self.scope or None, "process": self.process or None,
                "evidence": [e.to_json() for e in self.evidence], "data": self.data}


@dataclass
class Event:
    """One row of the timeline."""

    time: datetime
    host: str
    source: str                      # dmesg, journal, log:<file>, capture, trigger, collector...
    event: str
    severity: str | None = None      # critical / warning / info when it is notable
    file: str = ""
    line: int | None = None
    count: int = 1                   # identical messages folded into one row
    assumed_utc: bool = False        # the log line had no zone; read as UTC
    ident: str = ""                  # identity across captures of one host (a kernel record's seq)
    folded: int = 0                  # kernel lines folded into this row (a backtrace, an OOM report's statistics)

    def sort_key(self) -> tuple:
        # at the same instant the trigger comes before the capture it caused
        return (self.time, self.source != "incident", self.host, self.source, self.event)

    def to_json(self) -> dict[str, Any]:
        d = {"time": iso(self.time), "host": self.host, "source": self.source, "event": self.event,
             "severity": self.severity, "count": self.count}
        if self.file:
            d["file"] = self.file
        if self.line is not None:
            d["line"] = self.line
        if self.assumed_utc:
            d["assumed_utc"] = True
        if self.folded:
            d["folded"] = self.folded
        return d


