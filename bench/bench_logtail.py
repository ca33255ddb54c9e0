#!/usr/bin/env python3
"""Benchmark: the last 10,000 lines of a 2 GB log, goldenhour's tail against GNU ``tail -n 10000``.

Method: ``bench/work/app-2g.log`` (written once and kept, gitignored): 2 GiB of real log
lines of varied length (timestamps, levels, loggers, request ids, a stack trace now and
then; a 64 MiB block of distinct lines written 32 times). Then, alternating, N runs each of
- GNU ``tail -n 10000 FILE > OUT`` (a process, as an SRE would run it);
- the logs collector's tail: ``find_tail_start`` (reads backwards from the end with pread in
  growing blocks) then ``copy_range`` (copy_file_range into OUT), in this process as in the
  collector's (no process start);
- ``collectors.logs.tail_lines(FILE, 10000)`` (the same, into memory);
- the collector's default path, the tail through ``agent.redact.LogRedactor`` into OUT
  (``logs.redact = true``; the lines with a trigger word, ``key=`` among them, are redacted);
first with the file in the page cache (a live log is), then cold: the file's pages dropped
with ``posix_fadvise(DONTNEED)`` before each run (only this file's, not the whole cache).
Both outputs are checked byte for byte. The ratio is goldenhour / GNU (lower is faster;
target <= 1.5). GNU tail's figure includes starting a process; the start alone (``tail``
on an empty file) is given too, and the ratio against GNU tail minus its start.

    .venv/bin/python bench/bench_logtail.py [--quick]
"""
from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WORK = ROOT / "bench" / "work"
SIZE = 2 * 2**30
BLOCK = 64 * 2**20
N = 10000


