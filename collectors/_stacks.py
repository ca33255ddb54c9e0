"""Stack-dump parsers shared by the threads collector and the tests (not a collector).

Every parser returns threads in one shape, the one ``threads.json`` holds and the report reads:
``{"name", "tid", "state", "frames": [{"function", "file", "line", "native"?}], ...}`` with
frames innermost first. Inputs: py-spy's ``--json`` list, ``eu-stack -p PID -m -s -i``,
gdb's ``thread apply all bt``, a Go goroutine dump (``/debug/pprof/goroutine?debug=2`` or a
SIGQUIT trace) and Delve's ``goroutines -t`` (or ``-group userloc``: examples weighted by their group's total).
"""
from __future__ import annotations

import re
from typing import Any


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


# -- py-spy --------------------------------------------------------------------

def from_pyspy(data: list[dict[str, Any]]) -> list[dict[str, Any]]:
    threads = []
    for t in data if isinstance(data, list) else []:
        frames = []
        for f in t.get("frames") or []:
            file = f.get("filename") or ""
            fr: dict[str, Any] = {"function": f.get("name") or "?", "file": file,
                                  "line": f.get("line") or None}
            if not file.endswith(".py"):
                fr["native"] = True
                fr["line"] = None
            if f.get("locals"):
                fr["locals"] = f["locals"]
            frames.append(fr)
        active = t.get("active")
        threads.append({"name": t.get("thread_name") or str(t.get("thread_id")),
                        "tid": t.get("os_thread_id") or t.get("thread_id"),
                        "python_thread_id": t.get("thread_id"),
                        "state": "active" if active else "idle", "active": bool(active),
                        "owns_gil": bool(t.get("owns_gil")), "frames": frames})
    return threads


def render_pyspy(data: list[dict[str, Any]], header: str = "") -> str:
    """py-spy's own text layout, from its JSON (one ptrace pause instead of two)."""
    out = [header] if header else []
    for t in data if isinstance(data, list) else []:
        state = "active" if t.get("active") else "idle"
        gil = "+gil" if t.get("owns_gil") else ""
        tid = t.get("os_thread_id") or t.get("thread_id")
        out.append(f'Thread {tid} ({state}{gil}): "{t.get("thread_name") or ""}"')
        for f in t.get("frames") or []:
            where = f.get("short_filename") or f.get("filename") or ""
            line = f.get("line")
            out.append(f"    {f.get('name')} ({where}{':' + str(line) if line else ''})")
            for loc in f.get("locals") or []:
                out.append(f"        {loc.get('name')} = {loc.get('repr')}")
    return "\n".join(out) + "\n"


# -- eu-stack --------------------------------------------------------------------

EU_FRAME = re.compile(r"^#(\d+)\s+0x([0-9a-f]+)\s*(?P<fn>.*?)(?:\s+-\s+(?P<mod>\S.*))?$")
EU_SRC = re.compile(r"^\s{4}(?P<file>\S.*?):(?P<line>\d+)(?::\d+)?$")


def parse_eu_stack(text: str, names: dict[int, str] | None = None) -> list[dict[str, Any]]:
    names = names or {}
    threads: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    for line in text.splitlines():
        m = re.match(r"^TID (\d+):", line)
        if m:
            tid = int(m.group(1))
            cur = {"name": names.get(tid, str(tid)), "tid": tid, "state": "", "frames": []}
            threads.append(cur)
            continue
        if cur is None:
            continue
        fm = EU_FRAME.match(line)
        if fm:
            fn = fm.group("fn").strip() or f"0x{fm.group(2)}"
            cur["frames"].append({"function": fn, "file": fm.group("mod") or "", "line": None,
                                  "native": True, "module": fm.group("mod") or "", "pc": f"0x{fm.group(2)}"})
            continue
        sm = EU_SRC.match(line)
        if sm and cur["frames"]:
            cur["frames"][-1]["file"] = sm.group("file")
            cur["frames"][-1]["line"] = int(sm.group("line"))
    return threads


# -- gdb ---------------------------------------------------------------------------

GDB_THREAD = re.compile(r'^Thread \d+ \(.*?LWP (?P<tid>\d+)\)(?: "(?P<name>.*)")?\):')
GDB_FRAME = re.compile(r"^#(?P<n>\d+)\s+(?:0x[0-9a-f]+ in )?(?P<fn>[^\s(]+)\s*(?:\(.*?\))?"
                       r"(?: at (?P<file>\S+?):(?P<line>\d+))?(?: from (?P<lib>\S+))?\s*$")


