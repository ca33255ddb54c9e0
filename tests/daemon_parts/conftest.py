"""Fixtures of the daemon-package tests: the same real daemon harness as tests/daemon/.

tests/daemon/ is the daemon's behaviour contract and stays as it is; these tests cover
what the package split added (the request type across restarts, the start-up sweep in a
child, the uploader's child result) with the harness of tests/daemon/conftest.py, loaded
under its own module name.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

DAEMON_TESTS = Path(__file__).resolve().parents[1] / "daemon"
if str(DAEMON_TESTS) not in sys.path:
    sys.path.insert(0, str(DAEMON_TESTS))           # gh_webhook_payloads

_spec = importlib.util.spec_from_file_location("daemon_harness", DAEMON_TESTS / "conftest.py")
harness = importlib.util.module_from_spec(_spec)
sys.modules["daemon_harness"] = harness
_spec.loader.exec_module(harness)

Daemon = harness.Daemon
new_daemon = harness.new_daemon                     # the fixture: daemons with their own config
