"""A journal that commits every record with fdatasync(), one after the other (a report test target).

Usage: slow_journal.py FILE. Appends a small record and calls fdatasync() in a loop, as a write-ahead
log does for every transaction; on a throttled disk each commit takes about half a second and the
commits queue behind each other. Prints ``READY <pid>`` after the first commit.
"""
import os
import sys
import time


def commit(fd: int, n: int) -> float:
    t0 = time.monotonic()
    os.write(fd, f"txn {n} {time.time():.6f}\n".encode())
    os.fdatasync(fd)
    return time.monotonic() - t0


def main() -> None:
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    took = commit(fd, 0)
    print(f"READY {os.getpid()} {took:.3f}", flush=True)
    n = 1
    while True:
        commit(fd, n)
        n += 1


if __name__ == "__main__":
    main()