def make_log(path: Path) -> None:
    """Just over 2 GiB of log lines: one ~64 MiB block of distinct, varied lines, written 33 times."""
    rnd = random.Random(8)
    levels = [b"INFO"] * 12 + [b"DEBUG"] * 5 + [b"WARN"] * 2 + [b"ERROR"]
    loggers = [b"orders.api", b"orders.db.pool", b"payments.client", b"http.access", b"scheduler", b"cache.redis"]
    msgs = [b"request completed status=%d bytes=%d duration_ms=%d path=/api/v2/orders/%d",
            b"acquired connection from pool active=%d idle=%d waiters=%d wait_ms=%d",
            b"upstream payments responded status=%d after %d ms (retry %d of %d)",
            b"cache miss key=order:%d ttl=%d size=%d shard=%d",
            b"GC pause young=%d ms old=%d ms heap_used=%d MiB heap_max=%d MiB"]
    trace = b"".join(b"\tat com.example.orders.Service%d.handle(Service%d.java:%d)\n" % (i, i, 100 + i)
                     for i in range(12))
    parts, n, i = [], 0, 0
    while n < BLOCK:
        i += 1
        msg = rnd.choice(msgs) % tuple(rnd.randint(1, 99999) for _ in range(4))
        line = b"2026-11-23T01:%02d:%02d.%06dZ %s [%s] req=%016x %s\n" % (
            (i // 60000) % 60, (i // 1000) % 60, i % 1000000, rnd.choice(levels), rnd.choice(loggers),
            rnd.getrandbits(64), msg + b" " + b"x" * rnd.randint(0, 120))
        if i % 997 == 0:
            line += b"java.lang.IllegalStateException: pool exhausted\n" + trace
        parts.append(line)
        n += len(line)
    block = b"".join(parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    with open(tmp, "wb") as fh:
        for _ in range(SIZE // len(block) + 1):
            fh.write(block)
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed(fn, before=None) -> float:
    if before:
        before()
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def stats(xs: list[float]) -> dict:
    return {"median": round(statistics.median(xs) * 1000, 3), "min": round(min(xs) * 1000, 3),
            "max": round(max(xs) * 1000, 3), "runs": len(xs)}


def run(quick: bool = False) -> dict:
    from collectors.logs import copy_range, find_tail_start, tail_lines
    path = WORK / "app-2g.log"
    made = False
    if not path.exists() or path.stat().st_size < SIZE * 0.99:
        t = time.monotonic()
        make_log(path)
        made = round(time.monotonic() - t, 1)
    empty = WORK / "empty.log"
    empty.write_bytes(b"")
    gnu_out = subprocess.run(["tail", "-n", str(N), str(path)], capture_output=True, check=True).stdout
    ours_out = tail_lines(path, N)
    if ours_out != gnu_out:
        raise SystemExit("tail_lines output differs from GNU tail's")
    nbytes = len(gnu_out)

    out = WORK / "tail-out.txt"

    def gnu():                              # as an SRE runs it: the lines into a file
        with open(out, "wb") as fh:
            subprocess.run(["tail", "-n", str(N), str(path)], stdout=fh, check=True)

    def ours():                             # as the logs collector does: locate, then copy in the kernel
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            start, _ = find_tail_start(fd, N, size)
            dst = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                copy_range(fd, dst, start, size - start)
            finally:
                os.close(dst)
        finally:
            os.close(fd)

    def redacted():                         # the collector's default (logs.redact = true): through the redactor
        from agent.redact import LogRedactor
        from collectors.logs import _redact_range
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            start, _ = find_tail_start(fd, N, size)
            red = LogRedactor()
            with open(out, "wb") as fh:
                _redact_range(fd, fh, start, size - start, red)
                fh.write(red.finish())
        finally:
            os.close(fd)

    def in_memory():
        tail_lines(path, N)

    def start():
        with open(out, "wb") as fh:
            subprocess.run(["tail", "-n", str(N), str(empty)], stdout=fh, check=True)

    ours()
    if out.read_bytes() != gnu_out:
        raise SystemExit("the collector's tail differs from GNU tail's")
    redacted()
    if out.read_bytes().count(b"\n") != gnu_out.count(b"\n"):
        raise SystemExit("the redacted tail does not keep every line")
    warm_runs, cold_runs = (10, 4) if quick else (30, 10)
    rows = []
    for label, runs, before in (("page cache warm", warm_runs, None),
                                ("cold (the file's pages dropped)", cold_runs, lambda: drop_cache(path))):
        g, o, m, s, r = [], [], [], [], []
        gnu(), ours(), in_memory(), start(), redacted()  # warm up code paths
        for _ in range(runs):               # alternating, so drift hits both
            g.append(timed(gnu, before))
            o.append(timed(ours, before))
            m.append(timed(in_memory, before))
            s.append(timed(start))
            r.append(timed(redacted, before))
        ratio = statistics.median(o) / statistics.median(g)
        net = statistics.median(o) / max(1e-9, statistics.median(g) - statistics.median(s))
        rows.append({"name": f"GNU tail -n 10000 > file, {label}", "unit": "ms", **stats(g)})
        rows.append({"name": f"goldenhour logs collector's tail > file, {label}", "unit": "ms", **stats(o),
                     "notes": "find_tail_start + copy_file_range, in the collector's process"})
        rows.append({"name": f"goldenhour tail_lines() into memory, {label}", "unit": "ms", **stats(m)})
        rows.append({"name": f"goldenhour logs collector's tail through the redactor > file, {label}", "unit": "ms",
                     **stats(r), "notes": f"the default (logs.redact = true): find_tail_start + LogRedactor; "
                                          f"{statistics.median(r) / statistics.median(g):.1f}x GNU tail"})
        rows.append({"name": f"ratio goldenhour / GNU tail, {label}", "unit": "x", "median": round(ratio, 2),
                     "runs": runs, "target": "<= 1.5", "met": ratio <= 1.5,
                     "notes": f"GNU tail's process start alone: {stats(s)['median']} ms; against GNU tail minus "
                              f"it: {net:.2f}x; {nbytes} bytes out"})
    out.unlink(missing_ok=True)
    return {"area": "logtail", "results": rows,
            "commands": [f"tail -n {N} bench/work/app-2g.log > OUT",
                         f"collectors.logs.find_tail_start + copy_range (bench/work/app-2g.log, {N}) > OUT"],
            "file_bytes": path.stat().st_size, "generated_s": made}


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=1))
