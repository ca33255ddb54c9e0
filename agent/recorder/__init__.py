"""The flight recorder: the minutes before the page, kept on the host and shipped with every bundle.

Detection lags impact: when goldenhour captures, the moment the trouble began is often
minutes in the past. ``goldenhour record`` (its own small service, independent of the
daemon) samples cheap host, process and cgroup signals every few seconds into a bounded
ring file; every capture's ``history`` collector cuts the window before the incident's
start out of it; the report names the first signal that left its baseline, and when.

Modules, in the order data flows:

- ``sampler`` (+ ``cgroups``): reads /proc and cgroupfs directly into one sample (a dict);
- ``service``: the recorder's loop: clocks, events, the ring, its Unix socket;
- ``ring``: the on-disk format (preallocated, checksummed, compressed, crash-safe);
- ``window``: reads a time window back (ring file + the recorder's memory), with gaps,
  clock steps and boots; also decodes a bundle's ``ring-slice.bin`` and ``history.jsonl``;
- ``signals``: samples to named time series (rates, percentages, MiB);
- ``analysis``: per signal, a baseline and the first sustained departure;
- ``cli``: ``goldenhour record`` and ``goldenhour history`` (their logic; the click wiring
  lives with the other commands).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from agent.config import Config
    from agent.recorder.service import Settings


def ring_path(cfg: "Config") -> str:
    """The ring file: ``recorder.path``, else ``<store>/recorder/ring``."""
    return cfg["recorder.path"] or os.path.join(str(cfg.store_path), "recorder", "ring")


def settings(cfg: "Config", **overrides: Any) -> "Settings":
    """The recorder's settings from the config (``[recorder]``), with overrides (command-line flags)."""
    from agent.recorder.service import Settings
    path = ring_path(cfg)
    reserve = int(cfg["store.reserve_bytes"])
    try:            # the store's free-space reserve (agent.bundle.reserve_for), without importing the bundler
        st = os.statvfs(os.path.dirname(path) if os.path.isdir(os.path.dirname(path)) else str(cfg.store_path))
        reserve = max(reserve, int(st.f_blocks * st.f_frsize * float(cfg["store.reserve_percent"]) / 100))
    except OSError:
        pass
    st = Settings(
        ring_path=path, ring_bytes=int(cfg["recorder.ring_mib"] * 2**20), interval_s=float(cfg["recorder.interval_s"]),
        process_interval_s=float(cfg["recorder.process_interval_s"]), sync_s=float(cfg["recorder.sync_s"]),
        top_n=int(cfg["recorder.top_n"]), process_names=bool(cfg["recorder.process_names"]),
        max_cgroups=int(cfg["recorder.max_cgroups"]), socket_path=cfg["recorder.socket"],
        memory_minutes=float(cfg["recorder.memory_minutes"]), reserve_bytes=reserve)
    for k, v in overrides.items():
        if v is not None:
            setattr(st, k, v)
    return st


def capture_settings(cfg: "Config") -> dict[str, Any]:
    """What a capture's ``history`` collector needs to find the recorder (``capture`` passes it on)."""
    return {"ring": ring_path(cfg), "socket": cfg["recorder.socket"],
            "before_s": float(cfg["recorder.history_before_min"]) * 60}
