"""The capture pipeline end to end through the real CLI: runner, bundle, store, bad input."""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard

TEST_COLLECTORS = "tests.helpers.slow,tests.helpers.boom,tests.helpers.bulk"


def _snapshot(gh, *args, env=None):
    e = {"GOLDENHOUR_EXTRA_COLLECTORS": TEST_COLLECTORS, **(env or {})}
    return gh("snapshot", "--json", *args, env=e)


def _bundle(cp) -> tuple[dict, Path]:
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    return out, Path(out["bundle"])


def _members(bundle: Path) -> dict[str, bytes]:
    with open(bundle, "rb") as fh:
        data = zstandard.ZstdDecompressor().stream_reader(fh).read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar if m.isfile()}


def _marker() -> dict[str, str]:
    """A variable unique to one test's goldenhour run: its collectors' helpers inherit it, so a test
    finds its own helpers and never another run's (tests of parallel runs share this machine)."""
    return {"GOLDENHOUR_TEST_RUN": os.urandom(8).hex()}


def _our_helpers(argv: str, marker: dict[str, str]) -> list[int]:
    """PIDs of live (not zombie) processes running ``argv`` (the program by its base name) whose
    environment holds ``marker``."""
    want = "".join(f"{k}={v}" for k, v in marker.items()).encode()
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                cmd = Path(f"/proc/{name}/cmdline").read_bytes().decode(errors="replace").split("\0")
                env = Path(f"/proc/{name}/environ").read_bytes().split(b"\0")
                state = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if [os.path.basename(cmd[0]), *cmd[1:-1]] == argv.split() and want in env and state != "Z":
                found.append(int(name))
    return found


def test_hanging_collector_is_killed_at_its_timeout_while_others_finish(gh):
    marker = _marker()
    cp = _snapshot(gh, "--incident", "INC-hang", "--collector", "slow", "--collector", "boom",
                   "--collector", "bulk", env=marker)
    out, bundle = _bundle(cp)
    assert out["collectors"] == {"boom": "failed", "bulk": "ok", "slow": "timeout"}
    man = json.loads(Path(out["manifest"]).read_text())
    slow = next(c for c in man["collectors"] if c["name"] == "slow")
    assert "budget" in slow["reason"]
    # what it wrote before hanging is kept, and its helper is recorded as started
    assert [f["path"] for f in slow["files"]] == ["collectors/slow/before-hang.txt"] or \
        "collectors/slow/before-hang.txt" in [f["path"] for f in slow["files"]]
    boom = next(c for c in man["collectors"] if c["name"] == "boom")
    assert "RuntimeError: boom" in boom["reason"]
    members = _members(bundle)
    assert b"Traceback" in members["collectors/boom/collector.log"]
    assert members["collectors/slow/before-hang.txt"] == b"written before hanging\n"
    # the helper `sleep 600` of this run is gone (another test's, running in parallel, may not be)
    assert not _our_helpers("sleep 600", marker)
    assert gh("verify", out["bundle"]).returncode == 0


def test_time_budget_skips_what_could_not_start(gh, store, tmp_path):
    cfg = tmp_path / "one-at-a-time.toml"
    cfg.write_text(f'[store]\npath = "{store}"\n[capture]\nmax_parallel = 1\n'
                   '[collectors.slow]\ntimeout_s = 30\n')
    cp = _snapshot(gh, "--incident", "INC-budget", "--collector", "slow", "--collector", "bulk",
                   "--time-budget", "1.5", env={"GOLDENHOUR_CONFIG": str(cfg)})
    out, _ = _bundle(cp)
    # bulk (volatility 97) starts first and finishes; slow hits the overall budget
    assert out["collectors"]["slow"] == "timeout"
    man = json.loads(Path(out["manifest"]).read_text())
    slow = next(c for c in man["collectors"] if c["name"] == "slow")
    assert "time budget" in slow["reason"]


