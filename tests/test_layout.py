"""The project's layout rules, checked by reading the source (no import is executed).

No import circles among goldenhour's modules (agent/, collectors/): every import counts,
at module level or inside a function, except type-only ones under ``if TYPE_CHECKING:``.
An edge goes to the module named (``from agent.cli import app`` -> ``agent.cli.app``), not to
the packages above it: a package's ``__init__`` importing its own submodules, which import a
sibling, is how agent/cli/ registers its commands, not a circle. A circle is reported with the
import statements that close it.

The daemon's long-lived process never loads capture code: no module of agent/daemon/ except
the child side (agent/daemon/child.py, what ``goldenhour daemon-job`` runs) reaches the capture
pipeline or any collector module, following the same edges transitively (plus the packages
above each module, whose ``__init__`` an import runs). No file of agent/daemon/ is over 300 lines.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("agent", "collectors")

# Circles tolerated for now, each as the set of its modules, with the reason. Empty: the CLI's
# five-file circle went with agent/cli/. Only a package being rewritten (agent/daemon/) may
# add one here, to be removed when it lands.
ALLOWED_CYCLES: list[frozenset[str]] = []


def _modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the packages (a package is its __init__)."""
    mods = {}
    for pkg in packages:
        for p in sorted((root / pkg).rglob("*.py")):
            parts = list(p.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = p
    return mods


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path, mods: dict[str, Path]) -> dict[str, int]:
    """The project modules ``name`` imports (anywhere but under ``if TYPE_CHECKING:``) -> first line.

    ``from a.b import c`` counts as importing ``a.b.c`` when that is a module, else ``a.b``;
    ``import a.b.c`` as the deepest of ``a.b.c``, ``a.b``, ``a`` that is a project module.
    """
    def resolve(dotted: str) -> str | None:
        while dotted and dotted not in mods:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, int] = {}

    def add(target: str | None, line: int) -> None:
        if target and target != name:
            found.setdefault(target, line)

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit_node(other)
                continue
            visit_node(child)

    def visit_node(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(resolve(alias.name), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                add(sub if sub in mods else resolve(mod), node.lineno)
        visit(node)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return found


def import_graph(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, dict[str, int]]:
    """module -> {imported project module: line of the first such import}."""
    mods = _modules(root, packages)
    return {name: _imports(name, path, mods) for name, path in mods.items()}


def import_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(out)


def _describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    members = set(cycle)
    edges = [f"  {a} imports {b} (line {line})" for a in cycle for b, line in sorted(graph[a].items())
             if b in members]
    return " <-> ".join(cycle) + "\n" + "\n".join(edges)


def test_no_import_cycles():
    graph = import_graph()
    assert "agent.procfs" in graph and "collectors.process" in graph       # the walk found the project
    cycles = [c for c in import_cycles(graph) if frozenset(c) not in ALLOWED_CYCLES]
    assert not cycles, "import circles (break them, or import under `if TYPE_CHECKING:` if type-only):\n" + \
        "\n".join(_describe(c, graph) for c in cycles)


def test_leaf_modules_import_nothing_of_the_project():
    """The /proc reader and the priority helpers are leaves: anything may import them."""
    graph = import_graph()
    for leaf in ("agent.procfs", "agent.priority", "agent.sdnotify"):
        assert graph[leaf] == {}, f"{leaf} imports {sorted(graph[leaf])}"


def test_import_cycle_check_sees_function_level_imports_and_skips_type_only_ones(tmp_path):
    pkg = tmp_path / "agent"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from agent import b\n    return b\n")
    (pkg / "b.py").write_text("import agent.sub.c\n")
    (pkg / "sub" / "c.py").write_text("from ..a import f\n")                     # a -> b -> c -> a
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from agent import e\n")
    (pkg / "e.py").write_text("from agent.d import TYPE_CHECKING\n")              # d -> e is type-only
    graph = import_graph(tmp_path, ("agent",))
    assert graph["agent.a"] == {"agent.b": 2} and graph["agent.sub.c"] == {"agent.a": 1}
    assert graph["agent.d"] == {} and graph["agent.e"] == {"agent.d": 1}
    assert import_cycles(graph) == [["agent.a", "agent.b", "agent.sub.c"]]


# -- agent/daemon/: the capture code stays in the child ---------------------------------------

# The capture pipeline: plan -> run (runner, collector base, targets, the pause ledger and its
# safety checks, the Node inspector) -> capture -> upload / fetch. The local store's layout
# (agent.store, agent.bundle, agent.manifest) is shared: the daemon counts bundles waiting for upload.
PIPELINE = {"agent.capture", "agent.plan", "agent.runner", "agent.registry", "agent.collector", "agent.targets",
            "agent.pauses", "agent.safety", "agent.nodecdp", "agent.upload", "agent.retrieve"}
CHILD = "agent.daemon.child"
DAEMON_MODULES = sorted(m for m in _modules(ROOT, PACKAGES) if m == "agent.daemon" or m.startswith("agent.daemon."))


def reachable(start: str, graph: dict[str, dict[str, int]]) -> dict[str, str]:
    """Every project module importing ``start`` can load -> the module that imports it."""
    def loads(mod: str) -> set[str]:
        out = set()
        for dep in graph.get(mod, {}):
            parts = dep.split(".")
            out |= {p for p in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if p in graph}
        return out - {mod}
    via: dict[str, str] = {}
    todo = [start]
    while todo:
        mod = todo.pop()
        for dep in loads(mod):
            if dep not in via and dep != start:
                via[dep] = mod
                todo.append(dep)
    return via


def _chain(via: dict[str, str], start: str, end: str) -> str:
    path = [end]
    while path[-1] != start:
        path.append(via[path[-1]])
    return " -> ".join(reversed(path))


def _capture_code(mod: str) -> bool:
    return mod in PIPELINE or mod == CHILD or mod == "collectors" or mod.startswith("collectors.")


def test_the_daemon_never_loads_capture_code():
    graph = import_graph()
    assert CHILD in DAEMON_MODULES and "agent.daemon.server" in DAEMON_MODULES
    bad = []
    for module in DAEMON_MODULES:
        if module != CHILD:
            via = reachable(module, graph)
            bad += [_chain(via, module, m) for m in sorted(via) if _capture_code(m)]
    assert not bad, "the daemon's own process would load capture code:\n" + "\n".join(bad)


def test_the_daemon_check_sees_what_the_child_loads():
    """The check above is only worth something if it finds the real thing where it is."""
    graph = import_graph()
    via = reachable(CHILD, graph)
    assert {"agent.capture", "agent.pauses", "agent.upload", "agent.runner", "agent.registry", "collectors"} <= set(via)
    assert "agent.daemon.request" in reachable("agent.daemon.server", graph)
    graph["agent.daemon.jobs"]["agent.pauses"] = 1          # a function-level `from agent import pauses`
    assert "agent.collector" in reachable("agent.daemon.server", graph)


def test_daemon_files_stay_small():
    big = {p.name: n for p in sorted((ROOT / "agent" / "daemon").glob("*.py"))
           if (n := len(p.read_text().splitlines())) > 300}
    assert not big, f"agent/daemon/ files over 300 lines (split them along a seam): {big}"
