#!/usr/bin/env python3
"""``make bench``: run every bench/bench_*.py, write bench/results.json and bench/README.md's tables.

Each script prints one JSON object on stdout (the convention in bench/README.md). They run
one after another (a 2-core machine: two benchmarks at once would measure each other), each
in its own process group under its area's time budget (``BUDGETS``); a script that fails or
overruns is recorded as failed and the run goes on. The budgets add up to less than the
20 minutes ``make bench`` may take; areas listed in ``QUICK`` always run in their quick mode
to stay within them.

    .venv/bin/python bench/run.py [--quick] [NAME ...]   NAME: e.g. capture bundle (others keep their last figures)
    .venv/bin/python bench/run.py --render               redraw bench/README.md from bench/results.json
    .venv/bin/python bench/run.py --list                 the areas, their budgets and modes
"""
from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
README = HERE / "README.md"
RESULTS = HERE / "results.json"

# Seconds each area may take (killed past it, recorded as failed). Sum < 20 min.
BUDGETS: dict[str, int] = {
    "capture": 120, "overhead": 240, "logtail": 30, "bundle": 120, "scale": 90, "idle": 90,
    "pauses": 120, "probes": 120, "webhook": 45, "upload": 45, "recorder": 170, "fleet": 240,
}
# (logtail, bundle, scale, webhook and upload gave the recorder 150 s: their last full runs took
# 0.9, 61, 20, 10 and 18 s of them)
DEFAULT_BUDGET = 60
# Areas run with --quick even in a full `make bench` (to fit the overall budget).
QUICK: set[str] = set()
# Run order: the issue's own benchmarks first, then the other areas alphabetically.
ORDER = ["capture", "overhead", "logtail", "bundle", "scale", "idle"]
ROW_KEYS = ["name", "unit", "median", "min", "max", "runs", "target", "met", "notes"]
BEGIN, END = "<!-- BEGIN results -->", "<!-- END results -->"
SBEGIN, SEND = "<!-- BEGIN targets -->", "<!-- END targets -->"


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as fh:
        mem = int(fh.readline().split()[1]) // 1024
    return {"cpu": model or platform.machine(), "cores": os.cpu_count(), "memory_mib": mem,
            "kernel": platform.release(), "os": _os_name(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_1m_at_start": os.getloadavg()[0]}


def _os_name() -> str:
    try:
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def discover() -> list[str]:
    names = [p.stem[len("bench_"):] for p in HERE.glob("bench_*.py")]
    return [n for n in ORDER if n in names] + sorted(n for n in names if n not in ORDER)


def run_area(name: str, quick: bool) -> dict[str, Any]:
    """Run bench_<name>.py in its own process group under its budget; its JSON, or {"error": ...}."""
    script = HERE / f"bench_{name}.py"
    budget = BUDGETS.get(name, DEFAULT_BUDGET)
    q = quick or name in QUICK
    argv = [sys.executable, str(script)] + (["--quick"] if q else [])
    t0 = time.monotonic()
    p = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=budget)
    except subprocess.TimeoutExpired:
        _stop(p)
        out, err = p.communicate()
        obj: dict[str, Any] = {"error": f"over its {budget} s budget, stopped; last output: {err.strip()[-500:]}"}
    else:
        if p.returncode != 0:
            obj = {"error": f"exit {p.returncode}: {err.strip()[-1500:]}"}
        else:
            try:
                obj = json.loads(out)
            except ValueError as exc:
                obj = {"error": f"output is not one JSON object ({exc}): {out[:300]!r}"}
    obj["seconds"] = round(time.monotonic() - t0, 1)
    obj["budget_s"] = budget
    obj["quick"] = q
    obj.setdefault("commands", [" ".join([".venv/bin/python", f"bench/bench_{name}.py"] + (["--quick"] if q else []))])
    return obj


def _stop(p: subprocess.Popen) -> None:
    """SIGTERM the script's process group (its own helpers clean up), SIGKILL after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


# -- rendering -----------------------------------------------------------------------

def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float):
        if v == 0:
            return "0"
        a = abs(v)
        s = f"{v:.0f}" if a >= 1000 else f"{v:.1f}" if a >= 100 else f"{v:.2f}" if a >= 1 else f"{v:.3g}"
        return s
    return str(v).replace("|", "\\|").replace("\n", " ")


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of result rows: the convention's columns first, then any other scalar."""
    if not rows:
        return "_no results_\n"
    keys = [k for k in ROW_KEYS if any(k in r for r in rows)]
    for r in rows:
        for k, v in r.items():
            if k not in keys and not isinstance(v, (dict, list)):
                keys.append(k)
    out = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |")
    return "\n".join(out) + "\n"


def _machine_line(results: dict[str, Any]) -> str:
    m = results["machine"]
    load = m.get("load_1m_at_start")
    return (f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_mib']} MiB, kernel {m['kernel']}"
            + (f", {m['os']}" if m.get("os") else "") + f", Python {m['python']}. "
            + f"Run {m['date']}" + (f" (load average {load:.1f} at start)" if load is not None else "")
            + (f", {results['total_s']:.0f} s in all" if results.get("total_s") else "")
            + (" — quick mode" if results.get("quick") else "")
            + ". Areas rerun on their own since show their own date.\n")


def render(results: dict[str, Any]) -> str:
    """The generated results block: machine, then per area its commands and table."""
    parts = [_machine_line(results), "\nCommand: `make bench` (= `.venv/bin/python bench/run.py`).\n"]
    for name, obj in results["areas"].items():
        parts.append(f"\n### {name}\n\n")
        when = [f"{obj['seconds']} s" if "seconds" in obj else "", "quick mode" if obj.get("quick") else "",
                f"run {obj['date']}" if obj.get("date") else ""]
        if any(when):
            parts.append("_" + ", ".join(w for w in when if w) + "_\n\n")
        if "error" in obj:
            parts.append(f"Failed: `{_fmt(obj['error'])[:400]}`\n")
            continue
        if obj.get("commands"):
            parts.append("Commands: " + "; ".join(f"`{c}`" for c in obj["commands"]) + "\n\n")
        parts.append(table(obj.get("results", [])))
    return "".join(parts)


def render_targets(results: dict[str, Any]) -> str:
    """One line per measured figure that has a target: the figure, its spread and met or not."""
    rows = []
    for name, obj in results["areas"].items():
        for r in obj.get("results", []) if isinstance(obj.get("results"), list) else []:
            if not r.get("target"):
                continue
            spread = ""
            if r.get("min") is not None and r.get("max") is not None:
                spread = f"{_fmt(r['min'])}–{_fmt(r['max'])}"
            rows.append({"area": name, "what": r.get("name", ""), "median": r.get("median"), "spread": spread,
                         "unit": r.get("unit", ""), "target": r.get("target"), "met": r.get("met")})
    if not rows:
        return "_no targets measured_\n"
    out = ["| area | what | median | spread | unit | target | met |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r[k]) for k in ("area", "what", "median", "spread", "unit", "target", "met"))
                   + " |")
    return "\n".join(out) + "\n"


def replace_block(text: str, begin: str, end: str, body: str) -> str:
    """Replace what is between the markers (kept); append the block when the markers are missing."""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        return f"{head}{begin}\n{body}{end}{tail}"
    return f"{text.rstrip()}\n\n{begin}\n{body}{end}\n"


def write_readme(results: dict[str, Any], path: Path = README) -> None:
    text = path.read_text() if path.exists() else "# goldenhour benchmarks\n"
    text = replace_block(text, SBEGIN, SEND, render_targets(results))
    text = replace_block(text, BEGIN, END, render(results))
    path.write_text(text)


def main(argv: list[str]) -> int:
    if "--render" in argv:
        write_readme(json.loads(RESULTS.read_text()))
        return 0
    if "--list" in argv:
        for n in discover():
            print(f"{n:10} budget {BUDGETS.get(n, DEFAULT_BUDGET):4d} s{'  quick' if n in QUICK else ''}")
        print(f"total budget {sum(BUDGETS.get(n, DEFAULT_BUDGET) for n in discover())} s")
        return 0
    quick = "--quick" in argv
    wanted = [a for a in argv if not a.startswith("-")]
    areas = discover()
    unknown = [w for w in wanted if w not in areas]
    if unknown:
        print(f"bench: no such area: {', '.join(unknown)} (have: {', '.join(areas)})", file=sys.stderr)
        return 2
    if wanted:
        areas = [a for a in areas if a in wanted]
    results: dict[str, Any] = {"machine": machine(), "quick": quick, "areas": {}}
    if wanted and RESULTS.exists():      # keep the other areas' last figures and the full run's header
        try:
            old = json.loads(RESULTS.read_text())
            results["areas"] = old.get("areas", {})
            for k in ("machine", "total_s", "quick"):
                if k in old:
                    results[k] = old[k]
        except ValueError:
            pass
    t0 = time.monotonic()
    for name in areas:
        print(f"bench: {name} (budget {BUDGETS.get(name, DEFAULT_BUDGET)} s) ...", file=sys.stderr, flush=True)
        obj = run_area(name, quick)
        obj["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        results["areas"][name] = obj
        state = "FAILED" if "error" in obj else "done"
        print(f"bench: {name} {state} in {obj['seconds']} s", file=sys.stderr, flush=True)
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")     # keep what we have if stopped
    if not wanted:
        results["total_s"] = round(time.monotonic() - t0, 1)
    order = discover()
    results["areas"] = dict(sorted(results["areas"].items(),
                                   key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    write_readme(results)
    failed = [n for n, o in results["areas"].items() if "error" in o and n in areas]
    print(f"bench: wrote {RESULTS.relative_to(ROOT)} and {README.relative_to(ROOT)}"
          + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
