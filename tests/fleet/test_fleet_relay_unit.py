"""The relay's systemd unit: it verifies, its sandbox scores low, and the relay works inside what it allows.

The machine has no systemd as PID 1, so the unit's sandbox is approximated where the kernel
can do it directly: the relay runs as ``nobody`` with an empty capability bounding set,
``no_new_privs`` and the kernel's memory-deny-write-execute (prctl PR_SET_MDWE, what
``MemoryDenyWriteExecute=yes`` enforces), and still turns a signed webhook into a record.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest

from fleetlib import FLEET, RelayProc, generic_delivery
from tests.helpers.moto import free_port

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "goldenhour-relay.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed (Debian package systemd)")


@needs_analyze
def test_relay_unit_verifies_and_its_exposure_is_low(tmp_path):
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/goldenhour", f"{sys.executable} -m agent"))
    cp = subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0 and cp.stderr.strip() == "", cp.stderr
    cp = subprocess.run([ANALYZE, "security", "--offline=true", str(UNIT)], capture_output=True, text=True,
                        timeout=120)
    m = re.search(r"Overall exposure level for goldenhour-relay\.service: (\d+\.\d)", cp.stdout)
    assert m, cp.stdout[-2000:] + cp.stderr
    assert float(m.group(1)) <= 2.0, cp.stdout
    page = (ROOT / "docs" / "fleet.md").read_text()
    assert f"exposure {m.group(1)}" in page, "docs/fleet.md quotes another exposure figure"
    text = UNIT.read_text()
    assert re.search(r"^CapabilityBoundingSet=$", text, re.M) and "DynamicUser=yes" in text
    assert f"rates it {m.group(1)}" in text, "the unit's header quotes another exposure figure"


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) not installed")
def test_relay_runs_unprivileged_without_capabilities_and_with_mdwe(fleet):
    d = Path(tempfile.mkdtemp(prefix="gh-relay-"))          # /tmp itself: nobody can reach it
    try:
        relay = RelayProc(fleet, d / "relay")
        seed = d / "relay" / "relay.nk"
        shutil.copy(fleet.seed("relay"), seed)
        port = free_port()
        relay.cfg.write_text(relay.cfg.read_text().replace(fleet.seed("relay"), str(seed))
                             .replace("127.0.0.1:0", f"127.0.0.1:{port}"))
        for p in [d, *d.rglob("*")]:
            os.chown(p, 65534, 65534)
        code = ("import ctypes, os, sys\n"
                "libc = ctypes.CDLL(None, use_errno=True)\n"
                "assert libc.prctl(65, 1, 0, 0, 0) == 0, 'PR_SET_MDWE'\n"     # PR_MDWE_REFUSE_EXEC_GAIN
                "os.execv(sys.executable, [sys.executable, '-m', 'agent', '--config', sys.argv[1], 'relay'])\n")
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--bounding-set=-all",
                "--inh-caps=-all", "--no-new-privs", sys.executable, "-c", code, str(relay.cfg)]
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True, env={**os.environ, "HOME": str(d)})
        try:
            relay.url = f"http://127.0.0.1:{port}"
            try:
                relay.wait_ready(60)
            except (AssertionError, httpx.HTTPError):
                proc.kill()
                raise AssertionError(proc.stderr.read()[-3000:]) from None
            status = open(f"/proc/{proc.pid}/status").read()
            assert re.search(r"^Uid:\s+65534", status, re.M) and re.search(r"^CapBnd:\s+0+$", status, re.M)
            r = relay.post(generic_delivery("MDWE-1", hosts=["web-1"], delivery="m1"))
            assert r.status_code == 202 and r.json()["status"] == "created", r.text
        finally:
            proc.terminate()
            proc.wait(30)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    assert FLEET
