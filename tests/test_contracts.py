"""Contract tests over the whole project (UAC-style): nothing silently lost or undocumented."""
from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import collectors
from agent import registry

ROOT = Path(__file__).resolve().parent.parent


def test_every_collector_module_loads_and_keeps_the_contract():
    found, broken = registry.discover()
    assert not broken, broken
    modules = [m.name for m in pkgutil.iter_modules(collectors.__path__) if not m.name.startswith("_")]
    assert sorted(found) == sorted(modules)
    for name in modules:
        mod = importlib.import_module(f"collectors.{name}")
        doc = (mod.__doc__ or "").strip()
        assert len(doc) > 80, f"collectors/{name}.py needs a docstring: what, why, produces, overhead, caveats"


def test_every_collector_has_its_own_test_module():
    missing = [n for n in registry.collectors() if not (ROOT / "tests" / "collectors" / f"test_{n}.py").exists()]
    assert not missing, f"collectors without tests/collectors/test_<name>.py: {missing}"


def test_readme_tables_are_generated_from_the_code():
    cp = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_docs.py"), "--check"],
                        capture_output=True, text=True)
    assert cp.returncode == 0, cp.stderr
    readme = (ROOT / "README.md").read_text()
    for name in registry.collectors():
        assert f"| `{name}` |" in readme


def test_no_test_function_is_shadowed_by_another_of_the_same_name():
    for path in (ROOT / "tests").rglob("test_*.py"):
        tree = ast.parse(path.read_text())
        seen: dict[str, int] = {}
        scopes = [tree] + [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
        for scope in scopes:
            names = [n.name for n in scope.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                     and n.name.startswith("test")]
            dup = {n for n in names if names.count(n) > 1}
            assert not dup, f"{path}: test functions defined twice: {dup}"
            seen.update(dict.fromkeys(names, 1))


def test_every_cli_command_has_help_with_text():
    from click.testing import CliRunner

    from agent.cli import main
    runner = CliRunner()
    res = runner.invoke(main, ["--help"])
    assert res.exit_code == 0
    for name, cmd in main.commands.items():
        assert (cmd.help or "").strip(), f"command {name} has no help text"
        r = runner.invoke(main, [name, "--help"])
        assert r.exit_code == 0, (name, r.output)
        assert name.split()[0] in ROOT.joinpath("README.md").read_text(), f"README does not mention {name}"


def test_example_config_uses_only_known_keys():
    example = ROOT / "config" / "goldenhour.example.toml"
    if not example.exists():
        return
    from agent import config
    config.load(example)   # raises ConfigError on an unknown key or a wrong type
