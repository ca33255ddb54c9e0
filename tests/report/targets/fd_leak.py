"""A service leaking file descriptors under one spool directory until it hits its limit (a report test target).

Usage: fd_leak.py SPOOL LOG. Lowers its soft RLIMIT_NOFILE to 1024, then, as a mail relay that forgets to
close the messages it spools, opens SPOOL/msg-NNNNNN.eml after SPOOL/msg-NNNNNN.eml until open() fails
with EMFILE; from then on every attempt to take new work fails and is logged as an error to LOG (which
it holds open, as services do). Prints ``READY <pid> <open files>`` once at the limit.
"""
import errno
import os
import resource
import sys
import threading
import time


def main() -> None:
    spool, log_path = sys.argv[1], sys.argv[2]
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    log = open(log_path, "a", buffering=1)
    held = []
    n = 0
    while True:
        try:
            held.append(os.open(os.path.join(spool, f"msg-{n:06d}.eml"), os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as exc:
            if exc.errno != errno.EMFILE:
                raise
            break
        n += 1
    print(f"READY {os.getpid()} {len(held)}", flush=True)

    def take_work() -> None:
        i = n
        while True:
            try:
                os.close(os.open(os.path.join(spool, f"msg-{i:06d}.eml"), os.O_RDWR | os.O_CREAT, 0o600))
            except OSError as exc:
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
                log.write(f"{stamp}Z ERROR relay: cannot spool message {i}: {exc}\n")
            i += 1
            time.sleep(0.2)

    threading.Thread(target=take_work, name="relay-intake", daemon=True).start()
    threading.Event().wait()


if __name__ == "__main__":
    main()
