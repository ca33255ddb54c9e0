"""logs: tails exact against GNU tail, rotated siblings, a sparse multi-GB file read only at
its end, files rotated or truncated underneath, bad paths recorded and never fatal."""
from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import subprocess

import pytest

from collectors.logs import (FileShrank, count_lines, expand, find_tail_start, journal_files, out_name,
                             rotated_sibling, tail_compressed, tail_fd, tail_lines)


def gnu_tail(path, n) -> bytes:
    return subprocess.run(["tail", "-n", str(n), str(path)], capture_output=True, check=True).stdout


def rchar() -> int:
    for line in open("/proc/self/io"):
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


LINES = b"".join(b"line %d\n" % i for i in range(25000))
CASES = {
    "trailing-newline": LINES,
    "no-trailing-newline": LINES + b"last without newline",
    "crlf": b"".join(b"crlf %d\r\n" % i for i in range(12000)),
    "crlf-no-final-newline": b"".join(b"crlf %d\r\n" % i for i in range(12000)) + b"end\r",
    "binary-junk": bytes(range(256)) * 300 + b"\n\x00\x00\xff\n" * 7000 + b"\xfe\xff",
    "nul-lines": b"\x00" * 100 + b"\n" + b"\x00\x00\n" * 15000,
    "short": b"one\ntwo\nthree\n",
    "single-newline": b"\n",
    "empty": b"",
    "only-newlines": b"\n" * 20000,
    "one-long-line": b"x" * (3 * 2**20),
    "long-lines-across-blocks": b"".join(b"%d:" % i + b"y" * 70000 + b"\n" for i in range(40)),
    # a newline exactly at each block edge the reader uses (64 KiB, then x4)
    "newline-on-block-edges": (b"a" * (2**20 - 1) + b"\n") + (b"b" * (2**18 - 1) + b"\n")
                              + (b"\n" + b"c" * (2**16 - 2) + b"\n"),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("n", [1, 2, 10, 10000])
def test_tail_matches_gnu_tail(tmp_path, name, n):
    p = tmp_path / name
    p.write_bytes(CASES[name])
    got = tail_lines(p, n)
    assert got == gnu_tail(p, n)
    fd = os.open(p, os.O_RDONLY)
    try:
        start, lines = find_tail_start(fd, n, len(CASES[name]))
    finally:
        os.close(fd)
    assert CASES[name][start:] == got and lines == count_lines(got)


def test_sparse_multi_gb_file_is_tailed_without_reading_it_whole(tmp_path):
    p = tmp_path / "huge.log"
    with open(p, "wb") as fh:
        fh.truncate(4 * 2**30)            # a 4 GiB hole, then real lines at the end
        fh.seek(0, os.SEEK_END)
        fh.write(b"".join(b"tail line %d\n" % i for i in range(20000)))
    before = rchar()
    got = tail_lines(p, 10000)
    read = rchar() - before
    assert got == b"".join(b"tail line %d\n" % i for i in range(10000, 20000))
    assert read < 8 * 2**20, f"read {read} bytes of a 4 GiB file"
    # without any newline in reach, max_bytes bounds the read (GNU tail would read 4 GiB of zeros)
    q = tmp_path / "holes.log"
    with open(q, "wb") as fh:
        fh.truncate(4 * 2**30)
    before = rchar()
    got = tail_lines(q, 10, max_bytes=2**20)
    read = rchar() - before
    assert got == b"\0" * 2**20 and read < 4 * 2**20


def test_sparse_file_through_the_collector(tmp_path, run_collector):
    p = tmp_path / "huge.log"
    with open(p, "wb") as fh:
        fh.truncate(3 * 2**30)
        fh.seek(0, os.SEEK_END)
        fh.write(b"".join(b"tail line %d\r\n" % i for i in range(500)))
    res = run_collector("logs", capture={"log_paths": [str(p)], "log_lines": 100, "journal": False})
    assert res.status == "ok", res.reason
    e = json.loads((res.out / "logs.json").read_text())["files"][0]
    body = (res.out / e["file"]).read_bytes()
    assert body == gnu_tail(p, 100)
    st = os.stat(p)
    assert (e["size"], e["inode"], e["lines_kept"], e["bytes_kept"]) == (st.st_size, st.st_ino, 100, len(body))
    assert e["truncated"] is True and e["rotated_sibling"] is None and e["errors"] == []
    assert e["rotated_during_read"] is False and e["requested"] == "explicit"
    assert e["resolved"] == str(p) and e["mtime"].endswith("Z")


def test_rotated_sibling_fills_up_a_short_live_file(tmp_path, run_collector):
    live, old = tmp_path / "app.log", tmp_path / "app.log.1"
    old.write_bytes(b"".join(b"old %d\n" % i for i in range(100)) + b"old unterminated")
    live.write_bytes(b"new 0\nnew 1\n")
    (tmp_path / "app.log.2.gz").write_bytes(gzip.compress(b"older\n"))
    assert rotated_sibling(str(live)) == str(old)
    res = run_collector("logs", capture={"log_paths": [str(live)], "explicit_log_paths": [str(live)],
                                         "log_lines": 10, "journal": False})
    assert res.status == "ok", res.reason
    entry = json.loads((res.out / "logs.json").read_text())["files"][0]
    assert entry["rotated_sibling"] == str(old) and entry["sibling_lines"] == 8
    body = (res.out / entry["file"]).read_bytes()
    assert body == b"".join(b"old %d\n" % i for i in range(93, 100)) + b"old unterminated\nnew 0\nnew 1\n"
    assert entry["lines_kept"] == 10 and entry["bytes_kept"] == len(body) and entry["truncated"] is False


def test_a_live_file_with_enough_lines_does_not_touch_its_sibling(tmp_path, run_collector):
    live = tmp_path / "full.log"
    live.write_bytes(b"".join(b"%d\n" % i for i in range(50)))
    (tmp_path / "full.log.1").write_bytes(b"old\n")
    res = run_collector("logs", capture={"log_paths": [str(live)], "log_lines": 50, "journal": False})
    entry = json.loads((res.out / "logs.json").read_text())["files"][0]
    assert entry["rotated_sibling"] is None and entry["lines_kept"] == 50


@pytest.mark.parametrize("ext,compress", [(".gz", gzip.compress), (".xz", lzma.compress), (".bz2", bz2.compress)])
def test_compressed_sibling_is_read_streaming(tmp_path, run_collector, ext, compress):
    live = tmp_path / "svc.log"
    live.write_bytes(b"")
    (tmp_path / f"svc.log.1{ext}").write_bytes(compress(b"".join(b"gz %d\n" % i for i in range(300000))))
    res = run_collector("logs", capture={"log_paths": [str(live)], "log_lines": 3, "journal": False})
    entry = json.loads((res.out / "logs.json").read_text())["files"][0]
    assert entry["rotated_sibling"].endswith(f"svc.log.1{ext}")
    assert (res.out / entry["file"]).read_bytes() == b"gz 299997\ngz 299998\ngz 299999\n"


def test_tail_compressed_matches_gnu_tail_of_the_plain_text(tmp_path):
    for name, data in CASES.items():
        p = tmp_path / f"{name}.gz"
        p.write_bytes(gzip.compress(data))
        (tmp_path / name).write_bytes(data)
        for n in (1, 10, 10000):
            assert tail_compressed(str(p), n) == gnu_tail(tmp_path / name, n), (name, n)


def test_dated_siblings_pick_the_newest(tmp_path):
    live = tmp_path / "syslog"
    live.write_bytes(b"x\n")
    for name in ("syslog-20261120.gz", "syslog-20261122", "syslog-20261121.gz", "syslogger.1", "syslog.bak"):
        (tmp_path / name).write_bytes(b"y\n")
    assert rotated_sibling(str(live)) == str(tmp_path / "syslog-20261122")
    iso = tmp_path / "app.log"
    for name in ("app.log.2026-11-21", "app.log.2026-11-22.gz"):
        (tmp_path / name).write_bytes(b"z\n")
    assert rotated_sibling(str(iso)) == str(tmp_path / "app.log.2026-11-22.gz")
    assert rotated_sibling(str(tmp_path / "nothing.log")) is None


def test_missing_unreadable_and_glob_paths_are_recorded_not_fatal(tmp_path, run_collector):
    (tmp_path / "a.log").write_text("a1\na2\n")
    (tmp_path / "b.log").write_text("b1\n")
    (tmp_path / "a.log.1").write_text("rotated\n")
    fifo = tmp_path / "pipe.log"
    os.mkfifo(fifo)                     # opened non-blocking: no writer must not hang the collector
    explicit = [str(tmp_path / "*.log*"), str(tmp_path / "nope" / "x.log"), str(tmp_path), str(tmp_path / "*.none")]
    default = [str(tmp_path / "default-missing.log")]
    res = run_collector("logs", capture={"log_paths": default + explicit, "explicit_log_paths": explicit,
                                         "log_lines": 5, "journal": False})
    assert res.status == "partial"
    assert "nope/x.log" in res.reason and "no file matches" in res.reason and "default-missing" not in res.reason
    meta = json.loads((res.out / "logs.json").read_text())
    files = {e["path"]: e for e in meta["files"] if e.get("glob") is not True}
    assert files[str(tmp_path / "a.log")]["lines_kept"] == 2 + 1     # a.log.1 fills it up
    assert files[str(tmp_path / "a.log")]["glob"] == str(tmp_path / "*.log*")
    assert files[str(tmp_path / "b.log")]["lines_kept"] == 1
    assert str(tmp_path / "a.log.1") not in files                   # the glob's rotated match is a sibling
    assert files[str(tmp_path / "nope" / "x.log")]["errors"] == ["No such file or directory"]
    assert files[str(tmp_path)]["errors"] == ["not a regular file (directory)"]
    assert files[str(fifo)]["errors"] == ["not a regular file (fifo)"]
    assert files[str(tmp_path / "default-missing.log")]["requested"] == "default"
    assert files[str(tmp_path / "default-missing.log")]["errors"] == ["No such file or directory"]
    globs = [e for e in meta["files"] if e.get("glob") is True]
    assert any(e["path"].endswith("*.none") and e["errors"] == ["no file matches"] for e in globs)
    assert any(e.get("not_tailed") == [str(tmp_path / "a.log.1")] for e in globs)
    assert meta["journal"]["requested"] is False


def test_only_default_paths_missing_is_not_partial(tmp_path, run_collector):
    res = run_collector("logs", capture={"log_paths": [str(tmp_path / "syslog")], "explicit_log_paths": [],
                                         "log_lines": 5, "journal": False})
    assert res.status == "ok", res.reason


def test_journal_is_captured_or_its_absence_explained(tmp_path, run_collector):
    res = run_collector("logs", capture={"log_paths": [], "log_lines": 20, "journal": True,
                                         "journal_since_s": 600})
    assert res.status == "ok", res.reason
    j = json.loads((res.out / "logs.json").read_text())["journal"]
    if journal_files():
        assert j["file"] == "journal.txt" and (res.out / "journal.txt").exists()
        assert j["argv"][:4] == ["journalctl", "--no-pager", "-o", "short-iso-precise"]
    else:
        assert "reason" in j and not (res.out / "journal.txt").exists() and res.commands == []


def test_file_rotated_underneath_is_read_through_the_open_descriptor(tmp_path):
    p = tmp_path / "rot.log"
    p.write_bytes(b"".join(b"before %d\n" % i for i in range(50)))
    fd = os.open(p, os.O_RDONLY)
    try:
        os.rename(p, tmp_path / "rot.log.1")          # logrotate moves it away
        p.write_bytes(b"after rotation\n")             # and a new file appears
        assert tail_fd(fd, 2) == b"before 48\nbefore 49\n"
    finally:
        os.close(fd)


def test_file_truncated_underneath_is_detected(tmp_path):
    p = tmp_path / "trunc.log"
    p.write_bytes(b"".join(b"x %d\n" % i for i in range(1000)))
    fd = os.open(p, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        os.truncate(p, 0)                              # copytruncate empties it in place
        with open(p, "ab") as fh:
            fh.write(b"fresh\n")
        with pytest.raises(FileShrank):
            tail_fd(fd, 10, size)
        assert tail_fd(fd, 10) == b"fresh\n"           # at its new size it reads fine
    finally:
        os.close(fd)


def test_glob_keeps_the_newest_files_and_output_names_never_collide(tmp_path):
    for i in range(5):
        p = tmp_path / f"f{i}.log"
        p.write_text("x\n")
        os.utime(p, (1_700_000_000 + i, 1_700_000_000 + i))
    keep, dropped = expand(str(tmp_path / "*.log"), 2)
    assert keep == [str(tmp_path / "f3.log"), str(tmp_path / "f4.log")] and len(dropped) == 3
    assert expand("/no/magic/here.log", 2) == (["/no/magic/here.log"], [])
    used: set[str] = set()
    a, b = out_name("/var/log/a_b", used), out_name("/var/log/a/b", used)
    assert a == "files/var_log_a_b" and b == "files/var_log_a_b~2"
    assert out_name("/.hidden", used) == "files/_.hidden"
    long = out_name("/" + "d/" * 200 + "x.log", used)
    assert len(long) < 200 and long.startswith("files/d_d_")
