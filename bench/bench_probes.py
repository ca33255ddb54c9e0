#!/usr/bin/env python3
"""Benchmark: what the eBPF probes cost the workloads they watch (syscalls, runqlat).

Workloads (pinned: workloads on CPU 0, the HTTP load generator on CPU 1):
- ``loop``: a tight loop of ``getppid()`` (C, gcc -O2; the cheapest system call, the worst
  case for a per-syscall probe). Measured in CPU time (getrusage), so other load on the
  machine does not blur it: the probe's programs run in the calling task and are
  charged to it. Result: CPU added per system call.
- ``pingpong``: two processes bouncing a byte over pipes on one CPU (C): each round trip
  is 2 wake-ups, 2 context switches and 4 system calls; CPU time of both per round trip.
  Result: CPU added per round trip (what runqlat costs per context switch).
- ``http``: a loopback HTTP/1.1 keep-alive server (Python asyncio, 13-byte answer) under
  ``wrk -t1 -c16`` for 1 s: requests per second, the server's CPU per request
  (/proc/PID/schedstat) and, with the syscalls probe, the system calls the server made
  per request (counted by the probe itself).
Configurations: no probe; the real ``syscalls`` collector attached host-wide (the
standard profile's default when no target is given: every process traced); ``syscalls``
filtered to another process (the workloads are not targets: what a targeted capture
costs the rest of the host); ``runqlat`` (full profile). The probes run as in a capture
(the runner's forked child); workloads start once its ``attached.json`` exists.
Sequence per round: B P1 B P2 B P3 B (B = no probe): each probe run is compared with the
mean of the two baseline runs around it, which cancels the drift of a shared machine.

The HTTP throughput loss is reported two ways: measured side by side (req/s; on a
2-core VM shared with other work this swings by ±20 % between identical runs), and
estimated from robust parts: (server system calls per request × CPU added per system
call) ÷ server CPU per request, which is the loss of a CPU-bound server. The target
(< 5 %) is checked on the estimate; both are printed.

    .venv/bin/python bench/bench_probes.py [--quick]
"""
from __future__ import annotations

import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LOOP_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    double secs = atof(argv[1]);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);          /* vDSO: not a system call */
    long n = 0;
    for (;;) {
        for (int i = 0; i < 4096; i++)
            syscall(SYS_getppid);
        n += 4096;
        clock_gettime(CLOCK_MONOTONIC, &b);
        if ((b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9 >= secs) {
            printf("%ld\n", n);
            return 0;
        }
    }
}
"""

PINGPONG_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    double secs = atof(argv[1]);
    int ab[2], ba[2];
    char c = 'x';
    if (pipe(ab) || pipe(ba)) return 1;
    pid_t pid = fork();
    if (pid == 0) {
        while (read(ab[0], &c, 1) == 1 && c != 'q')
            write(ba[1], &c, 1);
        _exit(0);
    }
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    long n = 0;
    for (;;) {
        for (int i = 0; i < 256; i++) {
            write(ab[1], &c, 1);
            read(ba[0], &c, 1);
        }
        n += 256;
        clock_gettime(CLOCK_MONOTONIC, &b);
        if ((b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9 >= secs) break;
    }
    c = 'q';
    write(ab[1], &c, 1);
    waitpid(pid, NULL, 0);
    printf("%ld\n", n);
    return 0;
}
"""

SERVER = r"""
import asyncio, os
os.sched_setaffinity(0, {0})
RESP = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nhello, world\n"
class Http(asyncio.Protocol):
    def connection_made(self, t):
        self.t, self.buf = t, b""
    def data_received(self, data):
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            _, _, self.buf = self.buf.partition(b"\r\n\r\n")
            self.t.write(RESP)
async def main():
    srv = await asyncio.get_running_loop().create_server(Http, "127.0.0.1", 0, backlog=256)
    print("READY", srv.sockets[0].getsockname()[1], flush=True)
    await srv.serve_forever()
asyncio.run(main())
"""

