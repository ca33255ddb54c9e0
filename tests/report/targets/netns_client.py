"""A client service whose new connections are dropped by a full conntrack table (a report test target).

Run inside a network namespace whose conntrack table the test fills. Every 0.1 s it sends a request to a
new destination (a new flow: it needs a new conntrack entry); once the table is full the kernel drops
those packets, sendto() fails with EPERM, and the client logs an error to LOG. Prints ``READY <pid>
<netns inode>`` at start.
"""
import os
import socket
import sys
import threading
import time


def main() -> None:
    log = open(sys.argv[1], "a", buffering=1)
    print(f"READY {os.getpid()} {os.stat('/proc/self/ns/net').st_ino}", flush=True)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    i = 0
    while True:
        i += 1
        try:
            s.sendto(b"GET /quote", ("127.1.%d.%d" % ((i >> 8) & 255, i & 255), 8125))
        except OSError as exc:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
            log.write(f"{stamp}Z ERROR quote request {i} failed: {exc}\n")
        time.sleep(0.1)


if __name__ == "__main__":
    threading.Thread(target=main, name="requests", daemon=False).start()
