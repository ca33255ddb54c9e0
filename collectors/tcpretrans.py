"""TCP retransmits and resets per flow, with addresses and ports (eBPF, tcp tracepoints).

What: for the probe window, every TCP segment the kernel retransmitted
(``tcp:tcp_retransmit_skb``; SYN-ACK retransmits too, ``tcp:tcp_retransmit_synack``),
every reset it sent (``tcp:tcp_send_reset``, with the kernel's reason where this
kernel records one) and every reset it received (``tcp:tcp_receive_reset``), counted
in the kernel per flow (local and remote address and port, TCP state, reset reason)
with the first and last time seen. When the window ends, flows are matched to the
process owning the socket and its network namespace: the TCP tables of every namespace a
process lives in (``/proc/PID/net/tcp{,6}`` of one process each) and one pass over
``/proc/*/fd``, so a client's and a server's retransmits on one link are told apart.
Why: retransmits are packet loss or a peer that stopped answering; each adds at
least the retransmission timeout (200 ms, doubling) to a request. Resets are refused
connections, crashed or restarted peers, a load balancer or firewall killing idle
connections, or a listen queue overflowing. Naming the peers turns "the network is
slow" into "this link, this service".
Produces: ``tcpretrans.json``: ``window``/``window_s``, ``attached``, ``totals`` per
kind, ``events``: one record per (kind, flow) with kind (retransmit, retransmit_synack,
send_reset, receive_reset), family, saddr, sport (local), daddr, dport (remote),
state, reason, count, first_utc/last_utc (``time`` = first), pid, comm and netns (the
namespace's inode) of the owner when found (``other_owners`` when two namespaces hold the
same addresses); ``tcpretrans.txt`` (a table of the flows). ``attached.json``.
Overhead: these tracepoints fire only on retransmits and resets (rare on a healthy
host, thousands per second in a bad incident), each a hash-map update: negligible.
Compiling: ~0.5 s of CPU. In the standard and full profiles.
Caveats: counts per flow, not per packet contents. Owners are found only for sockets
still open when the window ends. Resets sent in answer to a packet for no socket have no TCP state.
Safety: tracepoints only; programs and maps are released at the end of the window
and when the collector is killed.
Options: ``[collectors.tcpretrans] top`` = flows shown in the text (default 30).
"""
from __future__ import annotations

import ipaddress
import os
import re
import socket
from typing import Any

from agent import procfs
from agent.collector import Collector, Option, Scope, Skip, read_text
from collectors import _bpf

KINDS = {"tcp:tcp_retransmit_skb": (1, "retransmit", "gh_tcp_rtx"),
         "tcp:tcp_retransmit_synack": (2, "retransmit_synack", "gh_tcp_synack"),
         "tcp:tcp_send_reset": (3, "send_reset", "gh_tcp_rst_tx"),
         "tcp:tcp_receive_reset": (4, "receive_reset", "gh_tcp_rst_rx")}
KIND_NAMES = {v[0]: v[1] for v in KINDS.values()}
REQUIRED = "tcp:tcp_retransmit_skb"
FLOW_ENTRIES = 16384
TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
              7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV"}

HEAD = r"""
#include <linux/socket.h>
struct gh_flow_t { u8 saddr[16]; u8 daddr[16]; u16 family; u16 sport; u16 dport; u8 kind; u8 state;
                   u16 reason; u16 pad; };
struct gh_fval_t { u64 count; u64 first_ns; u64 last_ns; };
BPF_HASH(gh_tcp_flows, struct gh_flow_t, struct gh_fval_t, GH_FLOW_ENTRIES);
BPF_ARRAY(gh_tcp_drop, u64, 1);

static inline void gh_count(struct gh_flow_t *k) {
    u64 now = bpf_ktime_get_ns();
    struct gh_fval_t zero = {.first_ns = now};
    struct gh_fval_t *v = gh_tcp_flows.lookup_or_try_init(k, &zero);
    if (!v) {
        int i = 0;
        u64 *d = gh_tcp_drop.lookup(&i);
        if (d) __sync_fetch_and_add(d, 1);
        return;
    }
    __sync_fetch_and_add(&v->count, 1);
    v->last_ns = now;
}

/* a struct sockaddr_in / sockaddr_in6 copied out of a tracepoint field */
static inline void gh_sockaddr(u8 *sa, u8 *addr, u16 *port, u16 *family) {
    u16 fam = sa[0] | (sa[1] << 8);
    *family = fam;
    *port = (sa[2] << 8) | sa[3];
    if (fam == AF_INET)
        __builtin_memcpy(addr, &sa[4], 4);
    else if (fam == AF_INET6)
        __builtin_memcpy(addr, &sa[8], 16);
}
"""


