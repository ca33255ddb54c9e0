"""runqlat against the real scheduler: four CPU spinners pinned to one CPU wait for it in turn.

Four busy processes share CPU 0 (``sched_setaffinity``), so each spends most of the
window runnable but not running: the probe must see run-queue waits for each of them,
far above the microseconds an idle CPU gives; a sleeping process that is not a target
must not be listed.
"""
from __future__ import annotations

import json
import os
import sys

import pytest

from tests.helpers import probes
from tests.helpers.probes import SLEEPER, skip_without_bpf

SPIN = r'''
import os
os.sched_setaffinity(0, {0})
print("READY", os.getpid(), flush=True)
x = 0
while True:
    x += 1
'''


@skip_without_bpf
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs a second CPU for the probe itself")
def test_spinners_sharing_one_cpu_show_run_queue_waits(spawn, tmp_path):
    spinners = [spawn([sys.executable, "-c", SPIN]) for _ in range(4)]
    bystander = spawn([sys.executable, "-c", SLEEPER])
    res = probes.run("runqlat", tmp_path / "staging", capture={
        "probe_seconds": 1.5, "targets_explicit": True,
        "targets": [probes.target_json(p.pid) for p in spinners]})
    assert res.status == "ok", res.reason
    assert res.notes["attached"] == ["sched:sched_switch", "sched:sched_wakeup", "sched:sched_wakeup_new"]
    doc = json.loads((res.out / "runqlat.json").read_text())
    by_pid = {r["pid"]: r for r in doc["per_pid"]}
    assert set(by_pid) <= {p.pid for p in spinners}
    for p in spinners:
        r = by_pid[p.pid]
        assert r["count"] >= 5, r
        # each waits while the three others run their slices: milliseconds, not microseconds
        assert r["p50_us"] >= 100 and r["max_us"] >= 1000, r
        assert sum(b["count"] for b in r["hist"]) == r["count"]
    assert bystander.pid not in by_pid
    assert doc["count"] >= sum(by_pid[p.pid]["count"] for p in spinners)
    assert sum(b["count"] for b in doc["hist"]) == doc["count"]
    text = (res.out / "runqlat.txt").read_text()
    assert str(spinners[0].pid) in text and "usecs" in text
    probes.assert_released(json.loads((res.out / "attached.json").read_text()))
