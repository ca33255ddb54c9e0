"""Run-queue latency: how long runnable threads waited for a CPU (eBPF ``runqlat``).

Triggers (``collectors/runqlat/*.json``: a log2 histogram of the time from wake-up to
running, host-wide and, when the collector splits it, per process): a p99 of 10 ms or
more (warning) or 50 ms or more (critical), over at least 20 samples; one finding for
the host, one listing the processes (worst first). Runnable work
that waits this long for a CPU adds that delay to every request: CPU saturation, a
CPU quota (cgroup throttling), or noisy neighbours on the hypervisor.
Evidence: the histogram and its percentiles in the collector's JSON. The report plots it.
"""
from __future__ import annotations

from typing import Any, Iterator

from agent.report import hist
from agent.report.model import CRITICAL, WARNING, Evidence, Finding
from agent.report.rules import Rule
from agent.report.rules._util import cap, human_us, join_names, num
from agent.report.rules.syscall_latency import us

WARN_US, CRIT_US, MIN_SAMPLES = 10_000, 50_000, 20


def series(b) -> list[tuple[str, str, dict[str, Any], list[hist.Bucket]]]:
    """(file, label, record, buckets): the host-wide histogram first, then per-process ones.

    A record without a histogram is kept when it has percentiles (its buckets are then empty).
    """
    out = []
    for rel in b.files("collectors/runqlat/*.json"):
        data = b.json(rel)
        if not isinstance(data, dict):
            continue
        top = hist.find_hist(data)
        if top or us(data, "p99") is not None:
            out.append((rel, "all CPUs", data, top))
        for r in hist.records(data, "per_pid", "per_process", "processes", "pids", "per_cgroup"):
            bs = hist.find_hist(r)
            if bs or us(r, "p99") is not None:
                label = f"{r.get('comm') or r.get('name') or '?'} (pid {r.get('pid')})" if r.get("pid") is not None \
                    else str(r.get("cgroup") or r.get("key") or r.get("comm") or "?")
                out.append((rel, label, r, bs))
    return out


def evaluate(b) -> Iterator[Finding]:
    procs = []
    for rel, label, r, bs in series(b):
        n = int(num(r.get("count")) or hist.total(bs))
        if n < MIN_SAMPLES:
            continue
        p99 = us(r, "p99") or hist.percentile(bs, 0.99)
        p50 = us(r, "p50") or hist.percentile(bs, 0.5)
        mx = us(r, "max") or (bs[-1][1] if bs else None)
        if p99 is None or p99 < WARN_US:
            continue
        ev = Evidence(b.host, rel, record=label,
                      excerpt=f"samples {n}, p50 {human_us(p50)}, p99 {human_us(p99)}, max {human_us(mx)}")
        if label != "all CPUs":
            procs.append((p99, label, p50, mx, n, ev))
            continue
        yield Finding(
            CRITICAL if p99 >= CRIT_US else WARNING,
            f"Run-queue latency for all CPUs: p99 {human_us(p99)} (p50 {human_us(p50)}, max {human_us(mx)})",
            f"Threads that were ready to run waited up to {human_us(p99)} (99th percentile of {n} wake-ups) before "
            "getting a CPU. That delay adds to every request they serve: more runnable work than CPUs, a CPU quota "
            "throttling the cgroup, or CPU stolen by the hypervisor.",
            rule="runqueue_latency", host=b.host, evidence=[ev],
            data={"label": label, "p99_us": p99, "p50_us": p50, "samples": n})
    if procs:
        procs.sort(key=lambda p: -p[0])
        worst = procs[0]
        names = [p[1] for p in procs]
        yield Finding(
            CRITICAL if worst[0] >= CRIT_US else WARNING,
            f"Run-queue latency: {len(procs)} process{'es' if len(procs) != 1 else ''} waited for a CPU, p99 up to "
            f"{human_us(worst[0])}, worst {worst[1]}",
            f"Runnable threads of {join_names(names)} waited before running: p99 {human_us(worst[0])}, median "
            f"{human_us(worst[2])} for the worst. Every wake-up (a request arriving, a lock released, I/O done) "
            "waited that long for a CPU: too many runnable threads for the CPUs they may use (CPU affinity, a "
            "cgroup quota), or CPU-hungry neighbours.",
            rule="runqueue_latency", host=b.host, evidence=cap([p[5] for p in procs]),
            data={"processes": [{"label": p[1], "p99_us": p[0], "p50_us": p[2], "samples": p[4]} for p in procs],
                  "p99_us": worst[0]})


RULE = Rule(name="runqueue_latency", summary="threads waiting long for a CPU (eBPF run-queue latency)",
            evaluate=evaluate, reads=("runqlat",), severity="critical (p99 ≥ 50 ms); warning (p99 ≥ 10 ms)", order=51)
