"""JVM helpers for the threads and heap collectors (not a collector).

- ``perfdata(pid)``: the JVM's hsperfdata counters (``/proc/PID/root/tmp/hsperfdata_*/<NSpid>``),
  read without touching the JVM: safepoint count and time (to measure the pause a jcmd
  operation caused), heap used (to size a heap dump), and whether the VM finished initialising.
- ``attach_listener_running(pid)``: whether the JVM's Attach Listener thread exists, i.e.
  whether an attach makes the JVM create a thread (``agent.preflight``).
- ``attach(pid, nspid, command)``: HotSpot's attach protocol over the JVM's own Unix socket,
  used only when the socket already exists and the JVM has no SIGQUIT handler (``-Xrs``):
  it never sends a signal, whereas jcmd would SIGQUIT such a JVM (fatal) if the socket had
  disappeared in between.
- ``parse_thread_print(text)``: ``jcmd PID Thread.print [-l]`` into threads, frames, locks and
  the deadlocks the JVM reported.
"""
from __future__ import annotations

import glob
import os
import re
import socket
import struct
from typing import Any

PERF_MAGIC = 0xCAFEC0C0


def perfdata_path(pid: int, nspid: int) -> str | None:
    hits = glob.glob(f"/proc/{pid}/root/tmp/hsperfdata_*/{nspid}")
    return hits[0] if hits else None


def parse_perfdata(data: bytes) -> dict[str, Any]:
    """Decode an hsperfdata file (PerfDataPrologue + PerfDataEntry records) into name -> value."""
    if len(data) < 32 or struct.unpack(">I", data[:4])[0] != PERF_MAGIC:
        raise ValueError("not an hsperfdata file")
    e = "<" if data[4] == 1 else ">"
    _used, _overflow, _mod, entry_off, n = struct.unpack(e + "iiqii", data[8:32])
    out: dict[str, Any] = {}
    off = entry_off
    for _ in range(max(0, n)):
        if off + 20 > len(data):
            break
        length, name_off, vlen, dtype, _flags, _units, _var, data_off = struct.unpack(
            e + "iiibbbbi", data[off:off + 20])
        if length <= 0:
            break
        name_end = data.index(b"\0", off + name_off)
        name = data[off + name_off:name_end].decode("ascii", "replace")
        p = off + data_off
        if dtype == ord("J") and vlen == 0:
            out[name] = struct.unpack(e + "q", data[p:p + 8])[0]
        elif dtype == ord("B"):
            raw = data[p:p + max(vlen, 0)]
            out[name] = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        off += length
    return out


def perfdata(pid: int, nspid: int) -> dict[str, Any] | None:
    path = perfdata_path(pid, nspid)
    if not path:
        return None
    try:
        with open(path, "rb") as fh:
            return parse_perfdata(fh.read())
    except (OSError, ValueError, struct.error):
        return None


def safepoint_s(perf: dict[str, Any] | None) -> float | None:
    """Total time the JVM spent in safepoints so far (stop-the-world), in seconds."""
    if not perf or "sun.rt.safepointTime" not in perf:
        return None
    freq = perf.get("sun.os.hrt.frequency") or 1_000_000_000
    return perf["sun.rt.safepointTime"] / freq


def pause_between(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any] | None:
    """Stop-the-world time and safepoints between two perfdata readings."""
    a, b = safepoint_s(before), safepoint_s(after)
    if a is None or b is None:
        return None
    return {"stopped_s": round(b - a, 6),
            "safepoints": int(after.get("sun.rt.safepoints", 0)) - int(before.get("sun.rt.safepoints", 0)),
            "how": "JVM perf counters sun.rt.safepointTime/sun.rt.safepoints (hsperfdata) before and after"}


def heap_used(perf: dict[str, Any] | None) -> int | None:
    """Bytes used in the Java heap (all generations' spaces), from perf counters."""
    if not perf:
        return None
    total, found = 0, False
    for k, v in perf.items():
        if re.fullmatch(r"sun\.gc\.generation\.\d+\.space\.\d+\.used", k) and isinstance(v, int):
            total += v
            found = True
    return total if found else None


def socket_path(pid: int, nspid: int) -> str:
    return f"/proc/{pid}/root/tmp/.java_pid{nspid}"


