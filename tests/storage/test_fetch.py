"""Retrieval for RCA against a real S3 API: bundles list, fetch of two hosts' bundles, verify s3://,
tampered objects, unsafe archives, a full disk, and the custody records of fetches."""
from __future__ import annotations

import hashlib
import io
import json
import os
import pty
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard

from tests.storage.conftest import ROOT, env_for

INC = "INC-2h"


@pytest.fixture
def two_hosts(run, s3, s3_config, tmp_path):
    """INC-2h captured on web-1 and web-2 (separate stores) and uploaded; a responder's laptop config."""
    client, bucket = s3
    outs = {}
    for host in ("web-1", "web-2"):
        d = tmp_path / f"store-{host}"
        d.mkdir()
        cfg = s3_config(host=host, store_dir=d, after="[collectors.bulk]\nmb = 9\n")
        cp = run(cfg, "snapshot", "--json", "--incident", INC, "--collector", "bulk", "--collector", "host")
        outs[host] = json.loads(cp.stdout)
        assert outs[host]["upload"]["status"] == "uploaded", cp.stdout + cp.stderr
    laptop = tmp_path / "laptop"
    laptop.mkdir()
    return (client, bucket, outs, s3_config(host="laptop", store_dir=laptop),
            s3_config(host="web-1", store_dir=tmp_path / "store-web-1"))


def run_on_tty(cfg: str, *args: str) -> tuple[int, str, str]:
    """The CLI with stderr on a pseudo-terminal (the progress bar's condition)."""
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "agent", *args], cwd=ROOT, env={**os.environ, **env_for(cfg)},
                         stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    err = b""
    while True:
        try:
            b = os.read(master, 65536)
        except OSError:
            break
        if not b:
            break
        err += b
    out = p.stdout.read().decode()
    os.close(master)
    return p.wait(), out, err.decode(errors="replace")


def test_list_and_fetch_two_hosts_verify_both_with_custody(two_hosts, run, tmp_path):
    client, bucket, outs, laptop, web1 = two_hosts
    cp = run(laptop, "bundles", "list", "--incident", INC, "--json")
    assert cp.returncode == 0, cp.stderr
    rows = json.loads(cp.stdout)
    assert sorted((r["host"], r["source"]) for r in rows) == [("web-1", "s3"), ("web-2", "s3")]
    for r in rows:
        assert r["size"] == outs[r["host"]]["size"] and r["time"] and r["collectors"] == {"bulk": "ok", "host": "ok"}
    # on web-1 itself its bundle is both local and in S3; --host filters
    rows = json.loads(run(web1, "bundles", "list", "--incident", INC, "--json").stdout)
    assert sorted((r["host"], r["source"]) for r in rows) == [("web-1", "local+s3"), ("web-2", "s3")]
    rows = json.loads(run(laptop, "bundles", "list", "--incident", INC, "--host", "web-2", "--json").stdout)
    assert [r["host"] for r in rows] == ["web-2"]
    cp = run(laptop, "bundles", "list", "--incident", INC)
    assert "SOURCE" in cp.stdout and "2 ok" in cp.stdout and "web-2" in cp.stdout

    dest = tmp_path / "rca"
    code, out, err = run_on_tty(laptop, "fetch", "--incident", INC, "--dest", str(dest))
    assert code == 0, out + err
    assert "100.0%" in err and "[####" in err                               # a progress bar on the terminal
    assert out.count("verified  ") == 2 and "S3 SHA-256 checksum" in out and "custody record" in out
    for host, o in outs.items():
        name = Path(o["bundle"]).name
        local = dest / name
        assert hashlib.sha256(local.read_bytes()).hexdigest() == o["sha256"]
        top = dest / name.removesuffix(".tar.zst")
        assert (top / "manifest.json").is_file() and (top / "collectors/bulk/bulk.bin").stat().st_size == 9 * 2**20
        assert json.loads((top / "manifest.json").read_text())["host"]["hostname"] == host
        assert run(laptop, "verify", "--json", f"s3://{bucket}/{o['upload']['key']}").returncode == 0
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]        # no staging or partial leftovers

    custody = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=f"prod/incidents/{INC}/custody/")
               ["Contents"]]
    fetches = [json.loads(client.get_object(Bucket=bucket, Key=k)["Body"].read()) for k in custody
               if "-laptop-fetch-" in k]
    assert len(custody) == 4 and len(fetches) == 2
    assert {f["sha256"] for f in fetches} == {o["sha256"] for o in outs.values()}
    assert all(f["from_host"] == "laptop" and f["who"].startswith("arn:aws:") and f["dest"] for f in fetches)

    # fetching again is idempotent: verified again, the extracted folders are left as they are
    cp = run(laptop, "fetch", "--incident", INC, "--host", "web-2", "--dest", str(dest), "--json")
    (r,) = json.loads(cp.stdout)
    assert cp.returncode == 0 and r["status"] == "verified" and r["freshly_extracted"] is False


