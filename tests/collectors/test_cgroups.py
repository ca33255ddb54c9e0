"""The cgroups collector on this host's cgroup v1 hierarchies: a real service in nested cgroups
(cpu, cpuacct, pids, memory: ``gh-*/svc.slice/app.service``) with limits at different levels, and
a systemd-like unit with no process left in it. Every cgroup on the target's path to the root is
recorded in every hierarchy, read twice (the throttling of a busy loop over the window), with the
kernel's files copied; the unit's cgroup is found by its name."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

import dumptargets as dt
from tests.helpers.cgroups import Nested, available

pytestmark = pytest.mark.skipif(not available("cpu", "cpuacct", "pids", "memory"),
                                reason="needs root and the v1 cpu, cpuacct, pids and memory hierarchies")


def test_a_service_in_nested_cgroups_and_an_empty_unit(run_collector):
    busy = subprocess.Popen([sys.executable, "-c", "import threading, time\n"
                             "threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n"
                             "while True: pass"])
    try:
        with Nested("cpu", "cpuacct", "pids", "memory") as n, \
                Nested("pids", parts=("svc.slice", "idle.service")) as idle:
            n.add(busy.pid)
            n.set("cpu", 1, "cpu.cfs_quota_us", 10000)
            n.set("pids", 0, "pids.max", 64)
            n.set("memory", 1, "memory.limit_in_bytes", 512 * 2**20)
            target = dt.agent_target(busy.pid)
            r = run_collector("cgroups", capture={"targets": [target.to_json()], "units": ["app", "idle", "gone-x"]},
                              options={"interval_s": 1.0})
            assert r.status == "partial" and "gone-x.service" in r.reason          # no such unit anywhere
            d = json.loads((r.out / "cgroups.json").read_text())
            t = d["targets"][0]
            assert t["pid"] == busy.pid and t["comm"].startswith("python") and t["start_time"] == target.start_time
            for c in ("cpu", "cpuacct", "pids", "memory"):
                assert t["cgroups"][c] == n.path(c)
                assert t["chains"][c][:3] == [f"{c}:{n.path(c, -1)}", f"{c}:{n.path(c, 1)}", f"{c}:{n.path(c, 0)}"]
                assert t["chains"][c][-1] == f"{c}:/"
                assert all(k in d["cgroups"] for k in t["chains"][c])
            assert t["tightest"]["pids"]["cgroup"] == f"pids:{n.path('pids', 0)}" and t["tightest"]["pids"]["max"] == 64
            assert t["tightest"]["cpu"]["quota_cores"] == 0.1
            assert t["tightest"]["memory"]["max_bytes"] == 512 * 2**20
            sl = d["cgroups"][f"cpu:{n.path('cpu', 1)}"]
            assert sl["cpu"]["quota_us"] == 10000 and sl["rates"]["throttled_share"] >= 0.5
            assert d["cgroups"][f"cpuacct:{n.path('cpuacct')}"]["rates"]["cpu_usage_cores"] > 0
            pids = d["cgroups"][f"pids:{n.path('pids')}"]["pids"]
            assert pids["current"] == 2 and pids["max"] is None                       # the service's own: "max"
            raw = r.out / "raw" / "cpu" / n.path("cpu", 1).lstrip("/") / "cpu.cfs_quota_us"
            assert raw.read_text().strip() == "10000"
            assert (r.out / "raw" / "pids" / n.path("pids", 0).lstrip("/") / "pids.max").read_text().strip() == "64"
            units = {u["unit"]: u for u in d["units"]}
            assert units["app.service"]["path"] == n.path("cpu") and units["app.service"]["found"]
            assert units["idle.service"]["found"] and units["idle.service"]["cgroups"] == {"pids": idle.path("pids")}
            assert units["idle.service"]["chains"]["pids"][0] == f"pids:{idle.path('pids')}"
            assert units["gone-x.service"] == {"unit": "gone-x.service", "found": False}
            labels = {h["label"]: h for h in d["hierarchies"]}
            assert {"cpu", "cpuacct", "pids", "memory"} <= set(labels) and "devices" not in labels
    finally:
        busy.kill()
        busy.wait()


def test_a_target_that_is_gone_is_recorded_not_fatal(run_collector):
    p = subprocess.Popen(["sleep", "60"])
    t = dt.agent_target(p.pid).to_json()
    p.kill()
    p.wait()
    r = run_collector("cgroups", capture={"targets": [t]}, options={"interval_s": 0})
    assert r.status == "ok"
    d = json.loads((r.out / "cgroups.json").read_text())
    assert d["targets"][0]["pid"] == t["pid"] and "exited" in d["targets"][0]["error"]
