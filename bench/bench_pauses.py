#!/usr/bin/env python3
"""Benchmark: the longest pause each dump technique causes in a running target.

Method (the ticker approach of ../shared/runtime-targets/measure.py): each target (CPython,
JVM, Node.js, C, and Go when a Go toolchain is present; ``tests/targets/``) has a ticker that
appends CLOCK_MONOTONIC nanoseconds to a file about every millisecond (JVM: a Java thread, so it
stops at safepoints; Go: a goroutine). The pause of one capture is the
longest gap between two ticks overlapping the capture window; the noise floor is the longest gap
in an idle window of the same target just before. Each technique runs through goldenhour's own
collector (``agent.runner.run_one``: the real checks, priorities and helpers), a few times.
(Node: the ticker is a setInterval on the main event loop.)
Rows: py-spy (threads/python), jcmd Thread.print (threads/jvm), eu-stack and gdb
(threads/native), the Node report + JS stack (threads/node), Go pprof and Delve, gcore
(heap/native, heap/python), jcmd GC.heap_dump (heap/jvm), the Node heap snapshot (heap/node).

    .venv/bin/python bench/bench_pauses.py [--quick]
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import dumptargets as dt
from agent import runner


def max_gap_ms(ticker: Path, lo: int, hi: int) -> float:
    """Longest gap (ms) between consecutive ticks whose interval overlaps [lo, hi] (ns)."""
    with open(ticker, "rb") as fh:
        fh.seek(max(0, os.path.getsize(ticker) - 40 * 200_000))   # the last ~200 s of ticks at most
        data = fh.read().split()
    ticks = [int(x) for x in data[1:] if x.isdigit()]
    best, prev = 0, None
    for t in ticks:
        if prev is not None and t > lo and prev < hi:
            best = max(best, t - prev)
        prev = t
    return round(best / 1e6, 2)


def measure(target: dt.Target, collector: str, work: Path, options: dict | None = None) -> dict:
    """One capture through the real runner: (max gap during it, noise floor before it, status)."""
    idle = 0.5
    time.sleep(idle)
    t0 = time.monotonic_ns()
    res = runner.run_one(collector, work / f"s{t0}", target=dt.agent_target(target.pid), options=options or {},
                         capture={"incident": "BENCH", "reserve_bytes": 2**28})
    t1 = time.monotonic_ns()
    time.sleep(0.2)
    shutil.rmtree(work / f"s{t0}", ignore_errors=True)
    target.assert_running()
    return {"gap": max_gap_ms(target.ticker, t0, t1 + 5_000_000),
            "floor": max_gap_ms(target.ticker, t0 - int(idle * 1e9) + 100_000_000, t0),
            "status": res.status, "reason": res.reason, "tool": res.notes.get("tool") or res.notes.get("method"),
            "wall_s": (t1 - t0) / 1e9}


def row(name: str, target_desc: str, runs: list[dict], goal_ms: float, notes: str) -> dict:
    ok = [r for r in runs if r["status"] == "ok"]
    gaps = [r["gap"] for r in ok] or [float("nan")]
    floors = [r["floor"] for r in runs]
    med = round(statistics.median(gaps), 2)
    why = "" if len(ok) == len(runs) else f"; {len(runs) - len(ok)} run(s) {runs[0]['status']}: {runs[0]['reason']}"
    return {"name": name, "unit": "ms", "median": med, "min": min(gaps), "max": max(gaps), "runs": len(ok),
            "target": f"longest tick gap < {goal_ms:g} ms", "met": bool(ok) and med < goal_ms,
            "notes": f"{target_desc}; tool: {ok[0]['tool'] if ok else '-'}; noise floor (idle, same target) "
                     f"median {statistics.median(floors):.1f} ms, max {max(floors):.1f} ms; "
                     f"capture wall median {statistics.median(r['wall_s'] for r in runs):.2f} s. {notes}{why}"}


def run(quick: bool = False) -> dict:
    reps, heavy = (2, 1) if quick else (4, 2)
    work = Path(tempfile.mkdtemp(prefix="gh-bench-pauses-"))
    results: list[dict] = []
    plan = [
        # (target factory, description, [(row name, collector, options, reps, goal ms, notes)])
        (lambda: dt.python_target(work, heap_mb=64), "CPython 3, 64 MiB retained, 6 threads",
         [("threads: py-spy dump --native (CPython)", "threads", {}, reps, 100, "ptrace stop while py-spy reads"),
          ("heap: gcore (CPython)", "heap", {}, heavy, 2000, "whole dump under ptrace stop; core = VmSize")]),
        (lambda: dt.jvm_target(work, "-Xmx512m", name="jvm", heap_mb=128), "HotSpot 17, 128 MiB retained, -Xmx512m",
         [("threads: jcmd Thread.print (JVM)", "threads", {}, reps, 100, "safepoint; jcmd's JVM start not a pause"),
          ("threads: jcmd Thread.print -l (JVM)", "threads", {"jvm_locks": True}, reps, 150, "walks the heap"),
          ("heap: jcmd GC.heap_dump (JVM)", "heap", {}, heavy, 2000, "full GC + dump in one safepoint")]),
        (lambda: dt.node_target(work, "--main-ticker", name="node", heap_mb=32),
         "Node 20, 32 MiB retained, ticker on the main event loop",
         [("threads: Node report + JS stack (CDP)", "threads", {}, reps, 100,
           "SIGUSR1 opens the inspector (closed after); idle loop: Debugger.pause waits 1 s then cancels"),
          ("heap: Node heap snapshot (CDP)", "heap", {}, heavy, 3000, "the event loop is blocked for the snapshot")]),
        (lambda: dt.c_target(work, heap_mb=128, name="c"), "C, 128 MiB malloc'd, 5 threads",
         [("threads: eu-stack (native)", "threads", {}, reps, 50, "ptrace stop"),
          ("threads: gdb thread apply all bt (native)", "threads", {"native_tool": "gdb"}, reps, 500,
           "symbols load while stopped"),
          ("heap: gcore (native)", "heap", {}, heavy, 2000, "whole dump under ptrace stop")]),
    ]
    if dt.build_go():
        plan.append((lambda: dt.go_target(work, "-pprof", "127.0.0.1:16061"), "Go 1.19, 4 MiB retained, pprof",
                     [("threads: Go pprof goroutine?debug=2", "threads", {"go_pprof": "127.0.0.1:16061"}, reps, 50,
                       "stop-the-world goroutine walk"),
                      ("threads: Go dlv attach (answers n)", "threads", {"go_pprof_discover": False}, heavy, 2000,
                       "ptrace + Delve start; one grouped command")]))
        plan.append((lambda: dt.go_target(work, "-park", "4000"), "Go 1.19, 4 MiB retained, 4,000 leaked goroutines",
                     [("threads: Go dlv attach, 4,000 goroutines (grouped listing)", "threads", {}, heavy, 2000,
                       "the whole process is stopped for Delve's session: goroutines -group userloc -t 30")]))
    try:
        for make, desc, rows in plan:
            target = make()
            try:
                time.sleep(1.0)                     # warm-up: JIT, page faults of the fill
                for name, coll, opts, n, goal, notes in rows:
                    runs = [measure(target, coll, work, opts) for _ in range(n)]
                    results.append(row(name, desc, runs, goal, notes))
            finally:
                target.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"area": "pauses", "results": results,
            "commands": [".venv/bin/python bench/bench_pauses.py" + (" --quick" if quick else "")],
            "machine": f"{platform.node()} {os.cpu_count()} cpus, kernel {platform.release()}, "
                       f"Python {platform.python_version()}"}


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
