"""Running the daemon: SIGHUP reloads the config (a broken one is kept out, never fatal), warnings at
start, a local-only host with nothing pending, answers that are not held back on a kept-alive
connection, and the local API's not-found code. The real daemon, real signals, real sockets."""
from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import time

import httpx

import gh_webhook_payloads as P
from tests.helpers.sockopt import peer_socket

TOKEN = "local-api-token-0123456789"


def _wait_line(d, pattern: str, start: int = 0, timeout: float = 60) -> str:
    """The first log line from index ``start`` on that matches ``pattern`` (a readiness signal, not a sleep)."""
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in d.lines[start:]:
            if rx.search(line):
                return line
        if not d.alive():
            break
        time.sleep(0.02)
    raise AssertionError(f"no log line matching {pattern!r}:\n" + "\n".join(d.lines[-20:]))


def _datadog(d) -> int:
    return httpx.post(f"{d.url}/v1/webhooks/datadog", content=b"{}", timeout=10,
                      headers={"Content-Type": "application/json"}).status_code


def test_sighup_reloads_the_config_and_a_broken_one_is_kept_out(new_daemon):
    d = new_daemon().start()
    pid, url, good = d.proc.pid, d.url, d.cfg.read_text()
    assert _datadog(d) == 404                                     # not enabled
    (d.dir / "datadog.secret").write_text("dd-token-for-tests-0123456789\n")
    (d.dir / "datadog.secret").chmod(0o600)
    d.cfg.write_text(good.replace('listen = "127.0.0.1:0"', 'listen = "127.0.0.1:1"')
                     + f'[webhooks.datadog]\nenabled = true\nsecret_file = "{d.dir / "datadog.secret"}"\n')
    n = len(d.lines)
    d.proc.send_signal(signal.SIGHUP)
    line = _wait_line(d, r"event=reload .*outcome=reloaded", n)
    assert "datadog" in line and "restart_needed=daemon.listen" in line
    assert "daemon.listen" in _wait_line(d, r"event=reload .*take effect only after a restart", n)
    assert d.alive() and d.proc.pid == pid and d.url == url
    assert _datadog(d) == 401                                     # enabled now: asks for its token

    # a config that does not load: logged, the previous one kept, nothing else changes
    d.cfg.write_text(good + "[logs]\nnosuch_key = 1\n")
    n = len(d.lines)
    d.proc.send_signal(signal.SIGHUP)
    line = _wait_line(d, r"event=reload .*outcome=failed", n)
    assert "nosuch_key" in line and "previous config" in line
    assert d.alive() and d.health()["status"] == "ok" and _datadog(d) == 401
    # captures keep working: the child gets the daemon's config, not the broken file
    r = httpx.post(f"{d.url}/v1/snapshot", json={"incident": "MAN-HUP-1", "collectors": ["host"]},
                   headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
    assert r.status_code == 200 and r.json()["status"] == "done", r.text
    ok = d.post("generic", P.generic_delivery("INC-HUP-1"))
    assert ok.status_code == 202, ok.text
    d.wait_idle()
    assert len(d.bundles("INC-HUP-1")) == 1
    # back to a good config; a stop after reloads is as clean as ever
    d.cfg.write_text(good)
    n = len(d.lines)
    d.proc.send_signal(signal.SIGHUP)
    _wait_line(d, r"event=reload .*outcome=reloaded", n)
    assert _datadog(d) == 404
    assert d.stop() == 0


def test_the_daemon_warns_without_trackers_and_about_secrets_others_can_read(new_daemon):
    quiet = new_daemon("quiet")
    text = quiet.cfg.read_text()
    quiet.cfg.write_text(text[:text.index("[webhooks.pagerduty]")])          # no tracker at all
    (quiet.dir / "api.token").chmod(0o600)
    quiet.start()
    line = _wait_line(quiet, r"event=config .*no tracker is enabled")
    assert "level=warning" in line
    assert not any("readable by" in x for x in quiet.lines)
    quiet.stop()

    loose = new_daemon("loose")
    (loose.dir / "generic.secret").chmod(0o644)
    (loose.dir / "api.token").chmod(0o640)
    loose.start()
    secret = _wait_line(loose, r"event=config .*generic.secret")
    assert "[webhooks.generic] secret_file" in secret and "readable by group and others (mode 0644)" in secret
    assert "chmod 600" in secret and P.SECRETS["generic"] not in "\n".join(loose.lines)
    token = _wait_line(loose, r"event=config .*api.token")
    assert "daemon.api_token_file" in token and "readable by group (mode 0640)" in token
    assert not any("no tracker is enabled" in x for x in loose.lines)
    assert loose.health()["status"] == "ok"


def test_a_local_only_daemon_counts_no_bundle_as_pending(new_daemon):
    d = new_daemon().start()                                     # the harness's config names no upload.url
    assert d.post("generic", P.generic_delivery("INC-LOCAL-1")).status_code == 202
    d.wait_idle()
    assert len(d.bundles("INC-LOCAL-1")) == 1
    assert d.health()["pending_uploads"] == 0
    assert re.search(r"^goldenhour_uploads_pending 0(\.0)?$", d.metrics(), re.M)
    # a bundle given a URL by snapshot --upload, whose upload failed, is pending: the daemon will retry it
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
           "AWS_MAX_ATTEMPTS": "1"}
    cp = d.gh("snapshot", "--json", "--incident", "INC-LOCAL-2", "--collector", "host", "--upload",
              "s3://evidence/prod", env=env)
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["upload"]["status"] == "pending"
    deadline = time.monotonic() + 30                              # the count is cached for 2 s
    while time.monotonic() < deadline and d.health()["pending_uploads"] != 1:
        time.sleep(0.1)
    assert d.health()["pending_uploads"] == 1
    assert re.search(r"^goldenhour_uploads_pending 1(\.0)?$", d.metrics(), re.M)


