"""The daemon's intake: every synchronous decision about a request, without HTTP.

Where it sits: between the front doors (``agent.daemon.http_app``; the fleet relay and
watcher next) and the job runner. Nothing here awaits, so duplicates arriving together
are decided one after the other in milliseconds. Two parts, each usable alone:

``Receiver(cfg)``: authenticate and parse webhooks; no state (ConfigError: a secret missing).
    ``route(tracker, method) -> Refused | None``  404 unknown/disabled tracker, 405 not POST.
    ``receive(tracker, raw, headers) -> Delivery``  the tracker's verify over the raw body
        (secret files re-read: rotation needs no restart), decode, parse into
        ``agent.webhooks.Event``s; raises ``Refused`` (status, outcome, error) on 4xx.
    The fleet relay runs exactly this centrally, then writes a record instead of deciding.

``Intake(cfg, state, identity, jobs)``: decide with the state file and the queue; ``jobs``
    has ``submit(kind, key, CaptureRequest) -> Job | None`` (None: full) and ``qsize()``.
    ``decide(delivery) -> Answer``  delivery dedupe, ping, then the incident rules for each
        incident named; one status (202 queued, 503 queue full -- the delivery is then not
        recorded, so the tracker's retry is captured -- else 200).
    ``incident(source, incident_id, events, *, by, payload_sha256="", now=None) -> dict``
        the incident rules: trigger (stale? concerns this host, ``agent.targeting``? captured
        already, resolved, asked again by force or reopen?), resolve, acknowledge; queues a
        ``CaptureRequest`` when due; ``{"incident", "outcome", ...}``. The fleet watcher's
        entry for an incident record that arrives from NATS.
    ``snapshot(body) -> (Job | None, Answer)``  ``POST /v1/snapshot``: validate
        (``CaptureRequest.from_api``), pre-restart choice, dedupe unless ``force``, queue.
    Each decision is in the state file before its answer.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Protocol

from agent import targeting
from agent import webhooks as wh
from agent.config import Config, ConfigError, read_secret
from agent.daemon.kvlog import kv
from agent.daemon.request import CaptureRequest, RequestError
from agent.daemon.state import State, note_start, pre_restart_choice
from agent.incident import Incident, IncidentIdError, Trigger

if TYPE_CHECKING:
    from agent.daemon.jobs import Job

OUTCOME_ORDER = ["queued", "queue_full", "resolved", "acknowledged", "duplicate", "not_for_host", "stale", "ignored"]


@dataclass
class Answer:
    """What the front door answers: an HTTP-style status, the outcome label (metrics, logs), a JSON body."""

    status: int
    outcome: str
    body: dict[str, Any]


class Refused(Exception):
    """A delivery refused before any decision (4xx); nothing was recorded."""

    def __init__(self, status: int, outcome: str, error: str, *, label: str = "",
                 headers: dict[str, str] | None = None, logged: dict[str, Any] | None = None):
        super().__init__(error)
        self.status, self.outcome, self.error, self.headers = status, outcome, error, headers
        self.label = label                      # the tracker label for metrics ("unknown" for an unknown one)
        self.logged = logged or {}              # extra log fields


@dataclass
class Delivery:
    """A verified, parsed webhook delivery."""

    tracker: str
    events: list[wh.Event]
    delivery: str = ""                          # the tracker's delivery ID ("" when it has none)
    payload_sha256: str = ""                    # of the raw body, recorded as the trigger's evidence


class Jobs(Protocol):
    def submit(self, kind: str, key: str, request: CaptureRequest) -> Job | None: ...
    def qsize(self) -> int: ...


class Receiver:
    """Authenticate and parse webhook deliveries (see the module docstring)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.secrets: dict[str, list[str]] = {}
        for tracker in self.enabled():
            self.secrets[tracker] = read_secret(cfg.webhook(tracker))
            if not self.secrets[tracker]:
                raise ConfigError(f"[webhooks.{tracker}] is enabled but has no secret or secret_file")

    def enabled(self) -> list[str]:
        return [t for t in wh.TRACKERS if self.cfg.webhook(t)["enabled"]]

    def route(self, tracker: str, method: str) -> Refused | None:
        if tracker not in wh.TRACKERS:
            return Refused(404, "unknown_tracker", f"unknown tracker; known: {', '.join(wh.TRACKERS)}",
                           label="unknown")
        if method != "POST":
            return Refused(405, "method_not_allowed", "use POST", label=tracker, headers={"Allow": "POST"})
        if not self.cfg.webhook(tracker)["enabled"]:
            return Refused(404, "unknown_tracker", f"tracker {tracker} is not enabled on this host", label=tracker)
        return None

    def secrets_for(self, tracker: str) -> list[str]:
        # re-read secret files so a rotated secret works without a restart
        opts = self.cfg.webhook(tracker)
        if opts.get("secret_file"):
            try:
                self.secrets[tracker] = read_secret(opts)
            except ConfigError as exc:
                kv(logging.ERROR, "secret", str(exc), tracker=tracker)
        return self.secrets.get(tracker, [])

    def receive(self, tracker: str, raw: bytes, headers: Mapping[str, str]) -> Delivery:
        opts = self.cfg.webhook(tracker)
        mod = wh.load(tracker)
        try:
            mod.verify(raw, headers, self.secrets_for(tracker), opts=opts)
        except wh.WebhookError as exc:
            raise Refused(exc.status, exc.outcome, exc.reason, label=tracker, logged={"reason": exc.reason}) from None
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise Refused(400, "malformed", "body is not valid JSON", label=tracker) from None
        try:
            events = mod.parse(body, opts=opts)
        except wh.WebhookError as exc:
            raise Refused(exc.status, exc.outcome, exc.reason, label=tracker, logged={"reason": exc.reason}) from None
        return Delivery(tracker, events, mod.delivery_id(headers, body), hashlib.sha256(raw).hexdigest())


