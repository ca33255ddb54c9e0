"""An asyncio service whose event loop is blocked by synchronous CPU-bound work in a coroutine (a report
test target). A TCP server on loopback; its ``render_invoice`` handler, started once at launch as if a
request had come, computes for ``BLOCK_S`` seconds (default 120) without awaiting: no other connection,
timer or task of the loop runs meanwhile. Prints ``READY <pid> <port>`` once the blocking work started.
"""
import asyncio
import os
import sys
import time

BLOCK_S = float(os.environ.get("BLOCK_S", "120"))


def price_lines(n: int) -> int:
    total = 0
    for i in range(n):
        total = (total * 31 + i) % 1000003
    return total


async def render_invoice(order: int) -> int:
    deadline = time.monotonic() + BLOCK_S
    total = 0
    while time.monotonic() < deadline:       # never awaits: the loop is stuck here
        total += price_lines(10_000)
    return total + order


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"ok\n")
    await writer.drain()
    writer.close()


async def main() -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    loop.call_soon(lambda: print(f"READY {os.getpid()} {port}", flush=True))
    await asyncio.sleep(0)
    await render_invoice(42)


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
