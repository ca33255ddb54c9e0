"""Cutting a time window out of the flight recorder: records, raw bytes, gaps, clock steps, boots.

Used by the ``history`` collector (the window before the incident's start, into the bundle),
``goldenhour history`` (a responder on the host) and the report (which reads the bundle's
``history.jsonl`` back with ``load_jsonl``).

``read(ring_path, since, until, socket_path)`` reads the ring file directly (never waiting
for the recorder) and, when the recorder answers on its socket within a fraction of a
second, adds the samples it holds in memory that never reached the ring (disk full, I/O
error). It returns a ``Window``: decoded records in sequence order, the raw records as
stored (with the segment headers and dictionary records needed to decode them: the
bundle's ``ring-slice.bin``, readable by ``read_slice``), and what went wrong on the way —
corrupt or torn records skipped, gaps with their reason, clock steps, boot changes.
"""
from __future__ import annotations

import json
from itertools import pairwise
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

from agent.recorder import ring as ringmod

SLICE_MAGIC = b"GHSLICE1"


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Entry:
    """One decoded record: its sequence number, kind (sample, event, meta), CLOCK_REALTIME and
    CLOCK_MONOTONIC (s), boot ID, and its JSON (parsed only when ``data`` is first read: writing
    history.jsonl needs the bytes, not the objects)."""

    __slots__ = ("seq", "kind", "wall", "mono", "boot", "_data", "raw_json", "memory_only")

    def __init__(self, seq: int, kind: str, wall: float, mono: float, boot: str, data: dict[str, Any] | None = None,
                 raw_json: bytes = b"", memory_only: bool = False):
        self.seq, self.kind, self.wall, self.mono, self.boot = seq, kind, wall, mono, boot
        self._data, self.raw_json, self.memory_only = data, raw_json, memory_only

    @property
    def data(self) -> dict[str, Any]:
        if self._data is None:
            try:
                d = json.loads(self.raw_json)
            except ValueError:
                d = None
            self._data = d if isinstance(d, dict) else {}
        return self._data

    def line(self) -> bytes:
        """The history.jsonl line: the recorded JSON with seq, kind and source in front."""
        body = self.raw_json or json.dumps(self.data, separators=(",", ":")).encode()
        extra = b',"memory_only":true' if self.memory_only else b""
        inner = body[1:] if len(body) > 2 else b"}"
        sep = b"," if len(body) > 2 else b""
        return b'{"seq":%d,"kind":"%s"%s%s%s\n' % (self.seq, self.kind.encode(), extra, sep, inner)


@dataclass
class Window:
    since: float | None
    until: float | None
    entries: list[Entry] = field(default_factory=list)
    raw: bytes = b""                                  # ring-slice.bin
    problems: list[dict[str, Any]] = field(default_factory=list)
    ring: dict[str, Any] = field(default_factory=dict)
    recorder: dict[str, Any] | None = None
    error: str = ""                                   # why there is no history at all
    pending: int = 0                                  # records read from the recorder's journal

    @property
    def samples(self) -> list[Entry]:
        return [e for e in self.entries if e.kind == "sample"]

    @property
    def events(self) -> list[Entry]:
        return [e for e in self.entries if e.kind == "event"]



def _decode(rec: ringmod.Record, dec: ringmod.Decoder, problems: list[dict[str, Any]], seg: int) -> Entry | None:
    data = dec.decode(rec) if rec.data is None else rec.data
    if data is None:
        problems.append({"segment": seg, "from_seq": rec.seq, "to_seq": rec.seq, "records": 1,
                         "why": "undecodable (its segment's dictionary record is lost)" if dec.dict_missing
                         else "undecodable payload"})
        return None
    if not (data.startswith(b"{") and data.endswith(b"}")):
        problems.append({"segment": seg, "from_seq": rec.seq, "to_seq": rec.seq, "records": 1,
                         "why": "not a JSON object"})
        return None
    kind = ringmod.KIND_NAMES.get(rec.kind, str(rec.kind))
    if rec.kind == ringmod.META:        # a copy of the segment's dictionary: kept as a placeholder line
        return Entry(rec.seq, "meta", rec.wall_ns / 1e9, rec.mono_ns / 1e9, rec.boot, {"meta": "dictionary copy"},
                     raw_json=b'{"meta":"dictionary copy"}')
    return Entry(rec.seq, kind, rec.wall_ns / 1e9, rec.mono_ns / 1e9, rec.boot, raw_json=data)


