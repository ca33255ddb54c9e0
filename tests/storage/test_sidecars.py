"""Manifest sidecars are bound to their archive: a swapped or edited ``<bundle>.manifest.json`` is refused
by every command that reads one (verify, show, bundles list, upload, fetch, report), with the difference
named, and the S3 key is made from the bundle's own manifest.

Two real bundles of two incidents are captured through the CLI into one store, then their sidecars are
swapped (or one is edited) on disk, or the bundles are filed in S3 under each other's incident as an older
goldenhour did when it trusted the sidecar.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

INC_A, INC_B = "INC-side-a", "INC-side-b"


@pytest.fixture
def pair(run, s3_config, tmp_path):
    """Bundles of INC_A and INC_B in one store (not uploaded); returns (cfg, {incident: bundle path})."""
    store = tmp_path / "store-pair"
    store.mkdir()
    cfg = s3_config(host="web-1", store_dir=store, after="[collectors.bulk]\nmb = 1\n")
    out = {}
    for inc in (INC_A, INC_B):
        cp = run(cfg, "snapshot", "--json", "--no-upload", "--incident", inc, "--collector", "bulk")
        assert cp.returncode == 0, cp.stderr
        out[inc] = Path(json.loads(cp.stdout)["bundle"])
    return cfg, out


def _sidecar(bundle: Path) -> Path:
    return bundle.with_name(bundle.name.split(".tar.")[0] + ".manifest.json")


def _swap(a: Path, b: Path) -> None:
    sa, sb = _sidecar(a), _sidecar(b)
    da, db = sa.read_bytes(), sb.read_bytes()
    sa.write_bytes(db)
    sb.write_bytes(da)


def _one_line(cp) -> str:
    assert "Traceback" not in cp.stderr, cp.stderr
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1, cp.stderr
    return lines[0]


def test_swapped_sidecars_are_refused_by_every_command(run, pair, s3, tmp_path):
    cfg, b = pair
    a, other = b[INC_A], b[INC_B]
    client, bucket = s3
    for cmd in (["verify"], ["show"], ["bundles", "list"]):      # all is well before
        assert run(cfg, *cmd, *([str(a)] if cmd[0] != "bundles" else [])).returncode == 0
    _swap(a, other)

    # verify: exit 1, the sidecar's difference named
    cp = run(cfg, "verify", "--json", str(a))
    assert cp.returncode == 1
    problems = json.loads(cp.stdout)["problems"]
    side = _sidecar(a).name
    mine = [p for p in problems if p.startswith(f"{side}: ")]
    assert len(mine) == 1 and "is not the archive's manifest.json" in mine[0], problems
    assert f'bundle is "{other.name[:-8]}" here, "{a.name[:-8]}" in the archive' in mine[0]
    assert f'incident.id is "{INC_B}" here, "{INC_A}" in the archive' in mine[0]

    # show: one line, exit 1, and never the other bundle's incident as this one's
    cp = run(cfg, "show", str(a))
    assert cp.returncode == 1 and INC_B not in cp.stdout
    line = _one_line(cp)
    assert side in line and f'incident.id is "{INC_B}" here, "{INC_A}" in the archive' in line

    # bundles list: both rows untrusted, each difference on stderr, exit 1
    cp = run(cfg, "bundles", "list", "--json")
    assert cp.returncode == 1
    rows = {r["bundle"]: r for r in json.loads(cp.stdout)}
    assert rows[a.name[:-8]]["incident"] == "?" and rows[other.name[:-8]]["incident"] == "?"
    assert "Traceback" not in cp.stderr and cp.stderr.count("is not the archive's manifest.json") == 2

    # upload: refused (exit 14), nothing sent under either incident
    cp = run(cfg, "upload", str(a))
    assert cp.returncode == 14, cp.stdout + cp.stderr
    assert "is not the archive's manifest.json" in cp.stdout + cp.stderr and "Traceback" not in cp.stderr
    assert not client.list_objects_v2(Bucket=bucket).get("Contents")
    cp = run(cfg, "upload", "--pending", "--json")
    assert cp.returncode == 16 and all(r["status"] == "pending" for r in json.loads(cp.stdout))
    assert not client.list_objects_v2(Bucket=bucket).get("Contents")

    # report: the integrity finding names it, exit 1
    cp = run(cfg, "report", str(a), "--format", "json", "--out", str(tmp_path / "r.json"))
    assert cp.returncode == 1, cp.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    assert mine[0] in rep["bundles"][0]["integrity"]["problems"]
    assert rep["bundles"][0]["incident"] == INC_A          # the archive's own manifest, not the sidecar

    # put back, everything is accepted again and the upload files each under its own incident
    _swap(a, other)
    cp = run(cfg, "upload", "--pending", "--json")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    got = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"] if o["Key"].endswith(".tar.zst"))
    assert got == sorted(f"prod/incidents/{i}/web-1/{b[i].name}" for i in (INC_A, INC_B))


def test_an_edited_incident_in_a_sidecar_is_refused(run, pair):
    cfg, b = pair
    a = b[INC_A]
    side = _sidecar(a)
    man = json.loads(side.read_text())
    man["incident"]["id"] = "INC-elsewhere"
    side.write_text(json.dumps(man, indent=1) + "\n")
    cp = run(cfg, "show", str(a))
    assert cp.returncode == 1
    assert 'incident.id is "INC-elsewhere" here, "INC-side-a" in the archive' in _one_line(cp)
    cp = run(cfg, "verify", str(a))
    assert cp.returncode == 1 and 'incident.id is "INC-elsewhere" here' in cp.stdout
    cp = run(cfg, "upload", str(a))
    assert cp.returncode == 14 and "INC-elsewhere" in cp.stdout


def test_an_older_sidecar_is_read_when_the_archive_agrees(run, pair):
    """A bundle written before the index existed: its sidecar is compared with the archive's manifest.json
    itself (the same JSON, even reformatted, is accepted), so old bundles stay readable, and still refused
    when they differ."""
    cfg, b = pair
    a, other = b[INC_A], b[INC_B]
    from agent.bundle import ZSTD_INDEX_LEN
    for bundle in (a, other):
        data = bundle.read_bytes()[:-ZSTD_INDEX_LEN]
        bundle.write_bytes(data)
        import hashlib
        bundle.with_name(bundle.name + ".sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  {bundle.name}\n")
    side = _sidecar(a)
    side.write_text(json.dumps(json.loads(side.read_text()), indent=4, sort_keys=True))
    assert run(cfg, "show", str(a)).returncode == 0
    assert run(cfg, "verify", str(a)).returncode == 0
    assert run(cfg, "bundles", "list").returncode == 0
    _swap(a, other)
    cp = run(cfg, "show", str(a))
    assert cp.returncode == 1 and f'incident.id is "{INC_B}" here' in _one_line(cp)


def test_bundles_filed_under_each_others_incident_are_refused_by_fetch_list_and_verify(run, pair, s3, s3_config,
                                                                                        tmp_path):
    """What an older goldenhour uploaded after a sidecar swap: B's bundle (with A's sidecar) under A's incident."""
    cfg, b = pair
    client, bucket = s3
    assert run(cfg, "upload", "--pending").returncode == 0
    a, other = b[INC_A], b[INC_B]
    ka, kb = (f"prod/incidents/{i}/web-1/{b[i].name}" for i in (INC_A, INC_B))
    # the bundle of B, with its .sha256, filed under incident A with A's manifest sidecar beside it
    moved = f"prod/incidents/{INC_A}/web-1/{other.name}"
    for suffix in ("", ".sha256"):
        client.copy_object(Bucket=bucket, Key=moved + suffix, CopySource={"Bucket": bucket, "Key": kb + suffix})
    client.put_object(Bucket=bucket, Key=moved[:-8] + ".manifest.json", Body=_sidecar(a).read_bytes())
    for k in (ka, ka[:-8] + ".manifest.json", ka + ".sha256"):
        client.delete_object(Bucket=bucket, Key=k)

    laptop = tmp_path / "laptop"
    laptop.mkdir()
    lcfg = s3_config(host="laptop", store_dir=laptop)
    cp = run(lcfg, "bundles", "list", "--incident", INC_A, "--json")
    assert cp.returncode == 1, cp.stdout + cp.stderr
    (row,) = json.loads(cp.stdout)
    assert row["incident"] == "?" and "problem" in row
    assert "Traceback" not in cp.stderr and INC_B in cp.stderr

    dest = tmp_path / "rca"
    cp = run(lcfg, "fetch", "--json", "--incident", INC_A, "--dest", str(dest))
    assert cp.returncode == 14, cp.stdout + cp.stderr
    (row,) = json.loads(cp.stdout)
    assert row["status"] == "refused"
    assert any(f"is filed under incident '{INC_A}' but its manifest.json names incident '{INC_B}'" in p
               for p in row["problems"]), row["problems"]
    assert any(p.startswith(f"{other.name[:-8]}.manifest.json: is not the archive's manifest.json")
               for p in row["problems"]), row["problems"]
    assert not dest.exists() or not list(dest.iterdir())

    cp = run(lcfg, "verify", "--json", f"s3://{bucket}/{moved}")
    assert cp.returncode == 1
    assert any("filed under incident" in p for p in json.loads(cp.stdout)["problems"])
    shutil.rmtree(dest, ignore_errors=True)
