"""The daemon's log lines: one ``key=value`` line per event on stderr.

``ts=… level=info event=webhook tracker=pagerduty status=202 …``: grep- and
journald-friendly. Under systemd (``$JOURNAL_STREAM`` set) the timestamp is left
to the journal and each line starts with a ``<N>`` priority prefix (sd-daemon(3)).
Every part of the daemon logs through ``kv(level, event, msg, **fields)``; values
with spaces, quotes or ``=`` are JSON-quoted. Secrets are never passed here.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

log = logging.getLogger("goldenhour.daemon")
PRIO = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def _kv_value(v: Any) -> str:
    s = str(v)
    if s == "" or any(c in s for c in ' "=\n\t'):
        return json.dumps(s)
    return s


class KVFormatter(logging.Formatter):
    """``ts=… level=info event=webhook tracker=pagerduty …``: one line, grep- and journald-friendly."""

    def __init__(self, journal: bool = False):
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "kv", None) or {}
        parts = [] if self.journal else [f"ts={time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(record.created))}"
                                         f".{int(record.msecs):03d}Z"]
        parts.append(f"level={record.levelname.lower()}")
        if "event" not in fields:
            parts.append(f"event={record.name.rsplit('.', 1)[-1]}")
        msg = record.getMessage()
        for k, v in fields.items():
            parts.append(f"{k}={_kv_value(v)}")
        if msg:
            parts.append(f"msg={_kv_value(msg)}")
        if record.exc_info:
            parts.append(f"exc={_kv_value(self.formatException(record.exc_info))}")
        line = " ".join(parts)
        return f"<{PRIO.get(record.levelno, 6)}>{line}" if self.journal else line


def setup_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KVFormatter(journal=bool(os.environ.get("JOURNAL_STREAM"))))
    for name in ("goldenhour", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(level if name == "goldenhour" else logging.WARNING)
        lg.propagate = False


def kv(level: int, event: str, msg: str = "", **fields: Any) -> None:
    log.log(level, msg, extra={"kv": {"event": event, **fields}})
