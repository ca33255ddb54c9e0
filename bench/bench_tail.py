#!/usr/bin/env python3
"""Benchmark: the logs collector's ``tail_lines`` against GNU ``tail -n`` on a 2 GB log.

Method: write a 2 GB file of realistic log lines (about 110 bytes each; page cache warm,
as on a live host where the log is being written), then time, median of --runs:
- ``tail -n 10000 FILE > /dev/null`` (a process: fork, exec, its reads);
- ``tail_lines(FILE, 10000)`` in this process (what the collector does, minus the copy out);
- ``find_tail_start`` alone (locating the tail without materialising it);
- the same for 100 lines, and for a file with 2 KiB lines;
and check each result is byte-identical to GNU tail's. Prints one JSON object.

    .venv/bin/python bench/bench_tail.py [--quick] [--runs N] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from collectors.logs import find_tail_start, tail_lines  # noqa: E402


def make_file(path: Path, size: int, line_len: int) -> None:
    pad = b"x" * max(0, line_len - 80)
    block = b"".join(b"2026-11-23T01:02:03.%06dZ INFO app.worker[1234]: request id=%08d status=200 %s\n"
                     % (i % 1_000_000, i, pad) for i in range(max(1, 2**20 // line_len)))
    with open(path, "wb") as fh:
        while fh.tell() < size:
            fh.write(block)


def median_ms(fn, runs: int) -> float:
    fn()                                   # warm up (page cache, buffers)
    xs = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        xs.append(time.perf_counter() - t)
    return round(statistics.median(xs) * 1000, 3)


def bench_one(path: Path, n: int, runs: int) -> dict:
    gnu = subprocess.run(["tail", "-n", str(n), str(path)], capture_output=True, check=True).stdout
    assert tail_lines(path, n) == gnu, "tail_lines differs from GNU tail"

    def locate():
        fd = os.open(path, os.O_RDONLY)
        try:
            find_tail_start(fd, n, os.fstat(fd).st_size)
        finally:
            os.close(fd)
    gnu_ms = median_ms(lambda: subprocess.run(["tail", "-n", str(n), str(path)], stdout=subprocess.DEVNULL,
                                              check=True), runs)
    ours_ms = median_ms(lambda: tail_lines(path, n), runs)
    return {"lines": n, "tail_bytes": len(gnu), "gnu_tail_ms": gnu_ms, "tail_lines_ms": ours_ms,
            "find_tail_start_ms": median_ms(locate, runs), "ratio_vs_gnu": round(ours_ms / gnu_ms, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="256 MB file, fewer runs")
    ap.add_argument("--runs", type=int, default=0)
    ap.add_argument("--keep", help="folder for the test files (default: a temporary one, removed)")
    args = ap.parse_args()
    size = 256 * 2**20 if args.quick else 2 * 2**30
    runs = args.runs or (10 if args.quick else 30)
    d = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="gh-bench-tail-", dir="/var/tmp"))
    d.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for line_len in (110, 2048):
            p = d / f"bench-{line_len}.log"
            if not p.exists() or p.stat().st_size < size:
                make_file(p, size, line_len)
            for n in (10000, 100):
                r = bench_one(p, n, runs)
                r.update(file_bytes=p.stat().st_size, line_bytes=line_len)
                results.append(r)
    finally:
        if not args.keep:
            for p in d.glob("bench-*.log"):
                p.unlink()
            d.rmdir()
    print(json.dumps({"bench": "tail", "host": platform.node(), "cpus": os.cpu_count(),
                      "python": platform.python_version(), "runs": runs, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
