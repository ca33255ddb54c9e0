"""agent/cgroups.py, the one cgroup reader, on both versions.

- cgroup v1, live: a real process in nested cgroups (``gh-*/svc.slice/app.service``) of the cpu,
  cpuacct, pids and memory hierarchies of this host, with limits set at different levels: the
  chains run from the process's cgroup to the root in each hierarchy, every value read is the
  one the kernel holds, the tightest limit is found wherever it sits, and two readings a second
  apart give the throttling of a busy loop under a 0.1-CPU quota.
- cgroup v2, recorded: the files a real cgroup-v2 kernel wrote (tests/fixtures/cgroup2/, made by
  scripts/record-cgroup2-fixtures.sh: Debian 12's 6.1 kernel, a service two levels down held at
  its CPU quota, pids.max and memory.max, read twice). The reader finds the hierarchy in the
  recorded mountinfo, the chain in the recorded /proc/PID/cgroup, the values in the files, the
  rates between the readings (the refused fork and the OOM kill that happened between them), and
  the report rule names the cgroups that bind.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent import cgroups as cg
from tests.helpers.cgroups import Nested, available
from tests.report.bundlemaker import T0, dmesg_json, findings

FIX = Path(__file__).resolve().parent / "fixtures" / "cgroup2" / "debian12-6.1"
BUSY = int((FIX / "guest.txt").read_text().split("busy_pid ", 1)[1].split()[0])


# -- cgroup v2, recorded on a real v2 kernel -----------------------------------------------------

def reading(name: str) -> tuple[list[cg.Hierarchy], list[tuple[cg.Hierarchy, list[str]]], dict[str, dict]]:
    """One recorded reading: hierarchies from its mountinfo, the busy process's chains, every cgroup read;
    each record's time is the guest's uptime at that reading (the rates need the guest's clock)."""
    base = FIX / name
    hiers = cg.hierarchies((base / "proc/self/mountinfo").read_text(), prefix=str(base))
    placed = cg.chains(BUSY, hiers, cgroup_text=(base / f"proc/{BUSY}/cgroup").read_text())
    at = float((base / "uptime").read_text().split()[0])
    recs = {}
    for h, chain in placed:
        for p in chain:
            recs[h.key(p)] = {**cg.read(h, p), "at": at}
    return hiers, placed, recs


def rec_file(name: str, path: str, f: str) -> str:
    return (FIX / name / "sys/fs/cgroup" / path.lstrip("/") / f).read_text()


def test_v2_hierarchy_and_chain_from_recorded_mountinfo_and_proc_cgroup():
    hiers, placed, _ = reading("a")
    assert [h.version for h in hiers] == [2]
    h = hiers[0]
    assert h.label == "v2" and h.mount == str(FIX / "a") + "/sys/fs/cgroup"
    assert {"cpu", "memory", "pids", "io"} <= set(h.controllers)
    assert set(h.controllers) == set(rec_file("a", "/", "cgroup.controllers").split())
    assert placed == [(h, ["/gh.slice/app.service", "/gh.slice", "/"])]
    assert h.key("/gh.slice") == "v2:/gh.slice"


def test_v2_values_are_the_recorded_files():
    _, _, recs = reading("b")
    app, sl, root = recs["v2:/gh.slice/app.service"], recs["v2:/gh.slice"], recs["v2:/"]
    assert all(r["exists"] for r in (app, sl, root))
    q, p = rec_file("b", "/gh.slice/app.service", "cpu.max").split()
    assert (app["cpu"]["quota_us"], app["cpu"]["period_us"]) == (int(q), int(p))
    assert sl["cpu"]["quota_us"] is None                                  # "max": no quota there
    stat = cg.parse_kv(rec_file("b", "/gh.slice/app.service", "cpu.stat"))
    assert {k: app["cpu"][k] for k in ("nr_periods", "nr_throttled", "throttled_usec", "usage_usec")} == \
        {k: stat[k] for k in ("nr_periods", "nr_throttled", "throttled_usec", "usage_usec")}
    assert sl["memory"]["max_bytes"] == int(rec_file("b", "/gh.slice", "memory.max")) == 48 * 2**20
    assert app["memory"]["max_bytes"] is None
    assert sl["memory"]["current_bytes"] == int(rec_file("b", "/gh.slice", "memory.current"))
    inactive = cg.parse_kv(rec_file("b", "/gh.slice", "memory.stat"))["inactive_file"]
    assert sl["memory"]["working_set_bytes"] == sl["memory"]["current_bytes"] - inactive
    assert sl["memory"]["events"] == cg.parse_kv(rec_file("b", "/gh.slice", "memory.events"))
    assert sl["pids"]["max"] == int(rec_file("b", "/gh.slice", "pids.max")) == 12
    assert sl["pids"]["current"] == int(rec_file("b", "/gh.slice", "pids.current"))
    io = app["io"]
    assert io["devices"] == cg.parse_io_stat(rec_file("b", "/gh.slice/app.service", "io.stat"))
    assert io["read_bytes"] == io["write_bytes"] == 32 * 2**20           # the O_DIRECT dd on the RAM disk
    assert set(app["pressure"]) == {"cpu", "memory", "io"} and "total" in app["pressure"]["cpu"]["some"]
    assert app["raw"]["cpu.max"] == rec_file("b", "/gh.slice/app.service", "cpu.max")


def test_v2_tightest_limits_sit_at_different_levels():
    _, _, recs = reading("b")
    t = cg.tightest(list(recs.values()))
    assert t["pids"]["cgroup"] == "v2:/gh.slice" and t["pids"]["max"] == 12    # not app.service's 50
    assert t["pids"]["room"] <= 0                   # moved-in processes may exceed it; forks may not
    assert t["memory"]["cgroup"] == "v2:/gh.slice" and t["memory"]["max_bytes"] == 48 * 2**20
    assert t["cpu"] == {"cgroup": "v2:/gh.slice/app.service", "quota_cores": 0.2, "quota_us": 20000,
                        "period_us": 100000}


def test_v2_rates_between_the_two_recorded_readings():
    _, _, a = reading("a")
    _, _, b = reading("b")
    app = cg.rates(a["v2:/gh.slice/app.service"], b["v2:/gh.slice/app.service"])
    sl = cg.rates(a["v2:/gh.slice"], b["v2:/gh.slice"])
    assert app["interval_s"] > 1
    assert app["periods"] > 0 and app["throttled_share"] >= 0.9              # the busy loop under 0.2 CPU
    assert 0.05 < app["cpu_usage_cores"] <= 0.25
    assert app["pids_refused"] == 1                                           # "sh: can't fork" between them
    assert "can't fork" in (FIX / "refused-fork.txt").read_text()
    assert sl["memory_events"]["oom_kill"] == 1 and sl["memory_events"]["oom"] == 1   # the dd over memory.max
    assert sl["memory_events"]["max"] > 0
    assert "oom_memcg=/gh.slice" in (FIX / "dmesg.txt").read_text()
    assert "pressure_stalled_share" in app


def _doc_from_fixture() -> dict:
    """cgroups.json as the collector writes it, from the recorded readings (its v2 content)."""
    hiers, placed, a = reading("a")
    _, _, b = reading("b")
    recs = {}
    for k, rec in b.items():
        recs[k] = {**rec, "rates": cg.rates(a[k], rec)}
        recs[k].pop("raw")
        recs[k].pop("at")
    chains = {h.label: [h.key(p) for p in chain] for h, chain in placed}
    return {"hierarchies": [{"label": h.label, "version": 2, "controllers": list(h.controllers),
                             "mount": "/sys/fs/cgroup", "root": "/"} for h in hiers],
            "interval_s": 1.0, "read_at": T0.timestamp() + 5, "cgroups": recs,
            "targets": [{"pid": BUSY, "start_time": 1, "comm": "sh", "cgroups": {"v2": "/gh.slice/app.service"},
                         "chains": chains, "tightest": cg.tightest(list(recs.values()))}],
            "units": []}


def _guest_kernel_log() -> dict:
    """dmesg.json of the guest's own kernel log (the refused fork and the OOM kill are in it)."""
    lines = []
    for line in (FIX / "dmesg.txt").read_text().splitlines():
        msg = line.split("] ", 1)[1] if line.startswith("[") and "] " in line else line
        lines.append((6, msg))
    return dmesg_json(lines)


def test_v2_report_names_the_cgroups_that_bind(tmp_path):
    fs = findings(tmp_path, {"collectors/cgroups/cgroups.json": _doc_from_fixture(),
                             "collectors/dmesg/dmesg.json": _guest_kernel_log()})
    ours = [f for f in fs if f.rule == "cgroup_limits"]
    by = {f.data["limit"]: f for f in ours}
    assert set(by) == {"cpu", "pids", "memory"} and all(f.severity == "critical" for f in ours)
    assert by["pids"].data["cgroup"] == "v2:/gh.slice" and by["pids"].data["refused_in_window"] == 1
    assert f"pid {BUSY}" in by["pids"].title and "at the pids limit of cgroup /gh.slice" in by["pids"].title
    cited = [e.excerpt for e in by["pids"].evidence if e.file.startswith("collectors/dmesg/")]
    assert by["pids"].data["log_failures"] == 1 and len(cited) == 1     # the kernel names the cgroup
    assert cited[0].endswith("cgroup: fork rejected by pids controller in /gh.slice/app.service")
    assert by["cpu"].data["cgroup"] == "v2:/gh.slice/app.service"
    assert "cgroup /gh.slice/app.service" in by["cpu"].title and "quota of 0.20 CPUs" in by["cpu"].title
    assert by["memory"].data["cgroup"] == "v2:/gh.slice" and by["memory"].data["oom_in_window"] >= 1
    assert "memory limit of cgroup /gh.slice" in by["memory"].title
    ours_first = [f for f in fs if f.rule != "oom_kill"]        # the guest's OOM kill has its own finding
    assert ours_first[0].rule == "cgroup_limits" and ours_first[0].severity == "critical"


# -- cgroup v1, live ---------------------------------------------------------------------------

needs_v1 = pytest.mark.skipif(not available("cpu", "cpuacct", "pids", "memory"),
                              reason="needs root and the v1 cpu, cpuacct, pids and memory hierarchies")


@pytest.fixture
def busy():
    p = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    yield p
    p.kill()
    p.wait()


@needs_v1
def test_v1_nested_chains_tightest_and_throttling(busy):
    with Nested("cpu", "cpuacct", "pids", "memory") as n:
        n.add(busy.pid)
        n.set("cpu", 1, "cpu.cfs_quota_us", 10000)                 # the slice: 0.1 CPU
        n.set("pids", 0, "pids.max", 40)                            # the top: binds the service's 500
        n.set("pids", -1, "pids.max", 500)
        n.set("memory", 1, "memory.limit_in_bytes", 256 * 2**20)
        hiers = cg.hierarchies()
        placed = {h.label: chain for h, chain in cg.chains(busy.pid, hiers)}
        for c in ("cpu", "cpuacct", "pids", "memory"):
            assert placed[c][:3] == [n.path(c, -1), n.path(c, 1), n.path(c, 0)]
            assert placed[c][-1] == "/"
        recs = cg.process_records(busy.pid, ("cpu", "pids", "memory"), hiers)
        t = cg.tightest(recs)
        assert t["pids"]["cgroup"] == f"pids:{n.path('pids', 0)}" and t["pids"]["max"] == 40
        assert t["pids"]["current"] == int(n.read("pids", 0, "pids.current"))
        assert t["cpu"]["cgroup"] == f"cpu:{n.path('cpu', 1)}" and t["cpu"]["quota_cores"] == 0.1
        assert t["memory"]["cgroup"] == f"memory:{n.path('memory', 1)}" and t["memory"]["max_bytes"] == 256 * 2**20
        h = {x.label: x for x in hiers}
        a = cg.read(h["cpu"], n.path("cpu", 1))
        ua = cg.read(h["cpuacct"], n.path("cpuacct", -1))
        time.sleep(1.0)
        b = cg.read(h["cpu"], n.path("cpu", 1))
        ub = cg.read(h["cpuacct"], n.path("cpuacct", -1))
        r, u = cg.rates(a, b), cg.rates(ua, ub)
        assert r["periods"] >= 5 and r["throttled_share"] >= 0.5        # a busy loop under 0.1 CPU
        assert b["cpu"]["throttled_usec"] * 1000 == cg.parse_kv(b["raw"]["cpu.stat"])["throttled_time"] // 1000 * 1000
        assert 0 < u["cpu_usage_cores"] <= 0.2
        mem = cg.read(h["memory"], n.path("memory", 1))["memory"]
        assert mem["max_bytes"] == 256 * 2**20 and "oom_control" in mem and "failcnt" in mem
        root = cg.read(h["memory"], "/")["memory"]
        assert root["max_bytes"] is None                               # v1's "no limit" number


def test_a_cgroup_outside_the_mounted_subtree_is_unreachable():
    h = cg.Hierarchy(2, ("memory",), "/sys/fs/cgroup", root="/kubepods/pod1")
    assert h.dir_of("/kubepods/pod1/c1") == "/sys/fs/cgroup/c1"
    assert h.dir_of("/kubepods/pod1") == "/sys/fs/cgroup"
    assert h.dir_of("/system.slice") is None
    rec = cg.read(h, "/system.slice")
    assert rec["exists"] is False and "not reachable" in rec["why"]
    assert cg.ancestry("/a/b") == ["/a/b", "/a", "/"] and cg.ancestry("/") == ["/"]
    assert cg.cpu_count("0-3,8,10-11") == 7
    assert json.dumps(cg.parse_membership("12:pids:/x\n1:name=systemd:/y\n0::/z\n")) == \
        json.dumps([["12", ["pids"], "/x"], ["1", ["name=systemd"], "/y"], ["0", [], "/z"]])
