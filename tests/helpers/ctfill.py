"""Fill a network namespace's conntrack table with assured entries, so the kernel must drop new flows.

Run inside the namespace (``ip netns exec NS python -m tests.helpers.ctfill [N]``). Entries made by
packets (the report tests' older way) are unreplied, and the kernel evicts one of those to make room
for a new flow ("early drop"): the table stays full but nothing is dropped and nothing is logged. Here
every entry is created through ctnetlink (IPCTNL_MSG_CT_NEW, as ``conntrack -I`` does) with the status
SEEN_REPLY|ASSURED|CONFIRMED and a 600 s timeout: assured entries are never early-dropped, so once the
table holds ``nf_conntrack_max`` of them a new flow's packet is dropped and the kernel logs its own
"nf_conntrack: table full in netns N, dropping packet". N defaults to nf_conntrack_max + 100 (the extra
ones fail with ENOMEM). Batched: ~3.5 s for 262,144 entries on the 2-core test VM. Prints the counts.
"""
from __future__ import annotations

import socket
import struct
import sys

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_NEW = 1, 0
NLM_F_REQUEST, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x200, 0x400
NLMSG_ERROR = 2
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_TIMEOUT = 1, 2, 3, 7
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST = 1, 2
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
IPS_SEEN_REPLY, IPS_ASSURED, IPS_CONFIRMED = 0x2, 0x4, 0x8
NLA_F_NESTED = 0x8000


def _attr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * (-n % 4)


def _nest(kind: int, *parts: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(parts))


def _tuple(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (_nest(CTA_TUPLE_IP, _attr(CTA_IP_V4_SRC, socket.inet_aton(src)),
                  _attr(CTA_IP_V4_DST, socket.inet_aton(dst)))
            + _nest(CTA_TUPLE_PROTO, _attr(CTA_PROTO_NUM, bytes([socket.IPPROTO_UDP])),
                    _attr(CTA_PROTO_SRC_PORT, struct.pack("!H", sport)),
                    _attr(CTA_PROTO_DST_PORT, struct.pack("!H", dport))))


def message(seq: int, i: int) -> bytes:
    """One "create this assured UDP flow" request: 10.a.b.c:1000 -> 10.255.0.1:53, answered."""
    src = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
    body = struct.pack("=BBH", socket.AF_INET, 0, 0)
    body += _nest(CTA_TUPLE_ORIG, _tuple(src, "10.255.0.1", 1000, 53))
    body += _nest(CTA_TUPLE_REPLY, _tuple("10.255.0.1", src, 53, 1000))
    body += _attr(CTA_STATUS, struct.pack("!I", IPS_SEEN_REPLY | IPS_ASSURED | IPS_CONFIRMED))
    body += _attr(CTA_TIMEOUT, struct.pack("!I", 600))
    kind = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW
    return struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL, seq, 0) + body


def fill(n: int) -> dict[int, int]:
    """Create ``n`` entries; returns {errno: count} of the requests the kernel refused."""
    errors: dict[int, int] = {}
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind((0, 0))

    def drain() -> None:
        s.setblocking(False)
        try:
            while True:
                data = s.recv(1 << 16)
                off = 0
                while off + 16 <= len(data):
                    length, kind = struct.unpack_from("=IH", data, off)
                    if kind == NLMSG_ERROR:
                        err = -struct.unpack_from("=i", data, off + 16)[0]
                        errors[err] = errors.get(err, 0) + 1
                    off += max(16, (length + 3) & ~3)
        except BlockingIOError:
            pass
        finally:
            s.setblocking(True)

    batch: list[bytes] = []
    size = 0
    with s:
        for i in range(n):
            m = message(i + 1, i)
            batch.append(m)
            size += len(m)
            if size > 60_000 or i == n - 1:
                s.send(b"".join(batch))
                batch, size = [], 0
                drain()
    return errors


if __name__ == "__main__":
    mx = int(open("/proc/sys/net/netfilter/nf_conntrack_max").read())
    n = int(sys.argv[1]) if len(sys.argv) > 1 else mx + 100
    errs = fill(n)
    count = int(open("/proc/sys/net/netfilter/nf_conntrack_count").read())
    print(f"requested {n} count {count} max {mx} errors {errs}", flush=True)