def probe_c(tp: str, fields: dict[str, dict[str, Any]]) -> str | None:
    """The C function for one tracepoint, reading the fields at the offsets this kernel's format gives.

    Fields are copied by offset (``bpf_probe_read_kernel`` from the tracepoint record), so
    nothing depends on the kernel headers' types (since Linux 6.10 ``tcp_send_reset`` has an
    ``enum sk_rst_reason`` that older distribution headers do not know).
    """
    kind, _, fn = KINDS[tp]
    width = {1: "u8", 2: "u16", 4: "u32", 8: "u64"}

    def read(dst: str, f: dict[str, Any], size: int | None = None) -> str:
        return f"bpf_probe_read_kernel({dst}, {size or f['size']}, (u8 *)ctx + {f['offset']});"

    def scalar(name: str, dst: str) -> list[str]:
        f = fields[name]
        t = width.get(f["size"])
        if t is None:
            return []
        return [f"    {{ {t} v = 0; {read('&v', f)} {dst} = v; }}"]

    body = ["    struct gh_flow_t k;", "    __builtin_memset(&k, 0, sizeof(k));", f"    k.kind = {kind};"]
    if "state" in fields:
        body += scalar("state", "k.state")
    if "reason" in fields:
        body += scalar("reason", "k.reason")
    names = set(fields)
    if {"family", "sport", "dport", "saddr", "daddr"} <= names and fields["saddr"]["size"] == 4:
        body += scalar("family", "k.family") + scalar("sport", "k.sport") + scalar("dport", "k.dport")
        body += ["    if (k.family == AF_INET) {",
                 "        " + read("&k.saddr", fields["saddr"], 4),
                 "        " + read("&k.daddr", fields["daddr"], 4)]
        if {"saddr_v6", "daddr_v6"} <= names:
            body += ["    } else {",
                     "        " + read("&k.saddr", fields["saddr_v6"], 16),
                     "        " + read("&k.daddr", fields["daddr_v6"], 16)]
        body.append("    }")
    elif {"saddr", "daddr"} <= names and fields["saddr"]["size"] >= 28:
        # a struct sockaddr_in/sockaddr_in6 for each end (tcp_send_reset since Linux 6.10)
        body += ["    u8 sa[28] = {}, da[28] = {};",
                 "    " + read("&sa", fields["saddr"], 28),
                 "    " + read("&da", fields["daddr"], 28),
                 "    u16 fam2 = 0;",
                 "    gh_sockaddr(sa, k.saddr, &k.sport, &k.family);",
                 "    gh_sockaddr(da, k.daddr, &k.dport, &fam2);"]
    else:
        return None
    body += ["    gh_count(&k);", "    return 0;"]
    return f"int {fn}(void *ctx) {{\n" + "\n".join(body) + "\n}\n"


def reason_names(tp: str) -> dict[int, str]:
    """The reset reasons from the tracepoint's print format (``__print_symbolic(REC->reason, ...)``)."""
    base = _bpf.tracefs_path()
    cat, _, name = tp.partition(":")
    text = (read_text(f"{base}/events/{cat}/{name}/format", "") or "") if base else ""
    m = re.search(r"__print_symbolic\(REC->reason,(.*?)\)\s*$", text, re.S | re.M)
    if not m:
        return {}
    return {int(n): s for n, s in re.findall(r"\{\s*(\d+),\s*\"(\w+)\"\s*\}", m.group(1))}


