"""The report as one self-contained HTML file: inline CSS, inline SVG, no script, no network.

A Content-Security-Policy (``default-src 'none'``) makes the browser refuse any
fetch, so the file opens the same from disk, a mail attachment or an air-gapped
laptop. Expandable parts (evidence, thread groups, the Markdown timeline) are
``<details>`` elements, which need no JavaScript. Sections: the targets (one row per
captured process: its facts and worst finding), the findings (about the targets first,
then the host's, most severe first, each with the process it is about; "also on this
host" folded at the end), the timeline (plot and table), plots per host (pressure,
sockets per process, syscall latency per process, run-queue latency), the thread dumps
grouped by identical stack and headed by their first application frame, and the
bundles with their integrity and collectors.
"""
from __future__ import annotations

import html
from collections import Counter
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.report import hist, history, svg
from agent.report.model import CRITICAL, INFO, WARNING, Event, Finding, iso
from agent.report.rules._util import human_bytes, human_us
from agent.report.threads import Dump, group, heading, load_dumps, total
from agent.report.timeline import markdown_table

if TYPE_CHECKING:  # pragma: no cover
    from agent.report import Report
    from agent.report.loader import Bundle

CSS = """
:root{--fg:#1b2631;--muted:#566573;--line:#d5d8dc;--bg:#fff;--soft:#f4f6f7;--crit:#C0392B;--warn:#B9770E;
--info:#2874A6;--ok:#1E8449}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
main{max-width:1180px;margin:0 auto;padding:0 24px 48px}
header.top{background:#1b2631;color:#fff;padding:22px 24px 18px}
header.top .inner{max-width:1180px;margin:0 auto}
header.top h1{margin:0 0 4px;font-size:26px;line-height:1.25}
header.top p{margin:4px 0;color:#d6dbdf}
.chips{display:flex;gap:8px;flex-wrap:wrap;margin-top:12px}
.chip{border-radius:999px;padding:3px 12px;font-weight:600;font-size:14px;background:#fff;color:var(--fg)}
.chip.critical{background:var(--crit);color:#fff}.chip.warning{background:var(--warn);color:#fff}
.chip.info{background:var(--info);color:#fff}.chip.zero{background:#566573;color:#eaeded}.chip.ok{background:var(--ok);color:#fff}
nav.toc{position:sticky;top:0;background:#fffffff0;border-bottom:1px solid var(--line);z-index:2}
nav.toc ul{max-width:1180px;margin:0 auto;padding:8px 24px;display:flex;gap:20px;list-style:none;flex-wrap:wrap}
nav.toc a{color:var(--info);text-decoration:none;font-weight:600}
h2{font-size:21px;margin:34px 0 12px;padding-bottom:6px;border-bottom:2px solid var(--line)}
h3{font-size:17px;margin:0}
h4{margin:18px 0 8px;font-size:15px}
.finding{border:1px solid var(--line);border-left:6px solid var(--info);border-radius:6px;padding:12px 16px;
margin:12px 0;background:#fff}
.finding.critical{border-left-color:var(--crit)}.finding.warning{border-left-color:var(--warn)}
.finding .head{display:flex;gap:10px;align-items:baseline;flex-wrap:wrap}
.badge{font-size:12px;font-weight:700;letter-spacing:.04em;padding:2px 8px;border-radius:4px;color:#fff;
background:var(--info);text-transform:uppercase;white-space:nowrap}
.badge.critical{background:var(--crit)}.badge.warning{background:var(--warn)}
.meta{color:var(--muted);font-size:13px}
.finding p{margin:8px 0}
details{margin:6px 0}
summary{cursor:pointer;color:var(--info);font-weight:600}
ul.evidence{margin:6px 0;padding-left:18px}
ul.evidence li{margin:4px 0}
code,pre{font:13px/1.45 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
pre{background:var(--soft);padding:8px 10px;border-radius:4px;overflow-x:auto;white-space:pre-wrap;
word-break:break-word;margin:4px 0}
table{border-collapse:collapse;width:100%;font-size:14px}
caption{text-align:left;color:var(--muted);font-size:13px;padding:4px 0}
table.glance{margin-bottom:18px}table.targets{margin:8px 0 6px}table.targets td{font-size:14px}
table.targets td:not(:last-child){white-space:nowrap}
details.also{margin-top:24px;border-top:2px solid var(--line);padding-top:8px}
details.also>summary{font-size:17px}
table.glance a{color:var(--fg);text-decoration:none}
table.glance a:hover{text-decoration:underline}
th,td{border-bottom:1px solid var(--line);padding:5px 8px;text-align:left;vertical-align:top}
th{background:var(--soft);font-weight:600}
td.t{white-space:nowrap;font-variant-numeric:tabular-nums}
table.timeline{table-layout:fixed}table.timeline td{overflow-wrap:anywhere}
table.timeline code{font-size:11.5px;overflow-wrap:anywhere;color:var(--muted)}
table.glance td:nth-child(2){overflow-wrap:anywhere}
table.glance td:first-child,table.glance td:nth-child(3),table.glance th{white-space:nowrap}
tr.critical td:first-child{box-shadow:inset 4px 0 var(--crit)}
tr.warning td:first-child{box-shadow:inset 4px 0 var(--warn)}
.sev{font-weight:700;font-size:12px;text-transform:uppercase}
.sev.critical{color:var(--crit)}.sev.warning{color:var(--warn)}.sev.info{color:var(--info)}
.plots{display:flex;flex-wrap:wrap;gap:16px}
svg.plot{max-width:100%;height:auto;border:1px solid var(--line);border-radius:6px}
.group{border:1px solid var(--line);border-radius:6px;padding:6px 12px;margin:6px 0}
.group.blocked{border-color:var(--warn)}
ol.stack{margin:4px 0;padding-left:26px;font:13px/1.45 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
ol.stack li.native{color:var(--muted)}
.names{color:var(--muted);font-size:13px}
.ok{color:var(--ok);font-weight:600}.bad{color:var(--crit);font-weight:600}
.empty{color:var(--muted);font-style:italic}
footer{color:var(--muted);font-size:13px;margin-top:40px;border-top:1px solid var(--line);padding-top:12px}
@media print{nav.toc{display:none}details{display:block}summary{display:none}.finding{break-inside:avoid}}
"""
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _time(t: datetime | None) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if t else ""


