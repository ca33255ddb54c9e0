"""A collector that records its own and its parent's (the capture process's) CPU nice and I/O class.

Used only by tests (GOLDENHOUR_EXTRA_COLLECTORS=tests.helpers.prio).
"""
import json
import os

import psutil

from agent.collector import Collector, Scope


def collect(ctx):
    out = {}
    for who, pid in (("collector", os.getpid()), ("capture", os.getppid())):
        out[who] = {"nice": os.getpriority(os.PRIO_PROCESS, pid), "ioclass": int(psutil.Process(pid).ionice().ioclass)}
    try:
        out["collector"]["autogroup"] = open("/proc/self/autogroup").read().split()[-1]
    except OSError:
        out["collector"]["autogroup"] = None       # kernel without CONFIG_SCHED_AUTOGROUP
    ctx.write_text("prio.json", json.dumps(out))


COLLECTOR = Collector(name="prio", summary="test-only: records priorities", scope=Scope.HOST,
                      collect=collect, timeout_s=10, volatility=98)
