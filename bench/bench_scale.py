#!/usr/bin/env python3
"""Benchmark: a quick capture on a big host: 50,000 sockets, 100,000 conntrack entries, 2,000 processes, 20,000 threads.

Set-up (everything ours, removed at the end):
- a network namespace ``gh-bench-scale`` with loopback up and an nftables rule that makes the
  kernel track connections in it; in it, processes (as many as RLIMIT_NOFILE needs) holding 25,000 established TCP
  connections over loopback (both ends: 50,000 TCP sockets, plus the listener) and 100,000
  unreplied UDP flows to distinct 127/8 addresses (UDP timeout 600 s in that namespace), so
  its conntrack table holds about 125,000 entries;
- 2,000 idle processes of a small C program with 10 threads each (20,000 threads; 64 KiB
  stacks), made by one parent; ``kernel.pid_max`` is raised for the run if it has too little
  room, and put back.

Measured, ``RUNS`` times: ``goldenhour snapshot --profile quick`` with the sockets and
conntrack collectors pointed at the namespace (``[collectors.sockets] netns`` and
``[collectors.conntrack] netns``): the command's wall time, the peak RSS of goldenhour's
largest process (the kernel's ``ru_maxrss`` over every process of the capture, helpers such
as ``ss`` included) and the peak of the whole tree's summed RSS (sampled every 20 ms), plus
each collector's own time from the manifest. Targets: under 10 s, peak RSS under 250 MB.

    .venv/bin/python bench/bench_scale.py [--quick]
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.helpers.netns import delete as delete_netns, make_netns

NS = "gh-bench-scale"
N_TCP, N_UDP, N_PROCS, N_THREADS = 25_000, 100_000, 2_000, 10

NETWORK = r"""
import resource, socket, sys
n_tcp, n_udp = int(sys.argv[1]), int(sys.argv[2])
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(4096)
addr, keep = srv.getsockname(), []
for k in range(0, n_tcp, 1000):
    batch = [socket.create_connection(addr) for _ in range(min(1000, n_tcp - k))]
    keep += batch + [srv.accept()[0] for _ in batch]
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0))
for i in range(1, n_udp + 1):   # one unreplied entry per destination address
    u.sendto(b"", ("127.%d.%d.%d" % ((i >> 16) & 255, (i >> 8) & 255, i & 255), 9))
