"""Every socket: TCP, UDP and Unix, with state, queues, owner and TCP internals.

What: ``ss -tanpmieO`` (TCP with memory, timers, internals: rtt, cwnd, retransmits),
``ss -uanpmO`` (UDP) and ``ss -xanpO`` (Unix), parsed into one record per socket;
per-process and per-state counts; listeners with their accept queue against the
backlog; the kernel's TCP counters (``/proc/net/netstat``, ``/proc/net/snmp``,
``/proc/net/sockstat``) including listen-queue overflows and SYN drops.
Why: connection leaks, a full accept queue, a peer that stopped reading, retransmit
storms and ephemeral-port exhaustion all show here first, and vanish on restart.
Produces: ``ss-tcp.txt``, ``ss-udp.txt``, ``ss-unix.txt`` (raw), ``sockets.jsonl`` (one
JSON record per socket, streamed), ``sockets.json`` (summary: method, counts by
protocol and state, per process, listeners with backlog and overflow flag, top remote
peers, counters), raw copies under ``proc/``.
Overhead: ``ss`` reads the tables over netlink (sock_diag) and scans /proc/*/fd once
for owners; parsing streams line by line, so memory stays flat with 50,000 sockets.
Caveats: owners of sockets in other network namespaces are not in this table (use
``netns``); sockets open and close while the table is read.
Fallback: without ``ss`` (or with ``method = "proc"``) /proc/net/{tcp,tcp6,udp,udp6,unix}
are parsed and inodes mapped to PIDs through /proc/*/fd; ``sockets.json`` says which
method was used. The table is never silently dropped.
Options: ``[collectors.sockets] method`` = "auto" (default) | "ss" | "proc";
``netns`` = a network namespace file to read instead of goldenhour's own.
"""
from __future__ import annotations

import json
import os
import re
import socket
import struct
from collections import Counter
from typing import Any, Iterable, Iterator

from agent.collector import Collector, Scope, which
from collectors import _netns

SKMEM_RE = re.compile(r"([a-z_]+)(\d+)")
USERS_RE = re.compile(r'\("((?:[^"\\]|\\.)*)",pid=(\d+),fd=(\d+)\)')
TCP_STATES = {1: "ESTAB", 2: "SYN-SENT", 3: "SYN-RECV", 4: "FIN-WAIT-1", 5: "FIN-WAIT-2", 6: "TIME-WAIT",
              7: "UNCONN", 8: "CLOSE-WAIT", 9: "LAST-ACK", 10: "LISTEN", 11: "CLOSING", 12: "NEW-SYN-RECV"}
COUNTERS = ("ListenOverflows", "ListenDrops", "TCPBacklogDrop", "TCPReqQFullDrop", "TCPReqQFullDoCookies",
            "SyncookiesSent", "SyncookiesFailed", "TCPAbortOnMemory", "TCPAbortOnTimeout", "TCPTimeouts",
            "TCPLostRetransmit", "TCPRetransFail", "TCPSynRetrans", "TCPOFODrop", "PruneCalled",
            "TCPMemoryPressures", "TCPAbortOnData", "TCPAbortOnClose", "TCPAbortOnLinger")


def split_addr(addr: str) -> tuple[str, str]:
    """``[::1]:80`` / ``10.0.0.1%eth0:53`` / ``*:*`` -> (host, port)."""
    host, _, port = addr.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


def parse_ss_line(line: str, proto: str) -> dict[str, Any] | None:
    """One line of ``ss -H -O`` output (tcp/udp: State first; unix: Netid first)."""
    parts = line.split()
    if proto == "unix":
        if len(parts) < 8:
            return None
        netid, state, rq, sq = parts[0], parts[1], parts[2], parts[3]
        rec: dict[str, Any] = {"proto": netid, "state": state, "recv_q": int(rq), "send_q": int(sq),
                               "local": parts[4], "inode": int(parts[5]) if parts[5].isdigit() else parts[5],
                               "peer_inode": int(parts[7]) if parts[7].isdigit() else parts[7]}
        rest = parts[8:]
    else:
        if len(parts) < 5:
            return None
        state, rq, sq, local, peer = parts[:5]
        try:
            rec = {"proto": proto, "state": state, "recv_q": int(rq), "send_q": int(sq)}
        except ValueError:
            return None
        rec["local_addr"], rec["local_port"] = split_addr(local)
        rec["peer_addr"], rec["peer_port"] = split_addr(peer)
        rest = parts[5:]
    m = USERS_RE.findall(line)
    if m:
        rec["users"] = [{"comm": c.replace('\\"', '"'), "pid": int(p), "fd": int(f)} for c, p, f in m]
    info: dict[str, Any] = {}
    for tok in rest:
        if tok.startswith("users:"):
            continue
        k, sep, v = tok.partition(":")
        if sep and k and not k.startswith("(") and k.replace("_", "").isalnum():
            if k == "skmem":
                info[k] = {m[0]: int(m[1]) for m in SKMEM_RE.findall(v)}
            else:
                info[k] = v
        elif not sep and tok in ("bbr", "cubic", "reno", "ts", "sack", "ecn", "wscale", "app_limited"):
            info.setdefault("flags", []).append(tok)
    if info:
        rec["info"] = info
    return rec