def _addr(raw: bytes, family: int) -> str:
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(bytes(raw[:4])))
    if family == socket.AF_INET6:
        a = ipaddress.IPv6Address(bytes(raw[:16]))
        return str(a.ipv4_mapped or a)
    return "?"


def _table_addr(hexaddr: str) -> str:
    """An address of /proc/net/tcp{,6} (32-bit little-endian words in hex), IPv4-mapped ones as IPv4."""
    raw = bytes.fromhex(hexaddr)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    if len(words) == 4:
        return str(ipaddress.IPv4Address(words))
    a = ipaddress.IPv6Address(words)
    return str(a.ipv4_mapped or a)


def socket_inodes() -> tuple[dict[int, tuple[int, str]], dict[int, int]]:
    """(socket inode -> (pid, comm) of a process holding it, network namespace inode -> a pid living in it),
    from one pass over /proc/*/fd and /proc/*/ns/net."""
    owner: dict[int, tuple[int, str]] = {}
    spaces: dict[int, int] = {}
    for pid in procfs.pids():
        try:
            ns = os.stat(f"/proc/{pid}/ns/net").st_ino
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        spaces.setdefault(ns, pid)
        comm = None
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                ino = int(link[8:-1])
                if ino not in owner:
                    comm = comm or _bpf.proc_comm(pid) or "?"
                    owner[ino] = (pid, comm)
    return owner, spaces


def owners() -> dict[tuple[str, int, str, int], list[tuple[int, str, int]]]:
    """(local ip, port, remote ip, port) -> [(pid, comm, network namespace inode)] of the TCP sockets of every
    network namespace a process lives in (read through /proc/PID/net/tcp{,6} of one process in each)."""
    out: dict[tuple[str, int, str, int], list[tuple[int, str, int]]] = {}
    try:
        owner, spaces = socket_inodes()
    except OSError:
        return out
    for ns, rep in spaces.items():
        for table in ("tcp", "tcp6"):
            for line in (read_text(f"/proc/{rep}/net/{table}", "") or "").splitlines()[1:]:
                f = line.split()
                if len(f) < 10 or not f[9].isdigit() or int(f[9]) not in owner:
                    continue
                try:
                    (la, lp), (ra, rp) = (x.split(":") for x in (f[1], f[2]))
                    key = (_table_addr(la), int(lp, 16), _table_addr(ra), int(rp, 16))
                except ValueError:
                    continue
                pid, comm = owner[int(f[9])]
                if (pid, comm, ns) not in out.setdefault(key, []):
                    out[key].append((pid, comm, ns))
    return out


