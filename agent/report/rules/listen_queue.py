"""Listen-queue overflows and SYN drops: a server that does not accept connections fast enough.

Triggers: a TCP (or Unix stream) listener in ``sockets.json`` whose accept queue is
at its backlog (``full``: critical) or above 80 % of it (warning); the kernel
counters ``ListenOverflows`` / ``ListenDrops`` (accept queue full: connections
dropped), ``TCPReqQFullDrop`` / ``TCPReqQFullDoCookies`` / ``SyncookiesSent`` (SYN
queue full) and ``TCPBacklogDrop`` (warning: cumulative since the namespace
started, so they say it happened, not when); kernel messages ``Possible SYN
flooding on port`` (warning).
Evidence: the listener record (address, accept queue, backlog, owners), the
counters in ``sockets.json`` ``key_counters``, the dmesg records.
"""
from __future__ import annotations

import re
from typing import Iterator

from agent.report.model import CRITICAL, WARNING, Evidence, Finding
from agent.report.rules import Rule
from agent.report.rules._util import cap, dmesg_evidence, dmesg_records, num, record_time

FILE = "collectors/sockets/sockets.json"
SYN_FLOOD = re.compile(r"Possible SYN flooding on port (?P<port>\S+?)\.? (?P<action>Sending cookies|Dropping request)")
NEAR = 0.8


def _owners(lis: dict) -> str:
    own = lis.get("owners") or []
    names = [f"{o.get('comm')} (pid {o.get('pid')})" for o in own[:3] if isinstance(o, dict)]
    return ", ".join(names) or "no owner found"


def evaluate(b) -> Iterator[Finding]:
    s = b.json(FILE)
    if isinstance(s, dict):
        where = f" in network namespace {s['netns']}" if s.get("netns") else ""
        for lis in s.get("listeners") or []:
            if not isinstance(lis, dict):
                continue
            q, bl = num(lis.get("accept_queue")), num(lis.get("backlog"))
            if q is None or bl is None or q <= 0:
                continue
            full = bool(lis.get("full")) or q >= bl
            if not full and q < NEAR * bl:
                continue
            who = _owners(lis)
            yield Finding(
                CRITICAL if full else WARNING,
                f"Accept queue {'full' if full else 'nearly full'} on {lis.get('proto')} {lis.get('local')} "
                f"({int(q)} waiting, backlog {int(bl)}) — {who}",
                f"Connections completed the handshake but {who} did not accept() them: {int(q)} wait in the accept "
                f"queue, whose limit (the listen backlog, capped by net.core.somaxconn) is {int(bl)}. Once it is full "
                "the kernel drops new handshakes (ListenOverflows): clients see connect timeouts or resets while "
                "the process may look idle. The process is too slow to accept (blocked threads, a stuck event loop, "
                "a deadlock) or its backlog is too small for bursts." + where,
                rule="listen_queue", host=b.host,
                evidence=[Evidence(b.host, FILE, record=f"listener {lis.get('local')}",
                                   excerpt=f"accept_queue {lis.get('accept_queue')}, backlog {lis.get('backlog')}, "
                                           f"full {lis.get('full')}, owners {who}")],
                data={"local": lis.get("local"), "accept_queue": q, "backlog": bl,
                      "pids": [o.get("pid") for o in lis.get("owners") or [] if isinstance(o, dict)],
                      **({"netns": s.get("netns")} if s.get("netns") else {})})
        kc = s.get("key_counters") or {}
        over = {k: int(num(kc.get(k)) or 0) for k in ("ListenOverflows", "ListenDrops") if num(kc.get(k))}
        if over:
            yield Finding(
                WARNING, f"Listen queue overflows: {', '.join(f'{k} {v}' for k, v in over.items())}{where}",
                "The kernel dropped connection attempts because a listener's accept queue was full. These "
                "counters are cumulative since the network namespace started (for the host: since boot), so they "
                "say it happened, not when; a full accept queue in the listeners above says it is happening now.",
                rule="listen_queue", host=b.host,
                evidence=[Evidence(b.host, FILE, record="key_counters " + ", ".join(over),
                                   excerpt=", ".join(f"TcpExt.{k} = {v}" for k, v in over.items()))],
                data=over)
        syn = {k: int(num(kc.get(k)) or 0) for k in ("TCPReqQFullDrop", "TCPReqQFullDoCookies", "SyncookiesSent")
               if num(kc.get(k))}
        if syn:
            yield Finding(
                WARNING, f"SYN queue overflowed: {', '.join(f'{k} {v}' for k, v in syn.items())}{where}",
                "Half-open connections (SYN received, handshake not complete) filled a listener's SYN queue "
                "(net.ipv4.tcp_max_syn_backlog): the kernel dropped SYNs or answered with SYN cookies. A connection "
                "burst, a SYN flood, or a full accept queue behind it. Cumulative since the namespace started.",
                rule="listen_queue", host=b.host,
                evidence=[Evidence(b.host, FILE, record="key_counters " + ", ".join(syn),
                                   excerpt=", ".join(f"TcpExt.{k} = {v}" for k, v in syn.items()))], data=syn)
        bd = int(num(kc.get("TCPBacklogDrop")) or 0)
        if bd:
            yield Finding(
                WARNING, f"TCP backlog drops: TCPBacklogDrop {bd}{where}",
                "Packets were dropped because a socket's backlog (packets queued while the application held the "
                "socket lock) was full: a process too slow to read under load. Cumulative since the namespace "
                "started.", rule="listen_queue", host=b.host,
                evidence=[Evidence(b.host, FILE, record="key_counters TCPBacklogDrop",
                                   excerpt=f"TcpExt.TCPBacklogDrop = {bd}")], data={"TCPBacklogDrop": bd})
    floods = [(r, m) for r in dmesg_records(b) for m in [SYN_FLOOD.search(str(r.get("message", "")))] if m]
    if floods:
        ports = sorted({m.group("port") for _, m in floods})
        yield Finding(WARNING, f"Kernel reported possible SYN flooding on port {', '.join(ports[:4])}",
                      "The kernel logged that a listener's SYN queue overflowed and it started "
                      + ("sending SYN cookies" if any("cookies" in m.group("action") for _, m in floods)
                         else "dropping connection requests")
                      + ". The timeline shows when.", rule="listen_queue", host=b.host,
                      evidence=cap([dmesg_evidence(b, r) for r, _ in floods]), time=record_time(floods[0][0]),
                      last_time=record_time(floods[-1][0]))


RULE = Rule(name="listen_queue", summary="full accept queues, listen overflows, SYN queue drops",
            evaluate=evaluate, reads=("sockets", "dmesg"),
            severity="critical (a full accept queue now); warning (nearly full, counters, SYN flood messages)",
            order=21)
