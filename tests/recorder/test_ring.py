"""The ring file: bounded, crash-safe, resumable; damage is detected, skipped and stated, never fatal.

Records carry real samples of this host (``Sampler().host()``); the clocks are real unless a test
needs one that steps (a backwards wall-clock step cannot be made on a shared machine without
disturbing everything else on it, so the recorder's clock is replaced there).
"""
from __future__ import annotations

import json
import os
import stat
import time
from itertools import pairwise

import pytest

from agent.recorder import ring, window
from agent.recorder.sampler import Sampler
from agent.recorder.service import Clock, Recorder, Settings

BOOT_A = "11111111-2222-3333-4444-555555555555"
BOOT_B = "66666666-7777-8888-9999-aaaaaaaaaaaa"


@pytest.fixture(scope="module")
def payloads():
    s = Sampler()
    out = []
    for _i in range(8):
        d = s.host()
        out.append(d)
    s.close()
    return out


def write(path, n, payloads, *, size=64 * 1024, boot=BOOT_A, t0=None, step=1.0):
    w = ring.RingWriter(str(path), size, boot=boot)
    info = w.open()
    t0 = time.time() if t0 is None else t0
    seqs = []
    for i in range(n):
        wall = int((t0 + i * step) * 1e9)
        d = dict(payloads[i % len(payloads)], v=1, t=wall / 1e9, m=i * step, boot=boot, i=i)
        seqs.append(w.append(ring.SAMPLE, json.dumps(d).encode(), int(i * step * 1e9), wall, keyframe=True))
    w.close()
    return info, seqs


def test_wraparound_keeps_the_newest_records_and_never_grows(tmp_path, payloads):
    p = tmp_path / "ring"
    info, seqs = write(p, 3000, payloads, size=64 * 1024)
    hdr = ring.open_view(str(p)).header
    assert info["created"] and os.path.getsize(p) == hdr.size <= 64 * 1024
    win = window.read(str(p))
    got = [e.seq for e in win.entries]
    assert got[-1] == seqs[-1] and got == list(range(got[0], got[-1] + 1))   # contiguous up to the newest
    idx = [e.data["i"] for e in win.samples]
    assert idx[-1] == 2999 and idx[0] > 0 and idx == list(range(idx[0], 3000))  # the oldest were overwritten
    assert {e.kind for e in win.entries} == {"sample", "meta"} and not win.problems
    # writing on (a second lap and more) keeps the bound
    w = ring.RingWriter(str(p), 64 * 1024, boot=BOOT_A)
    w.open()
    for i in range(2000):
        w.append(ring.SAMPLE, json.dumps(dict(payloads[0], i=3000 + i)).encode(), i, time.time_ns())
    w.close()
    assert os.path.getsize(p) == hdr.size
    assert window.read(str(p)).samples[-1].data["i"] == 4999


def test_ring_file_and_folder_are_root_only(tmp_path, payloads):
    p = tmp_path / "rec" / "ring"
    write(p, 3, payloads)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(p.parent).st_mode) == 0o700


