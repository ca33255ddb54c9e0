"""The capture pipeline, top to bottom: trigger -> plan -> run -> bundle -> store.

Every trigger (``goldenhour snapshot``, a webhook via the daemon, the pre-restart
hook) ends up in ``capture(cfg, request)``:

1. validate the incident ID, open the store, resume any target a previous run
   left stopped (pause ledger), remove the scratch files of a killed run (scratch
   ledger), check the free-space reserve;
2. resolve target processes and make the plan (profile, selection, budgets);
3. run the collectors in parallel child processes into a staging folder;
4. pack the staging folder into one bundle, hashing every file while streaming,
   with ``manifest.json`` and ``SHA256SUMS``; publish it by atomic rename;
5. return the result. Uploading is a separate step (``agent.upload``) so a
   capture is always complete on local disk first.
"""
from __future__ import annotations

import logging
import os
import platform
import secrets
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from agent import __version__, pauses, plan as planner, priority, procfs, registry, runner, scratch
from agent import recorder as recorder_mod, targets as targets_mod
from agent.bundle import EXTENSIONS, DiskFullError, manifest_sidecar, pack, partial_path
from agent.collector import FAILED, OK, PARTIAL, SKIPPED, TARGET_EXITED, TIMEOUT, Limits, read_text
from agent.config import Config
from agent.errors import GoldenhourError
from agent.incident import Incident, Trigger, iso, safe_component, utcnow
from agent.manifest import Clocks, CollectorEntry, FileEntry, Host, Manifest, Summary
from agent.redact import RULES, Redactor, redact_log
from agent.reserve import QuietFileHandler, free_bytes, headroom, is_full, reserve_for, room
from agent.store import Store

log = logging.getLogger("goldenhour.capture")


@dataclass
class CaptureRequest:
    incident: Incident
    trigger: Trigger = field(default_factory=Trigger)
    profile: str = "standard"
    only: list[str] = field(default_factory=list)
    skip: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    processes: list[str] = field(default_factory=list)
    units: list[str] = field(default_factory=list)
    log_paths: list[str] = field(default_factory=list)
    time_budget_s: float | None = None
    probe_seconds: float | None = None
    heap: bool = False
    netns: str | None = None        # network namespace file for the network collectors (sockets, conntrack)


@dataclass
class CaptureResult:
    bundle: Path
    sha256: str
    size: int
    incident: str
    manifest: dict[str, Any]

    @property
    def statuses(self) -> dict[str, str]:
        return self.manifest["summary"]["collectors"]


def aggregate_status(statuses: list[str]) -> str:
    """One status per collector name from its per-target results."""
    s = set(statuses)
    if len(s) == 1:
        return statuses[0]
    if s <= {OK, PARTIAL, SKIPPED, TARGET_EXITED} and s & {OK, PARTIAL}:
        return PARTIAL if PARTIAL in s or s - {OK, SKIPPED} else OK
    if s & {OK, PARTIAL}:
        return PARTIAL
    for worst in (TIMEOUT, FAILED, TARGET_EXITED, SKIPPED):
        if worst in s:
            return worst
    return FAILED


def host_facts(cfg: Config) -> dict[str, Any]:
    u = os.uname()
    osrel = {}
    for line in (read_text("/etc/os-release", "") or "").splitlines():
        k, _, v = line.partition("=")
        osrel[k] = v.strip('"')
    mem = 0
    for line in (read_text("/proc/meminfo", "") or "").splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) * 1024
    uptime = float((read_text("/proc/uptime", "0 0") or "0").split()[0])
    addrs: list[str] = []
    try:
        import psutil
        for ifname, lst in psutil.net_if_addrs().items():
            for a in lst:
                if a.family in (socket.AF_INET, socket.AF_INET6) and ifname != "lo":
                    addrs.append(f"{ifname}:{a.address}")
    except Exception:  # noqa: BLE001
        pass
    return {
        "hostname": cfg.hostname, "nodename": u.nodename,
        "machine_id": (read_text("/etc/machine-id", "") or "").strip(),
        "boot_id": (read_text("/proc/sys/kernel/random/boot_id", "") or "").strip(),
        "kernel": u.release, "kernel_version": u.version, "arch": u.machine,
        "os": osrel.get("PRETTY_NAME", ""), "cpus": os.cpu_count(), "memory_bytes": mem,
        "uptime_s": uptime, "addresses": addrs, "tags": list(cfg["host.tags"]),
    }