def read(ring_path: str, since: float | None = None, until: float | None = None, *,
         socket_path: str = "", ask_timeout: float = 0.25, with_raw: bool = True,
         pending_path: str | None = None) -> Window:
    """The records with wall time in [since, until] (seconds since the epoch; None = open).

    Besides the ring file: the records still waiting in the recorder's journal (``pending_path``,
    default beside the socket), and, when the recorder answers, what it kept only in memory.
    """
    win = Window(since, until)
    since_ns = int(since * 1e9) if since is not None else None
    until_ns = int(until * 1e9) if until is not None else None
    raw_parts: list[bytes] = []
    try:
        view = ringmod.open_view(ring_path)
    except ringmod.RingError as exc:
        view = None
        win.error = str(exc)
    if view is not None:
        win.ring = {"path": ring_path, "size": view.header.size, "size_on_disk": view.size_on_disk,
                    "segments": len(view.segments), "segment_bytes": view.header.seg_size,
                    "ring_id": view.header.ring_id, "created": iso(view.header.created_ns / 1e9),
                    "oldest_segment": iso(view.segments[0].wall_ns / 1e9) if view.segments else None}
        for p in view.problems:
            win.problems.append({"why": p})
        if with_raw:
            raw_parts.append(SLICE_MAGIC + ringmod.FileHeader(view.header.seg_size, view.header.nseg,
                                                              view.header.created_ns, view.header.ring_id).pack()[:64])
        last: tuple[ringmod.SegmentScan, ringmod.Decoder] | None = None
        for scan, recs in ringmod.iter_records(view, since_ns, until_ns, win.problems):
            dec = ringmod.Decoder()
            last = (scan, dec)
            dict_rec = None
            inside = {r.seq for r in recs}
            for r in scan.records:             # in order: the segment's dictionary record comes first
                if r.seq in inside:
                    e = _decode(r, dec, win.problems, scan.header.seg_seq)
                    if e is not None:
                        win.entries.append(e)
                elif r.flags & ringmod.F_DICT:
                    dec.decode(r)
                if r.flags & ringmod.F_DICT:
                    dict_rec = r
            if with_raw and recs:
                raw_parts.append(scan.header.pack())
                if dict_rec is not None and dict_rec.seq not in inside:
                    raw_parts.append(dict_rec.raw)
                raw_parts.extend(r.raw for r in recs)
        if last is not None and last[0].header.seg_seq == view.segments[-1].seg_seq:
            raw_parts.extend(_read_journal(win, last, pending_path if pending_path is not None else (
                socket_path + ".pending" if socket_path else ""), since_ns, until_ns, view.header.ring_id))
    win.raw = b"".join(raw_parts) if len(raw_parts) > 1 else b""
    # the recorder's memory: samples that never reached the ring, and its status
    if socket_path:
        from agent.recorder.service import ask
        st = ask(socket_path, {"op": "status"}, timeout=ask_timeout)
        if st and st.get("ok"):
            win.recorder = st
            last = max((e.seq for e in win.entries), default=-1)
            tail = ask(socket_path, {"op": "tail", "since": since or 0, "after_seq": last}, timeout=ask_timeout)
            for r in (tail or {}).get("records") or []:
                d = r.get("data") if isinstance(r, dict) else None
                if not isinstance(d, dict):
                    continue
                w = r.get("wall_ns", 0) / 1e9
                if until is not None and w > until:
                    continue
                e = Entry(int(r.get("seq", 0)), "event" if "ev" in d else "sample", w, r.get("mono_ns", 0) / 1e9,
                          str(d.get("boot") or tail.get("boot") or ""), d, memory_only=True)
                win.entries.append(e)
    win.entries.sort(key=lambda e: e.seq)
    if not win.entries and not win.error and view is not None and not view.segments:
        win.error = "the ring is empty: the recorder has not written a sample yet"
    return win


def _read_journal(win: Window, last: tuple[ringmod.SegmentScan, ringmod.Decoder], path: str,
                  since_ns: int | None, until_ns: int | None, ring_id: str) -> list[bytes]:
    """Records of the newest segment still in the recorder's journal (not written to the ring yet)."""
    data = ringmod.read_journal(path, ring_id)
    if not data:
        return []
    scan, dec = last
    after = max([r.seq for r in scan.records], default=scan.header.first_seq - 1)
    raw, off = [], 0
    while off < len(data):
        rec, _ = ringmod.parse_record_at(data, off, len(data))
        if rec is None:
            break
        off += len(rec.raw)
        if rec.seq <= after:
            continue
        rec.boot = scan.header.boot
        if (since_ns is not None and rec.wall_ns < since_ns) or (until_ns is not None and rec.wall_ns > until_ns):
            if rec.flags & ringmod.F_DICT:
                dec.decode(rec)
                raw.append(rec.raw)
            continue
        e = _decode(rec, dec, win.problems, scan.header.seg_seq)
        if e is not None:
            win.entries.append(e)
            win.pending += 1
            raw.append(rec.raw)
    return raw