def render_html(r: "Report") -> str:
    c = r.counts()
    parts = [f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
             f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
             f'<meta name="viewport" content="width=device-width,initial-scale=1">'
             f'<meta name="generator" content="goldenhour {e(__version__)}">'
             f'<title>{e(r.title)} — goldenhour report</title><style>{CSS}</style></head><body>']
    span = _span(r)
    parts.append(f'<header class="top"><div class="inner"><h1>{e(r.title)}</h1>'
                 f'<p>{len(r.bundles)} bundle{"s" if len(r.bundles) != 1 else ""} from '
                 f'{e(", ".join(r.hosts))}{span} · report generated {e(iso(r.generated))} by goldenhour '
                 f'{e(__version__)}</p><div class="chips" aria-label="finding counts">'
                 + "".join(f'<span class="chip {s if c[s] else "zero"}">{c[s]} {s}</span>'
                           for s in (CRITICAL, WARNING, INFO))
                 + ('<span class="chip ok">evidence verified</span>' if r.integrity_ok
                    else '<span class="chip critical">evidence does NOT match its hashes</span>')
                 + '</div></div></header>')
    parts.append('<nav class="toc" aria-label="sections"><ul>'
                 + ('<li><a href="#targets">Targets</a></li>' if r.targets else "")
                 + '<li><a href="#findings">Findings</a></li>'
                 '<li><a href="#timeline">Timeline</a></li><li><a href="#plots">Plots</a></li>'
                 '<li><a href="#threads">Thread dumps</a></li><li><a href="#evidence">Evidence</a></li></ul></nav>')
    parts.append("<main>")
    parts.append(_targets(r))
    parts.append(_findings(r.findings))
    parts.append(_timeline(r))
    parts.append(_plots(r))
    parts.append(_threads(r))
    parts.append(_evidence(r))
    parts.append(f'<footer>Generated by goldenhour {e(__version__)} from the bundles alone (no tool of the captured '
                 f'hosts was needed). Every finding names the bundle file and line or record it rests on: open the '
                 f'bundle (<code>tar -xf</code>) to check it. Times are UTC.</footer>')
    parts.append("</main></body></html>\n")
    return "".join(parts)


