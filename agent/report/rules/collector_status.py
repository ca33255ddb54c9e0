"""Missing evidence: collectors that failed, timed out or were skipped, and files left out.

Triggers (``manifest.json``): a collector whose status is ``failed``, ``timeout`` or
``interrupted`` (warning: its evidence is missing or incomplete, so the other
findings cannot speak for it); ``partial`` (info, with its reason); a target that
exited mid-capture (info); collectors skipped because this host lacks a tool,
root or a kernel feature (one info finding listing them, so nobody concludes
"no problem" from "not looked at"); broken collector modules, files left out by the
bundle caps, target problems and a salvaged (interrupted) capture.
Evidence: the collector's manifest entry (status, reason, duration) and its
``collector.log`` when there is one.
"""
from __future__ import annotations

from typing import Iterator

from agent.report.model import INFO, WARNING, Evidence, Finding, parse_iso
from agent.report.rules import Rule
from agent.report.rules._util import join_names, plural

BAD = {"failed": "failed", "timeout": "timed out", "interrupted": "was interrupted"}


def evaluate(b) -> Iterator[Finding]:
    m = b.manifest
    skipped = []
    for c in b.collectors():
        st, key = c.status, c.key or c.name
        reason = c.reason.strip()
        log = f"collectors/{key}/collector.log"
        ev = [Evidence(b.host, "manifest.json", record=f"collectors[{key}]",
                       excerpt=f"status {st}, {c.duration_s} s of {c.timeout_s or '?'} s"
                               + (f": {reason}" if reason else ""))]
        if b.has(log):
            ev.append(Evidence(b.host, log, excerpt=(b.text(log) or "").strip().splitlines()[-1][:300]
                               if (b.text(log) or "").strip() else ""))
        if st in BAD:
            yield Finding(WARNING, f"Collector {key} {BAD[st]}: its evidence is missing",
                          f"{key} {BAD[st]}" + (f" ({reason})" if reason else "")
                          + ". What it captures is missing or incomplete in this bundle, so the findings above "
                            "cannot rule out a problem it would have shown. Files it wrote before stopping are kept.",
                          rule="collector_status", host=b.host, evidence=ev, time=parse_iso(c.started_at),
                          data={"collector": key, "status": st})
        elif st == "partial":
            yield Finding(INFO, f"Collector {key} captured only part of its evidence",
                          f"{key} finished with status partial: {reason or 'no reason given'}.",
                          rule="collector_status", host=b.host, evidence=ev, data={"collector": key, "status": st})
        elif st == "target_exited":
            yield Finding(INFO, f"Target of {key} exited during the capture",
                          f"The process {key.split('/')[-1]} exited (or its PID was reused) while {key.split('/')[0]} "
                          "ran: its evidence stops there.", rule="collector_status", host=b.host, evidence=ev,
                          data={"collector": key, "status": st})
        elif st == "skipped":
            skipped.append((key, reason))
    if skipped:
        not_here = [(k, r) for k, r in skipped if r and "not selected" not in r and "profile" not in r]
        if not_here:
            yield Finding(INFO, f"{plural(len(not_here), 'collector')} could not run on {b.host}",
                          "Not captured, so not checked: " + "; ".join(f"{k}: {r}" for k, r in not_here[:12])
                          + ("; …" if len(not_here) > 12 else "") + ". `goldenhour collectors` on the host says "
                          "what to install.", rule="collector_status", host=b.host,
                          evidence=[Evidence(b.host, "manifest.json", record=f"collectors[{k}]", excerpt=r)
                                    for k, r in not_here[:6]],
                          data={"collectors": [k for k, _ in not_here]})
    for br in m.broken_collectors:
        yield Finding(WARNING, f"Collector module {br.get('name')} was broken on {b.host}",
                      f"It could not be loaded ({br.get('error')}), so its evidence was never captured.",
                      rule="collector_status", host=b.host,
                      evidence=[Evidence(b.host, "manifest.json", record="broken_collectors", excerpt=str(br))])
    left = m.left_out
    if left:
        yield Finding(WARNING, f"{plural(len(left), 'file')} left out of the bundle by its size caps",
                      "The bundle hit store.max_bundle_bytes (or a file was unreadable): "
                      + join_names(f"{x.get('path')} ({x.get('reason')})" for x in left) + ".",
                      rule="collector_status", host=b.host,
                      evidence=[Evidence(b.host, "manifest.json", record="left_out", excerpt=str(left[:3])[:300])])
    probs = m.target_problems
    if probs:
        yield Finding(INFO, f"{plural(len(probs), 'target')} could not be resolved",
                      "Asked-for processes that were not captured: " + join_names(str(p) for p in probs) + ".",
                      rule="collector_status", host=b.host,
                      evidence=[Evidence(b.host, "manifest.json", record="target_problems")])
    if m.salvaged:
        s = m.salvaged
        yield Finding(WARNING, "This capture was interrupted and salvaged",
                      f"The capturing goldenhour process died ({s.get('why', '?')}); the evidence staged so far was "
                      f"published at {s.get('at', '?')}. Collectors that had not ended are marked interrupted.",
                      rule="collector_status", host=b.host,
                      evidence=[Evidence(b.host, "manifest.json", record="salvaged", excerpt=str(s))])


RULE = Rule(name="collector_status", summary="collectors that failed, timed out or could not run: missing evidence",
            evaluate=evaluate, reads=(), severity="warning (failed, timeout, interrupted, left out); info (partial, "
            "skipped here)", order=90)
