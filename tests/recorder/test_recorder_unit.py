"""The recorder's systemd unit: it verifies, installs beside the daemon's, stays well sandboxed, and the
recorder needs none of the capabilities it does not get."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.recorder import window
from tests.helpers.recorder import RecorderProc, write_config

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "goldenhour-recorder.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed (Debian package systemd)")


def _keys() -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            keys.setdefault(k, []).append(v)
    return keys


def test_unit_is_its_own_capped_notify_service_with_no_capabilities():
    k = _keys()
    assert k["Type"] == ["notify"] and k["ExecStart"] == ["/usr/local/bin/goldenhour record"]
    assert k["Restart"] == ["always"] and k["WatchdogSec"][0].rstrip("s").isdigit()
    assert k["CapabilityBoundingSet"] == [""] and k["AmbientCapabilities"] == [""] and k["NoNewPrivileges"] == ["yes"]
    assert k["MemoryMax"] and k["CPUQuota"] and k["TasksMax"]
    assert "PrivateNetwork" not in k            # /proc/net must be the host's
    assert k["RuntimeDirectoryPreserve"] == ["restart"]           # the journal outlives a crash and restart
    assert k["RuntimeDirectory"] == ["goldenhour-recorder"]       # not the daemon's: stopping one never removes
    daemon = (ROOT / "systemd" / "goldenhour.service").read_text()  # the other's socket
    assert "RuntimeDirectory=goldenhour\n" in daemon
    from agent import config
    assert config.KEYS["recorder.socket"].default.startswith("/run/goldenhour-recorder/")


@needs_analyze
def test_installed_recorder_unit_verifies_and_its_exposure_is_at_most_2(tmp_path):
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PREFIX": str(tmp_path / "usr"),
           "SYSCONFDIR": str(tmp_path / "etc"), "UNITDIR": str(tmp_path / "units"), "STATEDIR": str(tmp_path / "lib"),
           "VENV": sys.prefix}
    cp = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh")], capture_output=True, text=True, env=env,
                        timeout=60)
    assert cp.returncode == 0, cp.stderr
    unit = tmp_path / "units" / "goldenhour-recorder.service"
    assert f"ExecStart={tmp_path / 'usr' / 'bin' / 'goldenhour'} record" in unit.read_text()
    assert "goldenhour-recorder" in cp.stdout
    cp = subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0 and cp.stderr.strip() == "", cp.stderr
    cp = subprocess.run([ANALYZE, "security", "--offline=true", str(UNIT)], capture_output=True, text=True,
                        timeout=120)
    m = re.search(r"Overall exposure level for goldenhour-recorder\.service: (\d+\.\d)", cp.stdout)
    assert m, cp.stdout[-2000:] + cp.stderr
    assert float(m.group(1)) <= 2.0
    assert f"rates it {m.group(1)}" in UNIT.read_text(), "the unit's comment quotes another exposure figure"


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) not installed")
def test_the_recorder_records_everything_with_no_capability_at_all(tmp_path):
    """Under an empty bounding set and no_new_privs (the unit's), every process, cgroup and counter is read."""
    cfg = write_config(tmp_path / "config.toml", tmp_path / "store", interval=0.1, sock=tmp_path / "rec.sock")
    r = RecorderProc(cfg, prefix=["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs"]).start()
    try:
        r.wait_samples(5)
        caps = Path(f"/proc/{r.proc.pid}/status").read_text()
        assert re.search(r"^CapBnd:\s+0+$", caps, re.M) and re.search(r"^NoNewPrivs:\s+1$", caps, re.M)
        assert r.stop() == 0
    finally:
        r.kill()
    win = window.read(str(tmp_path / "store" / "recorder" / "ring"))
    s = next(e.data for e in reversed(win.samples) if "proc" in e.data)
    everyone = len([p for p in Path("/proc").iterdir() if p.name.isdigit()])
    assert s["proc"]["n"] >= everyone * 0.8                      # other users' and root's processes too
    assert s["cg"]["g"] and s["tcp"] and s["psi"] and s["fd"]
    assert any(t.get("wait_ns") is not None for t in s["proc"]["top"])
