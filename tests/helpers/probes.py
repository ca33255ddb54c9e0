"""Helpers shared by the eBPF probe tests (syscalls, runqlat, tcpretrans, biolatency, oomkill).

Not a collector (tests/helpers is loaded only through GOLDENHOUR_EXTRA_COLLECTORS by
the pipeline tests, and this module exports no COLLECTOR). Each probe test runs the
real collector through the real runner; a target that must act inside the probe
window waits for the collector's ``attached.json`` (written once the programs are
attached), never for a fixed time.
"""
from __future__ import annotations

import io
import json
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from agent import runner


def bpf_ready() -> str | None:
    """Why the probes cannot run here (None when they can): the collector's own plan-time check."""
    from agent.registry import collectors
    return collectors()["syscalls"].unavailable()


skip_without_bpf = pytest.mark.skipif(bpf_ready() is not None, reason=f"eBPF probes unavailable: {bpf_ready()}")


def run(name: str, staging: Path, capture: dict[str, Any] | None = None, options: dict[str, Any] | None = None,
        timeout_s: float | None = None) -> runner.ItemResult:
    """Run one probe collector through the real runner (a forked child, as in a capture)."""
    return runner.run_one(name, staging, capture=capture or {}, options=options or {}, timeout_s=timeout_s)


def marker(staging: Path, name: str) -> Path:
    """Where collector ``name`` writes ``attached.json`` when run by ``run(name, staging)``."""
    return staging / "collectors" / name / "attached.json"


# A target that waits for the probe's attached.json, then does exactly N getppid() system calls
# (directly, via libc's syscall(2): nothing else in Python makes that call), then idles.
RARE = r'''
import ctypes, os, sys, time
marker, n = sys.argv[1], int(sys.argv[2])
libc = ctypes.CDLL(None, use_errno=True)
SYS_getppid = 110
print("READY", os.getpid(), flush=True)
while not os.path.exists(marker):
    time.sleep(0.002)
for _ in range(n):
    libc.syscall(SYS_getppid)
print("DONE", flush=True)
sys.stdin.read()
'''

# A target that, once the probe is attached, forks a child making exactly N getppid() calls.
FORKER = r'''
import ctypes, os, sys, time
marker, n = sys.argv[1], int(sys.argv[2])
libc = ctypes.CDLL(None, use_errno=True)
print("READY", os.getpid(), flush=True)
while not os.path.exists(marker):
    time.sleep(0.002)
pid = os.fork()
if pid == 0:
    for _ in range(n):
        libc.syscall(110)
    os._exit(0)
os.waitpid(pid, 0)
print("DONE", pid, flush=True)
sys.stdin.read()
'''

SLEEPER = r'''
import os, sys, time
log = open(sys.argv[1], "w") if len(sys.argv) > 1 else None   # each sleep's own duration, in us
print("READY", os.getpid(), flush=True)
while True:
    t = time.monotonic_ns()
    time.sleep(0.05)
    if log:
        log.write("%d\n" % ((time.monotonic_ns() - t) // 1000))
        log.flush()
'''


def wait_for(pred, timeout: float = 30.0, interval: float = 0.02, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def prog_loaded(prog_id: int) -> bool:
    """Is the BPF program with this kernel ID still loaded? (bpftool, an independent tool)."""
    cp = subprocess.run(["bpftool", "prog", "show", "id", str(prog_id)], capture_output=True, text=True)
    return cp.returncode == 0


def map_exists(map_id: int) -> bool:
    cp = subprocess.run(["bpftool", "map", "show", "id", str(map_id)], capture_output=True, text=True)
    return cp.returncode == 0


def our_programs() -> list[dict[str, Any]]:
    """Loaded programs named like ours (gh_*), from ``bpftool -j prog show``."""
    cp = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True)
    return [p for p in json.loads(cp.stdout or "[]") if str(p.get("name", "")).startswith("gh_")]


def assert_released(ids: dict[str, list[int]], timeout: float = 15.0) -> None:
    """Every program and map in ``ids`` is gone from the kernel (freeing is deferred: poll)."""
    assert ids.get("prog_ids"), ids
    wait_for(lambda: not any(prog_loaded(i) for i in ids["prog_ids"])
             and not any(map_exists(i) for i in ids.get("map_ids", [])),
             timeout=timeout, interval=0.1, what=f"BPF programs/maps {ids} to be released")


def bundle_members(bundle: Path) -> dict[str, bytes]:
    import zstandard
    raw = bundle.read_bytes()
    if bundle.name.endswith(".zst"):
        raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar if m.isfile()}


def target_json(pid: int, reason: str = "--pid") -> dict[str, Any]:
    from agent.targets import Target
    return Target.from_pid(pid, reason).to_json()


def which_all(*names: str) -> bool:
    from agent.collector import which
    return all(which(n) for n in names)