def _span(r: "Report") -> str:
    starts = [b.manifest.clocks.start_utc for b in r.bundles]
    starts = sorted(s for s in starts if s)
    if not starts:
        return ""
    return f", captured {e(starts[0].replace('T', ' ')[:19])}" + (
        f" to {e(starts[-1].replace('T', ' ')[:19])}" if starts[-1][:19] != starts[0][:19] else "") + " UTC"


def _targets(r: "Report") -> str:
    """The strip at the top: each target, its facts and its worst finding."""
    rows = r.targets
    if not rows:
        return ""
    out = ['<section id="targets" aria-labelledby="h-targets"><h2 id="h-targets">Targets</h2>'
           '<table class="targets"><caption>What this capture was for: each target process, as captured, and the '
           'worst finding about it</caption><thead><tr><th scope="col">process</th><th scope="col">host</th>'
           '<th scope="col">runtime</th><th scope="col">state</th><th scope="col">threads</th>'
           '<th scope="col">fds / limit</th><th scope="col">CPU</th><th scope="col">RSS</th>'
           '<th scope="col">worst finding</th></tr></thead><tbody>']
    for t in rows:
        fds = ("?" if t.fds is None else f"{t.fds}") + (f" / {t.fd_limit}" if t.fd_limit else "")
        full = t.fds is not None and t.fd_limit and t.fds >= 0.8 * t.fd_limit
        w = t.worst
        worst = (f'<span class="sev {e(w.severity)}">{e(w.severity)}</span> '
                 f'<a href="#finding-{t.anchor}">{e(w.title)}</a>') if w else '<span class="ok">no finding</span>'
        out.append(f'<tr class="{e(w.severity) if w else ""}"><td><b>{e(t.name)}</b> (pid {t.pid})'
                   f'<br><span class="meta">{e(t.reason)}</span></td><td>{e(t.host)}</td><td>{e(t.runtime)}</td>'
                   f'<td>{e(t.state)}</td><td>{"" if t.threads is None else t.threads}</td>'
                   f'<td class="{"bad" if full else ""}">{e(fds)}</td>'
                   f'<td>{"" if t.cpu_percent is None else f"{t.cpu_percent:.0f} %"}</td>'
                   f'<td>{"" if t.rss_bytes is None else e(human_bytes(t.rss_bytes))}</td><td>{worst}</td></tr>')
    out.append("</tbody></table></section>")
    return "".join(out)


