"""Run-queue latency: how long runnable threads waited for a CPU (eBPF ``runqlat``).

Triggers (``collectors/runqlat/*.json``: a log2 histogram of the time from wake-up to
running, host-wide and, when the collector splits it, per process): a p99 of 10 ms or
more (warning) or 50 ms or more (critical), over at least 20 samples. Runnable work
that waits this long for a CPU adds that delay to every request: CPU saturation, a
CPU quota (cgroup throttling), or noisy neighbours on the hypervisor.
Evidence: the histogram and its percentiles in the collector's JSON. The report plots it.
"""
from __future__ import annotations

from typing import Any, Iterator

from agent.report import hist
from agent.report.model import CRITICAL, WARNING, Evidence, Finding
from agent.report.rules import Rule
from agent.report.rules._util import human_us, num
from agent.report.rules.syscall_latency import us

WARN_US, CRIT_US, MIN_SAMPLES = 10_000, 50_000, 20


def series(b) -> list[tuple[str, str, dict[str, Any], list[hist.Bucket]]]:
    """(file, label, record, buckets): the host-wide histogram first, then per-process ones."""
    out = []
    for rel in b.files("collectors/runqlat/*.json"):
        data = b.json(rel)
        if not isinstance(data, dict):
            continue
        top = hist.find_hist(data)
        if top:
            out.append((rel, "all CPUs", data, top))
        for r in hist.records(data, "per_pid", "per_process", "processes", "pids", "per_cgroup"):
            bs = hist.find_hist(r)
            if bs:
                label = f"{r.get('comm') or r.get('name') or '?'} (pid {r.get('pid')})" if r.get("pid") is not None \
                    else str(r.get("cgroup") or r.get("key") or r.get("comm") or "?")
                out.append((rel, label, r, bs))
    return out


def evaluate(b) -> Iterator[Finding]:
    for rel, label, r, bs in series(b):
        n = int(num(r.get("count")) or hist.total(bs))
        if n < MIN_SAMPLES:
            continue
        p99 = us(r, "p99") or hist.percentile(bs, 0.99)
        p50 = us(r, "p50") or hist.percentile(bs, 0.5)
        mx = us(r, "max") or bs[-1][1]
        if p99 is None or p99 < WARN_US:
            continue
        yield Finding(
            CRITICAL if p99 >= CRIT_US else WARNING,
            f"Run-queue latency for {label}: p99 {human_us(p99)} (p50 {human_us(p50)}, max {human_us(mx)})",
            f"Threads that were ready to run waited up to {human_us(p99)} (99th percentile of {n} wake-ups) before "
            "getting a CPU. That delay adds to every request they serve: more runnable work than CPUs, a CPU quota "
            "throttling the cgroup, or CPU stolen by the hypervisor.",
            rule="runqueue_latency", host=b.host,
            evidence=[Evidence(b.host, rel, record=label,
                               excerpt=f"samples {n}, p50 {human_us(p50)}, p99 {human_us(p99)}, max {human_us(mx)}")],
            data={"label": label, "p99_us": p99, "p50_us": p50, "samples": n})


RULE = Rule(name="runqueue_latency", summary="threads waiting long for a CPU (eBPF run-queue latency)",
            evaluate=evaluate, reads=("runqlat",), severity="critical (p99 ≥ 50 ms); warning (p99 ≥ 10 ms)", order=51)