def test_answers_on_a_kept_alive_connection_are_sent_without_nagle(daemon):
    """The daemon's side of each TCP connection has TCP_NODELAY: uvicorn writes an answer's head and body
    separately, and without it the body waited for the client's delayed ACK (~40 ms) on a reused
    connection. Checked on the daemon's own socket (pidfd_getfd), not by timing."""
    host, port = daemon.url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        for _ in range(2):                                        # the second one reuses the connection
            conn.request("GET", "/healthz")
            resp = conn.getresponse()
            assert resp.status == 200 and json.loads(resp.read())["status"] == "ok"
        theirs = peer_socket(daemon.proc.pid, int(port), conn.sock.getsockname()[1])
        try:
            assert theirs.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            theirs.close()
    finally:
        conn.close()


def test_via_daemon_an_unknown_collector_exits_4(daemon):
    cp = daemon.gh("snapshot", "--via-daemon", "--incident", "MAN-NOSUCH-1", "--collector", "nosuch")
    assert cp.returncode == 4, cp.stdout + cp.stderr
    assert "unknown collector nosuch" in cp.stderr and "Traceback" not in cp.stderr
    assert os.path.isdir(daemon.store) and not daemon.bundles("MAN-NOSUCH-1")


def test_the_generic_webhook_example_runs_as_written(daemon):
    """docs/trackers.md's shell block under "The generic format", with only its three settings set for this daemon."""
    import subprocess
    from pathlib import Path
    page = (Path(__file__).resolve().parents[2] / "docs" / "trackers.md").read_text()
    block = page.split("**The generic format**", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    settings = {"SECRET": f"$(head -n1 {daemon.dir / 'generic.secret'})", "HOST": P.HOST,
                "URL": f"{daemon.url}/v1/webhooks/generic"}
    lines = block.splitlines()
    for i, line in enumerate(lines):
        name = line.split("=", 1)[0]
        if name in settings:
            lines[i] = f"{name}={settings.pop(name)}"
    assert not settings, f"docs/trackers.md's block no longer sets {settings}"
    script = "\n".join(lines).replace("INC-123", "INC-README-1")
    cp = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    assert out["status"] == "queued" and out["incidents"][0]["incident"] == "INC-README-1", out
    daemon.wait_idle()
    assert len(daemon.bundles("INC-README-1")) == 1
