"""Bundle integrity: evidence that does not match its hashes, or could not be read.

Triggers: while reading a bundle the report hashes every file and compares it with
``manifest.json`` and ``SHA256SUMS``, and the archive with its ``.sha256`` (the same
checks as ``goldenhour verify``). Any difference — a changed, missing or extra file,
an archive cut short — is critical: the evidence may have been altered or damaged,
and findings resting on those files are not reliable. Evidence files the report
could not parse (invalid JSON) are a warning.
Evidence: the differing paths.
"""
from __future__ import annotations

from typing import Iterator

from agent.report.model import CRITICAL, WARNING, Evidence, Finding
from agent.report.rules import Rule
from agent.report.rules._util import plural


def evaluate(b) -> Iterator[Finding]:
    integ = b.integrity
    if integ.problems:
        yield Finding(CRITICAL, f"Bundle {b.name} does not match its hashes ({plural(len(integ.problems), 'problem')})",
                      "Files of this bundle differ from the SHA-256 recorded when it was captured, are missing, or "
                      "the archive is damaged. The evidence may have been altered or corrupted after capture: treat "
                      "findings that rest on these files with suspicion and fetch the bundle again "
                      "(`goldenhour verify` lists the same).",
                      rule="bundle_integrity", host=b.host,
                      evidence=[Evidence(b.host, p.file if "/" in p.file else "manifest.json", excerpt=str(p))
                                for p in integ.problems[:8]],
                      data={"problems": integ.messages()})
    if b.problems:
        yield Finding(WARNING, f"{plural(len(b.problems), 'evidence file')} could not be read by the report",
                      "; ".join(b.problems[:6]), rule="bundle_integrity", host=b.host,
                      evidence=[Evidence(b.host, p.split(" ", 1)[0], excerpt=p) for p in b.problems[:6]])


RULE = Rule(name="bundle_integrity", summary="evidence that does not match its SHA-256 or could not be read",
            evaluate=evaluate, reads=(), severity="critical (hash mismatch); warning (unreadable evidence)", order=1)
