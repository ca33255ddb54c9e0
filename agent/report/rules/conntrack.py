"""Connection tracking table near or at its maximum, and the packets it dropped.

Triggers: ``conntrack.json`` with ``count`` at 90 % of ``nf_conntrack_max`` or more
(``count`` against ``max``; critical at 99 %); non-zero ``drop``, ``early_drop`` or
``insert_failed`` statistics (critical when they grew during the capture, warning
when they are only cumulative since the namespace started); kernel messages
``nf_conntrack: table full, dropping packet`` and, from other network namespaces,
``nf_conntrack: table full in netns N, dropping packet`` in ``dmesg.json`` (critical: the
table was full at that time, even if it has emptied since), one finding per namespace,
naming the targets that live in it.
Evidence: the ``conntrack.json`` fields (count, max, stats totals and delta, top
sources and states) and the dmesg records.
"""
from __future__ import annotations

import re
from typing import Any, Iterator

from agent.report.model import CRITICAL, WARNING, Evidence, Finding
from agent.report.rules import Rule
from agent.report.rules._util import cap, dmesg_evidence, dmesg_records, join_names, num, plural, record_time, \
    targets_in_netns

FILE = "collectors/conntrack/conntrack.json"
# the kernel's words: "nf_conntrack: nf_conntrack: table full, dropping packet" in the initial namespace, and since
# Linux 6.x "... table full in netns 4026532174, dropping packet" in the others (tests: the real kernel's lines)
TABLE_FULL = re.compile(r"nf_conntrack: (?:nf_conntrack: )?table full(?: in netns (?P<netns>\d+))?, dropping packet")
NEAR, AT = 0.90, 0.99


def _states(s: dict[str, Any]) -> str:
    flat = []
    for proto, states in (s.get("by_state") or {}).items():
        if isinstance(states, dict):
            flat += [(n, f"{proto} {st}") for st, n in states.items() if isinstance(n, (int, float))]
    flat.sort(reverse=True)
    return ", ".join(f"{int(n)} {name}" for n, name in flat[:3])


