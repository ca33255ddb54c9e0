"""Run collectors: each item in its own child process and session, under a deadline.

Where it sits: after ``plan``, before ``bundle``. The runner forks one child per
plan item (a collector, or a collector for one target). The child starts its own
session, lowers its CPU and I/O priority, runs ``collect(ctx)`` and writes every
fact to a journal file as it goes. The parent waits on pidfds; at an item's
deadline it kills that child's whole session (the collector and every helper it
started, never anything else: targets are never in our sessions) and records
``timeout`` with whatever files were written.

Pausing collectors (``pauses_target``) are serialised per target and bracketed by
the pause ledger (``agent.pauses``), so a target stopped by a dump is running
again afterwards, even if goldenhour itself is killed. Stopped by SIGTERM or
Ctrl-C while collectors run, the runner first stops them and releases their
ledger entries (resuming what they paused, closing a Node inspector they
opened), then exits as it would have. What a collector measured of its pause
(``notes["pause"]``) is kept in the result's ``pause`` with the ledger's check.
"""
from __future__ import annotations

import json
import logging
import os
import select
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from agent import pauses, procfs, scratch
from agent import reserve as reserve_mod
from agent.collector import (FAILED, INTERRUPTED, OK, PARTIAL, SKIPPED, TARGET_EXITED, TIMEOUT, Collector, Context,
                             Limits, ReserveReached, Skip, TargetGone, die_with_parent)
from agent.reserve import QuietFileHandler
from agent.incident import iso, utcnow
from agent.priority import set_autogroup_nice, set_low_priority
from agent.targets import Target

log = logging.getLogger("goldenhour.runner")
KILL_GRACE_S = 0.5


@dataclass
class Item:
    collector: Collector
    target: Target | None = None
    timeout_s: float = 10.0
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.collector.name if self.target is None else f"{self.collector.name}/{self.target.pid}"

    @property
    def rel(self) -> str:
        """The item's folder inside the bundle."""
        return f"collectors/{self.key}"


@dataclass
class ItemResult:
    name: str
    key: str
    status: str
    reason: str = ""
    target: dict[str, Any] | None = None
    started_at: str = ""
    duration_s: float = 0.0
    timeout_s: float = 0.0
    commands: list[dict[str, Any]] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)   # truncated / unreadable / partial
    pause: dict[str, Any] | None = None
    out: Path | None = None
    files: list[dict[str, Any]] = field(default_factory=list)    # filled by the bundler

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("out",)}
        return {k: v for k, v in d.items() if k in ("status", "files") or v not in (None, "", [], {})}


@dataclass
class _Running:
    item: Item
    pid: int
    pidfd: int
    t0: float
    deadline: float
    started_at: str
    journal: Path
    ledger: Path | None


