#!/usr/bin/env python3
"""Benchmark: the idle daemon's memory and CPU over one minute.

Method: start ``goldenhour daemon`` (bench_webhook.py's set-up: a temporary store, the generic
webhook enabled, the spool uploader's timer on), wait until it is ready and answered
``/healthz`` once, then over ``WINDOW`` seconds (60; 20 with ``--quick``) sample its resident
memory every second from /proc and take its CPU time (user + system, from /proc/PID/stat)
at both ends. No request is sent during the window: this is what goldenhour costs a host
between incidents. Targets: RSS under 60 MB (the CPU figure has none in the issue; an idle
daemon should be near 0 %).

    .venv/bin/python bench/bench_idle.py [--quick]
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_webhook import Daemon

HZ = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def run(quick: bool = False) -> dict:
    window = 20 if quick else 60
    with tempfile.TemporaryDirectory(prefix="gh-bench-idle-", dir="/var/tmp") as d:
        dm = Daemon(Path(d))
        try:
            with urllib.request.urlopen(f"{dm.url}/healthz", timeout=10) as r:
                json.loads(r.read())
            time.sleep(2)                      # let start-up work (ledger sweep, first spool pass) end
            c0, t0 = cpu_s(dm.proc.pid), time.monotonic()
            rss = []
            while time.monotonic() - t0 < window:
                rss.append(dm.rss_mb())
                time.sleep(1)
            c1, t1 = cpu_s(dm.proc.pid), time.monotonic()
            threads = len(os.listdir(f"/proc/{dm.proc.pid}/task"))
        finally:
            dm.stop()
    cpu_pct = (c1 - c0) / (t1 - t0) * 100
    return {"area": "idle", "results": [
        {"name": f"idle daemon resident memory over {window} s", "unit": "MB",
         "median": round(statistics.median(rss), 1),
         "min": round(min(rss), 1), "max": round(max(rss), 1), "runs": len(rss), "target": "< 60 MB",
         "met": max(rss) < 60, "notes": f"sampled every second; {threads} thread(s)"},
        {"name": f"idle daemon CPU over {window} s", "unit": "%", "median": round(cpu_pct, 3), "runs": 1,
         "notes": f"{c1 - c0:.2f} s of CPU (user + system) in {t1 - t0:.0f} s, one core = 100 %"},
    ], "commands": ["python -m agent --config CFG daemon  (bench_webhook.py's config; no request in the window)"]}


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=1))
