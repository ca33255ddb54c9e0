"""Scratch files made outside a staging folder never outlive a killed goldenhour (agent/scratch.py).

A real JVM with a few hundred MB of live heap is dumped by ``snapshot --profile full``; as soon as
the JVM has created its HPROF (``goldenhour-<incident>-<pid>-*.hprof`` in its dump directory),
goldenhour is SIGKILLed. The JVM goes on writing the file: it is left on the host, as the fault
injection found. The next goldenhour start (any capture) removes it, through the ledger entry
written before the JVM was asked to dump; the JVM itself keeps running. The ledger's own rules are
checked against real processes too: an entry whose owner lives is left alone, one whose writer has
not created its file yet is kept while that writer lives.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dumptargets as dt
from tests.helpers.proc import Proc

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def big_jvm(tmp_path):
    t = dt.jvm_target(tmp_path, "-Xmx1g", heap_mb=400)
    yield t
    t.stop()


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_a_jvm_heap_dump_interrupted_by_sigkill_is_removed_at_the_next_start(gh, store, big_jvm, tmp_path):
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    cfg = tmp_path / "heap.toml"
    cfg.write_text(f'[store]\npath = "{store}"\nreserve_bytes = 0\nreserve_percent = 0\n'
                   f'[logs]\npaths = []\njournal = false\n[collectors.heap]\njvm_dump_dir = "{dumps}"\n'
                   'timeout_s = 240\n')
    env = {**os.environ, "GOLDENHOUR_CONFIG": str(cfg)}
    proc = subprocess.Popen([sys.executable, "-m", "agent", "snapshot", "--json", "--incident", "INC-scratch",
                             "--profile", "full", "--collector", "heap", "--pid", str(big_jvm.pid)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ledger = store / "state" / "scratch"
    try:
        _wait(lambda: list(dumps.glob("goldenhour-INC-scratch-*.hprof")) or proc.poll() is not None, 120,
              "the JVM never started its heap dump")
        assert proc.poll() is None, proc.communicate()
        hprof = next(dumps.glob("goldenhour-INC-scratch-*.hprof"))
        proc.send_signal(signal.SIGKILL)                       # goldenhour dies mid-dump
        entries = [json.loads(p.read_text()) for p in ledger.glob("*.json")]
    finally:
        proc.wait(timeout=30)
        proc.stdout.close(), proc.stderr.close()
    time.sleep(0.5)
    assert hprof.exists(), "the JVM's dump file should still be there after the kill (the JVM goes on writing it)"
    assert any(e["path"] == str(hprof) and e["writer_pid"] == big_jvm.pid for e in entries), entries

    cp = gh("snapshot", "--json", "--incident", "INC-next", "--collector", "host", env={"GOLDENHOUR_CONFIG": str(cfg)})
    assert cp.returncode == 0, cp.stderr
    assert not list(dumps.glob("goldenhour-*.hprof")), list(dumps.iterdir())
    assert not list(ledger.glob("*.json"))
    big_jvm.assert_running()
    # the interrupted capture itself was salvaged as a bundle (its heap collector interrupted)
    assert list((store / "incidents" / "INC-scratch").glob("*.tar.zst"))


def test_the_ledger_leaves_a_live_run_alone_and_waits_for_a_live_writer(tmp_path):
    from agent import procfs, scratch
    ledger = tmp_path / "ledger"
    # a real process records a scratch file and stays alive: its entry and file are its business
    script = ("import sys, time; from agent import scratch; "
              "scratch.record(sys.argv[1], sys.argv[2], 'test'); open(sys.argv[2], 'w').write('x'); "
              "print('READY', flush=True); time.sleep(600)")
    f = tmp_path / "scratch-file"
    owner = Proc([sys.executable, "-c", script, ledger, f], env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    try:
        assert scratch.sweep(ledger) == [] and f.exists()
    finally:
        owner.stop()
    assert scratch.sweep(ledger) == [{"path": str(f), "what": "test", "removed": True}]
    assert not f.exists() and not list(ledger.iterdir())

    # recorded for a writer (here: a live sleeping process) that has not created the file yet: kept, then removed
    writer = Proc([sys.executable, "-c", "import time; print('READY', flush=True); time.sleep(600)"])
    try:
        later = tmp_path / "written-later"
        entry = scratch.record(ledger, later, "dump", writer=procfs.Identity.of(writer.pid))
        data = json.loads(entry.read_text())
        data["owner_pid"] = writer.popen.pid + 10**6            # an owner that cannot exist: a killed run
        entry.write_text(json.dumps(data))
        assert scratch.sweep(ledger) == [] and entry.exists()    # nothing yet, its writer lives: wait
        later.write_text("dump")                                  # the writer creates it after all
        assert scratch.sweep(ledger)[0]["removed"] is True
        assert not later.exists() and not entry.exists()
    finally:
        writer.stop()
