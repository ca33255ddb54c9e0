"""The logic of ``goldenhour record`` and ``goldenhour history`` (the click wiring is agent/cli/record.py).

``record`` runs the recorder in the foreground until SIGTERM/SIGINT. ``history`` reads a
time range of the local ring (or a bundle's ``ring-slice.bin`` / ``history.jsonl``) and prints
what a responder on the host wants first: the window, its gaps, the first signals that left
their baseline and when, the processes that started and exited, and (``--signal``) the
series themselves; ``--json``, ``--csv`` and ``--jsonl`` for scripts.
"""
from __future__ import annotations

import csv
import fnmatch
import io
import json
import logging
import os
import re
import sys
import time
from datetime import datetime, timezone
from typing import Any

from agent.errors import EXIT_CAPTURE, GoldenhourError, NotFoundError, UsageError

_REL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)?\s*(?:ago)?\s*$", re.I)
_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, None: 60}


def parse_when(text: str | None, now: float, what: str = "time") -> float | None:
    """``30m``, ``2h``, ``90s``, ``1d`` (ago), ``now``, an ISO 8601 time (UTC unless it says), or epoch seconds."""
    if text is None or text == "":
        return None
    t = text.strip()
    if t.lower() == "now":
        return now
    m = _REL.match(t)
    if m and not re.fullmatch(r"\d{9,}(\.\d+)?", t):
        return now - float(m.group(1)) * _UNITS[(m.group(2) or "").lower() or None]
    if re.fullmatch(r"\d{9,}(\.\d+)?", t):
        return float(t)
    from agent.incident import parse_iso
    dt = parse_iso(t.replace(" ", "T", 1) if re.match(r"^\d{4}-\d{2}-\d{2} \d", t) else t)
    if dt is None:
        raise UsageError(f"{what} {text!r}: use e.g. 30m (ago), 2h, now, 2026-11-23T10:00:00Z or epoch seconds")
    return dt.timestamp()


# -- record ------------------------------------------------------------------------------

def record(cfg, *, interval: float | None = None, process_interval: float | None = None, ring: str | None = None,
           ring_mib: int | None = None, socket_path: str | None = None, duration: float | None = None) -> int:
    from agent import recorder
    from agent.recorder import ring as ringmod
    from agent.recorder.service import Recorder
    st = recorder.settings(cfg, interval_s=interval, ring_path=ring, socket_path=socket_path,
                           ring_bytes=ring_mib * 2**20 if ring_mib else None)
    if process_interval is not None:
        st.process_interval_s = process_interval
    elif interval is not None and st.process_interval_s < interval:
        st.process_interval_s = interval
    if st.process_interval_s < st.interval_s:
        raise UsageError("the process interval must be at least the sampling interval")
    _log_to_stderr()
    rec = Recorder(st)
    logging.getLogger("goldenhour.recorder").info(
        "recording every %g s (processes every %g s) into %s (%s), socket %s", st.interval_s, st.process_interval_s,
        st.ring_path, _mib(st.ring_bytes), st.socket_path or "none")
    try:
        return rec.run(duration_s=duration)
    except ringmod.RingError as exc:          # another recorder holds the ring
        raise GoldenhourError(str(exc), EXIT_CAPTURE) from None


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def _log_to_stderr() -> None:
    log = logging.getLogger("goldenhour")
    if not any(isinstance(h, logging.StreamHandler) for h in log.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("goldenhour record: %(levelname)s %(message)s"))
        log.addHandler(h)
    log.setLevel(logging.INFO)


# -- history -----------------------------------------------------------------------------

def load(cfg, since: float | None, until: float | None, file: str | None):
    """A Window from the local ring (and the recorder's memory), or from a file out of a bundle."""
    from agent import recorder
    from agent.recorder import window
    if file:
        if not os.path.exists(file):
            raise NotFoundError(f"no such file: {file}")
        if os.path.isdir(file):
            for cand in ("collectors/history/ring-slice.bin", "ring-slice.bin", "collectors/history/history.jsonl",
                         "history.jsonl"):
                if os.path.exists(os.path.join(file, cand)):
                    file = os.path.join(file, cand)
                    break
            else:
                raise NotFoundError(f"{file} holds no ring-slice.bin or history.jsonl")
        with open(file, "rb") as fh:
            data = fh.read()
        if data.startswith(window.SLICE_MAGIC):
            win = window.read_slice(data)
        else:
            win = window.Window(None, None)
            win.entries = window.load_jsonl(data.splitlines())
            if not win.entries:
                raise UsageError(f"{file} is neither a ring slice nor a history.jsonl with records")
        win.entries = [e for e in win.entries
                       if (since is None or e.wall >= since) and (until is None or e.wall <= until)]
        win.since, win.until = since, until
        return win
    path = recorder.ring_path(cfg)
    win = window.read(path, since, until, socket_path=cfg["recorder.socket"], with_raw=False)
    if not win.entries and win.error and not win.recorder:
        raise NotFoundError(f"no flight-recorder history: {win.error} (is `goldenhour record` running? "
                            "the systemd unit is goldenhour-recorder)")
    return win


