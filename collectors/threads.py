"""User-space thread dumps of each target, with the least harmful tool for its runtime.

What, per runtime (``agent.targets`` detects it; ../shared/runtime-dumps.md has the measurements):
- CPython: ``py-spy dump --json --native`` (Python and native frames, thread names, idle/active,
  GIL owner); without ``--native`` in another mount namespace; ``--nonblocking`` (no ptrace
  stop, a stack may be torn) when the process is traced already or has threads in D state.
- JVM: ``jcmd PID Thread.print`` (``-l`` with ``jvm_locks = true``: it walks the heap, ~0.2 s
  per GiB) after the identity and SIGQUIT checks of ``agent.safety.jvm_attach_precheck``; a JVM
  without a SIGQUIT handler (``-Xrs``) is dumped only through its existing attach socket
  (HotSpot's attach protocol, spoken directly: no signal can be sent), else refused. Parsed
  into threads, frames, held/awaited monitors and the deadlocks the JVM found.
- Node.js: the inspector (``agent.nodecdp``): SIGUSR1 only if the process catches it, CDP in the
  target's network namespace, ``process.pid`` verified, ``process.report.getReport()`` (native
  stack, libuv handles, resource usage; environment redacted), the main thread's JS stack via
  ``Debugger.pause`` (idle event loop: recorded as idle), worker names; then
  ``inspector.close()`` always, and the ledger entry that would close it at the next start if
  goldenhour died.
- Go: ``/debug/pprof/goroutine?debug=2`` (fetched inside the target's network namespace) at
  ``go_pprof`` if set, else on the ports the process itself listens on (``go_pprof_discover``,
  default on: ``GET /debug/pprof/`` first, at most four ports, plain HTTP, 5 s each); else
  ``dlv attach`` with one grouped command (``goroutines -group userloc -t 30``: five examples
  and a count per location, so thousands of identical goroutines do not lengthen the stop),
  answering ``n`` to "kill the process?", cut at ``dlv_timeout_s`` (20); else gdb's native
  stacks. Never SIGQUIT (it ends a Go program).
- native (and fallbacks): ``eu-stack -p PID -m -s -i`` (1-2 ms), gdb
  ``-batch -nx -iex 'set debuginfod enabled off' -iex 'set sysroot /proc/PID/root' /proc/PID/exe
  -p PID -ex 'thread apply all bt'`` (~0.2 s, thread names, namespace-aware) for containers.
Why: which threads were blocked on what, a deadlock, a stuck event loop: the evidence a
restart destroys first.
Produces: ``threads.txt`` (human-readable dump: the tool's own text, or py-spy/Node rendered),
the tool's raw output (``py-spy.json``, ``node-report.json``, ``goroutines.txt``...) and
``threads.json``: {runtime, tool, pid, threads: [{name, tid, state, frames: [{function, file,
line, native?}], waiting_on?, holds?, os_state?, weight?}], deadlocks: [{threads, text}],
event_loop?, waits_before_dump (each sleeping thread's system call and time since it last ran,
read before the dump's ptrace stop resets both), pause}.
Overhead: pauses the target (ptrace stop or safepoint): py-spy 2-10 ms, jcmd Thread.print
6-90 ms (``-l``: +0.2 s/GiB of heap), eu-stack 1-2 ms, gdb ~0.2 s, Node report 12-31 ms
(+ ~70 ms for the JS stack), dlv 1-4 s (the whole process stopped). One pausing collector per target at a time (runner);
the pause is measured (JVM: its safepoint counters; Node: the CDP calls; ptrace tools: the
tool's wall time, an upper bound) and recorded as ``pause`` in the manifest. Helpers run at
normal priority while the target is paused.
Caveats: ptrace-based tools refuse a process already traced or with threads in D state (their
kernel stacks are in ``process``). jcmd, the Node inspector and Go's pprof make the target
allocate a thread, descriptors or memory: ``agent.preflight`` checks its room first (cgroup
pids and memory limits on its whole chain, RLIMIT_NPROC/NOFILE, threads-max) and at or near a
limit the technique is not tried: native stacks by ptrace instead (status partial, the skipped
technique and the figures in the manifest's notes and ``preflight.json``). eu-stack symbolizes
with the host's files: a container gets gdb.
Options: ``[collectors.threads] native`` (py-spy --native, default true), ``locals`` (py-spy
--locals, default false: locals can hold secrets), ``jvm_locks`` (false), ``js_stack`` (true),
``go_pprof`` ("" or "127.0.0.1:6060"), ``go_pprof_discover`` (true), ``dlv_timeout_s`` (20),
``native_tool`` ("auto", "eu-stack" or "gdb"), and tool paths ``py_spy``, ``jcmd``, ``eu_stack``,
``gdb``, ``dlv``.
"""
from __future__ import annotations

import http.client
import json
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any

from agent import preflight, procfs, safety
from agent.collector import Collector, Option, Scope, Skip, TargetGone, read_text, which
from agent.redact import RULES, Redactor
from collectors import _jvm, _stacks

TOOL_TIMEOUT_S = 30.0


def tool(ctx, key: str, name: str) -> str | None:
    """A helper's path: the option ``key`` if set (a path, or empty to disable), else PATH."""
    if key in ctx.options:
        p = str(ctx.options[key] or "")
        return p if p and os.access(p, os.X_OK) else None
    if name == "py-spy":
        venv = Path(sys.executable).parent / "py-spy"
        if venv.exists():
            return str(venv)
    return which(name)