def agent_facts() -> dict[str, Any]:
    rel = os.uname().release
    build = Path(f"/lib/modules/{rel}/build")
    headers: dict[str, Any] = {"path": str(build), "present": build.exists()}
    if build.is_symlink():
        target = os.readlink(build)
        headers["resolves_to"] = target
        headers["distribution_headers"] = f"/lib/modules/{rel}" not in target and "linux-headers" in target
    return {"name": "goldenhour", "version": __version__, "python": platform.python_version(),
            "pid": os.getpid(), "argv": Redactor().argv(list(sys.argv)), "uid": os.geteuid(),
            "kernel_headers": headers}


def bundle_name(incident: str, host: str, when) -> str:
    return f"{incident}_{safe_component(host)}_{when.strftime('%Y%m%dT%H%M%SZ')}_{secrets.token_hex(4)}"


def lower_priority(cfg: Config) -> None:
    """Run the capture process itself, not only its collectors, at ``capture.nice`` and idle I/O.

    Called by the processes that capture (``snapshot``, the daemon's ``daemon-job``), never by
    the daemon's listener: the CPU the capture takes comes out of the workload's share, and at
    nice 10 a saturated CPU gives it about a tenth (bench/README.md, "overhead").
    """
    priority.set_low_priority(cfg["capture.nice"], cfg["capture.ionice_idle"])
    priority.set_autogroup_nice(cfg["capture.nice"])    # only when it leads its session (daemon-job, cron)


