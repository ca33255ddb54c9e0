"""TCP retransmit bursts and resets: packets lost on the way to a peer, connections refused or killed.

Triggers: retransmissions seen by the eBPF ``tcpretrans`` probe
(``collectors/tcpretrans/*.json``): 10 or more in the window is a warning, 100 or
more (or 5 per second) critical, per owning process and network namespace (the
collector matches each flow to its socket's owner), naming the peers; 10 or more resets
sent or received in the window (warning: refused connections, crashed peers, idle
connections killed by a middlebox), with the kernel's reasons; and
connections that were retransmitting when the socket table was read
(``sockets.jsonl``: ``info.retrans`` > 0, or 10+ retransmissions in their lifetime)
— a warning naming the peers. Retransmits mean loss or a peer that stopped
answering: latency jumps by the retransmission timeout (200 ms and doubling).
Evidence: the probe's events or counts, and the socket records.
"""
from __future__ import annotations

import json
from collections import Counter
from typing import Any, Iterator

from agent.report import hist
from agent.report.model import CRITICAL, WARNING, Evidence, Finding, parse_iso
from agent.report.rules import Rule
from agent.report.rules._util import join_names, num, plural

WARN_N, CRIT_N, CRIT_RATE = 10, 100, 5.0
SOCKETS = "collectors/sockets/sockets.jsonl"


def _peer(e: dict[str, Any]) -> str:
    addr = e.get("daddr") or e.get("raddr") or e.get("remote") or e.get("dst") or e.get("peer") or "?"
    port = e.get("dport") or e.get("rport") or e.get("remote_port")
    return f"{addr}:{port}" if port is not None and ":" not in str(addr) else (
        f"[{addr}]:{port}" if port is not None else str(addr))


def _owner(e: dict[str, Any]) -> tuple[Any, str, Any] | None:
    pid = e.get("pid")
    return (pid, str(e.get("comm") or "?"), e.get("netns")) if pid is not None else None


def _bursts(b, rel: str, events: list[dict[str, Any]], window: float | None) -> list[Finding]:
    """One finding per process whose sockets retransmitted 10+ times (the owner and its network namespace say
    whose traffic it is: a client's and a server's losses on one link are two findings); flows without a known
    owner, or spread too thin, in one finding for the host."""
    by: dict[tuple[Any, str, Any] | None, list[dict[str, Any]]] = {}
    for e in events:
        by.setdefault(_owner(e), []).append(e)
    out, rest = [], []
    for owner, evs in sorted(by.items(), key=lambda kv: -sum(int(num(e.get("count")) or 1) for e in kv[1])):
        n = sum(int(num(e.get("count")) or 1) for e in evs)
        if owner is None or n < WARN_N:
            rest += evs
            continue
        out.append(_burst(b, rel, evs, window, owner))
    if rest and sum(int(num(e.get("count")) or 1) for e in rest) >= WARN_N:
        out.append(_burst(b, rel, rest, window, None))
    return out


def _burst(b, rel: str, events: list[dict[str, Any]], window: float | None,
           owner: tuple[Any, str, Any] | None) -> Finding:
    counts: Counter[str] = Counter()
    for e in events:
        counts[_peer(e)] += int(num(e.get("count")) or 1)
    n = sum(counts.values())
    rate = n / window if window else None
    sev = CRITICAL if n >= CRIT_N or (rate is not None and rate >= CRIT_RATE) else WARNING
    top = counts.most_common(5)
    times = sorted(t for t in (parse_iso(e.get("time") or e.get("first_utc")) for e in events) if t)
    comms = Counter(str(e.get("comm")) for e in events if e.get("comm"))
    pid, comm, ns = owner if owner else (None, "", None)
    by = f" by {comm} (pid {pid}" + (f", network namespace {ns}" if ns else "") + ")" if owner else ""
    return Finding(
        sev, f"TCP retransmit burst: {n} retransmissions{by}" + (f" in {window:.0f} s" if window else "")
             + f", most to {top[0][0]}",
        f"The kernel retransmitted {plural(n, 'TCP segment')}"
        + (f" of {comm}'s connections" if owner else "")
        + (f" ({rate:.1f}/s)" if rate is not None else "") + " during the probe window: segments or their "
        "acknowledgements were lost, or the peer stopped answering. Each retransmission adds at least the "
        "retransmission timeout (200 ms, doubling) to a request. Peers: "
        + ", ".join(f"{p} ×{c}" for p, c in top) + "."
        + (f" Processes: {join_names(f'{c} ×{k}' for c, k in comms.most_common(4))}." if comms and not owner else ""),
        rule="tcp_retransmits", host=b.host, time=times[0] if times else None,
        evidence=[Evidence(b.host, rel, record=f"peer {p}", excerpt=f"{c} retransmissions") for p, c in top],
        data={"count": n, "peers": dict(top), "window_s": window,
              **({"pid": pid, "comm": comm, "netns": ns} if owner else {})})


