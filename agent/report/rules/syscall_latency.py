"""System calls with outlier latency, from the eBPF syscall probe.

Triggers (``collectors/syscalls/syscalls.json``, one record per process and system
call with count, total, max, p50 and p99 latency and a log2 histogram), leaving out
calls that wait by design (``epoll_wait``, ``poll``, ``select``, ``futex``,
``nanosleep``, ``wait4``, ``accept``...):
- critical: a call that took 1 s or more, or a p99 of 100 ms or more over 10+ calls, or calls
  of 100 ms or more that together took half the probe window or more (time, not count: nine
  serialised 0.5 s ``fdatasync()`` calls in a 5 s window are a stalled journal);
- warning: a call of 100 ms or more, or a p99 of 20 ms or more over 10+ calls;
- a call still in flight when the window ended (``in_flight``), blocked 1 s or more
  (critical) or 100 ms or more (warning): the stall itself, caught in the act. ``read``/``recv*``/``write``
  to sockets and pipes may be waiting for a peer, so they are at most warnings.
Evidence: the record (pid, command, syscall, count, p50, p99, max) in ``syscalls.json``.
The report plots each process's latency histogram.
"""
from __future__ import annotations

from typing import Any, Iterator

from agent.report import hist
from agent.report.model import CRITICAL, WARNING, Evidence, Finding, parse_iso
from agent.report.rules import Rule
from agent.report.rules._util import human_us, num

WAITS = frozenset("""epoll_wait epoll_pwait epoll_pwait2 poll ppoll select pselect6 _newselect nanosleep
clock_nanosleep futex futex_waitv wait4 waitid waitpid accept accept4 rt_sigtimedwait rt_sigsuspend sigsuspend pause
io_getevents io_pgetevents io_uring_enter msgrcv semop semtimedop mq_timedreceive sched_yield restart_syscall
select_tv""".split())
MAYBE_PEER = frozenset("read readv recvfrom recvmsg recvmmsg recv write writev sendto sendmsg sendmmsg "
                       "splice connect".split())
FILE_LOCKS = frozenset("flock fcntl".split())
MAX_FINDINGS = 8
CRIT_SHARE, WARN_SHARE = 0.5, 0.2      # of the probe window spent inside one (slow) call, by one process


def us(rec: dict[str, Any], base: str) -> float | None:
    """A latency field in microseconds, whatever unit suffix the collector used."""
    for suffix, scale in (("_us", 1.0), ("_usecs", 1.0), ("_ns", 0.001), ("_ms", 1000.0), ("", 1.0)):
        v = num(rec.get(base + suffix))
        if v is not None:
            return v * scale
    return None


def name_of(rec: dict[str, Any]) -> str:
    return str(rec.get("syscall") or rec.get("name") or rec.get("sys") or rec.get("key") or "?")


def load(b) -> tuple[str, dict[str, Any] | None, list[dict[str, Any]]]:
    rel = "collectors/syscalls/syscalls.json"
    data = b.json(rel)
    return rel, data if isinstance(data, dict) else None, hist.records(data, "records", "syscalls", "stats")


def window_seconds(data: dict[str, Any] | None) -> float | None:
    if not isinstance(data, dict):
        return None
    w = data.get("window")
    return num((w or {}).get("seconds") if isinstance(w, dict) else None) or num(data.get("window_s"))


