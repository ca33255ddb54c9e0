#!/usr/bin/env python3
"""Regenerate the manual's generated parts from the code: the CLI reference (docs/cli.md), the config
reference (docs/config.md), the collectors table (docs/capture.md).

    .venv/bin/python scripts/gen_docs.py          rewrite README.md and docs/*.md in place
    .venv/bin/python scripts/gen_docs.py --check  exit 1 if any is out of date (a test runs this)

A generated part sits between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` in README.md or a
page of docs/; everything outside the markers is written by hand. Each part is rendered from
one source of truth, so the manual cannot drift from the code:

    cli-reference       every click command and group (agent/cli): usage, help, options, epilog
    config-reference    every config key (agent/config.py KEYS, WEBHOOK_KEYS, COLLECTOR_KEYS) and
                        every option a collector declares (COLLECTOR.options, read by agent/options.py)
    collectors-table    every collector (agent/registry.py): scope, profiles, what it captures

Each part must appear in exactly one file. Markers naming other parts belong to other generators
(bench/run.py writes benchmark figures the same way) and are left alone.
"""
from __future__ import annotations

import inspect
import os
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import click

from agent import config, options, registry

STORE_DEFAULT = "/var/lib/goldenhour (root) or ~/.local/share/goldenhour"


# -- Markdown helpers -------------------------------------------------------------------

def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'`"{v}"`'
    if v is None:
        return "(unset)"
    if isinstance(v, list):
        return "`[" + ", ".join(f'"{x}"' for x in v) + "]`"
    return f"`{v}`"


def _prose(text: str) -> str:
    """Text from the code as Markdown prose: what is outside `code spans` gets <, >, * escaped."""
    parts = re.split(r"(`[^`]*`)", text)
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("*", r"\*")
    return "".join(parts)


def _cell(text: str) -> str:
    return _prose(text).replace("|", r"\|").replace("\n", " ")


def _code_cell(text: str) -> str:
    return "`" + text.replace("|", r"\|") + "`"


def _type_name(t: Any) -> str:
    types = t if isinstance(t, tuple) else (t,)
    names = []
    for x in types:
        if x is type(None):
            continue
        names.append({int: "integer", float: "number", str: "string", bool: "boolean", list: "list"}.get(x, x.__name__))
    if "integer" in names and "number" in names:
        names.remove("integer")
    return " or ".join(names)


# -- the collectors table -----------------------------------------------------------------

def collectors_table() -> str:
    rows = ["| collector | scope | profiles | captures |", "| --- | --- | --- | --- |"]
    found, _ = registry.discover()
    for c in found.values():
        prof = ", ".join(p for p in ("quick", "standard", "full") if p in c.profiles)
        extra = " Pauses its target (see the pause ledger)." if c.pauses_target else ""
        rows.append(f"| `{c.name}` | {c.scope.value} | {prof} | {c.summary}{extra} |")
    return "\n".join(rows)


# -- the config -------------------------------------------------------------------------------

def _default(k: str, key: config.Key) -> str:
    return STORE_DEFAULT if k == "store.path" else _fmt(key.default)


def _key_rows(items: list[tuple[str, str, str, str]]) -> list[str]:
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    rows += [f"| `{k}` | {t} | {d} | {_cell(doc)} |" for k, t, d, doc in items]
    return rows


def config_reference() -> str:
    """One table per section, in the order agent/config.py declares them, then collectors and webhooks."""
    sections: dict[str, list[tuple[str, str, str, str]]] = {}
    for k, key in config.KEYS.items():
        section, name = k.split(".", 1)
        sections.setdefault(section, []).append((name, _type_name(key.type), _default(k, key), key.doc))
    out: list[str] = []
    for section, items in sections.items():
        out += [f"### `[{section}]`", ""] + _key_rows(items) + [""]

    out += ["### `[collectors.<name>]`", "",
            "Every collector takes these two keys, plus the options it declares (below; "
            "`goldenhour collectors` lists the collectors).", ""]
    out += _key_rows([(k, _type_name(key.type), _fmt(key.default), key.doc)
                      for k, key in config.COLLECTOR_KEYS.items()]) + [""]
    declared = options.declared()
    for name in sorted(declared):
        opts = declared[name]
        out += [f"#### `[collectors.{name}]`", ""]
        if not opts:
            out += ["Declares no options of its own (only `enabled` and `timeout_s`).", ""]
            continue
        rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        for k, opt in opts.items():
            doc = opt.doc
            if opt.choices:
                doc += " One of: " + ", ".join(f"`{c}`" for c in opt.choices) + "."
            rows.append(f"| `{k}` | {_type_name(opt.type)} | {_fmt(opt.default)} | {_cell(doc)} |")
        out += rows + [""]

    out += ["### `[webhooks.<tracker>]`", "",
            "One section per tracker: " + ", ".join(f"`{t}`" for t in config.TRACKERS) + ". "
            "Each key says which trackers read it when not all do.", ""]
    out += _key_rows([(k, _type_name(key.type), _fmt(key.default), key.doc)
                      for k, key in config.WEBHOOK_KEYS.items()])
    return "\n".join(out).rstrip()


# -- the command line ----------------------------------------------------------------------