def parse_gdb(text: str, names: dict[int, str] | None = None) -> list[dict[str, Any]]:
    names = names or {}
    threads: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    for line in text.splitlines():
        m = GDB_THREAD.match(line)
        if m:
            tid = int(m.group("tid"))
            cur = {"name": m.group("name") or names.get(tid, str(tid)), "tid": tid, "state": "", "frames": []}
            threads.append(cur)
            continue
        if cur is None or not line.startswith("#"):
            continue
        fm = GDB_FRAME.match(line)
        if fm:
            cur["frames"].append({"function": fm.group("fn"), "file": fm.group("file") or fm.group("lib") or "",
                                  "line": _int(fm.group("line")), "native": True})
        else:
            cur["frames"].append({"function": line.split(None, 1)[-1][:200], "file": "", "line": None, "native": True})
    threads.sort(key=lambda t: t["tid"])
    return threads


# -- Go ----------------------------------------------------------------------------

GO_HEAD = re.compile(r"^goroutine (?P<id>\d+)(?: gp=\S+ m=\S+(?: mp=\S+)?)? \[(?P<state>[^\]]*)\]:$")
GO_SRC = re.compile(r"^\t(?P<file>\S+):(?P<line>\d+)(?: \+0x[0-9a-f]+)?$")


def parse_goroutines(text: str) -> list[dict[str, Any]]:
    """A ``goroutine?debug=2`` / SIGQUIT-style dump; a goroutine is a thread here."""
    threads: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    pending_fn: str | None = None
    for line in text.splitlines():
        m = GO_HEAD.match(line)
        if m:
            state = m.group("state")
            cur = {"name": f"goroutine {m.group('id')}", "tid": int(m.group("id")),
                   "state": clean_state(state.split(",")[0]), "detail": state, "frames": []}
            threads.append(cur)
            pending_fn = None
            continue
        if cur is None:
            continue
        if not line.strip():
            cur = None
            continue
        if line.startswith("created by "):
            cur["created_by"] = line[len("created by "):].split(" in goroutine")[0].strip()
            pending_fn = None
            continue
        sm = GO_SRC.match(line)
        if sm and pending_fn is not None:
            cur["frames"].append({"function": pending_fn, "file": sm.group("file"), "line": int(sm.group("line"))})
            pending_fn = None
        elif not line.startswith("\t"):
            pending_fn = re.sub(r"\([^()]*\)$", "", line.strip())   # drop the argument list only
    for t in threads:
        top = next((f["function"] for f in t["frames"] if not f["function"].startswith("runtime.")), None)
        if top:
            t["name"] = f"{t['name']} ({top})"
    return threads


DLV_HEAD = re.compile(r"^\s*\*?\s*Goroutine (?P<id>\d+) - (?P<kind>[^:]+): (?P<loc>.*?)(?: \[(?P<state>[^\]]*)\])?\s*$")
DLV_FRAME = re.compile(r"^\s*\d+\s+0x[0-9a-f]+ in (?P<fn>\S+)\s*$")
DLV_AT = re.compile(r"^\s*at (?P<file>\S+):(?P<line>\d+)\s*$")
DLV_TOTAL = re.compile(r"^\s*Total: (?P<n>\d+)\s*$")
DLV_PROMPT = re.compile(r"^(?:\(dlv\) )+")
# what changes from one dump to the next: Delve's wait-since counter, pprof's ", N minutes"
VOLATILE_STATE = re.compile(r"(?:,\s*\d+\s+minutes?|\s+\d{4,})\s*$")


def clean_state(state: str) -> str:
    """A goroutine's wait state without its volatile tail (``chan send 2395092582988`` -> ``chan send``)."""
    return VOLATILE_STATE.sub("", state.strip())


def parse_dlv_goroutines(text: str) -> list[dict[str, Any]]:
    """Delve's ``goroutines -t`` output, or ``goroutines -group userloc -t``: up to five example goroutines per
    group and the group's ``Total: N``; the first example then stands for the rest (``weight``)."""
    threads: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    group_start = 0
    for line in text.splitlines():
        line = DLV_PROMPT.sub("", line)
        tm = DLV_TOTAL.match(line)
        if tm:
            examples = threads[group_start:]
            if examples:
                examples[0]["weight"] = max(1, int(tm.group("n")) - (len(examples) - 1))
            group_start = len(threads)
            cur = None
            continue
        m = DLV_HEAD.match(line)
        if m:
            cur = {"name": f"goroutine {m.group('id')}", "tid": int(m.group("id")),
                   "state": clean_state(m.group("state") or ""), "detail": m.group("loc"), "frames": []}
            threads.append(cur)
            continue
        if cur is None:
            continue
        fm = DLV_FRAME.match(line)
        if fm:
            cur["frames"].append({"function": fm.group("fn"), "file": "", "line": None})
            continue
        am = DLV_AT.match(line)
        if am and cur["frames"]:
            cur["frames"][-1]["file"] = am.group("file")
            cur["frames"][-1]["line"] = int(am.group("line"))
    for t in threads:
        top = next((f["function"] for f in t["frames"] if not f["function"].startswith("runtime.")), None)
        if top:
            t["name"] = f"{t['name']} ({top})"
    return threads
