"""`goldenhour fleet ...` as a commander runs it: real CLI processes against a real nats-server.

The hosts are in-process fleet watchers with the stub capture (the real daemons are in
test_fleet_daemon.py); what is under test here is the commander's side: trigger, resolve,
recapture, hosts, status, and the exit codes of `status --wait` a runbook relies on.
"""
from __future__ import annotations

import asyncio
import json

from fleetlib import commander_config, gh, start_agent, until
from tests.helpers.fleet_stub import StubRunner


def test_trigger_status_and_wait_exit_codes(fleet, tmp_path):
    async def body():
        cfg = commander_config(fleet, tmp_path / "ic", offline_after_s=30)
        w1 = await start_agent(fleet, "web-1", tmp_path / "w1", services=["checkout"])
        failing = StubRunner(tmp_path / "b2")
        failing.fail = "conntrack: Operation not permitted"
        w2 = await start_agent(fleet, "web-2", tmp_path / "w2", services=["checkout"], runner=failing)
        db = await start_agent(fleet, "db-1.example.com", tmp_path / "db", tags=["role=db"])

        rc, out, err = await gh(cfg, "fleet", "trigger", "-i", "INC-10", "--hosts", "web-1", "--json")
        assert rc == 0, err
        assert json.loads(out)["status"] == "created"
        rc, out, err = await gh(cfg, "fleet", "status", "-i", "INC-10", "--wait", "--timeout", "60s")
        assert rc == 0, out + err
        assert "uploaded 1" in out and "UPLOADED  web-1" in out and "done" in out

        # web-2 fails: all done, some failed -> 21; the reason is shown
        rc, out, err = await gh(cfg, "fleet", "trigger", "-i", "INC-11", "--services", "checkout")
        assert rc == 0, err
        rc, out, err = await gh(cfg, "fleet", "status", "-i", "INC-11", "--wait", "--timeout", "60s", "--json")
        assert rc == 21, out + err
        v = json.loads(out)
        rows = {r["host"]: r for r in v["hosts"]}
        assert rows["web-2"]["state"] == "failed" and "conntrack" in rows["web-2"]["error"]
        assert rows["web-1"]["state"] == "uploaded" and rows["web-1"]["latency_s"] is not None
        assert "db-1.example.com" not in rows and v["expected"] == 2

        # a concerned host that is away: pending until the timeout -> 22
        await db.stop()
        rc, out, err = await gh(cfg, "fleet", "trigger", "-i", "INC-12", "--labels", "role=db")
        assert rc == 0, err
        rc, out, err = await gh(cfg, "fleet", "status", "-i", "INC-12", "--wait", "--timeout", "2s")
        assert rc == 22, out + err
        assert "PENDING" in out and "db-1.example.com" in out
        # resolved while it is away: 'missed', all done, counted as bad -> 21 at once
        rc, out, err = await gh(cfg, "fleet", "resolve", "-i", "INC-12")
        assert rc == 0 and "resolved" in out, err
        rc, out, err = await gh(cfg, "fleet", "status", "-i", "INC-12", "--wait", "--timeout", "60s")
        assert rc == 21 and "MISSED" in out, out + err

        rc, out, err = await gh(cfg, "fleet", "status", "-i", "NO-SUCH")
        assert rc == 4 and "no incident NO-SUCH" in err
        rc, out, err = await gh(cfg, "fleet", "recapture", "-i", "INC-10", "--json")
        assert rc == 0 and json.loads(out)["capture_rev"] == 2, err
        await until(lambda: len(w1.runner.captures) == 3)
        rc, out, err = await gh(cfg, "fleet", "hosts", "--json")
        hosts = {h["host"]: h for h in json.loads(out)["hosts"]}
        assert rc == 0 and set(hosts) == {"web-1", "web-2", "db-1.example.com"}
        assert hosts["web-1"]["services"] == ["checkout"] and hosts["web-1"]["online"]
        rc, out, err = await gh(cfg, "fleet", "trigger", "-i", "INC-13")
        assert rc == 2 and "--all" in err
        for a in (w1, w2):
            await a.stop()
    asyncio.run(body())


def test_unreachable_and_refused(fleet, tmp_path):
    async def body():
        cfg = commander_config(fleet, tmp_path / "ic")
        bad = tmp_path / "bad.toml"
        bad.write_text(cfg.read_text().replace(fleet.server.url, "nats://127.0.0.1:9"))
        rc, out, err = await gh(bad, "fleet", "status", "-i", "X")
        assert rc == 20 and "cannot connect" in err and "Traceback" not in err
        # a host's credential is not a commander's: it may not read statuses
        hostcfg = tmp_path / "host.toml"
        hostcfg.write_text(cfg.read_text().replace(fleet.seed("commander"), fleet.seed("host-web-1")))
        rc, out, err = await gh(hostcfg, "fleet", "trigger", "-i", "X-1", "--all")
        assert rc != 0 and "Traceback" not in err
    asyncio.run(body())


def test_enroll_writes_credentials_and_server_entries(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    cfg = tmp_path / "c.toml"
    cfg.write_text('[fleet]\nname = "prod"\n')

    def run(*a):
        return subprocess.run([sys.executable, "-m", "agent", "--config", str(cfg), "fleet", "enroll", *a,
                               "--dir", str(tmp_path / "en")], capture_output=True, text=True, cwd=root, timeout=60)
    cp = run("--host", "web-9.example.com", "--json")
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    seed = Path(out["seed_file"])
    assert seed.stat().st_mode & 0o777 == 0o600 and seed.read_text().startswith("SU")
    users = Path(out["users_file"]).read_text()
    assert out["public_key"] in users and "$KV.GH_STATUS.prod.*.web-9=2Eexample=2Ecom" in users
    assert out["public_key"].startswith("U") and seed.read_text().strip() not in users
    assert run("--host", "web-9.example.com").returncode == 2          # enrolled already
    assert run("--host", "web-9.example.com", "--rotate").returncode == 0
    assert run("--relay", "r1").returncode == 0
    cp = run("--host", "web-9.example.com", "--remove")
    assert cp.returncode == 0 and out["public_key"] not in Path(out["users_file"]).read_text()
    assert run("--host", "../etc").returncode == 2


def test_status_watch_streams_updates(fleet, tmp_path):
    async def body():
        import sys

        from fleetlib import ROOT
        cfg = commander_config(fleet, tmp_path / "ic")
        rc, out, err = await gh(cfg, "fleet", "trigger", "-i", "INC-20", "--hosts", "web-1")
        assert rc == 0, err
        p = await asyncio.create_subprocess_exec(sys.executable, "-m", "agent", "--config", str(cfg), "fleet", "status",
                                                 "-i", "INC-20", "--watch", "--json", cwd=ROOT,
                                                 stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            first = json.loads(await asyncio.wait_for(p.stdout.readline(), 60))
            assert first["counts"] == {"unknown": 1} and first["done"] is False     # web-1 never registered yet
            w1 = await start_agent(fleet, "web-1", tmp_path / "w1")
            while True:                                # one JSON line per change, until web-1 uploaded
                v = json.loads(await asyncio.wait_for(p.stdout.readline(), 60))
                if v["counts"].get("uploaded") == 1:
                    break
            assert v["done"] is True
            await w1.stop()
        finally:
            p.terminate()
            await p.wait()
    asyncio.run(body())
