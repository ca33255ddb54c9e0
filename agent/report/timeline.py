"""The incident's timeline: kernel messages, log lines, the capture and its trigger on one UTC axis.

Sources, per bundle (host):
- the incident trigger (``manifest.trigger.at``) and the capture itself (start,
  end, collectors that failed or timed out);
- kernel messages from ``dmesg.json`` at level warning or worse, and every record a
  finding rests on (whenever it was); the lines the kernel prints after a headline (a
  backtrace, registers, an OOM report's memory statistics and task table) fold into the
  headline's row;
- log lines from the captured tails and the journal whose timestamp falls in the
  window and that say something notable (error, fail, timeout, killed, refused...).
  Timestamps are parsed from ISO 8601 / RFC 3339 (``2026-11-23T10:15:00.123Z``,
  ``2026-11-23 10:15:00,123``), the journal's ``short-iso-precise``, syslog
  (``Nov 23 10:15:00``, the year taken from the capture), Go's ``2026/11/23 10:15:00``,
  the common log format (``[23/Nov/2026:10:15:00 +0000]``) and JSON lines
  (``time``/``timestamp``/``ts``/``@timestamp``). A time without a zone is read as UTC
  and marked so;
- findings that carry a time but no kernel record (a retransmit burst, a collector
  failure).
Repeats of one message (digits aside) within a minute fold into one row with a count.
Everything is merged across hosts and sorted. ``markdown_table`` renders the rows as
the postmortem template's "Timeline (UTC)" table: ``| Time | Host | Source | Event |``.
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from agent.report import history
from agent.report.loader import Bundle
from agent.report.model import CRITICAL, INFO, RANK, WARNING, Event, Finding, parse_iso

DEFAULT_WINDOW_S = 3600
FOLD_S = 60
MAX_PER_SOURCE = 300
KERNEL_LEVELS = {"emerg": CRITICAL, "alert": CRITICAL, "crit": CRITICAL, "err": WARNING, "warn": INFO}
NOTABLE = re.compile(r"\b(?:emerg(?:ency)?|alert|crit(?:ical)?|fatal|panic(?:ked)?|err(?:or|ors)?|exception|"
                     r"traceback|fail(?:s|ed|ure|ing)?|timed? ?out|timeout|refused|denied|killed|oom|out of memory|"
                     r"segfault|unavailable|unreachable|deadlock|reset by peer|too many open files|no space left|"
                     r"warn(?:ing)?)\b", re.I)
SEVERE_WORDS = re.compile(r"\b(?:emerg|alert|crit(?:ical)?|fatal|panic|oom|out of memory|killed|deadlock)\b", re.I)
ERROR_WORDS = re.compile(r"\b(?:err(?:or)?|exception|traceback|fail(?:ed|ure)?|refused|timed? ?out|timeout)\b", re.I)
MONTHS = {m: i + 1 for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())}

_ISO = re.compile(r"^\W{0,3}(?:<\d+>1 )?(?P<d>\d{4}-\d{2}-\d{2})[T ](?P<t>\d{2}:\d{2}:\d{2})(?:[.,](?P<f>\d{1,9}))?"
                  r"\s?(?P<z>Z|UTC|GMT|[+-]\d{2}:?\d{2})?")
_SLASH = re.compile(r"^\W{0,3}(?P<d>\d{4}/\d{2}/\d{2}) (?P<t>\d{2}:\d{2}:\d{2})(?:\.(?P<f>\d{1,9}))?")
_SYSLOG = re.compile(r"^(?P<mon>[A-Z][a-z]{2}) {1,2}(?P<day>\d{1,2}) (?P<t>\d{2}:\d{2}:\d{2})(?:\.(?P<f>\d{1,9}))?\b")
_CLF = re.compile(r"\[(?P<day>\d{2})/(?P<mon>[A-Z][a-z]{2})/(?P<y>\d{4}):(?P<t>\d{2}:\d{2}:\d{2}) "
                  r"(?P<z>[+-]\d{4})\]")
_DIGITS = re.compile(r"\d+")
JSON_TIME_KEYS = ("time", "timestamp", "ts", "@timestamp", "datetime", "date", "asctime", "t")
JSON_MSG_KEYS = ("msg", "message", "MESSAGE", "event", "log")
JSON_LEVEL_KEYS = ("level", "severity", "lvl", "levelname", "loglevel", "PRIORITY")


def _frac(f: str | None) -> int:
    return int((f or "0")[:6].ljust(6, "0"))


def _zone(z: str | None) -> tuple[timezone, bool]:
    if not z or z in ("Z", "UTC", "GMT"):
        return timezone.utc, not z
    sign = -1 if z[0] == "-" else 1
    z = z[1:].replace(":", "")
    return timezone(sign * timedelta(hours=int(z[:2]), minutes=int(z[2:4]))), False


def parse_time(line: str, year_hint: int) -> tuple[datetime, bool] | None:
    """The timestamp a log line starts with, as (UTC time, zone assumed); None if it has none we know."""
    m = _ISO.match(line)
    if m:
        tz, assumed = _zone(m.group("z"))
        try:
            dt = datetime.fromisoformat(f"{m.group('d')}T{m.group('t')}").replace(microsecond=_frac(m.group("f")),
                                                                                   tzinfo=tz)
        except ValueError:
            return None
        return dt.astimezone(timezone.utc), assumed
    m = _SLASH.match(line)
    if m:
        try:
            dt = datetime.strptime(f"{m.group('d')} {m.group('t')}", "%Y/%m/%d %H:%M:%S")
        except ValueError:
            return None
        return dt.replace(microsecond=_frac(m.group("f")), tzinfo=timezone.utc), True
    m = _SYSLOG.match(line)
    if m and m.group("mon").lower() in MONTHS:
        try:
            dt = datetime(year_hint, MONTHS[m.group("mon").lower()], int(m.group("day")),
                          *(int(x) for x in m.group("t").split(":")), _frac(m.group("f")), tzinfo=timezone.utc)
        except ValueError:
            return None
        return dt, True
    m = _CLF.search(line[:200])
    if m and m.group("mon").lower() in MONTHS:
        tz, _ = _zone(m.group("z"))
        try:
            dt = datetime(int(m.group("y")), MONTHS[m.group("mon").lower()], int(m.group("day")),
                          *(int(x) for x in m.group("t").split(":")), tzinfo=tz)
        except ValueError:
            return None
        return dt.astimezone(timezone.utc), False
    if line.startswith("{"):
        try:
            obj = json.loads(line)
        except ValueError:
            return None
        if isinstance(obj, dict):
            for k in JSON_TIME_KEYS:
                v = obj.get(k)
                if isinstance(v, str):
                    got = parse_time(v, year_hint)
                    if got:
                        return got
                elif isinstance(v, (int, float)) and not isinstance(v, bool) and 1e9 < v < 1e13:
                    return datetime.fromtimestamp(v / 1000 if v > 1e11 else v, timezone.utc), False
    return None


def _json_line(line: str) -> tuple[str, str] | None:
    """(message, level) of a JSON log line."""
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    msg = next((str(obj[k]) for k in JSON_MSG_KEYS if k in obj), line)
    level = next((str(obj[k]) for k in JSON_LEVEL_KEYS if k in obj), "")
    return msg, level


def line_severity(text: str, level: str = "") -> str | None:
    lv = level.lower()
    if lv in ("debug", "trace", "info", "notice", "6", "7", "5"):
        return None
    if lv in ("fatal", "critical", "crit", "emerg", "alert", "panic", "0", "1", "2"):
        return CRITICAL
    if lv in ("error", "err", "3"):
        return WARNING
    if lv in ("warn", "warning", "4"):
        return INFO
    if not NOTABLE.search(text):
        return None
    if SEVERE_WORDS.search(text):
        return CRITICAL
    if ERROR_WORDS.search(text):
        return WARNING
    return INFO


def _strip_prefix(line: str) -> str:
    """The log line without its leading timestamp (the Time column has it)."""
    for rx in (_ISO, _SLASH, _SYSLOG):
        m = rx.match(line)
        if m:
            return line[m.end():].lstrip(" :-|]")
    return line


class _Window:
    def __init__(self, b: Bundle, window_s: float):
        m = b.manifest
        self.start = parse_iso(m.clocks.start_utc)
        self.end = parse_iso(m.clocks.end_utc) or self.start
        self.trigger = parse_iso(m.trigger.at if m.trigger else None)
        anchor = min(t for t in (self.start, self.trigger) if t) if (self.start or self.trigger) else None
        self.lo = anchor - timedelta(seconds=window_s) if anchor else None
        self.hi = (self.end or anchor) + timedelta(minutes=5) if anchor else None
        self.year = (self.start or self.trigger or datetime.now(timezone.utc)).year

    def inside(self, t: datetime) -> bool:
        return self.lo is None or (self.lo <= t <= self.hi)  # type: ignore[operator]


def capture_events(b: Bundle) -> list[Event]:
    m, host = b.manifest, b.host
    out: list[Event] = []
    trig, inc = m.trigger, m.incident
    t = parse_iso(trig.at) if trig else None
    if trig and t:
        what = f"Incident {inc.id}" + (f" \"{inc.title}\"" if inc.title else "") \
            + f" triggered a capture ({trig.kind or '?'}" + (f", {trig.reason}" if trig.reason else "") \
            + (f", by {trig.by}" if trig.by else "") + ")"
        out.append(Event(t, host, "incident", what, INFO, file="manifest.json"))
    start, end = parse_iso(m.clocks.start_utc), parse_iso(m.clocks.end_utc)
    targets = m.targets
    if start:
        out.append(Event(start, host, "goldenhour", f"Capture started (profile {m.profile or '?'}, "
                         f"{len(targets)} target process{'es' if len(targets) != 1 else ''})", INFO,
                         file="manifest.json"))
    statuses: dict[str, int] = {}
    for c in m.collectors:
        st = c.status
        statuses[st] = statuses.get(st, 0) + 1
        if st in ("failed", "timeout", "interrupted"):
            ct = parse_iso(c.started_at) or start
            if ct:
                ct = ct + timedelta(seconds=c.duration_s)
                out.append(Event(ct, host, "goldenhour", f"Collector {c.key or c.name} {st}"
                                 + (f": {c.reason}" if c.reason else ""), WARNING, file="manifest.json"))
    if end:
        summary = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
        out.append(Event(end, host, "goldenhour", f"Capture ended: bundle {b.name} ({summary})", INFO,
                         file="manifest.json"))
    return out


# the lines the kernel prints after a headline (an OOM report, a warning, a hung task, an Oops): a backtrace,
# registers, memory statistics, the task table. They are folded into the headline's row.
FRAGMENT = re.compile(r"^(?:\s|\? |Call Trace:|<(?:/?TASK|/?IRQ|/?NMI)>|RIP:|RSP:|R[A-Z0-9]{2}: |[FGCE]S: |CR[0-4]: |"
                      r"DR[0-7]: |Code: |Hardware name:|Modules linked in:|CPU: \d+ (?:UID|PID)|Workqueue: |"
                      r"Mem-Info:|Node \d+ |DMA(?:32)?[: ]|Normal[: ]|Movable[: ]|HighMem[: ]|lowmem_reserve|"
                      r"active_anon:|Free swap|Total swap|\d+ (?:pages|total pagecache)|memory: usage|"
                      r"memory\+swap: usage|kmem: usage|swap: usage|Memory cgroup stats for|Tasks state|"
                      r"\[\s*pid\s*\]|\[\s*\d+\]\s+\d|oom-kill:|[a-z_]+ \d+$|---\[ end trace|Showing busy)")
FOLD_WITHIN_US = 2_000_000


def kernel_events(b: Bundle, win: _Window, flagged: dict[tuple[str, Any], str]) -> list[Event]:
    """Kernel records worth a row. The backtrace and statistics lines that follow a headline (right after it,
    or within 2 s) are folded into its row (``folded``) unless a finding rests on them; such a line is never a
    row of its own (its headline outside the window or interrupted by another message: dropped)."""
    from agent.report.rules._util import DMESG_TXT, dmesg_records
    out = []
    head: Event | None = None
    head_usec: float | None = None
    chained = False                 # the record before was the headline or one of its fragments
    for r in dmesg_records(b):
        msg = str(r.get("message", ""))
        usec = r.get("usec") if isinstance(r.get("usec"), (int, float)) else None
        sev = flagged.get((b.host, r.get("seq")))
        if sev is None and FRAGMENT.match(msg):
            # never a row of its own: folded into the headline it follows (adjacent records, or within
            # FOLD_WITHIN_US of it), and dropped when its headline is outside the window or was not a row
            if head is not None and (chained or (usec is not None and head_usec is not None
                                                       and 0 <= usec - head_usec <= FOLD_WITHIN_US)):
                head.folded += 1
            chained = True
            continue
        chained = False
        head, head_usec = None, usec
        t = parse_iso(r.get("time"))
        if t is None:
            continue
        if sev is None:
            if not win.inside(t):
                continue
            sev = KERNEL_LEVELS.get(str(r.get("level")))
            if sev is None:
                continue
        txt = b.has(DMESG_TXT)
        head = Event(t, b.host, "dmesg", msg.split("\n")[0], sev,
                     file=DMESG_TXT if txt else "collectors/dmesg/dmesg.json", line=r.get("_line") if txt else None,
                     ident=f"{b.manifest.host.boot_id}/{r.get('seq')}", folded=msg.count("\n"))
        out.append(head)
        chained = True
    return out


def _log_files(b: Bundle) -> list[tuple[str, str]]:
    """(bundle file, source name) of the captured log tails and the journal."""
    out = []
    logs = b.json("collectors/logs/logs.json")
    entries = logs.get("files") if isinstance(logs, dict) else None
    known = set()
    for e in entries if isinstance(entries, list) else []:
        if isinstance(e, dict) and e.get("file"):
            rel = f"collectors/logs/{e['file']}"
            if b.has(rel):
                out.append((rel, str(e.get("path") or e["file"]).rsplit("/", 1)[-1]))
                known.add(rel)
    for rel in b.files("collectors/logs/files/*"):
        if rel not in known:
            out.append((rel, rel.rsplit("/", 1)[-1]))
    if b.has("collectors/logs/journal.txt"):
        out.append(("collectors/logs/journal.txt", "journal"))
    return out


def log_events(b: Bundle, win: _Window) -> list[Event]:
    out = []
    for rel, source in _log_files(b):
        text = b.text(rel)
        if not text:
            continue
        first = b.first_line(rel)
        for i, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            got = parse_time(line, win.year)
            if got is None:
                continue
            t, assumed = got
            if assumed and win.hi is not None and t > win.hi + timedelta(days=2) and source != "journal":
                t = t.replace(year=t.year - 1)       # a syslog line from December read in January
            if not win.inside(t):
                continue
            level = ""
            msg = line
            if line.startswith("{"):
                j = _json_line(line)
                if j:
                    msg, level = j
            else:
                msg = _strip_prefix(line)
            if source == "journal":
                parts = msg.split(" ", 2)               # "<host> <identifier>[pid]: <message>"
                if len(parts) == 3:
                    if parts[1].startswith("kernel"):
                        continue                        # the kernel's lines are in dmesg already
                    msg = f"{parts[1]} {parts[2]}"
            sev = line_severity(msg, level)
            if sev is None:
                continue
            out.append(Event(t, b.host, source, msg.strip(), sev, file=rel, line=first + i, assumed_utc=assumed))
    return out


def finding_events(findings: Iterable[Finding]) -> list[Event]:
    out = []
    for f in findings:
        if f.time is None or any(e.file.startswith("collectors/dmesg/") for e in f.evidence):
            continue
        if f.rule == "collector_status":
            continue                                    # capture_events has them
        ev = f.evidence[0] if f.evidence else None
        out.append(Event(f.time, f.host, f.rule, f.title, f.severity, file=ev.file if ev else "",
                         line=ev.line if ev else None))
    return out


def fold(events: list[Event]) -> list[Event]:
    """Identical messages (digits aside) from one host and source within FOLD_S seconds become one row."""
    events = sorted(events, key=lambda e: e.sort_key())
    last: dict[tuple[str, str, str], Event] = {}
    out: list[Event] = []
    for e in events:
        key = (e.host, e.source, _DIGITS.sub("#", e.event))
        prev = last.get(key)
        if prev is not None and (e.time - prev.time).total_seconds() <= FOLD_S * prev.count:
            prev.count += 1
            if e.severity and (prev.severity is None or RANK[e.severity] < RANK[prev.severity]):
                prev.severity = e.severity
            continue
        last[key] = e
        out.append(e)
    return out


def _cap(events: list[Event]) -> list[Event]:
    """At most MAX_PER_SOURCE rows per host and source: the most severe, then the latest."""
    by: dict[tuple[str, str], list[Event]] = {}
    for e in events:
        by.setdefault((e.host, e.source), []).append(e)
    out = []
    for evs in by.values():
        if len(evs) > MAX_PER_SOURCE:
            evs = sorted(evs, key=lambda e: (RANK.get(e.severity or INFO, 3), -e.time.timestamp()))[:MAX_PER_SOURCE]
        out.extend(evs)
    return out


def build(bundles: list[Bundle], findings: list[Finding], window_s: float = DEFAULT_WINDOW_S) -> list[Event]:
    """All hosts' events on one UTC axis, oldest first."""
    flagged: dict[tuple[str, Any], str] = {}
    for f in findings:
        for e in f.evidence:
            if e.file.startswith("collectors/dmesg/") and e.record.startswith("seq "):
                try:
                    key = (e.host, int(e.record[4:]))
                except ValueError:
                    continue
                if key not in flagged or RANK[f.severity] < RANK[flagged[key]]:
                    flagged[key] = f.severity
    events: list[Event] = []
    for b in bundles:
        win = _Window(b, window_s)
        events += capture_events(b)
        events += fold(kernel_events(b, win, flagged))
        events += fold(log_events(b, win))
    events += finding_events(findings)
    events += history.timeline_events(bundles)      # the flight recorder's departures, processes, gaps
    # two captures of one host hold the same kernel records and log lines: keep each once
    unique: dict[tuple, Event] = {}
    for e in events:
        # kernel records by boot and seq (their wall-clock time is computed per capture, so it may differ
        # by microseconds between two captures)
        key = (e.host, e.source, e.ident) if e.ident else (e.host, e.source, e.time, e.event)
        if key not in unique or e.count > unique[key].count:
            unique[key] = e
    events = _cap(list(unique.values()))
    events.sort(key=lambda e: e.sort_key())
    return events


def _cell(text: str, limit: int = 240) -> str:
    """Text safe in one Markdown table cell: one line, pipes escaped, not too long."""
    t = " ".join(str(text).split())
    if len(t) > limit:
        t = t[:limit - 1].rstrip() + "…"
    return t.replace("\\", "\\\\").replace("|", "\\|")


HEADER = "| Time | Host | Source | Event |\n|------|------|--------|-------|\n"


def markdown_rows(events: Iterable[Event]) -> str:
    rows = []
    for e in events:
        what = e.event + (f" (×{e.count})" if e.count > 1 else "") + (f" (+{e.folded} lines)" if e.folded else "")
        rows.append(f"| {e.time.astimezone(timezone.utc).strftime('%Y-%m-%d %H:%M:%S')} | {_cell(e.host, 64)} | "
                    f"{_cell(e.source, 40)} | {_cell(what)} |\n")
    return "".join(rows)


def markdown_table(events: Iterable[Event]) -> str:
    """The postmortem template's "Timeline (UTC)" table, header included."""
    return HEADER + markdown_rows(events)