def thread_names(pid: int) -> dict[int, str]:
    out = {}
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            out[int(tid)] = (read_text(f"/proc/{pid}/task/{tid}/comm", "") or "").strip()
    except OSError:
        pass
    return out


def _os_states(doc: dict[str, Any], pid: int) -> None:
    try:
        states = procfs.thread_states(pid)
    except procfs.ProcError:
        states = {}
    for t in doc["threads"]:
        tid = t.get("tid")
        if isinstance(tid, int) and tid in states:
            t["os_state"] = states[tid]
            if not t.get("state"):
                t["state"] = states[tid]


def _gone_or(t, msg: str) -> Exception:
    if not t.alive():
        return TargetGone(f"process {t.pid} ({t.comm}) exited during the dump")
    return RuntimeError(msg)


def _tail(ctx, name: str | None) -> str:
    if not name:
        return ""
    p = ctx.out / name
    try:
        return p.read_text(errors="replace").strip()[-400:]
    except OSError:
        return ""


# -- CPython -----------------------------------------------------------------------

def dump_python(ctx) -> dict[str, Any]:
    t = ctx.target
    exe = tool(ctx, "py_spy", "py-spy")
    if not exe:
        raise Skip("py-spy not found (it is a goldenhour dependency: pip install py-spy)")
    why = safety.ptrace_precheck(t.pid)
    nonblocking = bool(ctx.options.get("nonblocking", False))
    if why:
        if why.startswith("kernel.yama") or "zombie" in why:
            raise Skip(why)
        nonblocking = True     # no ptrace stop: py-spy reads the memory with process_vm_readv
        ctx.partial(f"{why}; used py-spy --nonblocking (the process was not stopped; a stack may be torn)")
    native = bool(ctx.options.get("native", True)) and not t.container and not nonblocking
    argv = [exe, "dump", "--pid", str(t.pid), "--json"]
    if ctx.options.get("locals"):
        argv.append("--locals")
    if nonblocking:
        argv.append("--nonblocking")
    t.ensure_alive()
    safety.normal_priority()
    res = ctx.run(argv + (["--native"] if native else []), stdout="py-spy.json", timeout_s=TOOL_TIMEOUT_S)
    pause = res.duration_s
    if not res.ok and native:
        if not t.alive():
            raise TargetGone(f"process {t.pid} exited during the dump")
        ctx.note(native_failed=_tail(ctx, res.stderr))
        res = ctx.run(argv, stdout="py-spy.json", timeout_s=TOOL_TIMEOUT_S)
        pause = max(pause, res.duration_s)
        native = False
    if not res.ok:
        raise _gone_or(t, f"py-spy failed (rc {res.returncode}): {_tail(ctx, res.stderr) or res.error}")
    try:
        data = json.loads((ctx.out / "py-spy.json").read_text())
    except ValueError as exc:
        raise _gone_or(t, f"py-spy printed no JSON: {exc}") from None
    header = f"Process {t.pid}: {' '.join(t.cmdline)[:300]}\n(py-spy dump{' --native' if native else ''})\n"
    ctx.write_text("threads.txt", _stacks.render_pyspy(data, header))
    doc = {"tool": "py-spy dump" + (" --native" if native else "") + (" --nonblocking" if nonblocking else ""),
           "threads": _stacks.from_pyspy(data),
           "pause": {"technique": "py-spy (ptrace)" if not nonblocking else "py-spy --nonblocking (no stop)",
                     "upper_bound_s": 0.0 if nonblocking else pause,
                     "how": "the helper's wall time: the process is stopped only while py-spy reads it"}}
    loops = _asyncio_loops(data)
    if any(lp["samples"][0]["in_callback"] for lp in loops.values()):
        _sample_loops(ctx, argv, loops, int(ctx.options.get("asyncio_samples", ASYNCIO_SAMPLES)),
                      float(ctx.options.get("asyncio_interval_s", ASYNCIO_INTERVAL_S)))
    if loops:
        doc["event_loop"] = {"kind": "asyncio", "loops": list(loops.values())}
    return doc


# an asyncio loop found in a Python stack: base_events.py's _run_once; inside a callback when events.py's
# Handle._run is above it (innermost side), else waiting in the selector
ASYNCIO_SAMPLES, ASYNCIO_INTERVAL_S = 3, 0.5


def _loop_state(frames: list[dict[str, Any]]) -> dict[str, Any] | None:
    """For one py-spy thread's frames (innermost first): None if no asyncio loop runs on it, else whether it is
    inside a callback and the callback's innermost frame outside the asyncio package."""
    names = [(f.get("name") or "", f.get("filename") or "") for f in frames]
    run_once = next((i for i, (n, fn) in enumerate(names) if n.endswith("_run_once")
                     and fn.endswith("asyncio/base_events.py")), None)
    if run_once is None:
        return None
    inner = names[:run_once]
    handle = next((i for i, (n, fn) in enumerate(inner) if n.endswith("_run") and fn.endswith("asyncio/events.py")),
                  None)
    if handle is None:
        return {"in_callback": False, "frame": None, "chain": []}
    chain = [f"{n} ({fn.rsplit('/', 1)[-1]}:{frames[i].get('line')})" for i, (n, fn) in enumerate(inner[:handle])
             if fn.endswith(".py") and "/asyncio/" not in fn]
    return {"in_callback": True, "frame": chain[0] if chain else None, "chain": chain[:12]}


