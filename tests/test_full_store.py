"""A store that fills up: the reserve holds for the whole capture, and the capture ends cleanly.

Real small filesystems (tmpfs mounts) as the store, real evidence: a 3 MiB store with a 1 MiB
reserve while a helper process holds 12,000 loopback sockets (the socket table alone is
larger than the store), and a 30 MiB store whose log files each fit alone but not together. A
thread samples the store's free space all along: it never drops under the reserve. The capture
either publishes a bundle that verifies, its collectors that hit the reserve marked partial
with the reason, or exits 3 with one line; either way nothing partial is left (no ``.partial``
archive, no staging folder, no stray sidecar) and stderr holds no traceback and no logging error.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from tests.helpers.proc import Proc

MiB = 2**20
RESERVE = 1 * MiB


@pytest.fixture
def tmpfs(tmp_path):
    mounts = []

    def mount(size: str) -> Path:
        d = tmp_path / f"fs-{size}"
        d.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], check=True)
        mounts.append(d)
        return d
    yield mount
    for d in mounts:
        subprocess.run(["umount", "-l", str(d)], check=False)


class FreeSampler:
    """The lowest free space seen on a filesystem, sampled as fast as a thread can while a capture runs."""

    def __init__(self, path: Path):
        self.path, self.lowest, self.samples, self.seen = path, 1 << 62, 0, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            st = os.statvfs(self.path)
            free = st.f_bavail * st.f_frsize
            if free < self.lowest and free < RESERVE:      # what was on the store then, for the failure message
                files = sorted((p.stat().st_size, str(p.relative_to(self.path)).split("/collectors/")[-1])
                               for p in self.path.rglob("*") if p.is_file())
                self.seen = [f for f in files if f[0] > 30000]
            self.lowest = min(self.lowest, free)
            self.samples += 1

    def done(self) -> int:
        self.stop.set()
        self.thread.join()
        return self.lowest


SOCKETS = textwrap.dedent("""
    import os, resource, socket, sys
    n = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_NOFILE, (2 * n + 64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(n)
    keep = []
    for _ in range(n):
        c = socket.create_connection(srv.getsockname()); s, _ = srv.accept(); keep += [c, s]
    print("READY", os.getpid(), len(keep), flush=True)
    sys.stdin.read()
""")


def _snapshot(gh, store: Path, tmp_path: Path, *args: str, extra: str = "") -> tuple[subprocess.CompletedProcess, int]:
    cfg = tmp_path / f"store-{os.urandom(3).hex()}.toml"
    cfg.write_text(f'[store]\npath = "{store}"\nreserve_bytes = {RESERVE}\nreserve_percent = 0\n'
                   f'[logs]\npaths = []\njournal = false\n{extra}\n')
    sampler = FreeSampler(store)
    cp = gh("snapshot", "--json", "--incident", "INC-full", *args, env={"GOLDENHOUR_CONFIG": str(cfg)})
    lowest = sampler.done()
    return cp, (lowest, sampler.seen)


def _check_outcome(gh, cp, store: Path, sampled: tuple[int, list]) -> dict | None:
    """Exit 0 with a bundle that verifies, or exit 3 with one line; nothing partial either way."""
    lowest, seen = sampled
    assert "Traceback" not in cp.stderr and "Logging error" not in cp.stderr, cp.stderr[-3000:]
    assert lowest >= RESERVE, f"the store's free space fell to {lowest} bytes, under the {RESERVE} reserve: {seen}"
    left = sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file())
    assert not [p for p in left if p.endswith((".partial", ".tmp")) or "/.staging/" in f"/{p}"], left
    if cp.returncode == 3:
        lines = cp.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("goldenhour: error: capture stopped"), cp.stderr
        assert not [p for p in left if p.startswith("incidents/")], left
        return None
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    assert len(cp.stderr.strip().splitlines()) <= 2, cp.stderr
    v = gh("verify", out["bundle"])
    assert v.returncode == 0, v.stdout
    return out


def test_a_socket_table_larger_than_a_3_mib_store(gh, tmpfs, tmp_path):
    store = tmpfs("3m")
    holder = Proc([sys.executable, "-c", SOCKETS, "6000"], timeout=120)   # 12,000 sockets: ss alone > 2 MB
    try:
        cp, lowest = _snapshot(gh, store, tmp_path, "--profile", "quick", "--pid", str(holder.pid))
    finally:
        holder.stop()
    out = _check_outcome(gh, cp, store, lowest)
    if out is not None:
        man = json.loads(Path(out["manifest"]).read_text())
        sockets = next(c for c in man["collectors"] if c["name"] == "sockets")
        assert sockets["status"] == "partial" and "reserve" in sockets["reason"], sockets


def test_log_files_that_fit_alone_but_not_together(gh, tmpfs, tmp_path):
    store = tmpfs("30m")
    logs = []
    for i in range(4):
        p = tmp_path / f"app-{i}.log"
        with open(p, "w") as fh:       # 9 MiB of log lines each: any one fits in the store, all four do not
            while fh.tell() < 9 * MiB:
                fh.write(f"2026-12-01T10:00:00Z INFO request {os.urandom(40).hex()}\n")
        logs.append(p)
    args = ["--collector", "logs", "--collector", "host"] + [a for p in logs for a in ("--log", str(p))]
    cp, lowest = _snapshot(gh, store, tmp_path, *args, extra="lines = 1000000")
    out = _check_outcome(gh, cp, store, lowest)
    if out is not None:
        man = json.loads(Path(out["manifest"]).read_text())
        entry = next(c for c in man["collectors"] if c["name"] == "logs")
        assert entry["status"] == "partial" and "reserve" in entry["reason"], entry
        kept = [f for f in entry["files"] if f["path"].startswith("collectors/logs/files/")]
        assert 1 <= len(kept) < 4, kept


def test_a_collector_writing_with_plain_open_cannot_cross_the_reserve(gh, tmpfs, tmp_path, monkeypatch):
    """40 MiB of random data written with open() into a 16 MiB store: the collector's file size limit stops it."""
    monkeypatch.setenv("GOLDENHOUR_EXTRA_COLLECTORS", "tests.helpers.bulk")
    store = tmpfs("16m")
    cp, lowest = _snapshot(gh, store, tmp_path, "--collector", "bulk", extra="[collectors.bulk]\nmb = 40")
    out = _check_outcome(gh, cp, store, lowest)
    if out is not None:
        man = json.loads(Path(out["manifest"]).read_text())
        bulk = next(c for c in man["collectors"] if c["name"] == "bulk")
        assert bulk["status"] == "partial" and "reserve" in bulk["reason"], bulk


