"""The parent side of the daemon's child process (``python -m agent daemon-job``).

The daemon never forks itself (the runner forks collector children, and forking a
multi-threaded asyncio server is unsafe): every capture, upload round, sweep and salvage
runs in a child started here, in its own session, with one ``ChildJob`` as JSON on stdin
and one ``JobResult`` as JSON on stdout (``agent.daemon.request``). Its stderr lines are
logged as ``job_output``. A child that outlives its timeout is stopped: only our own
child, SIGTERM then SIGKILL (``stop_proc``).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Callable

from agent.config import Config
from agent.daemon.kvlog import kv
from agent.daemon.request import ChildJob, JobResult


async def run_child(cfg: Config, config_path: str | None, job: ChildJob, timeout: float, label: str,
                    on_start: Callable[[asyncio.subprocess.Process], None] | None = None,
                    ) -> tuple[int | None, JobResult, str]:
    """Run ``python -m agent daemon-job`` with ``job`` on stdin: (exit code, or None when it was
    stopped at ``timeout``; its result; the tail of its stderr)."""
    import agent
    job.store, job.config = str(cfg.store_path), cfg.data
    argv = [sys.executable, "-m", "agent"]
    if config_path:
        argv += ["--config", str(config_path)]
    argv.append("daemon-job")
    env = dict(os.environ)
    env["GOLDENHOUR_STORE"] = str(cfg.store_path)
    root = str(Path(agent.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("NOTIFY_SOCKET", None)          # only the daemon talks to systemd
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True, env=env)
    if on_start is not None:
        on_start(proc)
    tail: list[str] = []

    async def pump_stderr() -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                tail.append(line)
                del tail[:-5]
                kv(logging.INFO, "job_output", line, job=label)

    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(job.to_json()).encode())
    await proc.stdin.drain()
    proc.stdin.close()
    err_task = asyncio.create_task(pump_stderr())
    try:
        stdout = await asyncio.wait_for(proc.stdout.read(), timeout)
        rc = await asyncio.wait_for(proc.wait(), 30)
    except asyncio.TimeoutError:
        kv(logging.ERROR, "job_timeout", "stopping the job (our own child process)", job=label,
           timeout_s=round(timeout, 1))
        await stop_proc(proc)
        err_task.cancel()
        return None, JobResult(job.kind, ok=False), "; ".join(tail[-2:])
    except asyncio.CancelledError:
        await stop_proc(proc)
        err_task.cancel()
        raise
    await asyncio.gather(err_task, return_exceptions=True)
    try:
        res = JobResult.from_json(job.kind, json.loads(stdout.decode() or "{}"))
    except ValueError:
        res = JobResult(job.kind, ok=False)
    return rc, res, "; ".join(t for t in tail[-2:] if "error" in t.lower()) or (tail[-1] if tail else "")


async def stop_proc(proc: asyncio.subprocess.Process) -> None:
    """Stop our own child: SIGTERM, then SIGKILL after 10 s."""
    if proc.returncode is not None:
        return
    try:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
    except ProcessLookupError:
        pass