def _asyncio_loops(data: Any) -> dict[Any, dict[str, Any]]:
    loops: dict[Any, dict[str, Any]] = {}
    for th in data if isinstance(data, list) else []:
        st = _loop_state(th.get("frames") or [])
        if st is not None:
            tid = th.get("os_thread_id") or th.get("thread_id")
            loops[tid] = {"tid": tid, "thread": th.get("thread_name") or str(tid),
                          "samples": [{"t_s": 0.0, "active": bool(th.get("active")), **st}]}
    return loops


def _sample_loops(ctx, argv: list[str], loops: dict[Any, dict[str, Any]], n: int, interval: float) -> None:
    """A loop caught inside a callback: a few more dumps, to see whether it is still in the same one (blocked),
    and each loop thread's CPU meanwhile. Each dump is one py-spy read (a ptrace stop of milliseconds)."""
    pid = ctx.target.pid
    cpu0 = {tid: thread_cpu_s(pid, tid) for tid in loops if isinstance(tid, int)}
    t0 = time.monotonic()
    for i in range(n):
        time.sleep(interval)
        if not ctx.target.alive():
            break
        res = ctx.run(argv, stdout=f"py-spy-loop-{i + 1}.json", timeout_s=TOOL_TIMEOUT_S)
        if not res.ok:
            ctx.note(asyncio_sample_error=_tail(ctx, res.stderr) or res.error)
            break
        try:
            data = json.loads((ctx.out / f"py-spy-loop-{i + 1}.json").read_text())
        except ValueError:
            break
        at = round(time.monotonic() - t0, 3)
        for th in data if isinstance(data, list) else []:
            tid = th.get("os_thread_id") or th.get("thread_id")
            if tid in loops:
                st = _loop_state(th.get("frames") or []) or {"in_callback": False, "frame": None, "chain": []}
                loops[tid]["samples"].append({"t_s": at, "active": bool(th.get("active")), **st})
    took = time.monotonic() - t0
    for tid, lp in loops.items():
        c0, c1 = cpu0.get(tid), thread_cpu_s(pid, tid) if isinstance(tid, int) else None
        if c0 is not None and c1 is not None and took > 0:
            lp["cpu"] = round((c1 - c0) / took, 3)
        lp["span_s"] = round(took, 3)


# -- JVM -----------------------------------------------------------------------------

def jcmd(ctx, command: list[str], stdout: str, timeout_s: float = TOOL_TIMEOUT_S,
         technique: str = "jvm_attach", figures: dict[str, Any] | None = None,
         **needs: Any) -> tuple[str, dict[str, Any]]:
    """Run a jcmd command against the target after every check; returns (output, pause facts).

    The preflight (``technique``'s needs, ``needs`` overriding; ``figures`` recorded with it)
    raises ``preflight.AtLimit`` when the JVM has no room for the Attach Listener thread, its
    socket or the memory.
    """
    t = ctx.target
    nspid = t.ns_pid
    perf_before = _jvm.perfdata(t.pid, nspid)
    why = safety.jvm_attach_precheck(t.pid, t.start_time, perf=perf_before)
    direct = False
    if why:
        if why.startswith(safety.NO_SIGQUIT_HANDLER) and os.path.exists(_jvm.socket_path(t.pid, nspid)):
            direct = True     # the attach listener runs already: speak its protocol, no signal possible
        else:
            raise Skip(why)
    listening = _jvm.attach_listener_running(t.pid)
    base = preflight.NEEDS[technique]
    if listening:        # no new thread, no listening socket: only the connection
        needs = {"threads": 0, "fds": base.fds - 1, **needs}
    preflight.run(ctx, technique, extra={"attach_listener_running": listening, **(figures or {})}, **needs)
    exe = tool(ctx, "jcmd", "jcmd")
    if not exe and not direct:
        raise Skip("jcmd not found: install a JDK (Debian: openjdk-17-jdk-headless) to dump JVMs")
    safety.normal_priority()
    t0 = time.monotonic()
    if direct:
        try:
            rc, out = _jvm.attach(t.pid, nspid, " ".join(command), timeout_s=timeout_s)
        except OSError as exc:
            raise _gone_or(t, f"attach socket: {exc}") from None
        ctx.write_text(stdout, out)
        ctx.note(jvm_attach="HotSpot attach socket, spoken directly (the JVM has no SIGQUIT handler)")
        if rc != 0:
            raise _gone_or(t, f"the JVM answered {rc}: {out.strip()[:300]}")
    else:
        argv = [exe, str(t.pid), *command]
        ns = t.namespaces or {}
        if ns.get("mnt", {}).get("shared_with_agent") is False and ns.get("pid", {}).get("shared_with_agent", True):
            # private /tmp, same PID namespace (systemd PrivateTmp=): jcmd must see the JVM's /tmp
            argv = [which("nsenter") or "nsenter", "-t", str(t.pid), "-m", exe, str(t.pid), *command]
            ctx.note(jvm_attach="jcmd inside the JVM's mount namespace (nsenter -m): private /tmp")
        res = ctx.run(argv, stdout=stdout, timeout_s=timeout_s)
        out = (ctx.out / stdout).read_text(errors="replace") if (ctx.out / stdout).exists() else ""
        if not res.ok or re.search(r"^[\w.$]+(?:Exception|Error): ", out, re.M):
            msg = (out.strip().splitlines() or [""])[-1] or _tail(ctx, res.stderr) or res.error or ""
            raise _gone_or(t, f"jcmd {' '.join(command)} failed (rc {res.returncode}): {msg[:300]}")
    wall = round(time.monotonic() - t0, 4)
    pause = _jvm.pause_between(perf_before, _jvm.perfdata(t.pid, nspid)) or {
        "upper_bound_s": wall, "how": "jcmd's wall time (no JVM perf counters: -XX:-UsePerfData?)"}
    return out, {"technique": f"jcmd {' '.join(command)} (safepoint)", "wall_s": wall, **pause}