def _child(item: Item, out: Path, journal: Path, deadline: float, capture: dict[str, Any],
           limits: Limits, priority: tuple[int, bool]) -> None:
    """Runs in the forked child; never returns."""
    code = 0
    try:
        parent = os.getppid()
        os.setsid()
        die_with_parent()
        if os.getppid() != parent:      # goldenhour died before the line above took effect
            os._exit(4)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        set_low_priority(*priority)
        set_autogroup_nice(priority[0])
        for lg in (logging.getLogger(), logging.getLogger("goldenhour")):
            for h in list(lg.handlers):
                lg.removeHandler(h)
        # Drop every descriptor inherited from goldenhour (sockets, pidfds, log files):
        # a collector must not show up as an owner of someone else's sockets or files.
        os.closerange(3, min(os.sysconf("SC_OPEN_MAX"), 65536))
        reserve = int(capture.get("reserve_bytes") or 0)
        if reserve:                 # no file this collector (or a helper of it) writes may cross the reserve
            # nor take more than the budget has left (for a collector writing other than through its Context);
            # its journal, a few KiB, stays writable: evidence is held back by the budget first
            room = reserve_mod.room(out, reserve)
            if capture.get("space_budget"):
                room = min(room, reserve_mod.Budget(capture["space_budget"]).remaining())
            reserve_mod.limit_file_size(max(room, 256 * 1024))
        fh = QuietFileHandler(journal.with_suffix(".log"), reserve)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(fh)
        logging.getLogger().setLevel(logging.INFO)
        ctx = Context(name=item.collector.name, out=out, journal=journal, deadline=deadline,
                      target=item.target, options=item.options, capture=capture, limits=limits)
        status, reason = OK, ""
        try:
            if item.target is not None:
                item.target.ensure_alive()
            item.collector.collect(ctx)
            if item.target is not None and not item.target.alive():
                status, reason = TARGET_EXITED, f"process {item.target.pid} exited during collection"
        except Skip as exc:
            status, reason = SKIPPED, str(exc) or "skipped"
        except TargetGone as exc:
            status, reason = TARGET_EXITED, str(exc)
        except ReserveReached as exc:
            status, reason = PARTIAL, str(exc)
        except OSError as exc:
            if not reserve_mod.is_full(exc):
                status, reason = FAILED, f"{type(exc).__name__}: {exc}"
                ctx.log.error("collector failed\n%s", traceback.format_exc())
            else:
                status, reason = PARTIAL, f"stopped at the store's free-space reserve ({exc.strerror})"
        except BaseException as exc:  # noqa: BLE001 - every failure reaches the manifest
            status, reason = FAILED, f"{type(exc).__name__}: {exc}"
            ctx.log.error("collector failed\n%s", traceback.format_exc())
        ctx._record("end", status=status, reason=reason)
    except BaseException:  # noqa: BLE001
        code = 3
        try:
            with open(journal.with_suffix(".log"), "a") as fh2:
                fh2.write(traceback.format_exc())
        except OSError:
            pass
    finally:
        os._exit(code)


def session_members(sid: int) -> list[int]:
    """PIDs whose session id is ``sid`` (a collector child and all its helpers)."""
    found = []
    for pid in procfs.pids():
        try:
            if procfs.stat(pid).session == sid:
                found.append(pid)
        except procfs.ProcError:
            continue     # exited meanwhile
    return found