def test_a_torn_tail_is_skipped_and_writing_resumes_after_the_last_good_record(tmp_path, payloads):
    p = tmp_path / "ring"
    write(p, 20, payloads)
    view = ring.open_view(str(p))
    seg = view.segments[-1]
    scan = ring.scan_segment(ring.read_segment(str(p), view.header, seg), seg)
    last = scan.records[-1]
    off = ring.FILE_HEADER_SIZE + seg.index * view.header.seg_size + scan.end
    with open(p, "r+b") as fh:                  # tear the last record: its second half never reached the disk
        fh.seek(off - len(last.raw) // 2)
        fh.write(b"\0" * (len(last.raw) // 2))
    win = window.read(str(p))
    assert [e.data["i"] for e in win.samples] == list(range(19))
    w = ring.RingWriter(str(p), 64 * 1024, boot=BOOT_A)
    info = w.open()
    assert info["resumed"] and info["last_seq"] == last.seq - 1 and w.next_seq == last.seq
    w.append(ring.SAMPLE, json.dumps(dict(payloads[0], i=99)).encode(), 1, time.time_ns())
    w.close()
    win = window.read(str(p))
    assert [e.data["i"] for e in win.samples] == list(range(19)) + [99]
    assert [e.seq for e in win.entries] == list(range(last.seq + 1)) and not win.problems


def _record_offsets(p):
    view = ring.open_view(str(p))
    seg = view.segments[-1]
    scan = ring.scan_segment(ring.read_segment(str(p), view.header, seg), seg)
    base = ring.FILE_HEADER_SIZE + seg.index * view.header.seg_size
    offs, o = [], ring.SEG_HEADER_SIZE
    for r in scan.records:
        offs.append((r.seq, base + o, len(r.raw)))
        o += len(r.raw)
    return offs


@pytest.mark.parametrize("where", ["payload", "length field"])
def test_a_flipped_byte_skips_only_that_record(tmp_path, payloads, where):
    p = tmp_path / "ring"
    write(p, 12, payloads)
    seq, off, n = _record_offsets(p)[7]          # a sample in the middle (records 0 and 1: dictionary, copy)
    pos = off + ring.REC_HEADER_SIZE + n // 3 if where == "payload" else off + 8   # length: bytes 8-11
    with open(p, "r+b") as fh:
        fh.seek(pos)
        b = fh.read(1)
        fh.seek(pos)
        fh.write(bytes([b[0] ^ 0x40]))
    win = window.read(str(p))
    assert [e.seq for e in win.entries] == [s for s in range(13) if s != seq]
    assert len(win.problems) == 1 and win.problems[0]["from_seq"] == seq == win.problems[0]["to_seq"]
    cont = window.analyse_continuity(win)
    assert cont["gaps"] and "1 record(s) lost" in cont["gaps"][0]["reason"]


def _flip(p, pos):
    with open(p, "r+b") as fh:
        fh.seek(pos)
        b = fh.read(1)
        fh.seek(pos)
        fh.write(bytes([b[0] ^ 0x40]))


def test_a_damaged_dictionary_record_costs_one_sample_its_copy_decodes_the_rest(tmp_path, payloads):
    p = tmp_path / "ring"
    write(p, 12, payloads)
    (s0, off0, n0), (s1, off1, n1) = _record_offsets(p)[:2]          # the dictionary sample and its copy
    _flip(p, off0 + ring.REC_HEADER_SIZE + n0 // 2)
    win = window.read(str(p))
    assert [e.data["i"] for e in win.samples] == list(range(1, 12)) and win.problems[0]["from_seq"] == s0


def test_both_dictionary_copies_damaged_lose_that_segment_only(tmp_path, payloads):
    p = tmp_path / "ring"
    write(p, 400, payloads, size=64 * 1024)          # several segments
    view = ring.open_view(str(p))
    assert len(view.segments) >= 3
    victim = view.segments[-2]
    base = ring.FILE_HEADER_SIZE + victim.index * view.header.seg_size + ring.SEG_HEADER_SIZE
    scan = ring.scan_segment(ring.read_segment(str(p), view.header, victim), victim)
    _flip(p, base + ring.REC_HEADER_SIZE + 5)
    _flip(p, base + len(scan.records[0].raw) + ring.REC_HEADER_SIZE + 5)
    win = window.read(str(p))
    nxt = view.segments[-1].first_seq
    kept = {e.seq for e in win.entries}
    assert not kept & set(range(victim.first_seq, nxt))                # that segment's records are gone...
    assert kept >= set(range(nxt, view.segments[-1].first_seq + 10))   # ...the newer segment's are there
    assert any("dictionary" in str(x.get("why")) for x in win.problems)


def test_a_truncated_file_is_read_as_far_as_it_goes_and_made_whole_again(tmp_path, payloads):
    p = tmp_path / "ring"
    write(p, 400, payloads, size=64 * 1024)
    full = os.path.getsize(p)
    view = ring.open_view(str(p))
    cut = ring.FILE_HEADER_SIZE + (view.segments[-1].index + 1) * view.header.seg_size - 3000
    os.truncate(p, cut)
    win = window.read(str(p))
    assert win.entries and not win.error
    w = ring.RingWriter(str(p), 64 * 1024, boot=BOOT_A)
    info = w.open()
    assert "truncated" in info["reason"] and os.path.getsize(p) == full
    w.append(ring.SAMPLE, json.dumps(dict(payloads[0], i=1000)).encode(), 1, time.time_ns())
    w.close()
    assert window.read(str(p)).entries[-1].data["i"] == 1000


def test_a_foreign_file_is_never_read_as_history_and_is_moved_aside(tmp_path, payloads):
    p = tmp_path / "ring"
    p.write_bytes(b"#!/bin/sh\necho not a ring\n" * 100)
    win = window.read(str(p))
    assert not win.entries and "not a goldenhour ring" in win.error
    info, _ = write(p, 5, payloads)
    assert info["created"] and info["moved_aside"] == str(p) + ".bad" and "foreign" in info["reason"]
    assert (tmp_path / "ring.bad").read_bytes().startswith(b"#!/bin/sh")
    assert [e.data["i"] for e in window.read(str(p)).samples] == [0, 1, 2, 3, 4]


def test_a_damaged_file_header_is_moved_aside(tmp_path, payloads):
    p = tmp_path / "ring"
    write(p, 5, payloads)
    with open(p, "r+b") as fh:
        fh.seek(20)
        fh.write(b"\x00\x01\x02")
    assert "damaged header" in window.read(str(p)).error
    info, _ = write(p, 2, payloads)
    assert info["moved_aside"] and "damaged header" in info["reason"]


def test_a_restart_resumes_in_the_same_segment_with_the_next_sequence_number(tmp_path, payloads):
    p = tmp_path / "ring"
    write(p, 10, payloads)
    before = ring.open_view(str(p)).segments
    info, seqs = write(p, 5, payloads)
    assert info["resumed"] and not info["new_segment"] and seqs == [11, 12, 13, 14, 15]   # 0, 1: dictionary + copy
    assert ring.open_view(str(p)).segments == before          # no segment wasted on a restart
    win = window.read(str(p))
    assert [e.seq for e in win.entries] == list(range(16)) and [e.data["i"] for e in win.samples] == \
        list(range(10)) + list(range(5))


def test_a_new_boot_id_starts_a_new_segment_and_shows_as_a_reboot(tmp_path, payloads):
    p = tmp_path / "ring"
    t0 = time.time() - 100
    write(p, 10, payloads, boot=BOOT_A, t0=t0)
    info, _ = write(p, 10, payloads, boot=BOOT_B, t0=t0 + 40)      # monotonic time restarts at 0
    assert info["new_segment"] and info["last_boot"] == BOOT_A
    win = window.read(str(p))
    assert [e.boot for e in win.samples] == [BOOT_A] * 10 + [BOOT_B] * 10
    cont = window.analyse_continuity(win)
    assert [b["boot"] for b in cont["boots"]] == [BOOT_A, BOOT_B]
    assert [g["reason"] for g in cont["gaps"]] == ["reboot (new boot ID)"]


class SteppingClock(Clock):
    """The real clocks, with CLOCK_REALTIME moved back by ``step`` seconds from the Nth reading on."""

    def __init__(self, at: int, step: float):
        self.n, self.at, self.step = 0, at, step

    def now(self):
        wall, mono, bt = super().now()
        self.n += 1
        return (wall - int(self.step * 1e9) if self.n >= self.at else wall), mono, bt


def test_a_backwards_clock_step_is_recorded_and_never_reorders_samples(tmp_path):
    st = Settings(ring_path=str(tmp_path / "ring"), ring_bytes=1 << 20, interval_s=0.05, process_interval_s=0.05)
    rec = Recorder(st, clock=SteppingClock(at=12, step=3600))
    rec.run(max_samples=20)
    win = window.read(st.ring_path)
    seqs = [e.seq for e in win.entries]
    assert seqs == sorted(seqs)
    steps = [e.data for e in win.events if e.data.get("ev") == "clock_step"]
    assert len(steps) == 1 and steps[0]["direction"] == "backwards" and -3601 < steps[0]["step_s"] < -3599
    walls = [e.wall for e in win.samples]
    assert min(b - a for a, b in pairwise(walls)) < -3500     # the wall clock really went back
    cont = window.analyse_continuity(win)
    assert [c["direction"] for c in cont["clock_steps"]] == ["backwards"]
    # monotonic time says no hour went missing (a loaded machine may still starve the recorder briefly)
    assert all(g["seconds"] < 60 for g in cont["gaps"]), cont["gaps"]
    assert sum(1 for e in win.samples) == 20


def test_select_segments_keeps_a_segment_that_straddles_the_window_start(tmp_path, payloads):
    p = tmp_path / "ring"
    t0 = time.time() - 1000
    write(p, 600, payloads, size=64 * 1024, t0=t0)
    since = t0 + 450.5
    win = window.read(str(p), since, t0 + 520)
    assert [e.data["i"] for e in win.samples] == list(range(451, 521))
    sl = window.read_slice(win.raw)
    assert [e.data["i"] for e in sl.samples if 451 <= e.data["i"]] == list(range(451, 521)) and not sl.problems
