"""host against independent tools (nproc, uname, df, free, sysctl, findmnt) and processes the test makes heavy.

Real targets: a process that holds RSS, descriptors and burns CPU; a process the test
parks in D state (a vfork parent whose child blocks opening a FIFO); a FUSE mount whose
server never answers, inside a private mount namespace, so ``statvfs`` hangs for real.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from collectors.host import (PSEUDO_FS, cpu_usage, parse_cpuinfo, parse_meminfo, parse_mountinfo,
                             parse_os_release, parse_pid_stat, parse_proc_stat, parse_psi)

ROOT = Path(__file__).resolve().parents[2]
MARK = "goldenhour-host-test-hog"

HOG = textwrap.dedent("""
    import os, sys
    b = bytearray(300 * 2**20)
    for i in range(0, len(b), 4096):
        b[i] = 1
    fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(200)]
    print("READY", flush=True)
    x = 0
    while True:          # burn one CPU until killed
        x += 1
""")


def sh(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def _vmrss(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def host_run(tmp_path_factory):
    """One real run of the host collector while a hog and a D-state process exist."""
    from agent import runner
    tmp = tmp_path_factory.mktemp("host")
    hog = subprocess.Popen([sys.executable, "-c", HOG, MARK], stdout=subprocess.PIPE, text=True,
                           start_new_session=True)
    fifo = tmp / "block.fifo"
    os.mkfifo(fifo)
    # The parent of a vfork (posix_spawn) waits uninterruptibly until its child execs; the
    # child first opens the FIFO for reading, which blocks until the test opens the writing end.
    dproc = subprocess.Popen([sys.executable, "-c",
                              "import os, sys\nprint('READY', flush=True)\n"
                              "os.posix_spawn('/bin/true', ['true'], {}, file_actions="
                              "[(os.POSIX_SPAWN_OPEN, 0, sys.argv[1], os.O_RDONLY, 0)])\n", str(fifo)],
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
    writer = None
    try:
        assert hog.stdout.readline().startswith("READY")
        assert dproc.stdout.readline().startswith("READY")
        deadline = time.monotonic() + 30
        while _state(dproc.pid) != "D":         # wait for readiness: the spawn is under way
            assert time.monotonic() < deadline, "the vfork parent never reached D state"
            time.sleep(0.01)
        res = runner.run_one("host", tmp / "staging")
        h = json.loads((res.out / "host.json").read_text()) if (res.out / "host.json").exists() else None
        facts = {"hog_pid": hog.pid, "hog_rss": _vmrss(hog.pid), "hog_fds": len(os.listdir(f"/proc/{hog.pid}/fd")),
                 "d_pid": dproc.pid}
        writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)    # releases the vfork child
        dproc.wait(timeout=30)
        yield res, h, facts
    finally:
        if writer is not None:
            os.close(writer)
        for p in (hog, dproc):
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
            p.stdout.close()


def _state(pid: int) -> str:
    text = open(f"/proc/{pid}/stat").read()
    return text[text.rindex(")") + 2]


def test_host_json_agrees_with_independent_tools(host_run):
    res, h, _ = host_run
    assert res.status == "ok", res.reason
    assert h["cpu"]["count"] == int(sh("getconf", "_NPROCESSORS_ONLN"))
    assert h["cpu"]["configured"] == int(sh("nproc", "--all"))
    assert h["cpu"]["available"] == int(sh("nproc"))
    assert h["kernel"]["release"] == sh("uname", "-r").strip()
    assert h["kernel"]["version"] == sh("uname", "-v").strip()
    assert h["os"]["PRETTY_NAME"] == sh("sh", "-c", ". /etc/os-release && printf %s \"$PRETTY_NAME\"")
    free = sh("free", "-b").splitlines()[1].split()
    assert h["memory"]["MemTotal"] == int(free[1])
    assert h["memory_summary"]["total_bytes"] == int(free[1])
    root = next(m for m in h["mounts"] if m["mount"] == "/")
    df = sh("df", "-B1", "--output=size,avail", "/").split()
    assert abs(root["size_bytes"] - int(df[2])) <= int(df[2]) * 0.01
    assert abs(root["avail_bytes"] - int(df[3])) <= 512 * 2**20     # other tests write meanwhile
    assert h["fd"]["max"] == int(sh("sysctl", "-n", "fs.file-max"))
    assert 0 < h["fd"]["allocated"] <= h["fd"]["max"]
    for key in ("net.core.somaxconn", "vm.swappiness", "kernel.pid_max", "net.ipv4.tcp_max_syn_backlog",
                "vm.overcommit_memory", "net.ipv4.ip_local_port_range"):
        assert h["sysctls"][key] == " ".join(sh("sysctl", "-n", key).split()), key
    assert abs(h["uptime_s"] - float(open("/proc/uptime").read().split()[0])) < 600
    assert h["boot_id"] == open("/proc/sys/kernel/random/boot_id").read().strip()
    assert h["timezone"]["utc_offset"] == sh("date", "+%z").strip()           # as date(1) sees it
    assert h["timezone"]["abbreviation"] == sh("date", "+%Z").strip()
    assert (res.out / "proc" / "meminfo").read_text().startswith("MemTotal:")
    assert (res.out / "os-release").exists() and (res.out / "proc" / "mountinfo").exists()


def test_mounts_are_the_real_ones_with_usage(host_run):
    _, h, _ = host_run
    real = set()
    for line in sh("findmnt", "-rn", "-o", "TARGET,FSTYPE").splitlines():
        target, fstype = line.rsplit(" ", 1)
        if fstype not in PSEUDO_FS:
            real.add(target.encode().decode("unicode_escape"))
    got = {m["mount"] for m in h["mounts"]}
    assert got <= real and "/" in got
    assert all(m["fstype"] not in PSEUDO_FS for m in h["mounts"])
    assert all(0 <= m["used_percent"] <= 100 for m in h["mounts"] if "used_percent" in m)


def test_the_heavy_process_is_among_the_top_by_rss_and_by_cpu_now(host_run):
    _, h, f = host_run
    by_rss = {p["pid"]: p for p in h["top_processes"]["by_rss"]}
    by_now = {p["pid"]: p for p in h["top_processes"]["by_cpu_now"]}
    assert f["hog_pid"] in by_rss and f["hog_pid"] in by_now
    p = by_rss[f["hog_pid"]]
    assert abs(p["rss_bytes"] - f["hog_rss"]) < 16 * 2**20 and p["rss_bytes"] > 300 * 2**20
    assert p["fds"] == f["hog_fds"] and p["fds"] >= 200
    assert p["user"] == "root" and p["threads"] == 1 and p["state"] == "R"
    assert MARK in p["cmdline"] and p["ppid"] == os.getpid()
    assert by_now[f["hog_pid"]]["cpu_percent"] > 20       # a busy loop, measured over the window
    assert len(h["top_processes"]["by_rss"]) <= 50
    cpu = h["cpu"]["usage_percent"]
    assert cpu["busy"] > 0 and abs(sum(cpu[k] for k in cpu if k != "busy") - 100) < 1


def test_a_process_in_d_state_is_listed(host_run):
    res, h, f = host_run
    assert res.status == "ok"            # reading a D-state process's details did not hang
    d = {p["pid"]: p for p in h["d_state"]}
    assert f["d_pid"] in d
    assert d[f["d_pid"]]["state"] == "D" and "posix_spawn" in d[f["d_pid"]]["cmdline"]
    assert h["processes"]["states"].get("D", 0) >= 1


def test_psi_matches_the_kernel_files(host_run):
    _, h, _ = host_run
    for res in ("cpu", "memory", "io"):
        now = parse_psi(open(f"/proc/pressure/{res}").read())
        assert set(h["psi"][res]) == set(now)
        for line, vals in h["psi"][res].items():
            assert set(vals) == {"avg10", "avg60", "avg300", "total"}
            assert 0 <= vals["total"] <= now[line]["total"]       # totals only grow


def test_cgroups_are_read(host_run):
    _, h, _ = host_run
    assert h["cgroup_version"] in (1, 2)
    root = next(c for c in h["cgroups"] if c["path"] == "/")
    assert root["memory_current_bytes"] is None or root["memory_current_bytes"] > 0
    assert "oom_kills" in root and "cpu_quota_cores" in root


FUSE_HANG = textwrap.dedent("""
    import ctypes, json, os, sys
    sys.path.insert(0, sys.argv[1])
    from agent import runner
    mnt, staging = sys.argv[2], sys.argv[3]
    os.makedirs(mnt, exist_ok=True)
    fd = os.open("/dev/fuse", os.O_RDWR)
    libc = ctypes.CDLL(None, use_errno=True)
    opts = f"fd={fd},rootmode=40000,user_id=0,group_id=0".encode()
    if libc.mount(b"goldenhour-hang", mnt.encode(), b"fuse", 0, opts) != 0:
        print(json.dumps({"mount_error": os.strerror(ctypes.get_errno())}))
        sys.exit(0)
    # nobody ever reads /dev/fuse: the INIT request stays unanswered, so statfs() blocks
    res = runner.run_one("host", __import__("pathlib").Path(staging),
                         options={"read_timeout_s": 0.3, "cpu_sample_s": 0})
    os.close(fd)                        # aborts the connection: nothing stays blocked
    libc.umount2(mnt.encode(), 2)       # MNT_DETACH
    print(json.dumps({"status": res.status, "reason": res.reason, "out": str(res.out)}))