def kill_session(sid: int, grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM, then SIGKILL, every process of one of our collector sessions."""
    members = session_members(sid)
    for pid in members:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    end = time.monotonic() + grace_s
    while time.monotonic() < end and any(pid_alive(p) for p in members if p != sid):
        time.sleep(0.02)
    for pid in session_members(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return procfs.stat(pid).state != "Z"
    except procfs.ProcError:
        return False


def _read_journal(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    recs = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            recs.append(json.loads(line))
        except ValueError:
            continue   # a line cut by a kill mid-write
    return recs


def _result_from(run: _Running, killed_reason: str | None, exit_status: int | None) -> ItemResult:
    item = run.item
    res = ItemResult(name=item.collector.name, key=item.key, status=FAILED,
                     target=item.target.to_json() if item.target else None,
                     started_at=run.started_at, duration_s=round(time.monotonic() - run.t0, 4),
                     timeout_s=item.timeout_s, out=None)
    _apply_journal(res, _read_journal(run.journal), killed_reason,
                   f"collector process died (wait status {exit_status})")
    return res


def result_from_journal(journal: Path) -> ItemResult | None:
    """Rebuild an item's result from its journal alone (salvaging an interrupted capture)."""
    recs = _read_journal(journal)
    start = next((r for r in recs if r.get("kind") == "start"), None)
    if start is None:
        return None
    res = ItemResult(name=start["name"], key=start["key"], status=INTERRUPTED, target=start.get("target"),
                     started_at=start.get("started_at", ""), timeout_s=start.get("timeout_s", 0.0))
    _apply_journal(res, recs, None, "the capturing goldenhour process died before this collector ended")
    if res.status == FAILED and res.reason.startswith("the capturing"):
        res.status = INTERRUPTED
    return res


def _apply_journal(res: ItemResult, recs: list[dict[str, Any]], killed_reason: str | None,
                   no_end_reason: str) -> None:
    end = None
    for r in recs:
        r = dict(r)
        kind = r.pop("kind", "")
        if kind == "command":
            res.commands.append(r)
        elif kind == "note":
            res.notes.update(r.get("facts", {}))
        elif kind == "end":
            end = r
        elif kind in ("truncated", "unreadable", "partial"):
            res.events.append({"event": kind, **r})
    if killed_reason is not None:
        res.status, res.reason = TIMEOUT, killed_reason
    elif end is not None:
        res.status, res.reason = end["status"], end.get("reason", "")
        if res.status == OK and any(e["event"] == "partial" for e in res.events):
            res.status = PARTIAL
            res.reason = "; ".join(e.get("reason", "") for e in res.events if e["event"] == "partial")
    else:
        res.reason = no_end_reason


def run_items(items: list[Item], staging: Path, *, deadline: float, capture: dict[str, Any],
              limits: Limits | None = None, max_parallel: int = 6, priority: tuple[int, bool] = (10, True),
              ledger_dir: Path | None = None,
              on_event: Callable[[str, Item, ItemResult | None], None] | None = None) -> list[ItemResult]:
    """Run ``items`` (already ordered, most volatile first) and return one result each.

    ``deadline`` is the capture's overall monotonic deadline. ``on_event`` is called
    with ("start", item, None) and ("end", item, result) for progress display.
    """
    limits = limits or Limits()
    if ledger_dir is not None:   # collectors that open something on a target (a Node inspector) record it there
        capture = {**capture, "ledger_dir": str(ledger_dir)}
    jdir = staging / ".journal"
    jdir.mkdir(parents=True, exist_ok=True)
    pending = list(items)
    running: dict[int, _Running] = {}      # pidfd -> run
    results: dict[str, ItemResult] = {}
    paused_targets: set[int] = set()       # target pids with a pausing item running
    emit = on_event or (lambda *a: None)

    def start(item: Item) -> None:
        now = time.monotonic()
        out = staging / item.rel
        out.mkdir(parents=True, exist_ok=True)
        journal = jdir / (item.key.replace("/", "_") + ".jsonl")
        item_deadline = min(now + item.timeout_s, deadline)
        ledger = None
        if item.collector.pauses_target and item.target is not None and ledger_dir is not None:
            ledger = pauses.record(ledger_dir, item.target, item.collector.name)
        started_at = iso(utcnow())
        with open(journal, "a", encoding="utf-8") as fh:   # lets a later run salvage this item
            fh.write(json.dumps({"kind": "start", "key": item.key, "name": item.collector.name,
                                 "target": item.target.to_json() if item.target else None,
                                 "timeout_s": item.timeout_s, "started_at": started_at}) + "\n")
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            _child(item, out, journal, item_deadline, capture, limits, priority)
        pidfd = os.pidfd_open(pid)
        running[pidfd] = _Running(item, pid, pidfd, now, item_deadline, started_at, journal, ledger)
        if item.collector.pauses_target and item.target is not None:
            paused_targets.add(item.target.pid)
        emit("start", item, None)

    def finish(run: _Running, killed_reason: str | None) -> None:
        try:
            _, wstatus = os.waitpid(run.pid, 0)
        except ChildProcessError:
            wstatus = None
        os.close(run.pidfd)
        res = _result_from(run, killed_reason, wstatus)
        res.out = staging / run.item.rel
        if run.item.collector.pauses_target and run.item.target is not None:
            paused_targets.discard(run.item.target.pid)
            if run.ledger is not None:
                res.pause = pauses.release(run.ledger)
            if isinstance(res.notes.get("pause"), dict):     # what the collector measured
                res.pause = {**(res.pause or {}), "measured": res.notes["pause"]}
        results[run.item.key] = res
        for gone in scratch.sweep(capture.get("scratch_dir")):    # what a killed collector left outside staging
            res.events.append({"event": "scratch_removed", **gone})
        emit("end", run.item, res)

    def abandon(why: str) -> None:
        """On our way out (SIGTERM, Ctrl-C, an error): stop every running collector and resume
        the targets they paused, so nothing stays stopped or open behind us."""
        for fd, run in list(running.items()):
            kill_session(run.pid)
            finish(running.pop(fd), why)
            results[run.item.key].status = INTERRUPTED

    reserve = int(capture.get("reserve_bytes") or 0)
    if reserve:       # the room above the collectors' reserve, shared by every collector (agent/reserve.py)
        budget = staging / ".space"
        reserve_mod.Budget.create(budget, reserve_mod.room(staging, reserve))
        capture = {**capture, "space_budget": str(budget)}

    def over_reserve() -> str | None:
        """Why every running collector must stop now: the store's reserve crossed all the same."""
        if reserve and reserve_mod.room(staging, reserve) < 0:
            return ("stopped: the store reached its free-space reserve "
                    f"({reserve_mod.free_bytes(staging) // 2**20} MiB free); what was written is kept")
        return None

    on_term = _install_term_handler(abandon)
    try:
        _loop(pending, running, results, paused_targets, start, finish, deadline, max_parallel, emit, over_reserve)
    except BaseException:
        abandon("interrupted: goldenhour was stopped; the collector was stopped with it")
        raise
    finally:
        _restore_term_handler(on_term)
    return [results[i.key] for i in items if i.key in results]


def _install_term_handler(abandon: Callable[[str], None]) -> Any:
    """SIGTERM while collectors run: clean up (resume paused targets), then die of SIGTERM as before,
    so the staged evidence is salvaged by the next run. Only where SIGTERM still has its default action."""
    import threading
    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return None

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            abandon("interrupted: goldenhour received SIGTERM")
        finally:
            os.kill(os.getpid(), signal.SIGTERM)
    signal.signal(signal.SIGTERM, handler)
    return handler


def _restore_term_handler(handler: Any) -> None:
    if handler is not None and signal.getsignal(signal.SIGTERM) is handler:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _loop(pending: list[Item], running: dict[int, _Running], results: dict[str, ItemResult],
          paused_targets: set[int], start: Callable[[Item], None], finish: Callable[[_Running, str | None], None],
          deadline: float, max_parallel: int, emit: Callable[..., None],
          over_reserve: Callable[[], str | None] = lambda: None) -> None:
    while pending or running:
        full = over_reserve()
        if full:                         # crossed all the same (writers in parallel): stop, start nothing more
            for fd, run in list(running.items()):
                kill_session(run.pid)
                finish(running.pop(fd), full)
                results[run.item.key].status = PARTIAL
            for item in pending:
                results[item.key] = ItemResult(
                    name=item.collector.name, key=item.key, status=SKIPPED, timeout_s=item.timeout_s,
                    reason="not started: the store reached its free-space reserve",
                    target=item.target.to_json() if item.target else None)
                emit("end", item, results[item.key])
            pending.clear()
            break
        now = time.monotonic()
        # start what may start
        while pending and len(running) < max_parallel:
            if now >= deadline:
                for item in pending:
                    res = ItemResult(name=item.collector.name, key=item.key, status=SKIPPED,
                                     reason="capture time budget exhausted before it could start",
                                     target=item.target.to_json() if item.target else None,
                                     timeout_s=item.timeout_s)
                    results[item.key] = res
                    emit("end", item, res)
                pending.clear()
                break
            idx = next((i for i, it in enumerate(pending)
                        if not (it.collector.pauses_target and it.target is not None
                                and it.target.pid in paused_targets)), None)
            if idx is None:
                break
            start(pending.pop(idx))
        if not running:
            continue
        wait = max(0.0, min(r.deadline for r in running.values()) - time.monotonic())
        ready, _, _ = select.select(list(running), [], [], min(wait, 0.25) + 0.001)
        if not ready:
            emit("tick", None, None)    # lets a live display show elapsed times
        for fd in ready:
            finish(running.pop(fd), None)
        now = time.monotonic()
        for fd, run in list(running.items()):
            if now >= run.deadline:
                kill_session(run.pid)
                why = (f"exceeded its {run.item.timeout_s:g} s budget"
                       if run.deadline < deadline else "capture time budget exhausted")
                finish(running.pop(fd), f"{why}; stopped (only goldenhour's own processes were killed)")


def run_one(name: str, staging: Path, *, target: Target | None = None, options: dict[str, Any] | None = None,
            capture: dict[str, Any] | None = None, timeout_s: float | None = None,
            ledger_dir: Path | None = None) -> ItemResult:
    """Run a single collector by name through the real runner (used by tests and tools)."""
    from agent.registry import collectors
    c = collectors()[name]
    item = Item(c, target, timeout_s or c.timeout_s, options or {})
    return run_items([item], staging, deadline=time.monotonic() + item.timeout_s + 1,
                     capture=capture or {}, priority=(0, False),
                     ledger_dir=ledger_dir or staging / ".ledger")[0]
