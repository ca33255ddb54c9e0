"""A busy loop pinned to CPU 0: several of them make each wait for the CPU (run-queue latency)."""
import os

os.sched_setaffinity(0, {0})
print("READY", os.getpid(), flush=True)
while True:
    pass
