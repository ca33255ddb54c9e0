"""A service whose request threads queue for a file lock another process holds (a report test target).

Usage: flock_waiters.py LOCKFILE [THREADS]. Each of THREADS (default 12) request threads opens LOCKFILE
and calls flock(LOCK_EX) on it, as a service guarding a shared file would; the test has another process
(``flock LOCKFILE sleep ...``) hold the lock, so every thread blocks in flock(). Prints ``READY <pid>``
once every thread is inside flock().
"""
import fcntl
import os
import sys
import threading
import time


def main() -> None:
    path, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 12
    entered = threading.Semaphore(0)

    def write_order(i: int) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        entered.release()
        fcntl.flock(fd, fcntl.LOCK_EX)          # waits for the holder
        os.write(fd, f"order {i}\n".encode())
        fcntl.flock(fd, fcntl.LOCK_UN)

    def request_worker(i: int) -> None:
        write_order(i)

    for i in range(n):
        threading.Thread(target=request_worker, args=(i,), name=f"req-{i}", daemon=True).start()
    for _ in range(n):
        entered.acquire()
    me = os.getpid()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:          # every thread inside flock() (syscall 73 on x86_64)
        inside = 0
        for tid in os.listdir(f"/proc/{me}/task"):
            try:
                with open(f"/proc/{me}/task/{tid}/syscall") as fh:
                    inside += fh.read().split()[0] == "73"
            except OSError:
                pass
        if inside >= n:
            break
        time.sleep(0.05)
    print(f"READY {me}", flush=True)
    threading.Event().wait()                    # until the test ends it


if __name__ == "__main__":
    main()
