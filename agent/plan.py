"""Planning: which collectors run, for which targets, with which budget.

Where it sits: between the trigger and the runner. Selection, in order:
``--collector`` names replace the profile's set; otherwise every collector whose
``profiles`` include the chosen profile, with ``[collectors.<name>] enabled``
forcing one on or off; ``--heap`` adds the heap collector; ``--skip`` removes.
A selected collector that cannot run here (a missing tool, no root, no
tracepoint) becomes a ``skipped`` result with the reason, never an error.
Process-scope collectors get one item per target whose runtime they handle.
Items are ordered most volatile first (RFC 3227).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from agent.collector import SKIPPED, Collector, Scope
from agent.config import Config
from agent.errors import NotFoundError
from agent.runner import Item, ItemResult
from agent.targets import Target


@dataclass
class Plan:
    profile: str
    items: list[Item] = field(default_factory=list)
    skipped: list[ItemResult] = field(default_factory=list)
    selected: list[str] = field(default_factory=list)


def check_names(names: Iterable[str], known: dict[str, Collector], flag: str) -> None:
    bad = [n for n in names if n not in known]
    if bad:
        raise NotFoundError(f"unknown collector {', '.join(bad)} for {flag}; known: {', '.join(known)}")


def select(registry: dict[str, Collector], cfg: Config, profile: str, only: Iterable[str] = (),
           skip: Iterable[str] = (), heap: bool = False) -> list[Collector]:
    only, skip = list(only), list(skip)
    check_names(only, registry, "--collector")
    check_names(skip, registry, "--skip")
    chosen = []
    for c in registry.values():
        enabled = cfg.collector(c.name).get("enabled")
        if only:
            take = c.name in only
        else:
            take = (profile in c.profiles) if enabled is None else bool(enabled)
            if heap and c.name == "heap":
                take = True
        if take and c.name not in skip:
            chosen.append(c)
    return chosen


def make_plan(registry: dict[str, Collector], cfg: Config, *, profile: str, targets: list[Target],
              only: Iterable[str] = (), skip: Iterable[str] = (), heap: bool = False,
              time_budget_s: float) -> Plan:
    plan = Plan(profile=profile)
    for c in select(registry, cfg, profile, only, skip, heap):
        plan.selected.append(c.name)
        timeout = float(cfg.collector(c.name).get("timeout_s") or c.timeout_s)
        timeout = min(timeout, time_budget_s)
        opts = {k: v for k, v in cfg.collector(c.name).items() if k not in ("enabled", "timeout_s")}
        why = c.unavailable()
        if c.scope is Scope.HOST:
            if why:
                plan.skipped.append(ItemResult(name=c.name, key=c.name, status=SKIPPED, reason=why,
                                               timeout_s=timeout))
            else:
                plan.items.append(Item(c, None, timeout, opts))
            continue
        fit = [t for t in targets if not c.runtimes or t.runtime in c.runtimes]
        if not fit:
            reason = ("no target processes" if not targets else
                      f"no target runs {'/'.join(sorted(c.runtimes))}")
            plan.skipped.append(ItemResult(name=c.name, key=c.name, status=SKIPPED, reason=reason,
                                           timeout_s=timeout))
            continue
        for t in fit:
            if why:
                plan.skipped.append(ItemResult(name=c.name, key=f"{c.name}/{t.pid}", status=SKIPPED,
                                               reason=why, target=t.to_json(), timeout_s=timeout))
            else:
                plan.items.append(Item(c, t, timeout, opts))
    plan.items.sort(key=lambda it: (it.collector.volatility, it.collector.name,
                                    it.target.pid if it.target else 0))
    return plan
