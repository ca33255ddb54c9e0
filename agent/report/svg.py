"""Hand-built inline SVG plots: no JavaScript, no fonts or files to fetch, readable on paper.

Every plot is an ``<svg role="img">`` with a ``<title>`` and a ``<desc>`` (read by
screen readers and shown as a tooltip), labelled axes, and per-mark ``<title>``
tooltips with the exact values. Colours are the Okabe–Ito palette (safe for the
common colour-vision deficiencies); severity uses red, amber and blue with a
shape or label beside the colour, never colour alone.
"""
from __future__ import annotations

import html
import itertools
import math
from datetime import datetime, timedelta, timezone
from typing import Iterable, Sequence

PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#999999")
SEV_COLOR = {"critical": "#C0392B", "warning": "#B9770E", "info": "#2874A6", None: "#7F8C8D"}
FONT = "font-family=\"system-ui,-apple-system,'Segoe UI',Roboto,sans-serif\""
_ids = itertools.count(1)


def esc(s: object) -> str:
    return html.escape(str(s), quote=True)


def _open(width: int, height: int, title: str, desc: str, cls: str = "plot") -> tuple[str, str]:
    n = next(_ids)
    tid, did = f"plot-t{n}", f"plot-d{n}"
    head = (f'<svg class="{cls}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}" role="img" aria-labelledby="{tid} {did}" {FONT} font-size="12">'
            f'<title id="{tid}">{esc(title)}</title><desc id="{did}">{esc(desc)}</desc>'
            f'<rect width="{width}" height="{height}" fill="#fff"/>')
    return head, "</svg>"


def nice_step(span: float, target: int = 5) -> float:
    if span <= 0:
        return 1.0
    raw = span / target
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def fmt_count(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:g}M"
    if v >= 1e4:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def fmt_us(us: float) -> str:
    """A duration in µs, compact (two significant digits): 16µs, 1ms, 33ms, 1.0s."""
    if us < 1:
        return "0"
    for unit, div in (("s", 1e6), ("ms", 1e3), ("µs", 1.0)):
        if us >= div:
            v = us / div
            return f"{v:.0f}{unit}" if v >= 10 or v == int(v) else f"{v:.1f}{unit}"
    return f"{us:g}µs"


def latency_histogram(buckets: Sequence[tuple[float, float, int]], title: str, desc: str = "",
                      xlabel: str = "latency (log₂ buckets)", ylabel: str = "calls",
                      marks: dict[str, float | None] | None = None, width: int = 540, height: int = 240,
                      min_slots: int = 14) -> str:
    """Bars per log2 bucket; bars at 10 ms and above in amber, at 1 s and above in red; p50/p99 marked.

    The x axis spans at least ``min_slots`` buckets (from 1 µs when they fit) so a narrow
    histogram still shows where it sits on the scale.
    """
    if not buckets:
        return ""
    lo_i = max(0, int(math.log2(max(buckets[0][0], 1))))
    hi_i = max(lo_i + 1, int(math.log2(max(buckets[-1][0], 1))) + 1)
    if hi_i - lo_i < min_slots:
        lo_i = max(0, hi_i - min_slots)
        hi_i = max(hi_i, lo_i + min_slots)
    slots = list(range(lo_i, hi_i))
    counts = dict.fromkeys(slots, 0)
    for lo, _hi, c in buckets:
        i = min(max(int(math.log2(max(lo, 1))), lo_i), hi_i - 1)
        counts[i] += c
    ml, mr, mt, mb = 56, 16, 34, 52
    pw, ph = width - ml - mr, height - mt - mb
    ymax = max(counts.values()) or 1
    step = nice_step(ymax, 4)
    top = math.ceil(ymax / step) * step
    head, tail = _open(width, height, title, desc or f"{title}: {sum(counts.values())} samples")
    out = [head, f'<text x="{ml}" y="18" font-size="13" font-weight="600" fill="#1b2631">{esc(title)}</text>']
    v = 0.0
    while v <= top + 1e-9:
        y = mt + ph - ph * v / top
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e8e8"/>'
                   f'<text x="{ml - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#4d5656">{fmt_count(v)}</text>')
        v += step
    bw = pw / len(slots)
    every = max(1, math.ceil(44 / bw))
    for k, i in enumerate(slots):
        c = counts[i]
        lo, hi = (0 if i == 0 else 2 ** i), 2 ** (i + 1)
        x = ml + k * bw
        if c:
            h = ph * c / top
            color = "#C0392B" if lo >= 1e6 else "#E69F00" if lo >= 1e4 else "#0072B2"
            out.append(f'<rect x="{x + 1:.1f}" y="{mt + ph - h:.1f}" width="{max(bw - 2, 1):.1f}" height="{h:.1f}" '
                       f'fill="{color}"><title>{fmt_us(lo)}–{fmt_us(hi)}: {c}</title></rect>')
        if (i - lo_i) % every == 0:
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{mt + ph}" y2="{mt + ph + 4}" stroke="#566573"/>'
                       f'<text x="{x:.1f}" y="{mt + ph + 16}" text-anchor="middle" fill="#4d5656">{fmt_us(lo)}</text>')
    for n, (name, val) in enumerate((marks or {}).items()):
        if not val:
            continue
        pos = min(max(math.log2(max(val, 1)) - lo_i, 0), len(slots))
        x = ml + pos * bw
        right = x > ml + pw - 90
        tx = x - 3 if right else x + 3
        anchor = ' text-anchor="end"' if right else ""
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{mt}" y2="{mt + ph}" stroke="#1b2631" stroke-dasharray="3,3"/>'
                   f'<text x="{tx:.1f}" y="{mt + 10 + 13 * n}" fill="#1b2631" font-size="11"{anchor}>'
                   f'{esc(name)} {fmt_us(val)}</text>')
    out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{mt + ph}" y2="{mt + ph}" stroke="#566573"/>'
               f'<line x1="{ml}" x2="{ml}" y1="{mt}" y2="{mt + ph}" stroke="#566573"/>'
               f'<text x="{ml + pw / 2}" y="{height - 10}" text-anchor="middle" fill="#1b2631">{esc(xlabel)}</text>'
               f'<text transform="translate(14,{mt + ph / 2}) rotate(-90)" text-anchor="middle" fill="#1b2631">'
               f'{esc(ylabel)}</text>')
    out.append(tail)
    return "".join(out)


