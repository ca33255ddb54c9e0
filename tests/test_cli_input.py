"""Bad and unusual input to the real CLI: one line and the documented exit code, never a traceback.

Every case runs ``python -m agent`` for real on a real bundle (one quick capture per module)
or on files that are not bundles; with ``--json`` stdout stays valid JSON (or empty on an
error, with the one line on stderr).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(cfg: Path, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    e = {**os.environ, "GOLDENHOUR_CONFIG": str(cfg), **(env or {})}
    e.pop("GOLDENHOUR_STORE", None)
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env=e)


def _one_line_error(cp: subprocess.CompletedProcess, code: int) -> str:
    assert cp.returncode == code, (cp.returncode, cp.stdout, cp.stderr)
    assert "Traceback" not in cp.stderr + cp.stdout
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("goldenhour: error: "), cp.stderr
    return lines[0]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One real bundle in a store, its config, and the bundle extracted into a folder."""
    d = tmp_path_factory.mktemp("cli-input")
    store = d / "store"
    cfg = d / "config.toml"
    cfg.write_text(f'[store]\npath = "{store}"\n')
    cp = _run(cfg, "snapshot", "--json", "--incident", "INC-input", "--profile", "quick", "--collector", "host")
    assert cp.returncode == 0, cp.stderr
    bundle = Path(json.loads(cp.stdout)["bundle"])
    extracted = d / "extracted"
    extracted.mkdir()
    subprocess.run(["tar", "-C", str(extracted), "-xf", str(bundle)], check=True, timeout=60)   # as docs/bundle.md says
    folder = extracted / bundle.name.split(".tar.")[0]
    assert (folder / "manifest.json").is_file()
    return {"dir": d, "cfg": cfg, "store": store, "bundle": bundle, "folder": folder}


# -- verify ---------------------------------------------------------------------------------

def test_verify_of_a_file_that_is_no_bundle_is_a_named_mismatch_with_and_without_json(made):
    cp = _run(made["cfg"], "verify", "/etc/passwd")
    assert cp.returncode == 1 and "Traceback" not in cp.stderr
    assert cp.stdout.startswith("MISMATCH  /etc/passwd") and "not a goldenhour bundle" in cp.stdout
    cp = _run(made["cfg"], "verify", "--json", "/etc/passwd")
    assert cp.returncode == 1 and "Traceback" not in cp.stderr
    out = json.loads(cp.stdout)
    assert out["ok"] is False and any("not a goldenhour bundle" in p for p in out["problems"])
    cp = _run(made["cfg"], "verify", "--json", "/dev/null", "/etc")
    assert cp.returncode == 1 and "Traceback" not in cp.stderr
    assert [r["ok"] for r in json.loads(cp.stdout)] == [False, False]


def test_verify_checks_an_extracted_bundle_folder_against_its_manifest_and_sums(made, tmp_path):
    folder = made["folder"]
    cp = _run(made["cfg"], "verify", str(folder))
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert cp.stdout.startswith(f"OK        {folder} (")
    out = json.loads(_run(made["cfg"], "verify", "--json", str(folder)).stdout)
    assert out["ok"] is True and out["files_checked"] >= 3
    # a copy with one file changed, one removed and one added: each named
    import shutil
    bad = tmp_path / folder.name
    shutil.copytree(folder, bad)
    (bad / "collectors" / "host" / "host.json").write_text("{}")
    (bad / "goldenhour.log").unlink()
    (bad / "extra.txt").write_text("not captured\n")
    cp = _run(made["cfg"], "verify", "--json", str(bad))
    assert cp.returncode == 1 and "Traceback" not in cp.stderr
    problems = "\n".join(json.loads(cp.stdout)["problems"])
    assert "collectors/host/host.json: sha256" in problems and "differs from SHA256SUMS" in problems
    assert "goldenhour.log: listed in SHA256SUMS but missing from the bundle" in problems
    assert "extra.txt: in the bundle but not listed in SHA256SUMS" in problems
    # a link inside is named and never followed
    (bad / "passwd").symlink_to("/etc/passwd")
    cp = _run(made["cfg"], "verify", str(bad))
    assert cp.returncode == 1 and "passwd: symbolic link in the bundle folder (not read)" in cp.stdout


