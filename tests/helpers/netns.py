"""Network namespaces for tests and benchmarks (``ip netns``): loopback up, optionally tracked by conntrack.

``make_netns(prefix, conntrack)`` returns the name of a new namespace (``/run/netns/<name>``);
``delete(name)`` removes it; ``netns(prefix, conntrack)`` is both as a context manager.
"""
from __future__ import annotations

import subprocess
import uuid
from contextlib import contextmanager
from typing import Iterator


def make_netns(prefix: str, conntrack: bool = False, unique: bool = True) -> str:
    """A namespace named ``<prefix>-<random>`` (or ``prefix`` itself with ``unique=False``).

    With ``conntrack``, an nftables rule that uses conntrack makes the kernel track connections
    in it, and unreplied UDP entries live 600 s (not 30) so counts stay stable while measured.
    """
    name = f"{prefix}-{uuid.uuid4().hex[:8]}" if unique else prefix
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        if conntrack:
            ex = ["ip", "netns", "exec", name]
            subprocess.run(ex + ["nft", "add table inet gh;"
                                 " add chain inet gh out { type filter hook output priority 0; };"
                                 " add rule inet gh out ct state new counter"], check=True)
            subprocess.run(ex + ["sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=600"], check=True)
    except BaseException:
        delete(name)
        raise
    return name


def delete(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@contextmanager
def netns(prefix: str, conntrack: bool = False) -> Iterator[str]:
    name = make_netns(prefix, conntrack)
    try:
        yield name
    finally:
        delete(name)