FRAMEWORK = r"""
import os, socket, sys
os.sched_setaffinity(0, {0})
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
async def status(request):
    return JSONResponse({"status": "ok", "path": request.url.path, "items": list(range(10))})
app = Starlette(routes=[Route("/{rest:path}", status)])
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
print("READY", port, flush=True)
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
"""

PROBE = r"""
import json, sys
from pathlib import Path
from agent import runner
name, staging, capture = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
res = runner.run_one(name, staging, capture=capture, timeout_s=capture["probe_seconds"] + 30)
print(json.dumps({"status": res.status, "reason": res.reason, "notes": res.notes}))
"""

LOOP_S, PING_S, HTTP_S = 1.0, 1.0, 1   # seconds each (wrk takes whole seconds); bench/run.py gives 120 s
METRICS = ("loop_ns", "ping_ns", "rps", "srv_us", "fw_rps", "fw_us")
SERVERS = {"": "asyncio (13-byte answer)", "fw_": "uvicorn + Starlette (JSON endpoint)"}


def _row(name, unit, values, target="", met=None, **extra):
    vals = [v for v in values if v is not None]
    return {"name": name, "unit": unit, "median": round(statistics.median(vals), 3) if vals else None,
            "min": round(min(vals), 3) if vals else None, "max": round(max(vals), 3) if vals else None,
            "runs": len(vals), "target": target, "met": met, **extra}


