"""Live progress of a capture on the terminal: which collectors run, which are done.

On a TTY the block of lines is redrawn in place; elsewhere (a log, a pipe) one
line is printed per finished collector. Output goes to stderr, so stdout stays
clean for ``--json`` and scripts.
"""
from __future__ import annotations

import re
import shutil
import sys
import time
from typing import Any, TextIO

SYMBOL = {"ok": "✔", "partial": "◐", "failed": "✘", "timeout": "⏱", "skipped": "–",
          "target_exited": "†", "running": "…"}
COLOR = {"ok": "32", "partial": "33", "failed": "31", "timeout": "31", "skipped": "90",
         "target_exited": "33", "running": "36"}


class Progress:
    def __init__(self, stream: TextIO = sys.stderr, enabled: bool = True):
        self.stream = stream
        self.enabled = enabled
        self.tty = enabled and stream.isatty()
        self.rows: dict[str, dict[str, Any]] = {}
        self.t0 = time.monotonic()
        self._drawn = 0

    def __call__(self, what: str, item: Any, result: Any) -> None:
        if not self.enabled:
            return
        if what == "tick":
            if self.tty and self.rows:
                self._redraw()
            return
        key = getattr(item, "key", str(item))
        if what == "start":
            self.rows[key] = {"status": "running", "t": time.monotonic(), "reason": ""}
        else:
            self.rows[key] = {"status": result.status, "t": self.rows.get(key, {}).get("t", time.monotonic()),
                              "dur": result.duration_s, "reason": result.reason}
            if not self.tty:
                self._line(key, self.rows[key])
        if self.tty:
            self._redraw()

    def _fmt(self, key: str, row: dict[str, Any]) -> str:
        st = row["status"]
        if st == "running":
            took = f"{time.monotonic() - row['t']:5.1f}s"
        else:
            took = f"{row.get('dur', 0):5.2f}s" if st != "skipped" else "     "
        reason = f"  {row['reason'][:70]}" if row.get("reason") else ""
        sym = SYMBOL.get(st, "?")
        if self.tty:
            return f"\x1b[{COLOR.get(st, '0')}m{sym} {st:<13}\x1b[0m {key:<28} {took}{reason}"
        return f"{sym} {st:<13} {key:<28} {took}{reason}"

    def _line(self, key: str, row: dict[str, Any]) -> None:
        print(self._fmt(key, row), file=self.stream, flush=True)

    def _redraw(self) -> None:
        out = []
        if self._drawn:
            out.append(f"\x1b[{self._drawn}F")
        width = shutil.get_terminal_size((100, 24)).columns
        lines = [_cut(self._fmt(k, r), width) for k, r in self.rows.items()]
        running = sum(1 for r in self.rows.values() if r["status"] == "running")
        lines.append(f"  {len(self.rows) - running} done, {running} running, "
                     f"{time.monotonic() - self.t0:.1f}s")
        out.extend(line + "\x1b[K\n" for line in lines)
        self.stream.write("".join(out))
        self.stream.flush()
        self._drawn = len(lines)

    def message(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream, flush=True)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _cut(line: str, width: int) -> str:
    """Cut a line to the terminal width, counting only visible characters."""
    visible = _ANSI.sub("", line)
    if len(visible) < width:
        return line
    out, n, i = [], 0, 0
    while i < len(line) and n < width - 2:
        m = _ANSI.match(line, i)
        if m:
            out.append(m.group())
            i = m.end()
            continue
        out.append(line[i])
        n += 1
        i += 1
    return "".join(out) + "…\x1b[0m"