def stacked_bars(rows: Sequence[tuple[str, dict[str, int]]], title: str, desc: str = "",
                 xlabel: str = "sockets", width: int = 760) -> str:
    """One horizontal bar per row (a process), split by category (socket state), with a legend."""
    rows = [r for r in rows if sum(r[1].values())]
    if not rows:
        return ""
    cats: list[str] = []
    for _, d in rows:
        for k in sorted(d, key=lambda k: -d[k]):
            if k not in cats:
                cats.append(k)
    colors = {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(cats)}
    ml, mr, mt = 200, 24, 34
    bar, gap = 18, 8
    legend_rows = math.ceil(len(cats) / 4)
    ph = len(rows) * (bar + gap)
    height = mt + ph + 40 + legend_rows * 18
    pw = width - ml - mr
    xmax = max(sum(d.values()) for _, d in rows)
    step = nice_step(xmax, 5)
    top = math.ceil(xmax / step) * step
    head, tail = _open(width, height, title, desc or title)
    out = [head, f'<text x="8" y="18" font-size="13" font-weight="600" fill="#1b2631">{esc(title)}</text>']
    v = 0.0
    while v <= top + 1e-9:
        x = ml + pw * v / top
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{mt}" y2="{mt + ph}" stroke="#e5e8e8"/>'
                   f'<text x="{x:.1f}" y="{mt + ph + 14}" text-anchor="middle" fill="#4d5656">{fmt_count(v)}</text>')
        v += step
    for r, (label, d) in enumerate(rows):
        y = mt + r * (bar + gap) + gap / 2
        lab = label if len(label) <= 30 else label[:29] + "…"
        out.append(f'<text x="{ml - 6}" y="{y + bar * 0.72:.1f}" text-anchor="end" fill="#1b2631">{esc(lab)}'
                   f'<title>{esc(label)}</title></text>')
        x = float(ml)
        for c in cats:
            n = d.get(c, 0)
            if not n:
                continue
            w = pw * n / top
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{bar}" fill="{colors[c]}">'
                       f'<title>{esc(label)}: {n} {esc(c)}</title></rect>')
            x += w
        out.append(f'<text x="{x + 4:.1f}" y="{y + bar * 0.72:.1f}" fill="#4d5656" font-size="11">'
                   f'{sum(d.values())}</text>')
    out.append(f'<text x="{ml + pw / 2}" y="{mt + ph + 30}" text-anchor="middle" fill="#1b2631">{esc(xlabel)}</text>')
    ly = mt + ph + 46
    for i, c in enumerate(cats):
        lx = 8 + (i % 4) * ((width - 16) / 4)
        yy = ly + (i // 4) * 18
        out.append(f'<rect x="{lx:.1f}" y="{yy - 10}" width="12" height="12" fill="{colors[c]}"/>'
                   f'<text x="{lx + 16:.1f}" y="{yy}" fill="#1b2631">{esc(c)}</text>')
    out.append(tail)
    return "".join(out)


def grouped_bars(groups: Sequence[tuple[str, dict[str, float]]], series: Sequence[str], title: str,
                 desc: str = "", ylabel: str = "% of time stalled", ymax: float | None = None,
                 threshold: float | None = None, width: int = 480, height: int = 220) -> str:
    """Vertical bars: one group per label (cpu, memory, io), one bar per series (avg10, avg60, avg300)."""
    if not groups:
        return ""
    ml, mr, mt, mb = 48, 12, 34, 48
    pw, ph = width - ml - mr, height - mt - mb
    top_v = max([v for _, d in groups for v in d.values()] + [threshold or 0, 1.0])
    top = ymax or max(10.0, math.ceil(top_v / nice_step(top_v, 4)) * nice_step(top_v, 4))
    step = nice_step(top, 4)
    head, tail = _open(width, height, title, desc or title)
    out = [head, f'<text x="8" y="18" font-size="13" font-weight="600" fill="#1b2631">{esc(title)}</text>']
    v = 0.0
    while v <= top + 1e-9:
        y = mt + ph - ph * v / top
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e8e8"/>'
                   f'<text x="{ml - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#4d5656">{v:g}</text>')
        v += step
    gw = pw / len(groups)
    bw = (gw - 16) / max(1, len(series))
    for g, (label, d) in enumerate(groups):
        gx = ml + g * gw + 8
        for s, name in enumerate(series):
            val = d.get(name)
            if val is None:
                continue
            h = ph * min(val, top) / top
            out.append(f'<rect x="{gx + s * bw:.1f}" y="{mt + ph - h:.1f}" width="{max(bw - 2, 1):.1f}" '
                       f'height="{max(h, 0.5):.1f}" fill="{PALETTE[s % len(PALETTE)]}">'
                       f'<title>{esc(label)} {esc(name)}: {val:g}</title></rect>')
        out.append(f'<text x="{gx + (gw - 16) / 2:.1f}" y="{mt + ph + 16}" text-anchor="middle" '
                   f'fill="#1b2631">{esc(label)}</text>')
    if threshold is not None and threshold <= top:
        y = mt + ph - ph * threshold / top
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#C0392B" '
                   f'stroke-dasharray="4,3"><title>threshold {threshold:g}</title></line>')
    for s, name in enumerate(series):
        lx = ml + s * 90
        out.append(f'<rect x="{lx}" y="{height - 16}" width="12" height="12" fill="{PALETTE[s % len(PALETTE)]}"/>'
                   f'<text x="{lx + 16}" y="{height - 6}" fill="#1b2631">{esc(name)}</text>')
    out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{mt + ph}" y2="{mt + ph}" stroke="#566573"/>'
               f'<text transform="translate(12,{mt + ph / 2}) rotate(-90)" text-anchor="middle" fill="#1b2631">'
               f'{esc(ylabel)}</text>')
    out.append(tail)
    return "".join(out)


TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
              172800, 604800]


def _time_ticks(start: datetime, end: datetime, target: int = 6) -> list[datetime]:
    span = max((end - start).total_seconds(), 1)
    step = next((s for s in TIME_STEPS if span / s <= target), TIME_STEPS[-1])
    t0 = datetime.fromtimestamp(math.ceil(start.timestamp() / step) * step, timezone.utc)
    out = []
    t = t0
    while t <= end:
        out.append(t)
        t += timedelta(seconds=step)
    return out


def timeline(lanes: Sequence[str], marks: Iterable[tuple[datetime, str, str, str | None, str]],
             spans: Iterable[tuple[datetime, datetime, str, str]] = (), lines: Iterable[tuple[datetime, str]] = (),
             title: str = "Timeline (UTC)", desc: str = "", width: int = 1130) -> str:
    """Events on one UTC axis, one lane per host/source.

    ``marks``: (time, lane, label, severity, shape) with shape "circle", "diamond" or
    "square"; ``spans``: (start, end, lane, label) shaded (the capture window);
    ``lines``: (time, label) vertical markers across all lanes (the trigger).
    """
    marks = list(marks)
    spans = list(spans)
    lines = list(lines)
    times = [m[0] for m in marks] + [s[0] for s in spans] + [s[1] for s in spans] + [x[0] for x in lines]
    if not times or not lanes:
        return ""
    start, end = min(times), max(times)
    pad = max((end - start).total_seconds() * 0.03, 1.0)
    start, end = start - timedelta(seconds=pad), end + timedelta(seconds=pad)
    span = (end - start).total_seconds()
    ml, mr, mt = 190, 20, 44
    lane_h = 28
    ph = lane_h * len(lanes)
    height = mt + ph + 64
    pw = width - ml - mr

    def xof(t: datetime) -> float:
        return ml + pw * (t - start).total_seconds() / span

    head, tail = _open(width, height, title, desc or f"{len(marks)} events from {start:%Y-%m-%d %H:%M:%S} to "
                       f"{end:%Y-%m-%d %H:%M:%S} UTC", cls="plot timeline")
    out = [head, f'<text x="8" y="18" font-size="13" font-weight="600" fill="#1b2631">{esc(title)}</text>']
    idx = {lane: i for i, lane in enumerate(lanes)}
    for lane, i in idx.items():
        y = mt + i * lane_h
        if i % 2 == 0:
            out.append(f'<rect x="{ml}" y="{y}" width="{pw}" height="{lane_h}" fill="#f4f6f7"/>')
        lab = lane if len(lane) <= 28 else lane[:27] + "…"
        out.append(f'<text x="{ml - 8}" y="{y + lane_h / 2 + 4}" text-anchor="end" fill="#1b2631">{esc(lab)}'
                   f'<title>{esc(lane)}</title></text>')
    for s0, s1, lane, label in spans:
        if lane not in idx:
            continue
        y = mt + idx[lane] * lane_h
        x0, x1 = xof(s0), xof(s1)
        out.append(f'<rect x="{x0:.1f}" y="{y + 3}" width="{max(x1 - x0, 3):.1f}" height="{lane_h - 6}" '
                   f'fill="#AED6F1" stroke="#2874A6"><title>{esc(label)}</title></rect>')
    ticks = _time_ticks(start, end)
    multi_day = start.date() != end.date()
    for t in ticks:
        x = xof(t)
        fmt = "%m-%d %H:%M" if multi_day else ("%H:%M:%S" if span < 600 else "%H:%M")
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{mt}" y2="{mt + ph}" stroke="#d5d8dc" stroke-width="0.6"/>'
                   f'<text x="{x:.1f}" y="{mt + ph + 16}" text-anchor="middle" fill="#4d5656">{t.strftime(fmt)}</text>')
    last_label_x = -1e9
    for t, label in lines:
        x = xof(t)
        show = x - last_label_x > 60          # a second trigger seconds later: the line, not another label
        if show:
            last_label_x = x
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{mt - 8}" y2="{mt + ph}" stroke="#6C3483" stroke-width="1.5" '
                   f'stroke-dasharray="5,3"><title>{esc(label)}</title></line>'
                   + (f'<text x="{x + 3:.1f}" y="{mt - 10}" fill="#6C3483" font-size="11">{esc(label[:40])}</text>'
                      if show else ""))
    for t, lane, label, sev, shape in sorted(marks, key=lambda m: {"critical": 2, "warning": 1}.get(m[3] or "", 0)):
        if lane not in idx:
            continue
        x, y = xof(t), mt + idx[lane] * lane_h + lane_h / 2
        color = SEV_COLOR.get(sev, SEV_COLOR[None])
        tip = f"<title>{esc(t.strftime('%Y-%m-%d %H:%M:%S'))} UTC — {esc(label)}</title>"
        if shape == "diamond":
            out.append(f'<path d="M{x:.1f} {y - 7:.1f}l7 7l-7 7l-7-7z" fill="{color}" stroke="#fff">{tip}</path>')
        elif shape == "square":
            out.append(f'<rect x="{x - 5:.1f}" y="{y - 5:.1f}" width="10" height="10" fill="{color}" '
                       f'stroke="#fff">{tip}</rect>')
        else:
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5.5" fill="{color}" stroke="#fff">{tip}</circle>')
    out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{mt + ph}" y2="{mt + ph}" stroke="#566573"/>'
               f'<text x="{ml + pw / 2}" y="{mt + ph + 34}" text-anchor="middle" fill="#1b2631">time (UTC)'
               + (f", {start:%Y-%m-%d}" if not multi_day else "") + '</text>')
    lx = ml
    for label, color, shape in (("critical", SEV_COLOR["critical"], "◆"), ("warning", SEV_COLOR["warning"], "■"),
                                ("info", SEV_COLOR["info"], "●"), ("other", SEV_COLOR[None], "●"),
                                ("capture", "#5DADE2", "▬")):
        out.append(f'<text x="{lx}" y="{height - 8}" fill="{color}" font-size="14">{shape}</text>'
                   f'<text x="{lx + 16}" y="{height - 8}" fill="#1b2631">{label}</text>')
        lx += 100
    out.append(tail)
    return "".join(out)