def test_clean_bundle_passes_coreutils_after_plain_tar(gh, tmp_path):
    out, bundle = _bundle(_snapshot(gh, "--incident", "INC-tar", "--collector", "boom", "--collector", "bulk"))
    # the archive against its sidecar, with sha256sum -c
    subprocess.run(["sha256sum", "-c", bundle.name + ".sha256"], cwd=bundle.parent, check=True,
                   capture_output=True)
    dest = tmp_path / "x"
    dest.mkdir()
    subprocess.run(["tar", "-xf", str(bundle), "-C", str(dest)], check=True)
    top = dest / bundle.name.split(".tar.")[0]
    cp = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=top, capture_output=True, text=True)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    listed = {l.split("  ", 1)[1] for l in (top / "SHA256SUMS").read_text().splitlines()}
    assert {"manifest.json", "goldenhour.log", "collectors/bulk/bulk.bin"} <= listed
    man = json.loads((top / "manifest.json").read_text())
    bulk = next(c for c in man["collectors"] if c["name"] == "bulk")
    f = bulk["files"][0]
    assert f["sha256"] == hashlib.sha256((top / f["path"]).read_bytes()).hexdigest()
    assert man["incident"]["id"] == "INC-tar" and man["schema"] == 1
    assert out["sha256"] == hashlib.sha256(bundle.read_bytes()).hexdigest()


def _flip_one_byte(bundle: Path, member_rel: str) -> None:
    """Change one byte inside one member's data, then recompress the archive in place."""
    with open(bundle, "rb") as fh:
        raw = bytearray(zstandard.ZstdDecompressor().stream_reader(fh).read())
    with tarfile.open(fileobj=io.BytesIO(bytes(raw))) as tar:
        m = next(m for m in tar if m.name.endswith("/" + member_rel))
        raw[m.offset_data] ^= 0x01
    bundle.write_bytes(zstandard.ZstdCompressor().compress(bytes(raw)))


def test_verify_fails_on_one_changed_byte(gh):
    out, bundle = _bundle(_snapshot(gh, "--incident", "INC-tamper", "--collector", "bulk"))
    assert gh("verify", str(bundle)).returncode == 0
    _flip_one_byte(bundle, "collectors/bulk/bulk.bin")
    cp = gh("verify", "--json", str(bundle))
    assert cp.returncode == 1
    rep = json.loads(cp.stdout)
    assert not rep["ok"]
    text = "\n".join(rep["problems"])
    assert "differs from its .sha256" in text
    assert "collectors/bulk/bulk.bin: sha256" in text and "SHA256SUMS" in text and "manifest.json" in text
    # even with a forged sidecar the changed file is named
    digest = hashlib.sha256(bundle.read_bytes()).hexdigest()
    (bundle.parent / (bundle.name + ".sha256")).write_text(f"{digest}  {bundle.name}\n")
    cp = gh("verify", str(bundle))
    assert cp.returncode == 1 and "collectors/bulk/bulk.bin" in cp.stdout


@pytest.mark.parametrize("bad", ["../../etc", "a/b", "", ".hidden", "x" * 129, "a..b", "inc 1", "-x", "é"])
def test_path_like_incident_ids_are_refused_before_anything_is_written(gh, store, bad):
    cp = gh("snapshot", "--incident", bad, "--collector", "bulk",
            env={"GOLDENHOUR_EXTRA_COLLECTORS": TEST_COLLECTORS})
    assert cp.returncode == 2
    assert "invalid incident ID" in cp.stderr and len(cp.stderr.strip().splitlines()) == 1
    assert not any(store.rglob("*")), list(store.rglob("*"))


def test_unknown_collector_exits_4_not_found_as_documented(gh, store):
    for flag in ("--collector", "--skip"):
        cp = gh("snapshot", "--incident", "INC-x", flag, "nosuch")
        assert cp.returncode == 4 and "unknown collector nosuch" in cp.stderr
        assert len(cp.stderr.strip().splitlines()) == 1 and "Traceback" not in cp.stderr
    assert not list(store.glob("incidents/*/*"))


