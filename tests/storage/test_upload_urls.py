"""Where an upload goes, through the real CLI against moto's S3 on loopback.

A URL given to ``snapshot --upload s3://...`` whose upload failed is remembered with the pending
bundle, so ``upload --pending`` (and the daemon) retry there, also on a host without upload.url;
``upload BUNDLE --url`` of a bundle uploaded before whose object was changed says the attempt
failed, not that the bundle is pending; ``report --fetch --url`` reads from a given bucket; an
uploaded bundle is one ``prune`` may remove.
"""
from __future__ import annotations

import json
import os
from pathlib import Path



def _local_cfg(tmp_path: Path, store: Path, endpoint: str, host: str = "host-a") -> str:
    """A config with an S3 endpoint but no upload.url: a local-only host that may be told a URL."""
    p = tmp_path / f"local-{host}.toml"
    p.write_text(f'[store]\npath = "{store}"\n[host]\nname = "{host}"\n[upload]\nendpoint_url = "{endpoint}"\n')
    return str(p)


def test_a_url_given_to_snapshot_is_remembered_for_the_retries(run, s3, moto_server, store, tmp_path):
    client, _ = s3
    cfg = _local_cfg(tmp_path, store, moto_server)
    bucket = f"later-{os.urandom(4).hex()}"                         # does not exist yet: the upload fails (13)
    cp = run(cfg, "snapshot", "--json", "--incident", "INC-url", "--collector", "host", "--upload",
             f"s3://{bucket}/prod")
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    assert out["upload"]["status"] == "pending" and out["upload"]["exit_code"] == 13
    bundle = Path(out["bundle"])
    record = json.loads(bundle.with_name(bundle.name.replace(".tar.zst", ".pending.json")).read_text())
    assert record["url"] == f"s3://{bucket}/prod"
    # pending, not local: it has somewhere to go although the config names no upload.url
    rows = json.loads(run(cfg, "bundles", "list", "--json").stdout)
    assert [r["state"] for r in rows] == ["pending"]
    client.create_bucket(Bucket=bucket)
    cp = run(cfg, "upload", "--pending", "--json")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    res = json.loads(cp.stdout)
    assert [(r["status"], r["upload_url"]) for r in res] == [("uploaded", f"s3://{bucket}/prod")]
    assert res[0]["url"] == f"s3://{bucket}/prod/incidents/INC-url/host-a/{bundle.name}"
    assert client.head_object(Bucket=bucket, Key=res[0]["key"])["ContentLength"] == bundle.stat().st_size
    assert [r["state"] for r in json.loads(run(cfg, "bundles", "list", "--json").stdout)] == ["uploaded"]
    cp = run(cfg, "upload", "--pending")                                # nothing left, no URL needed
    assert cp.returncode == 2 and "no upload.url configured" in cp.stderr
    # an uploaded bundle is one prune may remove (its copy is in S3)
    out = json.loads(run(cfg, "prune", "--older-than", "0", "--yes", "--json").stdout)
    assert [(r["state"], r["removed"]) for r in out["bundles"]] == [("uploaded", True)] and not bundle.exists()


def test_upload_again_of_an_uploaded_bundle_whose_object_changed_is_no_pending_bundle(run, s3, s3_config, store):
    client, bucket = s3
    cfg = s3_config()
    cp = run(cfg, "snapshot", "--json", "--incident", "INC-changed", "--collector", "host")
    out = json.loads(cp.stdout)
    assert out["upload"]["status"] == "uploaded", cp.stdout
    key = out["upload"]["key"]
    client.put_object(Bucket=bucket, Key=key, Body=b"someone replaced the evidence")
    cp = run(cfg, "upload", out["bundle"], "--url", f"s3://{bucket}/prod")
    assert cp.returncode == 14, cp.stdout + cp.stderr
    assert cp.stdout.startswith("FAILED    ") and "already holds a different object" in cp.stdout
    assert "still pending" not in cp.stdout + cp.stderr
    assert "stays uploaded as its receipt records (s3://" in cp.stderr
    rows = json.loads(run(cfg, "bundles", "list", "--incident", "INC-changed", "--json").stdout)
    assert {r["state"] for r in rows} == {"uploaded"}
    cp = run(cfg, "upload", out["bundle"], "--json")
    res = json.loads(cp.stdout)
    assert cp.returncode == 14 and res[0]["status"] == "failed" and res[0]["uploaded_before"].startswith("s3://")
    assert not list(store.glob("incidents/INC-changed/*.pending.json"))


def test_report_fetch_takes_url(run, s3, s3_config, moto_server, tmp_path):
    _, bucket = s3
    web = s3_config(host="web-1", store_dir=tmp_path / "web-1")
    cp = run(web, "snapshot", "--json", "--incident", "INC-rep", "--collector", "host")
    assert json.loads(cp.stdout)["upload"]["status"] == "uploaded", cp.stdout
    laptop = _local_cfg(tmp_path, tmp_path / "laptop", moto_server, host="laptop")
    cp = run(laptop, "report", "--incident", "INC-rep", "--fetch")
    assert cp.returncode == 2 and "or --url" in cp.stderr                # the advice names an option report has
    cp = run(laptop, "report", "--incident", "INC-rep", "--fetch", "--url", f"s3://{bucket}/prod", "--format", "json")
    assert cp.returncode == 0, cp.stderr
    assert [b["host"] for b in json.loads(cp.stdout)["bundles"]] == ["web-1"]
    cp = run(laptop, "report", "--incident", "INC-rep", "--url", f"s3://{bucket}/prod")
    assert cp.returncode == 2 and "--url goes with --fetch" in cp.stderr
