"""Run inside fresh network + PID namespaces (``unshare --net --pid --fork --mount-proc``) by
test_flight_e2e.py: a real recorder, then real changes started at known times, then a capture.

Each change starts right after a sample (the recorder's socket says when one was taken), so the
interval that shows it is a whole one. Prints one JSON line: the changes' start times (epoch s),
the bundle, and what the capture printed.

    python e2e_scenario.py CONFIG HOG_CGROUP MEM_CGROUP
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.helpers.recorder import RecorderProc  # noqa: E402 - after the sys.path line above

cfg, hog_cg, mem_cg = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)

# each waits for "go", then says when it really began (under load that can be later than the "go")
WAITER = "import sys, time\nsys.stdin.readline()\nprint(time.time(), flush=True)\n"
hog = subprocess.Popen([sys.executable, "-c", WAITER + "t=time.time()\nwhile time.time()-t<120: pass"],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)
grow = subprocess.Popen([sys.executable, "-c", WAITER + "b=[]\nfor i in range(16):\n"
                         "    x=bytearray(25*2**20)\n    for j in range(0,len(x),4096): x[j]=1\n    b.append(x)\n"
                         "    time.sleep(0.25)\ntime.sleep(120)"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
for p, dirs in ((hog, [f"/sys/fs/cgroup/cpuacct/{hog_cg}", f"/sys/fs/cgroup/cpu/{hog_cg}"]),
                (grow, [f"/sys/fs/cgroup/memory/{mem_cg}"])):
    for d in dirs:
        Path(d, "cgroup.procs").write_text(str(p.pid))

rec = RecorderProc(cfg).start()
st = rec.wait_samples(24)                # a baseline: 12 s at 0.5 s


def after_next_sample() -> float:
    """Wait until the recorder has taken one more sample; the wall time then."""
    n = (rec.ask({"op": "status"}) or {}).get("samples", 0)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        s = rec.ask({"op": "status"}) or {}
        if s.get("samples", 0) > n:
            return time.time()
        time.sleep(0.01)
    raise RuntimeError("the recorder stopped sampling")


times: dict[str, float] = {}
after_next_sample()
hog.stdin.write(b"go\n")
hog.stdin.flush()
times["cpu_hog"] = float(hog.stdout.readline())
time.sleep(5)

after_next_sample()
grow.stdin.write(b"go\n")
grow.stdin.flush()
times["memory_growth"] = float(grow.stdout.readline())
time.sleep(5)

# a listener that never accepts, with a backlog of 1: connections beyond it overflow the accept queue
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(1)
port = srv.getsockname()[1]
clients = []
after_next_sample()
times["listen_overflow"] = time.time()
for _ in range(12):
    c = socket.socket()
    c.setblocking(False)
    try:
        c.connect(("127.0.0.1", port))
    except BlockingIOError:
        pass
    clients.append(c)
time.sleep(5)

after_next_sample()
times["process_burst"] = time.time()
burst = [subprocess.Popen(["sleep", "300"]) for _ in range(300)]
time.sleep(5)

started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(times["cpu_hog"]))
cap = subprocess.run([sys.executable, "-m", "agent", "--config", str(cfg), "snapshot", "--incident", "E2E-REC",
                      "--profile", "quick", "-c", "history", "-c", "sockets", "--started-at", started, "--json"],
                     capture_output=True, text=True, cwd=ROOT, timeout=300)
rec.stop()
for p in burst + [hog, grow]:
    p.kill()
for p in burst + [hog, grow]:
    p.wait()
print(json.dumps({"times": times, "started_at": started, "rc": cap.returncode, "capture": cap.stdout,
                  "stderr": cap.stderr[-2000:], "baseline_status": st}), flush=True)
