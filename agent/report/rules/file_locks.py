"""File locks a target waits for, and who holds them.

Triggers (``collectors/process/<pid>/process.json`` ``locks``, from ``/proc/locks``, and the
threads' system calls and last-run times):
- a target's threads queue for a file lock (``flock``, POSIX ``fcntl``, OFD) that another
  process holds: critical when they have waited 1 s or more (how long: the longest time
  since a waiting thread last ran, from the scheduler; or a ``flock``/``fcntl`` call still
  blocked at the end of the eBPF probe window) or when two or more threads queue, else a
  warning. The finding names the file, the holder (pid, command, what its threads are
  doing: the holder's own system calls and wait channels) and the other waiters;
- a target holds a lock other processes wait for — warning.
Evidence: ``process.json`` ``locks`` and the waiting threads (with ``threads.json``'s
``waits_before_dump``: a dump's ptrace stop restarts the calls it interrupts, so what the
threads waited in before it counts); ``syscalls.json`` ``in_flight``.
"""
from __future__ import annotations

from typing import Any, Iterator

from agent.report.model import CRITICAL, WARNING, Evidence, Finding
from agent.report.rules import Rule
from agent.report.rules._util import join_names, num, plural, target_label

LOCK_CALLS = frozenset(("flock", "fcntl", "fcntl64"))
CRIT_WAIT_S = 1.0
SYSCALLS = "collectors/syscalls/syscalls.json"


def _doing(holder: dict[str, Any]) -> str:
    """What the holder's threads are doing, in words."""
    threads = holder.get("threads") or []
    if not threads:
        return f"state {holder.get('state_name') or holder.get('state') or '?'}"
    parts = []
    for th in threads[:3]:
        call = (th.get("syscall") or {}).get("name")
        what = f"in {call}()" if call else ("running" if th.get("state") == "R" else f"state {th.get('state')}")
        if th.get("wchan"):
            what += f" ({th['wchan']})"
        if num(th.get("last_ran_s_ago")) is not None and th.get("state") != "R":
            what += f", idle {th['last_ran_s_ago']:.1f} s"
        parts.append(f"{th.get('name')} {what}")
    more = len(threads) - 3
    return "; ".join(parts) + (f"; and {more} more threads" if more > 0 else "")


def _before_dump(b, pid: int) -> dict[str, dict[str, Any]]:
    data = b.json(f"collectors/threads/{pid}/threads.json")
    w = data.get("waits_before_dump") if isinstance(data, dict) else None
    return w if isinstance(w, dict) else {}


def _in_flight(b, pid: int) -> list[dict[str, Any]]:
    data = b.json(SYSCALLS)
    if not isinstance(data, dict):
        return []
    return [r for r in data.get("in_flight") or [] if isinstance(r, dict) and r.get("pid") == pid
            and str(r.get("syscall") or r.get("name")) in LOCK_CALLS]


