"""tcpretrans against the real TCP stack: loss made on loopback in a throw-away network namespace.

In the namespace, iptables drops every third segment sent to the server's port, so
the client's kernel must retransmit; a connection to a closed port there is answered
with a reset (sent by one side, received by the other). The traffic starts only once
the probe has written ``attached.json``. The tracepoints are global, so the probe,
running in goldenhour's namespace, sees the namespace's flows; the ports identify them, and
each flow is matched to its owner in the namespace it lives in.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from collectors import tcpretrans
from tests.helpers import probes
from tests.helpers.netns import netns
from tests.helpers.probes import skip_without_bpf

PORT, CLOSED = 5555, 5556

TRAFFIC = r'''
import os, socket, sys, threading, time
marker, port, closed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port)); srv.listen(8)
print("READY", os.getpid(), flush=True)
while not os.path.exists(marker):
    time.sleep(0.002)
def sink():
    c, _ = srv.accept()
    while c.recv(65536):
        pass
threading.Thread(target=sink, daemon=True).start()
cl = socket.create_connection(("127.0.0.1", port))
cl.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for i in range(30):
    cl.send(b"x" * 100)
    time.sleep(0.01)
try:
    socket.create_connection(("127.0.0.1", closed), timeout=2)
except ConnectionRefusedError:
    print("REFUSED", flush=True)
print("DONE", flush=True)
time.sleep(120)        # its sockets stay open until the test ends: the probe finds their owner
'''


@pytest.fixture
def lossy_netns():
    if not probes.which_all("ip", "iptables"):
        pytest.skip("needs ip and iptables")
    with netns("gh-rt") as name:
        subprocess.run(["ip", "netns", "exec", name, "iptables", "-A", "INPUT", "-p", "tcp", "--dport", str(PORT),
                        "-m", "statistic", "--mode", "nth", "--every", "3", "--packet", "0", "-j", "DROP"], check=True)
        yield name


@skip_without_bpf
def test_retransmits_and_resets_show_with_their_ports(spawn, tmp_path, lossy_netns):
    staging = tmp_path / "staging"
    traffic = spawn(["ip", "netns", "exec", lossy_netns, sys.executable, "-c", TRAFFIC,
                     str(probes.marker(staging, "tcpretrans")), str(PORT), str(CLOSED)])
    res = probes.run("tcpretrans", staging, capture={"probe_seconds": 2})
    assert res.status == "ok", res.reason
    assert traffic.popen.stdout.readline().strip() == "REFUSED"
    assert "tcp:tcp_retransmit_skb" in res.notes["attached"]
    doc = json.loads((res.out / "tcpretrans.json").read_text())
    ours = [e for e in doc["events"] if PORT in (e["sport"], e["dport"]) or CLOSED in (e["sport"], e["dport"])]
    rtx = [e for e in ours if e["kind"] == "retransmit"]
    assert all(e["daddr"] == e["saddr"] == "127.0.0.1" and e["family"] == "ipv4" and e["state"] for e in rtx)
    client = [e for e in rtx if e["dport"] == PORT]     # the client's data segments to the server
    assert sum(e["count"] for e in client) >= 3          # every third segment of 30 was dropped
    # the owner is found in the namespace it lives in, not goldenhour's: the process and that namespace's inode
    ns = os.stat(f"/run/netns/{lossy_netns}").st_ino
    assert {(e.get("pid"), e.get("netns")) for e in client} == {(traffic.popen.pid, ns)}
    assert doc["totals"]["retransmit"] >= sum(e["count"] for e in rtx)
    if "tcp:tcp_receive_reset" in res.notes["attached"]:
        assert [e for e in ours if e["kind"] == "receive_reset" and e["dport"] == CLOSED]
    if "tcp:tcp_send_reset" in res.notes["attached"]:
        sent = [e for e in ours if e["kind"] == "send_reset" and e["sport"] == CLOSED]
        assert sent and sent[0]["daddr"] == "127.0.0.1"
        if "reason" in sent[0]:
            assert sent[0]["reason"] == "NO_SOCKET"
    assert all(e["time"] and e["first_utc"] <= e["last_utc"] for e in ours)
    text = (res.out / "tcpretrans.txt").read_text()
    assert f"127.0.0.1:{PORT}" in text
    probes.assert_released(json.loads((res.out / "attached.json").read_text()))


def test_send_reset_formats_of_old_and_new_kernels_both_compile_to_c():
    """Linux < 6.10 has family/sport/dport/saddr[4]; newer kernels two sockaddr fields."""
    old = ("\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;\n"
           "\tfield:__u16 sport;\toffset:28;\tsize:2;\tsigned:0;\n"
           "\tfield:__u16 dport;\toffset:30;\tsize:2;\tsigned:0;\n"
           "\tfield:__u16 family;\toffset:32;\tsize:2;\tsigned:0;\n"
           "\tfield:__u8 saddr[4];\toffset:34;\tsize:4;\tsigned:0;\n"
           "\tfield:__u8 daddr[4];\toffset:38;\tsize:4;\tsigned:0;\n")
    new = ("\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;\n"
           "\tfield:enum sk_rst_reason reason;\toffset:28;\tsize:4;\tsigned:0;\n"
           "\tfield:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;\n"
           "\tfield:__u8 daddr[28];\toffset:60;\tsize:28;\tsigned:0;\n")
    from collectors._bpf import parse_format
    c_old = tcpretrans.probe_c("tcp:tcp_send_reset", parse_format(old))
    c_new = tcpretrans.probe_c("tcp:tcp_send_reset", parse_format(new))
    assert "(u8 *)ctx + 34" in c_old and "gh_sockaddr" not in c_old
    assert "gh_sockaddr(sa" in c_new and "k.reason = v" in c_new and "(u8 *)ctx + 60" in c_new
    assert tcpretrans.probe_c("tcp:tcp_send_reset", parse_format("\tfield:int x;\toffset:8;\tsize:4;\n")) is None