def capture(cfg: Config, req: CaptureRequest,
            on_event: Callable[[str, Any, Any], None] | None = None) -> CaptureResult:
    """Run one capture and return the published bundle. Raises GoldenhourError if none was written."""
    started = utcnow()
    t0 = time.monotonic()
    incident = req.incident.id

    # 1. store, ledger sweep, free-space reserve
    store = Store(cfg.store_path).ensure()
    resumed = pauses.sweep(store.ledger)
    for gone in scratch.sweep(store.scratch):
        log.warning("removed a scratch file left by a killed goldenhour: %s", gone)
    reserve = reserve_for(store.root, cfg["store.reserve_bytes"], cfg["store.reserve_percent"])
    free = free_bytes(store.root)
    if free < reserve:
        raise GoldenhourError(
            f"store {store.root} has {free // 2**20} MiB free, under its reserve of {reserve // 2**20} MiB: "
            "nothing captured (free space or lower store.reserve_bytes/reserve_percent)")
    for gone in store.prune(cfg["store.keep_days"]):
        log.info("removed uploaded bundle older than store.keep_days: %s", gone.name)
    for saved in salvage(cfg, store):
        log.warning("published an interrupted capture: %s", saved.bundle)
    name = bundle_name(incident, cfg.hostname, started)
    staging = store.staging / name
    # collectors stop short of the reserve by the headroom packing needs (agent/reserve.py)
    collect_reserve = reserve + headroom(free - reserve)
    try:
        staging.mkdir(parents=True)
        (staging / ".owner").write_text(_owner_token(os.getpid()))
        (staging / ".request.json").write_text(_dumps({
            "incident": req.incident.to_json(), "trigger": req.trigger.to_json(), "profile": req.profile,
            "started_utc": iso(started)}))
        log_path = staging / "goldenhour.log"
        handler = QuietFileHandler(log_path, reserve)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if is_full(exc):
            raise GoldenhourError(f"capture stopped: no space left on the store ({exc.strerror}); "
                                  "no bundle written") from None
        raise GoldenhourError(f"store {store.root}: cannot stage a capture ({exc.strerror or exc})") from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root_logger = logging.getLogger("goldenhour")
    root_logger.addHandler(handler)
    root_logger.setLevel(logging.INFO)
    try:
        log.info("capture %s for incident %s (%s, trigger %s)", name, incident, req.profile, req.trigger.kind)
        if resumed:
            log.warning("resumed targets left stopped by an earlier run: %s", resumed)

        # 2. targets and plan
        budget = float(req.time_budget_s or cfg["capture.time_budget_s"])
        tlist, problems = targets_mod.resolve(
            req.pids, req.processes, req.units, cfg["targets.services"], cfg["targets.processes"],
            cfg["targets.auto_limit"])
        for p in problems:
            log.warning("target problem: %s", p)
        collectors, broken = registry.discover()
        for b in broken:
            log.error("collector module %s is broken: %s", b.name, b.error)
        plan = planner.make_plan(collectors, cfg, profile=req.profile, targets=tlist, only=req.only,
                                 skip=req.skip, heap=req.heap or bool(cfg["capture.heap"]), time_budget_s=budget)
        for s in plan.skipped:
            log.info("skipped %s: %s", s.key, s.reason)
            if on_event:
                on_event("end", s, s)
        capture_ctx = {
            "incident": incident, "profile": req.profile, "store": str(store.root),
            "targets": [t.to_json() for t in tlist],
            # the incident's systemd units (as targeted: --unit, else the configured services when nothing
            # was given): their cgroups are read even with no process left in them
            "units": list(dict.fromkeys(req.units if (req.pids or req.processes or req.units)
                                        else cfg["targets.services"])),
            # given (--pid/--process/--unit, configured services) rather than the automatic top processes
            "targets_explicit": any(t.reason != "top cpu/rss" for t in tlist),
            "log_paths": list(cfg["logs.paths"]) + list(req.log_paths),
            "explicit_log_paths": list(req.log_paths),
            "log_lines": cfg["logs.lines"], "journal": cfg["logs.journal"],
            "journal_since_s": cfg["logs.journal_since_s"], "log_redact": cfg["logs.redact"],
            "probe_seconds": float(req.probe_seconds or cfg["capture.probe_seconds"]),
            "heap": req.heap or req.profile == "full" or cfg["capture.heap"],
            "exclude_pids": [os.getpid()],
            "netns": req.netns,
            "scratch_dir": str(store.scratch),
            "reserve_bytes": collect_reserve,
            # the history collector: where the flight recorder is, and the incident's T0
            "recorder": recorder_mod.capture_settings(cfg),
            "incident_started_at": req.incident.started_at, "trigger_at": req.trigger.at,
            "started_utc": iso(started),
        }
        limits = Limits(max_file_bytes=cfg["store.max_file_bytes"])

        # 3. run
        results = runner.run_items(
            plan.items, staging, deadline=t0 + budget, capture=capture_ctx, limits=limits,
            max_parallel=cfg["capture.max_parallel"],
            priority=(cfg["capture.nice"], cfg["capture.ionice_idle"]),
            ledger_dir=store.ledger, on_event=on_event)
        results = sorted(results + plan.skipped, key=lambda r: (r.name, r.key))
        for r in results:
            log.info("%s: %s %s (%.3f s)", r.key, r.status, r.reason, r.duration_s)
        for r in results:  # a runner journal's .log is the collector's own log: keep it with the evidence
            jlog = staging / ".journal" / (r.key.replace("/", "_") + ".log")
            if jlog.exists() and jlog.stat().st_size and r.out is not None:
                _keep_log(jlog, r.out / "collector.log", cfg["logs.redact"], collect_reserve)
        collected_at = utcnow()

        # 4. bundle, published into the store
        return _publish(cfg, store, staging, name, req, results, started=started, t0=t0,
                        collected_at=collected_at, budget=budget, reserve=reserve, extra={
                            "targets": capture_ctx["targets"], "target_problems": problems,
                            "resumed_targets": resumed,
                            "broken_collectors": [{"name": b.name, "error": b.error} for b in broken]},
                        log_path=log_path, flush=handler.flush)
    except DiskFullError as exc:
        raise GoldenhourError(f"capture stopped: {exc}; no bundle written, nothing else touched") from None
    except OSError as exc:
        if not is_full(exc):
            raise
        raise GoldenhourError(f"capture stopped: no space left on the store ({exc.strerror}); no bundle "
                              "written, nothing else touched") from None
    finally:
        root_logger.removeHandler(handler)
        handler.close()
        shutil.rmtree(staging, ignore_errors=True)


