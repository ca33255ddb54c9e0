"""The manifest's one reader (agent/manifest.py) on manifests a real capture wrote: what the capture writes
reads back unchanged, and a missing or mistyped field is refused with its name, by the reader and by the
commands that read manifests (show, bundles list, verify, report)."""
from __future__ import annotations

import copy
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
import zstandard

from agent import manifest as mf
from agent.bundle import load_manifest, manifest_sidecar, verify_file


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    """One real capture (host and process collectors, this test process as the target)."""
    import os
    import subprocess
    import sys
    root = Path(__file__).resolve().parent.parent
    store = tmp_path_factory.mktemp("manifest-store")
    cfg = store.parent / "manifest-config.toml"
    cfg.write_text(f'[store]\npath = "{store}"\n[host]\nname = "web-7"\n')
    cp = subprocess.run([sys.executable, "-m", "agent", "snapshot", "--json", "--incident", "MAN-1", "--collector",
                         "host", "--collector", "process", "--pid", str(os.getpid()), "--started-at",
                         "2026-11-23T10:02:00Z"], capture_output=True, text=True,
                        env={**os.environ, "GOLDENHOUR_CONFIG": str(cfg)}, cwd=root, timeout=300)
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    return {"bundle": Path(out["bundle"]), "sidecar": Path(out["manifest"]), "cfg": cfg, "root": root,
            "raw": json.loads(Path(out["manifest"]).read_text())}


def test_a_captured_manifest_reads_back_as_it_was_written(captured):
    raw = captured["raw"]
    m = mf.read(captured["sidecar"])
    assert m.to_json() == raw and list(m.to_json()) == list(raw)      # same keys, same order, same values
    assert m.raw == raw and m.schema == mf.SCHEMA_VERSION == 1
    assert m.incident.id == "MAN-1" and m.host.hostname == "web-7" and m.trigger and m.trigger.kind == "manual"
    assert m.incident.started_at == "2026-11-23T10:02:00Z"
    assert m.clocks.start_utc <= m.clocks.end_utc and m.clocks.duration_s > 0
    assert {c.name for c in m.collectors} == {"host", "process"} and m.statuses == raw["summary"]["collectors"]
    proc = m.entries("process")[0]
    assert proc.key == f"process/{proc.target['pid']}" and m.target(proc.target["pid"])["pid"] == proc.target["pid"]
    assert all(len(f.sha256) == 64 and f.bytes >= 0 for c in m.collectors for f in c.files)
    # the manifest inside the archive is the sidecar, byte for byte, and both read the same
    rep = verify_file(captured["bundle"])
    assert rep.ok, rep.messages()
    assert rep.manifest is not None and rep.manifest.to_json() == raw
    assert load_manifest(captured["bundle"]).raw == raw


