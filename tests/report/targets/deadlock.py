"""A Python process whose two threads deadlock: each holds one lock and waits for the other.

Prints ``READY <pid>`` once both threads are blocked in the futex of the second lock.
"""
import os
import threading
import time

lock_a, lock_b = threading.Lock(), threading.Lock()
both_hold_one = threading.Barrier(3)


def take(first, second):
    with first:
        both_hold_one.wait()
        with second:          # never returns: the other thread holds it
            pass


threads = [threading.Thread(target=take, args=(lock_a, lock_b), name="gh-deadlock-a", daemon=True),
           threading.Thread(target=take, args=(lock_b, lock_a), name="gh-deadlock-b", daemon=True)]
for t in threads:
    t.start()
both_hold_one.wait()


def in_futex(tid):
    try:
        with open(f"/proc/self/task/{tid}/syscall") as fh:
            return fh.read().split()[0] == "202"      # futex, x86_64
    except (OSError, IndexError):
        return False


deadline = time.monotonic() + 30
while not all(in_futex(t.native_id) for t in threads) and time.monotonic() < deadline:
    time.sleep(0.001)
print("READY", os.getpid(), " ".join(str(t.native_id) for t in threads), flush=True)
time.sleep(3600)
