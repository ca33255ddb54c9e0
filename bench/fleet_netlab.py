#!/usr/bin/env python3
"""A small network for real daemons: namespaces on a bridge, a delaying proxy, nftables loss.

Used by bench_fleet.py's real-daemon tier (and usable by hand). Everything is ours and
removed by ``Lab.close()`` (also after an exception):

- a bridge ``ghfl<id>`` in the root namespace with 10.77.0.1/24, where nats-server (through
  the proxy) and moto's S3 listen;
- per host a network namespace with a veth pair, the namespace end 10.77.0.<10+i>/24 on the
  bridge, loopback up, default route via 10.77.0.1; ``loss(ns, percent)`` adds nftables
  rules dropping that share of packets at random in both directions (``numgen random``;
  ``tc netem`` is not in this kernel); ``down(ns)`` / ``up(ns)`` take the link away and
  back (a host going offline mid-incident);
- ``python bench/fleet_netlab.py proxy LISTEN TARGET DELAY_MS JITTER_MS``: a TCP proxy that
  holds every chunk DELAY +- JITTER ms in each direction (order kept), i.e. about twice that
  per round trip -- a WAN between the hosts and the NATS server.
"""
from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import uuid


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True)


class Lab:
    def __init__(self) -> None:
        self.id = uuid.uuid4().hex[:4]
        self.bridge = f"ghfl{self.id}"
        self.gw = "10.77.0.1"
        self.namespaces: list[str] = []
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        try:
            sh("ip", "addr", "add", f"{self.gw}/24", "dev", self.bridge)
            sh("ip", "link", "set", self.bridge, "up")
        except BaseException:
            self.close()
            raise

    def add_host(self, i: int) -> tuple[str, str]:
        """A namespace for host ``i``: (namespace name, its address)."""
        ns = f"ghfl{self.id}-{i}"
        veth, peer = f"gf{self.id}{i}a", f"gf{self.id}{i}b"
        addr = f"10.77.0.{10 + i}"
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", peer)
        sh("ip", "link", "set", peer, "netns", ns)
        sh("ip", "link", "set", veth, "master", self.bridge)
        sh("ip", "link", "set", veth, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", peer)
        sh("ip", "-n", ns, "link", "set", peer, "up")
        sh("ip", "-n", ns, "route", "add", "default", "via", self.gw)
        return ns, addr

    def _peer(self, ns: str) -> str:
        i = ns.rsplit("-", 1)[1]
        return f"gf{self.id}{i}b"

    def loss(self, ns: str, percent: float) -> None:
        if percent <= 0:
            return
        p = int(percent)
        rules = (f"add table inet ghloss; "
                 f"add chain inet ghloss in {{ type filter hook input priority 0; }}; "
                 f"add chain inet ghloss out {{ type filter hook output priority 0; }}; "
                 f"add rule inet ghloss in iifname != lo numgen random mod 100 < {p} drop; "
                 f"add rule inet ghloss out oifname != lo numgen random mod 100 < {p} drop")
        sh("ip", "netns", "exec", ns, "nft", rules)

    def down(self, ns: str) -> None:
        sh("ip", "-n", ns, "link", "set", self._peer(ns), "down")

    def up(self, ns: str) -> None:
        sh("ip", "-n", ns, "link", "set", self._peer(ns), "up")
        sh("ip", "-n", ns, "route", "replace", "default", "via", self.gw, check=False)

    def close(self) -> None:
        for ns in self.namespaces:
            sh("ip", "netns", "del", ns, check=False)
        self.namespaces = []
        sh("ip", "link", "del", self.bridge, check=False)


# -- the delaying proxy -----------------------------------------------------------------------

async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float, jitter_s: float) -> None:
    queue: asyncio.Queue = asyncio.Queue()
    loop = asyncio.get_running_loop()

    async def sender() -> None:
        while True:
            due, data = await queue.get()
            if data is None:
                break
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()

    task = asyncio.create_task(sender())
    last = 0.0
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            due = max(last, loop.time() + max(0.0, delay_s + random.uniform(-jitter_s, jitter_s)))
            last = due
            queue.put_nowait((due, data))
    except (ConnectionError, OSError):
        pass
    queue.put_nowait((0, None))
    try:
        await task
    except (ConnectionError, OSError):
        pass


async def proxy(listen: str, target: str, delay_ms: float, jitter_ms: float) -> None:
    lh, lp = listen.rsplit(":", 1)
    th, tp = target.rsplit(":", 1)
    d, j = delay_ms / 1000, jitter_ms / 1000

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(th, int(tp))
        except OSError:
            w.close()
            return
        await asyncio.gather(_pipe(r, uw, d, j), _pipe(ur, w, d, j), return_exceptions=True)

    server = await asyncio.start_server(handle, lh, int(lp), backlog=1024)
    print("READY", flush=True)
    async with server:
        await server.serve_forever()


def start_proxy(listen: str, target: str, delay_ms: float, jitter_ms: float) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, __file__, "proxy", listen, target, str(delay_ms), str(jitter_ms)],
                         stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert p.stdout is not None
    line = p.stdout.readline()
    if "READY" not in line:
        p.kill()
        raise RuntimeError("the delaying proxy did not start")
    return p


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "proxy":
        try:
            asyncio.run(proxy(sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])))
        except KeyboardInterrupt:
            pass
        sys.exit(0)
    print(__doc__)
    sys.exit(2)
