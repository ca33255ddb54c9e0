"""One real incident, made once for all report tests, captured with the real CLI.

The ``incident`` fixture creates each condition for real, then runs ``goldenhour
snapshot`` as responders would:
- an OOM-kill report written to /dev/kmsg in the kernel's own format (three records:
  ``invoked oom-killer``, ``oom-kill:constraint=...``, ``Out of memory: Killed process``);
- a real segfault (a child process dereferencing NULL);
- a conntrack table filled past ``nf_conntrack_max`` in a throw-away network namespace
  (the max is global and read-only inside a namespace on this kernel, so the namespace
  is filled to the host's max, about 5 s);
- a listen-queue overflow on loopback in a second namespace (backlog 1, never accepting);
- a deadlocked Python target (two threads, two locks), a descriptor-hungry process
  (soft RLIMIT_NOFILE 256, 240 open), a process whose thread waits 0.3 s at a time for a
  file lock another thread holds (slow ``flock`` calls), and busy loops sharing one CPU
  (run-queue latency) while the eBPF probes run;
- a JVM whose two threads deadlock on two monitors (``tests/dumptargets.py``), when a JDK
  and the threads collector are here;
- an application log with timestamped lines around the capture.
Host ``web-1`` captures all of it; host ``web-2`` (the same machine under another
``host.name``) captures kernel messages and host facts into the same incident, so the
report merges two hosts.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.helpers.netns import delete as delete_netns, make_netns

ROOT = Path(__file__).resolve().parents[2]
TARGETS = Path(__file__).resolve().parent / "targets"
WANTED = ("dmesg", "host", "sockets", "conntrack", "logs", "process", "threads", "runqlat", "syscalls", "tcpretrans")
PROBES = {"runqlat", "syscalls", "tcpretrans"}
SPINNERS = 6


def run_gh(cfg: Path, *args: str, timeout: float = 300, env: dict | None = None,
           cwd: Path | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e["GOLDENHOUR_CONFIG"] = str(cfg)
    e.pop("GOLDENHOUR_STORE", None)
    if env:
        e.update(env)
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=timeout,
                          env=e, cwd=cwd or ROOT)


def available_collectors() -> set[str]:
    from agent import registry
    return set(registry.collectors())


def conntrack_fillable() -> str | None:
    """Why a full conntrack table cannot be made here (None if it can)."""
    try:
        mx = int(Path("/proc/sys/net/netfilter/nf_conntrack_max").read_text())
    except OSError:
        return "nf_conntrack is not loaded"
    if mx > 600_000:
        return f"nf_conntrack_max is {mx}: too many entries to fill in a test"
    if subprocess.run(["which", "nft"], capture_output=True).returncode:
        return "nft is not installed"
    return None


FILL = r'''
import socket
n = int(open("/proc/sys/net/netfilter/nf_conntrack_max").read()) + 3000
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(n):     # distinct destinations across 127/8: one UNREPLIED entry each, past the max
    s.sendto(b"", ("127.%d.%d.%d" % ((i >> 16) & 255, (i >> 8) & 255, i & 255), 9999))
'''


def write_kmsg(lines: list[str]) -> None:
    fd = os.open("/dev/kmsg", os.O_WRONLY)
    try:
        for line in lines:
            os.write(fd, line.encode())
    finally:
        os.close(fd)


@dataclass
class Incident:
    id: str
    store: Path
    cfg: Path
    workdir: Path
    oom_pid: int
    oom_comm: str
    segv_pid: int
    listen_port: int
    deadlock_pid: int
    fd_pid: int
    lock_pid: int
    jvm_pid: int | None
    jvm_skip: str
    app_log: Path
    log_error: str
    conntrack_skip: str | None
    collectors: set[str]
    spinners: list[int] = field(default_factory=list)
    bundles: list[Path] = field(default_factory=list)
    snapshots: list[dict] = field(default_factory=list)

    def gh(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return run_gh(self.cfg, *args, **kw)

    def report_json(self, *sources: str) -> dict:
        args = list(sources) or ["--incident", self.id]
        cp = self.gh("report", *args, "--format", "json")
        assert cp.returncode == 0, cp.stderr
        return json.loads(cp.stdout)


@pytest.fixture(scope="session")
def incident(tmp_path_factory):
    work = tmp_path_factory.mktemp("report")
    store = work / "store"
    store.mkdir()
    inc_id = f"INC-RPT-{uuid.uuid4().hex[:6]}"
    avail = available_collectors()
    collectors = {c for c in WANTED if c in avail}
    ct_skip = conntrack_fillable() if "conntrack" in collectors else "no conntrack collector"
    procs: list[subprocess.Popen] = []
    stoppers: list = []
    namespaces: list[str] = []
    try:
        # a JVM whose two threads deadlock (the runtime itself reports it), when the threads collector and a
        # JDK are here; started first so its deadlock has formed long before the capture
        jvm, jvm_skip = None, ""
        if "threads" not in collectors:
            jvm_skip = "no threads collector"
        elif not (shutil.which("java") and shutil.which("javac") and shutil.which("jcmd")):
            jvm_skip = "no JDK (java, javac, jcmd)"
        else:
            try:
                from tests import dumptargets
                jvm = dumptargets.jvm_target(work)
                stoppers.append(jvm.stop)
            except (ImportError, AttributeError) as exc:
                jvm_skip = f"tests/dumptargets.py has no JVM target ({exc})"
        # listen-queue overflow in its own namespace (fresh counters: exactly what we caused)
        ns_listen = make_netns("gh-rpt-ls", conntrack=False)
        namespaces.append(ns_listen)
        lp = subprocess.Popen(["ip", "netns", "exec", ns_listen, sys.executable, str(TARGETS / "listen_overflow.py")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(lp)
        ready = lp.stdout.readline().split()
        assert ready and ready[0] == "READY" and int(ready[2]) > 0, ready
        listen_port = int(ready[1])
        # a full conntrack table in another namespace
        ns_ct = None
        if ct_skip is None:
            ns_ct = make_netns("gh-rpt-ct", conntrack=True)
            namespaces.append(ns_ct)
            subprocess.run(["ip", "netns", "exec", ns_ct, sys.executable, "-c", FILL], check=True, timeout=120)
        # targets: a deadlock and a descriptor-hungry process (default signal dispositions, own session)
        targets = {}
        for name in ("deadlock", "fd_hungry", "lock_contention"):
            p = subprocess.Popen([sys.executable, str(TARGETS / f"{name}.py")], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, start_new_session=True, restore_signals=True)
            procs.append(p)
            line = p.stdout.readline().split()
            assert line and line[0] == "READY", (name, line, p.stderr.read() if p.poll() is not None else "")
            targets[name] = p.pid
        # a real segfault
        segv = subprocess.run([sys.executable, "-c", "import ctypes, os; print(os.getpid(), flush=True); "
                               "ctypes.string_at(0)"], capture_output=True, text=True)
        assert segv.returncode == -11, segv
        segv_pid = int(segv.stdout.split()[0])
        # the OOM killer's report, as the kernel words it
        oom_pid = 40000 + int(uuid.uuid4().hex[:4], 16) % 20000
        oom_comm = f"java-{uuid.uuid4().hex[:4]}"
        write_kmsg([
            f"<4>{oom_comm} invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), order=0, "
            f"oom_score_adj=0\n",
            f"<6>oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,"
            f"task_memcg=/system.slice/orders.service,task={oom_comm},pid={oom_pid},uid=1000\n",
            f"<3>Out of memory: Killed process {oom_pid} ({oom_comm}) total-vm:8388608kB, anon-rss:6291456kB, "
            f"file-rss:2048kB, shmem-rss:0kB, UID:1000 pgtables:12544kB oom_score_adj:0\n",
        ])
        # an application log around the capture
        now = datetime.now(timezone.utc)
        log_error = f"ERROR upstream orders-db timed out after 5000 ms (request {uuid.uuid4().hex[:8]})"
        app_log = work / "app.log"
        app_log.write_text(
            f"{(now - timedelta(minutes=3)).strftime('%Y-%m-%d %H:%M:%S,%f')[:-3]} INFO started worker 3\n"
            f"{(now - timedelta(minutes=2)).strftime('%Y-%m-%dT%H:%M:%S.%f')[:-3]}Z {log_error}\n"
            f"{(now - timedelta(minutes=1)).strftime('%b %d %H:%M:%S')} web-1 app[77]: request | pipe | failed\n"
            f"{(now - timedelta(days=3)).strftime('%Y-%m-%dT%H:%M:%SZ')} ERROR from three days ago, out of window\n"
            "a line without a timestamp: ERROR but no time\n")
        cfg = work / "config.toml"
        ns_lines = f'[collectors.sockets]\nnetns = "/run/netns/{ns_listen}"\n'
        if ns_ct:
            ns_lines += f'[collectors.conntrack]\nnetns = "/run/netns/{ns_ct}"\n'
        cfg.write_text(f'[store]\npath = "{store}"\n[host]\nname = "web-1"\n[logs]\njournal = false\n'
                       f'paths = []\n{ns_lines}')
        inc = Incident(id=inc_id, store=store, cfg=cfg, workdir=work, oom_pid=oom_pid, oom_comm=oom_comm,
                       segv_pid=segv_pid, listen_port=listen_port, deadlock_pid=targets["deadlock"],
                       fd_pid=targets["fd_hungry"], lock_pid=targets["lock_contention"],
                       jvm_pid=jvm.pid if jvm else None, jvm_skip=jvm_skip, app_log=app_log, log_error=log_error,
                       conntrack_skip=ct_skip, collectors=collectors)
        args = ["snapshot", "--incident", inc_id, "--title", "checkout latency and errors", "--json",
                "--pid", str(targets["deadlock"]), "--pid", str(targets["fd_hungry"]),
                "--pid", str(targets["lock_contention"]), "--log", str(app_log),
                *(["--pid", str(jvm.pid)] if jvm else []),
                "--reason", "report test"]
        for c in sorted(collectors):
            args += ["--collector", c]
        spinners: list[subprocess.Popen] = []
        if collectors & PROBES:
            args += ["--probe-seconds", "1"]
        if "runqlat" in collectors:
            # busy loops sharing CPU 0 wait for it in turn: real run-queue latency, only while captured
            for _ in range(SPINNERS):
                sp = subprocess.Popen([sys.executable, str(TARGETS / "spinner.py")], stdout=subprocess.PIPE,
                                      text=True, start_new_session=True)
                spinners.append(sp)
                procs.append(sp)
                assert sp.stdout.readline().startswith("READY")
                args += ["--pid", str(sp.pid)]
            inc.spinners = [sp.pid for sp in spinners]
        try:
            cp = inc.gh(*args)
        finally:
            for sp in spinners:
                sp.kill()
        assert cp.returncode == 0, cp.stderr
        inc.snapshots.append(json.loads(cp.stdout))
        # a second host of the same incident
        cfg2 = work / "config-web2.toml"
        cfg2.write_text(f'[store]\npath = "{store}"\n[host]\nname = "web-2"\n')
        cp = run_gh(cfg2, "snapshot", "--incident", inc_id, "--json", "--collector", "dmesg", "--collector", "host")
        assert cp.returncode == 0, cp.stderr
        inc.snapshots.append(json.loads(cp.stdout))
        inc.bundles = [Path(s["bundle"]) for s in inc.snapshots]
        yield inc
    finally:
        for stop in stoppers:
            stop()
        for p in procs:
            if p.poll() is None:
                if p.stdin:
                    p.stdin.close()
                p.kill()
            p.wait(timeout=10)
            for f in (p.stdout, p.stderr):
                if f:
                    f.close()
        for ns in namespaces:
            delete_netns(ns)


@pytest.fixture(scope="session")
def report(incident) -> dict:
    """The JSON report of the whole incident (both hosts)."""
    return incident.report_json()
