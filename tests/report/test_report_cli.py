"""``goldenhour report`` as a command: formats, the postmortem timeline, bad input and tampered bundles."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "postmortem-template.md"
TEMPLATE = SHARED if SHARED.exists() else Path(__file__).parent / "fixtures" / "postmortem-template.md"
TIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")


def _tables(markdown: str) -> list[list[list[str]]]:
    """Every table of a Markdown document as parsed by a CommonMark + GFM-tables parser: rows of cell texts."""
    tokens = MarkdownIt("commonmark").enable("table").parse(markdown)
    tables, rows, row = [], None, None
    for i, t in enumerate(tokens):
        if t.type == "table_open":
            rows = []
        elif t.type == "tr_open":
            row = []
        elif t.type in ("td_open", "th_open"):
            inline = tokens[i + 1]
            row.append(inline.content if inline.type == "inline" else "")
        elif t.type == "tr_close":
            rows.append(row)
        elif t.type == "table_close":
            tables.append(rows)
    return tables


def test_timeline_markdown_pastes_into_the_postmortem_template(incident):
    cp = incident.gh("report", "--incident", incident.id, "--timeline-md")
    assert cp.returncode == 0, cp.stderr
    lines = cp.stdout.splitlines()
    template = TEMPLATE.read_text()
    head = template.splitlines()
    at = head.index("## Timeline (UTC)")
    hdr = next(i for i in range(at, len(head)) if head[i].startswith("| Time"))
    assert lines[:2] == head[hdr:hdr + 2]          # the very header of the template
    rows = lines[2:]
    assert len(rows) >= 8
    # paste the rows under the template's header, in place of its example row
    filled = "\n".join(head[:hdr + 2] + rows + head[hdr + 3:]) + "\n"
    tables = _tables(filled)
    timeline = next(t for t in tables if t[0] == ["Time", "Host", "Source", "Event"])
    assert len(timeline) == 1 + len(rows)
    assert all(len(r) == 4 for r in timeline)
    assert all(TIME.match(r[0]) for r in timeline[1:])
    assert {r[1] for r in timeline[1:]} == {"web-1", "web-2"}
    # a log line holding pipes stays one cell
    assert any(r[3].endswith("request | pipe | failed") for r in timeline[1:])
    assert any(f"Killed process {incident.oom_pid} ({incident.oom_comm})" in r[3] for r in timeline[1:])
    # the template's other table is untouched
    actions = next(t for t in tables if t[0][:2] == ["Priority", "Action"])
    assert len(actions[0]) == 5


def test_markdown_report_has_findings_and_the_same_timeline(incident):
    md = incident.gh("report", "--incident", incident.id, "--format", "md")
    tl = incident.gh("report", "--incident", incident.id, "--timeline-md")
    assert md.returncode == 0 and tl.returncode == 0
    assert f"### CRITICAL: OOM killer killed {incident.oom_comm} (pid {incident.oom_pid})" in md.stdout
    assert "## Timeline (UTC)\n\n" + tl.stdout in md.stdout
    tables = _tables(md.stdout)
    assert all(len(r) == len(t[0]) for t in tables for r in t)


def test_html_is_self_contained(incident, tmp_path):
    out = tmp_path / "r.html"
    cp = incident.gh("report", str(incident.bundles[0]), "--out", str(out))
    assert cp.returncode == 0, cp.stderr
    html = out.read_text()
    assert html.startswith("<!doctype html>") and html.rstrip().endswith("</html>")
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    assert "<script" not in html and "<link" not in html and "<img" not in html
    # the only URL is the SVG namespace, which is a name, never fetched
    urls = set(re.findall(r"https?://[^\s\"'<>]+", html))
    assert urls <= {"http://www.w3.org/2000/svg"}, urls
    assert html.count("<svg") >= 2


def test_default_html_name_and_stdout(incident, tmp_path):
    cp = incident.gh("report", "--incident", incident.id, cwd=tmp_path)
    assert cp.returncode == 0, cp.stderr
    written = tmp_path / f"goldenhour-report-{incident.id}.html"
    assert written.exists() and f"goldenhour-report-{incident.id}.html" in cp.stdout
    cp = incident.gh("report", "--incident", incident.id, "--out", "-")
    assert cp.returncode == 0 and cp.stdout.startswith("<!doctype html>")


def test_json_alias_and_window(incident):
    cp = incident.gh("report", "--incident", incident.id, "--json", "--window", "1")
    assert cp.returncode == 0, cp.stderr
    rep = json.loads(cp.stdout)
    assert rep["window_s"] == 60
    # a one-minute window keeps the capture and whatever the findings rest on, but not the app log
    # lines from two and three minutes before
    assert not [e for e in rep["timeline"] if e["source"] == "app.log" and incident.log_error in e["event"]]
    assert [e for e in rep["timeline"] if f"Killed process {incident.oom_pid}" in e["event"]]


@pytest.mark.parametrize("args, code, message", [
    ((), 2, "name bundles"),
    (("--incident", "../../etc"), 2, "invalid incident ID"),
    (("--incident", "INC-NO-SUCH-1"), 4, "no bundle of incident INC-NO-SUCH-1"),
    (("/nonexistent/bundle.tar.zst",), 4, "no bundle '/nonexistent/bundle.tar.zst'"),
    (("--format", "pdf", "x"), 2, "Invalid value for '--format'"),
])
def test_bad_input_is_one_line_and_an_exit_code(incident, args, code, message):
    cp = incident.gh("report", *args)
    assert cp.returncode == code, (cp.stdout, cp.stderr)
    assert message in cp.stderr
    if code != 2 or "goldenhour: error" in cp.stderr:
        assert len(cp.stderr.strip().splitlines()) == 1


def test_a_file_that_is_not_a_bundle(incident, tmp_path):
    junk = tmp_path / "notes.tar.zst"
    junk.write_text("not a bundle at all\n")
    cp = incident.gh("report", str(junk))
    assert cp.returncode == 2 and "is not a goldenhour bundle" in cp.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    cp = incident.gh("report", str(empty))
    assert cp.returncode == 2 and "holds no bundle" in cp.stderr
    cp = incident.gh("report", str(incident.bundles[0]), "--out", str(tmp_path / "nope" / "r.html"))
    assert cp.returncode == 2 and "does not exist" in cp.stderr


def test_tampered_bundle_is_reported_and_exits_1(incident, tmp_path):
    """Change one byte of an evidence file in an extracted bundle: the report says so, critically."""
    import subprocess
    subprocess.run(["tar", "-xf", str(incident.bundles[1]), "-C", str(tmp_path)], check=True)
    folder = next(p for p in tmp_path.iterdir() if p.is_dir())
    host = folder / "collectors" / "host" / "host.json"
    data = json.loads(host.read_text())
    data["load"]["1m"] = 99.0
    host.write_text(json.dumps(data))
    out = tmp_path / "r.json"
    cp = incident.gh("report", str(folder), "--format", "json", "--out", str(out))
    assert cp.returncode == 1
    assert "report was written" in cp.stderr and "host.json" in cp.stderr
    rep = json.loads(out.read_text())
    f = next(f for f in rep["findings"] if f["rule"] == "bundle_integrity")
    assert f["severity"] == "critical" and rep["findings"][0] == f
    assert any(e["file"] == "collectors/host/host.json" for e in f["evidence"])


def test_truncated_archive_reports_what_it_could_read(incident, tmp_path):
    cut = tmp_path / incident.bundles[1].name
    data = incident.bundles[1].read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    shutil.copyfile(str(incident.bundles[1]) + ".sha256", str(cut) + ".sha256")
    manifest = incident.bundles[1].with_name(incident.bundles[1].name.replace(".tar.zst", ".manifest.json"))
    shutil.copyfile(manifest, cut.with_name(manifest.name))
    cp = incident.gh("report", str(cut), "--format", "json", "--out", str(tmp_path / "r.json"))
    assert cp.returncode == 1, cp.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    f = next(f for f in rep["findings"] if f["rule"] == "bundle_integrity")
    assert any("archive unreadable" in p or "differs from its .sha256" in p for p in f["data"]["problems"])


def test_missing_collectors_are_findings(incident, report):
    """web-2 ran two collectors only: nothing is claimed about the rest, and failures would be named."""
    web2 = next(b for b in report["bundles"] if b["host"] == "web-2")
    assert set(web2["collectors"]) == {"dmesg", "host"}
    # (the kernel's own "table full" messages are host-wide: any capture of dmesg may name them)
    assert not [f for f in report["findings"] if f["host"] == "web-2" and f["rule"] in ("listen_queue", "conntrack")
                and any(e["file"].startswith(("collectors/conntrack/", "collectors/sockets/")) for e in f["evidence"])]


def test_two_captures_of_one_host_do_not_double_the_timeline(incident, tmp_path):
    """web-2 captured twice (say a webhook, then the pre-restart hook): its kernel lines appear once."""
    cfg2 = incident.workdir / "config-web2.toml"
    from tests.report.conftest import run_gh
    cp = run_gh(cfg2, "snapshot", "--incident", incident.id, "--json", "--collector", "dmesg")
    assert cp.returncode == 0, cp.stderr
    second = Path(json.loads(cp.stdout)["bundle"])
    try:
        rep = incident.report_json(str(incident.bundles[1]), str(second))
        oom = [e for e in rep["timeline"] if f"Killed process {incident.oom_pid}" in e["event"]]
        assert len(oom) == 1 and oom[0]["host"] == "web-2"
        assert len([e for e in rep["timeline"] if e["event"].startswith("Capture started")]) == 2
        assert len([f for f in rep["findings"] if f["rule"] == "oom_kill" and incident.oom_comm in f["title"]]) == 1
    finally:
        for p in second.parent.glob(second.name.split(".tar.")[0] + "*"):
            p.unlink()


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's standalone S3 server on loopback (a real S3 API over HTTP)."""
    import os
    import socket
    import subprocess
    import sys
    import time
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **creds})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "moto server did not start"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", creds
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_fetch_reports_bundles_that_are_only_in_s3(incident, tmp_path, s3_endpoint):
    """web-2's bundle uploaded from its host; a responder's laptop (empty store) reports it with --fetch."""
    pytest.importorskip("agent.retrieve")
    import boto3
    url, creds = s3_endpoint
    bucket = f"evidence-{incident.id.lower()}"
    boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=bucket)
    upload_cfg = f'[upload]\nurl = "s3://{bucket}/prod"\nendpoint_url = "{url}"\n'
    host_cfg = tmp_path / "web2.toml"
    host_cfg.write_text(f'[store]\npath = "{incident.store}"\n[host]\nname = "web-2"\n{upload_cfg}')
    from tests.report.conftest import run_gh
    cp = run_gh(host_cfg, "upload", str(incident.bundles[1]), env=creds)
    assert cp.returncode == 0, cp.stderr
    laptop = tmp_path / "laptop"
    laptop.mkdir()
    lap_cfg = tmp_path / "laptop.toml"
    lap_cfg.write_text(f'[store]\npath = "{laptop}"\n{upload_cfg}')
    cp = run_gh(lap_cfg, "report", "--incident", incident.id, "--json", env=creds)
    assert cp.returncode == 4 and "add --fetch" in cp.stderr
    cp = run_gh(lap_cfg, "report", "--incident", incident.id, "--fetch", "--json", env=creds)
    assert cp.returncode == 0, cp.stderr
    rep = json.loads(cp.stdout)
    assert rep["hosts"] == ["web-2"] and rep["bundles"][0]["integrity"]["ok"]
    assert [f for f in rep["findings"] if f["rule"] == "oom_kill" and incident.oom_comm in f["title"]]
    assert not list(Path("/tmp").glob(f"goldenhour-report-{incident.id}-*"))     # the download is removed
