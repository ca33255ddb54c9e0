#!/usr/bin/env python3
"""Regenerate README's generated tables (collectors, configuration keys) from the code.

    .venv/bin/python scripts/gen_docs.py          rewrite README.md in place
    .venv/bin/python scripts/gen_docs.py --check  exit 1 if README.md is out of date (a test runs this)
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent import config, options, registry


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'`"{v}"`'
    if v is None:
        return "(unset)"
    if isinstance(v, list):
        return "`[" + ", ".join(f'"{x}"' for x in v) + "]`"
    return f"`{v}`"


def collectors_table() -> str:
    rows = ["| collector | scope | profiles | captures |", "| --- | --- | --- | --- |"]
    found, _ = registry.discover()
    for c in found.values():
        prof = ", ".join(p for p in ("quick", "standard", "full") if p in c.profiles)
        extra = " Pauses its target (see the pause ledger)." if c.pauses_target else ""
        rows.append(f"| `{c.name}` | {c.scope.value} | {prof} | {c.summary}{extra} |")
    return "\n".join(rows)


def config_table() -> str:
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for k, key in config.KEYS.items():
        default = key.default
        if k == "store.path":
            default = "/var/lib/goldenhour (root) or ~/.local/share/goldenhour"
            rows.append(f"| `{k}` | {default} | {key.doc} |")
            continue
        rows.append(f"| `{k}` | {_fmt(default)} | {key.doc} |")
    for k, key in config.COLLECTOR_KEYS.items():
        rows.append(f"| `collectors.<name>.{k}` | {_fmt(key.default)} | {key.doc} |")
    for name, opts in sorted(options.declared().items()):
        for k, opt in opts.items():
            rows.append(f"| `collectors.{name}.{k}` | {_fmt(opt.default)} | {opt.doc} |")
    for k, key in config.WEBHOOK_KEYS.items():
        rows.append(f"| `webhooks.<tracker>.{k}` | {_fmt(key.default)} | {key.doc} |")
    return "\n".join(rows)


SECTIONS = {"collectors-table": collectors_table, "config-table": config_table}


def render(text: str) -> str:
    for name, fn in SECTIONS.items():
        begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
        if begin not in text:
            raise SystemExit(f"README.md has no {begin} marker")
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{begin}\n{fn()}\n{end}{tail}"
    return text


def main() -> int:
    readme = ROOT / "README.md"
    old = readme.read_text()
    new = render(old)
    if "--check" in sys.argv:
        if new != old:
            print("README.md is out of date: run .venv/bin/python scripts/gen_docs.py", file=sys.stderr)
            return 1
        return 0
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