def dump_jvm(ctx) -> dict[str, Any]:
    cmd = ["Thread.print"] + (["-l"] if ctx.options.get("jvm_locks") else [])
    try:
        out, pause = jcmd(ctx, cmd, "threads.txt")
    except preflight.AtLimit as exc:
        return fallback_native(ctx, exc, "jcmd " + " ".join(cmd),
                               "the JVM's counters (GC, heap, safepoints) are in jvmstat, read from its hsperfdata "
                               "file without attaching")
    parsed = _jvm.parse_thread_print(out)
    if not parsed["threads"]:
        raise RuntimeError(f"jcmd Thread.print printed no threads: {out.strip()[:300]}")
    return {"tool": "jcmd " + " ".join(cmd), "threads": parsed["threads"], "deadlocks": parsed["deadlocks"],
            "pause": pause}


# -- Node.js ---------------------------------------------------------------------------

def node_preflight(ctx, technique: str = "node_inspector", **needs: Any) -> preflight.Verdict:
    """The preflight before SIGUSR1: an inspector started with ``--inspect`` already has its thread
    and socket, and needs only the connection's descriptor."""
    from agent.nodecdp import inspector_address
    _host, port, started = inspector_address(ctx.target.pid)
    if started:
        needs = {"threads": 0, "fds": 1, **needs}
    return preflight.run(ctx, technique, extra={"inspector_started_by_flag": started, "inspector_port": port},
                         **needs)


def dump_node(ctx) -> dict[str, Any]:
    from agent.nodecdp import CDPError, Inspector
    t = ctx.target
    t.ensure_alive()
    try:
        node_preflight(ctx)
    except preflight.AtLimit as exc:
        return fallback_native(ctx, exc, "the Node inspector (SIGUSR1)", "")
    safety.normal_priority()
    red = Redactor()
    ins = Inspector(t.pid, t.start_time, ctx.capture.get("ledger_dir"))
    js_frames: list[dict[str, Any]] | None = None
    paused_s = 0.0
    workers: list[dict[str, Any]] = []
    try:
        with ins as sess:
            report = json.loads(sess.evaluate("JSON.stringify(process.report.getReport())", timeout=30))
            if ctx.options.get("js_stack", True):
                js_frames, paused_s = _js_stack(sess, float(ctx.options.get("js_stack_wait_s", 1.0)))
            events: list[dict[str, Any]] = []
            try:
                sess.call("NodeWorker.enable", on_event=events.append, waitForDebuggerOnStart=False, timeout=5)
                try:
                    while True:         # the attachedToWorker events, until 0.2 s of quiet
                        events.append(sess.ws.recv(timeout=0.2))
                except (OSError, ConnectionError):
                    pass
                sess.call("NodeWorker.disable", on_event=lambda m: None, timeout=5)
            except (CDPError, OSError) as exc:
                ctx.note(workers_error=str(exc))
            workers = [e["params"]["workerInfo"] for e in events if e.get("method") == "NodeWorker.attachedToWorker"]
            loop = _event_loop_lag(sess, t.pid, float(ctx.options.get("event_loop_wait_s", LAG_WAIT_S)))
            timings = list(sess.timings)
    except safety.UnsafeSignal as exc:
        ctx.note(inspector=ins.facts)
        raise Skip(str(exc)) from None
    except (CDPError, OSError, ConnectionError) as exc:
        ctx.note(inspector=ins.facts)
        if not t.alive():
            raise TargetGone(f"process {t.pid} exited during the dump") from None
        raise RuntimeError(f"Node inspector: {exc}") from None
    except BaseException:
        ctx.note(inspector=ins.facts)
        raise
    ctx.note(inspector=ins.facts)
    if ins.facts.get("inspector_closed") is False:
        ctx.partial("the inspector did not close: the ledger keeps it, the next goldenhour start closes it")
    _redact_report(report, red)
    hdr = report.get("header") or {}
    ctx.note(redaction={"count": red.count, "rules": RULES})
    ctx.write_json("node-report.json", report)
    main_state = "idle" if js_frames is not None and not js_frames else "running" if js_frames else ""
    threads = [{"name": "main", "tid": t.pid, "state": main_state, "frames": js_frames or [],
                "native_stack": [f.get("symbol", "").strip() for f in report.get("nativeStack") or []][:64]}]
    for i, w in enumerate(workers):
        sub = (report.get("workers") or [{}] * len(workers))[i] if i < len(report.get("workers") or []) else {}
        st = (sub.get("javascriptStack") or {}).get("stack") or []
        threads.append({"name": w.get("title", f"worker {w.get('workerId')}"), "tid": None, "state": "",
                        "frames": [{"function": s.removeprefix("at ").strip()} for s in st if s != "Unavailable."]})
    lines = [f"Node.js {hdr.get('nodejsVersion', '')} pid {t.pid}: {' '.join(hdr.get('commandLine') or [])}"]
    for th in threads:
        lines.append(f'Thread "{th["name"]}" ({th["state"] or "?"})')
        lines += [f"    {f['function']} ({f.get('file', '')}:{f.get('line', '')})" for f in th["frames"]]
    lines.append("Main thread native stack (at the report):")
    lines += [f"    {s}" for s in threads[0]["native_stack"]]
    ctx.write_text("threads.txt", "\n".join(lines) + "\n")
    evals = [x["s"] for x in timings if x["method"] == "Runtime.evaluate"]
    tool_name = ("Node inspector (CDP): process.report.getReport()"
                 + (", Debugger.pause" if js_frames is not None else ""))
    if js_frames:
        loop["main_thread_frames"] = [f"{f['function']} ({f.get('file', '').rsplit('/', 1)[-1]}:{f.get('line')})"
                                      for f in js_frames[:8]]
    return {"tool": tool_name,
            "event_loop": loop,
            "threads": threads,
            "pause": {"technique": "Node inspector evaluation on the main thread",
                      "upper_bound_s": round(max(evals + [paused_s]), 4),
                      "debugger_paused_s": round(paused_s, 4),
                      "how": "CDP round trips: the event loop was blocked at most this long"},
            "libuv_handles": len(report.get("libuv") or []),
            "workers": workers}


