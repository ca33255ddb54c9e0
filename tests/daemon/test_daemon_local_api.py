"""The local API (`snapshot --via-daemon`, /v1/snapshot over the Unix socket or HTTP with a token)
and the pre-restart hook: the exact command of systemd/goldenhour-pre-restart.conf, run inside
the target unit's cgroup as systemd runs ExecStop=, captures only while an incident is open."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import gh_webhook_payloads as P

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "local-api-token-0123456789"


def _manifest(bundle: Path) -> dict:
    return json.loads(bundle.with_name(bundle.name.replace(".tar.zst", ".manifest.json")).read_text())


def test_snapshot_via_daemon_captures_in_the_daemons_queue(daemon):
    cp = daemon.gh("snapshot", "--via-daemon", "--incident", "MAN-VIA-1", "--collector", "host", "--json")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    out = json.loads(cp.stdout)
    assert out["status"] == "done" and out["via"] == "daemon"
    bundle = Path(out["bundle"])
    assert bundle.parent == daemon.store / "incidents" / "MAN-VIA-1"
    m = _manifest(bundle)
    assert m["trigger"]["kind"] == "daemon-api"
    assert daemon.gh("verify", str(bundle)).returncode == 0
    # when the incident began travels to the capture (the flight recorder's T0)
    cp = daemon.gh("snapshot", "--via-daemon", "--incident", "MAN-VIA-T0", "--collector", "host", "--started-at",
                   "2026-11-23T10:02:00Z", "--json")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert _manifest(Path(json.loads(cp.stdout)["bundle"]))["incident"]["started_at"] == "2026-11-23T10:02:00Z"
    # human output, and a second manual request captures again (a person asked for it)
    cp = daemon.gh("snapshot", "--via-daemon", "--incident", "MAN-VIA-1", "--collector", "host")
    assert cp.returncode == 0 and cp.stdout.startswith("bundle  "), cp.stdout + cp.stderr
    assert len(daemon.bundles("MAN-VIA-1")) == 2
    bad = daemon.gh("snapshot", "--via-daemon", "--incident", "../../etc")
    assert bad.returncode == 2 and "invalid incident ID" in bad.stderr


def test_via_daemon_exits_5_when_no_daemon_answers(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[store]\npath = "{tmp_path}"\n[daemon]\nsocket = "{tmp_path}/none.sock"\n'
                   f'listen = "127.0.0.1:9"\napi_token_file = "{tmp_path}/t"\n')
    (tmp_path / "t").write_text("x")
    cp = subprocess.run([sys.executable, "-m", "agent", "--config", str(cfg), "snapshot", "--via-daemon",
                         "--incident", "INC-1"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert cp.returncode == 5, cp.stderr
    assert cp.stderr.count("\n") == 1 and "not reachable" in cp.stderr


def test_http_local_api_needs_the_bearer_token(daemon):
    url = f"{daemon.url}/v1/snapshot"
    body = {"incident": "MAN-HTTP-1", "collectors": ["host"]}
    assert httpx.post(url, json=body, timeout=10).status_code == 401
    assert httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 403
    r = httpx.post(url, json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
    assert r.status_code == 200 and r.json()["status"] == "done", r.text
    # without force, a second request for an incident already captured is a duplicate
    r = httpx.post(url, json={**body, "wait": False}, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert (r.status_code, r.json()["status"]) == (200, "duplicate")
    r = httpx.post(url, json={**body, "force": True, "wait": False},
                   headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert (r.status_code, r.json()["status"]) == (202, "queued")
    daemon.wait_idle()
    assert len(daemon.bundles("MAN-HTTP-1")) == 2
    r = httpx.post(url, json={"incident": "MAN-HTTP-2", "profile": "huge"},
                   headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert r.status_code == 400 and "profile" in r.json()["error"]
    r = httpx.post(url, json={"incident": "MAN-HTTP-2", "started_at": "yesterday"},
                   headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert r.status_code == 400 and "started_at" in r.json()["error"]
    # the Unix socket needs no token: its file mode is the access control
    assert oct(daemon.socket.stat().st_mode & 0o777) == "0o660"
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)), timeout=10) as c:
        r = c.get("http://daemon/v1/incidents")
    assert r.status_code == 200 and "MAN-HTTP-1" in {i["id"] for i in r.json()["incidents"]}


# -- the pre-restart hook ----------------------------------------------------------

def _cgroup_root() -> Path | None:
    for p in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")):
        if (p / "cgroup.procs").exists() and os.access(p, os.W_OK):
            return p
    return None


@pytest.fixture
def unit_cgroup(spawn):
    """A cgroup named like a systemd unit, holding a real target process (as systemd would)."""
    root = _cgroup_root()
    if root is None:
        pytest.skip("no writable cgroup hierarchy")
    unit = f"gh-demo-{os.getpid()}.service"
    cg = root / "gh-test.slice" / unit
    cg.mkdir(parents=True, exist_ok=True)
    target = spawn([sys.executable, "-c", "import time; print('READY', flush=True); time.sleep(600)"])
    (cg / "cgroup.procs").write_text(str(target.pid))
    yield unit, cg, target
    target.stop()
    for pid in (cg / "cgroup.procs").read_text().split():
        try:
            (root / "cgroup.procs").write_text(pid)
        except OSError:
            pass
    cg.rmdir()
    try:
        cg.parent.rmdir()
    except OSError:
        pass


def _drop_in_command(unit: str) -> list[str]:
    """The ExecStop= line of systemd/goldenhour-pre-restart.conf, for this checkout and unit."""
    text = (ROOT / "systemd" / "goldenhour-pre-restart.conf").read_text()
    line = [l for l in text.splitlines() if re.match(r"ExecStop=\S", l)][0]
    argv = shlex.split(line.split("=", 1)[1].lstrip("-+"))
    assert argv[0] == "/usr/local/bin/goldenhour"
    return [sys.executable, "-m", "agent"] + [a.replace("%n", unit) for a in argv[1:]]


def _run_in_unit(cg: Path, argv: list[str], env: dict) -> subprocess.CompletedProcess:
    """Run ``argv`` inside the unit's cgroup, the way systemd runs an ExecStop= command."""
    script = f'echo $$ > {shlex.quote(str(cg / "cgroup.procs"))} && exec {shlex.join(argv)}'
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def test_pre_restart_hook_captures_only_while_an_incident_is_open(new_daemon, unit_cgroup, tmp_path):
    unit, cg, target = unit_cgroup
    d = new_daemon().start()
    argv = _drop_in_command(unit)
    assert argv[-4:] == ["--unit", unit, "--reason", "pre-restart"]

    # no incident open: exit 0 at once, nothing captured
    cp = _run_in_unit(cg, argv, d.env)
    assert cp.returncode == 0, cp.stderr
    assert "no incident is open" in cp.stdout
    assert d.bundles() == []

    # an incident declared for this host: the stop waits for a capture filed under it
    assert d.post("generic", P.generic_delivery("INC-PRE-1", title="checkout down")).status_code == 202
    d.wait_idle()
    assert len(d.bundles("INC-PRE-1")) == 1
    cp = _run_in_unit(cg, argv, d.env)
    assert cp.returncode == 0, cp.stderr
    assert "incident INC-PRE-1 is open" in cp.stderr
    found = d.bundles("INC-PRE-1")
    assert len(found) == 2
    m = max((_manifest(b) for b in found), key=lambda m: m["clocks"]["start_utc"])
    assert m["trigger"]["kind"] == "pre-restart" and m["trigger"]["reason"] == "pre-restart"
    assert m["incident"]["source"] == "generic" and m["incident"]["title"] == "checkout down"
    assert m["limits"]["time_budget_s"] == 10            # daemon.pre_restart_budget_s
    pids = [t["pid"] for t in m["targets"]]
    assert pids == [target.pid]                          # the unit's process, never goldenhour itself
    assert d.gh("verify", str(found[-1])).returncode == 0

    # resolved: no capture any more
    assert d.post("generic", P.generic_delivery("INC-PRE-1", action="resolve")).json()["status"] == "resolved"
    cp = _run_in_unit(cg, argv, d.env)
    assert cp.returncode == 0 and "no incident is open" in cp.stdout
    assert len(d.bundles()) == 2


