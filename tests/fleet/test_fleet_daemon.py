"""Real relays and real daemons in fleet mode, a real nats-server, moto's S3: the issue's "done when".

Each daemon is its own process with its own identity, store, state and host credential (its
permissions allow its own keys only); captures are real (the ``host`` collector), uploads go
to moto's S3 on loopback. Webhooks are signed generic deliveries posted to the relay.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import time

import boto3
import pytest

from agent.fleet import incidents, keys
from agent.fleet.overview import read_bucket
from agent.fleet.records import Scope, make_incident
from fleetlib import FLEET, FleetDaemon, RelayProc, commander_config, generic_delivery, gh


def statuses(fleet, inc: str) -> dict[str, dict]:
    async def read():
        nc, b = await fleet.buckets("commander")
        try:
            return {json.loads(e.value)["host"]: json.loads(e.value)
                    for e in await read_bucket(b[keys.STATUS], f"{FLEET}.{keys.encode(inc)}.*")}
        finally:
            await nc.close()
    return asyncio.run(read())


def counts(d: FleetDaemon) -> dict:
    return (d.health().get("fleet") or {}).get("counts") or {}


def wait_status(fleet, inc: str, hosts: set[str], state: str, timeout: float = 120, rev: int = 1) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = statuses(fleet, inc)
        if all(got.get(h, {}).get("state") == state and got[h]["capture_rev"] == rev for h in hosts):
            return got
        time.sleep(0.2)
    raise AssertionError(f"{inc}: not every one of {hosts} is {state}: {statuses(fleet, inc)}")


def s3_sha256(moto, key: str) -> str:
    c = boto3.client("s3", endpoint_url=moto[0], region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing")
    return hashlib.sha256(c.get_object(Bucket=moto[1], Key=key)["Body"].read()).hexdigest()


@pytest.fixture
def daemons(fleet, moto, tmp_path):
    made: list = []

    def make(host: str, **kw) -> FleetDaemon:
        kw.setdefault("s3", moto)
        d = FleetDaemon(fleet, host, tmp_path / host, **kw)
        made.append(d)
        return d
    yield make
    for d in made:
        d.stop()


@pytest.fixture
def relays(fleet, tmp_path):
    made: list = []

    def make(name: str = "r1", **kw) -> RelayProc:
        r = RelayProc(fleet, tmp_path / f"relay-{name}", **kw)
        made.append(r)
        return r
    yield make
    for r in made:
        r.stop()


def test_a_webhook_at_two_relays_captures_once_on_each_concerned_daemon(fleet, moto, daemons, relays, tmp_path):
    w1 = daemons("web-1", services=["checkout"]).start()
    w2 = daemons("web-2", services=["checkout"]).start()
    db = daemons("db-1.example.com", tags=["role=db"]).start()
    r1, r2 = relays("r1").start(), relays("r2").start()
    delivery = generic_delivery("INC-100", services=["checkout"], delivery="dlv-100")
    first = r1.post(delivery)
    assert first.status_code == 202 and first.json()["status"] == "created", first.text
    again = r2.post(delivery)                               # the same delivery at the second relay
    assert again.status_code == 200 and again.json()["status"] == "duplicate", again.text
    retry = r1.post(generic_delivery("INC-100", services=["checkout"], delivery="dlv-100-retry"))
    assert retry.status_code == 200 and retry.json()["status"] == "duplicate", retry.text
    got = wait_status(fleet, "INC-100", {"web-1", "web-2"}, "uploaded")
    for d in (w1, w2):
        st = got[d.host]
        [bundle] = d.bundles("INC-100")
        assert st["bundle"]["sha256"] == bundle.with_name(bundle.name + ".sha256").read_text().split()[0]
        assert s3_sha256(moto, st["bundle"]["key"]) == st["bundle"]["sha256"]
        assert st["bundle"]["key"].startswith(f"fleet/incidents/INC-100/{d.host}/")
        assert st["capture_rev"] == 1 and not st["late"] and st["matched_by"] == "service checkout"
    assert db.bundles("INC-100") == [] and "db-1.example.com" not in got
    # the commander's view, from a real CLI: done, exit 0
    cfg = commander_config(fleet, tmp_path / "ic")
    rc, out, err = asyncio.run(gh(cfg, "fleet", "status", "-i", "INC-100", "--wait", "--timeout", "60s", "--json"))
    assert rc == 0, out + err
    v = json.loads(out)
    assert v["expected"] == 2 and v["ok"] == 2 and v["latency_s"]["n"] == 2
    # a recapture: once more on each concerned host; the same recapture delivery again: not a third time
    rec = generic_delivery("INC-100", "recapture", services=["checkout"], delivery="dlv-101")
    assert r2.post(rec).json()["status"] == "recaptured"
    assert r1.post(rec).json()["status"] == "duplicate"
    got = wait_status(fleet, "INC-100", {"web-1", "web-2"}, "uploaded", rev=2)
    time.sleep(1)
    assert [len(d.bundles("INC-100")) for d in (w1, w2, db)] == [2, 2, 0]
    # a resolve, and a bad delivery: nothing written for the latter
    assert r1.post(generic_delivery("INC-100", "resolve", delivery="dlv-102")).json()["status"] == "resolved"
    raw, h = generic_delivery("INC-101", services=["checkout"])
    assert r1.post((raw, {**h, "X-Goldenhour-Signature": "t=1,v1=00"})).status_code in (401, 403)
    assert statuses(fleet, "INC-101") == {}
    assert "Violation" not in fleet.server.log.read_text()        # every daemon within its own rights


def test_nats_down_at_the_relay_then_back_and_a_server_restart(fleet, moto, daemons, relays):
    w1 = daemons("web-1", services=["checkout"]).start()
    r1 = relays().start()
    assert r1.post(generic_delivery("INC-200", services=["checkout"], delivery="d200")).status_code == 202
    wait_status(fleet, "INC-200", {"web-1"}, "uploaded")
    fleet.server.stop()
    d = generic_delivery("INC-201", services=["checkout"], delivery="d201")
    down = r1.post(d)
    assert down.status_code == 503 and down.headers.get("retry-after"), down.text
    fleet.server.start()                                        # same port, same store: a restart
    r1.wait_ready()
    back = r1.post(d)                                           # the tracker's retry
    assert back.status_code in (200, 202) and back.json()["status"] in ("created", "duplicate"), back.text
    wait_status(fleet, "INC-201", {"web-1"}, "uploaded")
    time.sleep(1)
    # the restart replayed INC-200 to the daemon: nothing captured twice
    assert len(w1.bundles("INC-200")) == 1 and len(w1.bundles("INC-201")) == 1
    assert counts(w1).get("captures") == 2


def test_a_daemon_away_during_the_trigger(fleet, moto, daemons, relays):
    """Captures on return (late) while the incident is open; never after a resolve or past the deadline."""
    w2 = daemons("web-2", services=["checkout"])
    r1 = relays().start()
    assert r1.post(generic_delivery("OPEN-1", hosts=["web-2"], delivery="o1")).status_code == 202
    assert r1.post(generic_delivery("GONE-1", hosts=["web-2"], delivery="g1")).status_code == 202
    assert r1.post(generic_delivery("GONE-1", "resolve", delivery="g2")).json()["status"] == "resolved"

    async def past():
        nc, b = await fleet.buckets("commander")
        rec = make_incident(FLEET, "PAST-1", deadline_s=-60, scope=Scope(hosts=["web-2"]))
        await b[keys.INCIDENTS].create(rec.key, rec.encode())
        await nc.close()
    asyncio.run(past())
    w2.start()
    got = wait_status(fleet, "OPEN-1", {"web-2"}, "uploaded")
    assert got["web-2"]["late"] is True
    assert wait_status(fleet, "PAST-1", {"web-2"}, "expired")["web-2"]["error"].startswith("seen after its deadline")
    assert statuses(fleet, "GONE-1") == {}
    assert w2.bundles("GONE-1") == [] and w2.bundles("PAST-1") == [] and len(w2.bundles("OPEN-1")) == 1


def test_a_daemon_killed_mid_capture_does_not_capture_twice(fleet, moto, daemons, relays):
    slow = {"GOLDENHOUR_EXTRA_COLLECTORS": "tests.helpers.slow"}
    w1 = daemons("web-1", collectors=("host", "slow"), environ=slow,
                 extra="[collectors.slow]\ntimeout_s = 120\n").start()
    r1 = relays().start()
    assert r1.post(generic_delivery("KILL-1", hosts=["web-1"], delivery="k1")).status_code == 202
    w1.wait(lambda h: h.get("running"), 60, "a running capture")
    wait_status(fleet, "KILL-1", {"web-1"}, "capturing")
    w1.kill()
    w1.start()                                                  # the record replays: no second capture
    st = wait_status(fleet, "KILL-1", {"web-1"}, "failed")["web-1"]
    assert "interrupted" in st["error"]
    time.sleep(1)
    assert w1.health()["running"] is None
    assert len(w1.bundles("KILL-1")) <= 1                       # the salvaged evidence, never a second capture
    assert counts(w1).get("captures", 0) == 0


def test_a_host_credential_cannot_pose_as_another_host(fleet, moto, daemons):
    """web-1 run with web-2's credential: its heartbeat and statuses are refused by the server."""
    d = daemons("web-1", services=["checkout"], seed=fleet.seed("host-web-2")).start(wait_fleet=False)
    d.wait(lambda h: "permission" in ((h.get("fleet") or {}).get("last_error") or "").lower(), 60,
           "a permissions violation reported")

    async def registered():
        nc, b = await fleet.buckets("commander")
        try:
            return sorted(e.key for e in await read_bucket(b[keys.HOSTS], f"{FLEET}.*"))
        finally:
            await nc.close()
    assert asyncio.run(registered()) == []
    assert "Violation" in fleet.server.log.read_text()            # the server refused it, and logged why