def test_unwritable_store_exits_3_with_one_line(gh):
    cp = gh("snapshot", "--incident", "INC-x", "--store", "/proc/goldenhour-nope", "--collector", "bulk",
            env={"GOLDENHOUR_EXTRA_COLLECTORS": TEST_COLLECTORS})
    assert cp.returncode == 3
    assert "not writable" in cp.stderr


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_stops_the_capture_cleanly(gh, small_fs, tmp_path):
    """A store on a 48 MiB tmpfs with a 24 MiB reserve: 30 MiB of evidence cannot all be bundled.

    The collector is cut at the room above the reserve (partial); what it wrote is bundled if the
    packing fits (exit 0), else the capture stops with one line (exit 3) and leaves nothing."""
    cfg = tmp_path / "small.toml"
    cfg.write_text(f'[store]\npath = "{small_fs}"\nreserve_bytes = {24 * 2**20}\nreserve_percent = 0\n'
                   '[collectors.bulk]\nmb = 30\n')
    cp = _snapshot(gh, "--incident", "INC-full", "--collector", "bulk", env={"GOLDENHOUR_CONFIG": str(cfg)})
    assert cp.returncode in (0, 3) and "Traceback" not in cp.stderr, cp.stdout + cp.stderr
    left = [p for p in small_fs.rglob("*") if p.is_file()]
    if cp.returncode == 3:
        assert "reserve" in cp.stderr and len(cp.stderr.strip().splitlines()) == 1
        assert left == [], left      # no partial bundle, no staging left behind
    else:
        out = json.loads(cp.stdout)
        assert out["collectors"] == {"bulk": "partial"}
        assert gh("verify", out["bundle"]).returncode == 0
        assert not [p for p in left if p.name.endswith((".partial", ".tmp")) or ".staging" in p.parts], left
        for p in left:
            p.unlink()
    # and with the reserve already crossed, nothing is attempted at all
    cfg.write_text(f'[store]\npath = "{small_fs}"\nreserve_bytes = {100 * 2**20}\n')
    cp = _snapshot(gh, "--incident", "INC-full", "--collector", "bulk", env={"GOLDENHOUR_CONFIG": str(cfg)})
    assert cp.returncode == 3 and "nothing captured" in cp.stderr


def test_gzip_bundles_verify_too(gh, store, tmp_path):
    cfg = tmp_path / "gz.toml"
    cfg.write_text(f'[store]\npath = "{store}"\n[capture]\ncompression = "gzip"\n')
    out, bundle = _bundle(_snapshot(gh, "--incident", "INC-gz", "--collector", "boom",
                                    env={"GOLDENHOUR_CONFIG": str(cfg)}))
    assert bundle.name.endswith(".tar.gz")
    assert gh("verify", str(bundle), env={"GOLDENHOUR_CONFIG": str(cfg)}).returncode == 0
    with tarfile.open(bundle) as tar:
        assert any(n.endswith("/SHA256SUMS") for n in tar.getnames())


def test_show_summarises_the_manifest(gh):
    out, bundle = _bundle(_snapshot(gh, "--incident", "INC-show", "--collector", "boom", "--collector", "bulk",
                                    "--reason", "test"))
    cp = gh("show", str(bundle))
    assert cp.returncode == 0, cp.stderr
    assert "INC-show" in cp.stdout and "failed" in cp.stdout and "boom" in cp.stdout
    assert gh("show", "no-such-bundle").returncode == 4