def _set(d: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    for p in parents:
        d = d[int(p)] if isinstance(d, list) else d[p]
    if value is _DELETE:
        del d[last]
    elif isinstance(d, list):
        d[int(last)] = value
    else:
        d[last] = value


_DELETE = object()


@pytest.mark.parametrize("path, value, message", [
    ("host.hostname", _DELETE, 'field "host.hostname" is missing'),
    ("host", _DELETE, 'field "host" is missing'),
    ("host", "web-7", 'field "host" must be an object, not a string'),
    ("incident.id", _DELETE, 'field "incident.id" is missing'),
    ("incident.id", "../../etc", 'field "incident.id" is not a valid incident ID (\'../../etc\')'),
    ("bundle", "", 'field "bundle" is empty'),
    ("schema", 2, 'field "schema" is 2: this goldenhour reads manifests of schema 1'),
    ("schema", "1", 'field "schema" must be an integer, not a string'),
    ("collectors.0.status", 3, 'field "collectors[0].status" must be a string, not a number'),
    ("collectors.0.key", _DELETE, 'field "collectors[0].key" is missing'),
    ("collectors.0.files.0.sha256", _DELETE, 'field "collectors[0].files[0].sha256" is missing'),
    ("collectors.0.files.0.bytes", "12", 'field "collectors[0].files[0].bytes" must be an integer, not a string'),
    ("collectors.0.duration_s", True, 'field "collectors[0].duration_s" must be a number, not true or false'),
    ("collectors", {}, 'field "collectors" must be a list, not an object'),
    ("clocks.start_utc", 1700000000, 'field "clocks.start_utc" must be a string, not a number'),
    ("summary.collectors.host", None, 'field "summary.collectors.host" must be a string, not null'),
    ("host.tags", ["a", 1], 'field "host.tags[1]" must be a string, not a number'),
])
def test_a_bad_or_missing_field_is_named(captured, path, value, message):
    bad = copy.deepcopy(captured["raw"])
    _set(bad, path, value)
    with pytest.raises(mf.ManifestError) as ei:
        mf.read(json.dumps(bad).encode(), "x.manifest.json")
    assert str(ei.value) == f"x.manifest.json: {message}"
    assert ei.value.field == message.split('"')[1]


@pytest.mark.parametrize("data, message", [
    (b"", "manifest.json: not valid JSON (Expecting value: line 1 column 1 (char 0))"),
    (b"{\"schema\": 1,", "manifest.json: not valid JSON"),
    (b"[1, 2]", "manifest.json: not a manifest: the JSON is a list, not an object"),
])
def test_what_is_not_a_manifest_at_all(data, message):
    with pytest.raises(mf.ManifestError) as ei:
        mf.read(data)
    assert str(ei.value).startswith(message)


def test_optional_sections_may_be_absent():
    """Hand-made manifests (and the sidecars fetch lists) carry only what they need; absent is not wrong."""
    m = mf.read({"bundle": "b", "incident": {"id": "INC-1"}, "host": {"hostname": "h"}})
    assert m.trigger is None and m.summary is None and m.collectors == [] and m.statuses == {}
    assert m.clocks.start_utc == "" and m.host.cpus is None and m.target(1) == {}


def _repack(bundle: Path, change) -> None:
    """Rewrite a bundle with its manifest.json changed by ``change`` and SHA256SUMS and .sha256 made to agree."""
    with open(bundle, "rb") as fh:
        raw = zstandard.ZstdDecompressor().stream_reader(fh).read()
    members = []
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for m in tar:
            members.append((m.name, tar.extractfile(m).read()))
    top = members[0][0].split("/", 1)[0]
    files = {n.split("/", 1)[1]: b for n, b in members}
    man = json.loads(files["manifest.json"])
    change(man)
    files["manifest.json"] = json.dumps(man).encode()
    files["SHA256SUMS"] = "".join(f"{hashlib.sha256(b).hexdigest()}  {r}\n" for r, b in sorted(files.items())
                                  if r != "SHA256SUMS").encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel, data in files.items():
            ti = tarfile.TarInfo(f"{top}/{rel}")
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    blob = zstandard.ZstdCompressor(write_checksum=True).compress(buf.getvalue())
    bundle.write_bytes(blob)
    bundle.with_name(bundle.name + ".sha256").write_text(f"{hashlib.sha256(blob).hexdigest()}  {bundle.name}\n")
    manifest_sidecar(bundle).write_text(json.dumps(man))


def test_commands_refuse_a_manifest_without_its_host_and_name_the_field(captured, tmp_path):
    import os
    import shutil
    import subprocess
    import sys
    store = tmp_path / "store"
    inc = store / "incidents" / "MAN-1"
    inc.mkdir(parents=True)
    bundle = inc / captured["bundle"].name
    shutil.copyfile(captured["bundle"], bundle)
    _repack(bundle, lambda m: m["host"].pop("hostname"))
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[store]\npath = "{store}"\n')

    def gh(*args):
        return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "GOLDENHOUR_CONFIG": str(cfg)}, cwd=captured["root"])
    field = 'field "host.hostname" is missing'
    cp = gh("show", str(bundle))        # not a bundle show can read: 2, as report says of it below
    assert cp.returncode == 2 and field in cp.stderr and len(cp.stderr.strip().splitlines()) == 1, cp.stderr
    cp = gh("verify", str(bundle))
    assert cp.returncode == 1 and f"  - manifest.json: {field}" in cp.stdout.splitlines(), cp.stdout
    cp = gh("bundles", "list", "--json")
    (row,) = json.loads(cp.stdout)
    assert field in row["problem"] and row["host"] == "?"
    cp = gh("report", str(bundle))
    assert cp.returncode == 2 and "is not a goldenhour bundle" in cp.stderr and field in cp.stderr, cp.stderr
