"""A process close to its descriptor limit: soft RLIMIT_NOFILE lowered to 256, 240 descriptors open."""
import os
import resource
import time

LIMIT, OPEN = 256, 240
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, hard))
fds = []
while len(os.listdir("/proc/self/fd")) - 1 < OPEN:    # listdir itself holds one descriptor while it runs
    fds.append(os.open("/dev/null", os.O_RDONLY))
print("READY", os.getpid(), len(os.listdir("/proc/self/fd")) - 1, flush=True)
time.sleep(3600)
