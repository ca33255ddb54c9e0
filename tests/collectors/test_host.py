"""host against independent tools: nproc, uname, df, and a process the test makes heavy."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from collectors.host import parse_meminfo, parse_psi


def test_host_facts_agree_with_independent_tools(run_collector, spawn):
    # a process with a large RSS that must show up among the top processes by memory
    hog = spawn([sys.executable, "-c",
                 "b = bytearray(700 * 2**20)\nfor i in range(0, len(b), 4096): b[i] = 1\n"
                 "print('READY', flush=True)\nimport time; time.sleep(600)"])
    res = run_collector("host")
    assert res.status == "ok", res.reason
    h = json.loads((res.out / "host.json").read_text())
    assert h["cpu"]["count"] == int(subprocess.run(["nproc", "--all"], capture_output=True, text=True).stdout)
    assert h["kernel"]["release"] == subprocess.run(["uname", "-r"], capture_output=True, text=True).stdout.strip()
    assert hog.pid in [p["pid"] for p in h["top_processes"]["by_rss"]]
    row = next(p for p in h["top_processes"]["by_rss"] if p["pid"] == hog.pid)
    assert row["rss_bytes"] > 600 * 2**20 and row["user"] == "root"
    root = next(m for m in h["mounts"] if m["mount"] == "/")
    df = subprocess.run(["df", "-B1", "--output=size,avail", "/"], capture_output=True, text=True).stdout.split()
    assert abs(root["size_bytes"] - int(df[2])) <= int(df[2]) * 0.01
    assert abs(root["avail_bytes"] - int(df[3])) <= 512 * 2**20     # disks move a little
    assert h["memory"]["MemTotal"] == parse_meminfo(open("/proc/meminfo").read())["MemTotal"]
    assert 0 < h["fd"]["allocated"] <= h["fd"]["max"]
    assert set(h["psi"]) == {"cpu", "memory", "io"} and "avg10" in h["psi"]["memory"]["some"]
    assert "net.core.somaxconn" in h["sysctls"]
    assert (res.out / "proc" / "meminfo").read_text().startswith("MemTotal:")


def test_parse_psi_and_meminfo():
    psi = parse_psi("some avg10=1.50 avg60=0.20 avg300=0.00 total=12345\n"
                    "full avg10=0.75 avg60=0.10 avg300=0.00 total=999\n")
    assert psi["some"]["avg10"] == 1.5 and psi["full"]["total"] == 999
    mem = parse_meminfo("MemTotal:       24000000 kB\nHugePages_Total:       0\n")
    assert mem == {"MemTotal": 24000000 * 1024, "HugePages_Total": 0}