class Intake:
    """Decide with the daemon's state and queue (see the module docstring)."""

    def __init__(self, cfg: Config, state: State, identity: targeting.Identity, jobs: Jobs):
        self.cfg, self.state, self.identity, self.jobs = cfg, state, identity, jobs

    def save(self) -> None:
        try:
            self.state.save()
        except OSError as exc:
            kv(logging.ERROR, "state", f"cannot save the daemon state: {exc}")

    # -- webhooks -------------------------------------------------------------
    def decide(self, d: Delivery) -> Answer:
        now = time.time()
        dkey = f"{d.tracker}/{d.delivery}" if d.delivery else ""
        if dkey and dkey in self.state.deliveries:
            seen = self.state.deliveries[dkey]
            return Answer(200, "duplicate", {"status": "duplicate", "delivery": d.delivery,
                                             "first_outcome": seen.get("outcome", "")})
        if any(e.action == wh.PING for e in d.events):
            if dkey:
                self.state.deliveries[dkey] = {"at": now, "outcome": "ping"}
            return Answer(200, "ping", {"status": "ping"})
        by_incident: OrderedDict[str, list[wh.Event]] = OrderedDict()
        ignored: list[dict[str, str]] = []
        for e in d.events:
            if not e.incident_id:
                ignored.append({"kind": e.kind, "reason": e.reason or "no incident"})
                continue
            by_incident.setdefault(e.incident_id, []).append(e)
        results = [self._incident(d.tracker, inc, evs, f"{d.tracker}:{d.delivery or '-'}", d.payload_sha256, now)
                   for inc, evs in by_incident.items()]
        outcome = min([r["outcome"] for r in results] or ["ignored"], key=OUTCOME_ORDER.index)
        if dkey and outcome != "queue_full":
            self.state.deliveries[dkey] = {"at": now, "outcome": outcome}
        self.save()
        body: dict[str, Any] = {"status": outcome, "incidents": results}
        if ignored:
            body["ignored"] = ignored
        return Answer({"queued": 202, "queue_full": 503}.get(outcome, 200), outcome, body)

    def incident(self, source: str, inc_id: str, evs: list[wh.Event], *, by: str, payload_sha256: str = "",
                 now: float | None = None) -> dict[str, Any]:
        """One incident's events, decided and saved (the fleet watcher's entry point)."""
        res = self._incident(source, inc_id, evs, by, payload_sha256, time.time() if now is None else now)
        self.save()
        return res

    def _incident(self, source: str, inc_id: str, evs: list[wh.Event], by: str, payload_sha256: str,
                  now: float) -> dict[str, Any]:
        key = State.key(source, inc_id)
        rec = self.state.incidents.get(key)
        res: dict[str, Any] = {"incident": inc_id}
        triggers = [e for e in evs if e.action == wh.TRIGGER]
        if triggers:
            return self._trigger(source, inc_id, key, rec, triggers, by, payload_sha256, now)
        if any(e.action == wh.RESOLVE for e in evs) or (
                self.cfg["daemon.close_on_ack"] and any(e.action == wh.ACK for e in evs)):
            if rec and rec.get("status") == "open":
                rec["status"], rec["resolved_at"], rec["updated_at"] = "resolved", now, now
                return {**res, "outcome": "resolved"}
            return {**res, "outcome": "ignored", "reason": "not an open incident here"}
        if any(e.action == wh.ACK for e in evs):
            if rec and rec.get("status") == "open":
                rec["acknowledged_at"] = rec["updated_at"] = now
                return {**res, "outcome": "acknowledged"}
            return {**res, "outcome": "ignored", "reason": "not an open incident here"}
        return {**res, "outcome": "ignored", "reason": "; ".join(sorted({e.reason for e in evs if e.reason}))}

    def _trigger(self, source: str, inc_id: str, key: str, rec: dict[str, Any] | None, triggers: list[wh.Event],
                 by: str, payload_sha256: str, now: float) -> dict[str, Any]:
        res: dict[str, Any] = {"incident": inc_id}
        max_age = float(self.cfg["daemon.dedupe_hours"]) * 3600
        fresh = [e for e in triggers if e.occurred_at is None or now - e.occurred_at <= max_age]
        if not fresh:
            return {**res, "outcome": "stale", "reason": "event older than daemon.dedupe_hours"}
        concerned = [(e, why) for e in fresh if (why := targeting.concerns(e, self.identity))]
        if not concerned:
            return {**res, "outcome": "not_for_host",
                    "reason": "no host, service or label of this incident matches this host"}
        e, why = concerned[0]
        force, reopen = any(x.force for x, _ in concerned), any(x.reopen for x, _ in concerned)
        if rec is None:
            rec = self.state.incidents[key] = {
                "id": inc_id, "source": source, "status": "open", "opened_at": now, "capture": "",
                "captures": [], "deliveries": 0}
        for f in ("title", "url", "severity"):
            if getattr(e, f):
                rec[f] = getattr(e, f)
        note_start(rec, [x.started_at for x, _ in concerned])        # the history window's T0
        rec["services"] = sorted({s for x, _ in concerned for s in x.services})
        rec["hosts"] = sorted({h for x, _ in concerned for h in x.hosts})
        rec["concerns"], rec["updated_at"], rec["deliveries"] = why, now, int(rec.get("deliveries", 0)) + 1
        was_resolved = rec.get("status") == "resolved"
        if was_resolved and not (reopen or force):
            return {**res, "outcome": "duplicate", "reason": "this incident was resolved here already"}
        rec["status"], rec["triggered_at"] = "open", now
        rec.pop("resolved_at", None)
        need = force or (was_resolved and reopen) or rec.get("capture") in ("", "failed", None)
        if not need:
            return {**res, "outcome": "duplicate", "reason": f"capture {rec.get('capture')} for this incident",
                    "job": rec.get("job", "")}
        request = CaptureRequest(
            incident=Incident.from_record(inc_id, source, rec),
            trigger=Trigger(kind="webhook", reason=f"{source} {e.kind}; concerns this host: {why}", by=by,
                            at="", payload_sha256=payload_sha256),
            profile=self.cfg["daemon.profile"], collectors=list(self.cfg["daemon.collectors"]))
        job = self.jobs.submit("webhook", key, request)
        if job is None:
            return {**res, "outcome": "queue_full", "reason": "capture queue full"}
        rec["capture"], rec["job"], rec["job_request"] = "queued", job.id, request.to_json()
        return {**res, "outcome": "queued", "job": job.id, "concerns": why}

    # -- local API --------------------------------------------------------------
    def snapshot(self, body: dict[str, Any]) -> tuple["Job | None", Answer]:
        reason = str(body.get("reason") or "")
        incident, source, title = body.get("incident"), "manual", str(body.get("title") or "")
        if not incident:
            if reason != "pre-restart":
                return None, _error(400, "incident is required (optional only with reason pre-restart)")
            found = pre_restart_choice(self.cfg, self.state, str(body.get("unit") or ""))
            if found is None:
                return None, Answer(200, "skipped", {
                    "status": "skipped", "reason": "no incident open for this host "
                                                   f"(daemon.pre_restart = {self.cfg['daemon.pre_restart']})"})
            incident, source, title = found["id"], found.get("source", "manual"), found.get("title", title)
        kind = "pre-restart" if reason == "pre-restart" else "daemon-api"
        if kind == "pre-restart" and not body.get("time_budget_s"):
            body = {**body, "time_budget_s": float(self.cfg["daemon.pre_restart_budget_s"])}
        try:
            request = CaptureRequest.from_api(
                body, incident=Incident(id=str(incident), source=source, title=title),
                trigger=Trigger(kind=kind, reason=reason, by=str(body.get("by") or "local API"), at=""),
                default_profile=self.cfg["capture.profile"])
        except (IncidentIdError, RequestError) as exc:
            return None, _error(getattr(exc, "status", 400), str(exc))
        incident = request.incident.id
        if not request.collectors:
            request.collectors = list(self.cfg["daemon.collectors"])
        if not body.get("force"):
            done = [r for r in self.state.incidents.values() if r.get("id") == incident and r.get("capture") in (
                "queued", "running", "done")]
            if done:
                return None, Answer(200, "duplicate", {
                    "status": "duplicate", "incident": incident,
                    "reason": f"capture {done[0]['capture']} for this incident (force to capture again)"})
        job = self.jobs.submit("api", key := State.key(source, incident), request)
        if job is None:
            return None, Answer(503, "queue_full", {"status": "queue_full", "error": "capture queue full"})
        now = time.time()
        # remembered for dedupe; a manual capture does not open an incident (status "manual")
        rec = self.state.incidents.setdefault(key, {"id": incident, "source": source, "status": "manual",
                                                    "opened_at": now, "captures": []})
        rec["capture"], rec["job"], rec["updated_at"], rec["job_request"] = "queued", job.id, now, request.to_json()
        self.save()
        return job, Answer(202, "queued", {"status": "queued", "job": job.id, "incident": incident,
                                           "queue_position": self.jobs.qsize()})


def _error(status: int, message: str) -> Answer:
    return Answer(status, "error", {"status": "error", "error": message})
