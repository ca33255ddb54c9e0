#!/usr/bin/env python3
"""Benchmark: upload throughput to S3 on loopback, against a plain boto3 ``upload_file``.

Set-up: moto's standalone server on 127.0.0.1 (the same S3 API the tests use), one bucket,
and one real bundle made by ``goldenhour snapshot --collector bulk`` (the test collector
that writes incompressible data; ``SIZE_MB`` MiB, so the bundle is about that size and
goes up in parts). Each round, side by side on the same file and the same endpoint:

- ``goldenhour``: ``agent.upload.upload_bundle`` (what ``snapshot`` and ``upload --pending``
  call): HEAD, multipart with a SHA-256 per part from the file (``upload.multipart_chunk_mb``
  16 MiB parts, ``upload.concurrency`` 4), the whole file's hash compared with the capture's,
  HEAD again to verify size and checksum, the manifest and .sha256 sidecars, the custody
  object and the receipt;
- ``boto3``: ``s3.upload_file`` of the same file with boto3's defaults (8 MiB parts, 10
  threads, no checksum of our own, no verification).

Each round uploads under a fresh prefix (nothing is reused) and the two run in alternating
order; the figure is the median over rounds of boto3's time / goldenhour's time (1.0 = as
fast; above 1 faster). There is no target in the issue: goldenhour does more per byte
(its own SHA-256 of every part, checked against the capture's hash) and a few more
requests per bundle (two HEADs, two sidecars, a custody object), which weigh most on a
small bundle (``--quick``, 64 MiB: about 0.7x; 256 MiB: about 0.95x). A second row gives goldenhour's
throughput. The CLI's start-up
(``goldenhour upload``) is measured once on its own.

    .venv/bin/python bench/bench_upload.py [--quick]
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.helpers.moto import start_moto, stop as stop_moto

CREDS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
         "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent",
         "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}


def run(quick: bool = False) -> dict:
    os.environ.update(CREDS)
    size_mb, rounds = (64, 2) if quick else (256, 3)
    import boto3

    from agent.config import load
    from agent.store import Store
    from agent.upload import upload_bundle
    moto, url = start_moto(CREDS)
    work = Path(tempfile.mkdtemp(prefix="gh-bench-upload-", dir="/var/tmp"))
    try:
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
        s3.create_bucket(Bucket="bench")
        store = work / "store"
        cfgfile = work / "gh.toml"
        cfgfile.write_text(f'[store]\npath = "{store}"\nreserve_bytes = 0\nreserve_percent = 0\n'
                           f'[collectors.bulk]\nmb = {size_mb}\ntimeout_s = 120\n'
                           f'[upload]\nurl = "s3://bench/r0"\nendpoint_url = "{url}"\n')
        env = {**os.environ, "GOLDENHOUR_CONFIG": str(cfgfile), "GOLDENHOUR_EXTRA_COLLECTORS": "tests.helpers.bulk"}
        cp = subprocess.run([sys.executable, "-m", "agent", "snapshot", "--incident", "BENCH-UP", "--collector",
                             "bulk", "--no-upload", "--json"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
        if cp.returncode != 0:
            raise RuntimeError(f"snapshot failed: {cp.stderr[-500:]}")
        bundle = Path(json.loads(cp.stdout)["bundle"])
        size = bundle.stat().st_size
        cfg = load(str(cfgfile))
        ours, theirs, ratios = [], [], []
        for i in range(rounds):
            order = ("gh", "boto") if i % 2 == 0 else ("boto", "gh")
            t: dict[str, float] = {}
            for who in order:
                Store.receipt(bundle).unlink(missing_ok=True)
                t0 = time.perf_counter()
                if who == "gh":
                    cfg.set("upload.url", f"s3://bench/gh{i}")
                    rec = upload_bundle(cfg, bundle)
                    assert not rec["reused"] and rec["parts"] > 1, rec
                else:
                    s3.upload_file(str(bundle), "bench", f"boto{i}/{bundle.name}")
                t[who] = time.perf_counter() - t0
            ours.append(t["gh"])
            theirs.append(t["boto"])
            ratios.append(t["boto"] / t["gh"])
        Store.receipt(bundle).unlink(missing_ok=True)
        t0 = time.perf_counter()
        cp = subprocess.run([sys.executable, "-m", "agent", "upload", "--url", "s3://bench/cli", str(bundle)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        cli = time.perf_counter() - t0
        if cp.returncode != 0:
            raise RuntimeError(f"goldenhour upload failed: {cp.stderr[-500:]}")
    finally:
        stop_moto(moto)
        shutil.rmtree(work, ignore_errors=True)
    mibs = [size / 2**20 / s for s in ours]
    return {"area": "upload", "results": [
        {"name": f"upload of a {size / 2**20:.0f} MiB bundle: boto3 upload_file time / goldenhour time",
         "unit": "x", "median": round(statistics.median(ratios), 2), "min": round(min(ratios), 2),
         "max": round(max(ratios), 2), "runs": rounds,
         "notes": f"moto S3 on loopback; goldenhour {statistics.median(ours):.2f} s (verified, sidecars, custody), "
                  f"boto3 {statistics.median(theirs):.2f} s"},
        {"name": "goldenhour upload throughput (multipart, SHA-256 per part, verified)", "unit": "MiB/s",
         "median": round(statistics.median(mibs), 1), "min": round(min(mibs), 1), "max": round(max(mibs), 1),
         "runs": rounds, "notes": "bounded by the moto server (one Python process) on the same 2 cores"},
        {"name": "`goldenhour upload BUNDLE` command, start to exit", "unit": "s", "median": round(cli, 2),
         "runs": 1, "notes": "the same bundle, includes the interpreter's start-up"},
    ], "commands": [
        "python -m agent snapshot --incident BENCH-UP --collector bulk --no-upload  (GOLDENHOUR_EXTRA_COLLECTORS="
        f"tests.helpers.bulk, [collectors.bulk] mb = {size_mb})",
        "agent.upload.upload_bundle(cfg, bundle)  vs  boto3 s3.upload_file(bundle, 'bench', key), alternating",
        "python -m agent upload --url s3://bench/cli BUNDLE"]}


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=1))
