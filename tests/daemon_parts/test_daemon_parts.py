"""The daemon package's seams, driven through the real daemon and the real ``daemon-job`` child.

- a capture queued by the daemon before this package (state file with ``only``/``log_paths``)
  runs after a restart, with its collectors and log paths;
- the pause-ledger sweep at start (run in a child) resumes a real process left stopped;
- the uploader reads the child's upload round (moto's S3 on loopback): uploaded, counted, receipt;
- ``daemon-job`` answers bad input with one JSON result and exit 2;
- the one request type: old keys read, the local API's validation.
"""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
import pytest
import zstandard

import gh_webhook_payloads as P
from agent.daemon.request import CaptureRequest, RequestError
from agent.incident import Incident, Trigger
from tests.helpers.moto import start_moto, stop

ROOT = Path(__file__).resolve().parents[2]
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
         "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent",
         "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}

# what the daemon before agent/daemon/ persisted for a queued local-API capture (capture_request())
LEGACY_JOB_REQUEST = {
    "incident": {"id": "LEGACY-1", "source": "manual", "title": "queued before an upgrade"},
    "trigger": {"kind": "daemon-api", "reason": "", "by": "local API"},
    "profile": "quick", "only": ["logs"], "store": "STORE", "heap": False, "log_paths": ["LOG"],
}


def _members(bundle: Path) -> dict[str, bytes]:
    with bundle.open("rb") as fh, zstandard.ZstdDecompressor().stream_reader(fh) as zr:
        data = zr.read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def _manifest(bundle: Path) -> dict:
    return json.loads(bundle.with_name(bundle.name.replace(".tar.zst", ".manifest.json")).read_text())


def test_a_capture_queued_before_the_upgrade_runs_after_restart(new_daemon, tmp_path):
    log = tmp_path / "app.log"
    log.write_text("line one\nLEGACY-MARKER-7f3a the line to find\n")
    d = new_daemon()
    req = {**LEGACY_JOB_REQUEST, "store": str(d.store), "log_paths": [str(log)]}
    now = time.time()
    state = d.store / "state" / "daemon-state.json"
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({"version": 1, "saved_at": now, "deliveries": {}, "incidents": {"manual/LEGACY-1": {
        "id": "LEGACY-1", "source": "manual", "status": "manual", "opened_at": now, "updated_at": now,
        "captures": [], "capture": "queued", "job": "20261203T101010-abcdef", "job_request": req}}}))
    d.start()
    d.wait_idle()
    [bundle] = d.bundles("LEGACY-1")
    m = _manifest(bundle)
    assert {c["name"] for c in m["collectors"]} == {"logs"}            # `only` honoured
    assert m["incident"]["title"] == "queued before an upgrade" and m["trigger"]["kind"] == "daemon-api"
    assert m["trigger"]["at"]                                          # stamped when the capture started
    assert any(b"LEGACY-MARKER-7f3a" in data for data in _members(bundle).values())   # `log_paths` honoured
    rec = d.state()["incidents"]["manual/LEGACY-1"]
    assert rec["capture"] == "done" and rec["captures"][0]["job"] == "20261203T101010-abcdef"
    assert "job_request" not in rec
    assert any("event=capture_start" in line and "kind=requeued" in line for line in d.lines)


def _starttime(pid: int) -> int:
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text[text.rindex(")") + 2:].split()[19])


def test_start_up_sweep_resumes_a_target_a_dead_goldenhour_left_stopped(new_daemon, spawn):
    target = spawn([sys.executable, "-c", "import time; print('READY', flush=True); time.sleep(600)"])
    os.kill(target.pid, signal.SIGSTOP)
    deadline = time.monotonic() + 30
    while target.state() != "T" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert target.state() == "T"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    d = new_daemon()
    ledger = d.store / "state" / "pauses"
    ledger.mkdir(parents=True)
    entry = ledger / f"{target.pid}-{_starttime(target.pid)}-gdb.json"
    entry.write_text(json.dumps({"kind": "pause", "pid": target.pid, "start_time": _starttime(target.pid),
                                 "collector": "gdb", "state_before": "S", "owner_pid": int(gone.stdout),
                                 "owner_start": 1, "at": time.time()}))
    d.start()                                   # the sweep runs before the daemon says it is ready
    assert target.state() != "T" and target.alive()
    assert not entry.exists()
    assert any("event=pause_sweep" in line and f"'pid': {target.pid}" in line for line in d.lines), d.lines


@pytest.fixture(scope="module")
def moto_url():
    proc, url = start_moto(CREDS)
    yield url
    stop(proc)


