"""The flight recorder in the report: when it started, what moved first, and since when.

Reads a bundle's ``collectors/history/history.jsonl`` and ``summary.json`` (the ``history``
collector), rebuilds the signals (``agent.recorder.signals``) and finds, per signal, its
baseline and first sustained departure (``agent.recorder.analysis``; T0 is the window's
``t0`` in the summary: the incident's start, else the trigger). Gives the rest of the
report four things, each behind one small hook:

- ``timeline_events``: a row per departure ("PSI memory some rose from 0 to 35 % at
  09:14:05, 7 min before the incident's start"), the first ones marked; rows for the
  processes started and exited in the window, the recorder's gaps and clock steps, and the
  incident's start when the tracker gave one (``timeline.build``);
- ``annotate``: a "since when" on the findings a departure supports (the pressure rule's
  memory stall gets the onset of ``psi.memory.*``; a listen-queue finding the first
  overflow), as ``data["since"]`` and a sentence (``report.from_bundles``);
- ``plots_html``: a plot per signal that moved, with T0, the onset and the gaps marked
  (``html._plots``);
- ``view``: the analysis itself, for the ``flight_recorder`` rule.
"""
from __future__ import annotations

import fnmatch
import html as _html
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable

from agent.report.model import INFO, WARNING, Event, Finding, parse_iso

if TYPE_CHECKING:  # pragma: no cover
    from agent.recorder.analysis import Departure
    from agent.recorder.signals import Series
    from agent.report.loader import Bundle

JSONL = "collectors/history/history.jsonl"
SUMMARY = "collectors/history/summary.json"
MAX_ROWS = 25          # departure rows per host in the timeline
MAX_PLOTS = 12


@dataclass
class View:
    t0: float | None
    t0_source: str
    interval: float
    series: dict[str, "Series"]
    departures: list["Departure"]
    summary: dict[str, Any]
    samples: int
    first_seq: dict[float, int] = field(default_factory=dict)     # wall time -> seq (evidence locator)

    capture_start: float | None = None                            # goldenhour's own load from here on

    @property
    def live(self) -> list["Departure"]:
        """Departures with an onset, before the capture began (after it, the capture's own load is in
        the samples: those are not the incident's)."""
        return [d for d in self.departures if not d.already and
                (self.capture_start is None or d.onset < self.capture_start)]

    def first(self) -> list["Departure"]:
        from agent.recorder.analysis import first_movers
        return first_movers([d for d in self.departures if d.already or d in self.live], self.interval)

    def t0_words(self) -> str:
        return "the incident's start" if self.t0_source.startswith("incident") else (
            "the trigger" if self.t0_source.startswith("trigger") else "the capture")


def view(b: "Bundle") -> View | None:
    """The bundle's flight-recorder analysis (cached on the bundle); None when it has no history."""
    cached = getattr(b, "_history_view", False)
    if cached is not False:
        return cached
    v = _build(b)
    b._history_view = v  # type: ignore[attr-defined]
    return v


def _build(b: "Bundle") -> View | None:
    from agent.recorder import analysis, signals, window
    text = b.text(JSONL)
    if not text:
        return None
    entries = window.load_jsonl(text.splitlines())
    samples = [e for e in entries if e.kind == "sample"]
    if not samples:
        return None
    summ = b.json(SUMMARY)
    summ = summ if isinstance(summ, dict) else {}
    win = summ.get("window") or {}
    t0dt = parse_iso(win.get("t0"))
    t0 = t0dt.timestamp() if t0dt else None
    interval = float(summ.get("interval_s") or window.interval_of(samples))
    series = signals.build(samples)
    deps = analysis.departures(series, t0, interval)
    cap = parse_iso(b.manifest.clocks.start_utc) if b.manifest is not None else None
    return View(t0, str(win.get("t0_source") or ""), interval, {s.name: s for s in series}, deps, summ,
                len(samples), {e.wall: e.seq for e in samples}, cap.timestamp() if cap else None)


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, timezone.utc)


def _seq_at(v: View, t: float) -> str:
    s = v.first_seq.get(t)
    return f"seq {s}" if s is not None else ""


# -- timeline --------------------------------------------------------------------------------