def evaluate(b) -> Iterator[Finding]:
    rel, data, recs = load(b)
    win = window_seconds(data)
    window_us = win * 1e6 if win else None
    flight_us: dict[tuple[Any, str], float] = {}     # time already spent by calls still blocked at the end
    for r in (data or {}).get("in_flight") or []:
        if isinstance(r, dict):
            key = (r.get("pid"), name_of(r))
            flight_us[key] = flight_us.get(key, 0.0) + min(us(r, "age") or 0.0, window_us or float("inf"))
    hits = []
    for r in recs:
        name = name_of(r)
        if name in WAITS:
            continue
        bs = hist.find_hist(r)
        count = int(num(r.get("count")) or hist.total(bs) or 0)
        mx = us(r, "max") or (bs[-1][1] if bs else None)
        p50 = us(r, "p50") or hist.percentile(bs, 0.5)
        p99 = us(r, "p99") or hist.percentile(bs, 0.99)
        if mx is None:
            continue
        busy = (us(r, "total") or 0.0) + flight_us.get((r.get("pid"), name), 0.0)
        share = busy / window_us if window_us else None
        sev = None
        if mx >= 1e6 or (p99 is not None and p99 >= 1e5 and count >= 10) or \
                (share is not None and share >= CRIT_SHARE and mx >= 1e5):
            sev = CRITICAL
        elif mx >= 1e5 or (p99 is not None and p99 >= 2e4 and count >= 10):
            sev = WARNING
        if sev is None:
            continue
        if name in MAYBE_PEER:
            sev = WARNING
        hits.append((sev, mx, r, name, count, p50, p99, share))
    hits.sort(key=lambda h: (h[0] != CRITICAL, -(h[7] or 0), -h[1]))
    stuck: dict[tuple[Any, str], list[dict[str, Any]]] = {}
    for r in (data or {}).get("in_flight") or []:
        if not isinstance(r, dict) or name_of(r) in WAITS:
            continue
        age = us(r, "age")
        if age is not None and age >= 1e5:
            stuck.setdefault((r.get("pid"), name_of(r)), []).append(r)

    def stuck_evidence(pid: Any, name: str) -> list[Evidence]:
        return [Evidence(b.host, rel, record=f"in_flight pid {pid} tid {r.get('tid')} {name}",
                         excerpt=f"still in the call at the end of the window: {human_us(us(r, 'age'))} so far, "
                                 f"since {r.get('since_utc')}") for r in stuck.get((pid, name), [])[:3]]

    for sev, mx, r, name, count, p50, p99, share in hits[:MAX_FINDINGS]:
        comm, pid = r.get("comm") or "?", r.get("pid")
        peer = (" On a socket or pipe this call may simply be waiting for the other side; on a file or disk it "
                "is the storage." if name in MAYBE_PEER else
                " It waits for a file lock another process or thread holds: lock contention." if name in FILE_LOCKS
                else "")
        still = stuck.pop((pid, name), [])
        if still:
            peer += (f" {len(still)} call(s) were still blocked when the window ended, for up to "
                     f"{human_us(max(us(x, 'age') or 0 for x in still))} so far.")
            stuck[(pid, name)] = still
        spent = ""
        if share is not None and share >= WARN_SHARE:
            spent = (f" Together they took {min(share, 1.0) if share <= 1.1 else share:.0%} of the {win:.1f} s window"
                     + (" (several threads at once)" if share > 1.1 else "")
                     + (": whatever waits on them (a request, a commit, a lock holder) waited that long."
                        if share >= CRIT_SHARE else "."))
        if share is not None and share >= CRIT_SHARE:
            # a call still blocked at the end counts from its start: one thread can slightly exceed the window
            inside = f"{min(share, 1.0):.0%}" if share <= 1.1 else f"{share * win:.1f} s (several threads at once)"
            title = (f"{name}() in {comm} (pid {pid}): {inside} of the {win:.0f} s probe window inside it "
                     f"(p50 {human_us(p50)}, max {human_us(mx)})")
        else:
            title = (f"{name}() in {comm} (pid {pid}) took up to {human_us(mx)} (p50 {human_us(p50)}, "
                     f"p99 {human_us(p99)})")
        yield Finding(
            sev, title,
            f"During the probe window {comm} made {count} {name}() calls; the typical one took {human_us(p50)} "
            f"and the slowest {human_us(mx)}.{spent} A system call that goes from microseconds to "
            f"{'seconds' if mx >= 1e6 else 'tens or hundreds of milliseconds'} stalls the thread that made it "
            "(a request, a lock holder): storage latency, a full disk queue, memory reclaim, a lock in the kernel, "
            f"or a slow remote filesystem.{peer}",
            rule="syscall_latency", host=b.host,
            evidence=[Evidence(b.host, rel, record=f"pid {pid} {name}",
                               excerpt=f"count {count}, total {human_us(us(r, 'total'))}, p50 {human_us(p50)}, "
                                       f"p99 {human_us(p99)}, max {human_us(mx)}")] + stuck_evidence(pid, name),
            data={"pid": pid, "comm": comm, "syscall": name, "count": count, "max_us": mx, "p50_us": p50,
                  "p99_us": p99, "in_flight": len(still), "window_share": share})
        stuck.pop((pid, name), None)
    for (pid, name), rs in sorted(stuck.items(), key=lambda kv: -max(us(r, "age") or 0 for r in kv[1]))[:MAX_FINDINGS]:
        age = max(us(r, "age") or 0 for r in rs)
        comm = rs[0].get("comm") or "?"
        sev = CRITICAL if age >= 1e6 and name not in MAYBE_PEER else WARNING
        tids = ", ".join(str(r.get("tid")) for r in rs[:8])
        yield Finding(
            sev, f"{name}() in {comm} (pid {pid}) still blocked after {human_us(age)} "
                 f"({len(rs)} thread{'s' if len(rs) != 1 else ''})",
            f"When the probe window ended, {len(rs)} thread(s) of {comm} (tids {tids}) had been inside {name}() for "
            f"up to {human_us(age)} without returning. A call that never comes back during the window is the stall "
            "itself: the resource behind it (disk, remote filesystem, a kernel lock, a peer) is not answering."
            + (" On a socket or pipe it may be waiting for the other side." if name in MAYBE_PEER else ""),
            rule="syscall_latency", host=b.host, time=parse_iso(rs[0].get("since_utc")),
            evidence=[Evidence(b.host, rel, record=f"in_flight pid {pid} tid {r.get('tid')} {name}",
                               excerpt=f"age {human_us(us(r, 'age'))}, since {r.get('since_utc')}") for r in rs[:6]],
            data={"pid": pid, "comm": comm, "syscall": name, "age_us": age, "threads": len(rs)})
    if len(hits) > MAX_FINDINGS:
        rest = hits[MAX_FINDINGS:]
        yield Finding(WARNING, f"{len(rest)} more system calls with outlier latency",
                      "Listed in syscalls.json; the histograms below show them per process.",
                      rule="syscall_latency", host=b.host,
                      evidence=[Evidence(b.host, rel,
                                         record=", ".join(f"{h[2].get('comm')}:{h[3]}" for h in rest[:10]))])


RULE = Rule(name="syscall_latency", summary="system calls with outlier latency (eBPF probe window)",
            evaluate=evaluate, reads=("syscalls",),
            severity="critical (≥ 1 s, p99 ≥ 100 ms, or slow calls filling half the window); warning (≥ 100 ms, "
                     "or p99 ≥ 20 ms)",
            order=50)
