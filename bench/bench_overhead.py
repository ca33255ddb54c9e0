#!/usr/bin/env python3
"""Benchmark: what a capture costs a loopback HTTP service under load, and what low priority buys.

Workload: an HTTP/1.1 keep-alive server (Python asyncio, a small JSON answer built per
request) pinned to CPU 0, loaded by ``wrk`` pinned to CPU 1, under two loads:
- **saturated**: ``wrk -t1 -c32`` flat out (closed loop): the server takes all of CPU 0 and wrk
  most of CPU 1, so any CPU the capture takes comes out of the workload. The worst case;
- **paced**: many clients with think time (``-c N -s pace.lua``: each connection waits 100 ms
  between its requests, N chosen for about a third of the saturated rate), near an open loop:
  the machine has spare CPU, as a production service has.
Conditions (a few captures each, 1.5 s apart, during one wrk run):
- ``quick``: ``goldenhour snapshot --profile quick --pid SERVER`` with the default priorities
  (the capture process and its collectors at ``capture.nice`` = 10, idle I/O class);
- ``quick nice=0``: the same with ``capture.nice = 0`` and ``capture.ionice_idle = false``;
- ``quick nice=19``: the same with ``capture.nice = 19`` (the lowest CPU priority);
- ``standard`` / ``standard nice=0``: ``--profile standard --pid SERVER`` (eBPF probes on for
  ``--probe-seconds`` 3, and py-spy's dump of the server);
- control: a process that only burns a quick capture's CPU time (measured) at nice 10: what
  any work at all costs this machine.
Throughput loss *during* a capture is the server's own request rate while the capture runs
(from its 20 ms ticks) against the 1.5 s before and after it, the median over captures;
p99 latency and the rate over the whole phase are wrk's. Baselines (no capture) are run
before and after. Captures go to a temporary store (removed); only loopback traffic; every
process is ours and stopped at the end (also on SIGTERM from bench/run.py's budget).

    .venv/bin/python bench/bench_overhead.py [--quick]
"""
from __future__ import annotations

import json
import os
import resource
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SERVER = r"""
import asyncio, json, os, resource, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
if len(os.sched_getaffinity(0)) > 1:
    os.sched_setaffinity(0, {int(sys.argv[1])})
served = 0
ticks = []                                   # (monotonic, requests served so far) every 20 ms
class H(asyncio.Protocol):
    def connection_made(self, t):
        self.t, self.buf = t, b""
    def data_received(self, data):
        global served
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            path = head.split(b" ", 2)[1].decode()
            if path == "/__ticks":
                body = json.dumps(ticks).encode()
                ticks.clear()
            else:
                served += 1
                items = [{"id": i, "ok": True} for i in range(8)]
                body = json.dumps({"path": path, "n": served, "items": items}).encode()
            self.t.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
async def tick():
    while True:
        ticks.append((time.monotonic(), served))
        await asyncio.sleep(0.02)
async def main():
    srv = await asyncio.get_running_loop().create_server(H, "127.0.0.1", 0, backlog=512)
    asyncio.get_running_loop().create_task(tick())
    print("READY %d" % srv.sockets[0].getsockname()[1], flush=True)
    await srv.serve_forever()
asyncio.run(main())
"""
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_wrk(text: str) -> dict:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    p99 = float(m.group(1)) * UNITS[m.group(2)] if m else None
    errs = re.search(r"Socket errors: (.*)", text)
    return {"rps": rps, "p99_ms": p99, "errors": errs.group(1) if errs else ""}


def served_at(ticks: list, t: float) -> float:
    """Requests served by time ``t``, interpolated between the server's 20 ms ticks."""
    lo, hi = 0, len(ticks) - 1
    if t <= ticks[0][0]:
        return ticks[0][1]
    if t >= ticks[hi][0]:
        return ticks[hi][1]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ticks[mid][0] <= t:
            lo = mid
        else:
            hi = mid
    (t0, n0), (t1, n1) = ticks[lo], ticks[hi]
    return n0 + (n1 - n0) * (t - t0) / (t1 - t0)


def rate(ticks: list, a: float, b: float) -> float:
    return (served_at(ticks, b) - served_at(ticks, a)) / (b - a)


HOG = "import time\nt = time.process_time()\nwhile time.process_time() - t < %f: pass\n"
PACE_MS = 100
PACE = "function delay()\n  return %d\nend\n" % PACE_MS   # each connection waits between its requests


def _raise_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)


