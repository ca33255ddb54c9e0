"""Read a socket option of a socket another process holds (root): pidfd_getfd(2) duplicates its descriptor.

``peer_socket(pid, local_port, remote_port)`` finds, among ``pid``'s descriptors, the TCP socket whose
local and remote ports are those (the server's side of a connection the test opened) and returns a
duplicate of it as a ``socket.socket``; the test reads its options (``getsockopt``) and closes it. The
process's own descriptor is untouched.
"""
from __future__ import annotations

import ctypes
import os
import socket
from pathlib import Path

SYS_PIDFD_GETFD = 438           # the same on x86_64 and aarch64 (the generic syscall table)


def _inodes(pid: int, local_port: int, remote_port: int) -> set[str]:
    found = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if int(f[1].rsplit(":", 1)[1], 16) == local_port and int(f[2].rsplit(":", 1)[1], 16) == remote_port:
                found.add(f[9])
    return found


def peer_socket(pid: int, local_port: int, remote_port: int) -> socket.socket:
    inodes = _inodes(pid, local_port, remote_port)
    if not inodes:
        raise LookupError(f"no TCP socket {local_port}<->{remote_port} in process {pid}")
    libc = ctypes.CDLL(None, use_errno=True)
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            pidfd = os.pidfd_open(pid)
            try:
                dup = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(fd), 0)
                if dup < 0:
                    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
            finally:
                os.close(pidfd)
            return socket.socket(fileno=dup)
    raise LookupError(f"process {pid} holds no descriptor of socket {inodes}")
