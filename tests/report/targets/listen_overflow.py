"""A TCP listener on loopback with backlog 1 that never accepts, and clients that keep connecting.

Run inside a network namespace; prints ``READY <port> <ListenOverflows>`` once the kernel
has counted an accept-queue overflow.
"""
import socket
import sys
import time


def overflows():
    with open("/proc/net/netstat") as fh:
        lines = fh.read().splitlines()
    for head, vals in zip(lines[::2], lines[1::2], strict=False):
        if head.startswith("TcpExt:"):
            return int(vals.split()[head.split().index("ListenOverflows")])
    return 0


srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(1)
port = srv.getsockname()[1]
clients = []
deadline = time.monotonic() + 30
while (overflows() == 0 or len(clients) < 8) and time.monotonic() < deadline:
    c = socket.socket()
    c.setblocking(False)
    c.connect_ex(("127.0.0.1", port))
    clients.append(c)
print("READY", port, overflows(), flush=True)
sys.stdin.read()
