"""A local-only store (no upload.url): bundles are kept, not pending, and `goldenhour prune` removes
old ones on purpose (a dry run unless --yes); a pending bundle is never removed.

The real CLI on real captures (the quick ``host`` collector); uploads to S3 are in tests/storage/.
"""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _gh(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GOLDENHOUR_CONFIG": str(cfg)}
    env.pop("GOLDENHOUR_STORE", None)
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, env=env)


def _capture(cfg: Path, incident: str) -> Path:
    cp = _gh(cfg, "snapshot", "--json", "--incident", incident, "--profile", "quick", "--collector", "host")
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    assert "upload" not in out                      # local-only: no upload tried
    return Path(out["bundle"])


def _beside(bundle: Path) -> list[Path]:
    stem = bundle.name.split(".tar.")[0]
    return sorted(bundle.parent.glob(stem + "*"))


def test_local_only_bundles_are_not_pending_and_prune_removes_them_only_with_yes(tmp_path):
    store = tmp_path / "store"
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[store]\npath = "{store}"\n')
    old, new = _capture(cfg, "INC-old"), _capture(cfg, "INC-new")
    ten_days = time.time() - 10 * 86400
    for p in _beside(old):
        os.utime(p, (ten_days, ten_days))
    rows = json.loads(_gh(cfg, "bundles", "list", "--json").stdout)
    assert {r["state"] for r in rows} == {"local"}
    cp = _gh(cfg, "upload", "--pending")
    assert cp.returncode == 2 and "no upload.url configured" in cp.stderr
    # dry run by default: says what would go, removes nothing
    cp = _gh(cfg, "prune", "--older-than", "5")
    assert cp.returncode == 0, cp.stderr
    assert "would go  local" in cp.stdout and str(old) in cp.stdout and str(new) not in cp.stdout
    assert "pass --yes to remove them" in cp.stdout
    assert old.exists() and len(_beside(old)) == 3             # the bundle, its .sha256 and its manifest
    out = json.loads(_gh(cfg, "prune", "--older-than", "5", "--json").stdout)
    assert out["dry_run"] is True and [r["bundle"] for r in out["bundles"]] == [str(old)]
    assert out["bytes"] == old.stat().st_size
    # --yes removes the old bundle and every file beside it; the young one stays
    out = json.loads(_gh(cfg, "prune", "--older-than", "5", "--yes", "--json").stdout)
    assert out["dry_run"] is False and out["bundles"][0]["removed"] is True
    assert _beside(old) == [] and new.exists()
    # store.keep_days is the default age
    cfg.write_text(f'[store]\npath = "{store}"\nkeep_days = 0\n')
    cp = _gh(cfg, "prune", "--yes")
    assert cp.returncode == 0 and "keep forever" in cp.stdout and new.exists()


def test_prune_never_removes_a_pending_bundle_nor_one_being_uploaded(tmp_path):
    store = tmp_path / "store"
    local = tmp_path / "local.toml"
    local.write_text(f'[store]\npath = "{store}"\n')
    busy = _capture(local, "INC-busy")
    # with an upload URL configured, a bundle without a receipt is pending: kept whatever its age
    with_url = tmp_path / "s3.toml"
    with_url.write_text(f'[store]\npath = "{store}"\n[upload]\nurl = "s3://nowhere/prod"\n')
    assert {r["state"] for r in json.loads(_gh(with_url, "bundles", "list", "--json").stdout)} == {"pending"}
    out = json.loads(_gh(with_url, "prune", "--older-than", "0", "--yes", "--json").stdout)
    assert out["bundles"] == [] and out["kept_pending"] == 1 and busy.exists()
    cp = _gh(with_url, "prune", "--older-than", "0")
    assert "kept 1 pending bundle(s) (never removed)" in cp.stdout
    # local-only again, but another process holds the bundle's upload lock: skipped, not removed
    fd = os.open(busy, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        cp = _gh(local, "prune", "--older-than", "0", "--yes")
        assert cp.returncode == 0 and "SKIPPED " in cp.stdout and "being uploaded" in cp.stdout
        assert busy.exists()
    finally:
        os.close(fd)
    assert json.loads(_gh(local, "prune", "--older-than", "0", "--yes", "--json").stdout)["bundles"][0]["removed"]
    assert not busy.exists()


def test_prune_bad_input(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[store]\npath = "{tmp_path / "store"}"\n')
    for args, code in ((("--older-than", "-1"), 2), (("--incident", "../x"), 2), (("--incident", "NOPE"), 4)):
        cp = _gh(cfg, "prune", *args)
        assert cp.returncode == code, (args, cp.stderr)
        assert "Traceback" not in cp.stderr