def timeline_events(bundles: list["Bundle"]) -> list[Event]:
    out: list[Event] = []
    for b in bundles:
        v = view(b)
        if v is None:
            continue
        firsts = {d.signal for d in v.first()}
        for d in v.live[:MAX_ROWS]:
            words = d.sentence(v.t0, v.t0_words())
            if d.signal in firsts:
                words += " — first to move" if len(firsts) == 1 else " — among the first to move (same interval)"
            sev = WARNING if v.t0 is None or d.onset <= v.t0 else INFO
            out.append(Event(_dt(d.onset), b.host, "history", words, sev, file=JSONL,
                             ident=f"history/{d.signal}/{d.onset}"))
        if len(v.live) > MAX_ROWS:
            last = v.live[MAX_ROWS - 1]
            out.append(Event(_dt(last.onset), b.host, "history",
                             f"... and {len(v.live) - MAX_ROWS} more signals left their baseline later "
                             f"(the flight_recorder finding lists them)", None, file=JSONL))
        summ = v.summary
        out += process_events(b.host, summ.get("processes") or {})
        first = parse_iso(summ.get("first_sample"))
        for g in summ.get("gaps") or []:
            t, t1 = parse_iso(g.get("from")), parse_iso(g.get("to"))
            if t is None:
                continue
            if first is not None and t1 is not None and abs((t1 - first).total_seconds()) < 0.01:
                out.append(Event(t1, b.host, "history", f"Flight recorder: first sample of the window (nothing "
                                 f"recorded in the {float(g.get('seconds') or 0) / 60:.0f} min before: the recorder "
                                 "was not running, or its ring does not reach back so far)", INFO, file=SUMMARY))
                continue
            out.append(Event(t, b.host, "history", f"Flight recorder gap of {float(g.get('seconds') or 0):.0f} s "
                             f"until {str(g.get('to', ''))[11:19]}: {g.get('reason')}", INFO, file=SUMMARY))
        for c in summ.get("clock_steps") or []:
            t = parse_iso(c.get("at"))
            if t is not None:
                what = (f"the machine slept {c.get('suspend_s')} s" if c.get("direction") == "suspend" else
                        f"the wall clock stepped {c.get('direction')} by {abs(float(c.get('step_s') or 0)):g} s "
                        "(times before it are as that clock said)")
                out.append(Event(t, b.host, "history", f"Flight recorder: {what}", INFO, file=SUMMARY))
        if v.t0 is not None and v.t0_source.startswith("incident"):
            out.append(Event(_dt(v.t0), b.host, "incident", "Incident started (per the tracker: the history window's "
                             "T0)", INFO, file=SUMMARY))
    return out