LAG_WAIT_S = 2.0
# a 0 ms timer, scheduled now (the evaluation runs on a V8 interrupt, even inside a busy loop): how late it fires
# is the event loop's lag; performance.eventLoopUtilization() is cumulative since the process started
LAG_EXPR = ("new Promise(r => { const t0 = performance.now(); setTimeout(() => r(JSON.stringify("
            "{lag_ms: performance.now() - t0, elu: performance.eventLoopUtilization()})), 0); })")
ELU_EXPR = "JSON.stringify(performance.eventLoopUtilization())"


def thread_cpu_s(pid: int, tid: int) -> float | None:
    """CPU seconds (user + system) one thread has used, from /proc."""
    try:
        st = procfs.stat(pid, tid)
    except procfs.ProcError:
        return None
    return (st.utime + st.stime) / (os.sysconf("SC_CLK_TCK") or 100)


def _event_loop_lag(sess, pid: int, wait_s: float) -> dict[str, Any]:
    """How late a 0 ms timer fires on the main thread, how busy the loop was, and the main thread's CPU meanwhile.

    The timer is the only thing it leaves in the target: a callback that resolves a promise. If it has not fired
    after ``wait_s`` the loop is blocked for at least that long (``timed_out``); its answer, if it ever comes, is
    dropped with the session."""
    from agent.nodecdp import CDPError
    out: dict[str, Any] = {"probe": "setTimeout(0) scheduled from the inspector", "wait_s": wait_s}
    try:
        elu0 = json.loads(sess.evaluate(ELU_EXPR, timeout=10))
    except (CDPError, OSError, ValueError, TypeError) as exc:
        out["error"] = f"eventLoopUtilization: {exc}"
        return out
    cpu0, t0 = thread_cpu_s(pid, pid), time.monotonic()
    my = sess.send("Runtime.evaluate", expression=LAG_EXPR, awaitPromise=True, returnByValue=True)
    m = sess.answer(my, t0 + wait_s)
    t1 = time.monotonic()
    cpu1 = thread_cpu_s(pid, pid)
    value: dict[str, Any] | None = None
    if m is not None:
        try:
            value = json.loads(((m.get("result") or {}).get("result") or {}).get("value") or "null")
        except ValueError:
            value = None
    if isinstance(value, dict):
        out["lag_ms"] = round(float(value.get("lag_ms") or 0.0), 3)
        elu1 = value.get("elu") or {}
    else:
        out["timed_out"] = True
        out["lag_ms_at_least"] = round((t1 - t0) * 1000, 1)
        try:
            elu1 = json.loads(sess.evaluate(ELU_EXPR, timeout=5))
        except (CDPError, OSError, ValueError, TypeError):
            elu1 = {}
    out["measured_s"] = round(t1 - t0, 3)
    if cpu0 is not None and cpu1 is not None and t1 > t0:
        out["main_thread_cpu"] = round((cpu1 - cpu0) / (t1 - t0), 3)
    try:
        da = float(elu1["active"]) - float(elu0["active"])
        di = float(elu1["idle"]) - float(elu0["idle"])
        if da + di > 0:
            out["utilization"] = round(da / (da + di), 3)
        out["utilization_since_start"] = round(float(elu1.get("utilization", 0.0)), 3)
    except (KeyError, TypeError, ValueError):
        pass
    return out


