"""No secret of a real process or a real log reaches a bundle or a report, whatever the profile.

Seeded: secrets on the command lines and in the environments of real targets (a Python program,
a Node.js program, a JVM with a password system property, and a process parked in D state so it
is in ``host.json``'s D-state list), and in a real log file (an Authorization header with a JWT,
``password=``, ``api_key=``, a URL password, an AWS key pair, a PEM private key, JSON and YAML
forms) whose lines carry error words and current timestamps, so the report's timeline shows them.
Captured with every profile that applies (quick, standard, full without heap dumps, which cannot
be redacted), each whole bundle is extracted with ``tar`` and every file grepped, and so are the
HTML, Markdown and JSON reports, the sidecars and goldenhour's own output. With ``logs.redact =
false`` the log keeps its secrets in the bundle (the documented option), and the report still
shows none.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

import dumptargets as dt

S = {   # every value is a secret that must appear nowhere; names are for the failure message
    "cmdline --password": "Cmdl1ne-Passw0rd-7f3a",
    "cmdline url": "Url-Passw0rd-2b9c",
    "cmdline --api-token next arg": "Cmdl1ne-T0ken-5e5e",
    "env token": "Env-T0ken-91d2e",
    "env password": "Env-Passw0rd-c4e1",
    "env aws": "AKIAZX7Q2W3E4R5T6Y7U",
    "node cmdline": "N0de-Cmd-Passw0rd-aa11",
    "node env": "N0de-Env-Secret-bb22",
    "jvm property": "Jvm-St0re-Passw0rd-cc33",
    "jvm argument": "Jvm-Arg-Passw0rd-ee77",
    "d-state cmdline": "Dstate-Passw0rd-dd44",
    "log bearer": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJyZWRhY3QtbWUtOTkifQ.c2lnbmF0dXJlLXJlZGFjdC1tZQ",
    "log password": "L0g-Passw0rd-ee55",
    "log api_key": "L0g-Api-Key-ff66",
    "log url": "L0g-Url-Passw0rd-0a0a",
    "log aws secret": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzz9redact",
    "log pem": "MIIEowIBAAKCAQEAredactmeredactmeredactme",
    "log json": "L0g-Json-T0ken-1b1b",
    "log yaml": "L0g-Yaml-Secret-2c2c",
    "log cookie": "L0g-C00kie-Session-3d3d",
}

D_STATE = textwrap.dedent("""
    import os, sys, threading
    print("READY", os.getpid(), flush=True)
    os.posix_spawn("/bin/true", ["true"], os.environ,
                   file_actions=[(os.POSIX_SPAWN_OPEN, 0, sys.argv[1], os.O_RDONLY, 0)])
    threading.Event().wait()
