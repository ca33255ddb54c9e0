"""When did it start, and what moved first: a baseline and the first sustained departure per signal.

Method, per signal (``agent.recorder.signals``):

1. **Baseline**: the points before ``T0 - guard`` (T0 = the incident's start; ``guard`` =
   15 min, or half of the recorded time before T0 when less was recorded), at least 4 of
   them (else the first half of the window); its median and MAD (median absolute
   deviation, scaled by 1.4826 to a standard deviation).
2. **Departure threshold**: ``max(6 x sd, the signal's floor, rel x |median|)`` away from
   the median, in the signal's bad direction (up for PSI, down for memory available).
3. **First sustained departure**: the first point beyond the threshold with at least 3 of
   the 4 points from it beyond it (all of them when fewer remain, at least 2). Counters
   whose baseline is all zero (OOM kills, listen-queue overflows, conntrack drops) depart
   at their first increment.
4. **Onset**: from that point, walk back while the points stay beyond a smaller noise band
   (``max(3 x sd, floor / 2)``) on the same side: a change that grows slowly is dated when
   it left the noise, not when it crossed the threshold. The onset is the first sample
   that showed it; the change began between the sample before it and that one (rates
   cover exactly that interval), so the time is exact to one interval.
5. A departure at the very first point is "already abnormal at the window's start":
   the window began inside the problem, and no onset is invented.

Honesty: order between signals within one interval is "same time"; order is correlation,
not cause; a gap or a reboot inside the window splits the series (rates never span them).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable

from agent.recorder.signals import BOTH, DOWN, EVENT, UP, Series
from agent.recorder.window import iso

GUARD_S = 900.0
K_SIGMA = 6.0
NOISE_SIGMA = 3.0
MIN_BASELINE = 4


@dataclass
class Departure:
    signal: str
    label: str
    unit: str
    group: str
    direction: str                  # up | down
    baseline: float                 # median
    spread: float                   # robust sd
    threshold: float
    onset: float                    # wall time of the first sample showing it
    onset_after: float | None       # the sample before: the change began after this
    value: float                    # at onset
    peak: float
    peak_t: float
    already: bool = False           # abnormal from the window's first point
    kind: str = ""
    interval: float = 0.0
    points: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self, t0: float | None = None) -> dict[str, Any]:
        d = {"signal": self.signal, "label": self.label, "unit": self.unit, "group": self.group,
             "direction": self.direction, "kind": self.kind, "baseline": _r(self.baseline), "spread": _r(self.spread),
             "threshold": _r(self.threshold), "onset": iso(self.onset), "onset_after": iso(self.onset_after),
             "value": _r(self.value), "peak": _r(self.peak), "peak_at": iso(self.peak_t),
             "already_abnormal": self.already, "interval_s": self.interval}
        if t0 is not None:
            d["before_t0_s"] = round(t0 - self.onset, 1)
        return d

    def sentence(self, t0: float | None = None, t0_words: str = "the incident's start") -> str:
        """"PSI memory some rose from 0 to 35 % at 09:14:05, 7 min before the page"."""
        verb = "rose" if self.direction == UP else "fell"
        when = _hms(self.onset)
        if self.kind == EVENT and self.baseline == 0:
            what = f"{self.label}: {fmt(self.value, self.unit)} (none before)"
            head = f"{what} at {when}"
        else:
            head = (f"{self.label} {verb} from {fmt(self.baseline, self.unit)} to {fmt(self.value, self.unit)} "
                    f"at {when}"
                    + (f" (peak {fmt(self.peak, self.unit)} at {_hms(self.peak_t)})" if self.peak != self.value
                       else ""))
        if self.already:
            head = f"{self.label} was already {fmt(self.value, self.unit)} when the window began ({when})"
        if t0 is not None and not self.already:
            head += ", " + relative(self.onset, t0, t0_words)
        return head


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def _hms(t: float) -> str:
    return (iso(t) or "")[11:19]


def relative(t: float, t0: float, words: str) -> str:
    d = t0 - t
    a = abs(d)
    amount = f"{a:.0f} s" if a < 120 else f"{a / 60:.0f} min" if a < 7200 else f"{a / 3600:.1f} h"
    if a < 1:
        return f"at {words}"
    return f"{amount} {'before' if d > 0 else 'after'} {words}"


def fmt(v: float, unit: str) -> str:
    if unit in ("%", "% of a core", "% of time", "% of max"):
        return f"{v:.0f} %" if abs(v) >= 10 else f"{v:.1f} %"
    n = f"{v:,.0f}" if abs(v) >= 100 or float(v).is_integer() else f"{v:.1f}" if abs(v) >= 1 else f"{v:.2g}"
    return f"{n} {unit}".strip() if unit else n


def baseline_points(points: list[tuple[float, float]], t0: float | None) -> list[float]:
    if not points:
        return []
    first = points[0][0]
    if t0 is None:
        t0 = points[-1][0]
    guard = min(GUARD_S, max(0.0, (t0 - first) / 2))
    base = [v for t, v in points if t <= t0 - guard]
    if len(base) < MIN_BASELINE:
        base = [v for _, v in points[:max(MIN_BASELINE, len(points) // 2)]]
    return base


def departure(s: Series, t0: float | None, interval: float) -> Departure | None:
    pts = s.points
    if len(pts) < MIN_BASELINE + 1:
        return None
    base = baseline_points(pts, t0)
    if len(base) < MIN_BASELINE:
        return None
    med = statistics.median(base)
    sd = 1.4826 * statistics.median([abs(v - med) for v in base])
    spec = s.spec
    zero_event = spec.kind == EVENT and all(v == 0 for v in base)
    if zero_event:
        thr = 0.5                        # any increment
        noise = 0.5
    else:
        thr = max(K_SIGMA * sd, spec.floor, spec.rel * abs(med), 1e-9)
        noise = max(NOISE_SIGMA * sd, spec.floor / 2, 1e-9)
    dirs = (UP, DOWN) if spec.direction == BOTH else (spec.direction,)
    best: Departure | None = None
    for direction in dirs:
        sign = 1.0 if direction == UP else -1.0
        beyond = [sign * (v - med) > thr for _, v in pts]
        first = None
        for i, b in enumerate(beyond):
            if not b:
                continue
            if zero_event:
                first = i
                break
            rest = beyond[i:i + 4]
            need = 3 if len(rest) >= 4 else len(rest)
            if len(rest) >= 2 and sum(rest) >= need:
                first = i
                break
        if first is None:
            continue
        j = first
        while j > 0 and sign * (pts[j - 1][1] - med) > noise:
            j -= 1
        after = pts[first:]
        peak_t, peak = max(after, key=lambda p: sign * p[1])
        d = Departure(s.name, spec.label, spec.unit, spec.group, direction, med, sd, thr, pts[j][0],
                      pts[j - 1][0] if j > 0 else None, pts[j][1], peak, peak_t, already=(j == 0), kind=spec.kind,
                      interval=interval, points=len(pts))
        if zero_event:
            d.value = sum(v for _, v in pts[j:])     # events since the onset
            d.peak, d.peak_t = d.value, pts[-1][0]
        if best is None or d.onset < best.onset:
            best = d
    return best


def departures(series: Iterable[Series], t0: float | None, interval: float) -> list[Departure]:
    """Every signal's first sustained departure, earliest first (already-abnormal ones last)."""
    out = [d for d in (departure(s, t0, interval) for s in series) if d is not None]
    out.sort(key=lambda d: (d.already, d.onset, d.signal))
    return out


def first_movers(deps: list[Departure], interval: float) -> list[Departure]:
    """The departures tied for first (within one interval of the earliest onset)."""
    live = [d for d in deps if not d.already]
    if not live:
        return []
    t = live[0].onset
    return [d for d in live if d.onset - t <= interval + 1e-6]
