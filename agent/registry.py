"""Collector discovery: every module in ``collectors/`` that exports ``COLLECTOR``.

Where it sits: first step of planning, and the source of ``goldenhour collectors``.
There is no hand-kept list: a module added to ``collectors/`` is a collector. A
module that fails to import or breaks the contract is reported as *broken* with
its error instead of crashing the registry.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
from dataclasses import dataclass

import collectors as _pkg
from agent.collector import PROFILES, Collector


@dataclass(frozen=True)
class Broken:
    name: str
    error: str


def _validate(name: str, c: object) -> str | None:
    if not isinstance(c, Collector):
        return "COLLECTOR is missing or not an agent.collector.Collector"
    if c.name != name:
        return f"COLLECTOR.name {c.name!r} differs from the module name"
    if not c.summary.strip():
        return "empty summary"
    if not 0 < c.timeout_s <= 3600:
        return f"timeout_s {c.timeout_s} out of bounds (0, 3600]"
    if not c.profiles or not set(c.profiles) <= set(PROFILES):
        return f"profiles {sorted(c.profiles)} must be a non-empty subset of {PROFILES}"
    return None


_cache: tuple[dict[str, Collector], list[Broken]] | None = None


def discover() -> tuple[dict[str, Collector], list[Broken]]:
    """All collectors, ordered by volatility then name, plus the broken modules."""
    global _cache
    if _cache is not None:
        return _cache
    found: list[Collector] = []
    broken: list[Broken] = []
    for info in pkgutil.iter_modules(_pkg.__path__):
        if info.name.startswith("_"):
            continue
        try:
            mod = importlib.import_module(f"collectors.{info.name}")
        except Exception as exc:  # noqa: BLE001 - reported, never fatal
            broken.append(Broken(info.name, f"import failed: {type(exc).__name__}: {exc}"))
            continue
        c = getattr(mod, "COLLECTOR", None)
        err = _validate(info.name, c)
        if err:
            broken.append(Broken(info.name, err))
        else:
            found.append(c)  # type: ignore[arg-type]
    # Extra collector modules (dotted names), e.g. the deliberately slow one the tests use.
    for dotted in filter(None, os.environ.get("GOLDENHOUR_EXTRA_COLLECTORS", "").split(",")):
        try:
            mod = importlib.import_module(dotted.strip())
            c = getattr(mod, "COLLECTOR", None)
            err = _validate(dotted.strip().rsplit(".", 1)[-1], c)
        except Exception as exc:  # noqa: BLE001
            c, err = None, f"import failed: {type(exc).__name__}: {exc}"
        if err:
            broken.append(Broken(dotted, err))
        else:
            found.append(c)  # type: ignore[arg-type]
    found.sort(key=lambda c: (c.volatility, c.name))
    _cache = ({c.name: c for c in found}, broken)
    return _cache


def collectors() -> dict[str, Collector]:
    return discover()[0]
