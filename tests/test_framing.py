"""The archive's own framing is checked to its end, as ``zstd -t``, ``gzip -t`` and ``tar`` check it.

Real bundles captured through the CLI, then cut by one byte (the last byte of the zstd frame's
checksum, or of gzip's size field) or followed by bytes that are not the archive, with their
``.sha256`` recomputed so that only the framing can tell: ``verify`` must say so (exit 1, the
problem named), as must the report. The index goldenhour appends (the manifest's SHA-256, read
by ``show`` and ``bundles list`` from the archive's last bytes) is invisible to the standard
tools and to a plain zstd stream reader, and a bundle written before it existed still verifies.
"""
from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard

GZIP_INDEX_LEN, ZSTD_INDEX_LEN = 70 + 40, 113

TEST_COLLECTORS = "tests.helpers.boom,tests.helpers.bulk"


def _capture(gh, store: Path, tmp_path: Path, compression: str) -> Path:
    cfg = tmp_path / f"{compression}.toml"
    cfg.write_text(f'[store]\npath = "{store}"\n[capture]\ncompression = "{compression}"\n'
                   '[collectors.bulk]\nmb = 1\n')
    cp = gh("snapshot", "--json", "--incident", f"INC-frame-{compression}", "--collector", "bulk",
            "--collector", "boom", env={"GOLDENHOUR_EXTRA_COLLECTORS": TEST_COLLECTORS, "GOLDENHOUR_CONFIG": str(cfg)})
    assert cp.returncode == 0, cp.stderr
    return Path(json.loads(cp.stdout)["bundle"])


def _reseal(path: Path, data: bytes) -> None:
    """Write ``data`` as the bundle and recompute its .sha256, as someone covering their tracks would."""
    path.write_bytes(data)
    path.with_name(path.name + ".sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  {path.name}\n")


def _problems(gh, path: Path) -> list[str]:
    cp = gh("verify", "--json", str(path))
    assert cp.returncode == 1, cp.stdout + cp.stderr
    assert "Traceback" not in cp.stderr
    return json.loads(cp.stdout)["problems"]


TOOL = {"zstd": ["zstd", "-t", "-q"], "gzip": ["gzip", "-t"]}


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_a_bundle_cut_by_one_byte_fails_verify_like_the_standard_tools(gh, store, tmp_path, compression):
    bundle = _capture(gh, store, tmp_path, compression)
    data = bundle.read_bytes()
    assert subprocess.run(TOOL[compression] + [str(bundle)], capture_output=True).returncode == 0
    assert gh("verify", str(bundle)).returncode == 0

    index_len = ZSTD_INDEX_LEN if compression == "zstd" else GZIP_INDEX_LEN
    body = data[:-index_len]                 # the archive itself, without goldenhour's index
    for i, cut in enumerate((data[:-1],      # the index cut
                body[:-1],                   # the last byte of the frame checksum / gzip size field
                body[:-1] + data[-index_len:],
                data[:len(data) // 2])):     # cut in the middle of the tar
        _reseal(bundle, cut)
        if compression == "zstd" or i == 3:  # GNU gzip lets a last member lack its size's last (zero) byte
            assert subprocess.run(TOOL[compression] + [str(bundle)], capture_output=True).returncode != 0
        problems = _problems(gh, bundle)
        assert any(p.startswith(f"{bundle.name}: cut short") or "damaged" in p or "after the end" in p
                   for p in problems), problems
        assert not any("differs from its .sha256" in p for p in problems)      # only the framing tells


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
@pytest.mark.parametrize("extra", [b"\n", b"garbage appended\n", bytes(512), None], ids=["newline", "text", "zeros",
                                                                                           "a-second-frame"])
def test_bytes_after_the_end_fail_verify(gh, store, tmp_path, compression, extra):
    bundle = _capture(gh, store, tmp_path, compression)
    data = bundle.read_bytes()
    if extra is None:    # a whole valid frame/member of junk: the tools accept it, the tar does not hold it
        extra = (zstandard.ZstdCompressor().compress(b"not part of the bundle\n" * 50) if compression == "zstd"
                 else __import__("gzip").compress(b"not part of the bundle\n" * 50))
        body = data[:-(ZSTD_INDEX_LEN if compression == "zstd" else GZIP_INDEX_LEN)]
        _reseal(bundle, body + extra)
    else:
        _reseal(bundle, data + extra)
    problems = _problems(gh, bundle)
    assert any(p.startswith(f"{bundle.name}: ") and "after the end" in p for p in problems), problems


def test_the_index_is_invisible_to_tar_zstd_and_a_plain_stream_reader(gh, store, tmp_path):
    bundle = _capture(gh, store, tmp_path, "zstd")
    names = subprocess.run(["tar", "-tf", str(bundle)], capture_output=True, text=True, check=True).stdout.split()
    assert names[-2:] == [f"{bundle.name[:-8]}/manifest.json", f"{bundle.name[:-8]}/SHA256SUMS"]
    with open(bundle, "rb") as fh:                         # zstandard's defaults: one frame, no skipping asked
        raw = zstandard.ZstdDecompressor().stream_reader(fh).read()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        inner = tar.extractfile(f"{bundle.name[:-8]}/manifest.json").read()
    sidecar = bundle.with_name(bundle.name[:-8] + ".manifest.json").read_bytes()
    assert inner == sidecar
    tail = bundle.read_bytes()[-ZSTD_INDEX_LEN:]
    assert tail.endswith(f"goldenhour-index 1 manifest.json sha256 {hashlib.sha256(inner).hexdigest()}\n".encode())


def test_a_bundle_without_the_index_still_verifies_and_shows(gh, store, tmp_path):
    """Bundles written before the index existed: verify, show and bundles list read them as before."""
    bundle = _capture(gh, store, tmp_path, "zstd")
    _reseal(bundle, bundle.read_bytes()[:-ZSTD_INDEX_LEN])
    cp = gh("verify", str(bundle))
    assert cp.returncode == 0, cp.stdout
    assert gh("show", str(bundle)).returncode == 0
    assert gh("bundles", "list").returncode == 0


def test_an_index_that_names_another_manifest_fails_verify(gh, store, tmp_path):
    bundle = _capture(gh, store, tmp_path, "zstd")
    data = bundle.read_bytes()
    forged = data[:-65] + b"0" * 64 + b"\n"
    _reseal(bundle, forged)
    problems = _problems(gh, bundle)
    assert any(p.startswith(f"{bundle.name}: its index names manifest.json sha256 {'0' * 64}") for p in problems)
    # show refuses the sidecar, which the index no longer names, only if it differs from the archive's manifest:
    # here it is the archive's own, so show reads it (after reading the archive) and exits 0
    assert gh("show", str(bundle)).returncode == 0


def test_the_report_names_a_cut_archive(gh, store, tmp_path):
    bundle = _capture(gh, store, tmp_path, "zstd")
    _reseal(bundle, bundle.read_bytes()[:-ZSTD_INDEX_LEN - 1])
    cp = gh("report", str(bundle), "--format", "json", "--out", str(tmp_path / "r.json"))
    assert cp.returncode == 1, cp.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    assert any("cut short" in p for p in rep["bundles"][0]["integrity"]["problems"])
