"""The daemon's memory: which incidents are open here, which were captured, which deliveries were seen.

Where it sits: the daemon owns it (``agent.daemon.intake`` decides with it,
``agent.daemon.jobs`` records capture outcomes, ``agent.daemon.service`` loads,
prunes and re-queues it; one process, the only writer); the pre-restart path of
``goldenhour snapshot`` reads it (``pre_restart_choice``) to learn whether an
incident is open for this host. One JSON file, ``<state>/daemon-state.json`` (``<state>`` is
``daemon.state_dir``, default ``<store>/state``), rewritten by atomic rename
after each change, so a reader never sees half a file and a daemon restart
finds what it knew:

- ``incidents``: ``"<source>/<id>"`` → id, source, title, url, severity,
  services, hosts, ``started_at`` (the earliest start time a tracker gave, epoch s: the
  flight recorder's T0), ``status`` (open/resolved), times, ``capture`` (""/queued/
  running/done/failed/interrupted), ``captures`` (bundle, sha256, when, by
  which job), and while a capture is queued ``job_request``: the
  ``agent.daemon.request.CaptureRequest`` it runs, so a restarted daemon
  re-queues it. An open incident counts as open for ``daemon.open_hours`` after
  its last trigger (trackers that never send a resolve do not keep it open for
  ever); any incident is forgotten ``daemon.dedupe_hours`` after its last
  activity (PagerDuty retries for up to 48 h).
- ``deliveries``: ``"<tracker>/<delivery id>"`` → when and with what outcome,
  kept ``daemon.dedupe_hours``, so a retried delivery is answered as a duplicate.

The file is not fsynced: it survives a daemon crash or restart (the kernel has
it), not necessarily a power cut, after which at worst an incident is captured
a second time.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

FILENAME = "daemon-state.json"


def state_dir(cfg) -> Path:
    return Path(cfg["daemon.state_dir"] or (cfg.store_path / "state"))


class State:
    def __init__(self, directory: Path, dedupe_hours: float = 48, open_hours: float = 24):
        self.dir = Path(directory)
        self.path = self.dir / FILENAME
        self.dedupe_s = float(dedupe_hours) * 3600
        self.open_s = float(open_hours) * 3600
        self.incidents: dict[str, dict[str, Any]] = {}
        self.deliveries: dict[str, dict[str, Any]] = {}
        self.problem = ""

    @classmethod
    def for_config(cls, cfg, repair: bool = False) -> "State":
        return cls(state_dir(cfg), cfg["daemon.dedupe_hours"], cfg["daemon.open_hours"]).load(repair)

    def load(self, repair: bool = False) -> "State":
        """Read the file; an unreadable one is reported (and, with ``repair``, set aside)."""
        try:
            data = json.loads(self.path.read_text())
            self.incidents = dict(data.get("incidents") or {})
            self.deliveries = dict(data.get("deliveries") or {})
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError) as exc:
            self.problem = f"state file {self.path} is unreadable ({exc})"
            if not repair:
                return self
            # keep the unreadable file for a human, start afresh
            aside = self.path.with_name(f"{FILENAME}.unreadable-{int(time.time())}")
            try:
                os.replace(self.path, aside)
            except OSError:
                pass
            self.problem += f"; kept as {aside.name}, starting with an empty state"
        return self

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        tmp = self.path.with_name(f".{FILENAME}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": 1, "saved_at": time.time(), "incidents": self.incidents,
                                   "deliveries": self.deliveries}, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    def prune(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        n = 0
        for key in [k for k, r in self.incidents.items()
                    if now - float(r.get("updated_at", 0)) > self.dedupe_s
                    and r.get("capture") not in ("queued", "running")]:
            del self.incidents[key]
            n += 1
        for key in [k for k, r in self.deliveries.items() if now - float(r.get("at", 0)) > self.dedupe_s]:
            del self.deliveries[key]
            n += 1
        return n

    @staticmethod
    def key(source: str, incident: str) -> str:
        return f"{source}/{incident}"

    def open_incidents(self, now: float | None = None) -> list[dict[str, Any]]:
        """Incidents open for this host, most recently triggered first."""
        now = time.time() if now is None else now
        found = [r for r in self.incidents.values()
                 if r.get("status") == "open"
                 and now - float(r.get("triggered_at", r.get("updated_at", 0))) <= self.open_s]
        return sorted(found, key=lambda r: float(r.get("triggered_at", 0)), reverse=True)


def open_incidents(cfg) -> list[dict[str, Any]]:
    """For the CLI: open incidents from the daemon's state file (none if there is no file)."""
    return State.for_config(cfg).open_incidents()


def pre_restart_choice(cfg, state: State, unit: str = "") -> dict[str, Any] | None:
    """The incident a pre-restart capture is filed under, or None when none should be taken.

    ``daemon.pre_restart``: ``never`` → None; ``incident`` → the most recently
    triggered incident open for this host, or None; ``always`` → that, or a
    synthetic ``restart-<unit>-<time>`` incident. Used by the local API and by
    ``snapshot --reason pre-restart``, which needs no running daemon.
    """
    mode = cfg["daemon.pre_restart"]
    if mode == "never":
        return None
    found = state.open_incidents()
    if found:
        return found[0]
    if mode == "always":
        from agent.incident import safe_component
        return {"id": f"restart-{safe_component(unit or 'host', 60)}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}",
                "source": "pre-restart", "title": f"restart of {unit}" if unit else "restart"}
    return None


def note_start(rec: dict[str, Any], starts: list[float | None]) -> None:
    """Keep in ``rec`` the earliest start time the tracker gave for this incident (``started_at``)."""
    known = [s for s in starts if s] + ([rec["started_at"]] if isinstance(rec.get("started_at"), (int, float)) else [])
    if known:
        rec["started_at"] = min(known)
