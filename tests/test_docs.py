"""The manual: README.md and docs/*.md stay true to the code and hold together.

- the generated parts (CLI reference, config reference, collectors table) are what
  scripts/gen_docs.py makes from the code now (its --check), so they never drift;
- every command and subcommand has its section in docs/cli.md, every config key and every
  collector option its row in docs/config.md;
- every relative link resolves to a file, and every #anchor to a heading of that file;
- every page in docs/ is reachable from README.md or docs/README.md.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(ROOT / "scripts"))

from gen_docs import slug  # noqa: E402 - scripts/ is not a package

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def _prose_lines(path: Path) -> list[str]:
    """The file's lines outside fenced code blocks."""
    out, fenced = [], False
    for line in path.read_text().splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return out


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _prose_lines(path):
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(2).replace("`", ""))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    for line in _prose_lines(path):
        out.update(re.findall(r'<a (?:name|id)="([^"]+)"', line))
    return out


def test_generated_parts_are_current():
    cp = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_docs.py"), "--check"],
                        capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr


def test_every_command_has_its_section_in_the_cli_reference():
    from agent.cli import main
    text = (DOCS / "cli.md").read_text()

    def walk(group: click.Group, path: str):
        for name, cmd in group.commands.items():
            yield f"{path} {name}", cmd
            if isinstance(cmd, click.Group):
                yield from walk(cmd, f"{path} {name}")

    found = list(walk(main, "goldenhour"))
    assert len(found) >= 10
    for path, cmd in found:
        assert re.search(rf"^#+ `{re.escape(path)}`", text, re.M), f"docs/cli.md has no section for {path}"
        for param in cmd.params:
            if isinstance(param, click.Option) and param.name != "config_path":
                assert param.opts[-1] in text, f"docs/cli.md does not document {path} {param.opts[-1]}"


def test_every_config_key_is_in_the_config_reference():
    from agent import config, options
    text = (DOCS / "config.md").read_text()
    for k in config.KEYS:
        section, name = k.split(".", 1)
        part = text.split(f"### `[{section}]`", 1)
        assert len(part) == 2, f"docs/config.md has no [{section}] section"
        assert f"| `{name}` |" in part[1].split("\n### ", 1)[0], f"docs/config.md lacks {k}"
    for name, opts in options.declared().items():
        part = text.split(f"#### `[collectors.{name}]`", 1)
        assert len(part) == 2, f"docs/config.md has no [collectors.{name}] section"
        body = part[1].split("\n#", 1)[0]
        for k in opts:
            assert f"| `{k}` |" in body, f"docs/config.md lacks collectors.{name}.{k}"
    for k in [*config.WEBHOOK_KEYS, *config.COLLECTOR_KEYS]:
        assert f"| `{k}` |" in text, f"docs/config.md lacks {k}"


def test_links_resolve_to_files_and_headings():
    broken = []
    for page in pages():
        for line in _prose_lines(page):
            for target in LINK.findall(line):
                if re.match(r"^[a-z]+:", target):          # http:, https:, mailto:
                    continue
                file_part, _, anchor = target.partition("#")
                dest = (page.parent / file_part).resolve() if file_part else page
                if not dest.exists():
                    broken.append(f"{page.relative_to(ROOT)}: {target}: no such file")
                    continue
                if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                    broken.append(f"{page.relative_to(ROOT)}: {target}: no such heading in {dest.name}")
    assert not broken, "\n".join(broken)


def test_every_page_is_reachable_from_the_readme():
    linked: set[Path] = set()
    todo = [ROOT / "README.md"]
    while todo:
        page = todo.pop()
        for line in _prose_lines(page):
            for target in LINK.findall(line):
                file_part = target.partition("#")[0]
                if not file_part or re.match(r"^[a-z]+:", file_part):
                    continue
                dest = (page.parent / file_part).resolve()
                if dest.suffix == ".md" and dest.exists() and dest not in linked:
                    linked.add(dest)
                    todo.append(dest)
    orphans = [p.name for p in DOCS.glob("*.md") if p.resolve() not in linked]
    assert not orphans, f"docs pages no page links to: {orphans}"


def test_the_readme_stays_an_overview():
    """README.md: what it is, the two commands, the 2 a.m. block, the platform, links; the rest is in docs/."""
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines: move the detail into a page of docs/"
    text = "\n".join(lines)
    for must in ("make snapshot", "make test", "goldenhour snapshot", "goldenhour bundles list",
                 "goldenhour report", "goldenhour fetch", "Python 3.11", "Debian 12"):
        assert must in text, f"README.md no longer says {must!r}"
