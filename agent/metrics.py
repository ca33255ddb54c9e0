"""Prometheus text exposition (format 0.0.4) for the daemon, without a client library.

Where it sits: the daemon declares its instruments in ``agent.daemon.telemetry``,
counts into that ``Registry`` and serves ``registry.render()`` at ``GET /metrics``. Counters, gauges and histograms
with labels are all the daemon needs; a gauge may be a callable read at scrape.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _esc(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_esc(v)}"' for n, v in zip(names, values, strict=False)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(v: float) -> str:
    if v == math.inf:
        return "+Inf"
    if float(v).is_integer():
        return str(int(v))
    return repr(float(v))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_: str, labels: Iterable[str] = ()):
        self.name, self.help, self.labelnames = name, help_, tuple(labels)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_: str, labels: Iterable[str] = ()):
        super().__init__(name, help_, labels)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, by: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + by

    def get(self, *labels: str) -> float:
        return self.values.get(labels, 0.0)

    def render(self) -> list[str]:
        out = self.header()
        if not self.values and not self.labelnames:
            out.append(f"{self.name} 0")
        for lv, v in sorted(self.values.items()):
            out.append(f"{self.name}{_labels(self.labelnames, lv)} {_num(v)}")
        return out


class Gauge(_Metric):
    kind = "gauge"

    def __init__(self, name: str, help_: str, labels: Iterable[str] = (), fn: Callable[[], float] | None = None):
        super().__init__(name, help_, labels)
        self.values: dict[tuple[str, ...], float] = {}
        self.fn = fn

    def set(self, value: float, *labels: str) -> None:
        self.values[labels] = float(value)

    def render(self) -> list[str]:
        out = self.header()
        if self.fn is not None:
            try:
                out.append(f"{self.name} {_num(float(self.fn()))}")
            except Exception:  # noqa: BLE001 - a failing probe must not break the scrape
                out.append(f"{self.name} NaN")
            return out
        for lv, v in sorted(self.values.items()):
            out.append(f"{self.name}{_labels(self.labelnames, lv)} {_num(v)}")
        return out


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_: str, buckets: Iterable[float], labels: Iterable[str] = ()):
        super().__init__(name, help_, labels)
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self.series: dict[tuple[str, ...], list[float]] = {}   # counts per bucket..., sum, count

    def observe(self, value: float, *labels: str) -> None:
        s = self.series.setdefault(labels, [0.0] * (len(self.buckets) + 2))
        for i, b in enumerate(self.buckets):
            if value <= b:
                s[i] += 1
        s[-2] += value
        s[-1] += 1

    def count(self, *labels: str) -> float:
        return self.series.get(labels, [0.0])[-1]

    def render(self) -> list[str]:
        out = self.header()
        for lv, s in sorted(self.series.items()):
            for i, b in enumerate(self.buckets):
                le = 'le="' + _num(b) + '"'
                out.append(f"{self.name}_bucket{_labels(self.labelnames, lv, le)} {_num(s[i])}")
            out.append(f"{self.name}_sum{_labels(self.labelnames, lv)} {_num(s[-2])}")
            out.append(f"{self.name}_count{_labels(self.labelnames, lv)} {_num(s[-1])}")
        return out


class Registry:
    def __init__(self) -> None:
        self.metrics: list[_Metric] = []

    def add(self, metric):
        self.metrics.append(metric)
        return metric

    def render(self) -> str:
        lines: list[str] = []
        for m in self.metrics:
            lines.extend(m.render())
        return "\n".join(lines) + "\n"