def test_the_uploader_reads_the_childs_upload_round(new_daemon, moto_url):
    import boto3
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    bucket = f"evidence-{os.urandom(4).hex()}"
    s3.create_bucket(Bucket=bucket)
    d = new_daemon(env=CREDS, extra=f'[upload]\nurl = "s3://{bucket}/pfx"\nendpoint_url = "{moto_url}"\n').start()
    assert d.post("generic", P.generic_delivery("INC-UP-1")).status_code == 202
    d.wait_idle()
    deadline = time.monotonic() + 120
    while not d.health()["last_upload"] and time.monotonic() < deadline:
        time.sleep(0.1)
    last = d.health()["last_upload"]
    assert last and last["ok"] and (last["uploaded"], last["failed"]) == (1, 0), last
    [bundle] = d.bundles("INC-UP-1")
    assert bundle.with_name(bundle.name.replace(".tar.zst", ".upload.json")).exists()
    metrics = d.metrics()
    assert 'goldenhour_uploads_total{outcome="uploaded"} 1' in metrics
    assert 'goldenhour_upload_runs_total{result="ok"} 1' in metrics
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="pfx/incidents/INC-UP-1/")["Contents"]]
    assert any(k.endswith(bundle.name) for k in keys), keys


def _job(stdin: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", "daemon-job"], input=stdin, capture_output=True, text=True,
                          cwd=ROOT, timeout=120, env={**os.environ, "GOLDENHOUR_STORE": str(tmp_path / "store")})


def test_daemon_job_answers_bad_input_with_one_json_result(tmp_path):
    cp = _job(json.dumps({"kind": "capture", "request": {"incident": {"id": "../etc"}, "trigger": {}}}), tmp_path)
    out = json.loads(cp.stdout)
    assert cp.returncode == 2 and out["kind"] == "capture" and not out["ok"]
    assert out["error"].startswith("bad job: invalid incident ID")
    cp = _job('{"kind": "format-disk"}', tmp_path)
    assert cp.returncode == 2 and "unknown job kind" in json.loads(cp.stdout)["error"]
    cp = _job("not json", tmp_path)
    assert cp.returncode == 2 and cp.stdout == ""
    assert cp.stderr.count("\n") == 1 and "reads one JSON object on stdin" in cp.stderr
    cp = _job('{"kind": "sweep"}', tmp_path)                 # nothing in the ledger: nothing to do
    assert cp.returncode == 0 and json.loads(cp.stdout)["ok"] and json.loads(cp.stdout)["resumed"] == []


# -- the request type ---------------------------------------------------------------

def test_the_request_reads_the_old_keys_and_round_trips():
    r = CaptureRequest.from_json(LEGACY_JOB_REQUEST)
    assert (r.collectors, r.log_paths, r.profile, r.incident.id, r.trigger.at) == (["logs"], ["LOG"], "quick",
                                                                                   "LEGACY-1", "")
    assert CaptureRequest.from_json(r.to_json()) == r
    assert "only" not in r.to_json() and "logs" not in r.to_json()
    with pytest.raises(RequestError, match="invalid incident ID"):
        CaptureRequest.from_json({**LEGACY_JOB_REQUEST, "incident": {"id": "a/b"}})


@pytest.mark.parametrize("body, message", [
    ({"profile": "huge"}, "profile must be quick, standard or full"),
    ({"collectors": "host"}, "collectors must be a list"),
    ({"logs": [1]}, "logs must be a list of strings"),
    ({"pids": ["x"]}, "pids must be integers"),
    ({"time_budget_s": "soon"}, "time_budget_s must be a positive number of seconds"),
    ({"probe_seconds": -1}, "probe_seconds must be a positive number of seconds"),
])
def test_the_local_api_validation_names_the_bad_field(body, message):
    with pytest.raises(RequestError) as ei:
        CaptureRequest.from_api(body, incident=Incident(id="INC-1"), trigger=Trigger(at=""), default_profile="quick")
    assert str(ei.value) == message


def test_the_local_api_spells_log_paths_logs(new_daemon):
    r = CaptureRequest.from_api({"logs": ["/var/log/app.log"], "pids": ["42"], "collectors": ["logs"]},
                                incident=Incident(id="INC-1"), trigger=Trigger(at=""), default_profile="quick")
    assert (r.log_paths, r.pids, r.collectors, r.profile) == (["/var/log/app.log"], [42], ["logs"], "quick")
    d = new_daemon().start()
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(d.socket)), timeout=10) as c:
        bad = c.post("http://daemon/v1/snapshot", json={"incident": "INC-2", "time_budget_s": "soon"})
    assert bad.status_code == 400 and bad.json()["error"] == "time_budget_s must be a positive number of seconds"


def test_a_failed_upload_round_says_why_in_healthz(new_daemon, moto_url):
    """An upload round that fails names the bundle and the reason in /healthz (an empty reason left
    the operator guessing): here the bucket does not exist."""
    d = new_daemon(env=CREDS, extra=f'[upload]\nurl = "s3://no-such-bucket-{os.urandom(3).hex()}/pfx"\n'
                                    f'endpoint_url = "{moto_url}"\n').start()
    assert d.post("generic", P.generic_delivery("INC-UP-2")).status_code == 202
    d.wait_idle()
    deadline = time.monotonic() + 120
    while not d.health()["last_upload"] and time.monotonic() < deadline:
        time.sleep(0.1)
    last = d.health()["last_upload"]
    assert last and not last["ok"] and last["failed"] == 1, last
    assert "INC-UP-2_" in last["error"] and "bucket" in last["error"].lower(), last
