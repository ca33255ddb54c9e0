"""Findings rules: every module in this folder that exports ``RULE`` is a rule.

A rule reads the machine-readable evidence of one bundle (the collectors' JSON,
``dmesg.json``, the manifest) through ``agent.report.loader.Bundle`` and yields
``Finding`` values: a severity, a title, a plain explanation and the evidence
(file and line, or record) it rests on. Rules never need the tools that captured
the evidence, never touch the host they run on, and tolerate missing or partial
evidence: a collector that did not run is the ``collector_status`` rule's finding,
never a crash. There is no hand-kept list: a module added here is a rule; one that
fails to import, or raises on a bundle, becomes a finding itself.
"""
from __future__ import annotations

import importlib
import pkgutil
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable

from datetime import datetime

from agent.report.model import CRITICAL, INFO, WARNING, Evidence, Finding, parse_iso

if TYPE_CHECKING:  # pragma: no cover
    from agent.report.loader import Bundle


@dataclass(frozen=True)
class Rule:
    name: str
    summary: str                                     # one line: what it finds
    evaluate: Callable[["Bundle"], Iterable[Finding]]
    reads: tuple[str, ...] = ()                       # collectors whose evidence it reads
    severity: str = ""                               # the severities it gives, in words (docs/report.md)
    order: int = 50                                  # for listing only
    doc: str = field(default="", compare=False)


_cache: tuple[list[Rule], list[tuple[str, str]]] | None = None


def discover() -> tuple[list[Rule], list[tuple[str, str]]]:
    """All rules (ordered) and the modules that failed to load, as (name, error)."""
    global _cache
    if _cache is not None:
        return _cache
    rules: list[Rule] = []
    broken: list[tuple[str, str]] = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        try:
            mod = importlib.import_module(f"{__name__}.{info.name}")
        except Exception as exc:  # noqa: BLE001 - reported as a finding, never fatal
            broken.append((info.name, f"{type(exc).__name__}: {exc}"))
            continue
        r = getattr(mod, "RULE", None)
        if not isinstance(r, Rule) or r.name != info.name:
            broken.append((info.name, "RULE is missing, not a Rule, or not named like its module"))
            continue
        if not r.doc:
            r = Rule(**{**r.__dict__, "doc": (mod.__doc__ or "").strip()})
        rules.append(r)
    rules.sort(key=lambda r: (r.order, r.name))
    _cache = (rules, broken)
    return _cache


def _anchor(b: "Bundle") -> datetime | None:
    """The incident's moment for this bundle: its trigger, or the capture start."""
    m = b.manifest
    times = [parse_iso(m.trigger.at if m.trigger else None), parse_iso(m.clocks.start_utc)]
    times = [t for t in times if t]
    return min(times) if times else None


def _age(seconds: float) -> str:
    if seconds < 7200:
        return f"{seconds / 60:.0f} minutes"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} hours"
    return f"{seconds / 86400:.0f} days"


def demote_old(f: Finding, anchor: datetime | None, window_s: float | None) -> None:
    """A finding whose evidence is older than the window is context, not this incident: one level less severe."""
    if window_s is None or anchor is None or f.time is None or f.rule == "bundle_integrity":
        return
    age = (anchor - (f.last_time or f.time)).total_seconds()
    if age <= window_s:
        return
    f.severity = {CRITICAL: WARNING, WARNING: INFO}.get(f.severity, INFO)
    f.explanation += (f" This happened {_age(age)} before the incident's trigger, outside the report's window "
                      f"({_age(window_s)}): probably not this incident's cause, but worth knowing it happened before.")
    f.data["before_window"] = True


def evaluate(bundles: list["Bundle"], window_s: float | None = None) -> list[Finding]:
    """Run every rule on every bundle; a rule that raises becomes a finding with its error.

    With ``window_s``, findings dated earlier than that before the incident's trigger
    (old kernel messages still in the ring buffer) are made one level less severe. The result
    is ranked target first (``agent.report.focus``): each finding gets its scope and process.
    """
    rules, broken = discover()
    out: list[Finding] = []
    for name, err in broken:
        out.append(Finding(WARNING, f"Report rule {name} could not be loaded",
                           f"The rule module failed to load ({err}); what it looks for was not checked.",
                           rule="report"))
    for b in bundles:
        anchor = _anchor(b)
        for r in rules:
            try:
                for f in r.evaluate(b) or ():
                    if not f.host:
                        f.host = b.host
                    demote_old(f, anchor, window_s)
                    out.append(f)
            except Exception as exc:  # noqa: BLE001
                tb = traceback.format_exc(limit=3).strip().splitlines()[-1]
                out.append(Finding(INFO, f"Rule {r.name} could not read this bundle's evidence",
                                   f"{type(exc).__name__}: {exc} ({tb}). What it looks for was not checked "
                                   f"on {b.host}; the evidence files are in the bundle for a manual look.",
                                   rule=r.name, host=b.host, evidence=[Evidence(b.host, "manifest.json")]))
    # two captures of one host see the same kernel records: one finding each
    seen: set[tuple[str, str, str, str]] = set()
    unique = []
    for f in out:
        key = (f.host, f.rule, f.title, f.severity)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    from agent.report import focus       # target first: see agent/report/focus.py
    return focus.rank(unique, bundles)
