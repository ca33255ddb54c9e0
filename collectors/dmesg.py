"""Kernel ring buffer, read as raw records from /dev/kmsg, non-destructively, with UTC times.

What: every record the kernel still holds: OOM kills, hung tasks, soft lockups, NIC
resets, I/O errors, segfaults, conntrack "table full" messages, with their structured
fields (``SUBSYSTEM=``, ``DEVICE=``) and caller ids.
Why: the kernel's own account of the incident; the ring buffer is finite and a chatty
driver or a reboot overwrites it, so it is read among the first.
Produces: ``kmsg.txt`` (the records exactly as read), ``dmesg.txt`` (one line per record:
``[YYYY-mm-ddTHH:MM:SS.ffffffZ] facility.level: message``), ``dmesg.json`` (method, clock,
boot time, first/last seq, gaps, and ``records``: seq, level, facility, usec, time (ISO UTC),
message, fields, caller).
Overhead: one non-blocking pass over the buffer (one read per record, a few MB at most);
no helper process unless /dev/kmsg is unusable.
How: /dev/kmsg is opened O_RDONLY|O_NONBLOCK; each reader has its own position, so nothing
is consumed or cleared (unlike /proc/kmsg, ``dmesg -c`` or ``-C``) and journald or rsyslog
lose nothing; a ``dmesg -C`` done earlier does not hide records from this reader either.
Reading stops at EAGAIN (the end). EPIPE means records were overwritten while reading:
the lost seq range is recorded under ``gaps`` and reading continues.
Caveats: kmsg timestamps are the kernel's local clock in microseconds since boot, which
runs like CLOCK_MONOTONIC (it stops while the machine is suspended). Wall-clock times are
``usec + (CLOCK_REALTIME - CLOCK_MONOTONIC)`` taken once at capture time, so a record
from before a suspend is shown late by the time spent suspended, and a record from before
a wall-clock step (NTP) uses today's offset. Messages are unescaped (the kernel writes
non-printable bytes as ``\\xNN``) and decoded as UTF-8; ``dmesg.txt`` keeps control characters
other than tab and newline escaped so it is safe to print on a terminal.
Fallback: when /dev/kmsg cannot be opened, ``dmesg -S -r`` (util-linux through syslog(2);
``-S`` because util-linux 2.38 prints wrong raw priorities for non-kernel facilities when it
reads /dev/kmsg itself). Those records have no sequence numbers (``seq`` is then the line
index, ``seq_synthetic``) and start after the last ``dmesg -C``. ``dmesg.json``'s ``method``
says which was used.
Options: ``[collectors.dmesg] kmsg_path`` (default ``/dev/kmsg``), ``max_records``
(default 1,000,000; a kernel logging faster than we read cannot keep us forever).
"""
from __future__ import annotations

import errno
import itertools
import os
import re
import time
from datetime import datetime, timezone
from typing import Any

from agent.collector import Collector, Option, Scope, Skip, which

LEVELS = ("emerg", "alert", "crit", "err", "warn", "notice", "info", "debug")
FACILITIES = ("kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
              "authpriv", "ftp", "ntp", "security", "console", "cron2",
              "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7")
READ_SIZE = 16384        # one record per read(); the kernel's longest record is 8 KiB
_ESC = re.compile(rb"\\x([0-9a-fA-F]{2})")
_CTRL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def unescape(text: str) -> str:
    """Undo kmsg's ``\\xNN`` escaping (applied to bytes < 0x20, >= 0x7f and the backslash itself).

    The escaped bytes are put back as bytes first, so a UTF-8 character escaped byte by byte
    (``\\xe2\\x82\\xac``) becomes one character again; invalid UTF-8 becomes U+FFFD.
    """
    if "\\x" not in text:
        return text
    raw = _ESC.sub(lambda m: bytes([int(m.group(1), 16)]), text.encode("utf-8", "surrogateescape"))
    return raw.decode("utf-8", "replace")


