#!/usr/bin/env python3
"""Benchmark: from a signed webhook to evidence, through the real daemon on loopback.

Method: start `python -m agent daemon` (quick profile, every quick collector, a temporary
store), send generic webhooks signed like a tracker would, each for a new incident, and time
- the HTTP answer (202: verify, parse, dedupe, persist, queue);
- receipt to the bundle published in the local store (the file appears by atomic rename);
- receipt to the upload receipt, against a local S3 (moto server on 127.0.0.1), when
  agent.upload exists;
- 50 concurrent duplicate deliveries of one incident: wall time for all answers;
- the daemon's resident memory when idle (after the captures: the captures run in children).

    .venv/bin/python bench/bench_webhook.py [--quick]
"""
from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SECRET = "bench-generic-secret-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    def __init__(self, d: Path, upload: str = ""):
        self.d = d
        (d / "generic.secret").write_text(SECRET)
        (d / "store").mkdir()
        up = ""
        if upload:
            up = f'[upload]\nurl = "s3://gh-bench/pfx"\nendpoint_url = "{upload}"\nregion = "us-east-1"\n' \
                 f'retry_initial_s = 1\n'
        self.cfg = d / "config.toml"
        self.cfg.write_text(f"""
[store]
path = "{d / 'store'}"
reserve_bytes = 0
reserve_percent = 0.0
[capture]
profile = "quick"
time_budget_s = 30
[host]
name = "bench-host"
[daemon]
listen = "127.0.0.1:0"
socket = "{d / 'api.sock'}"
profile = "quick"
upload_interval_s = 3600
[webhooks.generic]
enabled = true
secret_file = "{d / 'generic.secret'}"
{up}""")
        env = {**os.environ, "GOLDENHOUR_CONFIG": str(self.cfg), "AWS_ACCESS_KEY_ID": "bench",
               "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
        for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC"):
            env.pop(k, None)
        self.proc = subprocess.Popen([sys.executable, "-m", "agent", "--config", str(self.cfg), "daemon"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                     env=env, start_new_session=True)
        ready = threading.Event()
        self.url = ""

        def pump():
            for line in self.proc.stderr:
                m = re.search(r"event=ready listen=(\S+)", line)
                if m:
                    self.url = f"http://{m.group(1)}"
                    ready.set()
            ready.set()
        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(60) or not self.url:
            raise RuntimeError("daemon did not start")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _delivery(incident: str):
    from agent.webhooks import generic
    raw = json.dumps({"incident_id": incident, "title": "bench", "hosts": ["bench-host"]}).encode()
    return raw, {"Content-Type": "application/json", "X-Goldenhour-Signature": generic.sign(raw, SECRET)}


def _wait_for(pattern_dir: Path, suffix: str, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pattern_dir.is_dir() and any(p.name.endswith(suffix) for p in pattern_dir.iterdir()):
            return time.monotonic()
        time.sleep(0.005)
    raise TimeoutError(f"no *{suffix} in {pattern_dir} after {timeout}s")


def _idle(url: str, timeout: float = 120) -> None:
    import httpx
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = httpx.get(f"{url}/healthz", timeout=10).json()
        if h["queue"] == 0 and h["running"] is None:
            return
        time.sleep(0.02)


def _row(name, unit, values, target, met, notes=""):
    return {"name": name, "unit": unit, "median": round(statistics.median(values), 3) if values else None,
            "min": round(min(values), 3) if values else None, "max": round(max(values), 3) if values else None,
            "runs": len(values), "target": target, "met": met, "notes": notes}


def _moto() -> tuple[subprocess.Popen | None, str]:
    exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    if not Path(exe).exists():
        return None, ""
    port = _free_port()
    p = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    import httpx
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    import boto3
    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                 aws_access_key_id="bench", aws_secret_access_key="bench").create_bucket(Bucket="gh-bench")
    return p, f"http://127.0.0.1:{port}"


def run(quick: bool = False) -> dict:
    import httpx
    reps = 3 if quick else 7
    results = []
    notes_upload = ""
    have_upload = (ROOT / "agent" / "upload.py").exists()
    moto, endpoint = (None, "")
    if have_upload:
        moto, endpoint = _moto()
        if moto is None:
            notes_upload = "moto_server not installed"
    else:
        notes_upload = "agent.upload does not exist yet: upload latency not measured"
    tmp = Path(tempfile.mkdtemp(prefix="gh-bench-webhook-"))
    d = Daemon(tmp, upload=endpoint)
    try:
        answer_ms, to_disk, to_upload = [], [], []
        client = httpx.Client(timeout=30)    # one keep-alive connection, like a tracker's sender
        for i in range(reps + 1):            # the first one warms the page cache; not counted
            inc = f"BENCH-{i}"
            raw, h = _delivery(inc)
            t0 = time.monotonic()
            r = client.post(f"{d.url}/v1/webhooks/generic", content=raw, headers=h)
            t_answer = time.monotonic()
            assert r.status_code == 202, r.text
            inc_dir = tmp / "store" / "incidents" / inc
            t_disk = _wait_for(inc_dir, ".tar.zst")
            t_up = _wait_for(inc_dir, ".upload.json") if endpoint else None
            _idle(d.url)
            if i == 0:
                continue
            answer_ms.append((t_answer - t0) * 1000)
            to_disk.append(t_disk - t0)
            if t_up is not None:
                to_upload.append(t_up - t0)
        client.close()
        results.append(_row("webhook answered (202)", "ms", answer_ms, "< 1000 ms (PagerDuty waits 5 s)",
                            max(answer_ms) < 1000, "verify + parse + dedupe + persist state + queue"))
        results.append(_row("webhook receipt to bundle on local disk, quick profile", "s", to_disk, "< 10 s",
                            max(to_disk) < 10, "every quick collector; capture in a child process"))
        if to_upload:
            results.append(_row("webhook receipt to bundle uploaded (moto S3 on loopback)", "s", to_upload, "< 15 s",
                                max(to_upload) < 15, "uploader kicked right after the capture"))
        else:
            results.append({"name": "webhook receipt to bundle uploaded", "unit": "s", "median": None, "min": None,
                            "max": None, "runs": 0, "target": "< 15 s", "met": False, "notes": notes_upload})

        async def burst():
            raw, h = _delivery("BENCH-DUP")
            async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=50)) as c:
                t0 = time.monotonic()
                rs = await asyncio.gather(*[c.post(f"{d.url}/v1/webhooks/generic", content=raw, headers=h)
                                            for _ in range(50)])
                return time.monotonic() - t0, sorted(r.status_code for r in rs)
        bursts = []
        for _ in range(2 if quick else 3):
            took, codes = asyncio.run(burst())
            assert codes.count(202) <= 1, codes
            bursts.append(took * 1000)
            _idle(d.url)
        results.append(_row("50 concurrent duplicate deliveries, all answered", "ms", bursts, "< 5000 ms",
                            max(bursts) < 5000, "one capture in total"))
        _idle(d.url)
        rss = [d.rss_mb()]
        results.append(_row("daemon resident memory, idle after captures", "MB", rss, "< 60 MB", rss[0] < 60,
                            "captures and uploads run in child processes"))
    finally:
        d.stop()
        if moto is not None:
            moto.send_signal(signal.SIGTERM)
            moto.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    return {"area": "webhook", "results": results,
            "commands": [".venv/bin/python bench/bench_webhook.py" + (" --quick" if quick else "")],
            "machine": f"{platform.node()} {os.cpu_count()} cpus, kernel {platform.release()}, "
                       f"Python {platform.python_version()}"}


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
