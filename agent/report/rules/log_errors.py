"""Errors in the applications' own logs near the incident: what the service said when it failed.

Triggers: lines of the captured log tails (``collectors/logs/``; the journal is left to the
timeline) at error level or worse — a level field (``ERROR``, ``FATAL``, ``CRITICAL``, JSON
``level``) or, without one, words such as error, exception, traceback, failed, refused, timed out —
timestamped from 15 minutes before the incident's trigger (or capture) to the end of the capture.
Repeats of one message (digits aside) count as one kind. Severity: warning (the log says what
failed, rarely why: the other findings say why), one finding per log file, naming the most
frequent and the latest messages; a log file a target writes (found by the logs collector, or
listed in the target's ``fds.txt``) is that target's log, and the finding is about it.
Evidence: the first and the latest error lines (file and line number) and the commonest one.
"""
from __future__ import annotations

import re
from collections import Counter
from datetime import timedelta
from typing import Any, Iterator

from agent.report.model import CRITICAL, WARNING, Evidence, Finding, parse_iso
from agent.report.rules import Rule
from agent.report.rules._util import plural, target_label

BEFORE_S = 900
AFTER_S = 60
MAX_LINES = 200_000
_DIGITS = re.compile(r"\d+")


def _anchor(b) -> tuple[Any, Any]:
    m = b.manifest
    times = [parse_iso(m.trigger.at if m.trigger else None), parse_iso(m.clocks.start_utc)]
    times = [t for t in times if t]
    end = parse_iso(m.clocks.end_utc) or (max(times) if times else None)
    return (min(times) if times else None), end


def _owner(b, path: str) -> int | None:
    """The target that holds ``path`` open, from its descriptors' listing."""
    for rel in b.files("collectors/process/*/fds.txt"):
        text = b.text(rel) or ""
        if f"\t{path}\n" in text or text.endswith(f"\t{path}"):
            return int(rel.split("/")[2])
    return None


def evaluate(b) -> Iterator[Finding]:
    from agent.report.timeline import _json_line, _log_files, _strip_prefix, line_severity, parse_time
    anchor, end = _anchor(b)
    if anchor is None:
        return
    lo, hi = anchor - timedelta(seconds=BEFORE_S), (end or anchor) + timedelta(seconds=AFTER_S)
    logs = b.json("collectors/logs/logs.json")
    entries = [e for e in (logs.get("files") or [] if isinstance(logs, dict) else [])
               if isinstance(e, dict) and e.get("file")]
    paths = {f"collectors/logs/{e['file']}": str(e.get("path") or "") for e in entries}
    writers = {f"collectors/logs/{e['file']}": e.get("target_pid") for e in entries
               if isinstance(e.get("target_pid"), int)}
    for rel, source in _log_files(b):
        if source == "journal":
            continue
        text = b.text(rel)
        if not text:
            continue
        first = b.first_line(rel)
        hits: list[tuple[int, Any, str, str]] = []
        for i, line in enumerate(text.splitlines()[-MAX_LINES:]):
            got = parse_time(line, anchor.year)
            if got is None or not (lo <= got[0] <= hi):
                continue
            level, msg = "", _strip_prefix(line)
            if line.startswith("{"):
                j = _json_line(line)
                if j:
                    msg, level = j
            else:
                m = re.match(r"^\[?(FATAL|CRITICAL|CRIT|ERROR|ERR|WARN(?:ING)?|INFO|DEBUG|TRACE)\]?\b[:\s-]*", msg)
                if m:
                    level = m.group(1)
            sev = line_severity(msg, level)
            if sev not in (WARNING, CRITICAL):
                continue
            hits.append((first + i, got[0], msg.strip(), sev))
        if not hits:
            continue
        kinds = Counter(_DIGITS.sub("#", h[2])[:200] for h in hits)
        top, top_n = kinds.most_common(1)[0]
        example = next(h for h in hits if _DIGITS.sub("#", h[2])[:200] == top)
        path = paths.get(rel) or source
        pid = writers.get(rel) or (_owner(b, path) if path.startswith("/") else None)
        who = f" of {target_label(b, pid)}" if pid else ""
        name = path.rsplit("/", 1)[-1] or path
        latest = hits[-1]
        yield Finding(
            WARNING, f"{plural(len(hits), 'error')} in the log{who} ({name}) around the incident, most often: "
                     f"{example[2][:120]}" + (f" (×{top_n})" if top_n > 1 else ""),
            f"{path} logged {plural(len(hits), 'error-level line')} ({plural(len(kinds), 'kind')}) between "
            f"{hits[0][1]:%H:%M:%S} and {latest[1]:%H:%M:%S} UTC: what the application saw failing. The latest: "
            f"{latest[2][:300]}. The log says what failed; the other findings say why.",
            rule="log_errors", host=b.host, time=hits[0][1], last_time=latest[1],
            evidence=[Evidence(b.host, rel, line=h[0], excerpt=h[2][:300]) for h in
                      list(dict.fromkeys([hits[0], example, latest]))],
            data={"file": path, "errors": len(hits), "kinds": len(kinds), "top": example[2][:300], "top_count": top_n,
                  **({"pid": pid} if pid else {})})


RULE = Rule(name="log_errors", summary="error lines in the applications' logs around the incident",
            evaluate=evaluate, reads=("logs", "process"), severity="warning", order=60)