class Bench:
    def __init__(self, work: Path, probe: float, gap: float):
        self.work, self.probe, self.gap = work, probe, gap
        self.pin = (os.cpu_count() or 1) >= 2
        self.server = subprocess.Popen([sys.executable, "-c", SERVER, "0"], stdout=subprocess.PIPE, text=True,
                                       start_new_session=True)
        line = self.server.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError("HTTP server did not start")
        self.port = int(line.split()[1])
        self.store = work / "store"
        (work / "pace.lua").write_text(PACE)
        self.hog_cpu = 0.4
        for name, nice, idle in (("default", 10, "true"), ("nice0", 0, "false"), ("nice19", 19, "true")):
            (work / f"{name}.toml").write_text(
                f'[capture]\nnice = {nice}\nionice_idle = {idle}\n[store]\npath = "{self.store}"\n'
                f'reserve_bytes = 0\nreserve_percent = 0\n[logs]\njournal = false\n')

    def close(self) -> None:
        try:
            os.killpg(self.server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.server.wait()

    def ticks(self) -> list:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/__ticks", timeout=10) as r:
            return json.loads(r.read())

    def capture(self, profile: str, prio: str) -> float:
        """One capture (or, for profile "hog", a process burning the same CPU at nice 10); its CPU seconds."""
        if profile == "hog":
            argv = ["nice", "-n", "10", sys.executable, "-c", HOG % self.hog_cpu]
        else:
            argv = [sys.executable, "-m", "agent", "--config", str(self.work / f"{prio}.toml"), "snapshot", "--json",
                    "--incident", "BENCH-OVH", "--profile", profile, "--pid", str(self.server.pid), "--no-upload"]
            if profile != "quick":
                argv += ["--probe-seconds", str(self.probe)]
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cp = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if cp.returncode != 0:
            raise RuntimeError(f"snapshot failed: {cp.stderr.strip()[-400:]}")
        shutil.rmtree(self.store / "incidents", ignore_errors=True)
        return r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime

    def phase(self, cond: str | None, captures: int, seconds: float, conns: int = 0) -> dict:
        """One wrk run; with ``cond`` ('quick/default'...), ``captures`` captures with idle gaps between.

        ``conns`` > 0: paced load (that many connections, PACE_MS between a connection's requests)
        instead of wrk's flat-out 32 connections. Returns wrk's figures and, per capture, the
        server's request rate during it and in the gaps just before and after it (from the
        server's own 20 ms ticks)."""
        self.ticks()                                   # reset
        argv = ["wrk", "-t1", f"-c{conns or 32}", f"-d{int(seconds + 0.999)}s", "--latency"]
        if conns:
            argv += ["-s", str(self.work / "pace.lua")]
        argv.append(f"http://127.0.0.1:{self.port}/api/orders")
        if self.pin:
            argv = ["taskset", "-c", "1"] + argv
        load = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                preexec_fn=_raise_nofile)
        spans = []
        if cond:
            profile, prio = cond.split("/")
            time.sleep(self.gap + 0.3)
            for _ in range(captures):
                if load.poll() is not None:
                    break
                t0 = time.monotonic()
                cpu = self.capture(profile, prio)
                spans.append((t0, time.monotonic(), cpu))
                time.sleep(self.gap)
        out, _ = load.communicate()
        ticks = self.ticks()
        r = parse_wrk(out)
        r["seconds"] = seconds
        m = 0.1                                        # margin around each capture
        r["spans"] = []
        for a, b, cpu in spans:
            if b + self.gap - m > ticks[-1][0]:
                continue                               # wrk ended before the gap after it
            during = rate(ticks, a, b)
            around = ((served_at(ticks, a - m) - served_at(ticks, a - self.gap + m))
                      + (served_at(ticks, b + self.gap - m) - served_at(ticks, b + m))) / (2 * (self.gap - 2 * m))
            r["spans"].append({"s": b - a, "during": during, "around": around, "cpu_s": cpu})
        return r


LABEL = {"quick/default": "a quick capture (default: nice 10, idle I/O class)",
         "quick/nice0": "a quick capture at nice 0, normal I/O class",
         "quick/nice19": "a quick capture at nice 19 (capture.nice = 19), idle I/O class",
         "standard/default": "a standard capture, probes on (default: nice 10, idle I/O class)",
         "standard/nice0": "a standard capture, probes on, at nice 0, normal I/O class",
         "hog/default": "control: a process that only burns a quick capture's CPU time, at nice 10"}
TARGETS = {"quick/default": 3.0, "standard/default": 5.0}