def test_verify_of_a_folder_of_bundles_checks_each(made):
    inc = made["store"] / "incidents" / "INC-input"
    cp = _run(made["cfg"], "verify", "--json", str(inc), str(made["folder"].parent))
    assert cp.returncode == 0, cp.stdout + cp.stderr
    rows = json.loads(cp.stdout)
    assert [r["bundle"] for r in rows] == [str(made["bundle"]), str(made["folder"])]


def test_verify_and_show_take_store_for_bundle_names(made, tmp_path):
    other = tmp_path / "other.toml"
    other.write_text(f'[store]\npath = "{tmp_path / "empty"}"\n')
    name = made["bundle"].name.split(".tar.")[0]
    _one_line_error(_run(other, "verify", name), 4)
    cp = _run(made["cfg"], "verify", "--json", str(made["bundle"]), "nosuch")     # every name found first, or 4
    _one_line_error(cp, 4)
    assert cp.stdout == ""
    _one_line_error(_run(other, "show", name), 4)
    assert _run(other, "verify", "--store", str(made["store"]), name).returncode == 0
    cp = _run(other, "show", "--json", "--store", str(made["store"]), name)
    assert cp.returncode == 0 and json.loads(cp.stdout)["incident"]["id"] == "INC-input"


# -- show -----------------------------------------------------------------------------------

def test_show_of_no_bundle_exits_2_like_report_with_one_line(made, tmp_path):
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    for what in ("/etc/passwd", str(empty)):
        for js in ((), ("--json",)):
            cp = _run(made["cfg"], "show", *js, what)
            line = _one_line_error(cp, 2)
            assert "not a goldenhour bundle" in line and cp.stdout == ""
        rep = _run(made["cfg"], "report", what, "--out", str(tmp_path / "r.html"))
        _one_line_error(rep, 2)


def test_show_reads_an_extracted_bundle_folder(made):
    cp = _run(made["cfg"], "show", str(made["folder"]))
    assert cp.returncode == 0, cp.stderr
    assert "incident   INC-input" in cp.stdout and "(extracted folder)" in cp.stdout
    cp = _run(made["cfg"], "show", "--json", str(made["folder"]))
    assert json.loads(cp.stdout)["bundle"] == made["folder"].name


def test_show_and_bundles_help_teach_with_examples(made):
    for cmd in (["show"], ["bundles"], ["bundles", "list"], ["verify"]):
        cp = _run(made["cfg"], *cmd, "--help")
        assert cp.returncode == 0 and "Examples:" in cp.stdout, cmd


# -- not found: 4, as documented ----------------------------------------------------------------

def test_bundles_list_of_an_incident_with_no_bundle_exits_4_like_report_and_fetch(made, tmp_path):
    for js in ((), ("--json",)):
        cp = _run(made["cfg"], "bundles", "list", "--incident", "NOPE", *js)
        line = _one_line_error(cp, 4)
        assert "no bundles of incident NOPE in " in line
        assert cp.stdout == ("[]\n" if js else "")
        cp = _run(made["cfg"], "bundles", "list", "--incident", "INC-input", "--host", "nosuch-host", *js)
        _one_line_error(cp, 4)
    _one_line_error(_run(made["cfg"], "report", "--incident", "NOPE"), 4)
    cp = _run(made["cfg"], "bundles", "list", "--incident", "INC-input", "--json")
    assert cp.returncode == 0 and len(json.loads(cp.stdout)) == 1
    empty = tmp_path / "empty.toml"
    empty.write_text(f'[store]\npath = "{tmp_path / "nothing"}"\n')
    cp = _run(empty, "bundles", "list")
    assert cp.returncode == 0 and cp.stdout == "no bundles\n"          # an empty store is no error
    cp = _run(empty, "bundles", "list", "--json")
    assert cp.returncode == 0 and json.loads(cp.stdout) == []


# -- collectors --profile, --config after the command --------------------------------------------

