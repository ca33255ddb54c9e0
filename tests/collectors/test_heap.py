"""heap against real targets: a core image of a C program that a debugger can read back, a JVM
HPROF written by the JVM and moved into the bundle (nothing left behind), a Node heap snapshot
streamed over the inspector; each target still running afterwards. And the refusals: a dump that
would not fit above the store's reserve, or would pause the target too long."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

import dumptargets as dt


@pytest.fixture(scope="module")
def c(tmp_path_factory):
    t = dt.c_target(tmp_path_factory.mktemp("c"))
    yield t
    t.stop()


def test_gcore_of_a_c_program_reads_back_with_its_threads(run_collector, c, tmp_path):
    r = run_collector("heap", target=dt.agent_target(c.pid), capture={"reserve_bytes": 2**20})
    assert r.status == "ok", r.reason
    h = json.loads((r.out / "heap.json").read_text())
    core = r.out / f"core.{c.pid}"
    assert h["method"] == "gcore" and h["file"] == core.name and core.stat().st_size == h["bytes"]
    assert 0.5 * h["estimate_bytes"] < h["bytes"] <= 1.1 * h["estimate_bytes"]      # VmSize is the estimate
    assert r.pause["state_after"] not in ("T", "t") and r.pause["measured"]["upper_bound_s"] > 0
    argv = r.commands[0]["argv"]
    assert "set auto-solib-add off" in argv and "set debuginfod enabled off" in argv
    back = subprocess.run(["eu-stack", "--core", str(core), "-e", str(dt.build_c())], capture_output=True, text=True)
    assert "deadlock_a" in back.stdout and "deadlock_b" in back.stdout
    c.assert_running()


def test_a_dump_that_would_not_fit_above_the_reserve_is_skipped(run_collector, c):
    st = os.statvfs(dt.BUILD)
    free = st.f_bavail * st.f_frsize
    r = run_collector("heap", target=dt.agent_target(c.pid), capture={"reserve_bytes": free - 2**20})
    assert r.status == "skipped" and "would not fit" in r.reason and "reserve" in r.reason
    assert not r.commands and not list(r.out.glob("core.*"))
    r = run_collector("heap", target=dt.agent_target(c.pid), options={"max_pause_s": 0.001})
    assert r.status == "skipped" and "max_pause_s" in r.reason
    c.assert_running()


@pytest.fixture(scope="module")
def jvm(tmp_path_factory):
    t = dt.jvm_target(tmp_path_factory.mktemp("jvm"))
    yield t
    t.stop()


def test_jvm_heap_dump_is_written_by_the_jvm_and_moved_into_the_bundle(run_collector, jvm):
    r = run_collector("heap", target=dt.agent_target(jvm.pid), capture={"incident": "HEAP-1"})
    assert r.status == "ok", r.reason
    h = json.loads((r.out / "heap.json").read_text())
    hprof = r.out / "heap.hprof"
    assert h["method"] == "jcmd GC.heap_dump" and hprof.stat().st_size == h["bytes"] > 4 * 2**20
    assert hprof.read_bytes()[:18] == b"JAVA PROFILE 1.0.2"
    assert h["heap_used_bytes"] > 0 and h["written_by_target_at"].startswith(("/var/tmp/", "/tmp/"))
    assert not os.path.exists(f"/proc/{jvm.pid}/root{h['written_by_target_at']}")   # nothing left behind
    assert r.notes["jvm_dump_dir"]["fstype"] not in ("tmpfs", "ramfs")
    m = r.pause["measured"]
    assert m["safepoints"] >= 1 and m["stopped_s"] > 0                              # the full GC + dump
    jvm.assert_running()


def test_jvm_heap_dump_refuses_tmpfs_directories(run_collector, jvm, tmp_path):
    mnt = tmp_path / "ram"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], check=True)
    try:
        r = run_collector("heap", target=dt.agent_target(jvm.pid), options={"jvm_dump_dir": str(mnt)})
        assert r.status == "ok", r.reason
        assert r.notes["jvm_dump_dir"]["path"] != str(mnt)        # fell back to a real disk
        assert not os.listdir(mnt)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    jvm.assert_running()


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    t = dt.node_target(tmp_path_factory.mktemp("node"))
    yield t
    t.stop()


def test_node_heap_snapshot_streamed_over_the_inspector(run_collector, node):
    r = run_collector("heap", target=dt.agent_target(node.pid))
    assert r.status == "ok", r.reason
    h = json.loads((r.out / "heap.json").read_text())
    snap = json.loads((r.out / "heap.heapsnapshot").read_text())
    assert "snapshot" in snap and snap["snapshot"]["node_count"] > 1000
    assert "gh-item-7" in snap["strings"]                         # the retained objects are in it
    assert h["memory_usage"]["heapUsed"] > 0 and h["pause"]["upper_bound_s"] > 0
    assert r.notes["inspector"]["inspector_closed"] is True and not dt.port_open(9229)
    node.assert_running()