def evaluate(b) -> Iterator[Finding]:
    for rel in b.files("collectors/process/*/process.json"):
        p = b.json(rel)
        locks = p.get("locks") if isinstance(p, dict) else None
        if not isinstance(locks, dict):
            continue
        pid = int(rel.split("/")[2])
        who = target_label(b, pid, str(p.get("comm") or ""))
        threads = [t for t in p.get("threads") or [] if isinstance(t, dict)]
        before = _before_dump(b, pid)
        for t in threads:                   # the dump's ptrace stop restarts the calls: what was seen before it
            w = before.get(str(t.get("tid")))
            if w and (w.get("syscall") or {}).get("name") in LOCK_CALLS:
                t.update(syscall=w["syscall"], last_ran_s_ago=max(num(t.get("last_ran_s_ago")) or 0.0,
                                                                  num(w.get("last_ran_s_ago")) or 0.0))
        lockers = [t for t in threads if (t.get("syscall") or {}).get("name") in LOCK_CALLS]
        flights = _in_flight(b, pid)
        for w in locks.get("waiting") or []:
            if not isinstance(w, dict):
                continue
            holder = w.get("holder") or {"pid": w.get("holder_pid")}
            hp = holder.get("pid")
            hname = (f"{holder.get('comm')} (pid {hp})" if holder.get("comm") else
                     f"{who} itself (another thread's descriptor)" if hp == pid else f"pid {hp}")
            n = max(int(num(w.get("waiting")) or 1), len(lockers))
            waited = max([num(t.get("last_ran_s_ago")) or 0.0 for t in lockers] +
                         [(num(r.get("age_us")) or 0.0) / 1e6 for r in flights] + [0.0])
            path = w.get("path") or f"inode {w.get('inode')} on device {w.get('dev')}"
            sev = CRITICAL if waited >= CRIT_WAIT_S or n >= 2 else WARNING
            since = f" for {waited:.1f} s and counting" if waited >= 0.1 else ""
            others = int(num(w.get("other_waiters")) or 0)
            yield Finding(
                sev, f"{plural(n, 'thread')} of {who} wait{'s' if n == 1 else ''} for a file lock on {path} held "
                     f"by {hname}{since}",
                f"{who} queues for a {w.get('type')} {str(w.get('mode') or '').lower()} lock on {path} that {hname} "
                f"holds ({w.get('holder_mode', '').lower()}); "
                + (f"its waiting threads last ran {waited:.1f} s ago (the scheduler's clock: how long they have "
                   "waited so far, not only during the probe window)" if waited >= 0.1 else "they wait")
                + f". What {hname} is doing: {_doing(holder)}."
                + (f" {plural(others, 'other process', 'other processes')} queue for the same lock." if others else "")
                + " Everything those threads serve waits until the holder releases the lock: finish or stop the "
                  "holder, or find why it holds the lock so long.",
                rule="file_locks", host=b.host,
                evidence=[Evidence(b.host, rel, record=f"locks.waiting id {w.get('id')}",
                                   excerpt=f"{w.get('type')} {w.get('mode')} on {path}, held by {hname}, "
                                           f"{n} waiting")]
                + [Evidence(b.host, rel, record=f"thread {t.get('tid')} ({t.get('name')})",
                            excerpt=f"in {(t.get('syscall') or {}).get('name')}(), wchan {t.get('wchan')}, "
                                    f"last ran {t.get('last_ran_s_ago')} s ago") for t in lockers[:3]]
                + [Evidence(b.host, SYSCALLS, record=f"in_flight pid {pid} tid {r.get('tid')}",
                            excerpt=f"{r.get('syscall')} blocked {r.get('age_us')} µs at the window's end")
                   for r in flights[:2]],
                data={"pid": pid, "pids": [pid] + ([hp] if isinstance(hp, int) and hp > 0 else []),
                      "path": w.get("path"), "holder_pid": hp, "holder": holder.get("comm"), "waiting": n,
                      "waited_s": waited})
        for h in locks.get("held") or []:
            if not isinstance(h, dict) or not num(h.get("waiters")):
                continue
            waiters = [x for x in h.get("waiter_pids") or [] if x != pid]
            if not waiters:
                continue
            path = h.get("path") or f"inode {h.get('inode')} on device {h.get('dev')}"
            yield Finding(
                WARNING, f"{who} holds a file lock on {path} that {plural(len(waiters), 'other process', 'others')} "
                         "wait for",
                f"{who} holds a {h.get('type')} {str(h.get('mode') or '').lower()} lock on {path}; processes "
                f"{join_names(str(x) for x in waiters)} queue for it and do nothing until it is released.",
                rule="file_locks", host=b.host,
                evidence=[Evidence(b.host, rel, record=f"locks.held id {h.get('id')}",
                                   excerpt=f"{h.get('type')} {h.get('mode')} on {path}, waiters {waiters}")],
                data={"pid": pid, "path": h.get("path"), "waiter_pids": waiters})


RULE = Rule(name="file_locks", summary="file locks a target waits for, naming the holder and how long",
            evaluate=evaluate, reads=("process", "syscalls"),
            severity="critical (waited ≥ 1 s, or 2+ threads queued); warning (a lock others wait for)", order=43)
