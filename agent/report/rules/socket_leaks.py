"""Socket piles: CLOSE-WAIT leaks and TIME-WAIT near the ephemeral port range.

Triggers (``sockets.json``): a process holding 100 or more TCP sockets in CLOSE-WAIT
(warning: the peer closed, the application never did — a descriptor leak that ends
at the fd limit); TCP sockets in TIME-WAIT (``by_state``) at 50 % of the ephemeral
port range from ``host.json`` ``net.ipv4.ip_local_port_range`` (warning: outgoing
connections to one destination start failing with EADDRNOTAVAIL).
Evidence: the per-process state counts and the sysctl.
"""
from __future__ import annotations

from typing import Iterator

from agent.report.model import WARNING, Evidence, Finding
from agent.report.rules import Rule
from agent.report.rules._util import num

FILE = "collectors/sockets/sockets.json"
CLOSE_WAIT = 100


def evaluate(b) -> Iterator[Finding]:
    s = b.json(FILE)
    if not isinstance(s, dict):
        return
    for p in s.get("processes") or []:
        if not isinstance(p, dict):
            continue
        cw = int(num((p.get("states") or {}).get("tcp:CLOSE-WAIT")) or 0)
        if cw >= CLOSE_WAIT:
            yield Finding(WARNING, f"{p.get('comm')} (pid {p.get('pid')}) holds {cw} sockets in CLOSE-WAIT",
                          "The peers closed these connections but the application never closed its side: a "
                          "connection leak. Each holds a file descriptor until the process hits its limit, and the "
                          "requests behind them were likely abandoned.", rule="socket_leaks", host=b.host,
                          evidence=[Evidence(b.host, FILE, record=f"processes pid {p.get('pid')}",
                                             excerpt=f"tcp:CLOSE-WAIT {cw} of {p.get('total')} sockets")])
    tw = int(num(((s.get("by_state") or {}).get("tcp") or {}).get("TIME-WAIT")) or 0)
    h = b.json("collectors/host/host.json")
    rng = ((h.get("sysctls") or {}).get("net.ipv4.ip_local_port_range") if isinstance(h, dict) else None) or ""
    parts = str(rng).split()
    if tw and len(parts) == 2 and all(x.isdigit() for x in parts):
        size = int(parts[1]) - int(parts[0]) + 1
        if size > 0 and tw >= size * 0.5:
            yield Finding(WARNING, f"{tw} TCP sockets in TIME-WAIT, {tw / size:.0%} of the ephemeral port range",
                          f"The local port range holds {size} ports ({rng}); each closed outgoing connection keeps "
                          "its port in TIME-WAIT for 60 s. Near the range, new connections to the same destination "
                          "fail with EADDRNOTAVAIL. Reuse connections (keep-alive, pools) or widen the range.",
                          rule="socket_leaks", host=b.host,
                          evidence=[Evidence(b.host, FILE, record="by_state tcp TIME-WAIT", excerpt=f"{tw}"),
                                    Evidence(b.host, "collectors/host/host.json",
                                             record="sysctls net.ipv4.ip_local_port_range", excerpt=str(rng))])


RULE = Rule(name="socket_leaks", summary="CLOSE-WAIT piles and TIME-WAIT near the ephemeral port range",
            evaluate=evaluate, reads=("sockets", "host"), severity="warning", order=23)
