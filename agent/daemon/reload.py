"""The daemon's config at start and on SIGHUP: warnings an SRE should see, and the reload itself.

Where it sits: ``agent.daemon.server`` calls ``warn_about(cfg, path)`` once the daemon is
listening and ``reload(svc)`` on each SIGHUP (``systemctl reload goldenhour``:
``ExecReload=/bin/kill -HUP $MAINPID``).

``reload`` reads the config file again (with the command line's ``--store``/``--listen`` and
``GOLDENHOUR_STORE`` applied, as at start), builds everything that depends on it (the webhook
receiver with every enabled tracker's secrets, this host's identity, the API token) and
only then swaps it in: a file that does not load, an enabled tracker without a secret, an
unknown collector leaves the daemon running with its previous config and logs one line
why (``event=reload outcome=failed``). Capture and upload children get the config the
daemon runs with (``ChildJob.config``), so a broken edit never reaches them. Keys the
daemon bound at start (``RESTART_KEYS``: sockets, store and state, the queue, the body
limit, the upload timer; the fleet's connection) keep their running value and are named
in a warning: a restart applies them. A capture running during a reload finishes with the
config it started with.
"""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from agent import targeting
from agent.config import Config, ConfigError
from agent.daemon.client import read_token
from agent.daemon.intake import Receiver
from agent.daemon.kvlog import kv
from agent.errors import GoldenhourError
from agent.webhooks import TRACKERS

if TYPE_CHECKING:
    from agent.daemon.service import Service

RESTART_KEYS = ("store.path", "daemon.state_dir", "daemon.listen", "daemon.socket", "daemon.queue_size",
                "daemon.max_body_bytes", "daemon.upload_interval_s")
RESTART_PREFIXES = ("fleet.", "relay.")


def warnings(cfg: Config, config_path: str | os.PathLike[str] | None = None) -> list[str]:
    """What the daemon warns about at start and after a reload (one line each)."""
    out = []
    if not any(cfg.webhook(t)["enabled"] for t in TRACKERS) and not getattr(cfg, "fleet_enabled", False):
        out.append("no tracker is enabled ([webhooks.<tracker>] enabled = true): incidents declared in a tracker "
                   "will not capture on this host; only the local API and the pre-restart hook will")
    files = [(f"[webhooks.{t}] secret_file", cfg.webhook(t)["secret_file"]) for t in TRACKERS
             if cfg.webhook(t)["enabled"] and cfg.webhook(t)["secret_file"]]
    if cfg["daemon.api_token_file"]:
        files.append(("daemon.api_token_file", cfg["daemon.api_token_file"]))
    for what, f in files:
        why = _readable_by_others(Path(f))
        if why:
            out.append(f"{what} {f} is {why}: only its owner should read a secret (chmod 600 {f})")
    inline = [t for t in TRACKERS if cfg.webhook(t)["enabled"] and cfg.webhook(t)["secret"]]
    path = Path(config_path) if config_path else cfg.path
    if inline and path is not None:
        why = _readable_by_others(path)
        if why:
            out.append(f"the config {path} holds secrets inline ([webhooks.{inline[0]}] secret) and is {why} "
                       f"(chmod 600 {path}, or use secret_file)")
    return out


def _readable_by_others(path: Path) -> str:
    try:
        mode = path.stat().st_mode
    except OSError:
        return ""                   # a missing file is an error elsewhere (the receiver says so)
    who = [w for w, bit in (("group", stat.S_IRGRP), ("others", stat.S_IROTH)) if mode & bit]
    return f"readable by {' and '.join(who)} (mode {stat.S_IMODE(mode):04o})" if who else ""


def warn_about(cfg: Config, config_path: str | os.PathLike[str] | None = None) -> None:
    for w in warnings(cfg, config_path):
        kv(logging.WARNING, "config", w)


def reload(svc: "Service", load: Callable[[], Config]) -> dict[str, Any]:
    """Re-read the config into the running daemon, or keep the old one and say why; the outcome."""
    try:
        new = load()
        receiver = Receiver(new)
        identity = targeting.identity(new)
        token = read_token(new)
        svc.check_collectors(new)
    except (GoldenhourError, ConfigError) as exc:
        kv(logging.ERROR, "reload", "the config was not reloaded; the daemon runs on with its previous config",
           outcome="failed", error=str(exc))
        return {"outcome": "failed", "error": str(exc)}
    kept = [k for k in new.values if (k in RESTART_KEYS or k.startswith(RESTART_PREFIXES)) and new[k] != svc.cfg[k]]
    for k in kept:
        new.set(k, svc.cfg[k])
    svc.cfg = svc.jobs.cfg = svc.intake.cfg = new
    svc.receiver, svc.identity, svc.intake.identity, svc.token = receiver, identity, identity, token
    svc.state.dedupe_s = float(new["daemon.dedupe_hours"]) * 3600
    svc.state.open_s = float(new["daemon.open_hours"]) * 3600
    if svc.fleet is not None:           # fleet mode targets with the new identity and heartbeats it at once
        svc.fleet.reconfigure(identity, new)
    svc.guard.configure(new)                   # timeouts, connection limit, log interval: new connections
    if kept:
        kv(logging.WARNING, "reload", "these keys changed but take effect only after a restart "
           "(systemctl restart goldenhour); their running values are kept", keys=",".join(kept))
    kv(logging.INFO, "reload", "config reloaded", outcome="reloaded", trackers=",".join(receiver.enabled()) or "-",
       restart_needed=",".join(kept) or "-")
    warn_about(new)
    return {"outcome": "reloaded", "restart_needed": kept}
