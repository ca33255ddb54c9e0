"""The real ``goldenhour record`` process: what it samples, its socket, restarts, kills, and the faults
that must never stop a capture (corrupt, truncated or foreign ring, a full disk)."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from agent.recorder import ring, window
from tests.helpers.recorder import RecorderProc, gh, gh_json, write_config


@pytest.fixture
def rec_env(tmp_path):
    store = tmp_path / "store"
    sock = tmp_path / "rec.sock"
    cfg = write_config(tmp_path / "config.toml", store, interval=0.1, sock=sock)
    procs: list[RecorderProc] = []

    def start(*args: str, **kw) -> RecorderProc:
        p = RecorderProc(cfg, *args, **kw).start()
        procs.append(p)
        return p
    yield cfg, store, start
    for p in procs:
        p.kill()


def ring_of(store: Path) -> Path:
    return store / "recorder" / "ring"


def history(cfg: Path, *args: str) -> dict:
    return gh_json(cfg, "history", "--json", *args)


def test_record_samples_every_signal_group_answers_its_socket_and_stops_cleanly(rec_env):
    cfg, store, start = rec_env
    r = start()
    st = r.wait_samples(8)
    assert st["ring_state"] == "ok" and st["interval_s"] == 0.1 and st["pid"] == r.proc.pid
    assert r.stop() == 0
    p = ring_of(store)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600 and stat.S_IMODE(p.parent.stat().st_mode) == 0o700
    assert p.stat().st_size == ring.open_view(str(p)).header.size
    win = window.read(str(p))
    evs = [e.data["ev"] for e in win.events]
    assert evs[0] == "start" and evs[-1] == "stop"
    s = win.samples[-1].data
    for k in ("cpu", "stat", "mem", "vm", "psi", "load", "tcp", "tcpext", "udp", "sock", "disk", "fd", "self"):
        assert k in s, k
    # processes and cgroups come every process interval (which grows if a scan costs > 2 % of it)
    s = dict(s, **next(x.data for x in reversed(win.samples) if "proc" in x.data))
    assert s["boot"] == ring.boot_id() and abs(s["t"] - time.time()) < 60 and s["m"] > 0
    assert s["proc"]["n"] > 10 and s["proc"]["top"] and all("cmdline" not in t for t in s["proc"]["top"])
    assert s["cg"]["v"] == 1 and s["cg"]["g"]
    assert s["tcpext"].keys() >= {"ListenOverflows", "ListenDrops"} and "count" in s.get("ct", {"count": 0})
    h = history(cfg, "--since", "10m")
    assert h["samples"] >= 8
    # a busy machine may starve the recorder for a moment (a gap saying so), never anything else
    assert all(g["reason"].startswith(("no samples recorded before", "recorder starved", "no sample recorded"))
               for g in h["gaps"]), h["gaps"]


def test_a_recorder_killed_mid_write_loses_nothing_and_the_gap_is_stated(rec_env):
    """SIGKILL: records not yet in the ring wait in the journal (beside the socket); the restart puts them back."""
    cfg, store, start = rec_env
    write_config(cfg, store, interval=0.1, sock=cfg.parent / "rec.sock", sync_s=600)    # the tail waits for a page
    r = start()
    r.wait_samples(25)
    journal = Path(cfg.parent / "rec.sock.pending")
    r.kill()                                   # no stop event, no final flush
    before = window.read(str(ring_of(store)), pending_path="")      # the ring file alone
    with_journal = window.read(str(ring_of(store)), pending_path=str(journal))
    if journal.stat().st_size > 20:            # records were waiting (20 bytes: the journal's own header; a record
        extra = [e.seq for e in with_journal.entries      # ending exactly on a page leaves none)
                 if e.seq > max(x.seq for x in before.entries)]
        assert extra and with_journal.pending == len(extra)         # ...and the ring alone lacks them
    time.sleep(1.0)                            # a gap of many intervals
    r2 = start()
    r2.wait_samples(5)
    assert r2.stop() == 0
    win = window.read(str(ring_of(store)))
    seqs = [e.seq for e in win.entries]
    assert seqs == list(range(len(seqs)))      # nothing lost, nothing twice
    starts = [e.data for e in win.events if e.data["ev"] == "start"]
    assert len(starts) == 2 and starts[1]["resumed"] and starts[1]["gap_s"] >= 1.0
    h = history(cfg, "--since", "10m")
    gaps = [g for g in h["gaps"] if g["reason"].startswith("recorder restarted")]
    assert len(gaps) == 1 and gaps[0]["seconds"] >= 1.0, h["gaps"]
    # a capture still reads it, and states the gap
    out = gh_json(cfg, "snapshot", "--incident", "REC-KILL", "--profile", "quick", "-c", "history", "--json")
    assert out["collectors"]["history"] == "ok"
    summary = _bundle_json(Path(out["bundle"]), "collectors/history/summary.json")
    assert any(g["reason"].startswith("recorder restarted") for g in summary["gaps"])


def test_a_machine_crash_mid_write_loses_the_torn_record_only(rec_env):
    """A crash loses the journal (a tmpfs) and may tear the last record written to the ring."""
    cfg, store, start = rec_env
    r = start()
    r.wait_samples(40)
    r.kill()
    (cfg.parent / "rec.sock.pending").unlink()
    p = ring_of(store)
    view = ring.open_view(str(p))
    seg = view.segments[-1]
    scan = ring.scan_segment(ring.read_segment(str(p), view.header, seg), seg)
    last = scan.records[-1]
    with open(p, "r+b") as fh:                 # the record it was writing is torn
        fh.seek(ring.FILE_HEADER_SIZE + seg.index * view.header.seg_size + scan.end - 10)
        fh.write(b"\0" * 10)
    r2 = start()
    r2.wait_samples(5)
    assert r2.stop() == 0
    win = window.read(str(p))
    seqs = [e.seq for e in win.entries]
    assert seqs == sorted(set(seqs))
    # the torn record is gone: its sequence number went to the restarted recorder's first record
    assert next(e for e in win.entries if e.seq == last.seq).data.get("ev") == "start"
    h = history(cfg, "--since", "10m")
    assert [g for g in h["gaps"] if g["reason"].startswith("recorder restarted")]


def test_a_second_recorder_on_the_same_ring_is_refused(rec_env):
    cfg, store, start = rec_env
    r = start()
    r.wait_samples(2)
    cp = gh(cfg, "record", "--duration", "5", "--socket", "", timeout=60)
    assert cp.returncode == 3 and "in use by another recorder" in cp.stderr
    assert len(cp.stderr.strip().splitlines()) <= 2 and "Traceback" not in cp.stderr
    assert r.proc.poll() is None


def _bundle_json(bundle: Path, rel: str):
    from agent.report.loader import load_archive
    got = load_archive(bundle).json(rel)
    assert got is not None, f"{rel} not in {bundle}"
    return got


def _damage(p: Path, how: str) -> None:
    if how == "corrupt":
        view = ring.open_view(str(p))
        seg = view.segments[-1]
        end = ring.scan_segment(ring.read_segment(str(p), view.header, seg), seg).end
        with open(p, "r+b") as fh:                       # three records in the middle
            for share in (0.4, 0.6, 0.8):
                fh.seek(ring.FILE_HEADER_SIZE + seg.index * view.header.seg_size + int(end * share))
                fh.write(b"\x5a" * 7)
    elif how == "truncated":
        os.truncate(p, ring.FILE_HEADER_SIZE + 3000)
    elif how == "foreign":
        p.write_bytes(os.urandom(200_000))
    elif how == "missing":
        p.unlink()


@pytest.mark.parametrize("how,status,words", [
    ("corrupt", "ok", "damaged or torn"), ("truncated", "ok", ""),
    ("foreign", "skipped", "not a goldenhour ring"), ("missing", "skipped", "no flight recorder on this host")])
def test_a_damaged_or_missing_ring_never_stops_a_capture(rec_env, how, status, words):
    cfg, store, start = rec_env
    r = start()
    r.wait_samples(30)
    assert r.stop() == 0
    _damage(ring_of(store), how)
    out = gh_json(cfg, "snapshot", "--incident", f"REC-{how}", "--profile", "quick", "-c", "history", "-c", "host",
                  "--json")
    assert out["collectors"]["host"] == "ok" and out["collectors"]["history"] == status
    m = json.loads(Path(out["manifest"]).read_text())
    entry = next(c for c in m["collectors"] if c["name"] == "history")
    if status == "skipped":
        assert words in entry["reason"]
        return
    summary = _bundle_json(Path(out["bundle"]), "collectors/history/summary.json")
    assert summary["samples"] > 0
    if how == "corrupt":
        assert summary["skipped_records"] and summary["gaps"]
    rep = subprocess.run([os.sys.executable, "-m", "agent", "--config", str(cfg), "report", out["bundle"], "--format",
                          "json", "-o", "-"], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2],
                         timeout=300)
    assert rep.returncode == 0, rep.stderr
    if words:
        assert words in rep.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs")
def test_a_full_disk_leaves_history_in_memory_and_a_capture_gets_it(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", f"gh-rec-{uuid.uuid4().hex[:6]}", str(mnt)],
                   check=True)
    r = None
    try:
        store = mnt / "store"
        store.mkdir()
        (mnt / "filler").write_bytes(b"\0" * (4 * 2**20))  # ENOSPC before the end: the disk is now full
    except OSError:
        pass
    try:
        sock = tmp_path / "rec.sock"
        cfg = write_config(tmp_path / "config.toml", mnt / "store", interval=0.1, sock=sock, ring_mib=64)
        r = RecorderProc(cfg).start()
        st = r.wait_samples(10)
        assert st["ring_state"] == "memory only" and "no room" in st["ring_error"]
        h = history(cfg, "--since", "10m")
        assert h["samples"] >= 10 and h["recorder"]["ring_state"] == "memory only"
        # a capture into another store (this one is full) gets the samples from the recorder's memory
        other = tmp_path / "other"
        cfg2 = write_config(tmp_path / "config2.toml", other, sock=sock)
        cfg2.write_text(cfg2.read_text().replace('[recorder]', f'[recorder]\npath = "{mnt / "store/recorder/ring"}"'))
        out = gh_json(cfg2, "snapshot", "--incident", "REC-FULL", "--profile", "quick", "-c", "history", "--json")
        assert out["collectors"]["history"] == "partial"
        summary = _bundle_json(Path(out["bundle"]), "collectors/history/summary.json")
        assert summary["memory_only_records"] >= 10 and summary["recorder"]["ring_state"] == "memory only"
        # room again: the recorder makes its ring at the next retry (tested in-process: the retry is 60 s)
    finally:
        if r is not None:
            r.kill()
        subprocess.run(["umount", str(mnt)], check=False)


def test_a_smaller_ring_is_made_when_the_disk_has_less_room(tmp_path):
    from agent.recorder.service import Recorder, Settings
    st = Settings(ring_path=str(tmp_path / "rec" / "ring"), ring_bytes=1 << 30, interval_s=0.05,
                  process_interval_s=0.05)
    vfs = os.statvfs(tmp_path)
    st.reserve_bytes = vfs.f_bavail * vfs.f_frsize - 256 * 1024      # leaves room for ~256 KiB only
    rec = Recorder(st)
    rec.run(max_samples=3)
    size = os.path.getsize(st.ring_path)
    assert 0 < size <= 1024 * 1024            # ~256 KiB (the free space moves with the machine's other writers)
    start = next(e.data for e in window.read(st.ring_path).events if e.data["ev"] == "start")
    assert "instead of" in start["smaller"]


def test_the_ring_comes_back_when_it_can_be_written_again(tmp_path):
    from agent.recorder import service
    from agent.recorder.service import Recorder, Settings
    d = tmp_path / "rec"
    d.mkdir()
    st = Settings(ring_path=str(d / "ring"), ring_bytes=1 << 20, interval_s=0.05, process_interval_s=0.05)
    old = service.RETRY_S
    service.RETRY_S = 0.3
    try:
        (d / "ring").mkdir()                      # not a file: the ring cannot be made, samples stay in memory
        (d / "ring" / "x").write_text("x")
        rec = Recorder(st)

        seen = [0]

        def unblock(sample):
            seen[0] += 1
            if seen[0] == 5:
                (d / "ring" / "x").unlink()
                (d / "ring").rmdir()
        rec.on_sample = unblock
        rec.run(max_samples=30)
    finally:
        service.RETRY_S = old
    win = window.read(st.ring_path)
    evs = [e.data["ev"] for e in win.events]
    assert "ring_recovered" in evs
    rec_ev = next(e.data for e in win.events if e.data["ev"] == "ring_recovered")
    assert rec_ev["records_in_memory_only"] >= 4
    seqs = [e.seq for e in win.entries]
    assert seqs == sorted(seqs) and seqs[0] > 0          # numbering went on through the memory-only stretch