def _glance(indexed: list[tuple[int, Finding]], caption: str) -> str:
    out = [f'<table class="glance"><caption>{e(caption)}</caption><thead><tr>'
           '<th scope="col">severity</th><th scope="col">finding</th><th scope="col">process</th>'
           '<th scope="col">hosts</th><th scope="col">when (UTC)</th></tr></thead><tbody>']
    rows: dict[tuple[str, str], list[tuple[int, Finding]]] = {}
    old: dict[str, list[tuple[int, Finding]]] = {}
    for i, f in indexed:
        if f.data.get("before_window"):
            old.setdefault(f.rule, []).append((i, f))
        else:
            rows.setdefault((f.severity, f.title), []).append((i, f))
    for rule, fs in old.items():       # context from before the window: a few rows, or one for many
        if len(fs) <= 3:
            for i, f in fs:
                rows.setdefault((f.severity, f.title), []).append((i, f))
        else:
            first = min(fs, key=lambda x: x[0])
            rows[(first[1].severity, f"{len(fs)} earlier findings of rule {rule}, from before the window")] = \
                sorted(fs, key=lambda x: x[1].time or datetime.min.replace(tzinfo=timezone.utc))
    for (sev, title), fs in sorted(rows.items(), key=lambda kv: min(i for i, _ in kv[1])):
        i, f = fs[0]
        hosts = ", ".join(sorted({x.host for _, x in fs}))
        named = list(dict.fromkeys(x.process for _, x in fs if x.process))
        procs = (", ".join(named) if len(named) <= 3 else f"{len(named)} processes") if named else "host"
        out.append(f'<tr class="{e(sev)}"><td><span class="sev {e(sev)}">{e(sev)}</span></td>'
                   f'<td><a href="#finding-{i}">{e(title)}</a></td><td>{e(procs)}</td><td>{e(hosts)}</td>'
                   f'<td class="t">{e(_time(f.time))}</td></tr>')
    out.append("</tbody></table>")
    return "".join(out)


def _findings(findings: list[Finding]) -> str:
    out = ['<section id="findings" aria-labelledby="h-findings"><h2 id="h-findings">Findings</h2>']
    if not findings:
        out.append('<p class="empty">No findings: the evidence shows none of the conditions the rules look for '
                   '(see "Evidence" for what was captured).</p>')
    indexed = list(enumerate(findings, 1))
    main = [(i, f) for i, f in indexed if f.scope != "elsewhere"]
    also = [(i, f) for i, f in indexed if f.scope == "elsewhere"]
    if main:
        out.append(_glance(main, "At a glance: findings about the targets first, then the host's, most severe "
                                 "first (the same finding on several hosts is one row)"))
    elif findings:
        out.append('<p class="empty">Nothing about the targets or the host now: only what is "also on this host" '
                   'below.</p>')
    for i, f in main:
        out.append(_article(i, f))
    if also:
        out.append(f'<details class="also" id="also"><summary>Also on this host: {len(also)} finding'
                   f'{"s" if len(also) != 1 else ""} older than the incident or about processes and cgroups this '
                   f'capture was not for</summary>' + _glance(also, "Context, not the targets' problem")
                   + "".join(_article(i, f) for i, f in also) + "</details>")
    out.append("</section>")
    return "".join(out)


def _article(i: int, f: Finding) -> str:
    out = []
    when = f' · <time datetime="{e(iso(f.time))}">{e(_time(f.time))} UTC</time>' if f.time else ""
    if f.data.get("since"):             # from the flight recorder (agent/report/history.py)
        when += f' · since <time datetime="{e(f.data["since"])}">{e(str(f.data["since"])[11:19])}</time> UTC'
    proc = f' · <b>{e(f.process)}</b>' if f.process else ""
    out.append(f'<article class="finding {e(f.severity)}" id="finding-{i}" data-rule="{e(f.rule)}" '
               f'data-scope="{e(f.scope)}">'
               f'<div class="head"><span class="badge {e(f.severity)}">{e(f.severity)}</span>'
               f'<h3>{e(f.title)}</h3></div>'
               f'<div class="meta">{e(f.host)}{proc}{when} · rule <code>{e(f.rule)}</code></div>'
               f'<p>{e(f.explanation)}</p>')
    if f.evidence:
        out.append(f'<details{" open" if f.severity == CRITICAL and i <= 3 else ""}><summary>Evidence '
                   f'({len(f.evidence)})</summary><ul class="evidence">')
        for ev in f.evidence:
            out.append(f'<li><code>{e(ev.host)}:{e(ev.where())}</code>'
                       + (f'<pre>{e(ev.excerpt)}</pre>' if ev.excerpt else "") + "</li>")
        out.append("</ul></details>")
    out.append("</article>")
    return "".join(out)