def _publish(cfg: Config, store: Store, staging: Path, name: str, req: CaptureRequest,
             results: list[runner.ItemResult], *, started, t0: float, collected_at, budget: float,
             reserve: int, extra: dict[str, Any], log_path: Path | None,
             flush: Callable[[], None] = lambda: None) -> CaptureResult:
    """Pack ``staging`` into ``<store>/incidents/<incident>/<name>.tar.*`` with its manifest."""
    incident = req.incident.id
    ext = EXTENSIONS[cfg["capture.compression"]]
    dest_dir = store.incident_dir(incident)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / (name + ext)

    def manifest(files: dict[str, dict[str, Any]], left_out: list[dict[str, Any]]) -> dict[str, Any]:
        by_name: dict[str, list[str]] = {}
        for r in results:
            by_name.setdefault(r.name, []).append(r.status)
        ended = utcnow()
        host = host_facts(cfg)
        return Manifest(
            bundle=name, bundle_id=name.rsplit("_", 1)[-1], incident=req.incident, trigger=req.trigger,
            profile=req.profile, host=Host(**host), agent=agent_facts(),
            clocks=Clocks(start_utc=iso(started), collected_utc=iso(collected_at), end_utc=iso(ended),
                          duration_s=round(time.monotonic() - t0, 3), boot_time_utc=_boot_time_iso()),
            targets=extra.get("targets", []), target_problems=extra.get("target_problems", []),
            resumed_targets=extra.get("resumed_targets", []),
            collectors=[_entry(r, files) for r in results],
            broken_collectors=extra.get("broken_collectors", []),
            summary=Summary(collectors={n: aggregate_status(s) for n, s in sorted(by_name.items())},
                            files=len(files), bytes=sum(f["bytes"] for f in files.values())),
            limits={"time_budget_s": budget, "max_file_bytes": cfg["store.max_file_bytes"],
                    "max_bundle_bytes": cfg["store.max_bundle_bytes"], "reserve_bytes": reserve,
                    "max_parallel": cfg["capture.max_parallel"], "nice": cfg["capture.nice"],
                    "ionice_idle": cfg["capture.ionice_idle"]},
            left_out=left_out, redaction=_redaction(results), salvaged=extra.get("salvaged"),
        ).to_json()

    flush()
    built: list[dict[str, Any]] = []
    with scratch.recorded(store.scratch, partial_path(dest), "bundle being packed"):
        packed = pack(staging, name, dest, compression=cfg["capture.compression"],
                      level=cfg["capture.zstd_level"], max_bundle_bytes=cfg["store.max_bundle_bytes"],
                      reserve=reserve, log_file=log_path, sidecar=manifest_sidecar(dest),
                      log_filter=(lambda b: redact_log(b)[0]) if cfg["logs.redact"] else None,
                      manifest=lambda files, left_out: built.append(manifest(files, left_out)) or built[-1])
    return CaptureResult(packed.path, packed.sha256, packed.size, incident, built[-1])


def _entry(r: runner.ItemResult, files: dict[str, dict[str, Any]]) -> CollectorEntry:
    """The manifest's record of one collector run, with the files it wrote."""
    prefix = f"collectors/{r.key}/"
    return CollectorEntry(
        name=r.name, key=r.key, status=r.status, reason=r.reason, target=r.target, started_at=r.started_at,
        duration_s=r.duration_s, timeout_s=r.timeout_s, commands=r.commands, notes=r.notes, events=r.events,
        pause=r.pause, files=[FileEntry(rel, meta["bytes"], meta["sha256"]) for rel, meta in sorted(files.items())
                              if rel.startswith(prefix)])