def test_a_reload_retargets_fleet_mode(fleet, moto, daemons):
    """SIGHUP with new daemon.services: the heartbeat shows them at once and they target fleet incidents."""
    import signal

    w1 = daemons("web-1", services=["checkout"]).start()
    w1.cfg.write_text(w1.cfg.read_text().replace('services = ["checkout"]', 'services = ["billing"]'))
    w1.proc.send_signal(signal.SIGHUP)

    async def heartbeat():
        nc, b = await fleet.buckets("commander")
        try:
            return json.loads((await b[keys.HOSTS].get(keys.host_key(FLEET, "web-1"))).value)
        finally:
            await nc.close()
    deadline = time.monotonic() + 60
    while asyncio.run(heartbeat())["services"] != ["billing"]:
        assert time.monotonic() < deadline, asyncio.run(heartbeat())
        time.sleep(0.1)

    async def declare(inc: str, service: str):
        nc, b = await fleet.buckets("commander")
        try:
            await incidents.declare(b[keys.INCIDENTS], incidents.new_record(
                FLEET, inc, scope=Scope(services=[service]), profile="quick", deadline_s=600))
        finally:
            await nc.close()
    asyncio.run(declare("RELOAD-1", "billing"))
    asyncio.run(declare("RELOAD-2", "checkout"))
    wait_status(fleet, "RELOAD-1", {"web-1"}, "uploaded")
    assert statuses(fleet, "RELOAD-2") == {} and w1.bundles("RELOAD-2") == []