def _lane(ev: Event) -> str:
    kind = {"dmesg": "kernel", "incident": "capture", "goldenhour": "capture", "history": "recorder"}.get(ev.source)
    if kind is None:
        kind = "logs" if ev.file.startswith("collectors/logs/") else "probes"
    return f"{ev.host} · {kind}"


def _timeline(r: "Report") -> str:
    out = ['<section id="timeline" aria-labelledby="h-timeline"><h2 id="h-timeline">Timeline (UTC)</h2>']
    evs = r.events
    if not evs:
        out.append('<p class="empty">No timed events.</p></section>')
        return "".join(out)
    lanes: list[str] = []
    for h in r.hosts:
        for k in ("capture", "recorder", "kernel", "logs", "probes"):
            lane = f"{h} · {k}"
            if k == "capture" or any(_lane(x) == lane for x in evs):
                lanes.append(lane)
    marks = []
    for ev in evs:
        if ev.source == "goldenhour" and ev.severity == INFO:
            continue                                     # start/end: drawn as the capture span
        shape = {"critical": "diamond", "warning": "square"}.get(ev.severity or "", "circle")
        label = f"{ev.host} {ev.source}: {ev.event}" + (f" (×{ev.count})" if ev.count > 1 else "")
        marks.append((ev.time, _lane(ev), label, ev.severity, shape))
    spans, lines = [], []
    for b in r.bundles:
        from agent.report.model import parse_iso
        s0, s1 = parse_iso(b.manifest.clocks.start_utc), parse_iso(b.manifest.clocks.end_utc)
        if s0 and s1:
            spans.append((s0, s1, f"{b.host} · capture", f"capture of {b.host}: {b.name}"))
    for t in sorted({ev.time for ev in evs if ev.source == "incident"}):
        lines.append((t, "trigger"))
    out.append(svg.timeline(lanes, marks, spans, lines,
                            title=f"Timeline (UTC): {len(evs)} events on {len(r.hosts)} host(s)",
                            desc="Kernel messages, log lines, probe findings and the capture of each host on one "
                                 "UTC axis; red diamonds are critical, amber squares warnings."))
    out.append('<table class="timeline"><colgroup><col style="width:165px"><col style="width:90px">'
               '<col style="width:110px"><col><col style="width:270px"></colgroup>'
               '<thead><tr><th scope="col">Time (UTC)</th><th scope="col">Host</th>'
               '<th scope="col">Source</th><th scope="col">Event</th><th scope="col">Where</th></tr></thead><tbody>')
    for ev in evs:
        sev = f'<span class="sev {e(ev.severity)}">{e(ev.severity)}</span> ' if ev.severity in (CRITICAL, WARNING) \
            else ""
        where = f"{ev.file}:{ev.line}" if ev.line else ev.file
        out.append(f'<tr class="{e(ev.severity or "")}"><td class="t">{e(_time(ev.time))}'
                   f'{"*" if ev.assumed_utc else ""}</td><td>{e(ev.host)}</td><td>{e(ev.source)}</td>'
                   f'<td>{sev}{e(ev.event)}{f" <b>(×{ev.count})</b>" if ev.count > 1 else ""}'
                   f'{f" <span class=meta>(+{ev.folded} lines)</span>" if ev.folded else ""}</td>'
                   f'<td><code>{e(where)}</code></td></tr>')
    out.append("</tbody></table>")
    if any(ev.assumed_utc for ev in evs):
        out.append('<p class="meta">* the log line had no time zone: read as UTC.</p>')
    out.append('<details><summary>Markdown for the postmortem\'s "Timeline (UTC)" table</summary>'
               f'<pre>{e(markdown_table(evs))}</pre></details></section>')
    return "".join(out)