def _redact_report(obj: Any, red: Redactor) -> None:
    """Every environment and command line of a Node report, wherever it is (the main thread's header, each
    worker's), through the redactor, in place."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "environmentVariables" and isinstance(v, dict):
                obj[k] = red.mapping(v)
            elif k in ("commandLine", "execArgv", "argv") and isinstance(v, list):
                obj[k] = red.argv([str(a) for a in v])
            else:
                _redact_report(v, red)
    elif isinstance(obj, list):
        for v in obj:
            _redact_report(v, red)


def _js_stack(sess, wait_s: float) -> tuple[list[dict[str, Any]], float]:
    """Main thread's JS frames via Debugger.pause; [] when no JS runs within ``wait_s`` (idle loop)."""
    noop = lambda m: None  # noqa: E731
    scripts: dict[str, str] = {}               # scriptId -> url (CallFrame.url may be empty)

    def on_script(m: dict[str, Any]) -> None:
        if m.get("method") == "Debugger.scriptParsed":
            scripts[m["params"]["scriptId"]] = m["params"].get("url", "")
    sess.call("Debugger.enable", on_event=on_script, timeout=30)
    paused: dict[str, Any] = {}

    def on_event(m: dict[str, Any]) -> None:
        on_script(m)
        if m.get("method") == "Debugger.paused":
            paused.update(m["params"])
            paused["_at"] = time.monotonic()
    try:
        sess.call("Debugger.pause", on_event=on_event, timeout=10)
        until = time.monotonic() + wait_s
        try:
            while not paused:
                on_event(sess.ws.recv(timeout=until - time.monotonic()))
        except (TimeoutError, OSError):
            pass
        frames: list[dict[str, Any]] = []
        held = 0.0
        if paused:
            for f in paused.get("callFrames") or []:
                loc = f["location"]
                frames.append({"function": f.get("functionName") or "(anonymous)",
                               "file": f.get("url") or scripts.get(loc.get("scriptId", ""), ""),
                               "line": f["location"]["lineNumber"] + 1, "column": f["location"]["columnNumber"] + 1})
            sess.call("Debugger.resume", on_event=noop, timeout=10)
            held = time.monotonic() - paused["_at"]
    finally:
        sess.call("Debugger.disable", on_event=noop, timeout=10)   # also cancels a pending pause
    return frames, held


# -- Go --------------------------------------------------------------------------------

PPROF_PATH = "/debug/pprof/goroutine?debug=2"
PPROF_TIMEOUT_S = 5.0
MAX_PPROF_PORTS = 4
DLV_TIMEOUT_S = 20.0


def _ip(hexaddr: str) -> str:
    """An address of /proc/net/tcp{,6} (little-endian 32-bit words in hex) as text."""
    raw = bytes.fromhex(hexaddr)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(socket.AF_INET if len(words) == 4 else socket.AF_INET6, words)


def listeners(pid: int) -> list[tuple[str, int]]:
    """The TCP ports the process itself listens on, as (address to connect to, port), lowest port first.

    From ``/proc/PID/net/tcp{,6}`` (the tables of the process's own network namespace) and its
    socket descriptors; a wildcard listener is reached on loopback."""
    inodes = set()
    try:
        for fd in procfs.listdir(procfs.path(pid, "fd")):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(int(link[8:-1]))
    except procfs.ProcError:
        return []
    out: list[tuple[str, int]] = []
    for table in ("tcp", "tcp6"):
        for line in (read_text(f"/proc/{pid}/net/{table}", "") or "").splitlines()[1:]:
            f = line.split()
            if len(f) < 10 or f[3] != "0A" or not f[9].isdigit() or int(f[9]) not in inodes:
                continue
            hexaddr, _, hexport = f[1].partition(":")
            try:
                addr = _ip(hexaddr)
            except (ValueError, OSError):
                continue
            addr = {"0.0.0.0": "127.0.0.1", "::": "127.0.0.1"}.get(addr, addr)
            if addr.startswith("::ffff:"):
                addr = addr[7:]
            out.append((addr, int(hexport, 16)))
    return sorted(set(out), key=lambda a: (a[1], a[0]))