class Bench:
    def __init__(self, d: Path):
        self.d = d
        gcc = shutil.which("gcc")
        if not gcc or not shutil.which("wrk") or not shutil.which("taskset"):
            raise RuntimeError("needs gcc, wrk and taskset (scripts/setup-host.sh test)")
        self.loop_exe = self._cc(gcc, "loop", LOOP_C)
        self.ping_exe = self._cc(gcc, "pingpong", PINGPONG_C)
        self.server, self.url = self._serve(SERVER)
        self.framework, self.fw_url = self._serve(FRAMEWORK)
        self.idle = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(1)"])
        self.requests = {"": 0, "fw_": 0}

    @staticmethod
    def _serve(code: str) -> tuple[subprocess.Popen, str]:
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        line = p.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError("HTTP server did not start")
        url = f"http://127.0.0.1:{int(line.split()[1])}/status"
        import socket as s_
        for _ in range(200):                      # uvicorn listens a moment after READY
            try:
                s_.create_connection(("127.0.0.1", int(line.split()[1])), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.02)
        return p, url

    def _cc(self, gcc: str, name: str, src: str) -> str:
        (self.d / f"{name}.c").write_text(src)
        subprocess.run([gcc, "-O2", "-o", str(self.d / name), str(self.d / f"{name}.c")], check=True)
        return str(self.d / name)

    def close(self) -> None:
        for p in (self.server, self.framework, self.idle):
            p.kill()
            p.wait()
        self.server.stdout.close()
        self.framework.stdout.close()

    def _cpu_per_op_ns(self, exe: str, secs: float) -> float:
        """Run a C workload on CPU 0; CPU time (it and its children) per operation it counted."""
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cp = subprocess.run(["taskset", "-c", "0", exe, str(secs)], capture_output=True, text=True, check=True)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        return cpu * 1e9 / int(cp.stdout.split()[0])

    @staticmethod
    def _cpu_ns(p: subprocess.Popen) -> int:
        return sum(int(Path(f"/proc/{p.pid}/task/{t}/schedstat").read_text().split()[0])
                   for t in os.listdir(f"/proc/{p.pid}/task"))

    def http(self, which: str = "") -> tuple[float, float]:
        """(requests per second, server CPU microseconds per request)."""
        srv, url = (self.server, self.url) if not which else (self.framework, self.fw_url)
        c0 = self._cpu_ns(srv)
        cp = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c16", f"-d{HTTP_S:g}s", url],
                            capture_output=True, text=True, check=True)
        c1 = self._cpu_ns(srv)
        rate = re.search(r"Requests/sec:\s+([\d.]+)", cp.stdout)
        total = re.search(r"(\d+) requests in", cp.stdout)
        if not rate or not total:
            raise RuntimeError(f"wrk output not understood: {cp.stdout[-400:]}")
        self.requests[which] = int(total.group(1))
        return float(rate.group(1)), (c1 - c0) / 1000 / self.requests[which]

    def workloads(self) -> dict[str, float]:
        loop = self._cpu_per_op_ns(self.loop_exe, LOOP_S)
        ping = self._cpu_per_op_ns(self.ping_exe, PING_S)
        rps, srv = self.http()
        fw_rps, fw_us = self.http("fw_")
        return {"loop_ns": loop, "ping_ns": ping, "rps": rps, "srv_us": srv, "fw_rps": fw_rps, "fw_us": fw_us}

    def with_probe(self, name: str, capture: dict) -> tuple[dict[str, float], float, dict]:
        staging = Path(tempfile.mkdtemp(dir=self.d))
        window = LOOP_S + PING_S + 2 * HTTP_S + 1.5
        t0 = time.monotonic()
        p = subprocess.Popen([sys.executable, "-c", PROBE, name, str(staging),
                              json.dumps({"probe_seconds": window, **capture})],
                             cwd=ROOT, stdout=subprocess.PIPE, text=True)
        marker = staging / "collectors" / name / "attached.json"
        while not marker.exists():
            if p.poll() is not None:
                raise RuntimeError(f"{name} probe ended before attaching: {p.stdout.read()[-500:]}")
            time.sleep(0.01)
        attach_s = time.monotonic() - t0
        w = self.workloads()
        out, _ = p.communicate(timeout=window + 60)
        res = json.loads(out.strip().splitlines()[-1])
        if res["status"] != "ok":
            raise RuntimeError(f"{name} probe: {res['status']} {res['reason']}")
        notes = dict(res["notes"])
        doc = staging / "collectors" / name / "syscalls.json"
        if doc.exists():     # each server's own calls, as the probe counted them
            recs = json.loads(doc.read_text())["records"]
            for which, srv in (("", self.server), ("fw_", self.framework)):
                if self.requests[which]:
                    calls = sum(r["count"] for r in recs if r["pid"] == srv.pid)
                    notes[f"{which}calls_per_request"] = calls / self.requests[which]
        shutil.rmtree(staging, ignore_errors=True)
        return w, attach_s, notes