def read_slice(data: bytes) -> Window:
    """Decode a ``ring-slice.bin`` (what the history collector put in a bundle)."""
    win = Window(None, None, raw=data)
    if not data.startswith(SLICE_MAGIC):
        win.error = "not a ring slice (magic)"
        return win
    off = len(SLICE_MAGIC) + 64
    seg: ringmod.SegHeader | None = None
    dec = ringmod.Decoder()
    while off < len(data):
        if data[off:off + 4] == ringmod.SEG_MAGIC:
            seg = ringmod.SegHeader.parse(data[off:off + ringmod.SEG_HEADER_SIZE], -1)
            off += ringmod.SEG_HEADER_SIZE
            dec = ringmod.Decoder()
            if seg is None:
                win.problems.append({"at": off, "why": "damaged segment header"})
            continue
        rec, why = ringmod.parse_record_at(data, off, len(data))
        if rec is None:
            win.problems.append({"at": off, "why": why})
            nxt = data.find(ringmod.REC_MAGIC, off + 1)
            nseg = data.find(ringmod.SEG_MAGIC, off + 1)
            cands = [x for x in (nxt, nseg) if x >= 0]
            if not cands:
                break
            off = min(cands)
            continue
        off += len(rec.raw)
        rec.boot = seg.boot if seg else ""
        e = _decode(rec, dec, win.problems, seg.seg_seq if seg else -1)
        if e is not None:
            win.entries.append(e)
    # a segment's dictionary record may sit before the window: it is there to decode, not to show
    return win


def load_jsonl(lines: Iterable[str | bytes]) -> list[Entry]:
    """history.jsonl back into entries (the report's reader)."""
    out = []
    for line in lines:
        if not line or not line.strip():
            continue
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if not isinstance(d, dict):
            continue
        out.append(Entry(int(d.get("seq", 0)), str(d.get("kind", "sample")), float(d.get("t") or 0),
                         float(d.get("m") or 0), str(d.get("boot") or ""), d, memory_only=bool(d.get("memory_only"))))
    out.sort(key=lambda e: e.seq)
    return out


# -- what the window says about itself ------------------------------------------------------

def interval_of(samples: list[Entry]) -> float:
    iv = [s.data.get("iv") for s in samples[-5:] if isinstance(s.data.get("iv"), (int, float))]
    if iv:
        return float(statistics.median(iv))
    dts = [b.mono - a.mono for a, b in pairwise(samples) if a.boot == b.boot and b.mono > a.mono]
    return float(statistics.median(dts)) if dts else 5.0


