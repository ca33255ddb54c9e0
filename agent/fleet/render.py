"""Text for the commander: ``fleet status`` and ``fleet hosts`` as a person reads them at 3 a.m.

Where it sits: ``agent/cli/fleet.py`` prints these; ``--json`` prints the dicts of
``agent.fleet.overview`` instead. Problems first (failed, expired, missed, pending,
offline), then progress, then the hosts that are done (listed in full only for a small
expected set, or with ``all_hosts``).
"""
from __future__ import annotations

from typing import Any

from agent.incident import parse_iso, utcnow

LIST_ALL_UP_TO = 30


def _hm(iso_text: str) -> str:
    dt = parse_iso(iso_text)
    return dt.strftime("%H:%M:%SZ") if dt else "-"


def _in(iso_text: str) -> str:
    dt = parse_iso(iso_text)
    if not dt:
        return ""
    s = int((dt - utcnow()).total_seconds())
    if s < 0:
        return "passed"
    return f"in {s // 3600}h{(s % 3600) // 60:02d}m"


def _secs(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} s" if v < 10 else f"{v:.0f} s"


def status_text(v: dict[str, Any], all_hosts: bool = False) -> str:
    c = v["counts"]
    lines = [f"incident {v['incident']}  {v['source']}  {v['state']}  rev {v['capture_rev']}  "
             f"declared {_hm(v['declared_at'])}  deadline {_hm(v['deadline'])} ({_in(v['deadline'])})"]
    if v.get("title"):
        lines.append(f"  {v['title']}")
    lines.append(f"scope: {v['scope']}; profile {v['profile']}; upload spread up to {v['upload_spread_s']:g} s")
    lines.append(f"expected {v['expected']} host{'s' if v['expected'] != 1 else ''}; online {v['online']}"
                 + (f"; never heard of: {', '.join(v['unknown_hosts'])}" if v["unknown_hosts"] else ""))
    active = sum(c.get(k, 0) for k in ("seen", "capturing", "uploading"))
    lines.append(" | ".join([f"uploaded {c.get('uploaded', 0)}", f"captured {c.get('captured', 0)}",
                             f"capturing {active}", f"pending {c.get('pending', 0)}",
                             f"offline {c.get('offline', 0)}", f"failed {c.get('failed', 0)}",
                             f"expired {c.get('expired', 0)}", f"skipped {c.get('skipped', 0)}",
                             f"missed {c.get('missed', 0)}"]
                            + ([f"unknown {c['unknown']}"] if c.get("unknown") else [])))
    lat = v["latency_s"]
    if lat["n"]:
        lines.append(f"trigger -> capture start: p50 {_secs(lat['p50'])}  p99 {_secs(lat['p99'])}  "
                     f"max {_secs(lat['max'])}  (n={lat['n']})")
    lines.append("done" if v["done"] else "in progress")
    rows = v["hosts"]
    shown = rows if all_hosts or len(rows) <= LIST_ALL_UP_TO else [
        r for r in rows if r["state"] not in ("uploaded", "captured") or r.get("stale")]
    for r in shown:
        lines.append(f"{r['state'].upper():<9} {r['host']:<24} {_row_detail(r)}")
    if len(shown) < len(rows):
        lines.append(f"({len(rows) - len(shown)} hosts with evidence not listed; --all-hosts lists them)")
    return "\n".join(lines)


def _row_detail(r: dict[str, Any]) -> str:
    bits = []
    st = r["state"]
    if st in ("pending", "offline", "missed"):
        hb = r.get("last_heartbeat")
        bits.append(f"last heartbeat {_hm(hb) if hb else 'never'}")
        if r.get("previous"):
            bits.append(f"(earlier: {r['previous']})")
    b = r.get("bundle") or {}
    if st == "uploaded" and b.get("url"):
        bits.append(b["url"])
    elif b.get("name"):
        bits.append(b["name"])
    if b.get("sha256"):
        bits.append(f"sha256 {b['sha256'][:16]}")
    if r.get("latency_s") is not None:
        bits.append(f"started +{r['latency_s']:.2f} s")
    if r.get("late"):
        bits.append("late")
    if r.get("stale"):
        bits.append("STALE (capturing for too long)")
    if r.get("error"):
        bits.append(r["error"])
    return "  ".join(bits)


def hosts_text(v: dict[str, Any], offline_only: bool = False) -> str:
    rows = [r for r in v["hosts"] if not (offline_only and r["online"])]
    lines = [f"fleet {v['fleet']}: {len(v['hosts'])} hosts, {v['online']} online, {v['offline']} offline"]
    for r in rows:
        age = f"{r['age_s']:.0f} s ago" if r["age_s"] is not None else "never"
        what = ", ".join([*(f"service={s}" for s in r["services"]), *r["tags"]]) or "-"
        lines.append(f"{'online ' if r['online'] else 'OFFLINE'}  {r['host']:<24} heartbeat {age:<12} "
                     f"{r['agent_version'] or '?':<8} {what}")
    return "\n".join(lines)
