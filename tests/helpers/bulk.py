"""A collector that writes ``options["mb"]`` MiB of incompressible data (tests of caps and full disks)."""
import os

from agent.collector import Collector, Option, Scope


def collect(ctx):
    mb = int(ctx.options.get("mb", 8))
    with open(ctx.path("bulk.bin"), "wb") as fh:
        for _ in range(mb):
            fh.write(os.urandom(1 << 20))


OPTIONS = {
    "mb": Option(8, int, "MiB of random data written."),
}

COLLECTOR = Collector(name="bulk", summary="test-only: writes random data", scope=Scope.HOST,
                      collect=collect, timeout_s=30, volatility=97, options=OPTIONS)
