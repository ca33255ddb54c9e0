"""logs: tails exact against GNU tail, rotation, sparse multi-GB files, bad paths recorded."""
from __future__ import annotations

import gzip
import json
import os
import subprocess

import pytest

from collectors.logs import rotated_sibling, tail_lines


def gnu_tail(path, n) -> bytes:
    return subprocess.run(["tail", "-n", str(n), str(path)], capture_output=True, check=True).stdout


CASES = {
    "trailing-newline": b"".join(b"line %d\n" % i for i in range(25000)),
    "no-trailing-newline": b"".join(b"line %d\n" % i for i in range(25000)) + b"last without newline",
    "crlf": b"".join(b"crlf %d\r\n" % i for i in range(12000)),
    "binary-junk": bytes(range(256)) * 300 + b"\n\x00\x00\xff\n" * 7000 + b"\xfe\xff",
    "short": b"one\ntwo\nthree\n",
    "empty": b"",
    "only-newlines": b"\n" * 20000,
    "one-long-line": b"x" * (3 * 2**20),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("n", [1, 10, 10000])
def test_tail_matches_gnu_tail(tmp_path, name, n):
    p = tmp_path / name
    p.write_bytes(CASES[name])
    assert tail_lines(p, n) == gnu_tail(p, n)


def test_sparse_multi_gb_file_is_tailed_without_reading_it_whole(tmp_path):
    p = tmp_path / "huge.log"
    with open(p, "wb") as fh:
        fh.truncate(4 * 2**30)            # 4 GiB hole, then real lines at the end
        fh.seek(0, os.SEEK_END)
        fh.write(b"".join(b"tail line %d\n" % i for i in range(20000)))

    def rchar() -> int:
        for line in open("/proc/self/io"):
            if line.startswith("rchar:"):
                return int(line.split()[1])
        return 0
    before = rchar()
    got = tail_lines(p, 10000)
    read = rchar() - before
    assert got == b"".join(b"tail line %d\n" % i for i in range(10000, 20000))
    assert read < 16 * 2**20, f"read {read} bytes of a 4 GiB file"


def test_rotated_sibling_fills_up_a_short_live_file(tmp_path, run_collector):
    live, old = tmp_path / "app.log", tmp_path / "app.log.1"
    old.write_bytes(b"".join(b"old %d\n" % i for i in range(100)))
    live.write_bytes(b"new 0\nnew 1\n")
    (tmp_path / "app.log.2.gz").write_bytes(gzip.compress(b"older\n"))
    assert rotated_sibling(str(live)) == str(old)
    res = run_collector("logs", capture={"log_paths": [str(live)], "explicit_log_paths": [str(live)],
                                         "log_lines": 10, "journal": False})
    assert res.status == "ok", res.reason
    meta = json.loads((res.out / "logs.json").read_text())
    entry = meta["files"][0]
    assert entry["rotated_sibling"] == str(old)
    body = (res.out / entry["file"]).read_bytes()
    assert body == b"".join(b"old %d\n" % i for i in range(92, 100)) + b"new 0\nnew 1\n"
    assert entry["lines_kept"] == 10


def test_gzip_sibling_is_read_streaming(tmp_path, run_collector):
    live = tmp_path / "svc.log"
    live.write_bytes(b"")
    with gzip.open(tmp_path / "svc.log.1.gz", "wb") as fh:
        fh.write(b"".join(b"gz %d\n" % i for i in range(5000)))
    res = run_collector("logs", capture={"log_paths": [str(live)], "log_lines": 3, "journal": False})
    meta = json.loads((res.out / "logs.json").read_text())
    assert (res.out / meta["files"][0]["file"]).read_bytes() == b"gz 4997\ngz 4998\ngz 4999\n"


def test_missing_unreadable_and_glob_paths_are_recorded_not_fatal(tmp_path, run_collector):
    (tmp_path / "a.log").write_text("a1\na2\n")
    (tmp_path / "b.log").write_text("b1\n")
    fifo = tmp_path / "pipe.log"
    os.mkfifo(fifo)
    paths = [str(tmp_path / "*.log"), str(tmp_path / "nope" / "x.log"), str(tmp_path), str(fifo)]
    res = run_collector("logs", capture={"log_paths": paths, "explicit_log_paths": paths, "log_lines": 5,
                                         "journal": False})
    assert res.status == "partial"
    meta = {e["path"]: e for e in json.loads((res.out / "logs.json").read_text())["files"]}
    assert meta[str(tmp_path / "a.log")]["lines_kept"] == 2
    assert meta[str(tmp_path / "b.log")]["lines_kept"] == 1
    assert "error" in meta[str(tmp_path / "nope" / "x.log")]
    assert meta[str(tmp_path)]["error"] == "not a regular file"
    assert meta[str(fifo)]["error"] == "not a regular file"


def test_file_rotated_underneath_is_read_through_the_open_descriptor(tmp_path):
    from collectors.logs import tail_fd
    p = tmp_path / "rot.log"
    p.write_bytes(b"".join(b"before %d\n" % i for i in range(50)))
    fd = os.open(p, os.O_RDONLY)
    try:
        os.rename(p, tmp_path / "rot.log.1")          # logrotate moves it away
        p.write_bytes(b"after rotation\n")             # and a new file appears
        assert tail_fd(fd, 2) == b"before 48\nbefore 49\n"
    finally:
        os.close(fd)