def _repack(data: bytes, change: str, new: bytes) -> bytes:
    """A bundle with one file changed and its SHA256SUMS and manifest.json made to agree (a careful forger)."""
    members = []
    with tarfile.open(fileobj=zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)), mode="r|") as tar:
        for m in tar:
            members.append((m, tar.extractfile(m).read()))
    files = {m.name.split("/", 1)[1]: b for m, b in members}
    files[change] = new
    man = json.loads(files["manifest.json"])
    for c in man["collectors"]:
        for f in c.get("files", []):
            if f["path"] == change:
                f["sha256"], f["bytes"] = hashlib.sha256(new).hexdigest(), len(new)
    files["manifest.json"] = json.dumps(man).encode()
    files["SHA256SUMS"] = "".join(f"{hashlib.sha256(b).hexdigest()}  {r}\n" for r, b in sorted(files.items())
                                  if r != "SHA256SUMS").encode()
    top = members[0][0].name.split("/", 1)[0]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m, _ in members:
            rel = m.name.split("/", 1)[1]
            ti = tarfile.TarInfo(f"{top}/{rel}")
            ti.size = len(files[rel])
            tar.addfile(ti, io.BytesIO(files[rel]))
    return zstandard.ZstdCompressor().compress(buf.getvalue())


def test_tampered_objects_are_refused(two_hosts, run, tmp_path):
    client, bucket, outs, laptop, _ = two_hosts
    key1, key2 = outs["web-1"]["upload"]["key"], outs["web-2"]["upload"]["key"]

    # 1. bytes changed in place, metadata kept: every layer disagrees
    obj = client.get_object(Bucket=bucket, Key=key1)
    data = bytearray(obj["Body"].read())
    data[len(data) // 2] ^= 1
    client.put_object(Bucket=bucket, Key=key1, Body=bytes(data), Metadata=obj["Metadata"])
    # 2. a careful forgery: a file changed, SHA256SUMS, manifest, sha256 metadata and .sha256 object
    #    all rewritten to agree -- only the custody record of the upload still knows the truth
    obj = client.get_object(Bucket=bucket, Key=key2)
    forged = _repack(obj["Body"].read(), "collectors/host/uname.txt", b"nothing to see here\n")
    sha = hashlib.sha256(forged).hexdigest()
    client.put_object(Bucket=bucket, Key=key2, Body=forged,
                      Metadata={**obj["Metadata"], "sha256": sha, "part-size": "0"})
    client.put_object(Bucket=bucket, Key=key2 + ".sha256", Body=f"{sha}  x\n".encode())

    dest = tmp_path / "rca"
    cp = run(laptop, "fetch", "--incident", INC, "--dest", str(dest))
    assert cp.returncode == 14, cp.stdout + cp.stderr
    assert cp.stdout.count("REFUSED") == 2 and "2 of 2 bundle(s) refused" in cp.stderr
    assert "differs from the custody record of its upload" in cp.stdout
    assert not list(dest.iterdir())                                         # nothing of them is kept
    for key in (key1, key2):
        cp = run(laptop, "verify", f"s3://{bucket}/{key}")
        assert cp.returncode == 1 and "MISMATCH" in cp.stdout
    refusals = [k["Key"] for k in client.list_objects_v2(Bucket=bucket, Prefix=f"prod/incidents/{INC}/custody/")
                ["Contents"] if "-fetch-refused-" in k["Key"]]
    assert len(refusals) == 2
    assert run(laptop, "verify", f"s3://{bucket}/prod/incidents/{INC}/nope.tar.zst").returncode == 4


def _evil(members: list[tuple[tarfile.TarInfo, bytes]], sums: bool = True, bundle: str = "evil",
          host: str = "evil-host", start: str = "2026-01-01T00:00:00Z") -> tuple[bytes, str]:
    """A zstd tar of ``members`` (+ a manifest and SHA256SUMS that agree with them); returns (bytes, sha256).

    The manifest is ``_evil_manifest(bundle, host, start)``: upload it as the sidecar and the bundle is
    filed where its manifest says, so only the members can be wrong."""
    buf = io.BytesIO()
    man = _evil_manifest(bundle, host, start).decode()
    listed = {}
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        base = members[0][0].name.split("/", 1)[0] if not members[0][0].name.startswith("/") else ""
        prefix = f"{base}/" if base else "/"
        for m, data in [(tarfile.TarInfo(f"{prefix}manifest.json"), man.encode())] + members:
            if m.isfile():
                m.size = len(data)
                tar.addfile(m, io.BytesIO(data))
                listed[m.name.split("/", 1)[1]] = hashlib.sha256(data).hexdigest()
            else:
                tar.addfile(m)
        if sums:
            s = "".join(f"{d}  {r}\n" for r, d in sorted(listed.items())).encode()
            ti = tarfile.TarInfo(f"{prefix}SHA256SUMS")
            ti.size = len(s)
            tar.addfile(ti, io.BytesIO(s))
    blob = zstandard.ZstdCompressor().compress(buf.getvalue())
    return blob, hashlib.sha256(blob).hexdigest()


def _evil_manifest(bundle: str, host: str, start: str) -> bytes:
    return json.dumps({"bundle": bundle, "incident": {"id": "INC-evil"}, "host": {"hostname": host},
                       "clocks": {"start_utc": start}, "summary": {"collectors": {}}, "collectors": []}).encode()


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname = kind, target
    return ti, b""


def _special(name: str, kind) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    return ti, b""


def test_fetch_refuses_members_escaping_the_destination(run, s3, s3_config, tmp_path):
    """Bundles whose hashes all agree (sha256 metadata, .sha256, SHA256SUMS): only the path check stops them."""
    client, bucket = s3
    cfg = s3_config(host="laptop")
    cases = {
        "dotdot": ([(tarfile.TarInfo("evil/../../etc/x"), b"pwned\n")], "would escape the destination ('..')"),
        "absolute": ([(tarfile.TarInfo("/etc/x"), b"pwned\n")], "is an absolute path"),
        "symlink": ([_link("evil/passwd", "/etc/passwd")], "refused"),
    }
    for i, (case, (members, why)) in enumerate(cases.items()):
        start = f"2026-01-01T00:00:0{i}Z"
        blob, sha = _evil(members, bundle=f"INC-evil_{case}", host=f"evil-{case}", start=start)
        base = f"prod/incidents/INC-evil/evil-{case}/INC-evil_{case}"
        client.put_object(Bucket=bucket, Key=base + ".tar.zst", Body=blob, Metadata={"sha256": sha})
        client.put_object(Bucket=bucket, Key=base + ".tar.zst.sha256", Body=f"{sha}  x\n".encode())
        client.put_object(Bucket=bucket, Key=base + ".manifest.json",
                          Body=_evil_manifest(f"INC-evil_{case}", f"evil-{case}", start))
        dest = tmp_path / f"dest-{case}"
        cp = run(cfg, "fetch", "--incident", "INC-evil", "--host", f"evil-{case}", "--dest", str(dest))
        assert cp.returncode == 14, (case, cp.stdout, cp.stderr)
        assert "REFUSED" in cp.stdout and why in cp.stdout, (case, cp.stdout)
        assert not list(dest.iterdir()), case                                 # nothing extracted, nothing kept
        if case != "symlink":       # a link is not even an intact bundle; these two are, byte for byte
            assert run(cfg, "verify", f"s3://{bucket}/{base}.tar.zst").returncode == 0
    assert not (tmp_path / "etc").exists() and not Path("/etc/x").exists()


@pytest.mark.parametrize("member, why", [
    (lambda: (tarfile.TarInfo("evil/../../x"), b"x"), "('..')"),
    (lambda: (tarfile.TarInfo("/abs/x"), b"x"), "absolute path"),
    (lambda: _link("evil/l", "../../../../etc/passwd"), "symbolic link"),
    (lambda: _link("evil/h", "/etc/passwd", tarfile.LNKTYPE), "hard link"),
    (lambda: _special("evil/dev", tarfile.CHRTYPE), "device file"),
    (lambda: _special("evil/fifo", tarfile.FIFOTYPE), "fifo"),
    (lambda: (tarfile.TarInfo("other/x"), b"x"), "outside the bundle's top folder"),
], ids=["dotdot", "absolute", "symlink", "hardlink", "device", "fifo", "second-top"])
def test_extraction_refuses_unsafe_members_and_leaves_nothing(tmp_path, member, why):
    from agent.retrieve import extract_bundle
    from agent.upload import StorageError
    good = (tarfile.TarInfo("evil/ok.txt"), b"fine\n")
    blob, _ = _evil([good, member()], sums=False)
    p = tmp_path / "evil.tar.zst"
    p.write_bytes(blob)
    dest = tmp_path / "dest"
    with pytest.raises(StorageError) as ei:
        extract_bundle(p, dest)
    assert ei.value.exit_code == 14 and why in str(ei.value) and "refused" in str(ei.value)
    assert not list(dest.iterdir())                       # not even ok.txt, which came first
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 3 MiB filesystem (tmpfs), to fill for real."""
    d = tmp_path / "tiny"
    d.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(d)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


def test_disk_full_while_fetching(run, s3, s3_config, tiny_disk, store):
    cfg = s3_config(after="[collectors.bulk]\nmb = 4\n")
    out = json.loads(run(cfg, "snapshot", "--json", "--incident", "INC-full", "--collector", "bulk").stdout)
    assert out["upload"]["status"] == "uploaded"
    cp = run(s3_config(host="laptop"), "fetch", "--incident", "INC-full", "--dest", str(tiny_disk))
    assert cp.returncode == 15 and "not enough free space" in cp.stderr, cp.stderr
    assert not list(tiny_disk.iterdir())
    # the space check passes but the disk fills anyway (while extracting): exit 15, partial files removed
    from agent.retrieve import extract_bundle
    from agent.upload import StorageError
    with pytest.raises(StorageError) as ei:
        extract_bundle(Path(out["bundle"]), tiny_disk)
    assert ei.value.exit_code == 15 and "disk full" in str(ei.value)
    assert not list(tiny_disk.iterdir())
