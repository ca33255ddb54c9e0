"""File-lock contention: one thread holds an flock for 0.3 s at a time, another waits for it in flock().

Each of the waiter's flock() calls takes about 0.3 s: a system call that should take
microseconds, blocked on a lock another holder keeps, as seen in a probe window.
"""
import fcntl
import os
import tempfile
import threading
import time

HOLD_S = 0.3
path = os.path.join(tempfile.mkdtemp(prefix="gh-flock-"), "lock")
open(path, "w").close()


def holder():
    fd = os.open(path, os.O_RDWR)
    while True:
        fcntl.flock(fd, fcntl.LOCK_EX)
        time.sleep(HOLD_S)
        fcntl.flock(fd, fcntl.LOCK_UN)
        time.sleep(0.002)            # the waiter takes the lock here


def waiter():
    fd = os.open(path, os.O_RDWR)
    while True:
        fcntl.flock(fd, fcntl.LOCK_EX)   # blocks while the holder has it
        fcntl.flock(fd, fcntl.LOCK_UN)
        time.sleep(0.001)


threading.Thread(target=holder, name="gh-lock-holder", daemon=True).start()
time.sleep(0.05)
threading.Thread(target=waiter, name="gh-lock-waiter", daemon=True).start()
print("READY", os.getpid(), path, flush=True)
time.sleep(3600)