def history_data(win, t0: float | None, patterns: tuple[str, ...] = ()) -> dict[str, Any]:
    from agent.recorder import analysis, signals, window
    samples = win.samples
    cont = window.analyse_continuity(win, win.since, win.until)
    series = signals.build(samples)
    deps = analysis.departures(series, t0 if t0 is not None else (win.until or (samples[-1].wall if samples else None)),
                               cont["interval_s"])
    chosen = [s for s in series if any(fnmatch.fnmatch(s.name, p) for p in patterns)] if patterns else []
    return {
        "window": {"since": window.iso(win.since), "until": window.iso(win.until), "t0": window.iso(t0)},
        "ring": win.ring, "recorder": win.recorder, "error": win.error or None,
        "samples": len(samples), "events": len(win.events),
        "first_sample": window.iso(samples[0].wall) if samples else None,
        "last_sample": window.iso(samples[-1].wall) if samples else None,
        "interval_s": cont["interval_s"], "gaps": cont["gaps"], "clock_steps": cont["clock_steps"],
        "boots": cont["boots"], "restarts": cont["restarts"], "skipped_records": win.problems,
        "departures": [d.to_json(t0) for d in deps],
        "processes": window.processes_in(samples),
        "series": {s.name: [[window.iso(t), round(v, 4)] for t, v in s.points] for s in chosen},
        "_series_objects": chosen, "_departures": deps,
    }


def render_table(d: dict[str, Any], t0: float | None) -> str:
    from agent.recorder.analysis import fmt
    out = io.StringIO()
    w = out.write
    ring, rec = d.get("ring") or {}, d.get("recorder")
    if ring:
        w(f"ring      {ring.get('path')} ({_mib(int(ring.get('size', 0)))}, "
          f"since {_short(ring.get('oldest_segment'))})\n")
    w("recorder  " + (f"running, pid {rec.get('pid')}, every {rec.get('interval_s')} s, ring {rec.get('ring_state')}"
                      + (f" ({rec.get('ring_error')})" if rec.get("ring_error") else "") if rec else
                      "not answering on its socket (not running?)") + "\n")
    win = d["window"]
    w(f"window    {_short(win['since'])} .. {_short(win['until'])} UTC: {d['samples']} samples every "
      f"{d['interval_s']:g} s ({_short(d['first_sample'])} .. {_short(d['last_sample'])})\n")
    for g in d["gaps"]:
        w(f"gap       {_short(g['from'])} .. {_short(g['to'])} ({g['seconds']:.0f} s): {g['reason']}\n")
    for c in d["clock_steps"]:
        if c.get("direction") == "suspend":
            w(f"suspend   {_short(c['at'])}: the machine slept {c.get('suspend_s')} s\n")
        else:
            w(f"clock     {_short(c['at'])}: wall clock stepped {c.get('direction')} "
              f"by {abs(c.get('step_s') or 0):g} s\n")
    if len(d["boots"]) > 1:
        for b in d["boots"]:
            w(f"boot      {b['boot']}: {_short(b['first'])} .. {_short(b['last'])} ({b['samples']} samples)\n")
    for p in d["skipped_records"][:5]:
        w(f"skipped   {p.get('records', '?')} damaged record(s) (seq {p.get('from_seq', '?')}-{p.get('to_seq', '?')}): "
          f"{p.get('why')}\n")
    deps = d["_departures"]
    live = [x for x in deps if not x.already]
    w("\n")
    if live:
        w("first departures from the baseline (earliest first):\n")
        for x in live[:15]:
            w(f"  {_short_t(x.onset)}  {x.sentence(t0, 'T0') if t0 else x.sentence()}\n")
        if len(live) > 15:
            w(f"  ... and {len(live) - 15} more (--json lists all)\n")
    else:
        w("no signal left its baseline in this window\n")
    already = [x for x in deps if x.already]
    if already:
        w("already abnormal when the window began: " + ", ".join(
            f"{x.label} ({fmt(x.value, x.unit)})" for x in already[:8]) + "\n")
    pr = d["processes"]
    if pr["started"] or pr["exited"]:
        w(f"\nprocesses: {pr['started_total']} started, {pr['exited_total']} exited in the window\n")
        for label, key in (("started", "started"), ("exited", "exited")):
            names: dict[str, list[str]] = {}
            for p in pr[key]:
                names.setdefault(p["comm"] or "?", []).append(_short(p["t"])[11:])
            if names:
                w(f"  {label}: " + ", ".join(f"{n} x{len(ts)} (first {ts[0]})" if len(ts) > 1 else f"{n} ({ts[0]})"
                                              for n, ts in list(names.items())[:20]) + "\n")
    for s in d["_series_objects"]:
        w(f"\n{s.name} ({s.spec.label}, {s.spec.unit or 'count'}):\n")
        for t, v in s.points:
            w(f"  {_short_t(t)}  {v:,.3f}\n")
    return out.getvalue()


def render_csv(d: dict[str, Any]) -> str:
    """Wide CSV: one row per sample time, one column per selected signal (all when none chosen)."""
    series = d["_series_objects"]
    times = sorted({t for s in series for t, _ in s.points})
    cols = {s.name: dict(s.points) for s in series}
    buf = io.StringIO()
    wr = csv.writer(buf)
    wr.writerow(["time_utc"] + [s.name for s in series])
    for t in times:
        wr.writerow([_iso_s(t)] + [("" if cols[s.name].get(t) is None else round(cols[s.name][t], 4)) for s in series])
    return buf.getvalue()


def public(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if not k.startswith("_")}


def _short(s: str | None) -> str:
    return (s or "?").replace("T", " ").replace("Z", "")[:19]


def _short_t(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%H:%M:%S")


def _iso_s(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def jsonl(win) -> bytes:
    return b"".join(e.line() for e in win.entries)


def now() -> float:
    return time.time()


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)