def test_pre_restart_modes_always_and_never(tmp_path):
    store = tmp_path / "store"
    for mode, expect in (("never", 0), ("always", 1)):
        cfg = tmp_path / f"{mode}.toml"
        cfg.write_text(f'[store]\npath = "{store}"\nreserve_bytes = 0\nreserve_percent = 0.0\n'
                       f'[daemon]\npre_restart = "{mode}"\npre_restart_budget_s = 10\n')
        cp = subprocess.run([sys.executable, "-m", "agent", "--config", str(cfg), "snapshot", "--unit",
                             "gone.service", "--reason", "pre-restart", "--collector", "host", "--json"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert cp.returncode == 0, cp.stderr
        out = json.loads(cp.stdout)
        if expect:
            assert out["incident"].startswith("restart-gone.service-")
        else:
            assert out == {"captured": False, "reason": "pre-restart captures are off (daemon.pre_restart = never)"}
    assert len(list((store / "incidents").glob("*/*.tar.zst"))) == 1


def test_incident_stays_optional_only_for_pre_restart(tmp_path):
    cp = subprocess.run([sys.executable, "-m", "agent", "snapshot", "--collector", "host"], capture_output=True,
                        text=True, cwd=ROOT, timeout=60, env={**os.environ, "GOLDENHOUR_STORE": str(tmp_path)})
    assert cp.returncode == 2 and "--incident is required" in cp.stderr