def _http_get(host: str, port: int, path: str, limit: int, timeout: float) -> tuple[int, str]:
    """One plain HTTP GET (never through a proxy from the environment): (status, body)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": "goldenhour", "Connection": "close"})
        r = conn.getresponse()
        return r.status, r.read(limit).decode("utf-8", "replace")
    finally:
        conn.close()


def _pprof(ctx, addrs: list[tuple[str, int]], discovered: bool) -> dict[str, Any] | None:
    """The goroutine dump from the first address that serves net/http/pprof."""
    tried = []
    for host, port in addrs:
        try:
            if discovered:       # the index first: cheap, and it says whether this port is pprof at all
                status, body = _http_get(host, port, "/debug/pprof/", 65536, PPROF_TIMEOUT_S)
                if status != 200 or "goroutine" not in body:
                    tried.append(f"{host}:{port} (HTTP {status}, not pprof)")
                    continue
            t0 = time.monotonic()
            status, text = _http_get(host, port, PPROF_PATH, ctx.limits.max_file_bytes, 15.0)
            took = time.monotonic() - t0
        except (OSError, http.client.HTTPException) as exc:
            tried.append(f"{host}:{port} ({type(exc).__name__}: {exc})")
            continue
        threads = _stacks.parse_goroutines(text) if status == 200 else []
        if not threads:
            tried.append(f"{host}:{port} (HTTP {status}, no goroutines)")
            continue
        ctx.write_text("threads.txt", text)
        if tried:
            ctx.note(go_pprof_tried=tried)
        how = "discovered among the process's listening sockets" if discovered else "go_pprof"
        return {"tool": f"pprof goroutine?debug=2 at {host}:{port} ({how})", "threads": threads,
                "pprof": {"address": f"{host}:{port}", "discovered": discovered},
                "pause": {"technique": "goroutine profile (stop-the-world walk)",
                          "upper_bound_s": round(took, 4), "how": "HTTP round trip"}}
    if tried:
        ctx.note(go_pprof_tried=tried)
    return None


def dump_go(ctx) -> dict[str, Any]:
    t = ctx.target
    addr = str(ctx.options.get("go_pprof") or "")
    explicit: list[tuple[str, int]] = []
    if addr:
        host, _, port = addr.rpartition(":")
        if port.isdigit():
            explicit = [(host.strip("[]") or "127.0.0.1", int(port))]
        else:
            ctx.note(go_pprof_error=f"go_pprof {addr!r} is not host:port")
    found = listeners(t.pid) if ctx.options.get("go_pprof_discover", True) else []
    found = [a for a in found if a not in explicit][:MAX_PPROF_PORTS]
    if explicit or found:
        try:
            preflight.run(ctx, "go_pprof")      # an HTTP request needs a descriptor of the target's
        except preflight.AtLimit as exc:
            preflight.skipped(ctx, "go_pprof", str(exc), "dlv (ptrace), else native stacks")
            ctx.partial(str(exc))
            explicit, found = [], []
    if explicit or found:
        from agent.nodecdp import enter_netns
        try:
            enter_netns(t.pid)          # this collector's own process: the target's loopback
        except OSError as exc:
            ctx.note(go_pprof_error=f"cannot enter the process's network namespace: {exc}")
            explicit, found = [], []
        doc = _pprof(ctx, explicit, False) or _pprof(ctx, found, True)
        if doc:
            return doc
    dlv = tool(ctx, "dlv", "dlv")
    if dlv:
        why = safety.ptrace_precheck(t.pid)
        if why:
            raise Skip(why)
        t.ensure_alive()
        safety.normal_priority()
        # Delve stops the whole process for its session: one command, grouped by the goroutines' location in the
        # program (five examples and a count per group), so the pause does not grow with thousands of identical
        # goroutines; a session cut by the timeout leaves nothing stopped (the pause ledger resumes it).
        # Delve asks "Would you like to kill the process? [Y/n]" on exit: the default kills (danger 8)
        res = ctx.run([dlv, "attach", str(t.pid), "--allow-non-terminal-interactive=true"], stdout="threads.txt",
                      stdin=b"goroutines -group userloc -t 30\nexit\nn\n",
                      timeout_s=float(ctx.options.get("dlv_timeout_s", DLV_TIMEOUT_S)))
        if not t.alive():
            raise TargetGone(f"process {t.pid} exited during the dlv dump")
        text = (ctx.out / "threads.txt").read_text(errors="replace")
        threads = _stacks.parse_dlv_goroutines(text)
        if threads:
            return {"tool": "dlv attach: goroutines -group userloc -t 30", "threads": threads,
                    "total_threads": sum(int(x.get("weight", 1)) for x in threads),
                    "pause": {"technique": "Delve (ptrace: the whole process is stopped for the session)",
                              "upper_bound_s": res.duration_s, "how": "the helper's wall time"}}
        ctx.note(dlv_error=_tail(ctx, res.stderr) or "no goroutines parsed")
    ctx.note(go_fallback="native stacks of the OS threads (no goroutines): no pprof endpoint found and no delve")
    return dump_native(ctx, prefer="gdb")


# -- native ------------------------------------------------------------------------------

def fallback_native(ctx, exc: preflight.AtLimit, what: str, also: str) -> dict[str, Any]:
    """``what`` would ask the target for what it lacks (``exc``): native stacks by ptrace instead,
    which need nothing from the target. Recorded as partial, with the skipped technique."""
    try:
        doc = dump_native(ctx)
    except Skip as sk:
        preflight.skipped(ctx, exc.verdict.technique, str(exc), f"none: {sk}")
        raise Skip(f"{exc}. No fallback either: {sk}") from None
    preflight.skipped(ctx, exc.verdict.technique, str(exc), f"native stacks by ptrace ({doc['tool']})")
    ctx.partial(f"{exc}. {what} was not tried; native stacks by ptrace ({doc['tool']}) instead, which need nothing "
                "from the target; the kernel stacks of every thread are in the process collector"
                + (f"; {also}" if also else ""))
    doc["skipped_technique"] = {"technique": exc.verdict.technique, "tool": what, "reason": str(exc)}
    return doc


def dump_native(ctx, prefer: str = "") -> dict[str, Any]:
    t = ctx.target
    why = safety.ptrace_precheck(t.pid)
    if why:
        raise Skip(why)
    choice = str(ctx.options.get("native_tool", "auto") or "auto")
    eu, gdb = tool(ctx, "eu_stack", "eu-stack"), tool(ctx, "gdb", "gdb")
    use_gdb = choice == "gdb" or prefer == "gdb" or (choice == "auto" and t.container) or not eu
    names = thread_names(t.pid)
    t.ensure_alive()
    safety.normal_priority()
    if not use_gdb and eu:
        res = ctx.run([eu, "-p", str(t.pid), "-m", "-s", "-i"], stdout="threads.txt", timeout_s=TOOL_TIMEOUT_S)
        threads = _stacks.parse_eu_stack((ctx.out / "threads.txt").read_text(errors="replace"), names)
        if threads and res.returncode in (0, 1):
            return {"tool": "eu-stack", "threads": threads,
                    "pause": {"technique": "eu-stack (ptrace)", "upper_bound_s": res.duration_s,
                              "how": "the helper's wall time"}}
        if not t.alive():
            raise TargetGone(f"process {t.pid} exited during the dump")
        ctx.note(eu_stack_error=_tail(ctx, res.stderr) or f"rc {res.returncode}")
    if not gdb:
        raise Skip("neither eu-stack (Debian: elfutils) nor gdb found")
    res = ctx.run(gdb_argv(gdb, t.pid, ["thread apply all bt"]), stdout="threads.txt",
                  env={**os.environ, "DEBUGINFOD_URLS": ""}, timeout_s=TOOL_TIMEOUT_S)
    threads = _stacks.parse_gdb((ctx.out / "threads.txt").read_text(errors="replace"), names)
    if not threads:
        raise _gone_or(t, f"gdb showed no threads (rc {res.returncode}): {_tail(ctx, res.stderr)}")
    return {"tool": "gdb thread apply all bt", "threads": threads,
            "pause": {"technique": "gdb (ptrace)", "upper_bound_s": res.duration_s, "how": "the helper's wall time"}}


def gdb_argv(gdb: str, pid: int, commands: list[str], symbols: bool = True) -> list[str]:
    """gdb in batch mode, no init files, no debuginfod (no network wait while the target is stopped),
    the target's own files (sysroot /proc/PID/root: right inside containers, and allowed by the
    systemd sandbox where gdb's own setns is not)."""
    argv = [gdb, "-batch", "-nx", "-iex", "set debuginfod enabled off", "-iex", f"set sysroot /proc/{pid}/root"]
    if not symbols:
        argv += ["-iex", "set auto-solib-add off"]
    argv += [f"/proc/{pid}/exe", "-p", str(pid)]
    for c in commands:
        argv += ["-ex", c]
    return argv


