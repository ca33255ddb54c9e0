"""The daemon's start removes the scratch files of a goldenhour that was killed (agent/scratch.py),
as a capture's start does: a real process records a file in the store's scratch ledger, writes it and
is SIGKILLed; the real daemon started afterwards removes the file and logs what it removed once."""
from __future__ import annotations

import os
import sys

from tests.helpers.proc import Proc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_daemon_start_removes_what_a_killed_run_left(new_daemon, tmp_path):
    d = new_daemon()
    ledger = d.store / "state" / "scratch"
    left = tmp_path / "goldenhour-INC-x-123-abcd.hprof"
    script = ("import sys, time; from agent import scratch; "
              "scratch.record(sys.argv[1], sys.argv[2], 'JVM heap dump'); open(sys.argv[2], 'wb').write(b'x' * 4096); "
              "print('READY', flush=True); time.sleep(600)")
    killed = Proc([sys.executable, "-c", script, ledger, left], env={**os.environ, "PYTHONPATH": ROOT}, cwd=ROOT)
    killed.stop()                                    # SIGKILL: no cleanup of its own
    assert left.exists() and list(ledger.glob("*.json"))
    d.start()
    assert not left.exists() and not list(ledger.glob("*.json"))
    lines = [ln for ln in d.lines if "event=scratch_sweep" in ln]
    assert len(lines) == 1 and str(left) in lines[0]
