"""Shared test fixtures: real processes, a throw-away store, and a way to run one collector.

Everything here is real: collectors read the live kernel, targets are real
processes started by the tests and waited for by a readiness line, never sleep().
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.proc import Proc

ROOT = Path(__file__).resolve().parent.parent
TARGETS = Path(__file__).resolve().parent / "targets"


def journal_records(journal: Path) -> list[dict]:
    if not journal.exists():
        return []
    return [json.loads(l) for l in journal.read_text().splitlines() if l.strip()]


@pytest.fixture
def run_collector(tmp_path):
    """Run one collector's ``collect`` for real through the runner, in a child process.

    Returns a ``agent.runner.ItemResult``-like object with ``.status``, ``.reason``,
    ``.out`` (the collector's folder), ``.journal`` (parsed records), ``.notes``.
    """
    from agent import runner

    def _run(name: str, *, target=None, options: dict | None = None,
             capture: dict | None = None, timeout_s: float | None = None):
        return runner.run_one(name, tmp_path / "staging", target=target, options=options or {},
                              capture=capture or {}, timeout_s=timeout_s)
    return _run


@pytest.fixture
def spawn():
    """Start real target processes; all are killed at the end of the test."""
    procs: list[Proc] = []

    def _spawn(argv, **kw) -> Proc:
        p = Proc(argv, **kw)
        procs.append(p)
        return p
    yield _spawn
    for p in procs:
        p.stop()


@pytest.fixture
def store(tmp_path) -> Path:
    d = tmp_path / "store"
    d.mkdir()
    return d


@pytest.fixture
def gh(store):
    """Run the real CLI (``python -m agent``) as a subprocess; returns CompletedProcess."""
    cfg = store.parent / "config.toml"
    if not cfg.exists():
        cfg.write_text(f'[store]\npath = "{store}"\n')

    def _gh(*args: str, check: bool = False, timeout: float = 300, env: dict | None = None,
            input: str | None = None) -> subprocess.CompletedProcess:
        e = dict(os.environ)
        e["GOLDENHOUR_CONFIG"] = str(cfg)
        if env:
            e.update(env)
        cp = subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True,
                            timeout=timeout, env=e, cwd=ROOT, input=input)
        if check and cp.returncode != 0:
            raise AssertionError(f"goldenhour {' '.join(args)} -> {cp.returncode}\n{cp.stdout}\n{cp.stderr}")
        return cp
    return _gh
