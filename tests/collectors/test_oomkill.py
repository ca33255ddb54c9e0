"""oomkill against a real OOM kill, safely confined to a tiny memory cgroup of the test's own.

The victim is a process the test starts and moves into a new memory cgroup limited to
64 MiB (cgroup v1 ``memory.limit_in_bytes`` or v2 ``memory.max``); once the probe is
attached it allocates until the kernel's OOM killer, which only looks inside that
cgroup, kills it. The probe must report that pid; the kernel log must carry the
matching "Memory cgroup out of memory: Killed process" line (what the dmesg
collector and the report read). A second test checks the tracefs fallback: with no
tracefs mounted, the probe mounts one in its own mount namespace and the host's
mount table is unchanged.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from collectors import oomkill
from tests.helpers import probes
from tests.helpers.probes import skip_without_bpf

ROOT = Path(__file__).resolve().parent.parent.parent
LIMIT = 64 * 2**20

VICTIM = r'''
import os, sys, time
marker = sys.argv[1]
print("READY", os.getpid(), flush=True)
while not os.path.exists(marker):
    time.sleep(0.002)
hog = []
for _ in range(64):                       # at most 1 GiB, in case the limit did not apply
    hog.append(b"\1" * (16 << 20))        # touched pages: charged to the cgroup
print("NOT KILLED", flush=True)
'''


def _memory_cgroup() -> tuple[Path, str] | None:
    """A new memory cgroup (v2 at the root, or v1 under ours) and the file that limits it."""
    name = f"gh-oom-{uuid.uuid4().hex[:8]}"
    v2 = Path("/sys/fs/cgroup")
    if "memory" in (v2 / "cgroup.subtree_control").read_text().split() if (v2 / "cgroup.subtree_control").exists() \
            else False:
        return v2 / name, "memory.max"
    v1 = Path("/sys/fs/cgroup/memory")
    if (v1 / "memory.limit_in_bytes").exists():
        ours = next((l.split(":", 2)[2] for l in Path("/proc/self/cgroup").read_text().splitlines()
                     if l.split(":", 2)[1] == "memory"), "/")
        return v1 / ours.lstrip("/") / name, "memory.limit_in_bytes"
    return None


@pytest.fixture
def tiny_cgroup():
    found = _memory_cgroup()
    if found is None or os.geteuid() != 0:
        pytest.skip("needs root and a memory cgroup controller")
    path, limit_file = found
    path.mkdir()
    try:
        (path / limit_file).write_text(str(LIMIT))
        if (path / "memory.swap.max").exists():
            (path / "memory.swap.max").write_text("0")
        yield path
    finally:
        end = time.monotonic() + 10
        while True:
            try:
                path.rmdir()
                break
            except OSError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.05)


@skip_without_bpf
def test_real_oom_kill_in_a_memory_cgroup_is_reported(spawn, tmp_path, tiny_cgroup):
    staging = tmp_path / "staging"
    victim = spawn([sys.executable, "-c", VICTIM, str(probes.marker(staging, "oomkill"))])
    (tiny_cgroup / "cgroup.procs").write_text(str(victim.pid))   # before the probe attaches
    res = probes.run("oomkill", staging, capture={"probe_seconds": 2})
    assert res.status == "ok", res.reason
    assert victim.popen.wait(timeout=30) == -9, victim.popen.stdout.read()
    doc = json.loads((res.out / "oomkill.json").read_text())
    (ev,) = [e for e in doc["events"] if e["pid"] == victim.pid]
    assert doc["count"] >= 1 and ev["time"] >= doc["window"]["start_utc"]
    assert ev["trigger_pid"] == victim.pid and ev["trigger_comm"].startswith("python")
    assert (ev["comm"] or "").startswith("python")
    if "anon_rss_kb" in ev:          # Linux 6.8+: the victim's memory as the kernel saw it
        assert ev["anon_rss_kb"] * 1024 >= LIMIT // 2
    assert f"killed pid {victim.pid}" in (res.out / "oomkill.txt").read_text()
    probes.assert_released(json.loads((res.out / "attached.json").read_text()))
    log = subprocess.run(["dmesg"], capture_output=True, text=True).stdout
    assert f"Killed process {victim.pid} (python" in log


PRIVATE = r'''
import json, sys
from pathlib import Path
from agent import runner
res = runner.run_one("oomkill", Path(sys.argv[1]), capture={"probe_seconds": 0.5})
print(json.dumps({"status": res.status, "reason": res.reason, "tracefs": res.notes.get("tracefs")}))
'''


@skip_without_bpf
def test_probe_mounts_tracefs_privately_when_the_host_has_none(tmp_path):
    """In a mount namespace without tracefs, the probe still attaches, and mounts nothing outside."""
    before = Path("/proc/self/mounts").read_text()
    cp = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                         "for m in /sys/kernel/tracing /sys/kernel/debug/tracing /sys/kernel/debug; do "
                         "umount -l $m 2>/dev/null; done; exec \"$0\" -c \"$1\" \"$2\"",
                         sys.executable, PRIVATE, str(tmp_path / "staging")],
                        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout.strip().splitlines()[-1])
    assert out["status"] == "ok", out
    assert out["tracefs"]["mount"].startswith("private")
    assert Path("/proc/self/mounts").read_text().count("tracefs") == before.count("tracefs")


def test_program_reads_what_each_kernel_records():
    from collectors._bpf import parse_format
    old = oomkill.program(parse_format("\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;\n"))
    assert "e.has = 0;" in old and "e.pid = v" in old
    new = oomkill.program(parse_format(
        "\tfield:int pid;\toffset:8;\tsize:4;\n\tfield:__data_loc char[] comm;\toffset:12;\tsize:4;\n"
        "\tfield:unsigned long anon_rss;\toffset:24;\tsize:8;\n\tfield:short oom_score_adj;\toffset:64;\tsize:2;\n"))
    assert "loc & 0xffff" in new and "s16 v" in new and "e.anon_rss = v" in new