# -- /proc fallback --------------------------------------------------------------

def _hex_addr(h: str) -> tuple[str, str]:
    addr, port = h.split(":")
    raw = bytes.fromhex(addr)
    if len(raw) == 4:
        ip = socket.inet_ntop(socket.AF_INET, raw[::-1])
    else:
        ip = socket.inet_ntop(socket.AF_INET6, b"".join(struct.pack("<I", w) for w in struct.unpack(">4I", raw)))
    return ip, str(int(port, 16))


def parse_proc_net(text: str, proto: str) -> Iterator[dict[str, Any]]:
    """/proc/net/{tcp,tcp6,udp,udp6} rows."""
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 10:
            continue
        la, lp = _hex_addr(f[1])
        ra, rp = _hex_addr(f[2])
        st = int(f[3], 16)
        tx, rx = (int(x, 16) for x in f[4].split(":"))
        state = TCP_STATES.get(st, str(st)) if proto.startswith("tcp") else ("UNCONN" if st == 7 else "ESTAB")
        yield {"proto": "tcp" if proto.startswith("tcp") else "udp", "state": state, "recv_q": rx, "send_q": tx,
               "local_addr": la, "local_port": lp, "peer_addr": ra, "peer_port": "*" if rp == "0" else rp,
               "uid": int(f[7]), "inode": int(f[9])}


def parse_proc_unix(text: str) -> Iterator[dict[str, Any]]:
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 7:
            continue
        st = int(f[5], 16)
        typ = {1: "u_str", 2: "u_dgr", 5: "u_seq"}.get(int(f[4], 16), "u_" + f[4])
        yield {"proto": typ, "state": {1: "UNCONN", 3: "ESTAB"}.get(st, str(st)) if int(f[3], 16) != 0x10000
               else "LISTEN", "recv_q": 0, "send_q": 0, "inode": int(f[6]), "local": f[7] if len(f) > 7 else "*"}


