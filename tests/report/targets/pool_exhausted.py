"""A service whose database connection pool is exhausted (a report test target).

A pool of 2 connections; one is taken by a request that never gives it back (a leak), the
other by a request stuck on a slow backend. Twelve request workers then wait in
``ConnectionPool.getconn`` -> ``Queue.get`` -> ``Condition.wait`` forever: the process uses
no CPU and holds no lock, and serves nothing. Prints ``READY <pid>`` once every worker waits.
"""
import os
import queue
import threading
import time

WORKERS = 12


class ConnectionPool:
    def __init__(self, size: int):
        self._idle: queue.Queue = queue.Queue()
        for i in range(size):
            self._idle.put(f"conn-{i}")

    def getconn(self, timeout=None):
        return self._idle.get(timeout=timeout)

    def putconn(self, conn) -> None:
        self._idle.put(conn)


pool = ConnectionPool(2)
leaked = pool.getconn()                 # a request that returned early and never put it back
waiting = threading.Semaphore(0)


def slow_backend() -> None:
    conn = pool.getconn()               # the second connection: held by a request the backend never answers
    threading.Event().wait()
    pool.putconn(conn)


def handle(request: int) -> str:
    waiting.release()
    conn = pool.getconn()               # waits for a connection nobody returns
    try:
        return f"{request} via {conn}"
    finally:
        pool.putconn(conn)


def serve(n: int) -> None:
    request = 0
    while True:
        request += 1
        handle(n * 1000 + request)


def main() -> None:
    threading.Thread(target=slow_backend, name="backend-call", daemon=True).start()
    time.sleep(0.05)
    for i in range(WORKERS):
        threading.Thread(target=serve, args=(i,), name=f"request-worker-{i}", daemon=True).start()
    for _ in range(WORKERS):
        waiting.acquire()
    time.sleep(0.2)
    print(f"READY {os.getpid()}", flush=True)
    threading.Event().wait()            # until the test ends it


if __name__ == "__main__":
    main()
