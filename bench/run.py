#!/usr/bin/env python3
"""``make bench``: run every bench/bench_*.py, write bench/results.json and bench/README.md's tables.

Each script prints one JSON object on stdout (see the convention in bench/README.md).
They run one after another (a shared 2-core machine: nothing else should run), each
under a time limit; a failing script is recorded, never fatal.

    .venv/bin/python bench/run.py [--quick] [NAME ...]      NAME: e.g. capture bundle tail
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LIMIT_S = 600


def machine() -> dict:
    model = ""
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = int(open("/proc/meminfo").readline().split()[1]) // 1024
    return {"cpu": model, "cores": os.cpu_count(), "memory_mib": mem, "kernel": platform.release(),
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def table(obj: dict) -> str:
    rows = obj.get("results", [])
    if not rows:
        return "_no results_\n"
    keys: list[str] = []
    for r in rows:
        for k, v in r.items():
            if k not in keys and not isinstance(v, (dict, list)):
                keys.append(k)
    out = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    for r in rows:
        out.append("| " + " | ".join("" if r.get(k) is None else str(r.get(k)).replace("|", "\\|")
                                     for k in keys) + " |")
    return "\n".join(out) + "\n"


def render(results: dict) -> str:
    m = results["machine"]
    parts = [f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_mib']} MiB, kernel {m['kernel']}, "
             f"Python {m['python']}; run {m['date']}{' (quick mode)' if results.get('quick') else ''}.\n"]
    for name, obj in results["areas"].items():
        parts.append(f"\n### {name}\n")
        if "error" in obj:
            parts.append(f"failed: `{obj['error'][:300]}`\n")
            continue
        if obj.get("commands"):
            parts.append("Commands: " + "; ".join(f"`{c}`" for c in obj["commands"]) + "\n\n")
        parts.append(table(obj))
    return "".join(parts)


def main() -> int:
    if "--render" in sys.argv:      # redraw the tables from results.json, run nothing
        results = json.loads((HERE / "results.json").read_text())
        _write_readme(results)
        return 0
    quick = "--quick" in sys.argv
    wanted = [a for a in sys.argv[1:] if not a.startswith("-")]
    scripts = sorted(HERE.glob("bench_*.py"))
    if wanted:
        scripts = [s for s in scripts if s.stem[len("bench_"):] in wanted]
    results = {"machine": machine(), "quick": quick, "areas": {}}
    old = HERE / "results.json"
    if wanted and old.exists():      # keep the other areas' last figures
        results["areas"] = json.loads(old.read_text()).get("areas", {})
    for s in scripts:
        name = s.stem[len("bench_"):]
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        try:
            cp = subprocess.run([sys.executable, str(s)] + (["--quick"] if quick else []), capture_output=True,
                                text=True, timeout=LIMIT_S, cwd=HERE.parent)
            obj = json.loads(cp.stdout) if cp.returncode == 0 else {"error": cp.stderr.strip()[-2000:]}
        except (subprocess.TimeoutExpired, ValueError) as exc:
            obj = {"error": f"{type(exc).__name__}: {exc}"}
        obj["seconds"] = round(time.monotonic() - t0, 1)
        results["areas"][name] = obj
        print(f"bench: {name} done in {obj['seconds']} s", file=sys.stderr, flush=True)
    old.write_text(json.dumps(results, indent=1) + "\n")
    _write_readme(results)
    return 0


def _write_readme(results: dict) -> None:
    readme = HERE / "README.md"
    text = readme.read_text()
    begin, end = "<!-- BEGIN results -->", "<!-- END results -->"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{begin}\n{render(results)}{end}{tail}")


if __name__ == "__main__":
    sys.exit(main())