def _plots(r: "Report") -> str:
    out = ['<section id="plots" aria-labelledby="h-plots"><h2 id="h-plots">Plots</h2>']
    any_plot = False
    for b in r.bundles:
        block = _host_plots(b)
        if block:
            any_plot = True
            out.append(f'<h3>{e(b.host)} <span class="meta">{e(b.name)}</span></h3>{block}')
    if not any_plot:
        out.append('<p class="empty">No plottable evidence (pressure, sockets, syscall or run-queue latency) in these '
                   'bundles.</p>')
    out.append("</section>")
    return "".join(out)


def _host_plots(b: "Bundle") -> str:
    out = [history.plots_html(b)]                   # the flight recorder's signals that moved
    h = b.json("collectors/host/host.json")
    psi = h.get("psi") if isinstance(h, dict) else None
    if isinstance(psi, dict):
        groups = []
        for res in ("cpu", "memory", "io"):
            for line in ("some", "full"):
                v = (psi.get(res) or {}).get(line)
                if isinstance(v, dict) and not (res == "cpu" and line == "full"):
                    groups.append((f"{res} {line}", {k: float(v.get(k) or 0) for k in ("avg10", "avg60", "avg300")}))
        if groups:
            out.append("<h4>Pressure stall information</h4><div class='plots'>"
                       + svg.grouped_bars(groups, ("avg10", "avg60", "avg300"), f"Pressure (PSI) on {b.host}",
                                          desc="Percent of time tasks stalled waiting for CPU, memory or I/O over "
                                               "the last 10 s, 60 s and 300 s.", width=560)
                       + "</div>")
    s = b.json("collectors/sockets/sockets.json")
    procs = s.get("processes") if isinstance(s, dict) else None
    if isinstance(procs, list) and procs:
        rows = []
        for p in procs[:12]:
            if not isinstance(p, dict):
                continue
            cats: Counter[str] = Counter()
            for k, n in (p.get("states") or {}).items():
                proto, _, st = str(k).partition(":")
                cats["unix" if proto.startswith("u_") else f"{proto} {st}" if proto == "tcp" else proto] += int(n or 0)
            rows.append((f"{p.get('comm')} ({p.get('pid')})", dict(cats)))
        chart = svg.stacked_bars(rows, f"Sockets per process by state on {b.host}",
                                 desc="Sockets held by the processes with the most sockets, split by protocol and "
                                      "TCP state.")
        if chart:
            out.append(f"<h4>Sockets per process</h4>{chart}")
    sys_charts = _syscall_plots(b)
    if sys_charts:
        out.append("<h4>System call latency per process</h4><div class='plots'>" + sys_charts + "</div>")
    from agent.report.rules.runqueue_latency import series
    rq = []
    plotted = [x for x in series(b) if x[3]]
    host_wide = [x for x in plotted if x[1] == "all CPUs"]
    per_proc = sorted((x for x in plotted if x[1] != "all CPUs"),
                      key=lambda x: -(hist.percentile(x[3], 0.99) or 0))
    for _rel, label, _rec, bs in host_wide[:1] + per_proc[:3]:
        rq.append(svg.latency_histogram(bs, f"Run-queue latency: {label}", xlabel="wait for a CPU (log₂ buckets)",
                                        ylabel="wake-ups", marks={"p50": hist.percentile(bs, 0.5),
                                                                  "p99": hist.percentile(bs, 0.99)}))
    if rq:
        more = f"<p class='meta'>{len(per_proc) - 3} more processes in runqlat.json.</p>" if len(per_proc) > 3 else ""
        out.append("<h4>Run-queue latency</h4><div class='plots'>" + "".join(rq) + "</div>" + more)
    return "".join(out)


