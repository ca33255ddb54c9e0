"""The report as Markdown: the targets, findings (target first, then "Also on this host"), the postmortem's
"Timeline (UTC)" table, the bundles.

The timeline table has exactly the postmortem template's header
(``| Time | Host | Source | Event |``), times as ``YYYY-MM-DD HH:MM:SS`` UTC, one row
per event with pipes escaped, so its rows paste under the template's header unchanged.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from agent import __version__
from agent.report.model import iso
from agent.report.rules._util import human_bytes
from agent.report.timeline import _cell, markdown_table

if TYPE_CHECKING:  # pragma: no cover
    from agent.report import Report


def _finding(f) -> str:
    when = f" at {f.time.strftime('%Y-%m-%d %H:%M:%S')} UTC" if f.time else ""
    proc = f" — {f.process}" if f.process else ""
    out = [f"\n### {f.severity.upper()}: {f.title}\n\n*{f.host}{proc}{when} — rule `{f.rule}`*\n\n{f.explanation}\n"]
    if f.evidence:
        out.append("\nEvidence:\n")
        for e in f.evidence:
            ex = f": {_cell(e.excerpt, 300)}" if e.excerpt else ""
            out.append(f"- `{e.host}:{e.where()}`{ex}\n")
    return "".join(out)


def render_markdown(r: "Report") -> str:
    c = r.counts()
    out = [f"# {r.title}\n",
           f"goldenhour {__version__} report, generated {iso(r.generated)} from {len(r.bundles)} bundle(s) "
           f"of {', '.join(r.hosts)}: **{c['critical']} critical, {c['warning']} warning, {c['info']} info**.\n"]
    if r.targets:
        out.append("\n## Targets\n\n| Process | Host | Runtime | State | Threads | FDs / limit | CPU | RSS | "
                   "Worst finding |\n|---|---|---|---|---|---|---|---|---|\n")
        for t in r.targets:
            w = t.worst
            fds = ("?" if t.fds is None else str(t.fds)) + (f" / {t.fd_limit}" if t.fd_limit else "")
            out.append(f"| {_cell(t.name)} (pid {t.pid}) | {_cell(t.host)} | {_cell(t.runtime)} | {_cell(t.state)} | "
                       f"{'' if t.threads is None else t.threads} | {fds} | "
                       f"{'' if t.cpu_percent is None else f'{t.cpu_percent:.0f} %'} | "
                       f"{'' if t.rss_bytes is None else human_bytes(t.rss_bytes)} | "
                       + (f"{w.severity.upper()}: {_cell(w.title)}" if w else "no finding") + " |\n")
    out.append("\n## Findings\n")
    if not r.findings:
        out.append("\nNo findings: the evidence shows none of the conditions the rules look for.\n")
    for f in r.main_findings:
        out.append(_finding(f))
    if r.also_findings:
        out.append("\n## Also on this host\n\nOlder than the incident, or about processes and cgroups this capture "
                   "was not for: context, not the targets' problem.\n")
        for f in r.also_findings:
            out.append(_finding(f))
    out.append("\n## Timeline (UTC)\n\n")
    out.append(markdown_table(r.events))
    if any(e.assumed_utc for e in r.events):
        out.append("\nLog lines without a time zone were read as UTC.\n")
    out.append("\n## Evidence\n\nBundles captured for this incident (host, time, sha256, location).\n\n"
               "| Host | Captured (UTC) | Bundle | SHA-256 | Location | Integrity | Collectors |\n"
               "|------|----------------|--------|---------|----------|-----------|------------|\n")
    for b in r.bundles:
        statuses = b.manifest.summary.collectors if b.manifest.summary else {}
        counts: dict[str, int] = {}
        for s in statuses.values():
            counts[s] = counts.get(s, 0) + 1
        integ = f"ok ({b.integrity.files_checked} files)" if b.integrity.ok else f"{len(b.integrity.problems)} problems"
        sha = b.integrity.sha256 if b.kind == "archive" else ""
        start = b.manifest.clocks.start_utc.replace("T", " ")[:19]
        out.append(f"| {_cell(b.host)} | {_cell(start)} | {_cell(b.name)} | {_cell(sha)} | {_cell(b.source)} | "
                   f"{integ} | {_cell(', '.join(f'{n} {s}' for s, n in sorted(counts.items())))} |\n")
    return "".join(out)