DUMPERS = {"python": dump_python, "jvm": dump_jvm, "node": dump_node, "go": dump_go, "native": dump_native}


def waits_before(pid: int) -> dict[str, dict[str, Any]]:
    """What each sleeping thread waits in and for how long, read before the dump: a ptrace stop (py-spy, gdb,
    Delve) wakes every thread and restarts its system call, which resets both."""
    from collectors.process import thread_waits
    try:
        states = procfs.thread_states(pid)
    except procfs.ProcError:
        return {}
    sleeping = [tid for tid, st in states.items() if st in ("S", "D")][:MAX_WAITS]
    return {str(tid): w for tid, w in thread_waits(pid, sleeping).items()}


MAX_WAITS = 4096


def collect(ctx) -> None:
    t = ctx.target
    t.ensure_alive()
    runtime = t.runtime if t.runtime in DUMPERS else "native"
    before = waits_before(t.pid)
    doc = DUMPERS[runtime](ctx)
    doc = {"runtime": runtime, "pid": t.pid, "start_time": t.start_time, "comm": t.comm, **doc}
    if before:
        doc["waits_before_dump"] = before
    doc.setdefault("deadlocks", [])
    if runtime in ("python", "jvm", "native", "go") and doc["tool"].split()[0] in ("py-spy", "jcmd", "eu-stack", "gdb"):
        _os_states(doc, t.pid)
    doc["captured_at"] = time.time()
    ctx.write_json("threads.json", doc)
    ctx.note(tool=doc["tool"], threads=len(doc["threads"]), deadlocks=len(doc["deadlocks"]), pause=doc["pause"])
    st = t.state()
    if st is None:
        raise TargetGone(f"process {t.pid} exited during the dump")


OPTIONS = {
    "native": Option(True, bool, "py-spy --native: native frames too (off in containers and with nonblocking)."),
    "locals": Option(False, bool, "py-spy --locals: local variables too (they can hold secrets)."),
    "nonblocking": Option(False, bool, "py-spy --nonblocking: never stop the target (a stack may be torn)."),
    "jvm_locks": Option(False, bool, "jcmd Thread.print -l: also the ownable synchronizers each thread holds."),
    "js_stack": Option(True, bool, "Node: also the main thread's JavaScript stack (pauses it briefly)."),
    "js_stack_wait_s": Option(1.0, float, "Node: how long to wait for the main thread to pause for js_stack."),
    "event_loop_wait_s": Option(2.0, float, "Node: how long to wait for a 0 ms timer that measures the event "
                                "loop's lag."),
    "asyncio_samples": Option(3, int, "Python: samples of an asyncio loop found inside one callback (how long "
                              "it stays blocked)."),
    "asyncio_interval_s": Option(0.5, float, "Python: time between those samples."),
    "go_pprof": Option("", str, "Go: the target's net/http/pprof address (e.g. \"127.0.0.1:6060\") to read its "
                       "goroutines from (tried first); else one found among its listening sockets, else Delve."),
    "go_pprof_discover": Option(True, bool, "Go: look for a pprof endpoint among the target's listening sockets."),
    "dlv_timeout_s": Option(20.0, float, "Go: time budget of Delve's grouped goroutine listing."),
    "native_tool": Option("auto", str, "Native stacks with auto (eu-stack, gdb in containers), eu-stack or gdb.",
                          choices=("auto", "eu-stack", "gdb")),
    "py_spy": Option(None, str, "Path of py-spy (unset: the venv's, else PATH; empty: never used)."),
    "jcmd": Option(None, str, "Path of jcmd (unset: found on PATH; empty: never used)."),
    "eu_stack": Option(None, str, "Path of eu-stack (unset: found on PATH; empty: never used)."),
    "gdb": Option(None, str, "Path of gdb (unset: found on PATH; empty: never used)."),
    "dlv": Option(None, str, "Path of dlv, Delve (unset: found on PATH; empty: never used)."),
}

COLLECTOR = Collector(
    name="threads",
    summary="per target: user-space thread dump with the runtime's own tool (py-spy, jcmd Thread.print, Node "
            "inspector report, Go pprof/dlv, eu-stack/gdb), parsed to threads.json with deadlocks.",
    scope=Scope.PROCESS, collect=collect, profiles=frozenset({"standard", "full"}), timeout_s=60,
    pauses_target=True, volatility=20, options=OPTIONS)
