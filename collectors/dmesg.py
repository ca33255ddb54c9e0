"""Kernel ring buffer, read as raw records from /dev/kmsg, non-destructively.

What: every record the kernel still holds: OOM kills, hung tasks, soft lockups, NIC
resets, I/O errors, segfaults, conntrack "table full" messages.
Why: the kernel's own account of the incident; the ring buffer is finite and a
restart (of the host) or a chatty driver overwrites it.
Produces: ``kmsg.txt`` (raw records as read), ``dmesg.txt`` (one line per record:
``[UTC time] level: message``), ``dmesg.json`` (records with seq, level, facility,
monotonic usec, UTC time, message, continuation fields).
Overhead: one non-blocking pass over the buffer (a few MB at most); no helper process.
Opening /dev/kmsg gives each reader its own position: nothing is consumed or cleared
(unlike /proc/kmsg or ``dmesg -c``), so other readers (journald, rsyslog) lose nothing.
Caveats: kmsg timestamps are CLOCK_MONOTONIC microseconds (they stop while the machine
is suspended); wall-clock times are computed with the current REALTIME - MONOTONIC
offset, so they can be off by the time spent suspended since boot. Records already
overwritten are reported as a gap (EPIPE) in ``dmesg.json``'s ``gaps``.
Fallback: without a readable /dev/kmsg, ``dmesg --raw`` (same format, prefix stripped).
Options: none.
"""
from __future__ import annotations

import errno
import os
import time
from datetime import datetime, timezone
from typing import Any

from agent.collector import Collector, Requirement, Scope, Skip, which

LEVELS = ("emerg", "alert", "crit", "err", "warn", "notice", "info", "debug")
FACILITIES = ("kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
              "authpriv", "ftp")


def _unescape(text: str) -> str:
    """kmsg escapes non-printable bytes as \\xNN; undo that for the human view."""
    if "\\x" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        if text.startswith("\\x", i) and i + 4 <= len(text):
            try:
                out.append(chr(int(text[i + 2:i + 4], 16)))
                i += 4
                continue
            except ValueError:
                pass
        out.append(text[i])
        i += 1
    return "".join(out)


def parse_record(record: str) -> dict[str, Any] | None:
    """One /dev/kmsg record: ``prio,seq,usec,flags[,...];message`` then `` KEY=value`` lines."""
    head, sep, rest = record.partition(";")
    if not sep:
        return None
    fields = head.split(",")
    try:
        prio, seq, usec = int(fields[0]), int(fields[1]), int(fields[2])
    except (ValueError, IndexError):
        return None
    lines = rest.split("\n")
    message = lines[0]
    extra: dict[str, str] = {}
    for line in lines[1:]:
        if line.startswith(" ") and "=" in line:
            k, _, v = line[1:].partition("=")
            extra[k] = v
    fac = prio >> 3
    return {"seq": seq, "level": LEVELS[prio & 7], "facility": FACILITIES[fac] if fac < len(FACILITIES) else str(fac),
            "usec": usec, "flags": fields[3] if len(fields) > 3 else "", "message": _unescape(message),
            "fields": extra}


def parse_kmsg(text: str) -> list[dict[str, Any]]:
    """Parse the concatenated output of /dev/kmsg reads (records end with a newline).

    A continuation line starts with a space; anything else starts a new record.
    """
    records, cur = [], []
    for line in text.split("\n"):
        if line.startswith(" ") and cur:
            cur.append(line)
            continue
        if cur:
            rec = parse_record("\n".join(cur))
            if rec:
                records.append(rec)
        cur = [line] if line else []
    if cur:
        rec = parse_record("\n".join(cur))
        if rec:
            records.append(rec)
    return records


def realtime_offset() -> float:
    """Seconds to add to a CLOCK_MONOTONIC time to get the wall clock."""
    return time.clock_gettime(time.CLOCK_REALTIME) - time.clock_gettime(time.CLOCK_MONOTONIC)


def iso_from_usec(usec: int, offset: float) -> str:
    t = datetime.fromtimestamp(usec / 1e6 + offset, timezone.utc)
    return t.isoformat(timespec="microseconds").replace("+00:00", "Z")


def read_kmsg(path: str = "/dev/kmsg") -> tuple[str, list[int]]:
    """Read every available record without blocking; returns the text and the seqs of gaps."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    chunks, gaps = [], []
    try:
        while True:
            try:
                b = os.read(fd, 8192)   # one record per read; the kernel caps a record below 8 KiB
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    break
                if exc.errno == errno.EPIPE:   # records overwritten before we read them
                    gaps.append(len(chunks))
                    continue
                raise
            if not b:
                break
            chunks.append(b.decode("utf-8", "replace"))
    finally:
        os.close(fd)
    return "".join(chunks), gaps


def collect(ctx) -> None:
    offset = realtime_offset()
    try:
        text, gaps = read_kmsg()
        method = "/dev/kmsg"
    except OSError as exc:
        if not which("dmesg"):
            raise Skip(f"/dev/kmsg unreadable ({exc.strerror}) and no dmesg command")
        res = ctx.run(["dmesg", "-r"], stdout="dmesg-raw.txt")
        if not res.ok:
            raise Skip(f"/dev/kmsg unreadable ({exc.strerror}) and dmesg -r failed")
        text = _from_dmesg_raw((ctx.out / "dmesg-raw.txt").read_text(errors="replace"))
        gaps, method = [], "dmesg -r"
    ctx.write_text("kmsg.txt", text)
    records = parse_kmsg(text)
    for r in records:
        r["time"] = iso_from_usec(r["usec"], offset)
    ctx.write_text("dmesg.txt", "".join(f"[{r['time']}] {r['level']:<6} {r['message']}\n" for r in records))
    ctx.write_json("dmesg.json", {"method": method, "clock": "monotonic usec + (REALTIME - MONOTONIC) now",
                                  "realtime_offset_s": offset, "records": records, "gaps": len(gaps),
                                  "first_seq": records[0]["seq"] if records else None,
                                  "last_seq": records[-1]["seq"] if records else None})
    ctx.note(method=method, records=len(records), gaps=len(gaps))


def _from_dmesg_raw(text: str) -> str:
    """``dmesg -r`` prints ``<prio>[  sec.usec] message``; turn it into kmsg records."""
    out = []
    for i, line in enumerate(text.splitlines()):
        if not line.startswith("<") or ">" not in line:
            continue
        prio, _, rest = line[1:].partition(">")
        usec = 0
        if rest.startswith("["):
            stamp, _, rest = rest[1:].partition("]")
            try:
                usec = int(float(stamp.strip()) * 1e6)
            except ValueError:
                pass
            rest = rest[1:] if rest.startswith(" ") else rest
        out.append(f"{prio},{i},{usec},-;{rest}\n")
    return "".join(out)


COLLECTOR = Collector(
    name="dmesg", summary="kernel ring buffer from /dev/kmsg, with UTC times (never cleared)",
    scope=Scope.HOST, collect=collect, timeout_s=10, volatility=10,
    requires=(), check=lambda: None if os.access("/dev/kmsg", os.R_OK) or which("dmesg")
    else "neither /dev/kmsg readable nor dmesg installed")
