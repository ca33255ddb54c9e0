"""The non-destructive guarantees of thread and heap dumps, each shown against real processes:

- signals: only allow-listed ones, only when the target catches them, only to the same process;
- one pausing operation per target at a time (the runner), every pause recorded;
- goldenhour SIGKILLed while gcore holds a target: the next start finds the ledger entry and the
  target is running; a target left group-stopped ('T', which ptrace does not undo) is resumed by
  the next start; a Node inspector left open is closed by the next start;
- goldenhour stopped by SIGTERM mid-dump releases the target before it dies;
- a target that exits mid-dump is recorded as target_exited and the bundle verifies;
- a PID that does not exist is a recorded problem, not a failed capture.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

import dumptargets as dt
from agent import runner, safety
from agent.collector import TargetGone
from agent.registry import collectors

ROOT = Path(__file__).resolve().parent.parent


def _ledger(store: Path) -> list[Path]:
    d = store / "state" / "pauses"
    return sorted(d.glob("*.json")) if d.is_dir() else []


def _start_capture(store: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "GOLDENHOUR_CONFIG": str(store.parent / "config.toml")}
    return subprocess.Popen([sys.executable, "-m", "agent", "snapshot", "--json", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_traced(target: dt.Target, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until the target is ptrace-stopped by gcore (state t), polled every millisecond."""
    deadline = time.monotonic() + timeout
    while "t" not in target.thread_states().values():
        assert proc.poll() is None, f"goldenhour ended before gcore attached: {proc.communicate()}"
        assert time.monotonic() < deadline, "gcore never stopped the target"
        time.sleep(0.001)


