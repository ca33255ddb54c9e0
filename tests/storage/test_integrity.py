"""The one integrity check (agent/manifest.py ``check``) speaks the same words from ``verify``, ``fetch``
and ``report``: a real bundle, captured and uploaded to a real S3 API, then one byte changed inside one of
its files, is judged by all three, and each problem line is the same line in all three."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import zstandard

INC = "INC-words"


def _flip_one_byte(data: bytes, member_rel: str) -> bytes:
    """One byte changed inside one member's data; the archive recompressed (its .sha256 now disagrees)."""
    raw = bytearray(zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read())
    with tarfile.open(fileobj=io.BytesIO(bytes(raw))) as tar:
        m = next(m for m in tar if m.name.endswith("/" + member_rel))
        raw[m.offset_data] ^= 0x01
    return zstandard.ZstdCompressor(write_checksum=True).compress(bytes(raw))


def test_verify_fetch_and_report_word_every_problem_the_same(run, s3, s3_config, tmp_path):
    client, bucket = s3
    store = tmp_path / "store-web-1"
    store.mkdir()
    cfg = s3_config(host="web-1", store_dir=store, after="[collectors.bulk]\nmb = 1\n")
    cp = run(cfg, "snapshot", "--json", "--incident", INC, "--collector", "bulk", "--collector", "host")
    out = json.loads(cp.stdout)
    assert out["upload"]["status"] == "uploaded", cp.stdout + cp.stderr
    bundle, key = Path(out["bundle"]), out["upload"]["key"]

    tampered = _flip_one_byte(bundle.read_bytes(), "collectors/bulk/bulk.bin")
    bundle.write_bytes(tampered)                                        # locally, beside its (now wrong) .sha256
    meta = client.head_object(Bucket=bucket, Key=key)["Metadata"]
    client.put_object(Bucket=bucket, Key=key, Body=tampered, Metadata=meta)     # and in S3, metadata kept

    cp = run(cfg, "verify", "--json", str(bundle))
    assert cp.returncode == 1
    verified = json.loads(cp.stdout)["problems"]
    archive = bundle.name
    assert "collectors/bulk/bulk.bin: sha256 " in "\n".join(verified)
    assert [p for p in verified if p.startswith("collectors/bulk/bulk.bin: ")] == [
        p for p in verified if "differs from SHA256SUMS" in p or "differs from manifest.json" in p]
    assert len([p for p in verified if p.startswith("collectors/bulk/bulk.bin: ")]) == 2
    assert [p for p in verified if p.startswith(f"{archive}: sha256 ") and "differs from its .sha256 (" in p]
    # the text output prints the very same lines
    cp = run(cfg, "verify", str(bundle))
    assert [ln[4:] for ln in cp.stdout.splitlines() if ln.startswith("  - ")] == verified

    cp = run(cfg, "report", str(bundle), "--format", "json", "--out", str(tmp_path / "r.json"))
    assert cp.returncode == 1, cp.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["bundles"][0]["integrity"]["problems"] == verified
    finding = next(f for f in rep["findings"] if f["rule"] == "bundle_integrity")
    assert finding["data"]["problems"] == verified
    assert {e["excerpt"] for e in finding["evidence"]} <= set(verified)

    laptop = tmp_path / "laptop"
    laptop.mkdir()
    cp = run(s3_config(host="laptop", store_dir=laptop), "fetch", "--json", "--incident", INC,
             "--dest", str(tmp_path / "rca"))
    assert cp.returncode == 14, cp.stdout + cp.stderr
    (row,) = json.loads(cp.stdout)
    fetched = row["problems"]
    assert row["status"] == "refused"
    # every problem verify found, fetch found in the same words (the .sha256 object holds what the local
    # .sha256 holds); fetch's other lines are about the object only: its metadata, S3's checksum, custody
    assert set(verified) <= set(fetched), (verified, fetched)
    assert all(p.startswith(f"{archive}: ") for p in set(fetched) - set(verified))
    assert any("differs from its sha256 metadata" in p for p in fetched)
    assert any("differs from the custody record of its upload" in p for p in fetched)
    cp = run(cfg, "verify", "--json", f"s3://{bucket}/{key}")
    assert cp.returncode == 1 and json.loads(cp.stdout)["problems"] == fetched


def test_an_empty_or_foreign_file_is_a_mismatch_not_a_crash(run, s3_config, tmp_path):
    cfg = s3_config()
    empty, junk = tmp_path / "empty.tar.zst", tmp_path / "junk.tar.zst"
    empty.write_bytes(b"")
    junk.write_bytes(b"PK\x03\x04 this is a zip, not a bundle\n" * 10)
    cp = run(cfg, "verify", "--json", str(empty), str(junk))
    assert cp.returncode == 1 and "Traceback" not in cp.stderr, cp.stderr
    a, b = json.loads(cp.stdout)
    assert a["problems"] == ["empty.tar.zst: not a goldenhour bundle: empty (0 bytes)",
                             "empty.tar.zst.sha256: missing beside the bundle"]
    assert b["problems"][0] == "junk.tar.zst: not a goldenhour bundle: neither zstd nor gzip compressed"
    cp = run(cfg, "report", str(junk))
    assert cp.returncode == 2 and "is not a goldenhour bundle: neither zstd nor gzip compressed" in cp.stderr
    assert len(cp.stderr.strip().splitlines()) == 1
