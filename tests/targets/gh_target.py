"""goldenhour dump target (CPython). Named threads in known states (a lock deadlock,
a sleeper, a CPU worker), a retained heap of --heap-mb MiB, --fds N open descriptors, and a
ticker thread that appends time.monotonic_ns() to --ticker FILE about every millisecond.
(Adapted from ../shared/runtime-targets/gh_target.py.)"""
import argparse
import os
import random
import threading
import time

lock_a, lock_b = threading.Lock(), threading.Lock()
both_hold_one = threading.Barrier(3)        # the two deadlock threads and main
RETAINED = []

def deadlock_a():
    with lock_a:
        both_hold_one.wait()
        with lock_b:
            pass

def deadlock_b():
    with lock_b:
        both_hold_one.wait()
        with lock_a:
            pass

def crunch_forever():
    while True:
        s = 0
        for i in range(2000):
            s += i * i
        time.sleep(0.002)

def sleep_forever():
    while True:
        time.sleep(60)

def tick(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    while True:
        time.sleep(0.001)
        os.write(fd, b"%d\n" % time.monotonic_ns())

def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ticker")
    p.add_argument("--heap-mb", type=int, default=64)
    p.add_argument("--fds", type=int, default=0)
    a, _unknown = p.parse_known_args()      # extra arguments (fake secrets in tests) are ignored
    fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(a.fds)]
    rnd = random.Random(42)                    # text-like payloads (~6 bits/byte), not zeros
    chunk = bytes(32 + rnd.randrange(64) for _ in range(1 << 16))
    for i in range(a.heap_mb * 1024):          # ~1 KiB per entry: a dict, a str, a bytes
        off = (i * 997) % (len(chunk) - 900)
        RETAINED.append({"id": i, "name": "item-%d" % i, "payload": chunk[off:off + 900]})
    for name, fn in [("gh-deadlock-a", deadlock_a), ("gh-deadlock-b", deadlock_b),
                     ("gh-sleeper", sleep_forever), ("gh-worker", crunch_forever)]:
        threading.Thread(target=fn, name=name, daemon=True).start()
    if a.ticker:
        threading.Thread(target=tick, args=(a.ticker,), name="gh-ticker", daemon=True).start()
    both_hold_one.wait()                     # each deadlock thread holds its first lock
    print("READY", os.getpid(), len(fds), flush=True)
    while True:
        time.sleep(60)

if __name__ == "__main__":
    main()
