"""The RCA report: findings, plots and a timeline from the bundles of an incident.

Where it sits: after the store (and retrieval). ``goldenhour report`` loads bundles
(``loader``: archives streamed once, or extracted folders), runs every rule in
``rules/`` on each (``rules.evaluate``, ranked target first by ``focus``: findings about
the captured processes and the incident's services, then the host's, then "also on this
host"; ``focus.strip`` gives each target's row at the top), merges every host's kernel messages, log
lines and capture events into one UTC timeline (``timeline``), and renders one
self-contained HTML file (``html``: inline CSS and hand-built SVG, no script, no
network), Markdown (``markdown``, whose timeline pastes into the postmortem
template) or JSON. It needs nothing but Python and goldenhour: none of the tools
that captured the evidence.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from agent import __version__
from agent.report import focus, history, loader, rules, timeline
from agent.manifest import Integrity
from agent.report.loader import Bundle
from agent.report.model import SEVERITIES, Event, Finding, iso


@dataclass
class Report:
    bundles: list[Bundle]
    findings: list[Finding]
    events: list[Event]
    window_s: float
    generated: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    _targets: list[focus.TargetRow] | None = field(default=None, repr=False)

    @property
    def incidents(self) -> list[str]:
        return sorted({b.incident for b in self.bundles if b.incident})

    @property
    def hosts(self) -> list[str]:
        return sorted({b.host for b in self.bundles})

    @property
    def title(self) -> str:
        titles = sorted({b.manifest.incident.title for b in self.bundles} - {""})
        inc = ", ".join(self.incidents) or "unknown incident"
        return f"Incident {inc}" + (f": {titles[0]}" if titles else "")

    @property
    def targets(self) -> list[focus.TargetRow]:
        """Each captured target with its facts and its worst finding: the strip at the top of the report."""
        if self._targets is None:
            self._targets = focus.strip(self.bundles, self.findings)
        return self._targets

    @property
    def main_findings(self) -> list[Finding]:
        """The findings about the targets and the host now, ranked (``focus.rank``)."""
        return [f for f in self.findings if f.scope != focus.ELSEWHERE]

    @property
    def also_findings(self) -> list[Finding]:
        """"Also on this host": older than the incident, or about processes and cgroups the capture was not for."""
        return [f for f in self.findings if f.scope == focus.ELSEWHERE]

    def counts(self) -> dict[str, int]:
        return {s: sum(1 for f in self.findings if f.severity == s) for s in SEVERITIES}

    @property
    def integrity_ok(self) -> bool:
        return all(b.integrity.ok for b in self.bundles)

    def to_json(self) -> dict[str, Any]:
        return {
            "generated": iso(self.generated), "goldenhour": __version__, "incidents": self.incidents,
            "hosts": self.hosts, "window_s": self.window_s, "counts": self.counts(),
            "bundles": [{"bundle": b.name, "host": b.host, "incident": b.incident, "source": b.source,
                         "start_utc": b.manifest.clocks.start_utc or None,
                         "end_utc": b.manifest.clocks.end_utc or None,
                         "profile": b.manifest.profile or None,
                         "trigger": b.manifest.trigger.to_json() if b.manifest.trigger else None,
                         "collectors": b.manifest.summary.collectors if b.manifest.summary else None,
                         "integrity": _integrity(b.integrity), "problems": b.problems} for b in self.bundles],
            "targets": [t.to_json() for t in self.targets],
            "findings": [f.to_json() for f in self.findings],
            "timeline": [e.to_json() for e in self.events],
        }


def _integrity(integ: Integrity) -> dict[str, Any]:
    """A bundle's integrity in the report's JSON (the problems worded as ``goldenhour verify`` words them)."""
    return {"ok": integ.ok, "files_checked": integ.files_checked, "problems": integ.messages(),
            "archive_sha256": integ.sha256, "expected_sha256": integ.expected_sha256}


def build(sources: Iterable[str], store_root: Path | None = None,
          window_s: float = timeline.DEFAULT_WINDOW_S) -> Report:
    bundles = loader.load(sources, store_root)
    return from_bundles(bundles, window_s)


def from_bundles(bundles: list[Bundle], window_s: float = timeline.DEFAULT_WINDOW_S) -> Report:
    findings = rules.evaluate(bundles, window_s)
    history.annotate(findings, bundles)          # "since when", from the flight recorder
    events = timeline.build(bundles, findings, window_s)
    return Report(bundles=bundles, findings=findings, events=events, window_s=window_s)


def render(report: Report, fmt: str) -> str:
    if fmt == "html":
        from agent.report.html import render_html
        return render_html(report)
    if fmt == "md":
        from agent.report.markdown import render_markdown
        return render_markdown(report)
    if fmt == "json":
        import json
        return json.dumps(report.to_json(), indent=1, default=str) + "\n"
    raise ValueError(f"unknown report format {fmt!r}")