def test_bad_config_is_a_clear_usage_error(gh, tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[capture]\nprofil = "quick"\n')
    cp = gh("snapshot", "--incident", "INC-x", env={"GOLDENHOUR_CONFIG": str(cfg)})
    assert cp.returncode == 2 and "unknown config key capture.profil" in cp.stderr


def test_collectors_lists_every_collector_with_availability(gh):
    cp = gh("collectors", "--json", env={"GOLDENHOUR_EXTRA_COLLECTORS": TEST_COLLECTORS})
    assert cp.returncode == 0
    rows = {r["name"]: r for r in json.loads(cp.stdout)}
    assert rows["slow"]["status"] == "ready" and rows["slow"]["summary"]
    assert all(r["status"] in ("ready", "unavailable") for r in rows.values()), rows
    for r in rows.values():
        if r["status"] == "unavailable":
            assert r["reason"]


def test_a_capture_killed_midway_is_salvaged_by_the_next_run(gh, store, tmp_path):
    """SIGKILL goldenhour mid-capture: its helpers die with it, and the next run publishes the evidence."""
    import signal
    import sys
    import time
    cfg = tmp_path / "slow.toml"
    cfg.write_text(f'[store]\npath = "{store}"\n[collectors.slow]\ntimeout_s = 120\n')
    marker = _marker()
    env = dict(os.environ, GOLDENHOUR_CONFIG=str(cfg), GOLDENHOUR_EXTRA_COLLECTORS=TEST_COLLECTORS, **marker)
    proc = subprocess.Popen([sys.executable, "-m", "agent", "snapshot", "--json", "--incident", "INC-killed",
                             "--collector", "slow", "--collector", "bulk"], cwd=Path(__file__).parent.parent,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    def reached() -> bool:
        bulk_done = any('"kind": "end"' in j.read_text() for j in (store / ".staging").glob("*/.journal/bulk.jsonl"))
        return bulk_done and bool(list((store / ".staging").glob("*/collectors/slow/sleep.out")))
    while time.monotonic() < deadline and not reached():
        time.sleep(0.05)
    assert list((store / ".staging").glob("*/collectors/slow/sleep.out")), "capture never reached the hang"
    while time.monotonic() < deadline and not _our_helpers("sleep 600", marker):
        time.sleep(0.05)
    assert _our_helpers("sleep 600", marker), "the slow collector's helper of this run was not found"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close(), proc.stderr.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _our_helpers("sleep 600", marker):
        time.sleep(0.05)
    assert not _our_helpers("sleep 600", marker), "helpers outlived goldenhour"
    assert not list((store / "incidents").glob("INC-killed/*.tar.zst"))
    # the next run (any incident) publishes the interrupted capture first
    cp = gh("snapshot", "--json", "--incident", "INC-next", "--collector", "bulk",
            env={"GOLDENHOUR_CONFIG": str(cfg), "GOLDENHOUR_EXTRA_COLLECTORS": TEST_COLLECTORS})
    assert cp.returncode == 0, cp.stderr
    salvaged = list((store / "incidents").glob("INC-killed/*.tar.zst"))
    assert len(salvaged) == 1
    assert gh("verify", str(salvaged[0])).returncode == 0
    man = json.loads(next((store / "incidents" / "INC-killed").glob("*.manifest.json")).read_text())
    assert man["salvaged"]["why"]
    st = {c["name"]: c["status"] for c in man["collectors"]}
    assert st == {"bulk": "ok", "slow": "interrupted"}
    assert not list((store / ".staging").iterdir())


def test_retention_removes_only_uploaded_bundles(gh, store, tmp_path):
    from agent.store import Store
    out, bundle = _bundle(_snapshot(gh, "--incident", "INC-old", "--collector", "boom"))
    out2, bundle2 = _bundle(_snapshot(gh, "--incident", "INC-old", "--collector", "boom"))
    s = Store(store)
    s.receipt(bundle).write_text("{}")          # the first one was uploaded
    old = 40 * 86400
    for p in (bundle, bundle2, s.receipt(bundle)):
        st = p.stat()
        os.utime(p, (st.st_atime - old, st.st_mtime - old))
    removed = s.prune(30)
    assert removed == [bundle]
    assert not bundle.exists() and bundle2.exists()      # pending bundles are never removed


@pytest.mark.parametrize("conf, nice, ioclass", [("", 10, 3), ("[capture]\nnice = 0\nionice_idle = false\n", 0, None)])
def test_the_whole_capture_runs_at_low_priority(gh, store, tmp_path, conf, nice, ioclass):
    """capture.nice and capture.ionice_idle apply to the capture process itself, not only its collectors."""
    cfg = tmp_path / "prio.toml"
    cfg.write_text(f'[store]\npath = "{store}"\n{conf}')
    cp = gh("snapshot", "--json", "--incident", "INC-prio", "--collector", "prio",
            env={"GOLDENHOUR_CONFIG": str(cfg), "GOLDENHOUR_EXTRA_COLLECTORS": "tests.helpers.prio"})
    out, bundle = _bundle(cp)
    got = json.loads(_members(bundle)["collectors/prio/prio.json"])
    for who in ("collector", "capture"):
        assert got[who]["nice"] == nice, got
        if ioclass is not None:
            assert got[who]["ioclass"] == ioclass, got      # IOPRIO_CLASS_IDLE
        else:
            assert got[who]["ioclass"] != 3, got
    # the collector leads its own session, so its scheduler autogroup gets the nice value too
    assert got["collector"]["autogroup"] in (str(nice), None), got