def test_collectors_profile_shows_what_that_profile_runs(made, tmp_path):
    quick = _run(made["cfg"], "collectors", "--profile", "quick")
    full = _run(made["cfg"], "collectors", "--profile", "full")
    plain = _run(made["cfg"], "collectors")
    assert quick.returncode == full.returncode == plain.returncode == 0
    assert quick.stdout != plain.stdout and quick.stdout != full.stdout
    assert quick.stdout.startswith("profile quick: ")
    names = [line.split()[0] for line in quick.stdout.splitlines()[1:] if line and not line.startswith(("not ", " "))]
    assert "host" in names and "threads" not in names and "heap" not in names
    assert "not in profile quick: " in quick.stdout and "threads" in quick.stdout.splitlines()[-1]
    rows = {r["name"]: r for r in json.loads(_run(made["cfg"], "collectors", "--profile", "quick", "--json").stdout)}
    assert rows["host"]["selected"] is True and rows["threads"]["selected"] is False
    # [collectors.<name>] enabled is applied, as a capture would
    forced = tmp_path / "forced.toml"
    forced.write_text(f'[store]\npath = "{made["store"]}"\n[collectors.threads]\nenabled = true\n'
                      '[collectors.logs]\nenabled = false\n')
    cp = _run(forced, "collectors", "--profile", "quick")
    lines = cp.stdout.splitlines()
    assert any(line.startswith("threads ") and "[enabled by config]" in line for line in lines)
    assert not any(line.startswith("logs ") for line in lines) and "logs" in lines[-1]


def test_config_works_after_the_command_too(made, tmp_path):
    other = tmp_path / "other.toml"
    other.write_text(f'[store]\npath = "{tmp_path / "nothing"}"\n')
    env = {"GOLDENHOUR_CONFIG": str(other)}
    for args in (["bundles", "list", "--json", "--config", str(made["cfg"])],
                 ["--config", str(made["cfg"]), "bundles", "list", "--json"],
                 ["show", "--config", str(made["cfg"]), "--json", made["bundle"].name]):
        cp = _run(other, *args, env=env)
        assert cp.returncode == 0, (args, cp.stderr)
        assert "INC-input" in cp.stdout
    cp = _run(other, "--config", str(other), "bundles", "list", "--config", str(made["cfg"]))
    assert cp.returncode == 2 and "--config given twice" in cp.stderr
    cp = _run(other, "snapshot", "--config", str(tmp_path / "missing.toml"), "--incident", "INC-x")
    _one_line_error(cp, 2)
    assert "does not exist" in cp.stderr


# -- targets that name no process ------------------------------------------------------------------

def test_a_unit_with_no_process_is_said_on_stderr_and_host_wide_evidence_is_kept(made):
    cp = _run(made["cfg"], "snapshot", "--incident", "INC-unit", "--profile", "quick", "--collector", "process",
              "--collector", "host", "--unit", "nosuch.service")
    assert cp.returncode == 0, cp.stderr
    warn = [line for line in cp.stderr.splitlines() if line.startswith("goldenhour: warning: ")]
    assert warn == ["goldenhour: warning: --unit nosuch.service: no process in the unit's cgroup (is the unit "
                    "running? is its name right?); per-process collectors skipped (process), host-wide evidence "
                    "captured"]
    cp = _run(made["cfg"], "snapshot", "--json", "--incident", "INC-unit", "--profile", "quick", "--collector",
              "process", "--collector", "host", "--unit", "nosuch.service", "--process", "^no-such-process-x$")
    out = json.loads(cp.stdout)
    assert cp.returncode == 0 and out["collectors"] == {"host": "ok", "process": "skipped"}
    assert [w.split(":")[0] for w in out["warnings"]] == ["--process ^no-such-process-x$", "--unit nosuch.service"]
    assert cp.stderr.count("goldenhour: warning: ") == 2


def test_a_bad_unit_name_or_regex_is_refused_before_anything_is_written(made, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[store]\npath = "{tmp_path / "store"}"\n')
    for sel in (("--unit", "bad name!"), ("--process", "[")):
        cp = _run(cfg, "snapshot", "--incident", "INC-bad", "--collector", "process", *sel)
        line = _one_line_error(cp, 2)
        assert "invalid" in line
    assert not (tmp_path / "store").exists() or not list((tmp_path / "store").rglob("*.tar.zst"))