def _rows(load: str, base: list[dict], phases: dict[str, dict], probe: float, with_targets: bool) -> list[dict]:
    brps = [x["rps"] for x in base]
    bp99 = statistics.mean(x["p99_ms"] for x in base)
    rows = [{"name": f"{load}: baseline requests/s, no capture", "unit": "req/s",
             "median": round(statistics.median(brps)),
             "min": round(min(brps)), "max": round(max(brps)), "runs": len(brps)},
            {"name": f"{load}: baseline p99 latency, no capture", "unit": "ms", "median": round(bp99, 2),
             "min": round(min(x["p99_ms"] for x in base), 2), "max": round(max(x["p99_ms"] for x in base), 2),
             "runs": len(base)}]
    for c, r in phases.items():
        losses = [(1 - s["during"] / s["around"]) * 100 for s in r["spans"] if s["around"] > 0]
        t = TARGETS.get(c) if with_targets else None
        med = statistics.median(losses) if losses else float("nan")
        secs = statistics.median(s["s"] for s in r["spans"]) if r["spans"] else float("nan")
        cpu = statistics.median(s["cpu_s"] for s in r["spans"]) if r["spans"] else float("nan")
        label = LABEL[c].replace("probes on", f"probes on {probe:g} s")
        rows.append({"name": f"{load}: throughput loss during {label}", "unit": "%", "median": round(med, 1),
                     "min": round(min(losses), 1) if losses else None, "max": round(max(losses), 1) if losses else None,
                     "runs": len(losses), "target": f"< {t:g} %" if t else "", "met": (med < t) if t else None,
                     "notes": f"{secs:.1f} s and {cpu:.2f} s of CPU each; over the whole phase ({r['seconds']:.0f} s, "
                              f"{len(r['spans'])} captures): {r['rps']:.0f} req/s "
                              f"({(1 - r['rps'] / statistics.median(brps)) * 100:+.1f} % loss), "
                              f"p99 {r['p99_ms']:.2f} ms "
                              f"({r['p99_ms'] / bp99:.2f}x baseline)"})
    return rows


def run(quick: bool = False) -> dict:
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (scripts/setup-host.sh test installs it)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))     # run.py's budget: still stop our server
    n = 3 if quick else 4                                      # captures per condition
    gap, probe = 1.5, 3.0
    est = {"quick": 1.2, "standard": probe + 3.0, "hog": 1.0}

    def secs(cond: str, k: int) -> float:
        return gap + 0.3 + k * (est[cond.split("/")[0]] + gap) + 1.5
    sat: dict[str, dict] = {}
    paced: dict[str, dict] = {}
    sat_base: list[dict] = []
    paced_base: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="gh-bench-ovh-", dir="/var/tmp") as d:
        b = Bench(Path(d), probe, gap)
        try:
            b.capture("quick", "default")            # warm up: goldenhour's modules, helpers in the page cache
            sat_base.append(b.phase(None, 0, 6.0))
            for cond in ("quick/default", "quick/nice0", "quick/nice19", "standard/default", "standard/nice0"):
                sat[cond] = b.phase(cond, n, secs(cond, n))
            b.hog_cpu = statistics.median(s["cpu_s"] for s in sat["quick/default"]["spans"])
            sat["hog/default"] = b.phase("hog/default", n, secs("hog/default", n))
            sat_base.append(b.phase(None, 0, 6.0))
            conns = max(4, round(0.35 * statistics.median(x["rps"] for x in sat_base) * PACE_MS / 1000))
            paced_base.append(b.phase(None, 0, 6.0, conns))
            for cond in ("quick/default", "standard/default"):
                paced[cond] = b.phase(cond, n, secs(cond, n), conns)
            paced_base.append(b.phase(None, 0, 6.0, conns))
        finally:
            b.close()
    pr = statistics.median(x["rps"] for x in paced_base) / statistics.median(x["rps"] for x in sat_base)
    rows = (_rows("saturated (both cores busy)", sat_base, sat, probe, True)
            + _rows(f"paced ({pr * 100:.0f} % of the saturated rate)", paced_base, paced, probe, True))
    return {"area": "overhead", "results": rows, "paced_connections": conns,
            "commands": ["server: python asyncio HTTP/1.1 on CPU 0 (taskset); load on CPU 1:",
                         "saturated: wrk -t1 -c32 -dNs --latency http://127.0.0.1:PORT/api/orders",
                         f"paced: wrk -t1 -c{conns} -s pace.lua (100 ms between a connection's requests: "
                         "many clients with think time, near open loop) ...",
                         "python -m agent --config CFG snapshot --profile quick|standard --pid SERVER "
                         "--probe-seconds 3 "
                         "(CFG: defaults, or capture.nice = 0 and capture.ionice_idle = false)"]}


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=1))
