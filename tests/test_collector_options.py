"""Collector options: each collector's declaration (``COLLECTOR.options``) is the one source of truth.

What ``agent.options`` reads from the source equals what the imported modules declare; every
option a collector's code reads is declared, with the same default; and the real CLI refuses
an unknown ``[collectors.<name>]`` section or key, a wrong type or a value outside its choices,
with one line and exit 2, before anything is captured.
"""
from __future__ import annotations

import ast
import importlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard

from agent import options as options_mod

ROOT = Path(__file__).resolve().parent.parent
EXTRA = "tests.helpers.bulk"


def _imported() -> dict[str, dict]:
    """Each collector module imported (not through the registry, whose cache would keep the extra one)."""
    mods = {name: f"collectors.{name}" for name in options_mod.collector_modules() if name != "bulk"}
    mods["bulk"] = EXTRA
    return {name: importlib.import_module(dotted).COLLECTOR.options for name, dotted in mods.items()}


def test_reading_the_source_gives_what_the_modules_declare(monkeypatch):
    monkeypatch.setenv("GOLDENHOUR_EXTRA_COLLECTORS", EXTRA)
    static = options_mod.declared()
    imported = _imported()
    assert set(static) >= set(imported)
    for name, opts in imported.items():
        assert static[name] == opts, name
    assert "native" in static["threads"] and static["threads"]["native"].default is True


def _constants(tree: ast.Module) -> dict[str, ast.expr]:
    """Module-level NAME = value (also NAME1, NAME2 = v1, v2)."""
    out: dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            t, v = node.targets[0], node.value
            if isinstance(t, ast.Name):
                out[t.id] = v
            elif isinstance(t, ast.Tuple) and isinstance(v, ast.Tuple) and len(t.elts) == len(v.elts):
                out.update({n.id: e for n, e in zip(t.elts, v.elts, strict=True) if isinstance(n, ast.Name)})
    return out


def _default(node: ast.expr, constants: dict[str, ast.expr]) -> object:
    """A read's default as a value: a literal or a module constant; ... when computed (not checkable)."""
    if isinstance(node, ast.Name) and node.id in constants:
        node = constants[node.id]
    try:
        return options_mod._eval(node)
    except options_mod.OptionsError:
        return ...


def _reads(tree: ast.Module) -> list[tuple[str, object, int]]:
    """(key, default or ..., line) of every option read: ctx.options.get / opts.get / [..] / tool(ctx, k)."""
    out = []
    constants = _constants(tree)

    def is_options(node: ast.AST) -> bool:
        return (isinstance(node, ast.Attribute) and node.attr == "options") or (
            isinstance(node, ast.Name) and node.id == "opts")

    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and is_options(node.func.value) and node.args and isinstance(node.args[0], ast.Constant):
            default = _default(node.args[1], constants) if len(node.args) > 1 else ...
            out.append((node.args[0].value, default, node.lineno))
        elif isinstance(node, ast.Subscript) and is_options(node.value) and isinstance(node.slice, ast.Constant):
            out.append((node.slice.value, ..., node.lineno))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "tool" \
                and len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
            out.append((node.args[1].value, ..., node.lineno))
    return out


def test_collectors_read_only_declared_options_with_their_declared_defaults(monkeypatch):
    monkeypatch.setenv("GOLDENHOUR_EXTRA_COLLECTORS", EXTRA)
    declared = options_mod.declared()
    modules = options_mod.collector_modules()
    netns_reads = {k for k, _, _ in _reads(ast.parse((ROOT / "collectors" / "_netns.py").read_text()))}
    assert netns_reads == {"netns"}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        mine = declared[name]
        for key, default, line in _reads(tree):
            assert key in mine, f"{path.name}:{line} reads option {key!r}, which {name} does not declare"
            if default is not ...:
                assert default == mine[key].default, f"{path.name}:{line} {key}: default {default!r} in the code, " \
                                                     f"{mine[key].default!r} declared"
        uses_netns = any(isinstance(n, ast.ImportFrom) and any(a.name == "_netns" for a in n.names)
                         for n in ast.walk(tree))
        if uses_netns:
            assert netns_reads <= set(mine), f"{name} uses _netns but does not declare netns"


def _gh(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GOLDENHOUR_CONFIG": str(cfg)}
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, env=env)


@pytest.mark.parametrize("section, said", [
    ('[collectors.threads]\nnatve = false\n', "unknown config key collectors.threads.natve in {cfg} "
                                               "(did you mean native?); [collectors.threads] takes enabled, "),
    ('[collectors.nosuch]\nenabled = true\n', "unknown collector [collectors.nosuch] in {cfg}; known: "),
    ('[collectors.sockets]\nmethod = "netlink"\n', "config key collectors.sockets.method in {cfg} must be "
                                                   "'auto', 'ss' or 'proc', not 'netlink'"),
    ('[collectors.host]\ntop = "ten"\n', "config key collectors.host.top in {cfg} must be int, not str"),
    ('[collectors.dmesg]\ntimeout_s = "5"\n', "config key collectors.dmesg.timeout_s in {cfg} must be "),
])
def test_a_bad_collector_section_is_refused_before_anything_is_captured(tmp_path, section, said):
    store = tmp_path / "store"
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[store]\npath = "{store}"\n{section}')
    for args in (("snapshot", "--incident", "INC-opt", "--profile", "quick", "--json"), ("collectors",)):
        cp = _gh(cfg, *args)
        assert cp.returncode == 2, (args, cp.stdout, cp.stderr)
        assert cp.stderr.startswith("goldenhour: error: " + said.format(cfg=cfg)), cp.stderr
        assert len(cp.stderr.strip().splitlines()) == 1 and cp.stdout == ""
    assert not list(store.glob("incidents/*/*")) if store.exists() else True


def test_declared_options_are_accepted_and_reach_the_collector(tmp_path):
    store = tmp_path / "store"
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[store]\npath = "{store}"\n[collectors.host]\ntop = 3\ncpu_sample_s = 0\n'
                   '[collectors.threads]\npy_spy = ""\nnative = false\n')
    cp = _gh(cfg, "snapshot", "--incident", "INC-opt", "--collector", "host", "--json")
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    assert out["collectors"] == {"host": "ok"}
    with tarfile.open(fileobj=io.BytesIO(zstandard.ZstdDecompressor().decompress(
            Path(out["bundle"]).read_bytes(), max_output_size=1 << 30))) as tar:
        member = next(m for m in tar if m.name.endswith("/collectors/host/host.json"))
        top = json.loads(tar.extractfile(member).read())["top_processes"]
    assert len(top["by_rss"]) == 3 and top["by_cpu_now"] == []      # top = 3, cpu_sample_s = 0


def test_the_config_reference_documents_every_collector_option():
    page = (ROOT / "docs" / "config.md").read_text()
    for name, opts in options_mod.declared().items():
        section = page.split(f"#### `[collectors.{name}]`", 1)[1].split("\n#", 1)[0]
        for key, opt in opts.items():
            assert f"| `{key}` |" in section, f"docs/config.md lacks collectors.{name}.{key}"
            assert opt.doc.split(" (")[0].replace("<", "&lt;") in section, f"collectors.{name}.{key}: its doc"