def _resets(b, rel: str, events: list[dict[str, Any]], window: float | None) -> Finding | None:
    sent = sum(int(num(e.get("count")) or 1) for e in events if e.get("kind") == "send_reset")
    received = sum(int(num(e.get("count")) or 1) for e in events if e.get("kind") == "receive_reset")
    if sent + received < WARN_N:
        return None
    peers: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for e in events:
        peers[_peer(e)] += int(num(e.get("count")) or 1)
        if e.get("reason"):
            reasons[str(e["reason"])] += int(num(e.get("count")) or 1)
    top = peers.most_common(5)
    return Finding(
        WARNING, f"TCP resets: {sent} sent, {received} received" + (f" in {window:.0f} s" if window else "")
                 + f", most with {top[0][0]}",
        "Connections were refused or torn down with RST: a port with no listener or a full accept queue (sent), "
        "peers that crashed, restarted or dropped the connection, or a firewall or load balancer killing idle "
        "connections (received). Peers: " + ", ".join(f"{p} ×{c}" for p, c in top) + "."
        + (f" Kernel reasons: {', '.join(f'{r} ×{c}' for r, c in reasons.most_common(4))}." if reasons else ""),
        rule="tcp_retransmits", host=b.host,
        evidence=[Evidence(b.host, rel, record=f"peer {p}", excerpt=f"{c} resets") for p, c in top],
        data={"sent": sent, "received": received, "peers": dict(top)})


def evaluate(b) -> Iterator[Finding]:
    for rel in b.files("collectors/tcpretrans/*.json"):
        data = b.json(rel)
        events = hist.records(data, "events", "retransmits", "records", "flows")
        if not events:
            continue
        window = num(data.get("window_s") or data.get("seconds") or data.get("duration_s")) if isinstance(data, dict) \
            else None
        retrans = [e for e in events if str(e.get("kind") or "retransmit").startswith("retransmit")]
        resets = [e for e in events if str(e.get("kind") or "").endswith("_reset")]
        yield from _bursts(b, rel, retrans, window)
        f = _resets(b, rel, resets, window)
        if f:
            yield f

    raw = b.text(SOCKETS)
    if not raw:
        return
    now: list[tuple[int, dict[str, Any]]] = []
    for i, line in enumerate(raw.splitlines(), start=b.first_line(SOCKETS)):
        if '"retrans' not in line:
            continue
        try:
            r = json.loads(line)
        except ValueError:
            continue
        info = r.get("info") or {}
        cur, tot = num(info.get("retrans")) or 0, num(info.get("retrans_total")) or 0
        if r.get("proto") == "tcp" and (cur > 0 or tot >= WARN_N):
            now.append((i, r))
    if not now:
        return
    peers: Counter[str] = Counter()
    for _, r in now:
        peers[f"{r.get('peer_addr')}:{r.get('peer_port')}"] += 1
    yield Finding(
        WARNING, f"{plural(len(now), 'TCP connection')} retransmitting when captured",
        "These connections had unacknowledged retransmissions outstanding, or many retransmissions in their "
        "lifetime, when the socket table was read: loss on the path to these peers or peers that stopped "
        "answering. Peers: " + ", ".join(f"{p} ×{c}" for p, c in peers.most_common(5)) + ".",
        rule="tcp_retransmits", host=b.host,
        evidence=[Evidence(b.host, SOCKETS, line=i, record=f"{r.get('local_addr')}:{r.get('local_port')} → "
                                                            f"{r.get('peer_addr')}:{r.get('peer_port')}",
                           excerpt=f"state {r.get('state')}, retrans {(r.get('info') or {}).get('retrans')}/"
                                   f"{(r.get('info') or {}).get('retrans_total')}, owner "
                                   f"{','.join(u.get('comm', '?') for u in r.get('users') or [])}")
                  for i, r in now[:6]],
        data={"connections": len(now)})


RULE = Rule(name="tcp_retransmits", summary="TCP retransmit bursts and connections retransmitting",
            evaluate=evaluate, reads=("tcpretrans", "sockets"),
            severity="critical (≥ 100 or ≥ 5/s in the window); warning (≥ 10, sockets retransmitting)", order=22)