def _syscall_plots(b: "Bundle") -> str:
    from agent.report.rules.syscall_latency import WAITS, load, name_of, us
    rel, _, recs = load(b)
    by_pid: dict[Any, list[dict[str, Any]]] = {}
    for r in recs:
        by_pid.setdefault((r.get("pid"), r.get("comm")), []).append(r)
    charts = []
    ranked = sorted(by_pid.items(), key=lambda kv: -max((us(r, "max") or 0) for r in kv[1]))
    for (pid, comm), rs in ranked[:8]:
        busy = [r for r in rs if name_of(r) not in WAITS]
        bs = hist.merge([hist.find_hist(r) for r in (busy or rs)])
        if not bs:
            continue
        top = sorted(rs, key=lambda r: -(us(r, "total") or 0))[:5]
        desc = "; ".join(f"{name_of(r)}: {int(r.get('count') or 0)} calls, p99 {human_us(us(r, 'p99'))}, "
                         f"max {human_us(us(r, 'max'))}" for r in top)
        chart = svg.latency_histogram(bs, f"{comm} (pid {pid}): syscall latency",
                                      desc=f"Latency of {comm}'s system calls other than idle waits. {desc}",
                                      ylabel="calls", marks={"p50": hist.percentile(bs, 0.5),
                                                             "p99": hist.percentile(bs, 0.99)})
        rows = "".join(f"<tr><td>{e(name_of(r))}</td><td>{int(r.get('count') or 0)}</td>"
                       f"<td>{e(human_us(us(r, 'p50')))}</td><td>{e(human_us(us(r, 'p99')))}</td>"
                       f"<td>{e(human_us(us(r, 'max')))}</td></tr>" for r in top)
        charts.append(f"<div>{chart}<details><summary>Top system calls by total time</summary><table><thead><tr>"
                      f"<th>syscall</th><th>calls</th><th>p50</th><th>p99</th><th>max</th></tr></thead>"
                      f"<tbody>{rows}</tbody></table></details></div>")
    return "".join(charts)


def _threads(r: "Report") -> str:
    out = ['<section id="threads" aria-labelledby="h-threads"><h2 id="h-threads">Thread dumps</h2>']
    found = False
    for b in r.bundles:
        for pid, dump in load_dumps(b):
            found = True
            out.append(_dump(b, pid, dump))
    if not found:
        out.append('<p class="empty">No thread dumps in these bundles (the standard and full profiles take them).</p>')
    out.append("</section>")
    return "".join(out)


def _dump(b: "Bundle", pid: int, dump: Dump) -> str:
    t = b.target_info(pid)
    comm = t.get("comm") or "?"
    from agent.report.rules.pileups import parked, pileups, severity
    groups = group(dump)
    rt = dump.runtime or t.get("runtime") or "native"
    blocked = sum(th.weight for th in dump.threads if th.blocked_reason())
    n_parked = sum(th.weight for th in dump.threads if parked(th, rt))
    noun = "goroutines" if rt == "go" else "threads"
    out = [f'<h3 id="threads-{e(b.host)}-{pid}">{e(comm)} (pid {pid}) on {e(b.host)}</h3>'
           f'<p class="meta">{e(rt)} · {total(dump)} {noun} in {len(groups)} distinct stacks · {n_parked} parked · '
           f'{blocked} blocked on locks · <code>{e(dump.source)}</code></p>']
    for p in pileups(dump)[:3]:
        sev = severity(p)
        if sev:
            out.append(f'<p><span class="sev {e(sev)}">pile-up</span> {p["count"]} of {p["total"]} {noun} parked at '
                       f'<code>{e(p["frame"].label())}</code>' + (f' in <code>{e(p["wait"])}</code>' if p["wait"]
                                                                  else "") + "</p>")
    for d in dump.deadlocks:
        from agent.report.threads import deadlock_names
        names = deadlock_names(d)
        text = d.get("text") or d.get("description") or ""
        out.append(f'<div class="finding critical"><div class="head"><span class="badge critical">deadlock</span>'
                   f'<h3>{e(", ".join(names) or "reported by the runtime")}</h3></div>'
                   + (f"<pre>{e(text)}</pre>" if text else "") + "</div>")
    for i, g in enumerate(groups[:60]):
        states = ", ".join(f"{n} {s}" for s, n in g.states().most_common())
        head = heading(g.threads[0], rt)
        is_blocked = g.blocked() > 0
        names = [th.name for th in g.threads]
        shown = ", ".join(names[:40]) + (f" and {len(names) - 40} more" if len(names) > 40 else "")
        frames = "".join(f'<li class="{"native" if f.native else ""}">{e(f.label())}</li>' for f in g.frames[:80])
        out.append(f'<details class="group{" blocked" if is_blocked else ""}"{" open" if i < 3 else ""}>'
                   f'<summary>{g.count} thread{"s" if g.count != 1 else ""} · {e(states)}'
                   + (' · <span class="sev warning">blocked on a lock</span>' if is_blocked else "")
                   + f' — {e(head)}</summary>'
                   f'<p class="names">{e(shown)}</p>'
                   + (f'<ol class="stack">{frames}</ol>' if frames else '<p class="empty">no frames</p>')
                   + "</details>")
    if len(groups) > 60:
        out.append(f'<p class="meta">{len(groups) - 60} more groups in {e(dump.source)}.</p>')
    return "".join(out)