def _paragraphs(text: str) -> list[str]:
    """click's help text as Markdown: a ``\\b`` paragraph keeps its lines (a text block), others are prose."""
    text = inspect.cleandoc(text.split("\f", 1)[0])
    out = []
    for para in re.split(r"\n\s*\n", text.strip("\n")):
        lines = para.splitlines()
        if not lines:
            continue
        if lines and lines[0].strip() == "\b":
            body = lines[1:]
            indent = min((len(x) - len(x.lstrip()) for x in body if x.strip()), default=0)
            out.append("```text\n" + "\n".join(x[indent:].rstrip() for x in body) + "\n```")
        else:
            out.append(_prose(" ".join(x.strip() for x in lines).strip()))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _title(cmd: click.Command, path: str) -> str:
    internal = cmd.hidden or (cmd.help or "").startswith("Internal")
    return f"`{path}`" + (" (internal)" if internal else "")


def _command(cmd: click.Command, ctx: click.Context, path: str, level: int) -> list[str]:
    out = [f"{'#' * level} {_title(cmd, path)}", ""]
    out += ["```text", " ".join([path, *cmd.collect_usage_pieces(ctx)]), "```", ""]
    for p in _paragraphs(cmd.help or ""):
        out += [p, ""]
    rows = []
    for param in cmd.get_params(ctx):
        if isinstance(param, click.Argument):
            continue
        if level > 2 and (param.name == "config_path" or param is cmd.get_help_option(ctx)):
            continue                        # every command takes them: said once, at the top
        rec = param.get_help_record(ctx)
        if rec is None:
            continue
        names, help_ = rec
        rows.append(f"| {_code_cell(names)} | {_cell(help_)} |")
    args = [p for p in cmd.params if isinstance(p, click.Argument)]
    if args:
        out += ["Arguments: " + ", ".join(
            f"`{a.make_metavar(ctx) if _click8() else a.make_metavar()}`" + ("" if a.required else " (optional)")
            for a in args) + ".", ""]
    if rows:
        out += ["| option | meaning |", "| --- | --- |", *rows, ""]
    if isinstance(cmd, click.Group):
        subs = ", ".join(f"`{path} {n}`" for n in cmd.commands)
        out += [f"Commands: {subs}.", ""]
    for p in _paragraphs(cmd.epilog or ""):
        out += [p, ""]
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            sub_ctx = click.Context(sub, info_name=name, parent=ctx, **sub.context_settings)
            out += _command(sub, sub_ctx, f"{path} {name}", level + 1)
    return out


def _click8() -> bool:
    """click 8.2 made ``Parameter.make_metavar`` take the context."""
    return "ctx" in inspect.signature(click.Argument.make_metavar).parameters


def cli_reference() -> str:
    from agent.cli import main
    ctx = click.Context(main, info_name="goldenhour", **main.context_settings)
    out = ["Commands: " + ", ".join(f"[`{n}`](#{slug(_title(main.commands[n], f'goldenhour {n}'))})"
                                    for n in main.commands) + ".", ""]
    out += _command(main, ctx, "goldenhour", 2)
    return "\n".join(out).rstrip()


SECTIONS = {"collectors-table": collectors_table, "config-reference": config_reference,
            "cli-reference": cli_reference}
MARKER = re.compile(r"<!-- BEGIN ([a-z0-9-]+) -->")


def files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def render(text: str, where: str = "README.md", cache: dict[str, str] | None = None) -> tuple[str, list[str]]:
    """``text`` with every generated part rewritten; also the names of the parts found."""
    cache = {} if cache is None else cache
    found = []
    for name in MARKER.findall(text):
        if name not in SECTIONS:
            continue                        # another generator's part (bench/run.py's figures...)
        begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
        head, rest = text.split(begin, 1)
        if end not in rest:
            raise SystemExit(f"{where}: {begin} has no {end}")
        _, tail = rest.split(end, 1)
        if name not in cache:
            cache[name] = SECTIONS[name]()
        text = f"{head}{begin}\n{cache[name]}\n{end}{tail}"
        found.append(name)
    return text, found


def main() -> int:
    os.environ.pop("GOLDENHOUR_EXTRA_COLLECTORS", None)     # only the shipped collectors are documented
    check = "--check" in sys.argv
    where: dict[str, list[str]] = {}
    stale = []
    cache: dict[str, str] = {}
    for path in files():
        rel = str(path.relative_to(ROOT))
        old = path.read_text()
        new, found = render(old, rel, cache)
        for name in found:
            where.setdefault(name, []).append(rel)
        if new != old:
            stale.append(rel)
            if not check:
                path.write_text(new)
    problems = [f"generated part {n!r} is in {' and '.join(w)}; it belongs in one file" for n, w in where.items()
                if len(w) > 1]
    problems += [f"generated part {n!r} is in no file (README.md, docs/*.md)" for n in SECTIONS if n not in where]
    for p in problems:
        print(f"gen_docs: {p}", file=sys.stderr)
    if check and stale:
        print(f"gen_docs: out of date: {', '.join(stale)}: run .venv/bin/python scripts/gen_docs.py",
              file=sys.stderr)
        return 1
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