print("READY", len(keep), flush=True)
sys.stdin.read()
"""

PROCS_C = r"""
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <unistd.h>
static void *idle(void *a) { for (;;) pause(); return a; }
int main(int argc, char **argv) {
    int procs = atoi(argv[1]), threads = atoi(argv[2]);
    for (int i = 0; i < procs; i++) {
        pid_t p = fork();
        if (p < 0) { perror("fork"); return 1; }
        if (p == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            pthread_attr_t at;
            pthread_attr_init(&at);
            pthread_attr_setstacksize(&at, 65536);
            for (int t = 1; t < threads; t++) {
                pthread_t th;
                if (pthread_create(&th, &at, idle, NULL)) { perror("pthread_create"); break; }
            }
            for (;;) pause();
        }
    }
    printf("READY\n");
    fflush(stdout);
    for (;;) pause();
}
"""


def sh(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), check=True, capture_output=True, text=True, **kw)


class Host:
    """The big host: the namespace with its sockets and flows, and the processes with their threads."""

    def __init__(self, work: Path, n_procs: int):
        self.work, self.procs, self.pid_max = work, None, None
        self.net: list[subprocess.Popen] = []
        delete_netns(NS)                      # left over by an interrupted run
        make_netns(NS, conntrack=True, unique=False)
        ex = ["ip", "netns", "exec", NS]
        # a process may hold RLIMIT_NOFILE descriptors (hard limit, not raised: often no CAP_SYS_RESOURCE)
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        per = max(1000, min(N_TCP, (hard - 200) // 2))
        self.net = []
        for k in range(0, N_TCP, per):
            self.net.append(subprocess.Popen(
                ex + [sys.executable, "-c", NETWORK, str(min(per, N_TCP - k)), str(N_UDP if k == 0 else 0)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True))
        for p in self.net:
            line = p.stdout.readline()
            if not line.startswith("READY"):
                raise RuntimeError(f"a socket holder did not start: {line!r}")
        need = n_procs * N_THREADS + len(psutil.pids()) * 4 + 4000
        pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
        if pid_max < need + 8192:
            self.pid_max = pid_max
            Path("/proc/sys/kernel/pid_max").write_text(str(max(65536, need + 8192)))
        exe = work / "idle-threads"
        sh("gcc", "-O1", "-pthread", "-o", str(exe), "-x", "c", "-", input=PROCS_C)
        self.procs = subprocess.Popen([str(exe), str(n_procs), str(N_THREADS)], stdout=subprocess.PIPE, text=True,
                                      start_new_session=True)
        if not self.procs.stdout.readline().startswith("READY"):
            raise RuntimeError("the process maker did not start")
        time.sleep(1)

    def facts(self) -> dict:
        ns_ct = sh("ip", "netns", "exec", NS, "cat", "/proc/sys/net/netfilter/nf_conntrack_count").stdout.strip()
        ss = sh("ip", "netns", "exec", NS, "ss", "-s").stdout
        tcp = next((ln for ln in ss.splitlines() if ln.startswith("TCP:")), "")
        tasks = sum(len(os.listdir(f"/proc/{p}/task")) for p in psutil.pids() if os.path.isdir(f"/proc/{p}/task"))
        return {"processes": len(psutil.pids()), "threads": tasks, "conntrack_entries": int(ns_ct), "ss_tcp": tcp}

    def close(self) -> None:
        for p in [self.procs, *self.net]:
            if p is not None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        delete_netns(NS)
        if self.pid_max:
            Path("/proc/sys/kernel/pid_max").write_text(str(self.pid_max))


def tree_rss(root: int) -> tuple[int, int]:
    """(sum, max) RSS in bytes over ``root`` and its descendants right now."""
    try:
        p = psutil.Process(root)
        ps = [p] + p.children(recursive=True)
    except psutil.Error:
        return 0, 0
    rss = []
    for q in ps:
        try:
            rss.append(q.memory_info().rss)
        except psutil.Error:
            pass
    return sum(rss), max(rss, default=0)


def capture(work: Path, cfg: Path) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "agent", "--config", str(cfg), "snapshot", "--profile", "quick",
                          "--incident", "BENCH-SCALE", "--no-upload", "--json"], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    peak = [0, 0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            s, m = tree_rss(p.pid)
            peak[0], peak[1] = max(peak[0], s), max(peak[1], m)
            time.sleep(0.02)
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = p.communicate(timeout=120)
    wall = time.perf_counter() - t0
    done.set()
    th.join()
    if p.returncode != 0:
        raise RuntimeError(f"snapshot failed ({p.returncode}): {err[-500:]}")
    res = json.loads(out)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    man = json.loads(Path(res["manifest"]).read_text())
    per = {c["name"]: {"status": c["status"], "s": round(c.get("duration_s") or 0, 2)}
           for c in man.get("collectors", [])}
    return {"wall": wall, "maxrss_kib": after if after > before else None, "tree_sum": peak[0],
            "tree_max": peak[1], "collectors": per, "size": res["size"]}


def run(quick: bool = False) -> dict:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))   # run.py's budget: still undo the set-up
    runs = 2 if quick else 3
    n_procs = N_PROCS
    work = Path(tempfile.mkdtemp(prefix="gh-bench-scale-", dir="/var/tmp"))
    host = None
    try:
        t0 = time.perf_counter()
        host = Host(work, n_procs)
        setup_s = time.perf_counter() - t0
        facts = host.facts()
        cfg = work / "gh.toml"
        cfg.write_text(f'[store]\npath = "{work / "store"}"\nreserve_bytes = 0\nreserve_percent = 0\n'
                       f'[collectors.sockets]\nnetns = "/run/netns/{NS}"\n'
                       f'[collectors.conntrack]\nnetns = "/run/netns/{NS}"\n')
        rs = []
        for _ in range(runs):
            rs.append(capture(work, cfg))
            shutil.rmtree(work / "store" / "incidents", ignore_errors=True)
    finally:
        if host is not None:
            host.close()
        shutil.rmtree(work, ignore_errors=True)
    walls = [r["wall"] for r in rs]
    # ru_maxrss of RUSAGE_CHILDREN only grows: the first run's figure is exact, later ones a lower bound
    maxrss = [r["maxrss_kib"] / 1024 for r in rs if r["maxrss_kib"]]
    sums = [r["tree_sum"] / 2**20 for r in rs]
    slow = max(rs[-1]["collectors"].items(), key=lambda kv: kv[1]["s"])
    per = ", ".join(f"{n} {v['s']:.2f} s" for n, v in sorted(rs[-1]["collectors"].items(),
                                                                key=lambda kv: -kv[1]["s"])[:6])
    scale = (f"{facts['processes']} processes, {facts['threads']} threads, {facts['conntrack_entries']} conntrack "
             f"entries in the namespace; {facts['ss_tcp']}")
    return {"area": "scale", "host": facts, "setup_s": round(setup_s, 1), "runs": rs, "results": [
        {"name": "quick capture on the big host (50k sockets, 100k+ conntrack, 2000 processes, 20k threads)",
         "unit": "s", "median": round(statistics.median(walls), 2), "min": round(min(walls), 2),
         "max": round(max(walls), 2), "runs": len(walls), "target": "< 10 s", "met": max(walls) < 10,
         "notes": f"{scale}; slowest collector {slow[0]} ({slow[1]['s']:.2f} s); per collector: {per}"},
        {"name": "peak RSS of goldenhour's largest process during it (ru_maxrss, helpers included)", "unit": "MB",
         "median": round(max(maxrss), 1) if maxrss else None, "runs": len(maxrss), "target": "< 250 MB",
         "met": (max(maxrss) < 250) if maxrss else None},
        {"name": "peak of the summed RSS of goldenhour's whole process tree (sampled every 20 ms)", "unit": "MB",
         "median": round(statistics.median(sums), 1), "min": round(min(sums), 1), "max": round(max(sums), 1),
         "runs": len(sums), "target": "< 250 MB", "met": max(sums) < 250,
         "notes": f"bundle {statistics.median(r['size'] for r in rs) / 2**20:.1f} MiB"},
    ], "commands": [
        "ip netns add gh-bench-scale; nft ct rule; 25k loopback TCP connections + 100k UDP flows inside it",
        f"idle-threads {n_procs} {N_THREADS}  (C: fork {n_procs}, 10 threads each)",
        "python -m agent --config CFG snapshot --profile quick --incident BENCH-SCALE --no-upload --json  "
        "(CFG: [collectors.sockets] and [collectors.conntrack] netns = /run/netns/gh-bench-scale)"]}


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=1))
