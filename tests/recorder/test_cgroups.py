"""Cgroup counters: v2 parsed from files real kernels wrote (tests/fixtures/cgroup2/PROVENANCE.md) and
from a real group on this machine's cgroup2 mount; v1 from real groups made here."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from agent.recorder import cgroups, signals
from agent.recorder.window import Entry

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "cgroup2"
UNIFIED = "/sys/fs/cgroup/unified"
V1 = "/sys/fs/cgroup"


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "cg"
    j = root / "system.slice" / "systemd-journald.service"
    d = root / "system.slice" / "docker-throttled.scope"
    k = root / "kubepods" / "pod1"
    for p in (j, d, k):
        p.mkdir(parents=True)
    shutil.copy(FIX / "systemd-journald.service" / "io.stat", j / "io.stat")
    shutil.copy(FIX / "docker-throttled.scope" / "cpu.stat", d / "cpu.stat")
    for f in ("cpu.pressure", "io.pressure", "memory.pressure"):
        shutil.copy(FIX / "thishost-unified" / f, d / f)
    for f in ("memory.max", "memory.current", "memory.stat"):
        shutil.copy(FIX / "kubepods-pod" / f, k / f)
    shutil.copy(FIX / "root" / "cpu.stat", root / "cpu.stat")
    return root


def test_v2_group_counters_from_recorded_files(tmp_path):
    root = _tree(tmp_path)
    s = cgroups.CgroupSampler(str(root), version=2).sample()
    assert s["v"] == 2
    g = s["g"]
    assert set(g) == {"system.slice/systemd-journald.service", "system.slice/docker-throttled.scope", "kubepods/pod1"}
    assert g["system.slice/systemd-journald.service"]["io"] == {"rbytes": 33456128, "wbytes": 7294976, "rios": 700,
                                                                "wios": 818}
    dk = g["system.slice/docker-throttled.scope"]
    assert dk["cpu"] == {"usage_usec": 73899, "user_usec": 27213, "system_usec": 46685, "nr_periods": 7,
                         "nr_throttled": 3, "throttled_usec": 139381}
    assert dk["psi"] == {"cpu": {"some": 445998007, "full": 0}, "io": {"some": 10027725, "full": 6333848},
                         "memory": {"some": 795, "full": 527}}
    assert g["kubepods/pod1"]["mem"] == 2481475584 and g["kubepods/pod1"]["mem_max"] == 7864320000
    # the root is left out (host counters cover it); its cpu.stat parses like any other
    assert cgroups.parse_flat((FIX / "root" / "cpu.stat").read_bytes())["usage_usec"] == 8210530646
    st = cgroups.parse_flat((FIX / "kubepods-pod" / "memory.stat").read_bytes())
    assert st["anon"] == 2472849408 and st["pgfault"] == 2503991 and len(st) == 40
    assert cgroups.parse_value(b"max\n") is None and cgroups.parse_value(b"garbage") is None


def test_v2_rates_from_two_recorded_io_stat_reads(tmp_path):
    samples = []
    for i, t in enumerate((1000.0, 1001.0)):
        io = cgroups.parse_io_stat((FIX / "cadvisor-container" / f"io.stat.{i}").read_bytes())
        samples.append(Entry(i, "sample", t, t, "b", {"t": t, "m": t, "cg": {"v": 2, "g": {"ctr": {"io": io}}}}))
    got = signals.by_name(signals.build(samples))["cgroup.ctr.io_mibps"].points
    assert got == [(1001.0, pytest.approx((227003599380480 - 227002702848000) / 2**20))]


def test_the_cgroup_version_is_read_from_the_mount_table():
    assert cgroups.detect(UNIFIED) == 2
    assert cgroups.detect(V1) == 1
    assert cgroups.detect("/nonexistent") == 0


def _busy(seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", f"import time\nt=time.time()\nwhile time.time()-t<{seconds}: pass"])


@pytest.mark.skipif(not os.path.isdir(UNIFIED) or os.geteuid() != 0, reason="needs root and a cgroup2 mount")
def test_v2_live_group_on_this_machines_cgroup2_mount(tmp_path):
    g = Path(UNIFIED) / f"gh-rec-{uuid.uuid4().hex[:8]}"
    g.mkdir()
    p = _busy(30)
    try:
        (g / "cgroup.procs").write_text(str(p.pid))
        s = cgroups.CgroupSampler(UNIFIED, version=2)
        a = s.sample()["g"][g.name]
        time.sleep(0.5)
        b = s.sample()["g"][g.name]
        assert b["cpu"]["usage_usec"] > a["cpu"]["usage_usec"]      # it ran (how much depends on the machine's load)
        assert set(b["psi"]) == {"cpu", "io", "memory"}
    finally:
        p.kill()
        p.wait()
        for _ in range(50):
            try:
                g.rmdir()
                break
            except OSError:
                time.sleep(0.1)


@pytest.mark.skipif(not os.path.isdir(f"{V1}/memory") or os.geteuid() != 0, reason="needs root and cgroup v1")
def test_v1_live_groups_memory_and_cpu():
    name = f"gh-rec-{uuid.uuid4().hex[:8]}"
    dirs = [Path(V1) / c / name for c in ("memory", "cpuacct")]
    for d in dirs:
        d.mkdir()
    p = subprocess.Popen([sys.executable, "-c", "import sys,time\nsys.stdin.readline()\nb=bytearray(64*2**20)\n"
                          "for i in range(0,len(b),4096): b[i]=1\nprint('READY',flush=True)\nt=time.time()\n"
                          "while time.time()-t<30: pass"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        for d in dirs:
            (d / "cgroup.procs").write_text(str(p.pid))
        p.stdin.write("go\n")                 # it allocates only once it is in the groups
        p.stdin.flush()
        assert p.stdout.readline().startswith("READY")
        s = cgroups.CgroupSampler(V1)
        a = s.sample()["g"][name]
        time.sleep(0.5)
        b = s.sample()["g"][name]
        assert b["mem"] >= 64 * 2**20 and b["mem_events"]["oom_kill"] == 0
        assert b["cpu"]["usage_usec"] > a["cpu"]["usage_usec"]
    finally:
        p.kill()
        p.wait()
        for d in dirs:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


GUEST = FIX / "debian12-6.1"          # a real cgroup v2 kernel's files (its README.md says how they were made)


def _guest_sample(reading: str) -> Entry:
    root = GUEST / reading / "sys" / "fs" / "cgroup"
    # the guest's /proc/self/mountinfo says where its cgroup2 hierarchy is mounted
    assert " - cgroup2 " in (GUEST / reading / "proc/self/mountinfo").read_text()
    up = float((GUEST / reading / "uptime").read_text().split()[0])        # the guest's clock at the reading
    cg = cgroups.CgroupSampler(str(root), version=2).sample()
    return Entry(0 if reading == "a" else 1, "sample", 1000 + up, up, "guest", {"t": 1000 + up, "m": up, "cg": cg})


def test_v2_sampler_and_signals_on_a_real_v2_guest_recording():
    """Two readings of Debian 12's 6.1 kernel (cpu, io, memory, pids controllers): a service two levels down
    at its CPU quota, with an OOM kill between the readings."""
    a, b = _guest_sample("a"), _guest_sample("b")
    g = b.data["cg"]["g"]
    assert set(g) == {"gh.slice", "gh.slice/app.service"}
    app = g["gh.slice/app.service"]
    assert app["cpu"] == {"usage_usec": 3764981, "user_usec": 2354687, "system_usec": 1410294, "nr_periods": 187,
                          "nr_throttled": 187, "throttled_usec": 25924272}
    assert app["mem"] == 49242112 and "mem_max" not in app          # memory.max "max": no limit
    assert app["mem_events"]["oom_kill"] == 1
    assert a.data["cg"]["g"]["gh.slice/app.service"]["mem_events"]["oom_kill"] == 0
    assert app["io"] == {"rbytes": 33554432, "wbytes": 33554432, "rios": 32, "wios": 32} and app["pids"] == 12
    assert app["psi"]["cpu"] == {"some": 13875685, "full": 13799394}
    s = signals.by_name(signals.build([a, b]))
    dt = b.mono - a.mono
    assert s["cgroup.gh.slice/app.service.cpu_pct"].points == [
        (b.wall, pytest.approx((3764981 - 2847643) / 1e6 / dt * 100))]
    assert s["cgroup.gh.slice/app.service.throttled_pct"].points[0][1] == pytest.approx(
        (25924272 - 20588939) / 1e6 / dt * 100)
    assert s["cgroup.gh.slice/app.service.oom_kill"].points == [(b.wall, 1.0)]     # the OOM kill, dated
    assert s["cgroup.gh.slice/app.service.psi_memory_some_pct"].points[0][1] == pytest.approx(43567 / 1e6 / dt * 100)
