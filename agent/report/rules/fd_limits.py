"""File descriptors near their limits: the host's (fs.file-max) and each process's (RLIMIT_NOFILE).

Triggers: ``host.json`` ``fd.allocated`` at 80 % of ``fd.max`` or more (critical at
95 %); a target process whose open descriptors (``process.json``) reach 80 % of its
soft ``RLIMIT_NOFILE`` (critical at 95 %). At the limit, ``open``, ``socket`` and
``accept`` fail with EMFILE/ENFILE ("Too many open files"): new connections are
refused or dropped while the process otherwise looks fine.
Evidence: ``host.json`` ``fd``; the process's ``process.json`` (descriptor count and
limit), with what the descriptors are: files by directory (``fds.txt``, the readlink of
each), sockets by protocol, state and peer (``sockets.jsonl``), types (``fd.by_type``).
"""
from __future__ import annotations

import json
from collections import Counter
from typing import Any, Iterator

from agent.report.model import CRITICAL, WARNING, Evidence, Finding
from agent.report.rules import Rule
from agent.report.rules._util import num, target_label

HOST = "collectors/host/host.json"
SOCKETS = "collectors/sockets/sockets.jsonl"
WARN, CRIT = 0.80, 0.95


def _dig(d: Any, *paths: str) -> Any:
    """The first present value among dotted paths (collectors name things differently)."""
    for p in paths:
        cur = d
        for part in p.split("."):
            if isinstance(cur, dict) and part in cur:
                cur = cur[part]
            else:
                cur = None
                break
        if cur is not None:
            return cur
    return None


def fd_usage(p: dict[str, Any]) -> tuple[float | None, float | None, float | None, Any]:
    """(open fds, soft limit, hard limit, kinds) from a process.json, whatever its exact shape."""
    count = num(_dig(p, "fd.count", "fds.count", "fd.open", "fds.open", "fd_count", "open_fds", "num_fds",
                     "fds_open", "fds"))
    soft = num(_dig(p, "fd.limit", "fd.soft_limit", "fd.soft", "fds.limit", "fds.soft_limit", "fd_limit",
                    "rlimit_nofile.soft", "limits.nofile.soft", "limits.Max open files.soft",
                    "limits.max_open_files.soft", "limits.NOFILE.soft", "limits.RLIMIT_NOFILE.soft"))
    hard = num(_dig(p, "fd.hard_limit", "fd.hard", "fds.hard_limit", "rlimit_nofile.hard", "limits.nofile.hard",
                    "limits.Max open files.hard", "limits.max_open_files.hard", "limits.NOFILE.hard",
                    "limits.RLIMIT_NOFILE.hard"))
    kinds = _dig(p, "fd.by_type", "fd.kinds", "fds.by_type", "fds.kinds", "fd_types")
    return count, soft, hard, kinds


def _dirs(b, rel: str, p: dict[str, Any]) -> list[tuple[str, int, str]]:
    """(directory, descriptors, an example path) of the files the process holds open, most first."""
    listing = b.text(rel.rsplit("/", 1)[0] + "/fds.txt") or ""
    counts: Counter[str] = Counter()
    example: dict[str, str] = {}
    for line in listing.splitlines():
        _, _, tgt = line.partition("\t")
        if tgt.startswith("/") and not tgt.startswith(("/dev/", "/memfd:")):
            path = tgt.removesuffix(" (deleted)")
            d = path.rsplit("/", 1)[0] or "/"
            counts[d] += 1
            example.setdefault(d, tgt)
    if counts:
        return [(d, n, example[d]) for d, n in counts.most_common(3)]
    by_dir = _dig(p, "fd.by_dir") or []
    return [(str(x.get("dir")), int(x.get("count") or 0), "") for x in by_dir[:3] if isinstance(x, dict)]