def _evidence(r: "Report") -> str:
    out = ['<section id="evidence" aria-labelledby="h-evidence"><h2 id="h-evidence">Evidence</h2>']
    for b in r.bundles:
        m = b.manifest
        clocks, trig, host = m.clocks, m.trigger, m.host
        integ = b.integrity
        ok = (f'<span class="ok">verified</span>: {integ.files_checked} files match manifest.json and SHA256SUMS'
              + (", the archive matches its .sha256" if integ.expected_sha256 else "")) if integ.ok else \
            f'<span class="bad">{len(integ.problems)} problems</span>: ' + e("; ".join(integ.messages()[:5]))
        out.append(f'<h3>{e(b.host)}</h3><table><tbody>'
                   f'<tr><th scope="row">bundle</th><td><code>{e(b.name)}</code> ({e(b.source)})</td></tr>'
                   f'<tr><th scope="row">captured</th><td>{e(clocks.start_utc or "?")} → '
                   f'{e(clocks.end_utc or "?")} ({e(clocks.duration_s)} s), profile '
                   f'{e(m.profile or "?")}</td></tr>'
                   f'<tr><th scope="row">trigger</th><td>{e(trig.kind if trig else "?")} '
                   f'at {e(trig.at if trig else "?")}'
                   f'{" — " + e(trig.reason) if trig and trig.reason else ""}'
                   f'{" by " + e(trig.by) if trig and trig.by else ""}</td></tr>'
                   f'<tr><th scope="row">host</th><td>{e(host.kernel)} · '
                   f'{e(host.os)} · {e(host.cpus if host.cpus is not None else "?")} CPUs</td></tr>'
                   f'<tr><th scope="row">integrity</th><td>{ok}'
                   + (f'<br><code>sha256 {e(integ.sha256)}</code>' if integ.sha256 and b.kind == "archive"
                      else "") + "</td></tr></tbody></table>")
        out.append('<table><thead><tr><th scope="col">collector</th><th scope="col">status</th>'
                   '<th scope="col">duration</th><th scope="col">files</th><th scope="col">reason</th>'
                   '</tr></thead><tbody>')
        for c in m.collectors:
            st = c.status
            cls = "bad" if st in ("failed", "timeout", "interrupted") else "ok" if st == "ok" else ""
            out.append(f'<tr><td><code>{e(c.key or c.name)}</code></td>'
                       f'<td class="{cls}">{e(st)}</td><td>{c.duration_s:.2f} s</td>'
                       f'<td>{len(c.files)}</td><td>{e(c.reason)}</td></tr>')
        out.append("</tbody></table>")
    out.append("</section>")
    return "".join(out)