def _owner_token(pid: int) -> str:
    try:
        return f"{pid} {procfs.start_time(pid)}"
    except procfs.ProcError:
        return f"{pid} 0"


def _owner_alive(token: str) -> bool:
    try:
        pid, start = (int(x) for x in token.split())
    except ValueError:
        return False
    try:
        return procfs.Identity(pid, start).check().state != "Z"
    except procfs.ProcError:
        return False


def salvage(cfg: Config, store: Store) -> list[CaptureResult]:
    """Publish captures whose goldenhour process died mid-way: their evidence is never lost.

    A staging folder whose owner (PID and start time) is gone is packed as a bundle
    like any other; collectors that had not ended are recorded as ``interrupted``.
    """
    import json
    saved: list[CaptureResult] = []
    if not store.staging.is_dir():
        return saved
    for d in sorted(store.staging.iterdir()):
        if not d.is_dir() or not (d / ".request.json").exists():
            continue
        try:
            if _owner_alive((d / ".owner").read_text()):
                continue
            data = json.loads((d / ".request.json").read_text())
            req = CaptureRequest(incident=Incident(**data["incident"]), trigger=Trigger(**data["trigger"]),
                                 profile=data.get("profile", ""))
        except (OSError, ValueError, TypeError) as exc:
            log.error("cannot salvage %s: %s", d, exc)
            continue
        (d / ".owner").write_text(_owner_token(os.getpid()))
        results = [r for r in (runner.result_from_journal(j) for j in sorted((d / ".journal").glob("*.jsonl")))
                   if r is not None]
        from datetime import datetime
        try:
            started = datetime.fromisoformat(data.get("started_utc", "").replace("Z", "+00:00"))
        except ValueError:
            started = utcnow()
        reserve = reserve_for(store.root, cfg["store.reserve_bytes"], cfg["store.reserve_percent"])
        try:
            saved.append(_publish(cfg, store, d, d.name, req, sorted(results, key=lambda r: r.key),
                                  started=started, t0=time.monotonic(), collected_at=utcnow(), budget=0.0,
                                  reserve=reserve, log_path=d / "goldenhour.log",
                                  extra={"salvaged": {"at": iso(utcnow()),
                                                      "why": "the capturing goldenhour process died"}}))
        except (DiskFullError, OSError) as exc:
            log.error("cannot salvage %s yet: %s", d, exc)
            continue
        shutil.rmtree(d, ignore_errors=True)
    return saved


def _keep_log(src: Path, dest: Path, redact: bool, reserve: int) -> None:
    """A log of goldenhour's own (a collector's) into the bundle, through the redactor unless logs are raw;
    left out when it would cross the reserve."""
    data = src.read_bytes()
    data = redact_log(data)[0] if redact else data
    if room(dest.parent, reserve) < len(data):
        log.warning("%s left out: the store reached its free-space reserve", dest.name)
        return
    try:
        dest.write_bytes(data)
    except OSError as exc:
        dest.unlink(missing_ok=True)
        if not is_full(exc):
            raise
        log.warning("%s left out: no space left on the store", dest.name)


def _dumps(obj: Any) -> str:
    import json
    return json.dumps(obj, indent=1, default=str) + "\n"


def _redaction(results: list[runner.ItemResult]) -> dict[str, Any]:
    """The manifest's ``redaction``: secrets replaced in command lines and environments (``count``, ``rules``)
    and, when logs were captured, in the logs (``logs``: ``count`` and ``files`` {bundle path: count},
    ``rules``; or ``raw`` with ``logs.redact = false``)."""
    total = 0
    out: dict[str, Any] = {"count": 0, "rules": RULES}
    for r in results:
        red = r.notes.get("redaction") if r.notes else None
        if not isinstance(red, dict):
            continue
        if r.name == "logs":
            out["logs"] = red
        total += int(red.get("count", 0))
    out["count"] = total
    return out


def _boot_time_iso() -> str:
    from datetime import datetime, timezone
    for line in (read_text("/proc/stat", "") or "").splitlines():
        if line.startswith("btime "):
            return iso(datetime.fromtimestamp(int(line.split()[1]), timezone.utc))
    return ""