def _iso(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


# -- signals ----------------------------------------------------------------------------

def test_only_allow_listed_signals_to_processes_that_catch_them(tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"], restore_signals=True)
    py = dt.python_target(tmp_path)
    try:
        st = dt.agent_target(sleeper.pid).start_time
        for sig, runtime in ((signal.SIGQUIT, "native"), (signal.SIGQUIT, "jvm"), (signal.SIGUSR1, "native"),
                             (signal.SIGSTOP, "native"), (signal.SIGTERM, "native")):
            with pytest.raises(safety.UnsafeSignal):
                safety.send(sleeper.pid, st, sig, runtime)
        with pytest.raises(safety.UnsafeSignal, match="has no handler"):
            safety.send(sleeper.pid, st, signal.SIGUSR1, "node")     # a "Node" that does not catch SIGUSR1
        pst = dt.agent_target(py.pid).start_time
        assert safety.catches(py.pid, signal.SIGINT)                  # CPython catches SIGINT...
        with pytest.raises(safety.UnsafeSignal):                      # ...and would raise KeyboardInterrupt
            safety.send(py.pid, pst, signal.SIGINT, "python")
        with pytest.raises(TargetGone):                               # same PID, other start time
            safety.send(sleeper.pid, st + 1, signal.SIGCONT, "")
        safety.send(sleeper.pid, st, signal.SIGCONT, "")              # harmless: allowed
        assert sleeper.poll() is None
        py.assert_running()
    finally:
        sleeper.kill()
        sleeper.wait()
        py.stop()


def test_node_sigusr1_is_allowed_only_because_node_catches_it(tmp_path):
    node = dt.node_target(tmp_path)
    try:
        assert safety.catches(node.pid, signal.SIGUSR1)
        safety.check_signal(node.pid, signal.SIGUSR1, "node")        # allowed (the inspector opens)
        with pytest.raises(safety.UnsafeSignal):
            safety.check_signal(node.pid, signal.SIGUSR2, "node")    # would end Node without --report-on-signal
    finally:
        node.stop()


# -- one pause at a time ---------------------------------------------------------------------

def test_pausing_collectors_never_overlap_on_one_target(tmp_path):
    c = dt.c_target(tmp_path, heap_mb=16)
    try:
        t = dt.agent_target(c.pid)
        reg = collectors()
        items = [runner.Item(reg[n], t, 60.0, {}) for n in ("threads", "heap", "process")]
        res = {r.name: r for r in runner.run_items(items, tmp_path / "staging", deadline=time.monotonic() + 120,
                                                   capture={"reserve_bytes": 2**20}, priority=(0, False),
                                                   ledger_dir=tmp_path / "ledger")}
        assert all(r.status == "ok" for r in res.values()), {n: r.reason for n, r in res.items()}
        th, hp = res["threads"], res["heap"]
        # the heap dump started only after the thread dump had ended (ms-resolution timestamps)
        assert _iso(hp.started_at) >= _iso(th.started_at) + th.duration_s - 0.002
        # process pauses nothing: it ran beside the thread dump
        assert _iso(res["process"].started_at) < _iso(th.started_at) + th.duration_s
        for r in (th, hp):
            assert r.pause["state_after"] not in ("T", "t") and "measured" in r.pause
        assert not list((tmp_path / "ledger").glob("*.json"))
        c.assert_running()
    finally:
        c.stop()


# -- goldenhour dies mid-dump ------------------------------------------------------------------

def test_sigkill_of_goldenhour_during_gcore_then_the_next_start_finds_the_target_running(gh, store, tmp_path):
    c = dt.c_target(tmp_path, heap_mb=256)
    try:
        proc = _start_capture(store, "--incident", "KILL-1", "--pid", str(c.pid), "--collector", "heap")
        _wait_traced(c, proc)
        os.kill(proc.pid, signal.SIGKILL)                 # goldenhour dies; its collector and gdb die with it
        proc.communicate(timeout=30)
        left = _ledger(store)
        assert [json.loads(p.read_text())["pid"] for p in left] == [c.pid]      # nobody released it
        cp = gh("snapshot", "--incident", "KILL-2", "--pid", str(c.pid), "--collector", "process", "--json",
                check=True)
        man = json.loads(Path(json.loads(cp.stdout)["manifest"]).read_text())
        resumed = [r for r in man["resumed_targets"] if r["pid"] == c.pid]
        assert resumed and resumed[0]["state_after"] not in ("T", "t", "gone")
        assert not _ledger(store)
        c.assert_running()
        # the interrupted capture was salvaged: its bundle exists and says what happened
        salvaged = json.loads(next((store / "incidents" / "KILL-1").glob("*.manifest.json")).read_text())
        assert salvaged["salvaged"] and salvaged["summary"]["collectors"]["heap"] in ("interrupted", "timeout")
    finally:
        c.stop()


def test_a_group_stopped_target_left_in_the_ledger_is_resumed_by_the_next_start(gh, store, tmp_path):
    """ptrace does not resume a tracee in group-stop when its tracer dies: the ledger must."""
    c = dt.c_target(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        ledger = store / "state" / "pauses"
        ledger.mkdir(parents=True)
        st = dt.agent_target(c.pid).start_time
        (ledger / f"{c.pid}-{st}-heap.json").write_text(json.dumps({
            "kind": "pause", "pid": c.pid, "start_time": st, "collector": "heap", "state_before": "S",
            "owner_pid": dead.pid, "owner_start": 1, "at": time.time()}))
        os.kill(c.pid, signal.SIGSTOP)                   # what a dump killed at the wrong moment leaves behind
        deadline = time.monotonic() + 5
        while c.state() != "T":
            assert time.monotonic() < deadline
            time.sleep(0.005)
        ticks = c.ticks()
        assert c.state() == "T" and c.ticks() == ticks
        cp = gh("snapshot", "--incident", "STOP-1", "--pid", str(c.pid), "--collector", "process", "--json",
                check=True)
        man = json.loads(Path(json.loads(cp.stdout)["manifest"]).read_text())
        assert {"pid": c.pid, "collector": "heap", "state_after": man["resumed_targets"][0]["state_after"],
                "resumed": True} == man["resumed_targets"][0]
        assert not _ledger(store)
        c.assert_running()
    finally:
        c.stop()


def test_a_stopped_target_that_was_stopped_before_the_dump_is_left_alone(tmp_path):
    from agent import pauses
    c = dt.c_target(tmp_path)
    try:
        os.kill(c.pid, signal.SIGSTOP)
        while c.state() != "T":
            time.sleep(0.005)
        entry = pauses.record(tmp_path / "ledger", dt.agent_target(c.pid), "threads")   # state_before T
        res = pauses.release(entry)
        assert res["state_after"] == "T" and "resumed" not in res
        assert c.state() == "T"
        os.kill(c.pid, signal.SIGCONT)
    finally:
        c.stop()


def test_a_node_inspector_left_open_is_closed_by_the_next_start(gh, store, tmp_path):
    node = dt.node_target(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        assert not dt.port_open(9229)
        ledger = store / "state" / "pauses"
        ledger.mkdir(parents=True)
        st = dt.agent_target(node.pid).start_time
        (ledger / f"{node.pid}-{st}-inspector.json").write_text(json.dumps({
            "kind": "inspector", "pid": node.pid, "start_time": st, "host": "127.0.0.1", "port": 9229,
            "owner_pid": dead.pid, "owner_start": 1, "at": time.time()}))
        os.kill(node.pid, signal.SIGUSR1)                # a goldenhour that died right after opening it
        deadline = time.monotonic() + 5
        while not dt.port_open(9229):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        cp = gh("snapshot", "--incident", "INSP-1", "--pid", str(node.pid), "--collector", "process", "--json",
                check=True)
        man = json.loads(Path(json.loads(cp.stdout)["manifest"]).read_text())
        assert man["resumed_targets"] == [{"pid": node.pid, "kind": "inspector", "inspector": "closed"}]
        assert not dt.port_open(9229) and not _ledger(store)
        node.assert_running()
    finally:
        node.stop()


def test_sigterm_to_goldenhour_mid_dump_releases_the_target_before_it_dies(gh, store, tmp_path):
    c = dt.c_target(tmp_path, heap_mb=256)
    try:
        proc = _start_capture(store, "--incident", "TERM-1", "--pid", str(c.pid), "--collector", "heap")
        _wait_traced(c, proc)
        os.kill(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGTERM          # it still dies of SIGTERM (evidence is salvaged later)
        assert not _ledger(store)                          # ...but released the target on its way out
        c.assert_running()
    finally:
        c.stop()


def test_sigterm_to_goldenhour_mid_node_heap_snapshot_closes_the_inspector(gh, store, tmp_path):
    """SIGTERM while the snapshot streams in: the collector asks the target to close the inspector,
    which it does once the snapshot is out; the ledger's helper, whose new session that closing
    ends, sees the port go and removes the entry."""
    node = dt.node_target(tmp_path, heap_mb=32)
    try:
        assert not dt.port_open(9229)
        proc = _start_capture(store, "--incident", "TERM-2", "--pid", str(node.pid), "--collector", "heap",
                              "--profile", "full")
        deadline = time.monotonic() + 120
        while not any(f.stat().st_size for f in store.rglob("heap.heapsnapshot")):   # chunks are arriving
            assert proc.poll() is None, f"goldenhour ended before the snapshot streamed: {proc.communicate()}"
            assert time.monotonic() < deadline, "the snapshot never started streaming"
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGTERM
        assert not _ledger(store)                          # no inspector entry left: it was closed
        assert not dt.port_open(9229)
        node.assert_running()
    finally:
        node.stop()


# -- bad input ------------------------------------------------------------------------------------

def test_a_target_that_exits_mid_dump_is_recorded_and_the_bundle_verifies(gh, store, tmp_path):
    c = dt.c_target(tmp_path, heap_mb=256)
    proc = _start_capture(store, "--incident", "EXIT-1", "--pid", str(c.pid), "--collector", "heap")
    _wait_traced(c, proc)
    c.popen.kill()                                     # the target dies while gcore holds it
    c.popen.wait()
    out, err = proc.communicate(timeout=120)
    c.stop()
    assert proc.returncode == 0, err
    res = json.loads(out)
    assert res["collectors"] == {"heap": "target_exited"}
    man = json.loads(Path(res["manifest"]).read_text())
    entry = next(e for e in man["collectors"] if e["name"] == "heap")
    assert "exited during the core dump" in entry["reason"]
    assert not _ledger(store)
    v = gh("verify", res["bundle"])
    assert v.returncode == 0, v.stdout + v.stderr


def test_a_pid_that_does_not_exist_is_a_recorded_problem(gh):
    cp = gh("snapshot", "--incident", "NOPID-1", "--pid", "4194399", "--collector", "threads", "--json")
    assert cp.returncode == 0, cp.stderr
    res = json.loads(cp.stdout)
    man = json.loads(Path(res["manifest"]).read_text())
    assert man["target_problems"] == [{"target": "--pid 4194399", "error": "no process with PID 4194399"}]
    assert res["collectors"] == {"threads": "skipped"}
    assert gh("verify", res["bundle"]).returncode == 0
