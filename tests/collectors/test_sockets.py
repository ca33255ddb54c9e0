"""sockets against the live kernel: listeners and connections the test opens, with their owner."""
from __future__ import annotations

import json
import os
import socket

import psutil
import pytest

from collectors.sockets import parse_netstat, parse_ss_line


@pytest.fixture
def sockets_open():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    cli = socket.create_connection(srv.getsockname())
    acc, _ = srv.accept()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    path = f"/tmp/gh-test-{os.getpid()}.sock"
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(path)
    unix.listen(1)
    yield {"tcp": srv.getsockname()[1], "cli": cli.getsockname()[1], "udp": udp.getsockname()[1], "unix": path}
    for s in (cli, acc, srv, udp, unix):
        s.close()
    os.unlink(path)


def _records(res):
    return [json.loads(l) for l in (res.out / "sockets.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["ss", "proc"])
def test_sockets_opened_by_the_test_appear_with_their_pid(run_collector, sockets_open, method):
    res = run_collector("sockets", options={"method": method})
    assert res.status == "ok", res.reason
    recs = _records(res)
    me = os.getpid()
    lis = [r for r in recs if r["proto"] == "tcp" and r["state"] == "LISTEN"
           and r["local_port"] == str(sockets_open["tcp"])]
    assert lis and me in [u["pid"] for u in lis[0]["users"]]
    est = [r for r in recs if r["proto"] == "tcp" and r["state"] == "ESTAB"
           and r["local_port"] == str(sockets_open["cli"]) and r["peer_port"] == str(sockets_open["tcp"])]
    assert est and est[0]["users"][0]["pid"] == me
    assert any(r["proto"] == "udp" and r["local_port"] == str(sockets_open["udp"]) for r in recs)
    assert any(r["proto"] == "u_str" and r.get("local") == sockets_open["unix"] for r in recs)
    summary = json.loads((res.out / "sockets.json").read_text())
    assert summary["method"].startswith("ss" if method == "ss" else "/proc")
    mine = next(p for p in summary["processes"] if p["pid"] == me)
    assert mine["states"]["tcp:LISTEN"] >= 1 and mine["states"]["tcp:ESTAB"] >= 2
    if method == "ss":
        assert "rtt" in est[0]["info"] and "skmem" in est[0]["info"]


def test_tcp_counts_against_psutil(run_collector, sockets_open):
    res = run_collector("sockets")
    ours = [r for r in _records(res) if r["proto"] == "tcp" and r["state"] in ("LISTEN", "ESTAB")]
    theirs = [c for c in psutil.net_connections("tcp") if c.status in ("LISTEN", "ESTABLISHED")]
    assert abs(len(ours) - len(theirs)) <= 2


def test_listen_queue_overflow_is_flagged_and_counted(run_collector):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)                     # backlog 1, never accepted
    port = srv.getsockname()[1]
    before = parse_netstat(open("/proc/net/netstat").read())["TcpExt"]["ListenOverflows"]
    clients = []
    for _ in range(6):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(("127.0.0.1", port))
        clients.append(c)
    try:
        res = run_collector("sockets")
        summary = json.loads((res.out / "sockets.json").read_text())
        lis = next(l for l in summary["listeners"] if l["local"] == f"127.0.0.1:{port}")
        assert lis["full"] and lis["accept_queue"] >= lis["backlog"] == 1
        assert summary["counters"]["TcpExt"]["ListenOverflows"] > before
    finally:
        for c in clients:
            c.close()
        srv.close()


def test_parse_ss_line_with_odd_process_names_and_ipv6():
    line = ('ESTAB 0 0 [::ffff:127.0.0.1]:8080 [::1]:51234 users:(("my \\"app\\", v2",pid=42,fd=7),'
            '("nginx: worker",pid=43,fd=9)) timer:(keepalive,1min,0) ino:123 sk:1 cgroup:/ <-> '
            'skmem:(r0,rb131072,t0,tb2626560,f0,w0,o0,bl0,d0) ts sack cubic wscale:7,7 rto:204 rtt:0.05/0.025 '
            'cwnd:10 retrans:0/3 bytes_sent:100')
    r = parse_ss_line(line, "tcp")
    assert r["local_addr"] == "::ffff:127.0.0.1" and r["local_port"] == "8080" and r["peer_addr"] == "::1"
    assert [u["comm"] for u in r["users"]] == ['my "app", v2', "nginx: worker"]
    assert r["info"]["retrans"] == "0/3" and r["info"]["skmem"]["rb"] == 131072 and "cubic" in r["info"]["flags"]
    r = parse_ss_line("UNCONN 0 0 127.0.0.53%lo:53 0.0.0.0:*", "udp")
    assert r["local_addr"] == "127.0.0.53%lo" and r["peer_port"] == "*"
    assert parse_ss_line("u_str ESTAB 0 0 * 1544 * 1545", "unix")["peer_inode"] == 1545