def evaluate(b) -> Iterator[Finding]:
    s = b.json(FILE)
    full_msgs = [r for r in dmesg_records(b) if TABLE_FULL.search(str(r.get("message", "")))]
    msg_ev = [dmesg_evidence(b, r) for r in full_msgs]
    where = ""
    if isinstance(s, dict):
        count, mx = num(s.get("count")), num(s.get("max"))
        fill = num(s.get("fill_ratio"))
        if fill is None and count is not None and mx:
            fill = count / mx
        if s.get("netns"):
            where = f" in network namespace {s['netns']}"
        top = s.get("top_sources") or []
        who = (f" The biggest source is {top[0].get('addr')} with {top[0].get('count')} entries."
               if top and isinstance(top[0], dict) else "")
        states = _states(s)
        if fill is not None and fill >= NEAR:
            sev = CRITICAL if fill >= AT else WARNING
            yield Finding(
                sev, f"Conntrack table {'full' if fill >= AT else 'nearly full'}: {int(count or 0)} of {int(mx or 0)} "
                     f"entries ({fill:.0%}){where}",
                "Every connection through this host's netfilter is tracked in a table of at most nf_conntrack_max "
                "entries. When it is full the kernel drops packets of new connections (\"table full, dropping "
                "packet\"): clients see timeouts and random connection failures while every process looks "
                f"healthy.{who}" + (f" Most entries: {states}." if states else "")
                + " Raise net.netfilter.nf_conntrack_max (and the hash size), shorten the timeouts of the state that "
                  "dominates, or stop tracking traffic that does not need it (NOTRACK).",
                rule="conntrack", host=b.host,
                evidence=[Evidence(b.host, FILE, record="count, max, fill_ratio",
                                   excerpt=f"count {s.get('count')}, max {s.get('max')}, "
                                           f"fill_ratio {s.get('fill_ratio')}"
                                   + (f", netns {s.get('netns')}" if s.get("netns") else ""))] + cap(msg_ev, 3),
                data={"count": count, "max": mx, "fill_ratio": fill})
            msg_ev = []
        totals = (s.get("stats") or {}).get("totals") or {}
        delta = (s.get("stats_delta") or {}).get("counters") or {}
        drops = {k: int(num(totals.get(k)) or 0) for k in ("drop", "early_drop", "insert_failed")
                 if num(totals.get(k))}
        if drops:
            now = {k: int(num(delta.get(k)) or 0) for k in drops if num(delta.get(k))}
            sev = CRITICAL if now or (fill is not None and fill >= NEAR) else WARNING
            parts = ", ".join(f"{k} {v}" for k, v in drops.items())
            yield Finding(
                sev, f"Conntrack dropped or evicted connections ({parts}){where}",
                "drop counts packets the kernel discarded because no conntrack entry could be made (a full "
                "table); early_drop counts entries evicted to make room; insert_failed counts entries that could "
                "not be inserted (a full table or races between CPUs). These are counted since the network "
                "namespace started" + (f"; during the capture alone: {', '.join(f'{k} +{v}' for k, v in now.items())}"
                                      if now else "; none grew during the capture, so the drops may be old") + ".",
                rule="conntrack", host=b.host,
                evidence=[Evidence(b.host, FILE, record="stats.totals" + (", stats_delta" if now else ""),
                                   excerpt=parts + (f" (during capture: {now})" if now else ""))] + cap(msg_ev, 3),
                data={"totals": drops, "delta": now})
            msg_ev = []
    if msg_ev:
        by_ns: dict[int | None, list[dict[str, Any]]] = {}
        for r in full_msgs:
            m = TABLE_FULL.search(str(r.get("message", "")))
            by_ns.setdefault(int(m.group("netns")) if m and m.group("netns") else None, []).append(r)
        for ns, recs in by_ns.items():
            yield _messages(b, ns, recs)


def _messages(b, ns: int | None, recs: list[dict[str, Any]]) -> Finding:
    """One finding for the kernel's "table full" messages of one network namespace, naming the targets in it."""
    owners = targets_in_netns(b, ns) if ns is not None else []
    names = [f"{t.get('comm') or '?'} (pid {t.get('pid')})" for t in owners]
    where = (f" in the network namespace of {join_names(names, 3)}" if names else
             f" in network namespace {ns}" if ns is not None else "")
    return Finding(
        CRITICAL, f"Conntrack table full{where}: the kernel dropped new connections' packets "
                  f"({plural(len(recs), 'message')})",
        "The kernel logged \"nf_conntrack: table full" + (f" in netns {ns}" if ns is not None else "")
        + ", dropping packet\": at those times packets of new connections were dropped because the connection "
          "tracking table had no room and nothing could be evicted (every entry was an assured, established flow)"
        + (f". {join_names(names, 3)} live{'s' if len(names) == 1 else ''} in that namespace: their new connections "
           "failed or timed out (sendto/connect return EPERM, clients retry)" if names else "")
        + ". The table may have emptied since; the times in the timeline say when it happened. Raise "
          "net.netfilter.nf_conntrack_max, shorten the timeouts, or stop tracking traffic that does not need it.",
        rule="conntrack", host=b.host, evidence=cap([dmesg_evidence(b, r) for r in recs]),
        time=record_time(recs[0]), last_time=record_time(recs[-1]),
        data={"netns": ns, "messages": len(recs), "pids": [t.get("pid") for t in owners]})


RULE = Rule(name="conntrack", summary="conntrack table near or at nf_conntrack_max, and its drops",
            evaluate=evaluate, reads=("conntrack", "dmesg"),
            severity="critical (≥ 99 % full, drops during capture, \"table full\" messages); "
                     "warning (≥ 90 %, old drops)",
            order=20)
