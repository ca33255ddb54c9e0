"""Latency histograms as the eBPF collectors write them, normalised to (low_us, high_us, count) buckets.

bcc tools count latencies in power-of-two slots: slot ``i`` holds values in
``[2**i, 2**(i+1))`` of the unit. Collectors may write them as a list of counts
(index = slot), as ``[low, high, count]`` triples, as dicts (``{"low", "high",
"count"}``, ``{"le", "count"}``, ``{"slot", "count"}``...) or as ``{slot: count}``;
a ``unit`` of ``ns``/``us``/``ms`` (default microseconds) scales them. Percentiles
are estimated from buckets (upper bound of the bucket holding the rank) when the
collector did not give exact ones.
"""
from __future__ import annotations

from typing import Any

UNIT = {"ns": 0.001, "nsecs": 0.001, "us": 1.0, "usecs": 1.0, "µs": 1.0, "ms": 1000.0, "msecs": 1000.0,
        "s": 1e6, "secs": 1e6}
HIST_KEYS = ("hist", "histogram", "log2_hist", "log2", "buckets", "latency_hist", "slots", "dist")

Bucket = tuple[float, float, int]


def _n(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _slot(i: int) -> tuple[float, float]:
    return (0.0, 1.0) if i <= 0 else (float(2 ** i), float(2 ** (i + 1)))


def buckets(h: Any, unit: str | None = None) -> list[Bucket]:
    """A histogram in any of the shapes above as sorted (low_us, high_us, count), empty ones dropped."""
    scale = UNIT.get((unit or "us").lower(), 1.0)
    out: list[Bucket] = []
    if isinstance(h, dict):
        for k in HIST_KEYS:
            if k in h and isinstance(h[k], (list, dict)):
                return buckets(h[k], h.get("unit") or unit)
        for k, v in h.items():
            c = _n(v)
            if c is None:
                continue
            if str(k).lstrip("-").isdigit():
                lo, hi = _slot(int(k))
            elif "-" in str(k):
                a, _, b = str(k).partition("-")
                if _n(a) is None or _n(b) is None:
                    continue
                lo, hi = float(a), float(b)
            else:
                continue
            out.append((lo, hi, int(c)))
    elif isinstance(h, list):
        for i, e in enumerate(h):
            if isinstance(e, (int, float)) and not isinstance(e, bool):
                lo, hi = _slot(i)
                out.append((lo, hi, int(e)))
            elif isinstance(e, (list, tuple)) and len(e) >= 3:
                lo, hi, c = _n(e[0]), _n(e[1]), _n(e[2])
                if lo is not None and hi is not None and c is not None:
                    out.append((lo, hi, int(c)))
            elif isinstance(e, dict):
                c = _n(e.get("count", e.get("value", e.get("n"))))
                if c is None:
                    continue
                lo = next((_n(e[k]) for k in ("low", "lo", "start", "from", "min", "low_us", "usecs_low", "ge")
                           if k in e), None)
                hi = next((_n(e[k]) for k in ("high", "hi", "end", "to", "max", "high_us", "usecs_high", "le", "lt")
                           if k in e), None)
                if lo is None and hi is None and "slot" in e:
                    lo, hi = _slot(int(_n(e["slot"]) or 0))
                if hi is None and lo is not None:
                    hi = lo * 2 if lo else 1.0
                if lo is None and hi is not None:
                    lo = hi / 2 if hi > 1 else 0.0
                if lo is None or hi is None:
                    continue
                out.append((lo, hi, int(c)))
    out = [(lo * scale, hi * scale, c) for lo, hi, c in out if c > 0]
    out.sort()
    return out


def find_hist(rec: dict[str, Any]) -> list[Bucket]:
    unit = rec.get("unit") or rec.get("hist_unit")
    for k in HIST_KEYS:
        if k in rec:
            return buckets(rec[k], unit)
    return []


def total(bs: list[Bucket]) -> int:
    return sum(c for _, _, c in bs)


def percentile(bs: list[Bucket], q: float) -> float | None:
    """Upper bound of the bucket holding the q-quantile (a conservative estimate)."""
    n = total(bs)
    if not n:
        return None
    rank = q * n
    seen = 0
    for _lo, hi, c in bs:
        seen += c
        if seen >= rank:
            return hi
    return bs[-1][1]


def merge(many: list[list[Bucket]]) -> list[Bucket]:
    acc: dict[tuple[float, float], int] = {}
    for bs in many:
        for lo, hi, c in bs:
            acc[(lo, hi)] = acc.get((lo, hi), 0) + c
    return sorted((lo, hi, c) for (lo, hi), c in acc.items())


def records(data: Any, *keys: str) -> list[dict[str, Any]]:
    """The list of records in a collector's JSON, whatever the key (records, syscalls, events...)."""
    if isinstance(data, list):
        return [r for r in data if isinstance(r, dict)]
    if not isinstance(data, dict):
        return []
    for k in keys + ("records", "items", "entries", "events", "results", "data"):
        v = data.get(k)
        if isinstance(v, list):
            return [r for r in v if isinstance(r, dict)]
        if isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values()):
            return [{"key": kk, **vv} for kk, vv in v.items()]
    return []
