"""``goldenhour history`` and ``snapshot --started-at``: a responder's view of the ring, and bad input."""
from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import pytest

from agent.errors import UsageError
from agent.recorder.cli import parse_when
from tests.helpers.recorder import gh, gh_json, write_config


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    d = tmp_path_factory.mktemp("hist")
    cfg = write_config(d / "config.toml", d / "store", interval=0.1, sock=d / "none.sock")
    cp = gh(cfg, "record", "--duration", "3", timeout=120)
    assert cp.returncode == 0, cp.stderr
    return cfg, d


def test_parse_when_takes_relative_absolute_and_epoch_times():
    now = 1_800_000_000.0
    assert parse_when("30m", now) == now - 1800 and parse_when("2h ago", now) == now - 7200
    assert parse_when("90s", now) == now - 90 and parse_when("1d", now) == now - 86400
    assert parse_when("15", now) == now - 900          # minutes when no unit
    assert parse_when("now", now) == now and parse_when(None, now) is None
    assert parse_when("2026-11-23T10:00:00Z", now) == parse_when("2026-11-23 11:00:00+01:00", now) == 1795428000.0
    assert parse_when("2026-11-23 10:00", now) == 1795428000.0          # no zone: UTC
    assert parse_when("1795428000", now) == 1795428000.0
    with pytest.raises(UsageError, match="--since 'yesterday'"):
        parse_when("yesterday", now, "--since")


def test_history_prints_the_window_and_what_moved(recorded):
    cfg, _ = recorded
    cp = gh(cfg, "history", "--since", "10m", "--signal", "load.1")
    assert cp.returncode == 0, cp.stderr
    out = cp.stdout
    assert "window" in out and "samples every 0.1 s" in out and "not answering on its socket" in out
    assert "load.1 (load average (1 min), count):" in out
    j = gh_json(cfg, "history", "--since", "10m", "--json")
    assert j["samples"] >= 10 and j["interval_s"] == 0.1 and isinstance(j["departures"], list)
    assert {"gaps", "clock_steps", "boots", "processes", "ring"} <= set(j)
    assert j["ring"]["path"].endswith("store/recorder/ring")


def test_history_csv_and_jsonl(recorded):
    cfg, _ = recorded
    cp = gh(cfg, "history", "--since", "10m", "--csv", "--signal", "psi.*", "--signal", "cpu.busy_pct")
    rows = list(csv.reader(io.StringIO(cp.stdout)))
    assert rows[0][0] == "time_utc" and "cpu.busy_pct" in rows[0] and "psi.cpu.some_pct" in rows[0]
    assert len(rows) > 10 and rows[1][0].endswith("Z")
    cp = gh(cfg, "history", "--since", "10m", "--jsonl")
    recs = [json.loads(line) for line in cp.stdout.splitlines()]
    assert recs[0]["kind"] == "event" and recs[0]["ev"] == "start" and recs[-1]["ev"] == "stop"
    assert [r["seq"] for r in recs] == list(range(recs[0]["seq"], recs[0]["seq"] + len(recs)))
    assert sum(r["kind"] == "sample" for r in recs) >= 10


def test_history_reads_a_bundles_ring_slice(recorded, tmp_path):
    cfg, d = recorded
    out = gh_json(cfg, "snapshot", "--incident", "HIST-FILE", "--profile", "quick", "-c", "history", "--started-at",
                  "1m", "--json")
    assert out["collectors"]["history"] == "ok"
    m = json.loads(Path(out["manifest"]).read_text())
    t0 = time.time() - 60
    from agent.incident import parse_iso
    assert abs(parse_iso(m["incident"]["started_at"]).timestamp() - t0) < 30
    import subprocess
    subprocess.run(["tar", "-xf", out["bundle"], "-C", str(tmp_path)], check=True)
    bdir = next(p for p in tmp_path.iterdir() if p.is_dir())
    summ = json.loads((bdir / "collectors/history/summary.json").read_text())
    assert summ["window"]["t0_source"].startswith("incident start") and summ["window"]["before_s"] == 3600
    for f in (bdir / "collectors/history/ring-slice.bin", bdir / "collectors/history/history.jsonl", bdir):
        j = gh_json(cfg, "history", "--file", str(f), "--json")
        assert j["samples"] == summ["samples"], f


def test_bad_input_is_one_line_and_the_right_exit_code(tmp_path):
    cfg = write_config(tmp_path / "c.toml", tmp_path / "store", sock=tmp_path / "none.sock")
    for args, code, words in ((["history"], 4, "no flight-recorder history"),
                              (["history", "--since", "soon"], 2, "--since 'soon'"),
                              (["history", "--since", "5m", "--until", "10m"], 2, "--since must be before --until"),
                              (["history", "--json", "--csv"], 2, "one of --json"),
                              (["history", "--file", str(tmp_path / "nope")], 4, "no such file"),
                              (["snapshot", "--incident", "X", "--started-at", "2999-01-01T00:00:00Z"], 2, "future"),
                              (["record", "--interval", "5", "--process-interval", "1"], 2, "at least")):
        cp = gh(cfg, *args, timeout=120)
        assert cp.returncode == code, (args, cp.stdout, cp.stderr)
        assert words in cp.stderr and "Traceback" not in cp.stderr and len(cp.stderr.strip().splitlines()) == 1, args
    bad = tmp_path / "bad.toml"
    bad.write_text('[recorder]\ninterval_s = 0.001\n')
    cp = gh(bad, "record")
    assert cp.returncode == 2 and "recorder.interval_s" in cp.stderr


def test_help_teaches_with_examples():
    for cmd in ("record", "history"):
        cp = gh(Path("/nonexistent.toml"), cmd, "--help")
        assert cp.returncode == 0 and "Examples:" in cp.stdout
    assert "--started-at" in gh(Path("/nonexistent.toml"), "snapshot", "--help").stdout
