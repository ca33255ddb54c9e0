"""Does an incident concern this host? The rules, in the order they are tried.

Where it sits: the daemon calls ``concerns(event, identity)`` for each trigger
a webhook delivers; only incidents that concern this host are captured (and
remembered as open for the pre-restart hook). An incident concerns this host when

1. ``daemon.capture_all = true`` (every incident, whatever it names); or
2. one of its **hosts** is this host: equal, case-insensitively, to
   ``host.name`` (default: the system hostname), to the system hostname, or to
   either's short form before the first dot (``web-3.example.com`` matches
   ``web-3``), or to one of this host's IP addresses; a ``:port`` suffix is
   ignored (Alertmanager's ``instance="web-3:9100"``); or
3. one of its **services** equals (case-insensitively) an entry of
   ``daemon.services``; or
4. one of its **labels** ``name=value`` (or a bare tag) equals an entry of
   ``host.tags`` (``host.tags = ["role=db", "cluster-a"]`` matches an alert with
   ``role="db"`` or an Opsgenie tag ``cluster-a``).

An incident that names nothing (no hosts, services or labels: a PagerDuty
incident of an unmapped service, an incident.io private incident) concerns
this host only with ``capture_all``.
"""
from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from agent.webhooks import Event


@dataclass
class Identity:
    names: set[str] = field(default_factory=set)       # lower-case full and short names
    addresses: set[str] = field(default_factory=set)
    services: set[str] = field(default_factory=set)    # lower-case
    tags: set[str] = field(default_factory=set)
    capture_all: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"names": sorted(self.names), "addresses": sorted(self.addresses),
                "services": sorted(self.services), "tags": sorted(self.tags), "capture_all": self.capture_all}


def _names(*names: str) -> set[str]:
    out: set[str] = set()
    for n in names:
        n = (n or "").strip().lower().rstrip(".")
        if n:
            out.add(n)
            out.add(n.split(".", 1)[0])
    return out


def local_addresses() -> set[str]:
    addrs: set[str] = set()
    try:
        import psutil
        for lst in psutil.net_if_addrs().values():
            for a in lst:
                if a.family in (socket.AF_INET, socket.AF_INET6):
                    addrs.add(a.address.split("%", 1)[0].lower())
    except Exception:  # noqa: BLE001 - addresses are a convenience, names still match
        pass
    addrs.discard("127.0.0.1")
    addrs.discard("::1")
    return addrs


def identity(cfg) -> Identity:
    return Identity(names=_names(cfg.hostname, os.uname().nodename),
                    addresses=local_addresses(),
                    services={s.strip().lower() for s in cfg["daemon.services"] if s.strip()},
                    tags={t.strip() for t in cfg["host.tags"] if t.strip()},
                    capture_all=bool(cfg["daemon.capture_all"]))


def _strip_port(h: str) -> str:
    h = h.strip().lower()
    if h.startswith("["):
        return h[1:].split("]", 1)[0]
    if h.count(":") == 1:
        return h.split(":", 1)[0]
    return h


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def concerns(event: Event, me: Identity) -> str | None:
    """Why ``event`` concerns this host (a short text), or None when it does not."""
    if me.capture_all:
        return "daemon.capture_all"
    for h in event.hosts:
        h = _strip_port(h)
        if _is_ip(h):
            if h in me.addresses:
                return f"host address {h}"
            continue
        if h.rstrip(".") in me.names or h.split(".", 1)[0] in me.names:
            return f"host {h}"
    for s in event.services:
        if s.strip().lower() in me.services:
            return f"service {s}"
    for k, v in event.labels.items():
        if f"{k}={v}" in me.tags:
            return f"label {k}={v}"
    for t in event.tags:
        if t in me.tags:
            return f"tag {t}"
    return None
