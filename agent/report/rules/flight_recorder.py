"""When it started and what moved first: the flight recorder's window before the incident.

Triggers (``collectors/history/``, see ``agent.report.history``):
- one finding per bundle naming the signals that left their baseline first (ties within
  one sample interval are "the same time"), when and how far, relative to T0 (the
  incident's start, else the trigger) — warning when that was before T0 (the trouble
  began before the page), info when it began after; the other departures in order;
- a window that begins inside the problem ("already abnormal"): info, so nobody takes the
  window's start for the onset;
- the recorder's gaps (with their reasons), wall-clock steps, reboots and damaged records
  skipped inside the window: info;
- no history in the bundle (no recorder ran, or its ring holds nothing from then): info,
  "the minutes before the incident are unknown".
Evidence: ``history.jsonl`` (the samples, by sequence number) and ``summary.json``.
Departures that begin once the capture has started are left out (the capture's own load is
in those samples; the finding's data keeps them, marked ``during_capture``).
Method: ``agent.recorder.analysis`` (median/MAD baseline ending 15 min before T0, 3 of 4
points beyond max(6 sd, floor, 20 % of the baseline), onset walked back to where the
signal left the noise). Order is correlation, not cause.
"""
from __future__ import annotations

import re
from typing import Iterator

from agent.report import history
from agent.report.model import INFO, WARNING, Evidence, Finding
from agent.report.rules import Rule
from agent.report.rules._util import status_of

_PID = re.compile(r"\[(\d+)\]$")


def evaluate(b) -> Iterator[Finding]:
    st, reason = status_of(b, "history")
    v = history.view(b)
    if v is None:
        if st is not None:
            yield Finding(INFO, "No flight-recorder history: the minutes before the incident are unknown",
                          f"The history collector {st}" + (f": {reason}" if reason else "") + ". Without a running "
                          "`goldenhour record` (unit goldenhour-recorder) nobody can say from this bundle when the "
                          "trouble began or what moved first; only the present was captured.",
                          rule="flight_recorder", host=b.host,
                          evidence=[Evidence(b.host, "manifest.json", record="collectors[history]", excerpt=reason)])
        return
    words = v.t0_words()
    first = v.first()
    if first:
        lead = first[0]
        ev = [Evidence(b.host, history.JSONL, record=history._seq_at(v, d.onset), excerpt=d.sentence(v.t0, words))
              for d in first[:4]]
        rest = [d for d in v.live if d not in first]
        expl = ("The flight recorder's samples before the capture show " +
                ("this signal leaving its baseline first: " if len(first) == 1 else
                 f"{len(first)} signals leaving their baselines within one sample interval ({v.interval:g} s), "
                 "the same time at this resolution: ")
                + "; ".join(d.sentence(v.t0, words) for d in first) + ".")
        if rest:
            expl += " Then: " + "; ".join(d.sentence(v.t0, words) for d in rest[:8]) + (
                f"; and {len(rest) - 8} more." if len(rest) > 8 else ".")
        expl += (f" Baselines: the samples up to 15 minutes before {words} (median and spread); a departure is 3 of 4 "
                 "samples beyond the threshold. Order is correlation, not cause.")
        before = v.t0 is None or lead.onset <= v.t0
        yield Finding(WARNING if before else INFO,
                      f"First to move: {lead.sentence(v.t0, words)}" + (f" (and {len(first) - 1} more at the same time)"
                                                                       if len(first) > 1 else ""),
                      expl, rule="flight_recorder", host=b.host, evidence=ev, time=history._dt(lead.onset),
                      data={"departures": [{**d.to_json(v.t0), **({"during_capture": True} if not d.already
                                                                      and d not in v.live else {})}
                                           for d in v.departures], "first": [d.signal for d in first],
                            "precursor": True, **_about(first),
                            "t0": v.summary.get("window", {}).get("t0"), "t0_source": v.t0_source,
                            "interval_s": v.interval})
    elif v.samples:
        yield Finding(INFO, "Flight recorder: no signal left its baseline before the capture",
                      f"{v.samples} samples every {v.interval:g} s from before {words} to the capture show no "
                      "sustained departure from their baselines: the host's counters were steady, so look at what "
                      "the capture saw in the targets themselves.", rule="flight_recorder", host=b.host,
                      evidence=[Evidence(b.host, history.SUMMARY)])
    already = [d for d in v.departures if d.already]
    if already:
        yield Finding(INFO, f"Already abnormal when the recorded window began: {already[0].label}"
                      + (f" and {len(already) - 1} more" if len(already) > 1 else ""),
                      "These signals were away from their baseline from the window's first sample, so the window "
                      "began inside the problem and no onset is given for them: " + "; ".join(
                          d.sentence() for d in already[:8]) + ". A longer window (recorder.history_before_min) "
                      "may show when they began.", rule="flight_recorder", host=b.host,
                      evidence=[Evidence(b.host, history.JSONL)], data={"signals": [d.signal for d in already]})
    s = v.summary
    issues = []
    for g in s.get("gaps") or []:
        issues.append(f"gap {str(g.get('from', ''))[11:19]}–{str(g.get('to', ''))[11:19]} "
                      f"({float(g.get('seconds') or 0):.0f} s): {g.get('reason')}")
    for c in s.get("clock_steps") or []:
        issues.append(f"clock {c.get('direction')} at {str(c.get('at', ''))[11:19]}"
                      + (f" by {abs(float(c.get('step_s') or 0)):g} s" if c.get("step_s") is not None else ""))
    if len(s.get("boots") or []) > 1:
        issues.append(f"{len(s['boots'])} boots in the window (a reboot)")
    skipped = s.get("skipped_records") or []
    if skipped:
        n = sum(int(p.get("records", 0) or 0) for p in skipped)
        issues.append(f"{n} damaged or torn record(s) skipped")
    if s.get("memory_only_records"):
        issues.append(f"{s['memory_only_records']} samples only in the recorder's memory (the ring was not writable)")
    if issues:
        yield Finding(INFO, f"Flight recorder window has {len(issues)} irregularit{'y' if len(issues) == 1 else 'ies'}",
                      "The history is readable around these; times inside a gap are unknown, and a departure next to "
                      "one may be dated late: " + "; ".join(issues[:10]) + ("; …" if len(issues) > 10 else "") + ".",
                      rule="flight_recorder", host=b.host, evidence=[Evidence(b.host, history.SUMMARY)],
                      data={"gaps": s.get("gaps"), "clock_steps": s.get("clock_steps"), "boots": s.get("boots")})


def _about(deps: list) -> dict:
    """The processes and cgroups among the first movers, so the report can tie the finding to a target."""
    pids = [int(m.group(1)) for d in deps if d.signal.startswith("process.") and (m := _PID.search(d.label))]
    cgs = ["/" + d.signal[len("cgroup."):].rsplit(".", 1)[0] for d in deps if d.signal.startswith("cgroup.")]
    return {**({"pids": pids} if pids else {}), **({"cgroups": cgs} if cgs else {})}


RULE = Rule(name="flight_recorder", summary="when it started and what moved first (the flight recorder's window)",
            evaluate=evaluate, reads=("history",),
            severity="warning (a signal left its baseline before T0); info (after T0, gaps, no recorder)", order=20)