def process_events(host: str, procs: dict[str, Any], bucket_s: int = 60) -> list[Event]:
    """Processes started and exited, one row per minute and direction: "Processes started: backup.sh,
    python ×68 (...)"; names with their counts, the first PIDs."""
    out: list[Event] = []
    for key, verb in (("started", "started"), ("exited", "exited")):
        buckets: dict[int, dict[str, list[dict[str, Any]]]] = {}
        unnamed_in: dict[int, tuple[datetime, int]] = {}
        for p in procs.get(key) or []:
            t = parse_iso(p.get("t"))
            if t is None:
                continue
            k = int(t.timestamp() // bucket_s)
            if p.get("unnamed"):
                first, n = unnamed_in.get(k, (t, 0))
                unnamed_in[k] = (min(first, t), n + int(p["unnamed"]))
                buckets.setdefault(k, {})
                continue
            buckets.setdefault(k, {}).setdefault(str(p.get("comm") or "?"), []).append(p)
        for k, names in sorted(buckets.items()):
            first_unnamed, unnamed = unnamed_in.get(k, (None, 0))
            t0 = min([parse_iso(p["t"]) for ps in names.values() for p in ps]
                     + ([first_unnamed] if first_unnamed else []))
            total = sum(len(ps) for ps in names.values()) + unnamed
            parts = []
            for comm, ps in sorted(names.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:12]:
                pids = ",".join(str(p.get("pid")) for p in ps[:3]) + ("…" if len(ps) > 3 else "")
                parts.append(f"{comm} ×{len(ps)} (pid {pids})" if len(ps) > 1 else f"{comm} (pid {pids})")
            more = len(names) - 12
            out.append(Event(t0, host, "history", f"{total} process{'es' if total != 1 else ''} {verb} from "
                             f"{t0:%H:%M:%S}: " + ", ".join(parts) + (f" and {more} other names" if more > 0 else "")
                             + (f" and {unnamed} more, not named (over the recorder's 25 per scan)" if unnamed else ""),
                             None, file=SUMMARY))
    return out


# -- since when ------------------------------------------------------------------------------

def _cgroup_globs(f: Finding) -> list[str]:
    path = str(f.title.split(" ")[1] if f.title.startswith("cgroup ") else "").strip("/")
    return [f"cgroup.{path}.*"] if path else []


# finding (rule, test) -> the signals whose departure it is the consequence of
SUPPORT: list[tuple[str, Callable[[Finding], list[str]]]] = [
    ("pressure", lambda f: [f"psi.{f.data.get('resource')}.{f.data.get('line')}_pct",
                            f"psi.{f.data.get('resource')}.*"]),
    ("host_resources", lambda f: ["mem.available_mib", "vm.*"] if f.title.startswith("Memory") else
     ["mem.swap_used_mib", "vm.swap_ps"] if f.title.startswith("Swap") else
     ["load.1", "psi.cpu.*"] if f.title.startswith("Load") else
     [g.replace(".*", ".throttled_pct") for g in _cgroup_globs(f)] if "throttled" in f.title else
     [g.replace(".*", ".mem_mib") for g in _cgroup_globs(f)] if f.title.startswith("cgroup") else []),
    ("listen_queue", lambda f: ["tcpext.listen_overflows", "tcpext.listen_drops", "tcpext.reqq_full_drop",
                                "tcpext.syncookies_sent", "tcpext.backlog_drop"]),
    ("conntrack", lambda f: ["ct.*"]),
    ("oom_kill", lambda f: ["vm.oom_kill", "cgroup.*.oom_kill", "mem.available_mib", "psi.memory.*"]),
    ("tcp_retransmits", lambda f: ["tcp.retrans_ps", "tcpext.timeouts_ps"]),
    ("d_state", lambda f: ["proc.dstate", "stat.blocked", "psi.io.*"]),
    ("fd_limits", lambda f: ["fd.open"]),
    ("runqueue_latency", lambda f: ["psi.cpu.*", "load.1", "cpu.busy_pct"]),
    ("socket_leaks", lambda f: ["sock.*", "tcp.curr_estab"]),
]


def annotate(findings: list[Finding], bundles: list["Bundle"]) -> None:
    """Add "since when" to findings that a recorded departure supports (earliest matching onset)."""
    views = {b.host: v for b in bundles if (v := view(b)) is not None}
    if not views:
        return
    tests = dict(SUPPORT)
    for f in findings:
        v = views.get(f.host)
        test = tests.get(f.rule)
        if v is None or test is None or "since" in f.data:
            continue
        try:
            globs = [g for g in test(f) if g]
        except Exception:  # noqa: BLE001 - a finding without the expected data gets no "since"
            continue
        match = [d for d in v.live if any(fnmatch.fnmatchcase(d.signal, g) for g in globs)]
        if not match:
            continue
        d = min(match, key=lambda x: x.onset)
        f.data["since"] = _dt(d.onset).isoformat(timespec="seconds").replace("+00:00", "Z")
        f.data["since_signal"] = d.signal
        rel = ""
        if v.t0 is not None:
            from agent.recorder.analysis import relative
            rel = f" ({relative(d.onset, v.t0, v.t0_words())})"
        f.explanation += (f" Since {_dt(d.onset):%H:%M:%S} UTC{rel}, per the flight recorder: "
                          f"{d.sentence()}.")


# -- plots -------------------------------------------------------------------------------------

def plots_html(b: "Bundle") -> str:
    v = view(b)
    if v is None:
        return ""
    charts = []
    for d in v.live[:MAX_PLOTS]:
        s = v.series.get(d.signal)
        if s is not None:
            charts.append(line_plot(s, d, v))
    if not charts:
        return ""
    procs = (v.summary.get("processes") or {})
    note = (f"<p class='meta'>{v.samples} samples every {v.interval:g} s; T0 = {_esc(v.t0_words())}"
            f"{' (' + _esc(v.summary.get('window', {}).get('t0', '')) + ')' if v.t0 else ''}; "
            f"{len(v.summary.get('gaps') or [])} gap(s); {procs.get('started_total', 0)} processes started and "
            f"{procs.get('exited_total', 0)} exited in the window. Dashed: T0; dotted: the onset; grey: gaps.</p>")
    return ("<h4>Flight recorder: the signals that left their baseline</h4>" + note + "<div class='plots'>"
            + "".join(charts) + "</div>")


def _esc(s: Any) -> str:
    return _html.escape(str(s), quote=True)


def line_plot(s: "Series", d: "Departure | None", v: View, width: int = 540, height: int = 200) -> str:
    """One signal over the window: the line, its baseline band, T0, the onset, the gaps."""
    from agent.recorder.analysis import fmt
    from agent.report import svg
    pts = s.points
    if len(pts) < 2:
        return ""
    t_lo, t_hi = pts[0][0], pts[-1][0]
    if v.t0 is not None:
        t_lo, t_hi = min(t_lo, v.t0), max(t_hi, v.t0)
    span = max(t_hi - t_lo, 1.0)
    vals = [p[1] for p in pts]
    lo, hi = min(vals + ([d.baseline] if d else [])), max(vals + ([d.baseline] if d else []))
    if hi - lo < 1e-9:
        hi = lo + 1
    step = svg.nice_step(hi - lo, 4)
    import math
    lo_t, hi_t = math.floor(lo / step) * step, math.ceil(hi / step) * step
    ml, mr, mt, mb = 60, 14, 30, 40
    pw, ph = width - ml - mr, height - mt - mb

    def x(t: float) -> float:
        return ml + pw * (t - t_lo) / span

    def y(val: float) -> float:
        return mt + ph - ph * (val - lo_t) / max(hi_t - lo_t, 1e-9)

    title = f"{s.spec.label}" + (f" ({s.spec.unit})" if s.spec.unit else "")
    desc = d.sentence(v.t0, v.t0_words()) if d else title
    head, tail = svg._open(width, height, title, desc)
    fit = int((width - ml) / 7.2)                    # characters that fit beside the axis at 13 px
    shown = title if len(title) <= fit else "…" + title[-(fit - 1):]     # a long cgroup path: keep its end
    out = [head, f'<text x="{ml}" y="17" font-size="13" font-weight="600" fill="#1b2631">{svg.esc(shown)}'
                 f'<title>{svg.esc(title)}</title></text>']
    val = lo_t
    while val <= hi_t + 1e-9:
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y(val):.1f}" y2="{y(val):.1f}" stroke="#e5e8e8"/>'
                   f'<text x="{ml - 5}" y="{y(val) + 4:.1f}" text-anchor="end" fill="#4d5656" font-size="11">'
                   f'{svg.esc(svg.fmt_count(round(val, 6)))}</text>')
        val += step
    if d is not None and not (d.kind == "event" and d.baseline == 0):
        band = max(d.threshold, 0)
        y0, y1 = y(min(hi_t, d.baseline + band)), y(max(lo_t, d.baseline - band))
        out.append(f'<rect x="{ml}" y="{y0:.1f}" width="{pw}" height="{max(y1 - y0, 1):.1f}" fill="#D5F5E3" '
                   f'opacity="0.6"><title>baseline {svg.esc(fmt(d.baseline, s.spec.unit))} ± threshold</title></rect>')
    for g in v.summary.get("gaps") or []:
        g0, g1 = parse_iso(g.get("from")), parse_iso(g.get("to"))
        if g0 and g1 and g1.timestamp() >= t_lo and g0.timestamp() <= t_hi:
            a, bb = x(max(g0.timestamp(), t_lo)), x(min(g1.timestamp(), t_hi))
            out.append(f'<rect x="{a:.1f}" y="{mt}" width="{max(bb - a, 2):.1f}" height="{ph}" fill="#D5D8DC">'
                       f'<title>gap: {svg.esc(g.get("reason"))}</title></rect>')
    path = []
    prev_t = None
    for t, val in pts:
        cmd = "M" if prev_t is None or t - prev_t > 2.5 * v.interval else "L"
        path.append(f"{cmd}{x(t):.1f} {y(val):.1f}")
        prev_t = t
    out.append(f'<path d="{" ".join(path)}" fill="none" stroke="#0072B2" stroke-width="1.5"/>')
    if v.t0 is not None:
        out.append(f'<line x1="{x(v.t0):.1f}" x2="{x(v.t0):.1f}" y1="{mt}" y2="{mt + ph}" stroke="#6C3483" '
                   f'stroke-width="1.5" stroke-dasharray="5,3"><title>T0: {svg.esc(v.t0_words())}</title></line>')
    if d is not None:
        out.append(f'<line x1="{x(d.onset):.1f}" x2="{x(d.onset):.1f}" y1="{mt}" y2="{mt + ph}" stroke="#C0392B" '
                   f'stroke-width="1.5" stroke-dasharray="2,2"><title>onset '
                   f'{svg.esc(_dt(d.onset).strftime("%H:%M:%S"))}</title></line>')
    for tt in svg._time_ticks(_dt(t_lo), _dt(t_lo + span), 5):
        out.append(f'<text x="{x(tt.timestamp()):.1f}" y="{mt + ph + 16}" text-anchor="middle" fill="#4d5656" '
                   f'font-size="11">{tt.strftime("%H:%M:%S" if span < 600 else "%H:%M")}</text>')
    out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{mt + ph}" y2="{mt + ph}" stroke="#566573"/>'
               f'<text x="{ml + pw / 2}" y="{height - 6}" text-anchor="middle" fill="#1b2631" font-size="11">'
               f'time (UTC)</text>')
    out.append(tail)
    return "".join(out)
