"""The layout rules of agent/cli/: command modules never import ``main``, every command is registered,
files stay small."""
from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / "agent" / "cli"
MODULES = sorted(p for p in CLI.glob("*.py") if p.name != "__init__.py")


def _all_commands(group: click.Group) -> list[click.Command]:
    out: list[click.Command] = []
    for cmd in group.commands.values():
        out.append(cmd)
        if isinstance(cmd, click.Group):
            out += _all_commands(cmd)
    return out


def test_command_modules_import_the_shared_context_never_main():
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.module != "agent.cli", f"{path.name} imports from agent.cli (main); use agent.cli.app"
                assert not (node.module == "agent" and any(a.name == "cli" for a in node.names)), path.name
            elif isinstance(node, ast.Import):
                assert all(a.name != "agent.cli" for a in node.names), f"{path.name} imports agent.cli"


def test_every_command_defined_in_the_package_is_registered_on_main():
    from agent.cli import main
    registered = {id(c) for c in _all_commands(main)}
    for path in MODULES:
        mod = importlib.import_module(f"agent.cli.{path.stem}")
        for name, obj in vars(mod).items():
            if isinstance(obj, click.Command):
                assert id(obj) in registered, f"agent/cli/{path.name}: command {name} is not added to main"


def test_registration_does_not_depend_on_import_order():
    """A command module imported before the package gives the same commands as the package alone."""
    code = ("import sys, json, importlib\n"
            "first = sys.argv[1]\n"
            "if first: importlib.import_module(first)\n"
            "from agent.cli import main\n"
            "print(json.dumps(sorted(main.commands)))\n")
    seen = set()
    for first in ["", *(f"agent.cli.{p.stem}" for p in MODULES)]:
        cp = subprocess.run([sys.executable, "-c", code, first], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
        assert cp.returncode == 0, cp.stderr
        seen.add(tuple(json.loads(cp.stdout)))
    assert len(seen) == 1, seen


def test_no_file_of_the_package_is_over_300_lines():
    for path in CLI.glob("*.py"):
        n = len(path.read_text().splitlines())
        assert n <= 300, f"agent/cli/{path.name} has {n} lines; split it by command family"
