"""Target first: the ranking, the targets strip and "also on this host", on bundles whose timing cannot be made on
demand (an OOM kill half an hour before the trigger, CPU pressure at 90 % beside the target's own problem). The
same ranking on real captures of real failures is checked in test_responder.py."""
from __future__ import annotations

import json
from datetime import timedelta

from agent.report import from_bundles, render
from agent.report.loader import load_folder
from tests.report import bundlemaker as bm

NETNS = 4026532174
PID = 4242


def _target(pid: int = PID, reason: str = f"--pid {PID}", comm: str = "postgres") -> dict:
    return {"pid": pid, "comm": comm, "runtime": "native", "reason": reason,
            "namespaces": {"net": {"id": f"net:[{NETNS}]", "shared_with_agent": False}},
            "container_info": {"cgroup": "/system.slice/orders.service"}}


def _process(count: int = 1000) -> dict:
    return {"pid": PID, "comm": "postgres", "state": "S", "state_name": "sleeping", "num_threads": 9,
            "fd": {"count": count, "limit": 1024, "hard_limit": 4096, "by_type": {"file": count - 4, "socket": 4}},
            "memory": {"VmRSS": 300 * 2**20}, "cpu_sample": {"interval_s": 0.25, "cpu_percent": 3.0}}


OLD_OOM = [
    (4, "java invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0"),
    (6, "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/kubepods/pod9,"
        "task_memcg=/kubepods/pod9,task=java,pid=777,uid=0"),
    (3, "Memory cgroup out of memory: Killed process 777 (java) total-vm:900000kB, anon-rss:500000kB, "
        "file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:1000kB oom_score_adj:0"),
]
CT_FULL = (4, f"nf_conntrack: nf_conntrack: table full in netns {NETNS}, dropping packet")
PSI = {"cpu": {"some": {"avg10": 90.0, "avg60": 85.0, "avg300": 60.0, "total": 1}},
       "memory": {"some": {"avg10": 0.0, "avg60": 0.0, "avg300": 0.0}, "full": {"avg10": 0.0, "avg60": 0.0}},
       "io": {"some": {"avg10": 0.0, "avg60": 0.0}, "full": {"avg10": 0.0, "avg60": 0.0}}}


def _dmesg() -> dict:
    old = bm.dmesg_json(OLD_OOM, start=bm.T0 - timedelta(minutes=30))
    now = bm.dmesg_json([CT_FULL], start=bm.T0 - timedelta(seconds=20))
    for r in now["records"]:
        r["seq"] += 100
    old["records"] += now["records"]
    return old


def test_the_targets_problems_come_first_then_the_host_then_what_is_also_on_this_host(tmp_path):
    folder = bm.make(tmp_path, {f"collectors/process/{PID}/process.json": _process(),
                                "collectors/host/host.json": {"psi": PSI},
                                "collectors/dmesg/dmesg.json": _dmesg()},
                     extra={"targets": [_target()]})
    rep = from_bundles([load_folder(folder)])
    order = [(f.scope, f.rule) for f in rep.findings]
    assert order[:3] == [("target", "fd_limits"), ("target", "conntrack"), ("host", "pressure")], order
    assert order[-1] == ("elsewhere", "oom_kill")          # another cgroup, half an hour before the trigger
    ct = rep.findings[1]
    assert ct.title.startswith(f"Conntrack table full in the network namespace of postgres (pid {PID})")
    assert ct.process == f"postgres (pid {PID})" and ct.data["netns"] == NETNS
    assert rep.findings[0].process == f"postgres (pid {PID})" and rep.findings[2].process == ""
    # the strip
    (row,) = rep.targets
    assert (row.pid, row.name, row.threads, row.fds, row.fd_limit, row.cpu_percent) == (PID, "postgres", 9, 1000,
                                                                                         1024, 3.0)
    assert row.worst is rep.findings[0] and row.anchor == 1
    data = json.loads(render(rep, "json"))
    assert data["targets"][0]["worst_finding"]["index"] == 1
    assert [f["scope"] for f in data["findings"]][-1] == "elsewhere"
    html = render(rep, "html")
    assert html.index('id="targets"') < html.index('id="findings"')
    glance = html[html.index('<table class="glance">'):]
    assert f"<td>postgres (pid {PID})</td>" in glance[:glance.index("</table>")]
    also = html[html.index('<details class="also"'):]
    assert "Also on this host: 1 finding" in also and "OOM killer killed java (pid 777)" in also
    md = render(rep, "md")
    assert md.index("## Targets") < md.index("## Findings") < md.index("## Also on this host")
    assert md.index("OOM killer killed java") > md.index("## Also on this host")


def test_an_incident_service_makes_a_finding_about_the_target(tmp_path):
    """A global OOM kill inside the incident's service's cgroup concerns it, though its victim was not a target."""
    lines = [(4, "gunicorn invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0"),
             (6, "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,"
                 "task_memcg=/system.slice/orders.service,task=gunicorn,pid=901,uid=33"),
             (3, "Out of memory: Killed process 901 (gunicorn) total-vm:900000kB, anon-rss:500000kB, file-rss:0kB, "
                 "shmem-rss:0kB, UID:33 pgtables:1000kB oom_score_adj:0")]
    incident = {"id": "INC-FIX-1", "source": "manual", "title": "orders down", "url": "", "severity": "",
                "services": ["orders"]}
    folder = bm.make(tmp_path, {"collectors/dmesg/dmesg.json": bm.dmesg_json(lines, start=bm.T0 - timedelta(minutes=2)),
                                "collectors/host/host.json": {"psi": PSI}},
                     extra={"incident": incident})
    rep = from_bundles([load_folder(folder)])
    assert [(f.scope, f.rule) for f in rep.findings][:2] == [("target", "oom_kill"), ("host", "pressure")]


def test_auto_chosen_targets_fold_nothing_by_process(tmp_path):
    """Without an explicit target (the busiest processes were picked), another process's trouble stays in view."""
    folder = bm.make(tmp_path, {"collectors/dmesg/dmesg.json": bm.dmesg_json(OLD_OOM[:2] + [OLD_OOM[2]],
                                                                             start=bm.T0 - timedelta(minutes=2))},
                     extra={"targets": [_target(reason="top cpu/rss")]})
    rep = from_bundles([load_folder(folder)])
    oom = next(f for f in rep.findings if f.rule == "oom_kill")
    assert oom.scope == "host" and oom.severity == "critical"