def run(quick: bool = False) -> dict:
    rounds = 1 if quick else 2
    d = Path(tempfile.mkdtemp(prefix="gh-bench-probes-"))
    b = Bench(d)
    configs = {
        "syscalls, host-wide": ("syscalls", {}),
        "syscalls, filtered to another process": ("syscalls", {"targets_explicit": True,
                                                              "targets": [{"pid": b.idle.pid}]}),
        "runqlat": ("runqlat", {}),
    }
    base: dict[str, list[float]] = {k: [] for k in METRICS}
    got = {label: {"on": [], "off": [], "attach": [], "calls": [], "per_request": [], "fw_per_request": []}
           for label in configs}
    try:
        b.workloads()     # warm-up: page cache, CPU frequency, wrk's first connection
        prev = b.workloads()
        for k in METRICS:
            base[k].append(prev[k])
        for _ in range(rounds):
            for label, (name, cap) in configs.items():
                on, attach_s, notes = b.with_probe(name, cap)
                nxt = b.workloads()
                for k in METRICS:
                    base[k].append(nxt[k])
                g = got[label]
                g["on"].append(on)
                g["off"].append({k: (prev[k] + nxt[k]) / 2 for k in METRICS})
                g["attach"].append(attach_s)
                g["calls"].append(notes.get("calls") or notes.get("samples") or 0)
                for which in SERVERS:
                    if f"{which}calls_per_request" in notes:
                        g[f"{which}per_request"].append(notes[f"{which}calls_per_request"])
                prev = nxt
    finally:
        b.close()
        shutil.rmtree(d, ignore_errors=True)

    results = [
        _row("getppid() loop, no probe: CPU per call", "ns", base["loop_ns"]),
        _row("pipe ping-pong on one CPU, no probe: CPU per round trip", "ns", base["ping_ns"]),
    ]
    for which, server in SERVERS.items():
        results += [_row(f"HTTP {server}, wrk -t1 -c16, no probe", "req/s", base[f"{which}rps"]),
                    _row(f"HTTP {server}, no probe: server CPU per request", "us", base[f"{which}us" if which
                                                                                        else "srv_us"])]
    per_call_host: list[float] = []
    for label, g in got.items():
        on, off = g["on"], g["off"]
        per_call = [a["loop_ns"] - z["loop_ns"] for a, z in zip(on, off, strict=True)]
        results += [
            _row(f"{label}: CPU added per system call (getppid loop)", "ns", per_call,
                 notes="worst case: a process doing nothing but system calls"),
            _row(f"{label}: getppid loop slowdown", "%",
                 [100 * (a["loop_ns"] - z["loop_ns"]) / a["loop_ns"] for a, z in zip(on, off, strict=True)]),
            _row(f"{label}: CPU added per pipe round trip (2 context switches, 4 calls)", "ns",
                 [a["ping_ns"] - z["ping_ns"] for a, z in zip(on, off, strict=True)]),
        ]
        for which, server in SERVERS.items():
            rk = f"{which}rps"
            results.append(_row(f"{label}: HTTP {server}, throughput loss measured side by side", "%",
                                [100 * (z[rk] - a[rk]) / z[rk] for a, z in zip(on, off, strict=True)],
                                notes="wall-clock req/s on a shared 2-core VM: +-20 % between identical runs"))
        results.append(_row(f"{label}: compile and attach (collector start to attached.json)", "s", g["attach"]))
        if label.startswith("syscalls, host"):
            per_call_host = per_call
            results.append(_row(f"{label}: system calls aggregated per window "
                                f"({LOOP_S + PING_S + 2 * HTTP_S + 1.5:g} s)", "calls", g["calls"]))
    host = got["syscalls, host-wide"]
    for which, server in SERVERS.items():
        n = host[f"{which}per_request"]
        if not n or not per_call_host:
            continue
        cpu_us = statistics.median(base[f"{which}us" if which else "srv_us"])
        results.append(_row(f"HTTP {server}: system calls per request (counted by the probe)", "calls", n))
        est = [100 * (k * c / 1000) / cpu_us for k, c in zip(n, per_call_host, strict=True)]
        target = "< 5 %"
        results.append(_row(f"syscalls, host-wide: HTTP {server}, throughput loss estimated", "%", est, target,
                            statistics.median(est) < 5.0,
                            notes="system calls per request x CPU added per call / server CPU per request: the "
                                  "loss of a CPU-bound server, robust to other load on the machine"))
    return {"area": "probes", "results": results,
            "commands": ["taskset -c 0 ./loop 1; taskset -c 0 ./pingpong 1  (C; CPU time from getrusage)",
                         "taskset -c 1 wrk -t1 -c16 -d1s http://127.0.0.1:PORT/status  (servers pinned to CPU 0; "
                         "its CPU time from /proc/PID/schedstat)",
                         "agent.runner.run_one('syscalls'|'runqlat', ...) in a child; workloads after attached.json; "
                         "sequence B P1 B P2 B P3 B per round"],
            "machine": f"{platform.node()} {os.cpu_count()} cpus, kernel {platform.release()}, "
                       f"Python {platform.python_version()}"}


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