def inode_owners() -> dict[int, list[dict[str, Any]]]:
    owners: dict[int, list[dict[str, Any]]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{name}/fd")
            with open(f"/proc/{name}/comm") as fh:
                comm = fh.read().strip()
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{name}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                owners.setdefault(int(link[8:-1]), []).append({"comm": comm, "pid": int(name), "fd": int(fd)})
    return owners


def proc_records(ctx) -> Iterator[dict[str, Any]]:
    owners = inode_owners()
    for name in ("tcp", "tcp6", "udp", "udp6", "unix"):
        path = f"/proc/net/{name}"
        copied = ctx.copy(path, f"proc/net-{name}")
        if copied is None:
            continue
        text = copied.read_text(errors="replace")
        rows = parse_proc_unix(text) if name == "unix" else parse_proc_net(text, name)
        for r in rows:
            if r.get("inode") in owners:
                r["users"] = owners[r["inode"]]
            yield r


def ss_records(ctx) -> Iterator[dict[str, Any]]:
    for proto, argv, out in (("tcp", ["ss", "-H", "-tanpmieO"], "ss-tcp.txt"),
                             ("udp", ["ss", "-H", "-uanpmO"], "ss-udp.txt"),
                             ("unix", ["ss", "-H", "-xanpO"], "ss-unix.txt")):
        res = ctx.run(argv, stdout=out, timeout_s=min(30.0, ctx.remaining()))
        if not res.ok:
            raise RuntimeError(f"{' '.join(argv)} failed: rc={res.returncode} {res.error or ''}")
        with open(ctx.out / out, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                rec = parse_ss_line(line, proto)
                if rec:
                    yield rec


def parse_netstat(text: str) -> dict[str, dict[str, int]]:
    """/proc/net/netstat and /proc/net/snmp: header line then value line per section."""
    out: dict[str, dict[str, int]] = {}
    lines = text.splitlines()
    for head, vals in zip(lines[::2], lines[1::2]):
        hk, hv = head.split(":", 1), vals.split(":", 1)
        if len(hk) < 2 or len(hv) < 2 or hk[0] != hv[0]:
            continue
        names, nums = hk[1].split(), hv[1].split()
        sec = out.setdefault(hk[0], {})
        for n, v in zip(names, nums):
            try:
                sec[n] = int(v)
            except ValueError:
                pass
    return out


def summarise(records: Iterable[dict[str, Any]], sink) -> dict[str, Any]:
    """Stream records into ``sink`` (one JSON line each) and count as they pass."""
    by_proto: Counter[str] = Counter()
    by_state: dict[str, Counter[str]] = {}
    per_proc: dict[int, dict[str, Any]] = {}
    peers: Counter[str] = Counter()
    listeners = []
    total = 0
    for r in records:
        sink.write(json.dumps(r, separators=(",", ":")) + "\n")
        total += 1
        proto = r["proto"]
        by_proto[proto] += 1
        by_state.setdefault(proto, Counter())[r["state"]] += 1
        for u in r.get("users", [])[:1]:
            p = per_proc.setdefault(u["pid"], {"pid": u["pid"], "comm": u["comm"], "total": 0, "states": Counter()})
            p["total"] += 1
            p["states"][f"{proto}:{r['state']}"] += 1
        if proto == "tcp" and r["state"] == "LISTEN":
            listeners.append({"local": f"{r['local_addr']}:{r['local_port']}", "accept_queue": r["recv_q"],
                              "backlog": r["send_q"], "full": r["recv_q"] >= r["send_q"] > 0 or
                              (r["send_q"] == 0 and r["recv_q"] > 0),
                              "owners": [{"pid": u["pid"], "comm": u["comm"]} for u in r.get("users", [])]})
        elif proto == "tcp" and r.get("peer_addr") not in (None, "*", "0.0.0.0", "::"):
            peers[r["peer_addr"]] += 1
    procs = sorted(per_proc.values(), key=lambda p: -p["total"])
    for p in procs:
        p["states"] = dict(p["states"])
    return {"total": total, "by_proto": dict(by_proto), "by_state": {k: dict(v) for k, v in by_state.items()},
            "processes": procs[:200], "listeners": listeners, "top_peers": peers.most_common(20)}


def collect(ctx) -> None:
    netns = _netns.enter(ctx)
    method = ctx.options.get("method", "auto")
    if method not in ("auto", "ss", "proc"):
        raise ValueError(f"[collectors.sockets] method must be auto, ss or proc, not {method!r}")
    fallback_reason = None
    summary: dict[str, Any] | None = None
    if method in ("auto", "ss") and which("ss"):
        try:
            with open(ctx.path("sockets.jsonl"), "w") as sink:
                summary = summarise(ss_records(ctx), sink)
            used = "ss (netlink sock_diag)"
        except (RuntimeError, OSError) as exc:
            if method == "ss":
                raise
            fallback_reason = str(exc)
    elif method == "ss":
        raise RuntimeError("method = ss but ss is not installed")
    elif method == "auto":
        fallback_reason = "ss not found on PATH"
    if summary is None:
        with open(ctx.path("sockets.jsonl"), "w") as sink:
            summary = summarise(proc_records(ctx), sink)
        used = "/proc/net + /proc/*/fd"
        if fallback_reason:
            ctx.partial(f"fell back to /proc/net: {fallback_reason}")
    counters: dict[str, Any] = {}
    for name in ("netstat", "snmp", "sockstat", "sockstat6"):
        p = ctx.copy(f"/proc/net/{name}", f"proc/net-{name}")
        if p is not None and name in ("netstat", "snmp"):
            counters.update(parse_netstat(p.read_text(errors="replace")))
    tcpext = counters.get("TcpExt", {})
    summary.update(method=used, fallback_reason=fallback_reason, netns=netns,
                   counters={"TcpExt": {k: tcpext[k] for k in COUNTERS if k in tcpext},
                             "Tcp": counters.get("Tcp", {}), "Udp": counters.get("Udp", {})})
    ctx.write_json("sockets.json", summary)
    ctx.note(method=used, sockets=summary["total"])


COLLECTOR = Collector(
    name="sockets", summary="every TCP/UDP/Unix socket with owner, queues, TCP internals; overflow counters",
    scope=Scope.HOST, collect=collect, timeout_s=60, volatility=20)
