"""Collector options: what ``[collectors.<name>]`` may hold, as each collector declares it.

Where it sits: a collector declares its options in its own module,
``COLLECTOR = Collector(..., options={"top": Option(20, int, "Entries listed.")})``; that
declaration is the one source of truth. ``agent.config`` checks every
``[collectors.<name>]`` key against it when the config is loaded (an unknown collector or
key, a value of the wrong type or outside its choices, is an error like anywhere else in
the config); a collector reads ``ctx.options.get(name, <its declared default>)``; docs/config.md's
configuration reference and the example config are generated from it.

``declared()`` reads the declarations *without importing* the collector modules: it
parses each module's source and evaluates the ``options=`` literal. Loading a config so
never loads collector code, which matters in the daemon's long-lived process (see
tests/test_layout.py). A declaration is therefore a literal: a dict of ``Option(...)``
calls whose arguments are constants, numbers (``8 * 2**30``), tuples, lists, and the type
names ``int``, ``float``, ``str``, ``bool``, ``list``. A test checks that what is read
here equals what the imported modules declare, and that collectors read only declared
options with their declared defaults.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool, "list": list}


@dataclass(frozen=True)
class Option:
    """One option of a collector: its default, type(s), one sentence of documentation, allowed values."""

    default: Any
    type: type | tuple[type, ...]
    doc: str
    choices: tuple[Any, ...] = ()

    def check(self, value: Any) -> str | None:
        """Why ``value`` is not acceptable, or None."""
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        if float in types and int not in types:
            types = (*types, int)                 # 1 is a fine float
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            names = " or ".join(t.__name__ for t in types if not (t is int and float in types))
            return f"must be {names}, not {type(value).__name__}"
        if self.choices and value not in self.choices:
            return "must be " + ", ".join(repr(c) for c in self.choices[:-1]) + f" or {self.choices[-1]!r}" + (
                f", not {value!r}")
        return None


class OptionsError(ValueError):
    """A collector module whose ``options=`` cannot be read without importing it."""


def collector_modules() -> dict[str, Path]:
    """Collector name -> module file: ``collectors/*.py`` (not ``_*``) and GOLDENHOUR_EXTRA_COLLECTORS."""
    out: dict[str, Path] = {}
    spec = importlib.util.find_spec("collectors")
    for info in pkgutil.iter_modules(list(spec.submodule_search_locations or []) if spec else []):
        if not info.name.startswith("_"):
            out[info.name] = Path(info.module_finder.path) / f"{info.name}.py"  # type: ignore[union-attr]
    for dotted in filter(None, (d.strip() for d in os.environ.get("GOLDENHOUR_EXTRA_COLLECTORS", "").split(","))):
        try:
            origin = importlib.util.find_spec(dotted)
        except (ImportError, ValueError):
            origin = None
        if origin is not None and origin.origin:
            out[dotted.rsplit(".", 1)[-1]] = Path(origin.origin)
    return out


_cache: dict[tuple[str, float], dict[str, Option]] = {}


def declared() -> dict[str, dict[str, Option]]:
    """Every collector's declared options, by collector name (read from source, cached per file)."""
    out = {}
    for name, path in collector_modules().items():
        try:
            key = (str(path), path.stat().st_mtime)
        except OSError:
            continue
        if key not in _cache:
            _cache[key] = read_module(path)
        out[name] = _cache[key]
    return out


def read_module(path: Path) -> dict[str, Option]:
    """The ``options=`` of the module's ``COLLECTOR = Collector(...)`` ({} when it declares none)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    except (OSError, SyntaxError, ValueError) as exc:
        raise OptionsError(f"{path}: cannot read its options ({exc})") from None
    names: dict[str, ast.expr] = {}
    call = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            names[node.targets[0].id] = node.value
            if node.targets[0].id == "COLLECTOR" and isinstance(node.value, ast.Call):
                call = node.value
    if call is None:
        return {}
    expr = next((k.value for k in call.keywords if k.arg == "options"), None)
    if expr is None:
        return {}
    if isinstance(expr, ast.Name) and expr.id in names:
        expr = names[expr.id]
    try:
        value = _eval(expr)
    except OptionsError as exc:
        raise OptionsError(f"{path}: options must be a literal ({exc})") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, Option) for k, v in value.items()):
        raise OptionsError(f"{path}: options must be a dict of name -> Option(...)")
    return value


_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Pow: lambda a, b: a ** b, ast.Div: lambda a, b: a / b}


def _eval(node: ast.expr) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _eval(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _BINOPS[type(node.op)](_eval(node.left), _eval(node.right))
    if isinstance(node, ast.Tuple):
        return tuple(_eval(e) for e in node.elts)
    if isinstance(node, ast.List):
        return [_eval(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        return {_eval(k): _eval(v) for k, v in zip(node.keys, node.values, strict=True) if k is not None}
    if isinstance(node, ast.Name) and node.id in TYPES:
        return TYPES[node.id]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Option":
        return Option(*(_eval(a) for a in node.args), **{k.arg: _eval(k.value) for k in node.keywords if k.arg})
    raise OptionsError(f"line {getattr(node, 'lineno', '?')}: {ast.unparse(node)[:60]}")