def analyse_continuity(win: Window | list[Entry], since: float | None = None, until: float | None = None,
                       problems: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Gaps (with their reason), clock steps, boots and restarts in a window's records."""
    entries = win.entries if isinstance(win, Window) else win
    problems = (win.problems if isinstance(win, Window) else problems) or []
    samples = [e for e in entries if e.kind == "sample"]
    iv = interval_of(samples)
    gaps: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    boots: list[dict[str, Any]] = []
    restarts: list[dict[str, Any]] = []
    lost = {}
    for p in problems:
        if "from_seq" in p:
            for s in range(int(p["from_seq"]), int(p.get("to_seq", p["from_seq"])) + 1):
                lost[s] = p.get("why", "lost")
    for e in entries:
        if e.kind != "event":
            continue
        ev = e.data.get("ev")
        if ev == "clock_step":
            steps.append({"at": iso(e.wall), "seq": e.seq, "step_s": e.data.get("step_s"),
                          "direction": e.data.get("direction")})
        elif ev == "suspend":
            steps.append({"at": iso(e.wall), "seq": e.seq, "suspend_s": e.data.get("slept_s"), "direction": "suspend"})
        elif ev == "start":
            restarts.append({"at": iso(e.wall), "seq": e.seq, "gap_s": e.data.get("gap_s"),
                             "boot_changed": bool(e.data.get("boot_changed")), "reason": e.data.get("reason", ""),
                             "moved_aside": e.data.get("moved_aside", "")})
    for e in samples:
        if not boots or boots[-1]["boot"] != e.boot:
            boots.append({"boot": e.boot, "first": iso(e.wall), "last": iso(e.wall), "samples": 0})
        boots[-1]["last"] = iso(e.wall)
        boots[-1]["samples"] += 1
    # clock steps visible in the data even without an event (an older recorder, a lost event)
    for a, b in pairwise(samples):
        if a.boot == b.boot and b.mono > a.mono:
            step = (b.wall - a.wall) - (b.mono - a.mono)
            if abs(step) > 1.0 and not any(a.seq < int(s["seq"]) < b.seq for s in steps if "seq" in s):
                steps.append({"at": iso(b.wall), "seq": b.seq, "step_s": round(step, 3),
                              "direction": "backwards" if step < 0 else "forwards", "seen_in": "samples"})
    between = {e.seq: e for e in entries if e.kind != "sample"}
    for a, b in pairwise(samples):
        same_boot = a.boot == b.boot
        span = (b.mono - a.mono) if same_boot and b.mono >= a.mono else (b.wall - a.wall)
        missing = [s for s in range(a.seq + 1, b.seq) if s not in between]
        if span <= 2.5 * iv and same_boot and not missing:
            continue
        evs = [between[s] for s in range(a.seq + 1, b.seq) if s in between]
        names = [x.data.get("ev") for x in evs]
        n_lost = sum(1 for s in missing if s in lost)
        if not same_boot:
            reason = "reboot (new boot ID)"
        elif "stop" in names:
            reason = "recorder stopped"
        elif "start" in names:
            reason = "recorder restarted (it had not stopped cleanly: killed or crashed)"
        elif n_lost:
            reason = f"{n_lost} record(s) lost: {sorted({lost[s] for s in range(a.seq + 1, b.seq) if s in lost})[0]}"
        elif "late" in names:
            reason = "recorder starved or stopped (a sample came late)"
        elif missing:
            reason = f"{len(missing)} record(s) missing"
        else:
            reason = "no sample recorded (recorder paused?)"
        gaps.append({"from": iso(a.wall), "to": iso(b.wall), "seconds": round(span, 3), "reason": reason,
                     "after_seq": a.seq, "before_seq": b.seq})
    if samples and since is not None and samples[0].wall - since > 2.5 * iv:
        gaps.insert(0, {"from": iso(since), "to": iso(samples[0].wall), "seconds": round(samples[0].wall - since, 3),
                        "reason": "no samples recorded before this (the recorder was not running, or the ring "
                                  "does not reach back so far)"})
    if samples and until is not None and until - samples[-1].wall > 2.5 * iv + 1.0:
        gaps.append({"from": iso(samples[-1].wall), "to": iso(until), "seconds": round(until - samples[-1].wall, 3),
                     "reason": "no samples since (the recorder is not running, or it is stalled)"})
    return {"interval_s": iv, "gaps": gaps, "clock_steps": steps, "boots": boots, "restarts": restarts}


def processes_in(samples: list[Entry], limit: int = 200) -> dict[str, Any]:
    """Processes that started and exited in the window (names only), with when they were first seen."""
    started, exited = [], []
    over_started = over_exited = 0
    for s in samples:
        if s.raw_json and b'"born"' not in s.raw_json and b'"exited"' not in s.raw_json:
            continue                    # a sample without a process scan (or the first): nothing to parse
        p = s.data.get("proc")
        if not isinstance(p, dict):
            continue
        for x in p.get("born") or []:
            started.append({"t": iso(s.wall), "pid": x[0], "comm": x[-1]})
        for x in p.get("exited") or []:
            exited.append({"t": iso(s.wall), "pid": x[0], "comm": x[-1]})
        more_b = max(0, int(p.get("born_n") or 0) - len(p.get("born") or []))
        more_e = max(0, int(p.get("exited_n") or 0) - len(p.get("exited") or []))
        if more_b:                      # more than the sampler names per scan: counted, not named
            started.append({"t": iso(s.wall), "pid": None, "comm": "", "unnamed": more_b})
        if more_e:
            exited.append({"t": iso(s.wall), "pid": None, "comm": "", "unnamed": more_e})
        over_started += more_b
        over_exited += more_e
    named_s = sum(1 for x in started if not x.get("unnamed"))
    named_e = sum(1 for x in exited if not x.get("unnamed"))
    return {"started": started[:limit], "exited": exited[:limit],
            "started_total": named_s + over_started, "exited_total": named_e + over_exited}