def collect(ctx) -> None:
    top = int(ctx.options.get("top", 30))
    _bpf.ensure_tracefs()          # to read the formats; Probe would do it too
    funcs, attach, reasons = [], [], {}
    for tp in KINDS:
        if not _bpf.tracepoint_exists(tp):
            continue
        c = probe_c(tp, _bpf.tracepoint_fields(tp))
        if c is None:
            ctx.note(**{f"format_unknown_{KINDS[tp][1]}": sorted(_bpf.tracepoint_fields(tp))})
            continue
        funcs.append(c)
        attach.append((tp, KINDS[tp][2]))
        if tp == "tcp:tcp_send_reset":
            reasons = reason_names(tp)
    if not any(tp == REQUIRED for tp, _ in attach):
        raise Skip(f"tracepoint {REQUIRED} has no usable format in this kernel")
    text = _bpf.defines(GH_FLOW_ENTRIES=FLOW_ENTRIES) + HEAD + "\n".join(funcs)
    optional = [tp for tp, _ in attach if tp != REQUIRED]
    with _bpf.Probe(ctx, text, attach, optional=optional) as probe:
        win = probe.run_window()
        attached = probe.attached_at_end
        flows = _bpf.items(probe["gh_tcp_flows"])
        d = probe["gh_tcp_drop"]
        drops = int(d[d.Key(0)].value)
    own = owners() if flows else {}
    events = []
    for k, v in flows:
        fam = int(k.family)
        rec: dict[str, Any] = {
            "kind": KIND_NAMES.get(int(k.kind), str(k.kind)),
            "family": {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}.get(fam, str(fam)),
            "saddr": _addr(bytes(k.saddr), fam), "sport": int(k.sport),
            "daddr": _addr(bytes(k.daddr), fam), "dport": int(k.dport),
            "state": TCP_STATES.get(int(k.state)) if int(k.state) else None,
            "count": int(v.count), "first_utc": _bpf.mono_ns_to_utc(int(v.first_ns)),
            "last_utc": _bpf.mono_ns_to_utc(int(v.last_ns or v.first_ns))}
        rec["time"] = rec["first_utc"]
        if rec["kind"] == "send_reset" and reasons:
            rec["reason"] = reasons.get(int(k.reason), str(int(k.reason)))
        found = own.get((rec["saddr"], rec["sport"], rec["daddr"], rec["dport"])) or []
        if found:
            rec["pid"], rec["comm"], rec["netns"] = found[0]
            if len(found) > 1:       # the same addresses in two namespaces (two containers' loopback)
                rec["other_owners"] = [{"pid": p, "comm": c, "netns": n} for p, c, n in found[1:4]]
        events.append(rec)
    events.sort(key=lambda r: (-r["count"], r["kind"], r["daddr"], r["dport"]))
    totals = dict.fromkeys(KIND_NAMES.values(), 0)
    for e in events:
        totals[e["kind"]] = totals.get(e["kind"], 0) + e["count"]
    if drops:
        ctx.partial(f"{drops} TCP events not recorded (flow map full)")
    doc = {"window": win, "window_s": win["seconds"], "attached": attached, "not_attached": probe.missing,
           "totals": totals, "flows": len(events), "dropped": drops, "events": events}
    ctx.write_json("tcpretrans.json", doc)
    ctx.write_text("tcpretrans.txt", render(doc, top))
    ctx.note(flows=len(events), **{k: v for k, v in totals.items() if v}, window_s=win["seconds"])


def render(doc: dict[str, Any], top: int = 30) -> str:
    w, t = doc["window"], doc["totals"]
    out = [f"TCP retransmits and resets, {w['start_utc']} .. {w['end_utc']} ({w['seconds']:.2f} s): "
           + ", ".join(f"{v} {k}" for k, v in t.items()), ""]
    if not doc["events"]:
        return "\n".join(out + ["(none in the window)"]) + "\n"
    out.append(f"{'KIND':<18} {'COUNT':>7} {'LOCAL':<28} {'REMOTE':<28} {'STATE':<12} {'OWNER':<22} REASON")
    for e in doc["events"][:top]:
        loc = f"{e['saddr']}:{e['sport']}" if e["family"] == "ipv4" else f"[{e['saddr']}]:{e['sport']}"
        rem = f"{e['daddr']}:{e['dport']}" if e["family"] == "ipv4" else f"[{e['daddr']}]:{e['dport']}"
        owner = f"{e['comm']}/{e['pid']}" if e.get("pid") else "-"
        out.append(f"{e['kind']:<18} {e['count']:>7} {loc:<28} {rem:<28} {e['state'] or '-':<12} {owner:<22} "
                   f"{e.get('reason', '')}")
    return "\n".join(out) + "\n"


OPTIONS = {
    "top": Option(30, int, "Flows shown in the text."),
}

COLLECTOR = Collector(
    name="tcpretrans", summary="eBPF: TCP retransmits and resets per flow (addresses, ports, state, owner)",
    scope=Scope.HOST, collect=collect, requires=_bpf.requirements(REQUIRED),
    profiles=frozenset({"standard", "full"}), timeout_s=60, volatility=3, check=_bpf.check, options=OPTIONS)