def parse_record(record: str) -> dict[str, Any] | None:
    """One /dev/kmsg record to a dict.

    Args: record: ``prio,seq,usec,flags[,caller=..][,...];message`` then zero or more
        continuation lines `` KEY=value`` (no trailing newline needed).
    Returns: {seq, level, facility, usec, flags, caller?, message, fields}; None when the
        header does not parse.
    Errors: none.
    """
    head, sep, rest = record.partition(";")
    if not sep:
        return None
    parts = head.split(",")
    try:
        prio, seq, usec = int(parts[0]), int(parts[1]), int(parts[2])
    except (ValueError, IndexError):
        return None
    lines = rest.split("\n")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        if line.startswith(" ") and "=" in line:
            k, _, v = line[1:].partition("=")
            fields[k] = unescape(v)
    fac = prio >> 3
    rec: dict[str, Any] = {"seq": seq, "level": LEVELS[prio & 7],
                           "facility": FACILITIES[fac] if fac < len(FACILITIES) else str(fac),
                           "usec": usec, "flags": parts[3] if len(parts) > 3 else ""}
    for extra in parts[4:]:
        k, _, v = extra.partition("=")
        if k == "caller" and v:
            rec["caller"] = v
    rec["message"] = unescape(lines[0])
    rec["fields"] = fields
    return rec


def parse_kmsg(text: str) -> list[dict[str, Any]]:
    """Parse concatenated /dev/kmsg reads.

    Args: text: records, each ``header;message\\n`` plus continuation lines starting with a space.
    Returns: the parsed records in order; lines that belong to no valid header are dropped.
    Errors: none.
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


def parse_dmesg_raw(text: str) -> str:
    """``dmesg -r`` output (``<prio>[  sec.usec] message``) to kmsg records with line-index seqs."""
    out = []
    for i, line in enumerate(text.splitlines()):
        if not line.startswith("<") or ">" not in line:
            continue
        prio, _, rest = line[1:].partition(">")
        if not prio.isdigit():
            continue
        usec = 0
        if rest.startswith("["):
            stamp, _, rest = rest[1:].partition("]")
            try:
                sec, _, frac = stamp.strip().partition(".")
                usec = int(sec) * 1_000_000 + int((frac + "000000")[:6])
            except ValueError:
                pass
            rest = rest[1:] if rest.startswith(" ") else rest
        out.append(f"{prio},{i},{usec},-;{rest}\n")
    return "".join(out)


def find_gaps(records: list[dict[str, Any]]) -> list[dict[str, int]]:
    """Holes in the sequence numbers: records overwritten while we read (or a seq reset)."""
    gaps = []
    for a, b in itertools.pairwise(records):
        if b["seq"] != a["seq"] + 1:
            gaps.append({"after_seq": a["seq"], "next_seq": b["seq"], "lost": max(0, b["seq"] - a["seq"] - 1)})
    return gaps


def realtime_offset() -> float:
    """Seconds to add to a CLOCK_MONOTONIC time to get the wall clock (UTC)."""
    return time.clock_gettime(time.CLOCK_REALTIME) - time.clock_gettime(time.CLOCK_MONOTONIC)


def iso_from_usec(usec: int, offset: float) -> str:
    t = datetime.fromtimestamp(usec / 1e6 + offset, timezone.utc)
    return t.isoformat(timespec="microseconds").replace("+00:00", "Z")


def read_kmsg(path: str = "/dev/kmsg", *, max_records: int = 1_000_000,
              deadline: float | None = None) -> tuple[bytes, int, bool]:
    """Every record available now, read without blocking and without consuming anything.

    Returns: (raw bytes as read, number of EPIPE overwrites met, whether we stopped early
        at ``max_records``/``deadline``).
    Errors: OSError when the device cannot be opened or read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    chunks: list[bytes] = []
    epipes = 0
    stopped = False
    try:
        while True:
            if len(chunks) >= max_records or (
                    deadline is not None and len(chunks) % 1024 == 0 and time.monotonic() > deadline):
                stopped = True
                break
            try:
                b = os.read(fd, READ_SIZE)
            except BlockingIOError:
                break                      # EAGAIN: no more records
            except OSError as exc:
                if exc.errno == errno.EPIPE:   # overwritten before we read them; the position moved on
                    epipes += 1
                    if epipes > 1000:
                        stopped = True
                        break
                    continue
                raise
            if not b:
                break
            chunks.append(b if b.endswith(b"\n") else b + b"\n")
    finally:
        os.close(fd)
    return b"".join(chunks), epipes, stopped