def attach_listener_running(pid: int) -> bool:
    """True if the JVM's "Attach Listener" thread exists (an attach then starts no thread)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm", "rb") as fh:
                if fh.read().strip() == b"Attach Listener":
                    return True
        except OSError:
            continue
    return False


def attach(pid: int, nspid: int, command: str, timeout_s: float = 30.0) -> tuple[int, str]:
    """Run a jcmd command through an existing attach socket; never signals. Returns (rc, output)."""
    path = socket_path(pid, nspid)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no attach socket {path}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(path)
        s.sendall(b"1\0jcmd\0" + command.encode() + b"\0\0\0")
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    data = b"".join(chunks).decode("utf-8", "replace")
    head, _, rest = data.partition("\n")
    try:
        rc = int(head.strip())
    except ValueError:
        return -1, data
    return rc, rest


# -- Thread.print ---------------------------------------------------------------

HEADER = re.compile(r'^"(?P<name>.*)" (?:#(?P<jtid>\d+) )?(?P<rest>.*?)\s*$')
FRAME = re.compile(r"^\s+at (?P<fn>[^(]+)\((?P<src>[^)]*)\)")
LOCKLINE = re.compile(r"^\s+- (?P<what>waiting to lock|locked|waiting on|parking to wait for|eliminated)\s+"
                      r"<(?P<id>0x[0-9a-f]+)>(?: \(a (?P<cls>[^)]+)\))?")
OWNABLE = re.compile(r"^\s+- <(?P<id>0x[0-9a-f]+)> \(a (?P<cls>[^)]+)\)")


def _frame(fn: str, src: str) -> dict[str, Any]:
    file, line = src, None
    if "/" in file:                       # java.base@17.0.15/Thread.java:840
        file = file.split("/", 1)[1]
    if ":" in file:
        file, _, ln = file.rpartition(":")
        line = int(ln) if ln.isdigit() else None
    if file in ("Native Method", "Unknown Source"):
        return {"function": fn, "file": "", "line": None, "native": file == "Native Method"}
    return {"function": fn, "file": file, "line": line}


def parse_thread_print(text: str) -> dict[str, Any]:
    """Threads (name, tid = OS thread id, java_tid, daemon, state, frames, locks) and deadlocks."""
    threads: list[dict[str, Any]] = []
    deadlocks: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    in_ownable = False
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith(("Found one Java-level deadlock", "Found a total of")):
            block = []
            i += 1
            while i < len(lines) and not lines[i].startswith("Java stack information"):
                block.append(lines[i])
                i += 1
            names = [m.group(1) for m in (re.match(r'^"(.*)":$', b) for b in block) if m]
            deadlocks.append({"threads": names, "text": "\n".join(b for b in block if b.strip("= "))})
            while i < len(lines) and not lines[i].startswith("Found "):   # skip the repeated stacks
                i += 1
            continue
        m = HEADER.match(line)
        if m and ("tid=" in line or "nid=" in line):
            rest = m.group("rest")
            nid = re.search(r"nid=(0x[0-9a-f]+|\d+)", rest)
            state_text = re.sub(r"^.*?nid=\S+\s*", "", rest)
            state_text = re.sub(r"\s*\[0x[0-9a-f]+\]\s*$", "", state_text).strip()
            cur = {"name": m.group("name"),
                   "tid": int(nid.group(1), 0) if nid else None,
                   "java_tid": int(m.group("jtid")) if m.group("jtid") else None,
                   "daemon": " daemon " in f" {rest} ",
                   "java_thread": m.group("jtid") is not None,
                   "state": state_text, "detail": state_text, "frames": [], "holds": [], "locks": []}
            threads.append(cur)
            in_ownable = False
        elif cur is not None:
            s = line.strip()
            if s.startswith("java.lang.Thread.State:"):
                cur["state"] = s.split(":", 1)[1].strip()
            elif (fm := FRAME.match(line)):
                cur["frames"].append(_frame(fm.group("fn").strip(), fm.group("src")))
            elif (lm := LOCKLINE.match(line)):
                what, lid, cls = lm.group("what"), lm.group("id"), lm.group("cls") or ""
                cur["locks"].append({"what": what, "id": lid, "class": cls})
                if what == "locked":
                    cur["holds"].append(lid)
                elif what == "waiting to lock":
                    cur["waiting_on"] = lid
                elif what == "parking to wait for" and re.search(r"Sync$|Lock\b", cls) and "Condition" not in cls:
                    cur["waiting_on"] = lid
            elif s.startswith("Locked ownable synchronizers"):
                in_ownable = True
            elif in_ownable and (om := OWNABLE.match(line)):
                cur["holds"].append(om.group("id"))
                cur["locks"].append({"what": "owns", "id": om.group("id"), "class": om.group("cls")})
            elif not s:
                in_ownable = False
        i += 1
    for t in threads:
        if not t["locks"]:
            del t["locks"]
        if not t["holds"]:
            del t["holds"]
    return {"threads": threads, "deadlocks": deadlocks}