""")


def _log_lines() -> list[str]:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return [
        f"{now} INFO request started",
        f"{now} ERROR upstream refused GET /api Authorization: Bearer {S['log bearer']}",
        f"{now} ERROR login failed for bob password={S['log password']} from 10.0.0.7",
        f"{now} ERROR timeout calling billing api_key={S['log api_key']}",
        f"{now} ERROR cannot connect to postgres://app:{S['log url']}@db.internal:5432/app",
        f"{now} WARN retrying with aws_secret_access_key={S['log aws secret']} id {S['env aws']}",
        f'{{"time": "{now}", "level": "error", "msg": "token refresh failed", "token": "{S["log json"]}"}}',
        f"{now} ERROR config dump: client_secret: {S['log yaml']}",
        f"{now} ERROR echoing headers Cookie: sessionid={S['log cookie']}; theme=dark",
        f"{now} ERROR loaded key",
        "-----BEGIN RSA PRIVATE KEY-----",
        S["log pem"],
        "c2Vjb25kIGxpbmUgb2YgdGhlIGtleQ==",
        "-----END RSA PRIVATE KEY-----",
        f"{now} ERROR the end of the log, nothing secret here",
    ]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("redaction")
    log = tmp / "app.log"
    log.write_text("\n".join(_log_lines()) + "\n")
    env = {**os.environ, "API_TOKEN": S["env token"], "DB_PASSWORD": S["env password"],
           "AWS_ACCESS_KEY_ID": S["env aws"], "HARMLESS": "visible-value"}
    targets = []
    try:
        targets.append(dt.python_target(tmp, f"--password={S['cmdline --password']}",
                                        f"https://svc:{S['cmdline url']}@db.example/x",
                                        "--api-token", S["cmdline --api-token next arg"], env=env))
        targets.append(dt.node_target(tmp, f"--db-password={S['node cmdline']}",
                                      env={**env, "NODE_SECRET_TOKEN": S["node env"]}))
        targets.append(dt.jvm_target(tmp, f"-Djavax.net.ssl.keyStorePassword={S['jvm property']}",
                                     extra=("--db-password", S["jvm argument"])))
        fifo = tmp / "block.fifo"
        os.mkfifo(fifo)
        dstate = dt.Target([sys.executable, "-c", D_STATE, fifo, f"--password={S['d-state cmdline']}"], env=env)
        targets.append(dstate)
        deadline = time.monotonic() + 10
        while dstate.thread_states().get(dstate.pid) != "D":
            assert time.monotonic() < deadline, "the D-state target never reached D state"
            time.sleep(0.01)
        yield tmp, log, targets
    finally:
        if (tmp / "block.fifo").exists():
            try:
                os.close(os.open(tmp / "block.fifo", os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        for t in targets:
            t.stop()


def _config(store: Path, tmp: Path, extra: str = "") -> Path:
    cfg = tmp / f"cfg-{os.urandom(3).hex()}.toml"
    cfg.write_text(f'[store]\npath = "{store}"\nreserve_bytes = 0\nreserve_percent = 0\n'
                   f'[logs]\npaths = []\njournal = false\n{extra}\n[collectors.host]\ntop = 100000\n')
    return cfg


def _grep_tree(root: Path) -> list[str]:
    found = []
    for p in root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            found += [f"{name} in {p.relative_to(root)}" for name, v in S.items() if v.encode() in data]
    return found


def _capture(gh, cfg: Path, log: Path, targets, profile: str, *extra: str) -> dict:
    pids = [a for t in targets[:3] for a in ("--pid", str(t.pid))]
    cp = gh("snapshot", "--json", "--incident", f"INC-red-{profile}", "--profile", profile, "--log", str(log),
            "--probe-seconds", "1", *pids, *extra, env={"GOLDENHOUR_CONFIG": str(cfg)})
    assert cp.returncode == 0, cp.stderr
    leaks = [name for name, v in S.items() if v in cp.stdout + cp.stderr]
    assert not leaks, f"goldenhour's own output: {leaks}"
    return json.loads(cp.stdout)


def _extract(bundle: Path, dest: Path) -> Path:
    dest.mkdir()
    subprocess.run(["tar", "-xf", str(bundle), "-C", str(dest)], check=True)
    (top,) = list(dest.iterdir())
    return top


def _reports(gh, cfg: Path, bundle: Path, tmp: Path) -> dict[str, str]:
    out = {}
    for fmt in ("html", "md", "json"):
        path = tmp / f"report-{bundle.name}.{fmt}"
        cp = gh("report", str(bundle), "--format", fmt, "--out", str(path), env={"GOLDENHOUR_CONFIG": str(cfg)})
        assert cp.returncode == 0, cp.stderr
        out[fmt] = path.read_text()
    return out


@pytest.mark.parametrize("profile, extra", [("quick", ()), ("standard", ()), ("full", ("--skip", "heap"))])
def test_no_seeded_secret_reaches_a_bundle_or_a_report(gh, seeded, tmp_path, profile, extra):
    tmp, log, targets = seeded
    store = tmp_path / "store"
    cfg = _config(store, tmp_path)
    out = _capture(gh, cfg, log, targets, profile, *extra)
    bundle = Path(out["bundle"])
    top = _extract(bundle, tmp_path / "x")
    leaks = _grep_tree(top) + _grep_tree(bundle.parent)      # every member, and the sidecars beside it
    assert not leaks, leaks

    # the evidence is there, redacted (not simply missing)
    man = json.loads((top / "manifest.json").read_text())
    host = json.loads((top / "collectors/host/host.json").read_text())
    py, node, jvm, dstate = targets
    rows = {r["pid"]: r for r in host["top_processes"]["by_rss"]}
    assert "--password=[REDACTED]" in rows[py.pid]["cmdline"] and "svc:[REDACTED]@db.example" in rows[py.pid]["cmdline"]
    assert "--api-token [REDACTED]" in rows[py.pid]["cmdline"]
    assert "--password=[REDACTED]" in next(r["cmdline"] for r in host["d_state"] if r["pid"] == dstate.pid)
    assert "-Djavax.net.ssl.keyStorePassword=[REDACTED]" in rows[jvm.pid]["cmdline"]
    env = (top / f"collectors/process/{py.pid}/environ.txt").read_text().splitlines()
    assert "API_TOKEN=[REDACTED]" in env and "HARMLESS=visible-value" in env
    logs = json.loads((top / "collectors/logs/logs.json").read_text())
    entry = next(e for e in logs["files"] if e["path"] == str(log))
    kept = (top / "collectors/logs" / entry["file"]).read_text()
    assert kept.count("\n") == log.read_text().count("\n")               # every line kept
    assert entry["redacted"] >= 10 and kept.count("[REDACTED]") >= 10
    assert man["redaction"]["logs"]["files"][f"collectors/logs/{entry['file']}"] == entry["redacted"]
    assert man["redaction"]["count"] >= entry["redacted"] + 6
    if profile != "quick":
        report = json.loads((top / f"collectors/threads/{node.pid}/node-report.json").read_text())
        assert report["environmentVariables"]["NODE_SECRET_TOKEN"] == "[REDACTED]"

    reports = _reports(gh, cfg, bundle, tmp_path)
    for fmt, text in reports.items():
        leaks = [name for name, v in S.items() if v in text]
        assert not leaks, (fmt, leaks)
    timeline = json.loads(reports["json"])["timeline"]
    assert any("password=[REDACTED]" in e["event"] for e in timeline), [e["event"] for e in timeline]


def test_raw_logs_keep_their_secrets_in_the_bundle_but_never_in_a_report(gh, seeded, tmp_path):
    tmp, log, targets = seeded
    cfg = _config(tmp_path / "store", tmp_path, "redact = false")
    out = _capture(gh, cfg, log, targets, "quick")
    bundle = Path(out["bundle"])
    top = _extract(bundle, tmp_path / "x")
    leaks = _grep_tree(top)
    assert leaks and all("collectors/logs/files/" in x for x in leaks), leaks     # only the raw log tail
    man = json.loads((top / "manifest.json").read_text())
    assert man["redaction"]["logs"]["raw"] is True
    for fmt, text in _reports(gh, cfg, bundle, tmp_path).items():
        assert not [name for name, v in S.items() if v in text], fmt