def format_line(r: dict[str, Any]) -> str:
    """One dmesg.txt line; control characters other than tab and newline stay escaped."""
    msg = _CTRL.sub(lambda m: f"\\x{ord(m.group()):02x}", r["message"])
    return f"[{r['time']}] {r['facility']}.{r['level']}: {msg}\n"


def collect(ctx) -> None:
    path = str(ctx.options.get("kmsg_path", "/dev/kmsg"))
    max_records = int(ctx.options.get("max_records", 1_000_000))
    offset = realtime_offset()
    seq_synthetic = False
    try:
        raw, epipes, stopped = read_kmsg(path, max_records=max_records, deadline=ctx.deadline - 1.0)
        method = path
    except OSError as exc:
        why = f"{path} unusable ({exc.strerror or exc})"
        if not which("dmesg"):
            raise Skip(f"{why} and no dmesg command") from None
        res = ctx.run(["dmesg", "-S", "-r"], stdout="dmesg-raw.txt", timeout_s=min(10.0, ctx.remaining()))
        if not res.ok:
            detail = f", {res.error}" if res.error else ""
            raise Skip(f"{why} and `dmesg -S -r` failed (exit {res.returncode}{detail})") from None
        text = parse_dmesg_raw((ctx.out / "dmesg-raw.txt").read_text("utf-8", "replace"))
        raw, epipes, stopped = text.encode(), 0, False
        method, seq_synthetic = "dmesg -S -r", True
        ctx.note(kmsg_error=why)
    ctx.write_bytes("kmsg.txt", raw)
    records = parse_kmsg(raw.decode("utf-8", "replace"))
    for r in records:
        r["time"] = iso_from_usec(r["usec"], offset)
    gaps = [] if seq_synthetic else find_gaps(records)
    ctx.write_text("dmesg.txt", "".join(format_line(r) for r in records))
    first = records[0]["seq"] if records else None
    ctx.write_json("dmesg.json", {
        "method": method,
        "clock": "time = usec (kernel clock, like CLOCK_MONOTONIC) + (CLOCK_REALTIME - CLOCK_MONOTONIC) at capture",
        "realtime_offset_s": round(offset, 6),
        "boot_time": iso_from_usec(0, offset),
        "seq_synthetic": seq_synthetic,
        "first_seq": first, "last_seq": records[-1]["seq"] if records else None,
        # seq counts every record since boot: a first seq above 0 means older ones were overwritten
        "overwritten_before_capture": first if first and not seq_synthetic else 0,
        "gaps": gaps, "epipe": epipes, "stopped_early": stopped,
        "records": records,
    })
    if stopped:
        ctx.partial(f"stopped reading after {len(records)} records (max_records or deadline): the kernel kept logging")
    ctx.note(method=method, records=len(records), gaps=len(gaps))


OPTIONS = {
    "kmsg_path": Option("/dev/kmsg", str, "The kernel log device read."),
    "max_records": Option(1_000_000, int, "Most records read (a kernel logging faster than we read cannot keep "
                          "us forever)."),
}

COLLECTOR = Collector(
    name="dmesg", summary="kernel ring buffer from /dev/kmsg (never cleared), with UTC times and fields",
    scope=Scope.HOST, collect=collect, timeout_s=10, volatility=10,
    check=lambda: None if os.access("/dev/kmsg", os.R_OK) or which("dmesg")
    else "neither /dev/kmsg readable nor dmesg installed", options=OPTIONS)
