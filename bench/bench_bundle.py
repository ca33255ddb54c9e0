#!/usr/bin/env python3
"""Benchmark: packing a heap-dump-like file into a bundle, against ``tar -c | zstd -T0 | sha256sum``.

Method: a file of mixed data (alternating 1 MiB blocks of random bytes and of
compressible text-like bytes), 2 GiB (``--quick``: 512 MiB), page cache warm. Timed
side by side, alternating, N runs each: ``agent.bundle.pack`` (per-file SHA-256 while
streaming, zstd level 3 multi-threaded, the bundle's own SHA-256, fsync) and the shell
pipeline ``tar -cf - DIR | zstd -3 -T0 | sha256sum`` writing to a file. Ratio =
pipeline time / pack time (higher is better for goldenhour), and the sizes.

    .venv/bin/python bench/bench_bundle.py [--quick]
"""
from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.bundle import pack


def make(path: Path, size: int) -> None:
    rnd = random.Random(7)
    words = [bytes(rnd.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(3, 10))) for _ in range(5000)]
    text = b" ".join(rnd.choice(words) for _ in range(200000))[: 2**20]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        i = 0
        while fh.tell() < size:
            fh.write(os.urandom(2**20) if i % 2 else text)
            i += 1


def run(quick: bool = False) -> dict:
    size = (512 if quick else 2048) * 2**20
    runs = 3
    with tempfile.TemporaryDirectory(prefix="gh-bench-bundle-", dir="/var/tmp") as d:
        d = Path(d)
        staging = d / "staging"
        make(staging / "collectors" / "heap" / "heap.bin", size)
        ours, theirs, ours_size, theirs_size = [], [], 0, 0
        for _ in range(runs):
            out = d / "b.tar.zst"
            t0 = time.monotonic()
            res = pack(staging, "b", out, manifest=lambda f, l: {"files": f})
            ours.append(time.monotonic() - t0)
            ours_size = res.size
            out.unlink()
            Path(str(out) + ".sha256").unlink()
            t0 = time.monotonic()
            subprocess.run(f"tar -C {staging} -cf - collectors | zstd -3 -T0 -q | tee {d}/p.tar.zst | sha256sum "
                           f">/dev/null && sync -f {d}/p.tar.zst", shell=True, check=True)
            theirs.append(time.monotonic() - t0)
            theirs_size = (d / "p.tar.zst").stat().st_size
            (d / "p.tar.zst").unlink()
    mo, mt = statistics.median(ours), statistics.median(theirs)
    return {"area": "bundle", "results": [
        {"name": f"pack {size >> 20} MiB mixed file (hashes + zstd)", "unit": "s", "median": round(mo, 3),
         "min": round(min(ours), 3), "max": round(max(ours), 3), "runs": runs,
         "throughput_MBps": round(size / mo / 1e6, 1), "bundle_bytes": ours_size},
        {"name": "tar -c | zstd -3 -T0 | sha256sum (same data)", "unit": "s", "median": round(mt, 3),
         "min": round(min(theirs), 3), "max": round(max(theirs), 3), "runs": runs,
         "throughput_MBps": round(size / mt / 1e6, 1), "bundle_bytes": theirs_size},
        {"name": "throughput ratio goldenhour / pipeline", "unit": "x", "median": round(mt / mo, 2),
         "target": ">= 0.8", "met": mt / mo >= 0.8,
         "size_ratio": round(ours_size / theirs_size, 3)}],
        "commands": ["agent.bundle.pack(staging, ...)", "tar -cf - collectors | zstd -3 -T0 | sha256sum"]}


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=1))
