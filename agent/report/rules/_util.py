"""Helpers shared by the rules (not a rule: the name starts with "_")."""
from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING, Any, Iterable

from agent.report.model import Evidence, parse_iso

if TYPE_CHECKING:  # pragma: no cover
    from agent.report.loader import Bundle

DMESG_JSON = "collectors/dmesg/dmesg.json"
DMESG_TXT = "collectors/dmesg/dmesg.txt"
MAX_EVIDENCE = 6


def dmesg_records(b: "Bundle") -> list[dict[str, Any]]:
    """dmesg.json records, each with ``_line``: its line in dmesg.txt (one line per record)."""
    cached = getattr(b, "_dmesg_cache", None)
    if cached is not None:
        return cached
    data = b.json(DMESG_JSON)
    recs = data.get("records") if isinstance(data, dict) else None
    out = []
    line = 1
    for r in recs if isinstance(recs, list) else []:
        if not isinstance(r, dict):
            continue
        r = dict(r)
        r["_line"] = line
        msg = str(r.get("message", ""))
        line += 1 + msg.count("\n")
        out.append(r)
    b._dmesg_cache = out  # type: ignore[attr-defined]
    return out


def dmesg_evidence(b: "Bundle", r: dict[str, Any]) -> Evidence:
    file = DMESG_TXT if b.has(DMESG_TXT) else DMESG_JSON
    line = r.get("_line") if file == DMESG_TXT else None
    t = r.get("time", "")
    return Evidence(b.host, file, line=line, record=f"seq {r.get('seq')}",
                    excerpt=(f"[{t}] " if t else "") + f"{r.get('level', '')}: {r.get('message', '')}".strip())


def record_time(r: dict[str, Any]) -> datetime | None:
    return parse_iso(r.get("time"))


def cap(evidence: list[Evidence], n: int = MAX_EVIDENCE) -> list[Evidence]:
    """At most ``n`` evidence items; the rest summed up in one line."""
    if len(evidence) <= n:
        return evidence
    rest = len(evidence) - (n - 1)
    last = evidence[-1]
    return evidence[:n - 1] + [Evidence(last.host, last.file, record=f"and {rest} more like these")]


def cap_spread(evidence: list[Evidence], n: int = MAX_EVIDENCE) -> list[Evidence]:
    """At most ``n`` evidence items: the first two, a count of those left out, and the latest ones."""
    if len(evidence) <= n:
        return evidence
    first, last = evidence[:2], evidence[-(n - 3):]
    skipped = len(evidence) - len(first) - len(last)
    mid = Evidence(first[-1].host, first[-1].file, record=f"and {skipped} more like these in between")
    return first + [mid] + last


def num(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            return None
    return None


def human_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def human_us(us: float | None) -> str:
    """Microseconds in words a person reads at a glance (850 µs, 12.5 ms, 3.2 s)."""
    if us is None:
        return "?"
    if us < 1000:
        return f"{us:.0f} µs"
    if us < 1_000_000:
        return f"{us / 1000:.1f} ms"
    return f"{us / 1_000_000:.2f} s"


def plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n} {word if n == 1 else (words or word + 's')}"


def join_names(items: Iterable[str], limit: int = 5) -> str:
    items = list(items)
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f" and {len(items) - limit} more"


def status_of(b: "Bundle", collector: str) -> tuple[str | None, str]:
    """(status, reason) of a host collector in the manifest; (None, "") if it was not planned."""
    for c in b.collectors(collector):
        return c.status, c.reason
    return None, ""


def target_label(b: "Bundle", pid: int, fallback: str = "") -> str:
    t = b.target_info(pid)
    comm = t.get("comm") or fallback
    return f"{comm} (pid {pid})" if comm else f"pid {pid}"


def netns_inode(ns_id: Any) -> int | None:
    """The inode of a namespace named ``net:[4026531993]`` (or already a number)."""
    if isinstance(ns_id, int) and not isinstance(ns_id, bool):
        return ns_id
    m = re.fullmatch(r"(?:net:\[)?(\d+)\]?", str(ns_id or "").strip())
    return int(m.group(1)) if m else None


def targets_in_netns(b: "Bundle", inode: int) -> list[dict[str, Any]]:
    """The bundle's targets living in the network namespace ``inode``."""
    out = []
    for t in b.manifest.targets:
        ns = (t.get("namespaces") or {}).get("net") or {}
        if netns_inode(ns.get("id")) == inode:
            out.append(t)
    return out