""")


@pytest.mark.skipif(not os.path.exists("/dev/fuse") or not shutil.which("unshare"),
                    reason="needs /dev/fuse and unshare")
def test_a_hung_mount_costs_only_its_own_row(tmp_path):
    # private mount namespace: the hanging mount is invisible to everything else on the machine
    cp = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c", FUSE_HANG,
                         str(ROOT), str(tmp_path / "mnt"), str(tmp_path / "staging")],
                        capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr
    r = json.loads(cp.stdout.strip().splitlines()[-1])
    if "mount_error" in r:
        pytest.skip(f"cannot mount FUSE here: {r['mount_error']}")
    assert r["status"] == "partial" and "statvfs did not return" in r["reason"]
    h = json.loads((Path(r["out"]) / "host.json").read_text())
    hung = next(m for m in h["mounts"] if m["mount"] == str(tmp_path / "mnt"))
    assert "did not return" in hung["error"] and "size_bytes" not in hung
    assert any(m["mount"] == "/" and m["size_bytes"] > 0 for m in h["mounts"])
    assert h["top_processes"]["by_rss"] and h["memory"]["MemTotal"] > 0


# -- pure parsers -------------------------------------------------------------

def test_parse_psi_some_and_full_lines():
    psi = parse_psi("some avg10=1.50 avg60=0.20 avg300=0.00 total=12345\n"
                    "full avg10=0.75 avg60=0.10 avg300=0.00 total=999\n")
    assert psi == {"some": {"avg10": 1.5, "avg60": 0.2, "avg300": 0.0, "total": 12345},
                   "full": {"avg10": 0.75, "avg60": 0.1, "avg300": 0.0, "total": 999}}
    assert parse_psi("") == {}
    assert parse_psi("some avg10=bad total=7\n") == {"some": {"total": 7}}


def test_parse_meminfo_and_proc_stat():
    mem = parse_meminfo("MemTotal:       24000000 kB\nHugePages_Total:       0\nbogus\n")
    assert mem == {"MemTotal": 24000000 * 1024, "HugePages_Total": 0}
    st = parse_proc_stat("cpu  10 0 5 80 5 0 0 0 0 0\ncpu0 5 0 3 40 2 0 0 0 0 0\ncpu1 5 0 2 40 3 0 0 0 0 0\n"
                         "ctxt 99\nbtime 1700000000\nprocs_blocked 3\n")
    assert st["cpus"] == 2 and st["cpu"]["iowait"] == 5 and st["btime"] == 1700000000 and st["procs_blocked"] == 3
    u = cpu_usage(st["cpu"], {**st["cpu"], "user": 60, "idle": 110, "iowait": 25})
    assert u["user"] == 50.0 and u["idle"] == 30.0 and u["iowait"] == 20.0 and u["busy"] == 50.0
    assert cpu_usage(st["cpu"], st["cpu"]) == {}


def test_parse_pid_stat_with_a_hostile_command_name():
    line = "4242 (a) b (c) S) R 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 12345 1000000 512"
    r = parse_pid_stat(line + " 0 0" * 10)
    assert r["pid"] == 4242 and r["comm"] == "a) b (c) S" and r["state"] == "R"
    assert r["ticks"] == 300 and r["threads"] == 3 and r["start_ticks"] == 12345
    assert r["rss_bytes"] == 512 * os.sysconf("SC_PAGE_SIZE")
    assert parse_pid_stat("garbage") is None


def test_parse_mountinfo_escapes_and_optional_fields():
    text = ("36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n"
            "37 35 0:5 / /data rw shared:2 master:3 - xfs /dev/sdb1 rw\n"
            "broken line\n")
    m = parse_mountinfo(text)
    assert [x["mount"] for x in m] == ["/mnt/with space", "/data"]
    assert m[0]["fstype"] == "ext3" and m[0]["device"] == "/dev/root" and m[0]["dev"] == "98:0"
    assert m[1]["options"] == "rw"


def test_parse_os_release_and_cpuinfo():
    osr = parse_os_release('NAME="Debian GNU/Linux"\nID=debian\n# comment\nX="a \\"q\\" \\$b"\nY=\'single\'\n')
    assert osr == {"NAME": "Debian GNU/Linux", "ID": "debian", "X": 'a "q" $b', "Y": "single"}
    ci = parse_cpuinfo("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon\nphysical id\t: 0\n"
                       "core id\t: 0\nflags\t: fpu hypervisor\n\nprocessor\t: 1\nmodel name\t: Xeon\n"
                       "physical id\t: 0\ncore id\t: 0\n")
    assert ci == {"model": "Xeon", "vendor": "GenuineIntel", "processors": 2, "sockets": 1, "cores": 1,
                  "hypervisor": True}