def _sockets(b, pid: int) -> str:
    """The process's sockets by protocol and state, and their busiest peers (``sockets.jsonl``)."""
    raw = b.text(SOCKETS)
    if not raw or f'"pid": {pid}' not in raw and f'"pid":{pid}' not in raw:
        return ""
    states: Counter[str] = Counter()
    peers: Counter[str] = Counter()
    for line in raw.splitlines():
        if str(pid) not in line:
            continue
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if not any(isinstance(u, dict) and u.get("pid") == pid for u in r.get("users") or []):
            continue
        states[f"{r.get('proto')} {r.get('state')}"] += 1
        if r.get("peer_addr") not in (None, "*", "0.0.0.0", "::") and r.get("proto") == "tcp":
            peers[f"{r.get('peer_addr')}:{r.get('peer_port')}"] += 1
    if not states:
        return ""
    txt = "sockets: " + ", ".join(f"{n} {k}" for k, n in states.most_common(4))
    if peers:
        txt += " (most to " + ", ".join(f"{k} ×{n}" for k, n in peers.most_common(3)) + ")"
    return txt


def what_they_are(b, rel: str, p: dict[str, Any], pid: int) -> list[str]:
    """The descriptors in words, biggest share first: files by directory, sockets by state and peer."""
    out = []
    for d, n, ex in _dirs(b, rel, p):
        if n >= 2:
            out.append(f"{n} files under {d}/" + (f" (e.g. {ex})" if ex else ""))
    socks = _sockets(b, pid)
    if socks:
        out.append(socks)
    return out


def evaluate(b) -> Iterator[Finding]:
    h = b.json(HOST)
    fd = h.get("fd") if isinstance(h, dict) else None
    if isinstance(fd, dict):
        alloc, mx = num(fd.get("allocated")), num(fd.get("max"))
        if alloc is not None and mx and alloc / mx >= WARN:
            r = alloc / mx
            yield Finding(CRITICAL if r >= CRIT else WARNING,
                          f"Host file descriptors at {r:.0%} of fs.file-max ({int(alloc)} of {int(mx)})",
                          "The kernel's table of open files is nearly exhausted: at fs.file-max every process's "
                          "open(), socket() and accept() fails with ENFILE. Find who holds them (top processes by "
                          "descriptors) or raise fs.file-max.",
                          rule="fd_limits", host=b.host,
                          evidence=[Evidence(b.host, HOST, record="fd", excerpt=str(fd))],
                          data={"allocated": alloc, "max": mx})
    for rel in b.files("collectors/process/*/process.json"):
        p = b.json(rel)
        if not isinstance(p, dict):
            continue
        count, soft, hard, kinds = fd_usage(p)
        if count is None or not soft or soft <= 0:
            continue
        r = count / soft
        if r < WARN:
            continue
        pid = int(rel.split("/")[2])
        who = target_label(b, pid, str(p.get("comm") or p.get("name") or ""))
        kinds_txt = ""
        if isinstance(kinds, dict) and kinds:
            top = sorted(((v, k) for k, v in kinds.items() if isinstance(v, (int, float))), reverse=True)[:4]
            kinds_txt = " By type: " + ", ".join(f"{int(v)} {k}" for v, k in top) + "."
        what = what_they_are(b, rel, p, pid)
        headline = what[0] if what else ""
        if what:
            kinds_txt += " They are: " + "; ".join(what) + "."
        yield Finding(CRITICAL if r >= CRIT else WARNING,
                      f"{who} has {int(count)} of {int(soft)} file descriptors open ({r:.0%} of its limit)"
                      + (f": {headline}" if headline else ""),
                      f"The process's soft RLIMIT_NOFILE is {int(soft)}"
                      + (f" (hard {int(hard)})" if hard else "") + f" and {int(count)} descriptors are open. At the "
                      "limit every open(), socket() and accept() fails with EMFILE (\"Too many open files\"): new "
                      "connections are refused or dropped. A descriptor leak (count growing over time) or a limit "
                      f"too low for the load.{kinds_txt}",
                      rule="fd_limits", host=b.host,
                      evidence=[Evidence(b.host, rel, record=f"pid {pid}",
                                         excerpt=f"open {int(count)}, soft limit {int(soft)}"
                                         + (f", hard limit {int(hard)}" if hard else ""))],
                      data={"pid": pid, "open": count, "soft_limit": soft, "hard_limit": hard, "what": what})


RULE = Rule(name="fd_limits", summary="file descriptors near fs.file-max or a process's RLIMIT_NOFILE",
            evaluate=evaluate, reads=("host", "process"), severity="critical (≥ 95 %); warning (≥ 80 %)", order=30)
