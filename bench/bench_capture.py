#!/usr/bin/env python3
"""Benchmark: time to evidence of ``goldenhour snapshot`` (quick, and standard minus its probe window).

Method: N runs of each profile into a temporary store, through the real CLI
(``python -m agent snapshot --json``); wall time of the whole command, the capture's
own duration from the manifest, per-collector durations, the bundle size, and the time
from process start to the first collector output in the staging folder (polled every
5 ms). Prints one JSON object. ``--quick``: 3 runs.

    .venv/bin/python bench/bench_capture.py [--quick]
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def one(profile: str, store: Path, probe: float) -> dict:
    args = [sys.executable, "-m", "agent", "snapshot", "--json", "--incident", "BENCH-1", "--profile", profile,
            "--store", str(store), "--no-upload"]
    if profile != "quick":
        args += ["--probe-seconds", str(probe)]
    t0 = time.monotonic()
    p = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    first = None
    while p.poll() is None:
        if first is None and any((store / ".staging").glob("*/collectors/*/*")):
            first = time.monotonic() - t0
        time.sleep(0.005)
    wall = time.monotonic() - t0
    out = json.loads(p.stdout.read())
    man = json.loads(Path(out["manifest"]).read_text())
    return {"wall_s": wall, "capture_s": man["clocks"]["duration_s"], "first_output_s": first,
            "bytes": out["size"], "collectors": {c["key"]: c.get("duration_s", 0) for c in man["collectors"]},
            "statuses": out["collectors"]}


def run(quick: bool = False) -> dict:
    runs = 3 if quick else 7
    probe = 1.0
    results = []
    with tempfile.TemporaryDirectory(prefix="gh-bench-cap-", dir="/var/tmp") as d:
        for profile in ("quick", "standard"):
            rows = [one(profile, Path(d) / profile, probe) for _ in range(runs)]
            walls = [r["wall_s"] - (probe if profile != "quick" else 0) for r in rows]
            firsts = [r["first_output_s"] for r in rows if r["first_output_s"] is not None]
            per = {}
            for k in rows[0]["collectors"]:
                per[k] = round(statistics.median(r["collectors"].get(k, 0) for r in rows), 3)
            label = f"snapshot --profile {profile}" + (" (minus 1 s probe window)" if profile != "quick" else "")
            results.append({"name": label,
                            "unit": "s", "median": round(statistics.median(walls), 3), "min": round(min(walls), 3),
                            "max": round(max(walls), 3), "runs": runs,
                            "target": "< 2 s" if profile == "quick" else "",
                            "met": (statistics.median(walls) < 2) if profile == "quick" else None,
                            "capture_s_median": round(statistics.median(r["capture_s"] for r in rows), 3),
                            "first_output_s_median": round(statistics.median(firsts), 3) if firsts else None,
                            "bundle_bytes_median": int(statistics.median(r["bytes"] for r in rows)),
                            "per_collector_s": per, "statuses": rows[-1]["statuses"]})
    return {"area": "capture", "results": results,
            "commands": ["python -m agent snapshot --json --incident BENCH-1 --profile quick|standard "
                         "--probe-seconds 1"]}


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=1))
